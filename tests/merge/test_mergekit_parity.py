"""Same inputs, same tensors as mergekit (DESIGN §4: "same YAML gives same
tensors"). Runs only where mergekit ≥ 0.1.5 is importable; it coexists with
torch 2.13 / transformers 5 in a side venv:

    python -m venv /tmp/mkvenv --system-site-packages
    /tmp/mkvenv/bin/pip install mergekit==0.1.5
    /tmp/mkvenv/bin/python -m pytest -q tests/merge/test_mergekit_parity.py

mergekit's per-tensor merge methods are called directly (registry.get(name)
on a TensorGroup), so this checks the arithmetic, not YAML plumbing.
DARE draws its masks from a different RNG, so only its statistics are
compared; with density 1 (no randomness) it is compared exactly.
"""
from __future__ import annotations

import importlib.metadata

import pytest
import torch

mergekit = pytest.importorskip("mergekit")
_MK_VERSION = tuple(int(x) for x in importlib.metadata.version("mergekit").split(".")[:3] if x.isdigit())
if _MK_VERSION < (0, 1, 5):
    # older releases slerp whole tensors and zero Breadcrumbs when ⌊γ·n⌋ = 0
    pytest.skip(f"mergekit {_MK_VERSION} predates the 0.1.5 semantics these tests pin", allow_module_level=True)
from mergekit.merge_methods import registry as mk_registry  # noqa: E402
from mergekit.merge_methods.base import TensorGroup  # noqa: E402

from core.methods import REGISTRY, TensorContext  # noqa: E402

NAME = "model.layers.3.mlp.up_proj.weight"
ATOL = 1e-5


def _models(shape, n, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(n)]


def _mk(method: str, tensors, parameters, base_index=0):
    group = TensorGroup.from_tensors(tensors, base_index=base_index, name=NAME)
    return mk_registry.get(method)([group], parameters=parameters)[0]


def _ours(method: str, base, models, per: list[dict], glob: dict, seed: int = 0):
    spec = REGISTRY[method]
    pm, gl = spec.defaults()
    per = [{**pm, **p} for p in per]
    glob = {**gl, **glob}
    deltas = [m - base for m in models]
    ctx = TensorContext(NAME, layer=3, module="up", seed=seed)
    return base + spec.fn(base, deltas, per, glob, ctx)


