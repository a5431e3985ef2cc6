"""ACM: Activation-Guided Consensus Merging (NeurIPS 2025).

Each expert's task vector is scaled per layer by how far its activations
there have drifted from the base's: layers that still share much
information with the base (high mutual information I_i^k) carry little of
the expert's own skill and get a small coefficient; layers that changed
get a large one.

    λ_i^k = 1 − 1/(1 + e^(−t·(I_i^k − max I)))        ∈ [0.5, 1)

The shift by the maximum (over every expert and point, so a larger MI
always means a smaller λ, across experts too) keeps the exponent finite
for any t; t (``temperature``, default 0.7) sets how strongly MI
differences spread the coefficients. Every tensor of decoder layer k uses
layer k's λ; the embedding, the final norm and the lm_head use their own
points' (checkpoint.naming.point_of); a tensor tied to no point takes the
mean of the expert's coefficients.

* ACM-TA (``base_method: task_arithmetic``): θ^k = θ₀^k + (1/N) Σ_i λ_i^k τ_i^k,
  Task Arithmetic with weights λ_i^k/N.
* ACM-TIES (``base_method: ties``): TIES's trim (per-model ``density``) and
  sign election on the λ-weighted trimmed vectors, then the disjoint mean
  over the experts that agree, divided by their COUNT (the TIES paper's
  mean). mergekit's ``normalize`` would divide by the agreeing weights
  instead, which cancels λ wherever one expert agrees and hides ACM's
  overall scale. Where all experts agree ACM-TIES equals ACM-TA of the
  trimmed vectors; with every λ = 1 it is TIES with unit weights.

MI comes from activations.py and is cached there, so a new temperature
only recomputes the coefficients (no forward pass).
"""
from __future__ import annotations

import math

import torch

from .. import task_arithmetic, ties
from ..base import MethodSpec, Param, TensorContext, register

DEFAULT_T = 0.7
BASE_METHODS = ("task_arithmetic", "ties")
POOL_PER_SAMPLE = 4     # built-in pool: K-means picks n_calibration out of 4x as many prompts


def coefficients(mi: dict[str, list[float]], t: float) -> dict[str, list[float]]:
    """λ per expert and point from I (nats): 1 − 1/(1 + e^(−t(I − max I))).

    Written as the logistic of t·(max I − I) ≥ 0, which is the same number
    and never overflows.
    """
    top = max((x for v in mi.values() for x in v), default=0.0)
    return {e: [1.0 / (1.0 + math.exp(-t * (top - x))) for x in v] for e, v in mi.items()}


class Prepared:
    """Per-tensor ``aux`` for the engine: {"coeffs": [λ_i for this tensor's point], "point": name};
    ``summary()``: the analysis the coefficients came from (core.service.acm_analysis)."""

    def __init__(self, analysis: dict, layout=None):
        self.analysis, self.layout = analysis, layout
        points, experts, coef = analysis["layers"], analysis["experts"], analysis["coef"]
        self.points, self.experts, self.coef = points, experts, coef
        self._by_point = {p: [coef[e][j] for e in experts] for j, p in enumerate(points)}
        self._fallback = [sum(coef[e]) / len(coef[e]) for e in experts]

    def summary(self) -> dict:
        return self.analysis

    def aux(self, name: str) -> dict:
        from ...checkpoint.naming import point_of
        p = point_of(name, self.layout)
        return {"coeffs": list(self._by_point.get(p, self._fallback)), "point": p}


def _rows(glob: dict, n: int, base_path: str) -> list[dict]:
    from . import activations
    path = glob["calibration"]
    if path:
        return activations.read_jsonl(path)
    from ...zoo import data_for   # the tiny family's prompts for its models, English ones for the rest
    return [{"prompt": p} for p in data_for(base_path).calibration_pool(POOL_PER_SAMPLE * n, seed=0)]


def analyse(p, progress=None) -> dict:
    """MI, coefficients and everything the UI plots for a merge plan (see service.acm_analysis)."""
    from . import activations
    from .mi import max_mi
    glob = p.global_params   # validated with the recipe: density only under ties, clusters <= n_calibration
    n, k = glob["n_calibration"], glob["clusters"]
    points, mi, details = activations.layer_mi(p.base, list(p.sources), _rows(glob, n, p.base.path), n_calibration=n,
                                               clusters=k, seed=p.seed, progress=progress)
    t = glob["temperature"]
    experts = [s.ref for s in p.sources]
    coef = coefficients(mi, t)
    return {"layers": points, "experts": experts, "mi": mi, "coef": coef, "temperature": t,
            "base_method": glob["base_method"], "mi_max": max_mi(activations.MAX_PAIRS),
            "units": "nats", "n_pool": details["n_pool"], "n_calibration": details["n_calibration"],
            "clusters": k, "cached": details["cached"]}


def check(model_params: list, global_params) -> None:
    """ACM's rule between parameters (recipe validation runs it, before any weight is read)."""
    from ...errors import UserError
    n, k = global_params["n_calibration"], global_params["clusters"]
    if k > n:
        raise UserError(f"ACM's clusters ({k}) must not exceed n_calibration ({n}).")


def prepare(plan, progress=None) -> Prepared:
    from ...checkpoint import layout
    return Prepared(analyse(plan, progress), layout(plan.base))


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    coeffs = ctx.aux.get("coeffs")
    if coeffs is None or len(coeffs) != len(deltas):
        raise RuntimeError(f"ACM needs one coefficient per expert for {ctx.name} from its prepare step")
    n = len(deltas)
    if global_params["base_method"] == "ties":
        trims = [ties.trim_stats(d, mp, {"rescale": False}, overwrite=False) for d, mp in zip(deltas, model_params)]
        weighted = [tr.apply(d).mul_(float(c)) for tr, d, c in zip(trims, deltas, coeffs)]
        # unit weights in the divisor: the disjoint mean counts agreeing experts
        return ties.elect(weighted, [1.0] * n, consensus=True, normalize=True, lam=1.0)
    # ACM-TA: Task Arithmetic with weights λ_i^k/N and λ = 1
    return task_arithmetic.merge(base, deltas, [{"weight": float(c) / n} for c in coeffs], {"lambda": 1.0}, ctx)


SPEC = register(MethodSpec(
    name="acm", sorts_ties=True, label="ACM (activation-guided)", fn=merge, prepare=prepare, check=check,
    summary="Scale each expert's task vector per layer by how much its activations drifted from the base's "
            "(mutual information on calibration prompts), then Task Arithmetic or TIES.",
    params=[
        Param("base_method", "task_arithmetic", kind="choice", choices=BASE_METHODS,
              help="how the per-layer weighted task vectors are combined: ACM-TA or ACM-TIES"),
        # step 0.01 from 0.01: the default 0.7 and 1.0 lie on the slider (0.05 steps from 0.01 missed both)
        Param("temperature", DEFAULT_T, 0.01, 10.0, step=0.01, symbol="t",
              help="t: how strongly MI differences spread the layer coefficients (λ in [0.5, 1))"),
        Param("n_calibration", 100, 4, 2000, kind="int",
              help="calibration samples chosen by K-means from the pool"),
        Param("clusters", 20, 1, 200, kind="int", help="K of the K-means over the pool's mean hidden states"),
        Param("calibration", "", kind="str", label="calibration data (file)",
              help="JSONL of {\"text\": ...} or {\"prompt\": ...} lines; empty: the built-in pool"),
        Param("density", 1.0, 0.0, 1.0, per_model=True, used_when=("base_method", "ties"),
              help="ACM-TIES only: fraction of this expert's largest changes kept per tensor"),
    ],
))
