"""The merge engine: streamed output, live re-merge, sharding, failures.

Models are the tiny Llamas of tests/conftest.py (tiny_family: hidden 32,
2 layers, vocab 64) so every test runs in well under a second and does not
depend on the built-in family.
"""
from __future__ import annotations

import json
import os
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from core.merge import engine, walk
from core.checkpoint.naming import tensor_order
from core.checkpoint import writer
from core.checkpoint.reader import Reader
from core.merge.plan import build
from core import methods as registry
from core.errors import UserError
from core.methods.base import MethodSpec, Param
from tests.archs import folder_tensors
from core.recipe import ModelEntry, Recipe

def ta(tiny_family, w=(1.0, 1.0), lam=1.0, dtype="float32", experts=("safety", "math")) -> Recipe:
    return Recipe("task_arithmetic", tiny_family["base"],
                  [ModelEntry(tiny_family[e], {"weight": wi}) for e, wi in zip(experts, w)],
                  {"lambda": lam}, dtype)


def _leftovers(parent) -> list[str]:
    return [x for x in os.listdir(parent) if ".partial-" in x or ".old-" in x]


def test_task_arithmetic_by_hand_on_one_tensor(tiny_family, tmp_path):
    out = tmp_path / "m"
    res = engine.run_merge(ta(tiny_family, (0.7, 0.3), 0.5), out_dir=str(out))
    name = "model.layers.1.self_attn.q_proj.weight"
    b, s, m = (load_file(os.path.join(tiny_family[k], "model.safetensors"))[name] for k in ("base", "safety", "math"))
    want = b + 0.5 * (0.7 * (s - b) + 0.3 * (m - b))
    got = folder_tensors(out)[name]
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    # the stats the UI plots are the norms of exactly these task vectors
    st = res.stats[name]
    assert st.layer == 1 and st.module == "q"
    assert st.expert_norms == pytest.approx([float((s - b).norm()), float((m - b).norm())], rel=1e-5)
    assert st.merged_norm == pytest.approx(float((want - b).norm()), rel=1e-4)
    assert res.experts == [tiny_family["safety"], tiny_family["math"]]
    assert set(res.layer_norms()) == {0, 1, "embed", "head", "final_norm"}


def test_streamed_output_equals_live_merge(tiny_family, tmp_path):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "m"
    recipe = ta(tiny_family, (0.6, 1.2), 0.8)
    engine.run_merge(recipe, out_dir=str(out))
    disk = folder_tensors(out)
    live = AutoModelForCausalLM.from_pretrained(tiny_family["base"], dtype=torch.float32)
    engine.run_merge(recipe, live_model=live)  # first call opens readers and fills the cache
    live = AutoModelForCausalLM.from_pretrained(tiny_family["base"], dtype=torch.float32)
    t0 = time.perf_counter()
    res = engine.run_merge(recipe, live_model=live)
    assert time.perf_counter() - t0 < 0.5
    sd = live.state_dict()
    assert set(disk) == set(sd) and res.n_tensors == len(disk)
    for k, v in disk.items():
        assert torch.equal(sd[k], v), k


def test_live_remerge_after_slider_move_changes_weights(tiny_family):
    """The UI's loop: same models, new λ, in place; the cache must not leak state."""
    from transformers import AutoModelForCausalLM
    live = AutoModelForCausalLM.from_pretrained(tiny_family["base"], dtype=torch.float32)
    name = "model.layers.0.mlp.down_proj.weight"
    engine.run_merge(ta(tiny_family, lam=1.0), live_model=live)
    one = live.state_dict()[name].clone()
    engine.run_merge(ta(tiny_family, lam=0.0), live_model=live)
    base = load_file(os.path.join(tiny_family["base"], "model.safetensors"))[name]
    assert torch.equal(live.state_dict()[name], base)
    engine.run_merge(ta(tiny_family, lam=1.0), live_model=live)
    assert torch.equal(live.state_dict()[name], one)


