"""TIES-Merging (Yadav et al. 2023): trim, elect sign, disjoint mean.

Follows mergekit's ``ties`` (generalized_task_arithmetic.py, mergekit 0.1.5)
so the same YAML gives the same tensors:

* trim: each τᵢ keeps its ⌊density·n⌋ largest |τᵢ| per tensor (at least one
  entry when density > 0, as mergekit does; density ≥ 1 keeps everything);
  ties at the threshold are kept in index order, so exactly k survive;
* the weights multiply the trimmed vectors BEFORE the sign election, and the
  elected sign is that of Σ wᵢτᵢ (a zero sum elects +);
* an entry joins the sum only if its weighted sign equals the elected one
  (zero entries never agree); ``normalize`` (default on) divides by the sum of
  the agreeing weights, so an entry where one expert agrees is that expert's
  value, not a fraction of it;
* λ scales the result.

The combination step (``combine``) and the L1 rescale are shared with DARE
and Breadcrumbs, which differ from TIES only in how they sparsify.
"""
from __future__ import annotations

import torch

from . import register
from ._threshold import top_k_mask
from .base import MethodSpec, Param, TensorContext


def rescale_l1(delta: torch.Tensor, mask: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """δ⊙m scaled so its L1 norm equals δ's (mergekit's ``rescale``).

    Matching the norm rather than dividing by the density keeps the expected
    size of the update exact for this very tensor, not just on average.
    Below ``eps`` either norm is treated as zero and nothing is scaled.
    """
    masked = delta * mask
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the ⌊density·n⌋ largest |δ| (at least one when density > 0)."""
    if density >= 1:
        return delta
    n = delta.numel()
    if density <= 0 or n == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * n))
    mask = top_k_mask(delta.abs(), k).to(delta.dtype)
    return rescale_l1(delta, mask) if rescale else delta * mask


def combine(deltas: list, weights: list[float], *, consensus: bool, normalize: bool,
            lam: float) -> torch.Tensor:
    """mergekit's generalized task arithmetic after sparsification.

    ``deltas`` are already sparsified; weights are applied here, before the
    sign election, exactly as mergekit does.
    """
    stacked = torch.stack(list(deltas), 0)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    w = w.reshape((-1,) + (1,) * (stacked.dim() - 1))
    weighted = stacked * w
    if consensus:
        elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
        agree = (weighted.sign() == elected).to(stacked.dtype)
        mixed = (weighted * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return mixed


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    rescale = bool(global_params.get("rescale", False))
    trimmed = [magnitude(d, float(p.get("density", 1.0)), rescale) for d, p in zip(deltas, model_params)]
    return combine(trimmed, [float(p.get("weight", 1.0)) for p in model_params], consensus=True,
                   normalize=bool(global_params.get("normalize", True)),
                   lam=float(global_params.get("lambda", 1.0)))


SPEC = register(MethodSpec(
    name="ties", label="TIES", fn=merge, mergekit_name="ties",
    summary="Trim each task vector to its largest entries, elect a sign per weight, average the agreeing ones.",
    params=[
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="wᵢ: this expert's weight, applied before the sign vote"),
        Param("density", 1.0, 0.0, 1.0, per_model=True,
              help="fraction of this expert's largest-magnitude changes kept per tensor (1 keeps all)"),
        Param("lambda", 1.0, 0.0, 2.0, help="λ: global scale of the merged task vector"),
        Param("normalize", True, kind="bool",
              help="divide each entry by the summed weights of the experts that agree with its sign"),
        Param("rescale", False, kind="bool",
              help="scale each trimmed task vector back to its original L1 norm"),
    ],
))
