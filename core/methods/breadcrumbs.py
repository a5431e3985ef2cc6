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

from ._threshold import rank_window_mask
from .base import MethodSpec, Param, TensorContext, register
from .ties import combine, rescale_l1


def outlier_window(delta: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    top = int(gamma * n)
    lo = max(0, n - keep - top)
    mask = rank_window_mask(delta.abs(), lo, lo + keep).to(delta.dtype)
    return rescale_l1(delta, mask) if rescale else delta * mask


def _kept(deltas: list, model_params: list, global_params: dict) -> list:
    rescale = global_params["rescale"]
    return [outlier_window(d, p["density"], p["gamma"], rescale)
            for d, p in zip(deltas, model_params)]


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    return combine(_kept(deltas, model_params, global_params), [p["weight"] for p in model_params],
                   consensus=False, normalize=global_params["normalize"],
                   lam=global_params["lambda"])


def merge_ties(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
               ctx: TensorContext) -> torch.Tensor:
    return combine(_kept(deltas, model_params, global_params), [p["weight"] for p in model_params],
                   consensus=True, normalize=global_params["normalize"],
                   lam=global_params["lambda"])


def _params(normalize_help: str) -> list[Param]:
    return [
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="wᵢ: how much of this expert's task vector to add"),
        Param("density", 1.0, 0.0, 1.0, per_model=True,
              help="fraction of this expert's changes kept per tensor (1 keeps all and ignores γ)"),
        Param("gamma", 0.01, 0.0, 1.0, per_model=True,
              help="γ: fraction of the largest changes dropped as outliers"),
        Param("lambda", 1.0, 0.0, 2.0, help="λ: global scale of the merged task vector"),
        Param("rescale", False, kind="bool", help="scale the kept entries so each task vector keeps its L1 norm"),
        Param("normalize", False, kind="bool", help=normalize_help),
    ]


SPEC = register(MethodSpec(
    name="breadcrumbs", label="Model Breadcrumbs", fn=merge, mergekit_name="breadcrumbs",
    summary="Drop each task vector's largest outliers and smallest changes, then add what remains.",
    params=_params("divide by the sum of the weights"),
))

SPEC_TIES = register(MethodSpec(
    name="breadcrumbs_ties", label="Breadcrumbs-TIES", fn=merge_ties, mergekit_name="breadcrumbs_ties",
    summary="Drop each task vector's outliers and smallest changes, then merge with TIES's sign vote.",
    params=_params("divide each entry by the summed weights of the experts that agree with its sign"),
))
