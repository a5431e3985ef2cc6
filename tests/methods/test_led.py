"""LED-Merging: masks on hand-made tensors, SNIP against autograd, the score
cache, and merges of the built-in family (n_samples kept small)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import core
from core.methods.led import importance as I
from core.methods.led import scoring as S
from core.methods.led import masks as K
from core import checkpoint as M
from core import recipe as R
from core import service
from core.errors import UserError
from core.merge import engine
from core.merge.plan import build
from core.methods import REGISTRY, led

T = torch.tensor
N = 8   # location samples per expert in these tests: fast, still a real SNIP


def fam_recipe(location: str = "snip", models=None, **glob) -> dict:
    models = models or [{"model": "zoo:safety"}, {"model": "zoo:math"}, {"model": "zoo:code"}]
    return {"merge_method": "led", "base_model": "zoo:base", "models": models,
            "parameters": {"n_samples": N, "location": location, **glob}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private score cache for this module (disk and memory)."""
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("led-cache")
    mp.setattr(core, "CACHE_DIR", str(folder))
    I.clear_memory_cache()
    yield folder
    I.clear_memory_cache()
    mp.undo()


# ------------------------------------------------------------------ masks
def test_top_r_breaks_ties_by_index_and_keeps_exactly_k():
    s = T([1.0, 2.0, 2.0, 2.0, 0.5, 3.0])
    # k = 3: the 3, then two of the three 2s -- the earliest two
    assert K.top_r(s, 0.5).tolist() == [False, True, True, False, False, True]
    assert K.top_r(s, 0.5).tolist() == K.top_r(s.clone(), 0.5).tolist()
    assert K.top_r(s, 4 / 6).tolist() == [False, True, True, True, False, True]


def test_zero_scores_are_never_elected():
    s = T([0.0, 0.0, 1.0, 0.0, 0.25])
    assert K.top_r(s, 1.0).tolist() == [False, False, True, False, True]
    assert K.top_r(s, 0.8).tolist() == [False, False, True, False, True]   # k = 4 but only 2 are > 0
    assert not K.top_r(torch.zeros(7), 1.0).any()
    assert K.top_r(T([float("nan"), 1.0, 2.0]), 1.0).tolist() == [False, True, True]


def test_r_zero_keeps_nothing_and_r_one_keeps_every_positive_score():
    s = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) + 0.01
    assert not K.top_r(s, 0.0).any()
    m = K.top_r(s, 1.0)
    assert m.shape == (4, 5) and m.all()


def test_k_is_the_floor_of_r_n_without_round_off():
    assert K.k_of(0.29, 100) == 29          # 0.29 * 100 = 28.999999999999996
    assert K.k_of(0.1, 49152) == 4915
    assert K.k_of(0.999, 10) == 9
    assert int(K.top_r(torch.arange(1, 101).float(), 0.29).sum()) == 29


def test_top_r_of_random_scores_is_a_threshold_set():
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 5, (40, 7), generator=g).float()   # many ties and zeros
    for r in (0.05, 0.3, 0.61, 0.9):
        m = K.top_r(s, r).reshape(-1)
        flat = s.reshape(-1)
        assert int(m.sum()) == min(K.k_of(r, flat.numel()), int((flat > 0).sum()))
        kept, dropped = flat[m], flat[~m]
        assert kept.min() >= dropped.max() or dropped.numel() == 0
        t = kept.min()
        tied = torch.nonzero(flat == t).squeeze(1)
        chosen = m[tied]
        # among the tied entries the chosen ones come first in flat order
        assert chosen.tolist() == sorted(chosen.tolist(), reverse=True)


