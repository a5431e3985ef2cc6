"""Task Arithmetic (Ilharco et al. 2023): τ = λ Σ wᵢ τᵢ.

The systematic study found it the most robust method on LLMs, so it is the
reference every other method is compared against. Matches mergekit's
``task_arithmetic`` with ``normalize`` off (mergekit's default for it).
"""
from __future__ import annotations

import torch

from .base import MethodSpec, Param, TensorContext, register


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    lam = global_params["lambda"]
    out = torch.zeros_like(base)
    for d, p in zip(deltas, model_params):
        out.add_(d, alpha=p["weight"])
    return out * lam


SPEC = register(MethodSpec(
    name="task_arithmetic", label="Task Arithmetic", fn=merge, mergekit_name="task_arithmetic",
    summary="Add each expert's task vector, scaled by its weight and a global λ.",
    params=[
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="wᵢ: how much of this expert's task vector to add"),
        Param("lambda", 1.0, 0.0, 2.0, symbol="λ", label="scale", help="λ: global scale of the summed task vectors"),
    ],
    elementwise=True,   # a weighted sum: the engine may feed row blocks
))
