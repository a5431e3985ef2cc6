"""The classic merge methods against closed-form or hand-computed results on
tiny tensors (DESIGN §4). mergekit parity is in test_mergekit_parity.py."""
from __future__ import annotations

import math

import pytest
import torch

from core.errors import UserError
from core.methods import REGISTRY, TensorContext
from core.methods._threshold import rank_window_mask, top_k_mask
from core.methods.iso import common_size
from core.methods.model_stock import interpolation_t
from core.methods.tsv import polar

T = torch.tensor
MINE = ["linear", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "model_stock",
        "slerp", "tsv", "iso_c", "iso_cts", "subspace_boosting"]


def run(method: str, base, deltas, per=None, glob=None, name="model.layers.0.mlp.up_proj.weight",
        module="up", seed=0):
    """Call a method the way the engine does, defaults filled from its spec."""
    spec = REGISTRY[method]
    pm, gl = spec.defaults()
    per = per or [{} for _ in deltas]
    return spec.fn(base, list(deltas), [{**pm, **p} for p in per], {**gl, **(glob or {})},
                   TensorContext(name, 0, module, seed))


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


# ------------------------------------------------------------- thresholds
def test_top_k_keeps_exactly_k_and_breaks_ties_by_index():
    s = T([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    assert top_k_mask(s, 2).tolist() == [False, True, True, False, False, False]
    assert top_k_mask(s, 4).tolist() == [False, True, True, True, True, False]
    assert top_k_mask(s, 0).sum() == 0 and top_k_mask(s, 9).all()


def test_rank_window_counts_ascending_ranks():
    s = T([5.0, 1.0, 4.0, 2.0, 3.0])        # ascending ranks: 4 0 3 1 2
    assert rank_window_mask(s, 1, 3).tolist() == [False, False, False, True, True]
    assert rank_window_mask(s, 3, 3).sum() == 0


def test_top_k_works_past_quantiles_size_limit():
    # torch.quantile refuses more than 2**24 elements; kthvalue does not
    n = 2 ** 24 + 7
    s = torch.rand(n, generator=torch.Generator().manual_seed(0))   # 2**24 values: plenty of exact ties
    m = top_k_mask(s, 1000)
    assert int(m.sum()) == 1000
    assert s[m].min() >= s[~m].max()


# ------------------------------------------------------------- TIES
D1, D2 = T([1.0, -2.0, 3.0, 0.0]), T([-3.0, 1.0, 1.0, 2.0])


def test_ties_sign_election_hand_example():
    # Σ = [-2, -1, 4, 2] elects [-, -, +, +]; only agreeing entries are averaged,
    # and the zero in D1 never agrees
    close(run("ties", torch.zeros(4), [D1, D2]), [-3.0, -2.0, 2.0, 2.0])
    close(run("ties", torch.zeros(4), [D1, D2], glob={"normalize": False}), [-3.0, -2.0, 4.0, 2.0])
    close(run("ties", torch.zeros(4), [D1, D2], glob={"lambda": 0.5}), [-1.5, -1.0, 1.0, 1.0])


def test_ties_weights_apply_before_the_vote():
    # w = (1, 0.2): weighted D2 = [-.6, .2, .2, .4], Σ = [.4, -1.8, 3.2, .4] flips entry 0 to +
    per = [{"weight": 1.0}, {"weight": 0.2}]
    close(run("ties", torch.zeros(4), [D1, D2], per), [1.0, -2.0, 3.2 / 1.2, 2.0])
    close(run("ties", torch.zeros(4), [D1, D2], per, {"normalize": False}), [1.0, -2.0, 3.2, 0.4])


def test_ties_zero_sum_elects_plus():
    close(run("ties", torch.zeros(1), [T([1.0]), T([-1.0])]), [1.0])


def test_ties_density_trims_each_expert_to_its_largest_entries():
    d = T([0.1, -5.0, 3.0, -0.2, 4.0])
    close(run("ties", torch.zeros(5), [d], [{"density": 0.4}]), [0.0, -5.0, 0.0, 0.0, 4.0])
    # ties at the threshold: exactly ⌊0.5·4⌋ = 2 survive, earliest first
    close(run("ties", torch.zeros(4), [torch.ones(4)], [{"density": 0.5}]), [1.0, 1.0, 0.0, 0.0])


def test_ties_result_is_independent_of_the_base():
    base = torch.randn(4)
    close(run("ties", base, [D1, D2]), run("ties", torch.zeros(4), [D1, D2]))


# ------------------------------------------------------------- Breadcrumbs
MAGS = T([3.0, -10.0, 1.0, 7.0, -5.0, 2.0, 9.0, -4.0, 6.0, 8.0])   # |.| is 1..10 shuffled


def kept(out):
    return sorted(int(abs(v)) for v in out.tolist() if v != 0)


def test_breadcrumbs_drops_outliers_and_small_entries():
    # keep ⌊.5·10⌋ = 5, drop top ⌊.2·10⌋ = 2: ranks [3, 8) → |δ| 4..8
    out = run("breadcrumbs", torch.zeros(10), [MAGS], [{"density": 0.5, "gamma": 0.2}])
    assert kept(out) == [4, 5, 6, 7, 8]
    assert torch.equal(out[out != 0], MAGS[out != 0])


def test_breadcrumbs_gamma_cutoff_zero_keeps_the_top_not_nothing():
    # ⌊0.05·10⌋ = 0 outliers: older mergekit zeroed the delta; we keep the top 5
    out = run("breadcrumbs", torch.zeros(10), [MAGS], [{"density": 0.5, "gamma": 0.05}])
    assert kept(out) == [6, 7, 8, 9, 10]


def test_breadcrumbs_shrinks_the_outlier_cut_to_keep_density():
    out = run("breadcrumbs", torch.zeros(10), [MAGS], [{"density": 0.8, "gamma": 0.4}])
    assert kept(out) == [1, 2, 3, 4, 5, 6, 7, 8]
    full = run("breadcrumbs", torch.zeros(10), [MAGS], [{"density": 1.0, "gamma": 0.4}])
    assert torch.equal(full, MAGS)


def test_breadcrumbs_ties_votes_on_the_kept_entries():
    a, b = T([1.0, -2.0, 4.0]), T([-3.0, 1.0, 1.0])
    # density 1 keeps everything: plain TIES without normalisation
    close(run("breadcrumbs_ties", torch.zeros(3), [a, b]), [-3.0, -2.0, 5.0])


# ------------------------------------------------------------- DARE
def test_dare_is_deterministic_per_seed_and_tensor():
    d = [torch.randn(64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    per = [{"density": 0.5}, {"density": 0.5}]
    a = run("dare_linear", torch.zeros(64, 64), d, per, seed=3)
    b = run("dare_linear", torch.zeros(64, 64), d, per, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, run("dare_linear", torch.zeros(64, 64), d, per, seed=4))
    assert not torch.equal(a, run("dare_linear", torch.zeros(64, 64), d, per, seed=3, name="other.weight"))


def test_dare_rescale_preserves_l1_and_drops_the_right_fraction():
    d = torch.randn(100, 100, generator=torch.Generator().manual_seed(0))
    out = run("dare_linear", torch.zeros(100, 100), [d], [{"density": 0.25}], seed=1)
    assert abs((out != 0).float().mean().item() - 0.25) < 0.02
    assert out.abs().sum().item() == pytest.approx(d.abs().sum().item(), rel=1e-5)
    raw = run("dare_linear", torch.zeros(100, 100), [d], [{"density": 0.25}], {"rescale": False}, seed=1)
    assert torch.equal(raw != 0, out != 0)             # same mask, only the scale differs
    assert torch.equal(raw[raw != 0], d[raw != 0])


def test_dare_density_one_is_task_arithmetic_or_unnormalised_ties():
    per = [{"weight": 0.5}, {"weight": 1.5}]
    close(run("dare_linear", torch.zeros(4), [D1, D2], per), 0.5 * D1 + 1.5 * D2)
    close(run("dare_ties", torch.zeros(4), [D1, D2]), [-3.0, -2.0, 4.0, 2.0])


# ------------------------------------------------------------- Linear
def test_linear_is_a_weighted_average_of_models():
    th1, th2 = T([1.0, 2.0]), T([3.0, 6.0])
    per = [{"weight": 1.0}, {"weight": 3.0}]
    # no base_model: the engine passes models[0] as base with a zero delta
    close(th1 + run("linear", th1, [torch.zeros(2), th2 - th1], per), [2.5, 5.0])
    # a base that is not among the models is only the reference point
    base = T([-7.0, 0.5])
    close(base + run("linear", base, [th1 - base, th2 - base], per), [2.5, 5.0])
    close(base + run("linear", base, [th1 - base, th2 - base], per, {"normalize": False}), [10.0, 20.0])


def test_linear_zero_weights_are_a_user_error():
    with pytest.raises(UserError, match="add up to 0"):
        run("linear", torch.zeros(2), [torch.ones(2), torch.ones(2)], [{"weight": 0.0}, {"weight": 0.0}])


# ------------------------------------------------------------- Model Stock
def test_model_stock_t_for_two_experts():
    # 60° apart: cos = 1/2, t = 2c/(1+c) = 2/3
    a, b = T([1.0, 0.0]), T([0.5, math.sqrt(3) / 2])
    assert interpolation_t([a, b]).item() == pytest.approx(2 / 3, abs=1e-6)
    close(run("model_stock", torch.zeros(2), [a, b]), (2 / 3) * (a + b) / 2)


def test_model_stock_t_for_three_experts_averages_pairwise_cosines():
    e1, e2 = T([1.0, 0.0]), T([0.0, 1.0])
    e3 = (e1 + e2) / math.sqrt(2)
    c = (0.0 + 2 / math.sqrt(2)) / 3          # cos12 = 0, cos13 = cos23 = 1/√2
    t = 3 * c / (1 + 2 * c)
    assert interpolation_t([e1, e2, e3]).item() == pytest.approx(t, abs=1e-6)
    base = T([2.0, -1.0])
    close(run("model_stock", base, [e1, e2, e3]), t * (e1 + e2 + e3) / 3)


def test_model_stock_opposing_experts_keep_the_base_and_filter_wise_is_per_row():
    a = T([1.0, 2.0, -1.0])
    close(run("model_stock", torch.zeros(3), [a, -a]), [0.0, 0.0, 0.0])
    rows_a = T([[1.0, 0.0], [1.0, 0.0]])
    rows_b = T([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])   # row 0 parallel (t=1), row 1 at 60° (t=2/3)
    out = run("model_stock", torch.zeros(2, 2), [rows_a, rows_b], glob={"filter_wise": True})
    close(out, torch.stack([(rows_a[0] + rows_b[0]) / 2, (2 / 3) * (rows_a[1] + rows_b[1]) / 2]))


# ------------------------------------------------------------- SLERP
def test_slerp_midpoint_interpolates_angle_and_norm():
    base, expert = T([2.0, 0.0]), T([0.0, 2.0])
    close(base + run("slerp", base, [expert - base], glob={"t": 0.5}), [math.sqrt(2), math.sqrt(2)])
    close(base + run("slerp", base, [expert - base], glob={"t": 1 / 3}), [2 * math.cos(math.pi / 6), 1.0])
    # norms 1 and 3 at 90°: θ(t) = cos(tπ/2)·θ₀ + sin(tπ/2)·θ₁
    base, expert = T([1.0, 0.0]), T([0.0, 3.0])
    close(base + run("slerp", base, [expert - base], glob={"t": 0.5}), [math.sqrt(0.5), 3 * math.sqrt(0.5)])


def test_slerp_falls_back_to_linear_for_nearly_parallel_tensors():
    base, expert = T([1.0, 0.0, 0.0]), T([1.01, 0.02, 0.0])     # cos ≈ 0.9998 > 0.9995
    out = base + run("slerp", base, [expert - base], glob={"t": 0.3})
    close(out, 0.7 * base + 0.3 * expert)


def test_slerp_endpoints():
    base, expert = torch.randn(5, 4), torch.randn(5, 4)
    close(run("slerp", base, [expert - base], glob={"t": 0.0}), torch.zeros(5, 4))
    close(base + run("slerp", base, [expert - base], glob={"t": 1.0}), expert)


# ------------------------------------------------------------- TSV / Iso
def _block_experts():
    g = torch.Generator().manual_seed(0)
    d1, d2 = torch.zeros(8, 8), torch.zeros(8, 8)
    d1[:4, :4] = torch.randn(4, 4, generator=g)
    d2[4:, 4:] = torch.randn(4, 4, generator=g)
    return d1, d2


def test_polar_factor_has_orthonormal_columns():
    u = polar(torch.randn(12, 5, generator=torch.Generator().manual_seed(1)))
    close(u.T @ u, torch.eye(5), atol=1e-5)


def test_tsv_of_experts_in_orthogonal_subspaces_is_their_sum():
    # each expert's rank 4 = ⌊8/2⌋ fits; their singular vectors are already
    # orthogonal, so the polar factors change nothing
    d1, d2 = _block_experts()
    close(run("tsv", torch.zeros(8, 8), [d1, d2]), d1 + d2, atol=1e-4)
    close(run("tsv", torch.zeros(8, 8), [d1, d2], glob={"alpha": 0.5}), 0.5 * (d1 + d2), atol=1e-4)


def test_tsv_orthogonalises_overlapping_experts():
    g = torch.Generator().manual_seed(2)
    d = [torch.randn(10, 6, generator=g) for _ in range(3)]
    out = run("tsv", torch.zeros(10, 6), d)
    assert out.shape == (10, 6)
    # Δ = U⊥ diag(Scat) V⊥ with orthonormal U⊥, V⊥: its singular values are Scat
    scat = torch.cat([torch.linalg.svdvals(x)[:2] for x in d])
    close(torch.linalg.svdvals(out), scat.sort(descending=True).values, atol=1e-4)


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_subspace_methods_average_everything_but_plain_matrices(method):
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    for name, base in [("model.embed_tokens.weight", torch.zeros(6, 4)), ("lm_head.weight", torch.zeros(6, 4)),
                       ("model.layers.0.input_layernorm.weight", torch.zeros(6, 4)[0])]:
        x, y = (a, b) if base.dim() == 2 else (a[0], b[0])
        close(run(method, base, [x, y], name=name), (x + y) / 2)
        close(run(method, base, [x, y], glob={"alpha": 2.0}, name=name), x + y)


def test_iso_c_gives_every_direction_the_mean_singular_value():
    g = torch.Generator().manual_seed(3)
    d = [torch.randn(7, 5, generator=g) for _ in range(2)]
    m = d[0] + d[1]
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    out = run("iso_c", torch.zeros(7, 5), d)
    close(out, s.mean() * (u @ vh), atol=1e-5)
    close(torch.linalg.svdvals(out), s.mean().expand(5), atol=1e-5)


def test_iso_cts_common_space_size_and_flat_spectrum():
    assert common_size(16, 2, 0.8) == 12          # ⌊12.8⌋ = 12, 4 left divides by 2
    assert common_size(10, 3, 0.8) == 7           # ⌊8⌋ = 8, round(2/3)·3 = 3 left
    assert common_size(2, 3, 0.0) == 2            # the reference would overshoot to −1
    g = torch.Generator().manual_seed(4)
    d = [torch.randn(12, 10, generator=g) for _ in range(3)]
    out = run("iso_cts", torch.zeros(12, 10), d)
    assert out.shape == (12, 10)
    sv = torch.linalg.svdvals(out)
    close(sv, sv.mean().expand(10), atol=1e-4)


# ------------------------------------------------------------- Subspace Boosting
def _with_spectrum(s):
    g = torch.Generator().manual_seed(5)
    u, _ = torch.linalg.qr(torch.randn(6, 4, generator=g))
    v, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    return u @ torch.diag(T(s)) @ v.T   # 6×4 of full rank: no zero singular value to boost


def test_subspace_boosting_raises_small_singular_values_to_the_cutoff():
    d = _with_spectrum([10.0, 5.0, 1.0, 0.1])
    # cumsum/sum = [.621, .932, .994, 1]: first ≥ .9 is k = 1, S ← max(S, 5)
    out = run("subspace_boosting", torch.zeros(6, 4), [d], glob={"beta": 0.9}, module="q")
    close(torch.linalg.svdvals(out), [10.0, 5.0, 5.0, 5.0], atol=1e-4)
    # default β = 0.01 is reached by the first value: the spectrum goes flat at 10
    out = run("subspace_boosting", torch.zeros(6, 4), [d], module="down")
    close(torch.linalg.svdvals(out), [10.0, 10.0, 10.0, 10.0], atol=1e-4)


def test_subspace_boosting_leaves_other_tensors_to_the_base_merge():
    d = _with_spectrum([10.0, 5.0, 1.0, 0.1])
    close(run("subspace_boosting", torch.zeros(6, 4), [d, d], module="other", name="x.weight"), 2 * d)
    close(run("subspace_boosting", torch.zeros(4), [D1, D2], glob={"base_method": "ties"}, module="q"),
          [-3.0, -2.0, 2.0, 2.0])


def test_subspace_boosting_on_ties_boosts_the_ties_result():
    g = torch.Generator().manual_seed(6)
    d = [torch.randn(6, 5, generator=g) for _ in range(2)]
    per = [{"density": 0.5}, {"density": 0.7}]
    t = run("ties", torch.zeros(6, 5), d, per)
    out = run("subspace_boosting", torch.zeros(6, 5), d, per, {"base_method": "ties", "beta": 0.5}, module="v")
    u, s, vh = torch.linalg.svd(t, full_matrices=False)
    k = int(((torch.cumsum(s, 0) / s.sum()) >= 0.5).nonzero()[0])
    close(out, u @ torch.diag(torch.clamp(s, min=s[k])) @ vh, atol=1e-5)


# ------------------------------------------------------------- contract
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_spec_default_lies_in_its_declared_range(name):
    spec = REGISTRY[name]
    assert spec.summary and spec.label
    for p in spec.params:
        assert p.help, f"{name}.{p.name} has no help text"
        if p.kind in ("float", "int"):
            assert isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
            assert (p.lo is None or p.default >= p.lo) and (p.hi is None or p.default <= p.hi), (name, p)
        elif p.kind == "bool":
            assert isinstance(p.default, bool)
        elif p.kind == "choice":
            assert p.default in p.choices


@pytest.mark.parametrize("method", MINE)
@pytest.mark.parametrize("shape", [(6, 5), (7,)])
def test_every_method_returns_a_finite_delta_of_the_base_shape(method, shape):
    spec = REGISTRY[method]
    g = torch.Generator().manual_seed(7)
    n = spec.max_models or 3
    deltas = [torch.randn(shape, generator=g) for _ in range(n)]
    out = run(method, torch.randn(shape, generator=g), deltas, module="up")
    assert out.shape == torch.Size(shape) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # two identical experts average to themselves (1-D: the subspace methods take the mean)
    if method in ("linear", "model_stock", "iso_c", "iso_cts", "tsv") and len(shape) == 1:
        close(run(method, torch.zeros(shape), [deltas[0]] * 2), deltas[0])


# ------------------------------------------------------------- through the engine
def _states(family, names) -> dict:
    from safetensors.torch import load_file
    return {n: load_file(family[n] + "/model.safetensors") for n in names}


@pytest.mark.parametrize("method", MINE)
def test_every_method_merges_a_real_model_through_the_engine(tiny_family, method):
    from core.merge import engine
    from core.recipe import ModelEntry, Recipe
    paths, states = tiny_family, _states(tiny_family, ["base", "safety", "math"])
    experts = ["safety"] if REGISTRY[method].max_models == 1 else ["safety", "math"]
    recipe = Recipe(method, paths["base"], [ModelEntry(paths[e]) for e in experts],
                    {"seed": 1} if method.startswith("dare") else {})
    merged, _ = engine.merge_state_dict(recipe)
    name = "model.layers.0.mlp.up_proj.weight"
    base = states["base"][name]
    deltas = [states[e][name] - base for e in experts]
    expect = base + run(method, base, deltas, name=name, module="up", seed=1)
    close(merged[name], expect, atol=1e-6)


def test_linear_without_base_averages_the_listed_models_through_the_engine(tiny_family):
    from core.merge import engine
    from core.recipe import ModelEntry, Recipe
    paths, states = tiny_family, _states(tiny_family, ["safety", "math"])
    recipe = Recipe("linear", None, [ModelEntry(paths["safety"], {"weight": 0.5}),
                                     ModelEntry(paths["math"], {"weight": 1.5})])
    merged, _ = engine.merge_state_dict(recipe)
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        close(merged[name], (states["safety"][name] + 3 * states["math"][name]) / 4, atol=1e-6)