def test_output_folder_loads_and_generates(tiny_family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "merged"
    res = engine.run_merge(ta(tiny_family, dtype="bfloat16"), out_dir=str(out))
    assert res.out_dir == str(out) and res.seconds > 0
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "merge_recipe.yaml"} <= files
    assert not _leftovers(tmp_path)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    assert json.load(open(out / "config.json"))["dtype"] == "bfloat16"
    card = (out / "README.md").read_text()
    assert "task_arithmetic" in card and tiny_family["math"] in card and "merge explorer" in card
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("w5 w6 w7", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape[1] == ids.shape[1] + 4 or int(gen[0, -1]) == 1


def test_tiny_shard_size_writes_an_index_and_the_same_tensors(tiny_family, tmp_path):
    from transformers import AutoModelForCausalLM
    recipe = ta(tiny_family, (0.5, 0.5))
    engine.run_merge(recipe, out_dir=str(tmp_path / "one"))
    engine.run_merge(recipe, out_dir=str(tmp_path / "many"), shard_size=20_000)
    shards = [f for f in os.listdir(tmp_path / "many") if f.endswith(".safetensors")]
    assert len(shards) > 3 and "model.safetensors" not in shards
    index = json.load(open(tmp_path / "many" / "model.safetensors.index.json"))
    assert set(index["weight_map"].values()) == set(shards)
    a, b = folder_tensors(tmp_path / "one"), folder_tensors(tmp_path / "many")
    assert set(a) == set(index["weight_map"]) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in b.values())
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "many"))


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_while_writing_leaves_no_folder(tiny_family, tmp_path, monkeypatch, exc):
    calls = []
    real = writer.ShardWriter.add

    def flaky(self, name, t):
        calls.append(name)
        if len(calls) > 1:
            raise exc
        return real(self, name, t)

    monkeypatch.setattr(writer.ShardWriter, "add", flaky)
    with pytest.raises((UserError, KeyboardInterrupt)) as err:
        engine.run_merge(ta(tiny_family), out_dir=str(tmp_path / "m"), shard_size=10_000)
    if isinstance(exc, OSError):
        assert "No space left" in str(err.value)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []


def test_cli_merge_ok_and_failure_mid_write(tiny_family, tmp_path, monkeypatch, cli):
    rec = tmp_path / "r.yaml"
    rec.write_text(ta(tiny_family).to_yaml())
    code, out, _ = cli(["merge", rec, "--out", tmp_path / "ok"])
    assert code == 0 and str(tmp_path / "ok") in out and " s" in out
    assert os.path.isfile(tmp_path / "ok" / "model.safetensors")
    # exists -> refused without --force, replaced with it
    cli.refused(["merge", rec, "--out", tmp_path / "ok"], "already exists")
    assert cli(["merge", rec, "--out", tmp_path / "ok", "--force"])[0] == 0

    real = writer.ShardWriter.add
    seen = []

    def flaky(self, name, t):
        seen.append(name)
        if len(seen) > 1:
            raise OSError(5, "Input/output error")
        return real(self, name, t)

    monkeypatch.setattr(writer.ShardWriter, "add", flaky)
    # stderr also carries the progress bar; the error itself is one line
    cli.refused(["merge", rec, "--out", tmp_path / "bad"], "Input/output error")
    assert sorted(os.listdir(tmp_path)) == ["ok", "r.yaml"]


def test_cli_bad_recipe_is_one_sentence(tiny_family, tmp_path, cli):
    rec = tmp_path / "r.yaml"
    rec.write_text(ta(tiny_family).to_yaml().replace("lambda: 1.0", "lambda: 7"))
    assert cli.refused(["merge", rec, "--out", tmp_path / "x"]) == "'lambda' in parameters is 7; it must be between 0 and 2."
    assert not os.path.exists(tmp_path / "x")


def test_nan_in_an_expert_is_refused_by_name(tiny_family, tmp_path):
    with pytest.raises(UserError) as err:
        engine.run_merge(ta(tiny_family, experts=("safety", "nan")), out_dir=str(tmp_path / "m"))
    msg = str(err.value)
    assert "model.layers.1.mlp.up_proj.weight" in msg and tiny_family["nan"] in msg and "NaN" in msg
    assert os.listdir(tmp_path) == []