SHAPES = [(24, 40), (37,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_ties(shape, normalize, lam):
    base, models = _models(shape, 3, seed=1)
    w, d = [0.7, 1.3, 0.4], [0.3, 0.65, 1.0]
    ref = _mk("ties", [base] + models, {"weight": w, "density": d, "normalize": normalize, "lambda": lam})
    got = _ours("ties", base, models, [{"weight": a, "density": b} for a, b in zip(w, d)],
                {"normalize": normalize, "lambda": lam})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_ties_rescale_and_tiny_density(shape):
    base, models = _models(shape, 2, seed=2)
    # density 0.01 of 37 entries: ⌊0.37⌋ = 0 but mergekit keeps one entry
    w, d = [1.0, 0.5], [0.01, 0.4]
    ref = _mk("ties", [base] + models, {"weight": w, "density": d, "rescale": True})
    got = _ours("ties", base, models, [{"weight": a, "density": b} for a, b in zip(w, d)], {"rescale": True})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_task_arithmetic():
    base, models = _models((16, 12), 3, seed=3)
    w = [0.5, 1.0, 1.5]
    ref = _mk("task_arithmetic", [base] + models, {"weight": w, "lambda": 0.8})
    got = _ours("task_arithmetic", base, models, [{"weight": a} for a in w], {"lambda": 0.8})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("density,gamma", [(0.5, 0.1), (0.3, 0.0), (0.8, 0.4), (1.0, 0.2)])
@pytest.mark.parametrize("shape", SHAPES)
def test_breadcrumbs(method, density, gamma, shape):
    # (0.3, 0.0): the cut-off older mergekit got wrong; (0.8, 0.4): keep + top > n
    _same_breadcrumbs(method, density, gamma, *_models(shape, 2, seed=4))


def _same_breadcrumbs(method, density, gamma, base, models):
    w = [1.0, 0.6]
    ref = _mk(method, [base] + models, {"weight": w, "density": density, "gamma": gamma})
    got = _ours(method, base, models, [{"weight": a, "density": density, "gamma": gamma} for a in w], {})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- ties
def _tied_models(shape, n, seed):
    """Experts whose changes take only a few magnitudes (as bf16 fine-tunes do): every cut of a trim
    falls among equal |τ|, where the order of the sort decides. Exactly representable values, so
    θ − θ₀ gives back the same τ in mergekit and here; ≥ 1,000 entries, where torch's default sort
    stops being stable."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-64, 64, shape, generator=g).float() / 64
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]) / 8
    out = []
    for _ in range(n):
        mag = levels[torch.randint(0, len(levels), shape, generator=g)]
        sign = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
        out.append(base + sign * mag)
    return base, out


TIED = [(40, 50), (3000,)]


@pytest.mark.parametrize("shape", TIED)
@pytest.mark.parametrize("density", [0.3, 0.55, 0.9])
def test_ties_breaks_tied_magnitudes_as_mergekit(shape, density):
    base, models = _tied_models(shape, 3, seed=21)
    w = [0.7, 1.3, 0.4]
    ref = _mk("ties", [base] + models, {"weight": w, "density": density})
    got = _ours("ties", base, models, [{"weight": a, "density": density} for a in w], {})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    # the control: the tie order matters here (earliest index first gives other tensors)
    from core.methods import _threshold as T
    tau = (models[0] - base).reshape(-1)
    k = int(density * tau.numel())
    ours = T.top_k_mask(tau, k, order="desc")
    plain = T.top_k_mask(tau, k)
    assert int(ours.sum()) == int(plain.sum()) == k and not torch.equal(ours, plain)


def test_fast_ties_trades_mergekit_s_tie_order_for_speed(monkeypatch):
    """MERGE_EXPLORER_FAST_TIES=1: ties broken earliest index first (no sort), the same count kept."""
    base, models = _tied_models((40, 50), 1, seed=24)
    w = {"weight": [1.0], "density": 0.4}
    ref = _mk("ties", [base] + models, w)
    monkeypatch.setenv("MERGE_EXPLORER_FAST_TIES", "1")
    fast = _ours("ties", base, models, [{"weight": 1.0, "density": 0.4}], {})
    assert not torch.equal(fast, ref) and int((fast != base).sum()) == int((ref != base).sum())
    monkeypatch.delenv("MERGE_EXPLORER_FAST_TIES")
    torch.testing.assert_close(_ours("ties", base, models, [{"weight": 1.0, "density": 0.4}], {}), ref,
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("density,gamma", [(0.5, 0.1), (0.3, 0.05), (0.8, 0.02)])
@pytest.mark.parametrize("shape", TIED)
def test_breadcrumbs_breaks_tied_magnitudes_as_mergekit(method, density, gamma, shape):
    _same_breadcrumbs(method, density, gamma, *_tied_models(shape, 2, seed=22))


@pytest.mark.parametrize("method", ["dare_ties", "ties"])
def test_sign_election_ties_as_mergekit(method):
    """Where the experts' weighted changes cancel exactly (sum 0), mergekit elects +; so do we."""
    base, models = _tied_models((40, 50), 2, seed=23)
    models[1] = base - (models[0] - base)          # the second expert undoes the first everywhere
    ref = _mk(method, [base] + models, {"weight": [1.0, 1.0], "density": 1.0})
    got = _ours(method, base, models, [{"weight": 1.0, "density": 1.0}] * 2, {})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert not torch.equal(got, base)               # + was elected: the positive changes survive


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_density_one_is_exact(method):
    base, models = _models((20, 10), 3, seed=5)
    w = [0.3, 0.9, 1.2]
    ref = _mk(method, [base] + models, {"weight": w, "density": 1.0})
    got = _ours(method, base, models, [{"weight": a, "density": 1.0} for a in w], {})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("rescale", [True, False])
def test_dare_statistics_match(rescale):
    """One expert, weight 1: the merged delta is the dropped (and rescaled)
    task vector, so its kept fraction and L1 norm can be compared."""
    _, models = _models((200, 100), 1, seed=6)
    base = torch.zeros_like(models[0])  # θ − θ₀ then loses no bits to rounding
    density = 0.3
    torch.manual_seed(0)
    ref = _mk("dare_linear", [base] + models, {"weight": [1.0], "density": density, "rescale": rescale}) - base
    got = _ours("dare_linear", base, models, [{"density": density}], {"rescale": rescale}, seed=11) - base
    delta = models[0] - base
    for out in (ref, got):
        kept = (out != 0).float().mean().item()
        assert abs(kept - density) < 0.02
        # survivors are the original entries, scaled by one common factor
        nz = out != 0
        factors = out[nz] / delta[nz]
        assert torch.allclose(factors, factors[0].expand_as(factors), rtol=1e-4)
    if rescale:
        for out in (ref, got):
            assert out.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-4)
    else:
        assert torch.equal(got[got != 0], delta[got != 0])


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_without_base(normalize):
    """No base_model: the engine passes models[0] as base with a zero delta."""
    _, models = _models((9, 14), 3, seed=7, scale=1.0)
    w = [0.2, 0.5, 1.1]
    ref = _mk("linear", models, {"weight": w, "normalize": normalize}, base_index=None)
    got = _ours("linear", models[0], models, [{"weight": a} for a in w], {"normalize": normalize})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_linear_with_unlisted_base():
    base, models = _models((9, 14), 2, seed=8)
    w = [0.25, 0.75]
    ref = _mk("linear", models, {"weight": w}, base_index=None)
    got = _ours("linear", base, models, [{"weight": a} for a in w], {})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.85, 1.0])
