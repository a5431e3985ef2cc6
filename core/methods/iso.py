"""Isotropic merging (Marczak et al. 2025, "No Task Left Behind"), as studied
in "A Systematic Study of Model Merging Techniques in LLMs" (mergekit
PR #639) and in the authors' code (iso-merging, ``iso_c`` / ``iso_cts``).

Both flatten the spectrum of the summed task vector so that directions
shared by many experts no longer drown out the rarer ones:

* Iso-C: M = Σ δᵢ = U S Vᵀ, Δ = mean(S)·U Vᵀ.
* Iso-CTS: the common space is the top k_c directions of M, with
  k_c = ⌊0.8·r⌋ adjusted so that r − k_c divides by T; each expert adds the
  top (r − k_c)/T left/right singular directions of its residual
  δᵢ − U_c U_cᵀ δᵢ (what the common space misses); the stacked directions
  are orthogonalised by their polar factors and every singular value is set
  to the mean of the stacked ones.

θ = θ₀ + α·Δ. Only 2-D tensors whose name contains neither ``embed_tokens``
nor ``lm_head`` are treated this way; every other tensor gets the mean of
the δᵢ (α scales every tensor, as the reference's scaling factor does). SVD
in float32.
"""
from __future__ import annotations

import torch

from .base import MethodSpec, Param, TensorContext, register
from .tsv import gets_svd, polar


def iso_c_delta(deltas: list) -> torch.Tensor:
    m = torch.stack([d.to(torch.float32) for d in deltas], 0).sum(0)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return s.mean() * (u @ vh)


def common_size(r: int, n_tasks: int, fraction: float) -> int:
    """k_c: ⌊fraction·r⌋ moved so that r − k_c is a multiple of T (reference rounding)."""
    k = int(r * fraction)
    specific = round((r - k) / n_tasks) * n_tasks
    if specific > r:            # the reference can overshoot for tiny r; stay inside the matrix
        specific -= n_tasks
    return r - specific


def iso_cts_delta(deltas: list, fraction: float = 0.8) -> torch.Tensor:
    mats = [d.to(torch.float32) for d in deltas]
    T = len(mats)
    m, n = mats[0].shape
    r = min(m, n)
    kc = common_size(r, T, fraction)
    per = (r - kc) // T
    u, s, vh = torch.linalg.svd(torch.stack(mats, 0).sum(0), full_matrices=False)
    uc, sc, vc = u[:, :kc], s[:kc], vh[:kc, :]
    ucat = mats[0].new_zeros(m, r)
    scat = mats[0].new_zeros(r)
    vcat = mats[0].new_zeros(r, n)
    for i, d in enumerate(mats):
        resid = d - uc @ (uc.T @ d)
        ut, st, vt = torch.linalg.svd(resid, full_matrices=False)
        ucat[:, i * per:(i + 1) * per] = ut[:, :per]
        scat[i * per:(i + 1) * per] = st[:per]
        vcat[i * per:(i + 1) * per, :] = vt[:per, :]
    ucat[:, T * per:T * per + kc] = uc
    scat[T * per:T * per + kc] = sc
    vcat[T * per:T * per + kc, :] = vc
    return scat.mean() * (polar(ucat) @ polar(vcat))


def _mean(deltas: list) -> torch.Tensor:
    return torch.stack(list(deltas), 0).to(torch.float32).mean(0)


def merge_c(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
            ctx: TensorContext) -> torch.Tensor:
    alpha = global_params["alpha"]
    out = iso_c_delta(deltas) if gets_svd(base, ctx.name) else _mean(deltas)
    return (alpha * out).to(base.dtype)


def merge_cts(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
              ctx: TensorContext) -> torch.Tensor:
    alpha = global_params["alpha"]
    fraction = global_params["common_space_fraction"]
    out = iso_cts_delta(deltas, fraction) if gets_svd(base, ctx.name) else _mean(deltas)
    return (alpha * out).to(base.dtype)


SPEC_C = register(MethodSpec(
    name="iso_c", label="Iso-C", fn=merge_c,
    summary="Sum the task vectors, then give every singular direction the same strength.",
    params=[Param("alpha", 1.0, 0.0, 2.0, symbol="α", label="scale",
                  help="α: global scale of the merged task vector")],
))

SPEC_CTS = register(MethodSpec(
    name="iso_cts", label="Iso-CTS", fn=merge_cts,
    summary="Like Iso-C, but reserve part of the spectrum for each expert's own directions.",
    params=[
        Param("alpha", 1.0, 0.0, 2.0, symbol="α", label="scale", help="α: global scale of the merged task vector"),
        Param("common_space_fraction", 0.8, 0.0, 1.0,
              help="share of the spectrum given to directions common to all experts"),
    ],
))