def test_nan_produced_by_the_method_is_refused(tiny_family, tmp_path, monkeypatch):
    def bad(base, deltas, mp, gp, ctx):
        out = deltas[0].clone()
        if ctx.name.endswith("norm.weight"):
            out[0] = float("inf")
        return out
    monkeypatch.setitem(registry.REGISTRY, "task_arithmetic",
                        MethodSpec("task_arithmetic", "bad", bad, [Param("weight", 1.0, 0, 2, per_model=True),
                                                                   Param("lambda", 1.0, 0, 2)]))
    with pytest.raises(UserError, match="produced NaN or Inf in tensor 'model.layers.0.input_layernorm.weight'"):
        engine.run_merge(ta(tiny_family), out_dir=str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_vocab_growth_keeps_the_experts_extra_rows(tiny_family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "m"
    res = engine.run_merge(ta(tiny_family, experts=("safety", "grown")), out_dir=str(out))
    assert any("extra embedding rows" in n and tiny_family["grown"] in n for n in res.notes)
    got = folder_tensors(out)
    base = load_file(os.path.join(tiny_family["base"], "model.safetensors"))
    grown = load_file(os.path.join(tiny_family["grown"], "model.safetensors"))
    safety = load_file(os.path.join(tiny_family["safety"], "model.safetensors"))
    vocab = base["lm_head.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert got[name].shape == (vocab + 6, 32)
        assert torch.equal(got[name][vocab:], grown[name][vocab:])
        b = base[name]
        want = b + (safety[name] - b) + (grown[name][:vocab] - b)
        assert torch.allclose(got[name][:vocab], want, atol=1e-6, rtol=0)
    assert json.load(open(out / "config.json"))["vocab_size"] == vocab + 6
    assert len(AutoTokenizer.from_pretrained(str(out))) == vocab + 6
    AutoModelForCausalLM.from_pretrained(str(out))
    # the live path cannot resize a loaded model and says so
    live = AutoModelForCausalLM.from_pretrained(tiny_family["base"])
    with pytest.raises(UserError, match="vocabulary changes size"):
        engine.run_merge(ta(tiny_family, experts=("safety", "grown")), live_model=live)


def test_incompatible_expert_is_refused_before_any_weight(tiny_family, tmp_path, monkeypatch):
    def no_reading(*a, **k):
        raise AssertionError("a weight was read")
    monkeypatch.setattr(Reader, "_locate", no_reading)
    with pytest.raises(UserError, match="has 3 layers but the base has 2"):
        engine.run_merge(ta(tiny_family, experts=("safety", "deep")), out_dir=str(tmp_path / "m"))
    with pytest.raises(UserError, match="'weight' of .* is 5; it must be between 0 and 2"):
        engine.run_merge(ta(tiny_family, (5.0, 1.0)), out_dir=str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def _mean_spec(calls=None, prepare=None):
    def mean(base, deltas, mp, gp, ctx):
        if calls is not None:
            calls.append((ctx.name, dict(ctx.aux), len(deltas)))
        w = torch.tensor([p["weight"] for p in mp])
        return sum(wi * d for wi, d in zip(w, deltas)) / w.sum()
    return MethodSpec("mean_test", "Mean", mean, [Param("weight", 1.0, 0, 5, per_model=True)],
                      needs_base=False, min_models=2, prepare=prepare)


def test_method_without_base_averages_only_the_listed_models(tiny_family, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "mean_test", _mean_spec())
    recipe = Recipe("mean_test", None, [ModelEntry(tiny_family["safety"], {"weight": 1.0}),
                                        ModelEntry(tiny_family["math"], {"weight": 3.0})])
    merged, res = engine.merge_state_dict(recipe)
    s = load_file(os.path.join(tiny_family["safety"], "model.safetensors"))
    m = load_file(os.path.join(tiny_family["math"], "model.safetensors"))
    for k in s:
        assert torch.allclose(merged[k], (s[k] + 3 * m[k]) / 4, atol=1e-6, rtol=0), k
    assert res.experts == [tiny_family["safety"], tiny_family["math"]]
    assert all(st.expert_norms[0] == 0.0 for st in res.stats.values())


def test_prepare_runs_once_and_feeds_aux_per_tensor(tiny_family, monkeypatch):
    calls, prepared_with = [], []

    class Prepared:
        def aux(self, name):
            return {"tag": name.upper()}

        def summary(self):
            return {"tags": "seen"}

    def prepare(plan, progress):
        prepared_with.append((plan.recipe.merge_method, sorted(plan.infos), progress))
        progress(0.5, "preparing")
        return Prepared()

    monkeypatch.setitem(registry.REGISTRY, "mean_test", _mean_spec(calls, prepare))
    recipe = Recipe("mean_test", tiny_family["base"], [ModelEntry(tiny_family["safety"]), ModelEntry(tiny_family["math"])])
    seen = []
    merged, res = engine.merge_state_dict(recipe, progress=lambda f, msg: seen.append((f, msg)))
    assert res.analysis == {"tags": "seen"}      # what the method summarised comes back with the merge
    assert len(prepared_with) == 1
    method, refs, cb = prepared_with[0]
    assert refs == sorted([tiny_family["base"], tiny_family["safety"], tiny_family["math"]])
    assert seen[0] == (0.5, "preparing") and seen[-1][0] == 1.0
    assert [c[0] for c in calls] == sorted(merged, key=tensor_order)
    assert all(aux == {"tag": name.upper()} and n == 2 for name, aux, n in calls)


def test_walk_order_goes_through_the_network(tiny_family):
    names = build(ta(tiny_family)).names
    assert names[0] == "model.embed_tokens.weight"
    layers = [engine.M.layer_of(n) for n in names if engine.M.layer_of(n) is not None]
    assert layers == sorted(layers)
    assert names[-2:] == ["lm_head.weight", "model.norm.weight"]


def test_out_dir_problems_are_sentences(tiny_family, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        engine.run_merge(ta(tiny_family), out_dir=str(tmp_path / "afile"))
    # root may write anywhere, so the permission answer is faked
    monkeypatch.setattr(engine.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match="Cannot write to"):
        engine.run_merge(ta(tiny_family), out_dir=str(tmp_path / "ro" / "m"))
    assert os.listdir(tmp_path) == ["afile"]


def test_zoo_task_arithmetic_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from core import service
    recipe = Recipe("task_arithmetic", "zoo:base", [ModelEntry("zoo:safety", {"weight": 1.0}),
                                                    ModelEntry("zoo:math", {"weight": 1.0})], {"lambda": 0.5})
    res = service.merge(recipe, out_dir=str(tmp_path / "m"))
    assert res.n_tensors == len(folder_tensors(tmp_path / "m"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    ids = tok("2+3=", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] > ids.shape[1]


@pytest.fixture
def small_blocks(monkeypatch):
    """Row blocks of ~100 entries, so the tiny models take the blocked path."""
    monkeypatch.setattr(walk, "CHUNK_ELEMS", 100)


def test_row_blocks_give_the_same_tensors_as_whole_tensors(tiny_family, tmp_path, small_blocks):
    recipe = ta(tiny_family, (0.6, 1.2), 0.8)
    engine.run_merge(recipe, out_dir=str(tmp_path / "m"))
    merged, whole = engine.merge_state_dict(recipe)          # the in-memory path never uses blocks
    disk = folder_tensors(tmp_path / "m")
    assert set(disk) == set(merged)
    for k in disk:
        assert torch.equal(disk[k], merged[k]), k
    blocked = engine.run_merge(recipe, out_dir=str(tmp_path / "m2"))
    for k, st in blocked.stats.items():
        assert st.merged_norm == pytest.approx(whole.stats[k].merged_norm, rel=1e-5)
        assert st.expert_norms == pytest.approx(whole.stats[k].expert_norms, rel=1e-5)


def test_row_blocks_with_vocab_growth_nan_and_no_base(tiny_family, tmp_path, small_blocks, monkeypatch):
    out = tmp_path / "g"
    engine.run_merge(ta(tiny_family, experts=("safety", "grown")), out_dir=str(out))
    got = folder_tensors(out)
    grown = load_file(os.path.join(tiny_family["grown"], "model.safetensors"))
    vocab = got["lm_head.weight"].shape[0] - 6
    assert torch.equal(got["lm_head.weight"][vocab:], grown["lm_head.weight"][vocab:])
    with pytest.raises(UserError, match=f"'model.layers.1.mlp.up_proj.weight' of '{tiny_family['nan']}'"):
        engine.run_merge(ta(tiny_family, experts=("safety", "nan")), out_dir=str(tmp_path / "n"))
    assert not os.path.exists(tmp_path / "n") and not _leftovers(tmp_path)
    spec = _mean_spec()
    spec.elementwise = True
    monkeypatch.setitem(registry.REGISTRY, "mean_test", spec)
    recipe = Recipe("mean_test", None, [ModelEntry(tiny_family["safety"], {"weight": 1.0}),
                                        ModelEntry(tiny_family["math"], {"weight": 3.0})])
    res = engine.run_merge(recipe, out_dir=str(tmp_path / "mean"))
    got = folder_tensors(tmp_path / "mean")
    s = load_file(os.path.join(tiny_family["safety"], "model.safetensors"))
    m = load_file(os.path.join(tiny_family["math"], "model.safetensors"))
    for k in s:
        assert torch.allclose(got[k], (s[k] + 3 * m[k]) / 4, atol=1e-6, rtol=0), k
    assert all(st.expert_norms[0] == 0.0 and len(st.expert_norms) == 2 for st in res.stats.values())
