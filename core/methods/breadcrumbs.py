"""Model Breadcrumbs (Davari & Belilovsky 2024): drop outliers and small changes.

Per tensor and expert, with n entries, ⌊density·n⌋ = keep and ⌊γ·n⌋ = top:
the entries whose ascending |τᵢ| rank lies in [n−keep−top, n−top) survive,
i.e. the ``top`` largest changes (outliers) and the smallest ones go. When
keep + top > n the outlier cut shrinks so that ``keep`` entries remain
(the window starts at rank 0). density ≥ 1 keeps everything, as in mergekit.

Deviation from older mergekit releases (DESIGN §4): they zeroed the whole
delta when ⌊γ·n⌋ = 0 (a slice ``[lo:-0]`` is empty). Here ⌊γ·n⌋ = 0 keeps
the ``keep`` largest entries, which is what the method means; mergekit 0.1.5
fixed the bug the same way, so this module matches 0.1.5 exactly.

``breadcrumbs`` then adds the survivors like Task Arithmetic;
``breadcrumbs_ties`` merges them with TIES's sign election.
Neither normalises by default, matching mergekit.
"""
from __future__ import annotations

import torch

from ._threshold import rank_window_mask, tie_order
from .base import MethodSpec, Param, TensorContext, register
from .ties import rescale_l1, sparse_merge, sparse_params


def outlier_window(delta: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    top = int(gamma * n)
    lo = max(0, n - keep - top)
    # ties at either edge broken as mergekit's ascending sort breaks them (its outlier window)
    mask = rank_window_mask(delta.abs(), lo, lo + keep, order=tie_order("asc")).to(delta.dtype)
    return rescale_l1(delta, mask) if rescale else delta * mask


def _kept(deltas: list, model_params: list, global_params: dict, ctx: TensorContext) -> list:
    rescale = global_params["rescale"]
    return [outlier_window(d, p["density"], p["gamma"], rescale)
            for d, p in zip(deltas, model_params)]


merge = sparse_merge(_kept, consensus=False)
merge_ties = sparse_merge(_kept, consensus=True)
_DENSITY = "fraction of this expert's changes kept per tensor (1 keeps all and ignores γ)"
_GAMMA = (Param("gamma", 0.01, 0.0, 1.0, per_model=True, symbol="γ", label="outliers",
                help="γ: fraction of the largest changes dropped as outliers"),)


SPEC = register(MethodSpec(
    name="breadcrumbs", sorts_ties=True, label="Model Breadcrumbs", fn=merge, mergekit_name="breadcrumbs",
    summary="Drop each task vector's largest outliers and smallest changes, then add what remains.",
    params=sparse_params(_DENSITY, "divide by the sum of the weights", rescale=False, extra=_GAMMA),
))

SPEC_TIES = register(MethodSpec(
    name="breadcrumbs_ties", sorts_ties=True, label="Breadcrumbs-TIES", fn=merge_ties, mergekit_name="breadcrumbs_ties",
    summary="Drop each task vector's outliers and smallest changes, then merge with TIES's sign vote.",
    params=sparse_params(_DENSITY, "divide each entry by the summed weights of the experts that agree with its sign",
                         rescale=False, extra=_GAMMA),
))
