"""TIES streamed in row blocks (engine + delta_stats hook) gives exactly the
whole-tensor result, including which entries tied at the trim threshold
survive. bf16 task vectors are full of exact ties, so they are used here."""
from __future__ import annotations

import os

import pytest
import torch

from core.merge import engine, walk
from core.methods import REGISTRY
from core.methods._threshold import TopK, top_k_mask
from core.recipe import ModelEntry, Recipe

SHAPES = {"model.embed_tokens.weight": (50, 16), "model.layers.0.mlp.up_proj.weight": (24, 16),
          "model.layers.0.input_layernorm.weight": (16,), "model.norm.weight": (16,)}


def _reference_top_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """Largest |x| first, earlier index first among equals, by a stable sort."""
    order = torch.sort(x.reshape(-1).abs(), descending=True, stable=True).indices[:k]
    m = torch.zeros(x.numel(), dtype=torch.bool)
    m[order] = True
    return m.reshape(x.shape)


def _mergekit_top_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """mergekit's magnitude trim: argsort(|x|, descending) with torch's default (unstable) sort."""
    order = torch.argsort(x.reshape(-1).abs().float(), descending=True)[:k]
    m = torch.zeros(x.numel(), dtype=torch.bool)
    m[order] = True
    return m.reshape(x.shape)


def _tied(n: int, seed: int) -> torch.Tensor:
    """Differences of bf16 numbers: few distinct magnitudes, many exact ties."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, generator=g).bfloat16()
    return (b.float() + 0.05 * torch.randn(n, generator=g)).bfloat16().float() - b.float()


@pytest.mark.parametrize("k", [1, 37, 500, 999, 1000])
def test_top_k_in_blocks_matches_a_stable_sort(k):
    x = _tied(1000, seed=k)
    ref = _reference_top_k(x, k)
    assert torch.equal(top_k_mask(x.abs(), k), ref)
    top = TopK.of(x, k)
    got, off = [], 0
    for size in (1, 300, 7, 250, 442):           # uneven blocks, in flat order
        got.append(top.mask(x[off:off + size], off))
        off += size
    assert torch.equal(torch.cat(got), ref)
    assert int(torch.cat(got).sum()) == k


@pytest.mark.parametrize("k", [1, 37, 500, 999, 1000, 1700])
def test_mergekit_tie_order_in_blocks_matches_its_argsort(k):
    """Streamed in uneven blocks, the mergekit order keeps exactly what its argsort keeps."""
    x = _tied(2000, seed=k)
    ref = _mergekit_top_k(x, k)
    assert torch.equal(top_k_mask(x.abs(), k, order="desc"), ref)
    top = TopK.of(x, k, order="desc")
    got, off = [], 0
    for size in (1, 300, 7, 250, 442, 1000):
        got.append(top.mask(x[off:off + size], off))
        off += size
    assert torch.equal(torch.cat(got), ref)


def test_top_k_threshold_has_many_ties_in_bf16():
    x = _tied(4000, seed=3)
    top = TopK.of(x, 1700)
    # the case the streaming has to get right: the threshold value occurs
    # more often than the set still needs it
    assert int((x.abs() == top.t).sum()) > top.ties_left > 0


def test_top_k_refuses_blocks_out_of_order():
    x = _tied(100, seed=1)
    top = TopK.of(x, 40)
    top.mask(x[:10], 0)
    with pytest.raises(RuntimeError, match="flat order"):
        top.mask(x[20:30], 20)


def test_top_k_overwrite_scrambles_only_the_scratch_and_sums_l1():
    x = _tied(1000, seed=5)
    keep = x.clone()
    top = TopK.of(x, 300, l1=True)                 # default: x untouched
    assert torch.equal(x, keep)
    ref = _reference_top_k(x, 300)
    assert top.abs_sum == pytest.approx(float(x.abs().sum()), rel=1e-6)
    assert top.top_sum == pytest.approx(float(x.abs()[ref].sum()), rel=1e-6)
    scratch = x.clone()
    top2 = TopK.of(scratch, 300, overwrite=True)
    assert (top2.t, top2.ties_left) == (top.t, top.ties_left)


CONFIG = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 2, "vocab_size": 50, "tie_word_embeddings": True, "dtype": "bfloat16"}


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory, write_model):
    root = tmp_path_factory.mktemp("ties_family")
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=g).bfloat16() for n, s in SHAPES.items()}
    paths = {"base": write_model(root / "base", base, **CONFIG)}
    for e in ("a", "b", "c"):
        paths[e] = write_model(root / e, {n: (t.float() + 0.05 * torch.randn(t.shape, generator=g)).bfloat16()
                                          for n, t in base.items()}, **CONFIG)
    return paths


def _ties(fam, glob, dtype="bfloat16"):
    per = [{"weight": 0.7, "density": 0.5}, {"weight": 0.3, "density": 0.35}, {"weight": 1.1, "density": 1.0}]
    return Recipe("ties", fam["base"], [ModelEntry(fam[e], p) for e, p in zip("abc", per)], glob, dtype)


def _whole_tensor_ties(fam, recipe) -> dict[str, torch.Tensor]:
    """The method called once per whole tensor, as the UI's in-memory path does."""
    from safetensors.torch import load_file
    from core.methods import TensorContext
    spec = REGISTRY["ties"]
    pm, gl = spec.defaults()
    per = [{**pm, **m.parameters} for m in recipe.models]
    base = load_file(os.path.join(fam["base"], "model.safetensors"))
    experts = [load_file(os.path.join(m.model, "model.safetensors")) for m in recipe.models]
    out = {}
    for n, b in base.items():
        b = b.float()
        deltas = [e[n].float() - b for e in experts]
        out[n] = (b + spec.fn(b, deltas, per, {**gl, **recipe.parameters}, TensorContext(n))).bfloat16()
    return out


