"""Linear merge (Wortsman et al. 2022, "model soups"): a weighted average of
the MODELS, not of task vectors. Matches mergekit's ``linear``.

θ = Σ wᵢ θᵢ / Σ wᵢ with ``normalize`` (default on), else Σ wᵢ θᵢ.

The engine always hands methods a base and task vectors, so with θᵢ = θ₀ + δᵢ
the returned delta is

    normalize:  Σ wᵢ δᵢ / Σ wᵢ
    otherwise:  (Σ wᵢ − 1)·θ₀ + Σ wᵢ δᵢ

which is exactly θ − θ₀ without forming the θᵢ (one less full-size copy per
model). ``needs_base`` is False: when a recipe has no base_model the engine
passes the first model as ``base`` and includes its zero delta in ``deltas``
(with its own weight), so EVERY entry of ``deltas`` is a model of the
average; when a base_model is given but not listed among the models, it is
only the reference point and takes no part in the average, as in mergekit.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .base import MethodSpec, Param, TensorContext, register


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    weights = [p["weight"] for p in model_params]
    total = sum(weights)
    out = torch.zeros_like(base)
    for d, w in zip(deltas, weights):
        out.add_(d, alpha=w)
    if global_params["normalize"]:
        if abs(total) < 1e-12:
            raise UserError("The linear merge weights add up to 0, so the average is undefined; "
                            "give at least one model a positive weight.")
        return out / total
    if total != 1.0:
        out.add_(base, alpha=total - 1.0)
    return out


SPEC = register(MethodSpec(
    name="linear", label="Linear (model soup)", fn=merge, mergekit_name="linear",
    needs_base=False, min_models=2,
    summary="Weighted average of the models' weights.",
    params=[
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="wᵢ: this model's share of the average"),
        Param("normalize", True, kind="bool", help="divide by the sum of the weights (off: plain weighted sum)"),
    ],
    elementwise=True,   # a weighted sum: the engine may feed row blocks
))
