"""core.eval.weights: task-vector norms/cosines and merged-change provenance,
checked against sums computed by hand on tiny models written in the test."""
import math

import pytest
import torch

from core.eval import weights as analysis
from core.errors import UserError

NAMES = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
         "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
         "model.layers.1.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"]


def _shape(name, vocab=6):
    if "embed" in name or "lm_head" in name:
        return (vocab, 4)
    if name.endswith("norm.weight"):
        return (4,)
    return (4, 4)


@pytest.fixture()
def family(tmp_path, write_model):
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(_shape(n), generator=g) for n in NAMES}
    taus = [{n: torch.randn(_shape(n), generator=g) for n in NAMES} for _ in range(2)]
    b = write_model(tmp_path / "base", base, vocab_size=6, hidden_size=4)
    e = [write_model(tmp_path / f"e{i}", {n: base[n] + t[n] for n in NAMES}, vocab_size=6, hidden_size=4)
         for i, t in enumerate(taus)]
    return b, e, base, taus


def test_norms_and_cosines_match_hand_sums(family):
    b, (e0, e1), base, (t0, t1) = family
    tv = analysis.task_vectors(b, [e0, e1])
    assert tv["layers"] == ["layer 0", "layer 1"] and tv["modules"] == ["q", "up"]
    assert tv["points"] == ["embed", "layer 0", "layer 1", "norm", "lm_head"]
    q0 = "model.layers.0.self_attn.q_proj.weight"
    assert tv["norms"][e0][0][0] == pytest.approx(float(t0[q0].norm()), rel=1e-5)
    assert tv["rel_norms"][e1][0][0] == pytest.approx(float(t1[q0].norm() / base[q0].norm()), rel=1e-5)
    cos = float(torch.dot(t0[q0].flatten(), t1[q0].flatten()) / (t0[q0].norm() * t1[q0].norm()))
    assert tv["cosines"][f"{e0} vs {e1}"][0][0] == pytest.approx(cos, abs=1e-5)
    # a layer's point pools its tensors: the norm of the concatenation
    layer1 = [n for n in NAMES if ".layers.1." in n]
    cat0 = torch.cat([t0[n].flatten() for n in layer1])
    cat1 = torch.cat([t1[n].flatten() for n in layer1])
    assert tv["point_norms"][e0][2] == pytest.approx(float(cat0.norm()), rel=1e-5)
    assert tv["point_cosines"][f"{e0} vs {e1}"][2] == pytest.approx(
        float(torch.dot(cat0, cat1) / (cat0.norm() * cat1.norm())), abs=1e-5)
    # a single expert has no pairs, and the cached result is renamed to the refs asked for
    one = analysis.task_vectors(b, [e1])
    assert one["cosines"] == {} and one["experts"] == [e1]


def test_provenance_of_a_weighted_sum_is_its_weights(family):
    b, (e0, e1), base, (t0, t1) = family
    merged = {n: base[n] + 0.3 * t0[n] + 0.7 * t1[n] for n in NAMES}
    pv = analysis.provenance(b, [e0, e1], merged)
    for j, c in ((e0, 0.3), (e1, 0.7)):
        assert all(x == pytest.approx(c, abs=1e-4) for x in pv["coef"][j])
        assert all(x == pytest.approx(c, abs=1e-4) for row in pv["cell_coef"][j] for x in row)
    assert all(x == pytest.approx(0.0, abs=1e-4) for x in pv["other"])
    # shares and the unexplained part add up to the whole change
    for k in range(len(pv["points"])):
        assert pv["share"][e0][k] + pv["share"][e1][k] + pv["other"][k] == pytest.approx(1.0, abs=1e-6)


def test_provenance_of_a_masked_task_vector(family):
    b, (e0, _), base, (t0, _) = family
    mask = {n: (torch.arange(t0[n].numel()).reshape(t0[n].shape) % 3 == 0) for n in NAMES}
    merged = {n: base[n] + mask[n] * t0[n] for n in NAMES}
    pv = analysis.provenance(b, [e0], merged)
    q0 = "model.layers.0.self_attn.q_proj.weight"
    kept = float((mask[q0] * t0[q0]).pow(2).sum())
    whole = float(t0[q0].pow(2).sum())
    # one expert: c = ‖m⊙τ‖²/‖τ‖², its share of ‖Δ‖² is c, the rest is unexplained
    assert pv["cell_coef"][e0][0][0] == pytest.approx(kept / whole, rel=1e-4)
    assert pv["share"][e0][1] + pv["other"][1] == pytest.approx(1.0, abs=1e-6)
    assert 0 < pv["other"][1] < 1


def test_provenance_zero_change_is_none_and_bad_merged_is_a_sentence(family):
    b, (e0, e1), base, _ = family
    pv = analysis.provenance(b, [e0, e1], dict(base))
    assert pv["coef"][e0] == [None] * len(pv["points"]) and pv["delta_norm"][0] == 0.0
    with pytest.raises(UserError, match="has no tensor"):
        analysis.provenance(b, [e0], {NAMES[0]: base[NAMES[0]]})


def test_extra_vocab_rows_are_compared_on_shared_rows(tmp_path, family, write_model):
    b, (e0, _), base, (t0, _) = family
    grown = {n: base[n] + t0[n] for n in NAMES}
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        grown[n] = torch.cat([grown[n], torch.ones(2, 4)])
    e2 = write_model(tmp_path / "grown", grown, vocab_size=8, hidden_size=4)
    tv = analysis.task_vectors(b, [e2])
    assert tv["point_norms"][e2][0] == pytest.approx(float(t0["model.embed_tokens.weight"].norm()), rel=1e-5)
    pv = analysis.provenance(b, [e2], {n: v * 1.0 for n, v in grown.items()})
    assert pv["coef"][e2][0] == pytest.approx(1.0, abs=1e-5)


def test_incompatible_models_are_refused_with_a_sentence(tmp_path, family, write_model):
    b, (e0, _), base, _ = family
    other = write_model(tmp_path / "other", {n: torch.zeros(3) for n in NAMES[:2]}, vocab_size=6, hidden_size=4)
    with pytest.raises(UserError):
        analysis.task_vectors(b, [other])
    with pytest.raises(UserError, match="at least one expert"):
        analysis.task_vectors(b, [])
    assert math.isfinite(analysis.task_vectors(b, [e0])["point_norms"][e0][1])
