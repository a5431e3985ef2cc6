"""Exact, deterministic top-k selection on one tensor, shared by the
sparsifying methods (TIES, Breadcrumbs).

The order used everywhere is: larger |x| ranks higher; among equal |x| the
earlier flat index ranks higher. Exactly k entries survive and the same
input always gives the same mask, whatever the device or thread count.
Under this total order the top-k sets are nested, which lets a rank window
be written as a difference of two of them.

A top-k set is kept as numbers, not as a mask (``TopK``): the k-th largest
magnitude t, and how many entries equal to t still belong to the set. The
mask of any row block then follows from the block alone, provided blocks
are visited in flat order -- which is what lets TIES stream a tensor in
row blocks after one selection pass over it (see ties.py and the engine's
``delta_stats`` hook).

Why selection on int32 bit patterns: for |x| (sign bit clear) the IEEE-754
bits of a float32 order exactly like the numbers, and numpy's in-place
introselect on int32 is the fastest exact k-th value on CPU. On a 136M-entry
embedding: ``torch.kthvalue`` 2.6 s, ``np.partition`` on float32 0.45 s, on
int32 0.18 s (plus 0.17 s to copy). ``torch.quantile`` refuses tensors over
16.7M entries and interpolates anyway.
"""
from __future__ import annotations

import numpy as np
import torch

_ABS_BITS = 0x7FFFFFFF


class TopK:
    """The k largest |x| of one tensor of n entries, as a threshold.

    ``mask(block, offset)`` must see the tensor's blocks in flat order,
    each once (one whole-tensor call is one block at offset 0): the tied
    entries at the threshold are handed out, earliest first, as the blocks
    go by. A block out of order raises rather than giving a wrong mask.
    """

    __slots__ = ("n", "k", "t", "ties_left", "_next", "abs_sum", "top_sum")

    def __init__(self, n: int, k: int, t: float, ties_left: int, abs_sum: float | None = None,
                 top_sum: float | None = None):
        self.n, self.k, self.t, self.ties_left = n, k, t, ties_left
        self._next = 0
        self.abs_sum, self.top_sum = abs_sum, top_sum   # ‖x‖₁ and ‖x⊙mask‖₁ when asked for

    @classmethod
    def of(cls, x: torch.Tensor, k: int, *, overwrite: bool = False, l1: bool = False) -> "TopK":
        """Select on ``x`` (any float dtype, compared as float32).

        ``overwrite``: ``x`` is a contiguous float32 scratch tensor the
        selection may scramble, which saves a copy of the whole tensor.
        ``l1``: also sum |x| over the tensor and over the top k (L1 rescale).
        """
        n = x.numel()
        if k <= 0 or k >= n:
            whole = float(x.abs().sum(dtype=torch.float32)) if l1 else None
            return cls(n, max(0, min(k, n)), 0.0, 0, whole, whole if k >= n else 0.0)
        flat = x.reshape(-1)
        if flat.device.type != "cpu":
            a = flat.to(torch.float32).abs()
            t = torch.kthvalue(a, n - k + 1).values
            n_gt = int((a > t).sum())
            sums = (float(a.sum()), float(a[a > t].sum()) + (k - n_gt) * float(t)) if l1 else (None, None)
            return cls(n, k, float(t), k - n_gt, *sums)
        if overwrite and flat.dtype == torch.float32 and flat.is_contiguous():
            bits = flat.view(torch.int32).bitwise_and_(_ABS_BITS)   # |x| in place
        else:
            bits = flat.to(torch.float32).view(torch.int32).bitwise_and(_ABS_BITS)
        abs_sum = float(bits.view(torch.float32).sum()) if l1 else None
        arr = bits.numpy()
        arr.partition(n - k)            # in place; [n-k:] now holds the top k
        t_bits = int(arr[n - k])
        top = bits[n - k:]
        n_gt = int((top > t_bits).sum())
        top_sum = float(top.view(torch.float32).sum()) if l1 else None
        t = float(np.array(t_bits, dtype=np.int32).view(np.float32))
        return cls(n, k, t, k - n_gt, abs_sum, top_sum)

    def mask(self, block: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Boolean mask of ``block`` (the entries from flat index ``offset`` on)."""
        if offset != self._next:
            raise RuntimeError(f"top-k blocks must come in flat order: expected offset {self._next}, got {offset}")
        self._next = offset + block.numel()
        if self.k >= self.n:
            return torch.ones(block.shape, dtype=torch.bool, device=block.device)
        if self.k == 0:
            return torch.zeros(block.shape, dtype=torch.bool, device=block.device)
        a = block.abs() if block.dtype == torch.float32 else block.to(torch.float32).abs()
        keep = a > self.t
        if self.ties_left > 0:
            eq = a == self.t
            c = int(eq.sum())
            if c <= self.ties_left:
                keep |= eq
                self.ties_left -= c
            elif c:
                idx = torch.nonzero(eq.reshape(-1)).squeeze(1)[:self.ties_left]
                keep.view(-1)[idx] = True
                self.ties_left = 0
        return keep


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (same shape) of exactly ``k`` highest scores (|scores|).

    ``scores`` is usually |δ|; it is compared in float32 so bf16/fp16 inputs
    give the same mask as their float32 copies.
    """
    return TopK.of(scores, k).mask(scores)


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
