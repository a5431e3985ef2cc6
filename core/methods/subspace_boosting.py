"""Subspace Boosting (Skorobogat et al. 2025), as studied in "A Systematic
Study of Model Merging Techniques in LLMs" (mergekit PR #639,
``subspace_boosting``).

Merging many experts collapses the rank of the merged task vector: a few
shared directions dominate and the experts' own directions shrink. After a
Task Arithmetic or TIES merge, each attention/MLP projection matrix
(q, k, v, o, gate, up, down) is decomposed, U S Vᵀ = svd(Δ), and with
c = cumsum(S)/sum(S) and k the first index where c ≥ β, every singular value
below S[k] is raised to S[k]; Δ is rebuilt. S is sorted largest first, so
S[k] is the smallest singular value among the top ones that together hold a
β share of the spectrum's mass: a small β (0.01) gives a high floor and a
nearly flat spectrum, β → 1 changes almost nothing. Other tensors
(norms, biases, embeddings, head) keep the plain TA/TIES result.

The base merge is exactly our ``task_arithmetic`` or ``ties`` with the same
per-model weight/density and global λ/normalize; boosting comes last, after
TIES's normalisation (as in the authors' code), not before it as in the PR.
SVD in float32. A zero Δ is left as it is.
"""
from __future__ import annotations

import torch

from . import task_arithmetic, ties
from .base import MethodSpec, Param, TensorContext, register

BOOSTED_MODULES = ("q", "k", "v", "o", "gate", "up", "down")
_TIES_GLOBALS = ties.SPEC.defaults()[1]


def boost(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """Raise the singular values below the β-cumulative cut-off to S[k]."""
    u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
    total = s.sum()
    if not bool(total > 0):
        return delta
    hit = (torch.cumsum(s, 0) / total >= beta).nonzero()
    k = int(hit[0]) if hit.numel() else s.numel() - 1
    s = torch.clamp(s, min=s[k])
    return ((u * s.unsqueeze(0)) @ vh).to(delta.dtype)


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    if global_params["base_method"] == "ties":
        # TIES's knobs this method does not offer (rescale) keep TIES's own defaults
        out = ties.merge(base, deltas, model_params, {**_TIES_GLOBALS, **global_params}, ctx)
    else:
        out = task_arithmetic.merge(base, deltas, model_params, global_params, ctx)
    if base.dim() == 2 and ctx.module in BOOSTED_MODULES:
        out = boost(out, global_params["beta"])
    return out


SPEC = register(MethodSpec(
    name="subspace_boosting", label="Subspace Boosting", fn=merge,
    summary="Merge with TA or TIES, then lift the weakest singular directions of every projection matrix.",
    params=[
        Param("base_method", "ta", kind="choice", choices=("ta", "ties"),
              help="the merge whose result is boosted: Task Arithmetic or TIES"),
        Param("beta", 0.01, 0.0, 1.0, symbol="β", label="floor",
              help="β: the floor is the singular value where the largest ones reach a β share of the total; smaller β boosts more"),
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="wᵢ: how much of this expert's task vector to add"),
        Param("density", 1.0, 0.0, 1.0, per_model=True, used_when=("base_method", "ties"),
              help="TIES only: fraction of this expert's largest changes kept per tensor"),
        Param("lambda", 1.0, 0.0, 2.0, symbol="λ", label="scale", help="λ: global scale of the merged task vector"),
        Param("normalize", True, kind="bool", used_when=("base_method", "ties"),
              help="TIES only: divide by the summed weights of the experts that agree with each sign"),
    ],
))
