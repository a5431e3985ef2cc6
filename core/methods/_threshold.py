"""Exact, deterministic top-k selection on one tensor, shared by the
sparsifying methods (TIES, Breadcrumbs, DARE's siblings).

Why not ``torch.quantile``: it refuses tensors over 16.7M elements, and an
interpolated quantile does not keep an exact count anyway. ``kthvalue`` is
exact and O(n) on CPU. Entries tied at the threshold are kept in index order
(earlier flat index first), so exactly k entries survive and the same input
always gives the same mask, whatever the device or thread count.

The order used everywhere is: larger |δ| ranks higher; among equal |δ| the
earlier flat index ranks higher. Under this total order the top-k sets are
nested, which lets a rank window be written as a difference of two of them.
"""
from __future__ import annotations

import torch


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (same shape) of exactly ``k`` highest scores.

    ``scores`` is usually |δ|; it is compared in float32 so bf16/fp16 inputs
    give the same mask as their float32 copies.
    """
    n = scores.numel()
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    flat = scores.reshape(-1).to(torch.float32)
    # k-th largest == (n-k+1)-th smallest
    t = torch.kthvalue(flat, n - k + 1).values
    mask = flat > t
    need = k - int(mask.sum())
    # nonzero lists the tied entries in index order; usually there are few,
    # so this costs far less than a cumsum over the whole tensor
    tied = torch.nonzero(flat == t).squeeze(1)[:need]
    mask[tied] = True
    return mask.reshape(scores.shape)


def rank_window_mask(scores: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Entries whose ascending rank r satisfies lo <= r < hi (ranks 0..n-1).

    Ascending rank r means n-1-r entries rank above it, so the window is the
    top (n-lo) minus the top (n-hi).
    """
    n = scores.numel()
    lo, hi = max(0, lo), min(n, hi)
    if hi <= lo:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return top_k_mask(scores, n - lo) & ~top_k_mask(scores, n - hi)
