"""SLERP: spherical interpolation between the base and ONE expert.

Matches mergekit's ``slerp`` (merge_methods/slerp.py, 0.1.5 and the
earlier numpy version alike):

* ONE angle per tensor, from the flattened tensors;
* the angle comes from normalised copies, but the ORIGINAL vectors are
  interpolated: θ = sin((1−t)Ω)/sin Ω · θ₀ + sin(tΩ)/sin Ω · θ₁, so the
  norm is interpolated too, not forced onto a sphere;
* when |cos Ω| > 0.9995 (nearly parallel, which is common for fine-tunes of
  one base) it falls back to linear interpolation (1−t)·θ₀ + t·θ₁, where the
  spherical formula is numerically meaningless;
* a norm below 1e-8 counts as 1, so a zero tensor does not divide by zero.

The arithmetic runs in float32 (float64 stays float64).
"""
from __future__ import annotations

import math

import torch

from .base import MethodSpec, Param, TensorContext, register

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """SLERP of v0 → v1 at fraction t, one angle for the whole tensor."""
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(-1).to(dtype)
    b = v1.reshape(-1).to(dtype)
    na = float(torch.linalg.vector_norm(a))
    nb = float(torch.linalg.vector_norm(b))
    na = na if na > EPS else 1.0
    nb = nb if nb > EPS else 1.0
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca = math.sin((1 - t) * theta) / math.sin(theta)
        cb = math.sin(t * theta) / math.sin(theta)
    return (ca * a + cb * b).reshape(v0.shape)


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    t = global_params["t"]
    theta = slerp(t, base, base + deltas[0])
    return (theta - base).to(base.dtype)


SPEC = register(MethodSpec(
    name="slerp", label="SLERP", fn=merge, mergekit_name="slerp", min_models=1, max_models=1,
    summary="Spherical interpolation between the base and one expert, one angle per tensor.",
    params=[
        Param("t", 0.5, 0.0, 1.0, symbol="t", label="interpolation", help="t: 0 gives the base, 1 the expert"),
    ],
))
