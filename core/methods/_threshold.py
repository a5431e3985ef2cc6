"""Exact, deterministic top-k selection on one tensor, shared by the
sparsifying methods (TIES, Breadcrumbs).

The order: larger |x| ranks higher; among equal |x| at the cut, the
earlier flat index ranks higher -- or, with ``order``, exactly as mergekit
breaks the tie: its TIES keeps ``argsort(|x|, descending=True)[:k]``, its
Breadcrumbs a slice of ``sort(|x|)``, and torch's default sort is not stable
(equal values come out in an order that depends on the whole tensor). Only
when equal magnitudes straddle the cut (rare in float32 fine-tunes, common
in bf16 ones, where 65,536 values exist) is that sort run, once per tensor,
to learn which tied entries mergekit keeps. Exactly k entries survive and
the same input always gives the same mask. Under either order the top-k
sets are nested, which lets a rank window be written as a difference of two
of them.

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

import math
import os

import numpy as np
import torch

_ABS_BITS = 0x7FFFFFFF


class TopK:
    """The k largest |x| of one tensor of n entries, as a threshold.

    ``mask(block, offset)`` and ``keep(block, offset)`` must see the
    tensor's blocks in flat order, each once (one whole-tensor call is one
    block at offset 0), one TopK per pass over the tensor: the tied
    entries at the threshold are handed out, earliest first, as the blocks
    go by. A block out of order raises rather than giving a wrong mask.
    """

    __slots__ = ("n", "k", "t", "ties_left", "_next", "abs_sum", "top_sum", "tie_keep")

    def __init__(self, n: int, k: int, t: float, ties_left: int, abs_sum: float | None = None,
                 top_sum: float | None = None, tie_keep: np.ndarray | None = None):
        self.n, self.k, self.t, self.ties_left = n, k, t, ties_left
        self._next = 0
        self.abs_sum, self.top_sum = abs_sum, top_sum   # ‖x‖₁ and ‖x⊙mask‖₁ when asked for
        self.tie_keep = tie_keep     # sorted flat indices of the entries equal to t that are in (mergekit's order)

    @classmethod
    def of(cls, x: torch.Tensor, k: int, *, overwrite: bool = False, l1: bool = False,
           order: str | None = None) -> "TopK":
        """Select on ``x`` (any float dtype, compared as float32).

        ``overwrite``: ``x`` is a contiguous float32 scratch tensor the
        selection may scramble, which saves a copy of the whole tensor.
        ``l1``: also sum |x| over the tensor and over the top k (L1 rescale).
        ``order``: break ties at the cut as mergekit does -- "desc" (its
        magnitude trim: argsort descending) or "asc" (its outlier window:
        sort ascending, the top k are the last k); None: earliest first.
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
            ties = int((a == t).sum()) if order else 0
            keep = _mergekit_ties(flat, k, float(t), order) if ties > k - n_gt else None
            return cls(n, k, float(t), k - n_gt, *sums, tie_keep=keep)
        if overwrite and order is None and flat.dtype == torch.float32 and flat.is_contiguous():
            bits = flat.view(torch.int32).bitwise_and_(_ABS_BITS)   # |x| in place
        else:
            bits = flat.to(torch.float32).view(torch.int32).bitwise_and(_ABS_BITS)
        abs_sum = float(bits.view(torch.float32).sum()) if l1 else None
        arr = bits.numpy()
        arr.partition(n - k)            # in place; [n-k:] now holds the top k
        t_bits = arr[n - k]
        # numpy, not torch: its comparison + count is ~10x faster than torch's bool kernels
        n_gt = int(np.count_nonzero(arr[n - k:] > t_bits))
        top_sum = float(bits[n - k:].view(torch.float32).sum()) if l1 else None
        t = float(np.int32(t_bits).view(np.float32))
        ties = (k - n_gt + int(np.count_nonzero(arr[:n - k] == t_bits))) if order else 0
        keep = _mergekit_ties(flat, k, t, order) if ties > k - n_gt else None
        return cls(n, k, t, k - n_gt, abs_sum, top_sum, tie_keep=keep)

    def _cut(self, x: torch.Tensor, offset: int) -> tuple[float, torch.Tensor | None]:
        """How this block ``x`` (float32) is cut: entries with |x| > cut are
        in the set, plus the listed flat indices (only in the one block where
        the tied entries run out)."""
        if offset != self._next:
            raise RuntimeError(f"top-k blocks must come in flat order: expected offset {self._next}, got {offset}")
        self._next = offset + x.numel()
        if self.k >= self.n:
            return -math.inf, None
        if self.k == 0:
            return math.inf, None
        if self.tie_keep is not None:
            lo, hi = np.searchsorted(self.tie_keep, [offset, offset + x.numel()])
            return self.t, torch.from_numpy(self.tie_keep[lo:hi] - offset).to(x.device)
        if self.ties_left == 0:
            return self.t, None
        if x.device.type == "cpu":
            # numpy: its comparisons and counts are ~10x faster than torch's bool kernels
            xn, t = x.to(torch.float32).numpy(), np.float32(self.t)
            eq = np.equal(xn, t)
            eq |= np.equal(xn, -t)
            c = int(np.count_nonzero(eq))
        else:
            eq = x.abs() == self.t
            c = int(eq.sum())
        if c <= self.ties_left:
            self.ties_left -= c
            return _below(self.t), None                 # |x| > below(t)  <=>  |x| >= t
        idx = (np.flatnonzero(eq)[:self.ties_left] if isinstance(eq, np.ndarray)
               else torch.nonzero(eq.reshape(-1)).squeeze(1)[:self.ties_left].cpu().numpy())
        self.ties_left = 0
        return self.t, torch.from_numpy(idx).to(x.device)

    def mask(self, block: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Boolean mask of ``block`` (the entries from flat index ``offset`` on)."""
        x = block.to(torch.float32).contiguous()
        cut, extra = self._cut(x, offset)
        keep = x.abs() > cut
        if extra is not None:
            keep.view(-1)[extra] = True
        return keep

    def keep(self, block: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``block`` (float32) with the entries outside the set zeroed; a new tensor.

        hardshrink is exactly "keep x where |x| > cut" in one float pass,
        several times faster than a boolean mask and a select on CPU.
        """
        block = block.contiguous()
        cut, extra = self._cut(block, offset)
        kept = torch.nn.functional.hardshrink(block, cut)
        if extra is not None:
            flat = block.reshape(-1)
            kept.view(-1)[extra] = flat[extra]
        return kept


def tie_order(order: str) -> str | None:
    """The order a trim asks for, unless ``MERGE_EXPLORER_FAST_TIES=1`` trades mergekit's tensors at
    equal magnitudes for speed (bf16 TIES of a 0.5B model: 94 s with mergekit's order, 19 s without;
    bench/README.md)."""
    return None if os.environ.get("MERGE_EXPLORER_FAST_TIES") == "1" else order


def _mergekit_ties(flat: torch.Tensor, k: int, t: float, order: str) -> np.ndarray:
    """Which entries equal to ``t`` mergekit's sort puts in the top ``k`` (sorted flat indices): the same
    torch sort on the same float32 |x| (torch's default sort is unstable but deterministic)."""
    w = flat.abs()
    if w.device.type == "cpu":
        w = w.float()            # as mergekit: |x| in the tensor's dtype, then float32 on the CPU
    if order == "desc":
        idx = torch.argsort(w, descending=True)[:k]
    elif order == "asc":
        idx = torch.sort(w, descending=False).indices[w.numel() - k:]
    else:
        raise ValueError(f"unknown tie order {order!r}")
    idx = idx[w[idx].to(torch.float32) == t]
    return np.sort(idx.cpu().numpy().astype(np.int64))


def _below(t: float) -> float:
    """The float32 just below t, so that ``a > _below(t)`` means ``a >= t``."""
    return float(np.nextafter(np.float32(t), np.float32(-np.inf)))


def top_k_mask(scores: torch.Tensor, k: int, order: str | None = None) -> torch.Tensor:
    """Boolean mask (same shape) of exactly ``k`` highest scores (|scores|), ties broken by ``order``
    (see ``TopK.of``).

    ``scores`` is usually |δ|; it is compared in float32 so bf16/fp16 inputs
    give the same mask as their float32 copies.
    """
    return TopK.of(scores, k, order=order).mask(scores)


def rank_window_mask(scores: torch.Tensor, lo: int, hi: int, order: str | None = None) -> torch.Tensor:
    """Entries whose ascending rank r satisfies lo <= r < hi (ranks 0..n-1).

    Ascending rank r means n-1-r entries rank above it, so the window is the
    top (n-lo) minus the top (n-hi) -- nested under either tie order.
    """
    n = scores.numel()
    lo, hi = max(0, lo), min(n, hi)
    if hi <= lo:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return top_k_mask(scores, n - lo, order) & ~top_k_mask(scores, n - hi, order)