def test_election_codes():
    base = T([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    expert = T([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    r = 0.5   # top 3 of each
    assert K.elect(base, expert, r, "10").tolist() == [True, True, True, False, False, False]
    assert K.elect(base, expert, r, "01").tolist() == [False, False, False, True, True, True]
    assert not K.elect(base, expert, r, "11").any()
    assert K.elect(base, expert, 4 / 6, "11").tolist() == [False, False, True, True, False, False]
    assert K.elect(None, expert, r, "01").tolist() == [False, False, False, True, True, True]
    with pytest.raises(ValueError):
        K.elect(base, expert, r, "00")


def test_disjoint_keeps_entries_elected_by_exactly_one_expert():
    e = [T([1, 1, 0, 0, 1, 0], dtype=torch.bool), T([1, 0, 1, 0, 1, 0], dtype=torch.bool),
         T([0, 0, 0, 1, 1, 0], dtype=torch.bool)]
    m = K.disjoint(e)
    assert [x.int().tolist() for x in m] == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]]
    total = sum(x.int() for x in m)
    assert int(total.max()) <= 1
    # an expert alone keeps its whole set
    assert K.disjoint(e[:1])[0].tolist() == e[0].tolist()
    elected, final = K.masks_for([None] * 3, [x.float() for x in e], [1.0] * 3, "01", use_disjoint=False)
    assert [f.tolist() for f in final] == [x.tolist() for x in e]


def test_jaccard():
    a = T([1, 1, 0, 0], dtype=torch.bool)
    b = T([0, 1, 1, 0], dtype=torch.bool)
    assert K.jaccard(a, b) == pytest.approx(1 / 3)
    assert K.jaccard(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) is None


# ------------------------------------------------------------------ merge fn
def test_merge_fn_adds_lambda_times_masked_task_vectors():
    d1, d2 = T([1.0, 2.0, 3.0, 4.0]), T([10.0, 20.0, 30.0, 40.0])
    m1, m2 = T([1, 0, 1, 0], dtype=torch.bool), T([0, 0, 1, 1], dtype=torch.bool)
    from core.methods.base import TensorContext
    out = REGISTRY["led"].fn(torch.zeros(4), [d1, d2], [{"weight": 0.5}, {"weight": 2.0}], {},
                             TensorContext("w", aux={"masks": [m1, m2]}))
    assert out.tolist() == [0.5, 0.0, 1.5 + 60.0, 80.0]


# ------------------------------------------------------------------ SNIP
def tiny_model(seed: int = 0, bias: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=32,
                      tie_word_embeddings=False, attention_bias=bias)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def tiny_samples() -> list[S.Sample]:
    rows = [([3, 7, 1, 9, 4, 4, 2], [0, 0, 0, 1, 1, 1, 1]),
            ([5, 5, 6, 8, 2], [0, 0, 1, 1, 1]),
            ([11, 12, 13, 14, 15, 16, 17, 18], [0, 0, 0, 0, 0, 1, 1, 1])]
    return [S.Sample(T(ids), T(ans, dtype=torch.bool)) for ids, ans in rows]


def test_snip_equals_a_direct_autograd_computation():
    model = tiny_model()
    samples = tiny_samples()
    got = S.snip(model, samples)
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in samples:
        # transformers' own loss: labels are the ids, -100 on the prompt, shifted inside
        labels = torch.where(s.answer, s.ids, torch.full_like(s.ids, -100)).unsqueeze(0)
        loss = model(input_ids=s.ids.unsqueeze(0), labels=labels).loss
        grads = torch.autograd.grad(loss, list(params.values()))
        for n, g in zip(params, grads):
            acc[n] += g.abs()
    assert set(got) == set(params)
    for n, p in params.items():
        want = p.detach().abs() * acc[n]
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-9)
    # |.| per sample, not of the summed gradient: the two differ somewhere
    total = torch.autograd.grad(sum(model(input_ids=s.ids.unsqueeze(0),
                                          labels=torch.where(s.answer, s.ids, -100).unsqueeze(0)).loss
                                    for s in samples), [params["lm_head.weight"]])[0]
    assert not torch.allclose(got["lm_head.weight"], params["lm_head.weight"].detach().abs() * total.abs())
    # the caller's requires_grad flags are left as they were
    model.requires_grad_(False)
    S.snip(model, samples[:1])
    assert not any(p.requires_grad for p in model.parameters())


def test_wanda_embedding_rows_follow_answer_token_counts():
    model = tiny_model(1)
    samples = tiny_samples()
    got = S.wanda(model, samples)
    counts = torch.zeros(23)
    for s in samples:
        for t in s.ids[s.answer].tolist():
            counts[t] += 1
    w = model.model.embed_tokens.weight.detach().abs()
    torch.testing.assert_close(got["model.embed_tokens.weight"], w * counts.sqrt().unsqueeze(1))
    assert int((got["model.embed_tokens.weight"].sum(1) > 0).sum()) == int((counts > 0).sum())
    # a Linear's score is |W| times one factor per input column
    q = got["model.layers.0.self_attn.q_proj.weight"]
    ratio = q / model.model.layers[0].self_attn.q_proj.weight.detach().abs()
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))


