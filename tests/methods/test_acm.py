"""ACM: the MI estimator, the coefficients, the calibration choice, and
ACM-TA / ACM-TIES on the built-in family (tiny calibration sets: a pool
of 32 prompts, 16 chosen, K = 4, so a cold run is a few seconds)."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import core
from core.checkpoint.naming import point_of
from core.methods.acm import activations as A
from core.methods.acm import mi
from core import service
from core.merge import engine
from core.errors import UserError
from core.methods import acm
from core.methods.base import TensorContext
from core.recipe import ModelEntry, Recipe
from core.methods import ties

EXPERTS = ["zoo:safety", "zoo:math", "zoo:code"]


# ------------------------------------------------------------- estimator
def test_identical_signals_give_the_maximum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g)
    assert mi.mutual_information(x, x) == pytest.approx(mi.max_mi(20000), abs=1e-9)
    assert mi.max_mi(20000) == pytest.approx(math.log(32), abs=1e-3)
    # nothing else reaches it: a noisy copy is strictly below
    assert mi.mutual_information(x, x + 0.3 * torch.randn(20000, generator=g)) < mi.max_mi(20000) - 0.5


def test_independent_signals_give_about_zero():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20000, generator=g), torch.rand(20000, generator=g)
    assert mi.mutual_information(x, y) < 0.02


def test_monotone_transform_keeps_the_maximum_and_ranks_by_dependence():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, generator=g)
    top = mi.mutual_information(x, x)
    # ranks make MI invariant to monotone maps, outliers included
    assert mi.mutual_information(x, torch.exp(3 * x)) == pytest.approx(top, abs=1e-9)
    assert mi.mutual_information(x, -x ** 3) == pytest.approx(top, abs=1e-9)
    noise = torch.randn(20000, generator=g)
    mis = [mi.mutual_information(x, x + s * noise) for s in (0.1, 0.5, 1.0, 3.0)]
    assert mis == sorted(mis, reverse=True) and mis[-1] > 0.02
    # a Gaussian pair with correlation rho has MI -0.5 log(1 - rho^2); a
    # 32-bin histogram sees most of it
    rho = 1 / math.sqrt(2)
    assert mis[2] == pytest.approx(-0.5 * math.log(1 - rho ** 2), rel=0.15)


# ----------------------------------------------------------- coefficients
def test_coefficients_hand_computed_monotone_and_in_range():
    mi = {"a": [3.0, 2.0, 0.0], "b": [2.5, 1.0, 3.0]}
    c = acm.coefficients(mi, 0.7)
    assert c["a"][0] == 0.5 and c["b"][2] == 0.5           # the maximum MI gets exactly 0.5
    assert c["a"][1] == pytest.approx(1 - 1 / (1 + math.exp(-0.7 * (2.0 - 3.0))))
    assert c["a"][1] == pytest.approx(0.66819, abs=1e-5)
    pairs = sorted((x, y) for e in mi for x, y in zip(mi[e], c[e]))
    lams = [y for _, y in pairs]
    assert lams == sorted(lams, reverse=True)               # more MI, smaller λ, across experts too
    assert all(0.5 <= y < 1 for y in lams)
    # a hotter t spreads them further from 0.5
    assert acm.coefficients(mi, 5.0)["a"][2] > c["a"][2]


def test_coefficients_stay_finite_for_extreme_t():
    c = acm.coefficients({"a": [0.0, 3.5]}, 10.0)
    assert 0.5 <= min(c["a"]) and max(c["a"]) < 1


# ------------------------------------------------------------- selection
def test_select_even_spreads_over_clusters():
    labels = [0] * 10 + [1] * 10 + [2] * 10 + [3] * 2
    chosen = A.select_even(labels, 12, seed=0)
    counts = [sum(labels[i] == k for i in chosen) for k in range(4)]
    # round robin: 4 rounds over clusters 0-2, cluster 3 runs out after 2
    assert counts == [4, 3, 3, 2]
    assert chosen == sorted(set(chosen)) and chosen == A.select_even(labels, 12, seed=0)
    assert A.select_even(labels, 12, seed=1) != chosen


def test_point_of_maps_zoo_tensors():
    assert point_of("model.embed_tokens.weight") == "embed"
    assert point_of("model.layers.3.mlp.down_proj.weight") == "layer 3"
    assert point_of("model.layers.0.input_layernorm.weight") == "layer 0"
    assert point_of("model.norm.weight") == "norm"
    assert point_of("lm_head.weight") == "lm_head"


# --------------------------------------------------------- calibration file
def test_read_jsonl_accepts_text_and_prompt_and_refuses_malformed(tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text('{"text": "hello there"}\n\n{"prompt": "What is 2 + 2?"}\n')
    assert A.read_jsonl(str(good)) == [{"text": "hello there"}, {"prompt": "What is 2 + 2?"}]
    for body in ['{"text": "a"}\nnot json\n', '{"text": 3}\n', '["text"]\n', '{"answer": "x"}\n']:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body)
        with pytest.raises(UserError) as err:
            A.read_jsonl(str(bad))
        msg = str(err.value)
        assert "of the calibration file" in msg and msg.count(". ") == 0 and "\n" not in msg
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="holds no samples"):
        A.read_jsonl(str(tmp_path / "empty.jsonl"))
    with pytest.raises(UserError, match="The calibration file '.*missing.jsonl' does not exist."):
        A.read_jsonl(str(tmp_path / "missing.jsonl"))


# ------------------------------------------------------------- the family
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A private cache, so a test never reads another run's MI."""
    old = core.CACHE_DIR
    core.CACHE_DIR = str(tmp_path_factory.mktemp("cache"))
    A.clear_memory_cache()
    yield core.CACHE_DIR
    core.CACHE_DIR = old
    A.clear_memory_cache()


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from core.zoo.data import calibration_pool
    path = tmp_path_factory.mktemp("calib") / "pool.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in calibration_pool(32, seed=3)))
    return str(path)


