"""TSV-Merge (Gargiulo et al. 2025, "Task Singular Vectors"), as studied in
"A Systematic Study of Model Merging Techniques in LLMs" (merge code:
mergekit PR #639, ``compute_and_sum_svd_mem_reduction``).

For a 2-D weight (m×n, r = min(m, n)) and T experts, k = ⌊r/T⌋:

1. take the top k singular triplets of each δᵢ and place them side by side
   into Ucat (m×r), Scat (r), Vcat (r×n); columns past T·k stay zero;
2. replace Ucat and Vcat by their polar factors (P·Qᵀ from their SVDs), the
   nearest matrices with orthonormal columns/rows, which removes the
   interference between the experts' subspaces;
3. Δ = U⊥ diag(Scat) V⊥ and θ = θ₀ + α·Δ (no 1/T: each expert keeps its own
   singular values).

Only 2-D tensors whose name contains neither ``embed_tokens`` nor
``lm_head`` get this treatment: vocab matrices are huge and their rows are
tokens, not a linear map. Every other tensor gets the mean of the δᵢ; α
scales every tensor, as the reference code's scaling factor does. SVDs run
in float32. If r < T (k = 0, only for tiny matrices) the mean is used rather
than the reference's all-zero Δ, which would silently discard every expert.
"""
from __future__ import annotations

import torch

from .base import MethodSpec, Param, TensorContext, register


def gets_svd(base: torch.Tensor, name: str) -> bool:
    """Whether a tensor is merged in singular-vector space (shared with Iso)."""
    return base.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name


def polar(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor P·Qᵀ of a = P Σ Qᵀ."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv_delta(deltas: list) -> torch.Tensor:
    mats = [d.to(torch.float32) for d in deltas]
    m, n = mats[0].shape
    r = min(m, n)
    T = len(mats)
    k = r // T
    ucat = mats[0].new_zeros(m, r)
    scat = mats[0].new_zeros(r)
    vcat = mats[0].new_zeros(r, n)
    for i, d in enumerate(mats):
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        ucat[:, i * k:(i + 1) * k] = u[:, :k]
        scat[i * k:(i + 1) * k] = s[:k]
        vcat[i * k:(i + 1) * k, :] = vh[:k, :]
    return polar(ucat) @ torch.diag(scat) @ polar(vcat)


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    alpha = global_params["alpha"]
    if gets_svd(base, ctx.name) and min(base.shape) >= len(deltas):
        out = tsv_delta(deltas)
    else:
        out = torch.stack(list(deltas), 0).to(torch.float32).mean(0)
    return (alpha * out).to(base.dtype)


SPEC = register(MethodSpec(
    name="tsv", label="TSV-Merge", fn=merge,
    summary="Keep each expert's top singular directions and orthogonalise them so the experts stop interfering.",
    params=[
        Param("alpha", 1.0, 0.0, 2.0, symbol="α", label="scale", help="α: global scale of the merged task vector"),
    ],
))