@pytest.mark.parametrize("shape,scale", [((16, 32), 1.0), ((16, 32), 1e-3), ((33,), 1.0), ((4, 3, 5), 0.7)])
def test_slerp(t, shape, scale):
    # scale 1e-3: rows nearly parallel, the linear fallback
    base, models = _models(shape, 1, seed=9, scale=scale)
    ref = _mk("slerp", [base, models[0]], {"t": t})
    got = _ours("slerp", base, models, [{}], {"t": t})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("shape", [(12, 20), (25,)])
def test_model_stock(n, filter_wise, shape):
    base, models = _models(shape, n, seed=10 + n)
    # correlated task vectors so t is far from 0
    shared = models[0] - base
    models = [m + 0.8 * shared for m in models]
    ref = _mk("model_stock", [base] + models, {"filter_wise": filter_wise})
    got = _ours("model_stock", base, models, [{} for _ in models], {"filter_wise": filter_wise})
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


# ------------------------------------------------------------- whole recipes
@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A 1-layer Llama base and two experts nudged from it (safetensors folders)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=32, max_position_embeddings=32,
                      tie_word_embeddings=False)
    root = tmp_path_factory.mktemp("mkfamily")
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    paths = {}
    for i, name in enumerate(["base", "a", "b"]):
        m = LlamaForCausalLM(cfg)
        m.load_state_dict(base.state_dict())
        if i:
            g = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
        m.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths, root