def _recipe(calib: str, experts=EXPERTS, **params) -> Recipe:
    glob = {"n_calibration": 16, "clusters": 4, "calibration": calib}
    glob.update(params)
    return Recipe("acm", "zoo:base", [ModelEntry(e) for e in experts], glob)


def _weights(ref: str) -> dict:
    from core.checkpoint import resolve
    return load_file(f"{resolve(ref)}/model.safetensors")


@pytest.mark.slow   # the cold run of the family (~6 s on a busy 2-core box); later tests reuse its cache
def test_acm_ta_is_one_coefficient_per_layer_and_expert(cache_dir, calib):
    recipe = _recipe(calib)
    merged, res = engine.merge_state_dict(recipe)
    info = service.acm_analysis(recipe)
    assert res.analysis["coef"] == info["coef"]     # the merge brings the coefficients it used
    base = _weights("zoo:base")
    taus = [{k: v - base[k] for k, v in _weights(e).items()} for e in EXPERTS]
    n = len(EXPERTS)
    seen = set()
    for point in info["layers"]:
        names = sorted(k for k in base if point_of(k) == point)
        if not names:
            continue
        seen.add(point)
        d = torch.cat([(merged[k] - base[k]).reshape(-1) for k in names]).double()
        t = torch.stack([torch.cat([tau[k].reshape(-1) for k in names]) for tau in taus], 1).double()
        c = torch.linalg.lstsq(t, d.unsqueeze(1)).solution.squeeze(1)
        resid = torch.linalg.vector_norm(t @ c - d) / torch.linalg.vector_norm(d)
        assert resid < 1e-5, (point, float(resid))
        assert all(-1e-7 <= float(x) <= 1 / n + 1e-7 for x in c), (point, c)
        # and they are the plotted coefficients over N
        want = [info["coef"][e][info["layers"].index(point)] / n for e in EXPERTS]
        assert [float(x) for x in c] == pytest.approx(want, abs=1e-5)
    assert seen == set(info["layers"])   # every point owns tensors in the zoo (no tied head)