def test_wanda_bias_is_a_weight_on_a_constant_input():
    model = tiny_model(2, bias=True)
    samples = tiny_samples()
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.bias.normal_()
    got = S.wanda(model, samples)
    n_answer = sum(int(s.answer.sum()) for s in samples)
    b = model.model.layers[1].self_attn.k_proj.bias.detach().abs()
    torch.testing.assert_close(got["model.layers.1.self_attn.k_proj.bias"], b * n_answer ** 0.5)


def test_encode_marks_the_answer_and_eos_as_targets():
    tok = M.load_tokenizer("zoo:base")
    rows = [{"prompt": "What is 2 + 3?", "response": "5."}]
    s = S.encode(tok, rows)[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": rows[0]["prompt"]}], tokenize=False,
                                     add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert s.answer.tolist() == [False] * n_prompt + [True] * (len(s.ids) - n_prompt)
    assert tok.decode(s.ids[s.answer][:-1]) == "5." and int(s.ids[-1]) == tok.eos_token_id
    # cut so that no answer token is left: the sample is dropped
    assert S.encode(tok, rows, max_length=n_prompt) == []


# ------------------------------------------------------------------ cache
# ------------------------------------------------------------ rank codes
def test_rank_codes_give_the_first_grid_step_whose_top_r_holds_the_entry():
    s = T([1.0, 2.0, 2.0, 2.0, 0.5, 3.0, 0.0])
    # n = 7: k_j = floor(7j/100); the 3 comes in at k = 1 (j = 15), the 2s in
    # index order at k = 2, 3, 4 (j = 29, 43, 58), 1 at k = 5 (j = 72),
    # 0.5 at k = 6 (j = 86); a zero score never
    assert K.rank_codes(s).tolist() == [72, 29, 43, 58, 86, 15, K.NEVER]
    assert K.rank_codes(torch.zeros(2, 3)).tolist() == [[K.NEVER] * 3] * 2
    assert K.rank_codes(T([[float("nan"), 1.0], [2.0, 0.0]])).tolist() == [[K.NEVER, 50], [25, K.NEVER]]   # n = 4


@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_codes_below_each_step_are_exactly_top_r(monkeypatch, chunk):
    monkeypatch.setattr(K, "_CHUNK", chunk)   # 7: runs of ties cut by chunk edges too
    g = torch.Generator().manual_seed(5)
    cases = [torch.randint(0, 4, (n,), generator=g).float() for n in (1, 2, 37, 101, 250)]
    cases += [torch.rand(300, generator=g) * (torch.rand(300, generator=g) > 0.3),
              torch.randint(0, 3, (13, 11), generator=g).float(),
              T([3.0] * 150 + [1.0] * 50)]
    for s in cases:
        codes = K.rank_codes(s)
        assert codes.shape == s.shape and codes.dtype == torch.uint8
        for j in range(K.GRID + 1):
            assert torch.equal(codes <= j, K.top_r(s, j / K.GRID)), (s.tolist(), j)


def test_grid_step_answers_only_where_the_mask_is_the_same():
    assert K.grid_step(0.29, 100) == 29
    assert K.grid_step(0.1 + 0.2 - 0.01, 1000) == 29   # 0.29000000000000004: the same k
    assert K.grid_step(0.295, 1000) is None             # k = 295 is on no step
    assert K.grid_step(0.295, 10) == 29                  # k = 2, as at 0.29
    assert K.grid_step(0.0, 10) == 0 and K.grid_step(1.0, 10) == K.GRID


def test_stored_scores_answer_grid_ratios_from_their_ranks(cache):
    g = torch.Generator().manual_seed(3)
    tensors = {"a": torch.rand(40, 5, generator=g), "b": torch.randint(0, 3, (64,), generator=g).float()}
    scores = I.store("unit-ranks", dict(tensors), {"method": "test"})
    ranks = os.path.join(str(cache), "led", "unit-ranks" + I.RANKS_EXT)
    assert scores.ranks is None and not os.path.exists(ranks)
    I.rank(scores, keep=True)
    assert os.path.isfile(ranks)
    for name, t in tensors.items():
        assert scores.total(name) == float(t.numpy().sum(dtype="float64"))
        for r in (0.05, 0.3, 0.77):
            assert torch.equal(scores.top(name, r), K.top_r(t, r))
    # the ranks alone answer a ratio on the grid; off it the scores are read
    scores.tensors.clear()
    assert torch.equal(scores.top("a", 0.3), K.top_r(tensors["a"], 0.3))
    with pytest.raises(UserError, match="No importance score"):
        scores.top("a", 0.305)
    # a cut vocabulary (fewer shared rows) is ranked from the scores, not the codes
    with pytest.raises(UserError, match="No importance score"):
        scores.top("a", 0.3, rows=30)


def test_ranks_missing_or_older_than_their_scores_are_made_again(cache):
    tensors = {"w": torch.arange(1.0, 61.0).reshape(6, 10)}
    I.rank(I.store("unit-stale", dict(tensors), {"method": "test"}), keep=False)
    path = os.path.join(str(cache), "led", "unit-stale")
    os.remove(path + I.RANKS_EXT)
    I.clear_memory_cache()
    again = I.cached("unit-stale")
    assert os.path.isfile(path + I.RANKS_EXT) and torch.equal(again.top("w", 0.25), K.top_r(tensors["w"], 0.25))
    # the scores rewritten (another mtime): their old ranks are not trusted
    st = os.stat(path + ".safetensors")
    os.utime(path + ".safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert I.Ranks.read(path + I.RANKS_EXT, path + ".safetensors", keep=True) is None
    I.clear_memory_cache()
    assert I.cached("unit-stale").ranks is not None
    assert I.Ranks.read(path + I.RANKS_EXT, path + ".safetensors", keep=True) is not None


@pytest.mark.parametrize("models, disjoint", [(["zoo:safety", "zoo:math", "zoo:code"], True),
                                              (["zoo:safety", "zoo:math"], True),
                                              (["zoo:safety", "zoo:math", "zoo:code"], False)])
def test_the_rank_code_path_merges_as_the_float_scores_do(cache, monkeypatch, tmp_path, models, disjoint):
    """The election from rank codes, in chunks, and the merge in row blocks
    give the bits and the pictures the float-score path gives."""
    from core.merge import engine, walk
    rec = fam_recipe(models=[{"model": m, "parameters": {"mask_ratio": r, "weight": w}}
                             for m, r, w in zip(models, (0.12, 0.35, 0.6), (1.0, 0.7, 0.5))], disjoint=disjoint)
    fast, fast_info = engine.merge_state_dict(R.from_dict(rec))
    prep = led.prepare(build(R.from_dict(rec)))
    sets = prep.base_scores + prep.expert_scores
    assert all(s.ranks is not None and s.codes("model.layers.0.mlp.up_proj.weight", 0.35) for s in sets)
    fast_an = led.analyse(build(R.from_dict(rec)))
    monkeypatch.setattr(I.Scores, "codes", lambda self, name, r, rows=None: None)   # no ranks: top_r on the scores
    monkeypatch.setattr(led.SPEC, "elementwise", False)                          # whole tensors
    slow, _ = engine.merge_state_dict(R.from_dict(rec))
    assert fast.keys() == slow.keys()
    for k in fast:
        assert torch.equal(fast[k], slow[k]), k
    assert led.analyse(build(R.from_dict(rec))) == fast_an
    # a merge into a folder streams: the family's tensors in many row blocks
    # (inputs not held from the merges above: those are never fed in blocks)
    monkeypatch.setattr(walk, "CHUNK_ELEMS", 1000)
    monkeypatch.setattr(walk, "_LAST_INPUTS", None)
    monkeypatch.setattr(led.SPEC, "elementwise", True)
    service.merge({**rec, "dtype": "float32"}, out_dir=str(tmp_path / "blocks"))
    blocks = _load(tmp_path / "blocks")
    assert blocks.keys() == slow.keys()
    for k in fast:
        assert torch.equal(blocks[k], slow[k].float()), k


def test_a_cache_hit_runs_no_backward_pass(cache):
    base = M.inspect("zoo:base")
    rows = I.builtin_rows("math", 3, seed=11)
    jobs = [I.Job(base, rows, "base on math")]
    before = S.STATS["backward"]
    (first,), was_cached = I.compute(jobs, "snip")
    assert not was_cached and S.STATS["backward"] == before + 3
    key = first.key
    path = os.path.join(str(cache), "led", key + ".safetensors")
    assert os.path.isfile(path)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]
    # from disk: memory cleared, the file is read, no backward pass
    I.clear_memory_cache()
    (again,), was_cached = I.compute(jobs, "snip")
    assert was_cached and S.STATS["backward"] == before + 3
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(again.get(name), first.get(name))
    # from memory: even with the file gone
    os.remove(path)
    (third,), was_cached = I.compute(jobs, "snip")
    assert was_cached and S.STATS["backward"] == before + 3 and third is again
    # other data is another key
    I.compute([I.Job(base, I.builtin_rows("math", 3, seed=12), "base on math")], "snip")
    assert S.STATS["backward"] == before + 6


def test_moving_r_re_merges_without_any_backward_pass(cache):
    from core.merge import engine
    rec = R.from_dict(fam_recipe())
    engine.merge_state_dict(rec)
    before = dict(S.STATS)
    rec.models[0].parameters["mask_ratio"] = 0.3
    rec.parameters["election"] = "01"
    engine.merge_state_dict(rec)
    assert S.STATS == before


# ------------------------------------------------------------------ family
def _load(folder) -> dict:
    return load_file(os.path.join(str(folder), "model.safetensors"))


def test_led_merge_of_the_family_is_disjoint_lambda_tau(cache, tmp_path):
    lams = {"zoo:safety": 1.0, "zoo:math": 0.7, "zoo:code": 0.5}
    rec = fam_recipe(models=[{"model": m, "parameters": {"weight": w}} for m, w in lams.items()])
    res = service.merge(rec, out_dir=str(tmp_path / "led"))
    merged = _load(tmp_path / "led")
    base = _load(M.zoo_path("base"))
    taus = {m: {k: v - base[k] for k, v in _load(M.zoo_path(m[4:])).items()} for m in lams}
    ratios = {"zoo:safety": 0.1, "zoo:math": 0.4, "zoo:code": 0.5}   # by task: none given
    prep = led.prepare(build(R.from_dict(rec)))                               # the same masks, from the cache
    taken = {m: 0 for m in lams}
    for name, b in base.items():
        # θ₀ + λᵢτᵢ as float32 arithmetic gives it, one candidate per expert
        cand = torch.stack([b + lams[m] * taus[m][name] for m in lams])
        hit = cand == merged[name]
        changed = merged[name] != b
        # from the output alone: every entry is θ₀ or θ₀ + λᵢτᵢ of some expert
        assert bool((~changed | hit.any(0)).all()), name
        # and exactly one: the entry's expert is the one whose mask holds it
        m = torch.stack(prep.aux(name)["masks"])
        assert int(m.sum(0).max()) <= 1, name
        assert bool((hit | ~m).all()), name
        assert bool((merged[name][~m.any(0)] == b[~m.any(0)]).all()), name
        for i, e in enumerate(lams):
            taken[e] += int((m[i] & changed).sum())
            assert int(m[i].sum()) <= K.k_of(ratios[e], b.numel()), (name, e)
    assert all(v > 0 for v in taken.values()), taken   # each expert really contributes
    assert res.n_tensors == len(base)
    assert "merge_method: led" in (tmp_path / "led" / "merge_recipe.yaml").read_text()


def test_disjoint_off_may_add_several_experts_at_one_entry(cache):
    from core.merge import engine
    on, _ = engine.merge_state_dict(R.from_dict(fam_recipe(disjoint=True)))
    off, _ = engine.merge_state_dict(R.from_dict(fam_recipe(disjoint=False)))
    base = _load(M.zoo_path("base"))
    changed_on = sum(int((on[k] != base[k]).sum()) for k in base)
    changed_off = sum(int((off[k] != base[k]).sum()) for k in base)
    assert changed_off > changed_on   # entries elected by two experts come back


def test_analysis_schema_and_exact_fractions(cache):
    a = service.led_analysis(fam_recipe(location="magnitude", election="10", disjoint=False))
    json.dumps(a)   # plain values only
    assert a["layers"] == [f"layer {k}" for k in range(4)]
    assert a["modules"] == ["q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm"]
    assert a["outside"] == ["embed", "norm", "lm_head"]
    assert a["experts"] == ["zoo:safety", "zoo:math", "zoo:code"]
    assert a["tasks"] == {"zoo:safety": "safety", "zoo:math": "math", "zoo:code": "code"}
    assert a["mask_ratio"] == {"zoo:safety": 0.1, "zoo:math": 0.4, "zoo:code": 0.5}
    assert a["safety_expert"] == "zoo:safety" and set(a["overlap"]) == {"zoo:math", "zoo:code"}
    assert a["cached"] is True and a["n_samples"] == {"zoo:safety": 0, "zoo:math": 0, "zoo:code": 0}
    base = M.inspect("zoo:base")
    # election 10 on magnitudes (all > 0): exactly ⌊r·n⌋ of every tensor is elected, and nothing is removed
    q_numel = base.tensors["model.layers.2.self_attn.q_proj.weight"].numel
    for e, r in a["mask_ratio"].items():
        assert a["elected"][e][2][0] == K.k_of(r, q_numel) / q_numel
        assert a["taken"][e] == a["elected"][e]
        assert len(a["importance"][e]) == 4 and all(len(row) == 9 for row in a["importance"][e])
        assert len(a["elected_outside"][e]) == 3
    # "10" elects from the base's magnitudes alone: safety's top 10% lies inside math's top 40%
    assert a["overlap"]["zoo:math"][0][0] == pytest.approx(0.1 * q_numel // 1 / (0.4 * q_numel // 1), abs=1e-3)
    # importance under magnitude is the mean |θ| of the expert's own tensor
    w = _load(M.zoo_path("math"))["model.layers.1.mlp.down_proj.weight"]
    assert a["importance"]["zoo:math"][1][6] == pytest.approx(float(w.abs().mean()), rel=1e-5)


def test_a_merge_carries_the_pictures_the_analysis_draws(cache):
    d = fam_recipe(location="magnitude", election="10", disjoint=False)
    _, res = engine.merge_state_dict(R.from_dict(d))
    a = service.led_analysis(d)
    assert res.analysis == a
    q_numel = M.inspect("zoo:base").tensors["model.layers.2.self_attn.q_proj.weight"].numel
    assert res.analysis["elected"]["zoo:math"][2][0] == K.k_of(0.4, q_numel) / q_numel


def test_analysis_with_disjoint_takes_at_most_one_expert_per_entry(cache):
    a = service.led_analysis(fam_recipe())
    for k in range(4):
        for j in range(9):
            assert sum(a["taken"][e][k][j] for e in a["experts"]) <= 1 + 1e-9
            for e in a["experts"]:
                assert a["taken"][e][k][j] <= a["elected"][e][k][j]
    assert a["location"] == "snip" and a["election"] == "11" and a["disjoint"] is True


def test_random_location_is_seeded():
    rec = fam_recipe(location="random", seed=5)
    p1 = led.prepare(build(R.from_dict(rec)))
    p2 = led.prepare(build(R.from_dict(rec)))
    p3 = led.prepare(build(R.from_dict(fam_recipe(location="random", seed=6))))
    name = "model.layers.0.mlp.gate_proj.weight"
    m1, m2, m3 = (p.aux(name)["masks"] for p in (p1, p2, p3))
    assert all(torch.equal(a, b) for a, b in zip(m1, m2))
    assert not all(torch.equal(a, b) for a, b in zip(m1, m3))


# ------------------------------------------------------------------ recipe
def test_reference_ratios_by_task_unless_given():
    plan = led.Setup(build(R.from_dict(fam_recipe(location="magnitude"))))
    assert [(e.task, e.ratio, e.weight) for e in plan.experts] == [("safety", 0.1, 1.0), ("math", 0.4, 1.0),
                                                                   ("code", 0.5, 1.0)]
    models = [{"model": "zoo:safety", "parameters": {"mask_ratio": 0.25}}, {"model": "zoo:math"}]
    plan = led.Setup(build(R.from_dict(fam_recipe(location="magnitude", models=models))))
    assert [e.ratio for e in plan.experts] == [0.25, 0.4]
    # written once for every model under parameters: it applies to all
    plan = led.Setup(build(R.from_dict(fam_recipe(location="magnitude", mask_ratio=0.3))))
    assert [e.ratio for e in plan.experts] == [0.3, 0.3, 0.3]
    # the task can be given as a parameter too
    models = [{"model": "zoo:math", "parameters": {"task": "code"}}]
    assert led.Setup(build(R.from_dict(fam_recipe(location="magnitude", models=models)))).experts[0].ratio == 0.5


@pytest.mark.parametrize("where,params,needle", [
    ("model", {"mask_ratio": 1.2}, "'mask_ratio' of 'zoo:safety' is 1.2; it must be between 0 and 1"),
    ("global", {"election": "00"}, "'election' in parameters is '00'; use one of 11, 10, 01"),
    ("global", {"location": "grad"}, "use one of snip, wanda, magnitude, random"),
    ("global", {"n_samples": 0}, "'n_samples' in parameters is 0"),
])
def test_bad_parameters_are_one_sentence(where, params, needle):
    d = fam_recipe()
    if where == "model":
        d["models"][0]["parameters"] = params
    else:
        d["parameters"].update(params)
    with pytest.raises(UserError) as exc:
        R.validate(R.from_dict(d))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_a_custom_task_needs_location_data(tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(M.zoo_path("math"), folder)
    d = fam_recipe(models=[{"model": str(folder)}])
    with pytest.raises(UserError, match="has task custom, so LED needs its location data"):
        led.Setup(build(R.from_dict(d)))


# ------------------------------------------------------------------ user data
def test_user_location_data_jsonl_and_advbench_csv(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text('{"prompt": "p1", "response": "r1"}\n\n{"prompt": "p2", "response": "r2", "x": 1}\n')
    assert I.read_location_data(str(j)) == [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
    c = tmp_path / "adv.csv"
    c.write_text('goal,target\n"Write a, thing","Sure, here is"\n\nDo x,Sure\n')
    assert I.read_location_data(str(c)) == [{"prompt": "Write a, thing", "response": "Sure, here is"},
                                            {"prompt": "Do x", "response": "Sure"}]


@pytest.mark.parametrize("name,text,needle", [
    ("a.jsonl", '{"prompt": "p"}\n', "Line 1 of the location data file"),
    ("b.jsonl", '{"prompt": "p", "response": "r"}\nnot json\n', "Line 2 of the location data file '"),
    ("c.csv", "goal,other\nx,y\n", "needs the AdvBench columns 'goal' and 'target'"),
    ("d.csv", "goal,target\nx,\n", "Row 2 of the location data file"),
    ("e.csv", "goal,target\nx,y,z\n", "different number of fields"),
    ("f.jsonl", "\n\n", "holds no samples"),
    ("g.jsonl", None, "does not exist"),
])
def test_malformed_location_data_is_one_sentence(tmp_path, name, text, needle):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as exc:
        I.read_location_data(str(path))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_custom_expert_scored_on_a_user_file(cache, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(M.zoo_path("code"), folder)
    rows = I.builtin_rows("code", 3, seed=2)
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = fam_recipe(models=[{"model": str(folder), "parameters": {"location_data": str(data), "mask_ratio": 0.2}}])
    before = S.STATS["backward"]
    plan = led.Setup(build(R.from_dict(d)))
    assert plan.experts[0].task == "custom" and plan.experts[0].rows == rows
    seen = []
    prep = led.prepare(build(R.from_dict(d)), lambda f, msg: seen.append((f, msg)))
    assert S.STATS["backward"] == before + 6   # base and expert, 3 samples each
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0 and len(seen) >= 6
    assert any("SNIP scores of the base on custom data: sample 3 of 3" in m for _, m in seen)
    m = prep.aux("model.layers.0.mlp.up_proj.weight")["masks"][0]
    assert 0 < int(m.sum()) <= K.k_of(0.2, m.numel())


# ------------------------------------------------------------------ vocabulary
def test_grown_vocabulary_merges_shared_rows_and_keeps_the_extra_rows(cache, tmp_path):
    folder = tmp_path / "safety_big"
    shutil.copytree(M.zoo_path("safety"), folder)
    sd = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(9)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k], torch.randn(3, sd[k].shape[1], generator=g) * 0.02])
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] += 3
    (folder / "config.json").write_text(json.dumps(cfg))
    d = fam_recipe(models=[{"model": str(folder), "task": "safety"}, {"model": "zoo:math"}])
    res = service.merge(d, out_dir=str(tmp_path / "out"))
    assert any("adds 3 tokens" in n and "extra rows are kept" in n for n in res.notes)
    merged = _load(tmp_path / "out")
    base = _load(M.zoo_path("base"))
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[k].shape[0] == base[k].shape[0] + 3
        assert torch.equal(merged[k][-3:], sd[k][-3:])
        # shared rows: θ₀, or θ₀ + τ of the grown expert, or of math (λ = 1)
        shared, b = merged[k][:-3], base[k]
        cands = [b, b + (sd[k][:-3] - b), b + (_load(M.zoo_path("math"))[k] - b)]
        assert bool(torch.stack([shared == c for c in cands]).any(0).all())
        assert bool((shared == cands[1]).any() and (shared != b).any())


# ------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_merge_runs_led(tmp_path, cli):
    rec = tmp_path / "led.yaml"
    rec.write_text(yaml.safe_dump(fam_recipe()))
    out = cli.process(["merge", rec, "--out", tmp_path / "m"], env={"MERGE_EXPLORER_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Wrote" in out.stdout and os.path.isfile(tmp_path / "m" / "model.safetensors")
    assert [f for f in os.listdir(tmp_path / "cache" / "led") if f.endswith(".safetensors")]


@pytest.mark.parametrize("tied", [False, True])
def test_snip_with_a_sparse_embedding_gradient_equals_the_dense_backward(tied):
    """SNIP takes the input embedding's gradient sparse (the touched rows only: 545 MB less and a third
    faster at 0.5B); a token used twice must count |g1 + g2|, as the dense gradient does, not |g1| + |g2|."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from core.methods.led import scoring as S
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied))
    samples = [S.Sample(torch.tensor([5, 7, 5, 9, 5, 7, 11]), torch.tensor([False, False, False, True, True, True, True])),
               S.Sample(torch.tensor([3, 3, 8, 3, 2]), torch.tensor([False, False, True, True, True]))]
    got = S.snip(model, samples)
    assert model.get_input_embeddings().sparse is False          # put back as it was
    params = dict(model.named_parameters())
    want = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in samples:
        grads = torch.autograd.grad(S.answer_loss(model, s), list(params.values()))
        for (n, p), g in zip(params.items(), grads):
            want[n] += g.abs()
    emb = "model.embed_tokens.weight"
    torch.testing.assert_close(got[emb], want[emb] * params[emb].detach().abs(), rtol=1e-5, atol=1e-8)
    q = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(got[q], want[q] * params[q].detach().abs(), rtol=1e-5, atol=1e-8)
