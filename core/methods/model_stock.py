"""Model Stock (Jang et al. 2024): interpolate between the experts' mean and
the base by how aligned the task vectors are.

Per tensor, k experts, cos = mean pairwise cosine of the flattened task
vectors (each pair's norm product clamped to ≥ 1e-6, each cosine clamped to
[−1, 1]); t = k·cos / (1 + (k−1)·cos); θ = t·mean(θᵢ) + (1−t)·θ₀, i.e.
τ = t·mean(τᵢ). Matches mergekit 0.1.5's ``model_stock``, including:

* ``filter_wise``: one cosine and t per row (output filter) instead of per
  tensor; 1-D tensors count as one row;
* where 1 + (k−1)·cos is within 1e-6 of 0 (opposing task vectors) there is
  no finite estimate and t = 0, so the tensor keeps the base.

Weights are not used: the method derives its own coefficient, as mergekit's
does. Needs at least two experts (a single vector has no angle).
"""
from __future__ import annotations

import torch

from .base import MethodSpec, Param, TensorContext, register


def interpolation_t(deltas: list, filter_wise: bool = False) -> torch.Tensor:
    """Model Stock's t, shaped to broadcast against a delta's rows (or a scalar tensor)."""
    if filter_wise:
        vecs = [d.unsqueeze(0) if d.dim() <= 1 else d.reshape(d.shape[0], -1) for d in deltas]
    else:
        vecs = [d.reshape(-1) for d in deltas]
    cosines = []
    for i, a in enumerate(vecs):
        for b in vecs[i + 1:]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0)
    k = len(deltas)
    denom = 1 + (k - 1) * cos
    singular = denom.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denom), denom)
    return torch.where(singular, torch.zeros_like(cos), k * cos / safe)


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    filter_wise = global_params["filter_wise"]
    t = interpolation_t(deltas, filter_wise)
    mean = torch.stack(list(deltas), 0).mean(0)
    if filter_wise and base.dim() >= 2:
        t = t.reshape((-1,) + (1,) * (base.dim() - 1))
    return t * mean


SPEC = register(MethodSpec(
    name="model_stock", label="Model Stock", fn=merge, mergekit_name="model_stock", min_models=2,
    summary="Move from the base towards the experts' average by an amount set by how aligned their task vectors are.",
    params=[
        Param("filter_wise", False, kind="bool", mergekit="filter_wise",
              help="one interpolation factor per output row instead of per tensor"),
    ],
))