def test_analysis_schema(cache_dir, calib):
    info = service.acm_analysis(_recipe(calib).to_dict())
    n_layers = json.load(open(f"{core.ZOO_DIR}/base/config.json"))["num_hidden_layers"]
    assert info["layers"] == ["embed"] + [f"layer {k}" for k in range(n_layers)] + ["norm", "lm_head"]
    assert info["experts"] == EXPERTS and info["base_method"] == "task_arithmetic"
    assert info["temperature"] == 0.7 and info["units"] == "nats"
    assert info["n_calibration"] == 16 and info["n_pool"] == 32 and info["clusters"] == 4
    for e in EXPERTS:
        assert len(info["mi"][e]) == len(info["coef"][e]) == len(info["layers"])
        assert all(0 <= x <= info["mi_max"] + 0.2 for x in info["mi"][e])
        assert all(0.5 <= x < 1 for x in info["coef"][e])
    json.dumps(info)   # plain values only
    with pytest.raises(UserError, match="merge_method: acm"):
        service.acm_analysis({"merge_method": "ties", "base_model": "zoo:base", "models": ["zoo:math"]})


def test_progress_names_each_step_and_never_goes_back(tmp_path, calib):
    """The bar shows the whole calibration's fraction; the message names the step it is in."""
    old = core.CACHE_DIR
    core.CACHE_DIR = str(tmp_path)      # cold: every step runs
    A.clear_memory_cache()
    seen = []
    try:
        service.acm_analysis(_recipe(calib), progress=lambda frac, msg: seen.append((frac, msg)))
    finally:
        core.CACHE_DIR = old
        A.clear_memory_cache()
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    steps = [m.split(" · ")[0] for _, m in seen[:-1]]
    # the pool (32 prompts), the base, then each of the three experts: five steps
    assert list(dict.fromkeys(steps)) == [f"step {k} of 5" for k in range(1, 6)]
    assert seen[0][1].startswith("step 1 of 5 · embedding calibration pool: batch 1 of ")
    assert any(m.startswith("step 3 of 5 · 'zoo:safety' activations") for _, m in seen)
    assert any(m.startswith("step 5 of 5 · 'zoo:code' activations") for _, m in seen)


def test_changing_t_uses_the_cache(cache_dir, calib):
    first = service.acm_analysis(_recipe(calib))           # computed or cached by the test above
    before = A.STATS["forward_batches"]
    hot = service.acm_analysis(_recipe(calib, temperature=3.0))
    assert A.STATS["forward_batches"] == before and hot["cached"]
    assert hot["mi"] == first["mi"]
    assert hot["coef"] == acm.coefficients(first["mi"], 3.0) != first["coef"]
    # the disk copy serves a fresh process (memory cache dropped) just as well
    A.clear_memory_cache()
    again = service.acm_analysis(_recipe(calib, temperature=0.1))
    assert A.STATS["forward_batches"] == before and again["mi"] == first["mi"]
    # a merge at the new t runs no forward pass either
    engine.merge_state_dict(_recipe(calib, temperature=3.0))
    assert A.STATS["forward_batches"] == before


def test_a_copy_of_the_base_shares_everything(cache_dir, calib, tmp_path):
    """End to end through the hooks: an 'expert' identical to the base has
    maximal MI at every point, so its coefficient is 0.5 everywhere."""
    from core.checkpoint import resolve
    twin = tmp_path / "twin"
    shutil.copytree(resolve("zoo:base"), twin)
    info = service.acm_analysis(_recipe(calib, experts=[str(twin), "zoo:math"]))
    mi_twin, mi_math = info["mi"][str(twin)], info["mi"]["zoo:math"]
    assert all(x >= math.log(32) for x in mi_twin)
    assert all(a > b for a, b in zip(mi_twin, mi_math))
    assert info["coef"][str(twin)] == pytest.approx([0.5] * len(info["layers"]), abs=2e-3)