@pytest.mark.parametrize("glob", [{}, {"normalize": False, "lambda": 0.6}, {"rescale": True}])
def test_streamed_ties_equals_whole_tensor_ties(bf16_family, tmp_path, monkeypatch, glob):
    from safetensors.torch import load_file
    recipe = _ties(bf16_family, glob)
    calls = []
    spec = REGISTRY["ties"]
    hook = spec.delta_stats
    monkeypatch.setattr(spec, "delta_stats", lambda *a: calls.append(a[0].numel()) or hook(*a))
    monkeypatch.setattr(walk, "CHUNK_ELEMS", 100)  # blocks of ~100 entries
    engine.run_merge(recipe, out_dir=str(tmp_path / "m"))
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    # the two 2-D tensors went through the pre-pass, one call per expert
    assert sorted(calls) == [384] * 3 + [800] * 3
    whole = _whole_tensor_ties(bf16_family, recipe)
    for k, v in whole.items():
        if glob.get("rescale"):
            # the L1 sums may round differently where the buffers sit
            torch.testing.assert_close(got[k].float(), v.float(), atol=0, rtol=1e-2)
        else:
            assert torch.equal(got[k], v), k


def test_streamed_ties_matches_hand_trim_on_one_tensor(bf16_family, tmp_path, monkeypatch):
    """One expert, weight 1: the result is the expert's kept half, ties as mergekit's argsort breaks them."""
    from safetensors.torch import load_file
    monkeypatch.setattr(walk, "CHUNK_ELEMS", 100)
    recipe = Recipe("ties", bf16_family["base"], [ModelEntry(bf16_family["a"], {"density": 0.5})], {}, "float32")
    engine.run_merge(recipe, out_dir=str(tmp_path / "one"))
    got = load_file(str(tmp_path / "one" / "model.safetensors"))
    base = load_file(os.path.join(bf16_family["base"], "model.safetensors"))
    a = load_file(os.path.join(bf16_family["a"], "model.safetensors"))
    name = "model.embed_tokens.weight"
    tau = a[name].float() - base[name].float()
    keep = _mergekit_top_k(tau, 400)
    assert torch.equal(got[name], base[name].float() + torch.where(keep, tau, 0.0))
    assert not torch.equal(keep, _reference_top_k(tau, 400))   # here the tie order decides


def test_float_vote_equals_the_boolean_vote_exactly():
    from core.methods.ties import _elect_masks, elect
    g = torch.Generator().manual_seed(9)
    xs = [torch.randn(3000, generator=g) * (torch.rand(3000, generator=g) > 0.4) for _ in range(3)]
    xs[1][:50] = -xs[0][:50]                      # sums that cancel to +0 elect +
    w = [0.7, 0.3, 1.2]
    for normalize in (True, False):
        got = elect([x.clone() for x in xs], w, consensus=True, normalize=normalize, lam=0.8)
        ref = _elect_masks([x.clone() for x in xs], w, normalize=normalize, lam=0.8)
        assert torch.equal(got, ref)


def test_vote_with_zero_weights_divides_by_one_like_mergekit():
    from core.methods.ties import elect
    # Σ = [3, -1] elects [+, -]; agreeing: 1 and 2, then -2; divisor 0 -> 1
    got = elect([torch.tensor([1.0, -2.0]), torch.tensor([2.0, 1.0])], [0.0, 0.0], consensus=True,
                normalize=True, lam=1.0)
    assert got.tolist() == [3.0, -2.0]