# (method, base_model or None, listed models, their parameters, global parameters)
RECIPES = [
    ("ties", "base", ["a", "b"], [{"weight": 0.7, "density": 0.4}, {"weight": 1.2, "density": 0.6}], {"lambda": 0.9}),
    ("task_arithmetic", "base", ["a", "b"], [{"weight": 0.5}, {"weight": 1.0}], {"lambda": 1.1}),
    ("breadcrumbs", "base", ["a", "b"], [{"weight": 1.0, "density": 0.5, "gamma": 0.1}, {"weight": 0.5, "density": 0.7}], {}),
    ("breadcrumbs_ties", "base", ["a", "b"], [{"density": 0.5, "gamma": 0.0}, {"density": 0.9, "gamma": 0.05}], {}),
    ("dare_ties", "base", ["a", "b"], [{"weight": 0.6}, {"weight": 1.0}], {}),
    ("dare_linear", "base", ["a", "b"], [{"weight": 0.6}, {"weight": 1.0}], {"normalize": True}),
    ("linear", None, ["a", "b"], [{"weight": 0.3}, {"weight": 0.9}], {}),
    ("linear", "base", ["a", "b"], [{"weight": 0.3}, {"weight": 0.9}], {"normalize": False}),
    ("linear", "base", ["base", "a", "b"], [{"weight": 0.2}, {"weight": 0.3}, {"weight": 0.9}], {}),
    ("slerp", "base", ["a"], [{}], {"t": 0.35}),
    ("model_stock", "base", ["a", "b"], [{}, {}], {"filter_wise": True}),
]


@pytest.mark.parametrize("method,base,experts,per,glob", RECIPES, ids=[f"{r[0]}-{i}" for i, r in enumerate(RECIPES)])
def test_exported_yaml_gives_mergekits_tensors(family, method, base, experts, per, glob):
    """Our recipe → to_mergekit_yaml → mergekit's own run_merge, tensor for tensor."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file

    from core.merge import engine
    from core.recipe import ModelEntry, Recipe, to_mergekit_yaml

    paths, root = family
    recipe = Recipe(method, paths[base] if base else None,
                    [ModelEntry(paths[e], dict(p)) for e, p in zip(experts, per)], dict(glob))
    out = root / f"out-{method}-{len(list(root.iterdir()))}"
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(to_mergekit_yaml(recipe))), str(out),
              MergeOptions(copy_tokenizer=False))
    ref = load_file(str(out / "model.safetensors"))
    ours, _ = engine.merge_state_dict(recipe)
    assert set(ref) == set(ours)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("method,per", [
    ("ties", [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.7}]),
    ("breadcrumbs", [{"weight": 1.0, "density": 0.8, "gamma": 0.05}, {"weight": 1.0, "density": 0.7, "gamma": 0.02}]),
])
def test_bf16_checkpoints_give_mergekits_float32_tensors(family, tmp_path, method, per):
    """bf16 weights tie constantly (65,536 values): what "the same tensors" means there. mergekit with
    dtype float32 computes as we do (float32, rounded once); then every trim keeps the same entries and
    the tensors agree. (With dtype bfloat16 mergekit rounds τ and each sum to bf16: bench/bf16_parity.py
    measures that difference, which is arithmetic, not order.)"""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file, save_file

    from core.merge import engine
    from core.recipe import ModelEntry, Recipe, to_mergekit_yaml

    paths, _ = family
    bf = {}
    for name in ("base", "a", "b"):
        import shutil
        dst = tmp_path / name
        shutil.copytree(paths[name], dst)
        w = load_file(str(dst / "model.safetensors"))
        save_file({k: v.bfloat16().contiguous() for k, v in w.items()}, str(dst / "model.safetensors"),
                  metadata={"format": "pt"})
        bf[name] = str(dst)
    recipe = Recipe(method, bf["base"], [ModelEntry(bf[e], dict(p)) for e, p in zip(("a", "b"), per)], {}, "float32")
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(to_mergekit_yaml(recipe))), str(tmp_path / "mk"),
              MergeOptions(copy_tokenizer=False))
    ref = load_file(str(tmp_path / "mk" / "model.safetensors"))
    ours, _ = engine.merge_state_dict(recipe)
    base = load_file(str(tmp_path / "base" / "model.safetensors"))
    ties = 0
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=ATOL, rtol=0, msg=name)
        # the same entries kept: changed from the base on both sides or on neither
        z = base[name].float()
        assert torch.equal(ours[name] != z, ref[name] != z), name
        d = (load_file(str(tmp_path / "a" / "model.safetensors"))[name].float() - z).abs().reshape(-1)
        ties += int(d.numel() - torch.unique(d).numel())
    assert ties > 100           # the case: many equal magnitudes