def test_acm_ties_on_the_family(cache_dir, calib):
    recipe = _recipe(calib, base_method="ties")
    for m in recipe.models:
        m.parameters["density"] = 0.3
    merged, _ = engine.merge_state_dict(recipe)
    base = _weights("zoo:base")
    name = "model.layers.1.mlp.up_proj.weight"
    changed = (merged[name] != base[name]).float().mean()
    assert 0 < changed <= 3 * 0.3 + 1e-6     # at most the union of three 30% trims moved


# ------------------------------------------------------------ ACM-TIES fn
def test_acm_ties_with_unit_coefficients_is_ties_and_scales_agreeing_entries():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(6, 5, generator=g)
    deltas = [torch.randn(6, 5, generator=g) for _ in range(3)]
    mp = [{"density": 0.6}] * 3
    ctx = TensorContext("model.layers.0.mlp.up_proj.weight", aux={"coeffs": [1.0, 1.0, 1.0]})
    got = acm.merge(base, deltas, mp, {"base_method": "ties"}, ctx)
    want = ties.merge(base, deltas, [{"density": 0.6, "weight": 1.0}] * 3, ties.SPEC.defaults()[1], TensorContext("x"))
    assert torch.allclose(got, want)
    # all experts agree and nothing is trimmed: the disjoint mean is ACM-TA's (1/N) Σ λ τ
    same = [d.abs() * s for d, s in zip(deltas, (1.0, 2.0, 0.5))]
    coeffs = [0.5, 0.75, 0.9]
    ctx = TensorContext("model.layers.0.mlp.up_proj.weight", aux={"coeffs": coeffs})
    ties_out = acm.merge(base, same, [{"density": 1.0}] * 3, {"base_method": "ties"}, ctx)
    ta_out = acm.merge(base, same, [{}] * 3, {"base_method": "task_arithmetic"}, ctx)
    assert torch.allclose(ties_out, ta_out)
    assert torch.allclose(ta_out, sum(c * d for c, d in zip(coeffs, same)) / 3)


def test_rules_between_parameters_are_checked_with_the_recipe_before_any_forward_pass(calib, monkeypatch):
    from core import recipe as R

    def no_forward(*a, **k):
        raise AssertionError("the models ran before the recipe's rules were checked")
    monkeypatch.setattr(A, "layer_mi", no_forward)
    ta = _recipe(calib)
    ta.models[1].parameters["density"] = 0.5
    sentence = "ACM's density is used only when base_method is ties; set base_method: ties or leave density out."
    for call in (R.validate, service.plan, service.acm_analysis):
        with pytest.raises(UserError) as err:
            call(ta)
        assert str(err.value) == sentence
    with pytest.raises(UserError) as err:
        R.validate(_recipe(calib, clusters=17))
    assert str(err.value) == "ACM's clusters (17) must not exceed n_calibration (16)."
    # ACM-TIES uses density: the same recipe validates and plans, and the plan carries it
    tied = _recipe(calib, base_method="ties")
    tied.models[1].parameters["density"] = 0.5
    p = service.plan(tied)
    assert [mp["density"] for mp in p.model_params] == [1.0, 0.5, 1.0]


def test_recipe_errors_are_one_sentence(cache_dir, calib, tmp_path):
    with pytest.raises(UserError, match="only when base_method is ties"):
        r = _recipe(calib)
        r.models[0].parameters["density"] = 0.5
        service.acm_analysis(r)
    with pytest.raises(UserError, match="must not exceed n_calibration"):
        service.acm_analysis(_recipe(calib, clusters=20))
    with pytest.raises(UserError, match="between 0.01 and 10"):
        service.acm_analysis(_recipe(calib, temperature=50))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(UserError, match="Line 2 of the calibration file"):
        engine.merge_state_dict(_recipe(str(bad)))
