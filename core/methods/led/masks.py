"""LED-Merging's Election and Disjoint steps on one tensor, and overlap stats.

Scores come from importance.py (one tensor of non-negative numbers per
weight tensor, per model and location data set). Everything here is pure
tensor math on ONE tensor, so the merge engine can stream any model and
the UI can recompute masks after every slider move without touching a
model.

Top-r (``top_r``): r is the fraction of the tensor's entries KEPT,
k = ⌊r·n⌋ (with a 1e-9 guard so 0.29·100 keeps 29, not 28). Entries are
ranked by score; equal scores rank by flat index (earlier first), so the
same scores always give the same mask. Zero scores are never elected: a
weight the location data never touched (zero gradient, zero activation,
zero weight) carries no evidence of the skill, so when fewer than k
entries score above zero, only those are kept.

Election codes (the paper's ablation, Table 5):

* ``"11"`` -- Eᵢ = top_r(I(θ₀)) ∩ top_r(I(θᵢ)): the weight matters for the
  task in the base AND in the expert (LED-Merging itself);
* ``"10"`` -- Eᵢ = top_r(I(θ₀)): base scores only;
* ``"01"`` -- Eᵢ = top_r(I(θᵢ)): expert scores only.

Disjoint: mᵢ = Eᵢ \\ ∪_{j≠i} Eⱼ -- an entry elected by two experts is
taken from neither, so no expert's update is written over another's.
"""
from __future__ import annotations

import math

import numpy as np
import torch


ELECTIONS = ("11", "10", "01")


def k_of(r: float, n: int) -> int:
    """How many of n entries a ratio r keeps: ⌊r·n⌋, guarded against float
    round-off (0.29·100 = 28.999999999999996 must keep 29)."""
    if r <= 0 or n <= 0:
        return 0
    if r >= 1:
        return n
    return min(n, int(math.floor(r * n + 1e-9)))


def top_r(scores: torch.Tensor, r: float) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) of the top-r entries by score.

    ``scores`` must be non-negative (every location method gives |.|-based
    scores; NaN counts as 0). Exactly min(⌊r·n⌋, #(scores > 0)) entries are
    set; ties at the threshold go to the earlier flat index.

    numpy throughout: its partition is an exact O(n) selection, and its
    compare/count kernels run on one thread, where torch's pool spins on a
    busy CPU (the re-merge of the built-in family is dozens of these per
    slider move).
    """
    shape = scores.shape
    n = scores.numel()
    k = k_of(r, n)
    out = np.zeros(n, dtype=np.bool_)
    if k > 0:
        a = scores.detach().to("cpu", torch.float32).reshape(-1).numpy()
        if np.isnan(a).any():
            a = np.nan_to_num(a, nan=0.0)
        k = min(k, int(np.count_nonzero(a > 0)))
    if k > 0:
        # with k <= #positive the top k never reaches a zero score
        part = np.partition(a, n - k)
        t = part[n - k]
        out = a > t
        ties = k - int(np.count_nonzero(part[n - k:] > t))
        if ties:
            out[np.flatnonzero(a == t)[:ties]] = True
    return torch.from_numpy(out).view(shape).to(scores.device)


def elect(base_scores: torch.Tensor | None, expert_scores: torch.Tensor | None, r: float,
          code: str = "11") -> torch.Tensor:
    """Eᵢ for one expert and one tensor under election ``code`` (see module doc).

    Only the scores the code needs must be given (the other may be None).
    """
    if code == "11":
        both = top_r(base_scores, r).cpu().numpy() & top_r(expert_scores, r).cpu().numpy()
        return torch.from_numpy(both).to(base_scores.device)
    if code == "10":
        return top_r(base_scores, r)
    if code == "01":
        return top_r(expert_scores, r)
    raise ValueError(f"unknown election code {code!r}; use one of {', '.join(ELECTIONS)}")


def disjoint(elected: list[torch.Tensor]) -> list[torch.Tensor]:
    """mᵢ = Eᵢ \\ ∪_{j≠i} Eⱼ for every expert: entries elected by exactly one."""
    if len(elected) <= 1:
        return [e.clone() for e in elected]
    arrays = [e.cpu().numpy() for e in elected]
    count = np.zeros(arrays[0].shape, dtype=np.int16)
    for a in arrays:
        count += a
    alone = count == 1
    return [torch.from_numpy(a & alone).to(e.device) for a, e in zip(arrays, elected)]


def masks_for(base_scores: list, expert_scores: list, ratios: list[float], code: str = "11",
              use_disjoint: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(elected Eᵢ, final mᵢ) for every expert of one tensor."""
    elected = [elect(b, e, r, code) for b, e, r in zip(base_scores, expert_scores, ratios)]
    final = disjoint(elected) if use_disjoint else elected
    return elected, final


def jaccard_counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(|a ∩ b|, |a ∪ b|) of two boolean masks, so tensors can be pooled
    before dividing (a layer's Jaccard is Σ∩ / Σ∪ over its tensors)."""
    x, y = a.cpu().numpy(), b.cpu().numpy()
    return int(np.count_nonzero(x & y)), int(np.count_nonzero(x | y))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when both are empty (no sets to compare)."""
    inter, union = jaccard_counts(a, b)
    return inter / union if union else None
