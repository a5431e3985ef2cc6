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

Rank codes (``rank_codes``): one byte per entry, the smallest grid step j
(r = j/GRID) whose top-r holds the entry, so ``codes <= j`` IS top_r(j/GRID)
-- ties, zeros and NaN included -- without the float scores or a partition.
A re-merge after moving r (the UI's slider moves in steps of 1/GRID) reads
a quarter of the bytes and compares instead of selecting; an r off the
grid still goes through ``top_r`` on the scores.
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


GRID = 100     # r steps the rank codes answer exactly: the UI slider's 0.01
NEVER = 255    # the code of an entry no r elects (zero score)


def rank_codes(scores: torch.Tensor) -> torch.Tensor:
    """uint8 codes (shape of ``scores``): entry e's code is the smallest j in
    1..GRID with e in top_r(scores, j/GRID), or NEVER.

    One sort of the values finds each step's threshold (the k_j-th largest);
    an entry's code is the first step whose threshold it reaches, found in
    chunks (a few MB of temporaries, not several copies of a 136M-entry
    embedding). Where a run of equal scores straddles a step's k, top_r
    takes the run's earlier indices first, so those entries are ranked by
    index explicitly.
    """
    shape = scores.shape
    a = scores.detach().to("cpu", torch.float32).reshape(-1).numpy()
    if np.isnan(a).any():
        a = np.nan_to_num(a, nan=0.0)
    n = a.size
    out = np.full(n, NEVER, dtype=np.uint8)
    s = np.sort(a)
    pos = n - int(np.searchsorted(s, np.float32(0), side="right"))
    if not pos:
        return torch.from_numpy(out).view(shape)
    k = np.array([min(k_of(j / GRID, n), pos) for j in range(GRID + 1)], dtype=np.int64)
    # thr[j]: the k_j-th largest score (+inf where k_j = 0); non-increasing in j
    thr = np.where(k > 0, s[np.minimum(n - k, n - 1)], np.inf).astype(np.float32)
    rising = thr[::-1].copy()
    split = np.array(sorted({thr[j] for j in range(1, GRID + 1) if 0 < k[j] < n and s[n - k[j] - 1] == thr[j]}),
                     dtype=np.float32)
    on_split = []
    # one set of chunk buffers for the whole tensor: fresh temporaries per chunk
    # leave the allocator holding hundreds of MB after a 136M-entry embedding
    rising_t = torch.from_numpy(rising)
    reached_t = torch.empty(min(n, _CHUNK), dtype=torch.int32)
    reached, top, yes = reached_t.numpy(), np.empty(min(n, _CHUNK), np.float32), np.empty(min(n, _CHUNK), np.bool_)
    for lo in range(0, n, _CHUNK):
        part = a[lo:lo + _CHUNK]
        m = part.size
        # how many steps' thresholds each entry reaches; its code is the first of them
        torch.bucketize(torch.from_numpy(part), rising_t, right=True, out_int32=True, out=reached_t[:m])
        np.greater(reached[:m], 0, out=yes[:m])
        np.subtract(GRID + 1, reached[:m], out=out[lo:lo + m], where=yes[:m], casting="unsafe")
        if split.size:
            # entries equal to the highest threshold they reach, kept when that value is split
            np.maximum(reached[:m], 1, out=reached[:m])
            np.subtract(reached[:m], 1, out=reached[:m])
            np.take(rising, reached[:m], out=top[:m])
            np.logical_and(yes[:m], top[:m] == part, out=yes[:m])
            eq = np.flatnonzero(yes[:m])
            on_split.append(lo + eq[np.isin(part[eq], split)])
    if split.size:
        idx = np.concatenate(on_split)
        for v in split:
            at = idx[a[idx] == v]   # in index order: top_r's order among equal scores
            rank = (n - int(np.searchsorted(s, v, side="right"))) + np.arange(at.size)
            first = np.searchsorted(k, rank, side="right")   # the first step with k_j > rank
            out[at] = np.where(first <= GRID, first, NEVER)
    return torch.from_numpy(out).view(shape)


_CHUNK = 1 << 22


def grid_step(r: float, n: int) -> int | None:
    """j when top_r(·, r) of n entries keeps as many as top_r(·, j/GRID) --
    then ``codes <= j`` is that mask exactly; None off the grid."""
    j, k = int(round(r * GRID)), k_of(r, n)
    return next((i for i in (j, j - 1, j + 1) if 0 <= i <= GRID and k_of(i / GRID, n) == k), None)


def elect(base_scores: torch.Tensor | None, expert_scores: torch.Tensor | None, r: float,
          code: str = "11") -> torch.Tensor:
    """Eᵢ for one expert and one tensor under election ``code`` (see module doc).

    Only the scores the code needs must be given (the other may be None).
    """
    if code not in ELECTIONS:
        raise ValueError(f"unknown election code {code!r}; use one of {', '.join(ELECTIONS)}")
    return combine(top_r(base_scores, r) if code != "01" else None,
                   top_r(expert_scores, r) if code != "10" else None)


def combine(top_base: torch.Tensor | None, top_expert: torch.Tensor | None) -> torch.Tensor:
    """Eᵢ from the top-r masks an election code asks for (the other None):
    both given, their intersection."""
    if top_base is None or top_expert is None:
        return top_expert if top_base is None else top_base
    return torch.from_numpy(top_base.cpu().numpy() & top_expert.cpu().numpy()).to(top_base.device)


def disjoint(elected: list[torch.Tensor]) -> list[torch.Tensor]:
    """mᵢ = Eᵢ \\ ∪_{j≠i} Eⱼ for every expert: entries elected by exactly one."""
    if len(elected) <= 1:
        return [e.clone() for e in elected]
    arrays = [e.cpu().numpy() for e in elected]
    if len(arrays) == 2:   # the common case, in two passes: what one elected and the other did not
        a, b = arrays
        return [torch.from_numpy(a > b).to(elected[0].device), torch.from_numpy(b > a).to(elected[1].device)]
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


def elect_codes(codes: list[list[np.ndarray]], steps: list[int], use_disjoint: bool, pair: int | None = None
                ) -> tuple[list[np.ndarray], list[tuple[int, int]], list[int]]:
    """mᵢ of one tensor from rank codes (``rank_codes``, flat): expert i's
    entry is elected when each of its code arrays (base and expert for "11",
    one for "10"/"01") is <= its step jᵢ, i.e. when their maximum is. The
    same sets as ``masks_for``, made chunk by chunk so every pass runs in
    cache, with what the UI's summary counts gathered on the way:
    (final masks, [(|Eᵢ|, |mᵢ|)], [|E_pair ∩ Eᵢ|] (0 at pair)). With
    Disjoint, Eᵢ lives only a chunk at a time: nothing needs it whole.
    """
    n, k = codes[0][0].size, len(codes)
    separate = use_disjoint and k > 1
    final = [np.empty(n, dtype=np.bool_) for _ in range(k)]
    scratch = [np.empty(min(n, _CHUNK), dtype=np.bool_) for _ in range(k)] if separate else None
    big = np.empty(min(n, _CHUNK), dtype=np.uint8)
    count = np.empty(min(n, _CHUNK), dtype=np.uint8) if separate and k > 2 else None
    n_el, n_fin, inter, n_el_chunk = [0] * k, [0] * k, [0] * k, [0] * k
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        e = [x[:hi - lo] for x in scratch] if separate else [x[lo:hi] for x in final]
        for i, (cs, j) in enumerate(zip(codes, steps)):
            src = cs[0][lo:hi]
            if len(cs) > 1:
                src = np.maximum(src, cs[1][lo:hi], out=big[:hi - lo])
            np.less_equal(src, j, out=e[i])
            n_el_chunk[i] = int(np.count_nonzero(e[i]))
            n_el[i] += n_el_chunk[i]
        if separate:
            f = [x[lo:hi] for x in final]
            if k == 2:
                # what one elected and the other did not; one count of the
                # shared entries gives both |mᵢ| and the pair's overlap
                np.greater(e[0], e[1], out=f[0])
                np.greater(e[1], e[0], out=f[1])
                both = int(np.count_nonzero(np.logical_and(e[0], e[1], out=big[:hi - lo].view(np.bool_))))
                n_fin[0] += n_el_chunk[0] - both
                n_fin[1] += n_el_chunk[1] - both
                if pair is not None:
                    inter[1 - pair] += both
                continue
            c = count[:hi - lo]
            c[:] = 0
            for x in e:
                np.add(c, x, out=c, casting="unsafe")
            for i, (x, y) in enumerate(zip(e, f)):
                np.logical_and(x, c == 1, out=y)
                n_fin[i] += int(np.count_nonzero(y))
        if pair is not None:
            for i in range(k):
                if i != pair:
                    inter[i] += int(np.count_nonzero(np.logical_and(e[pair], e[i], out=big[:hi - lo].view(np.bool_))))
    counts = [(a, b if separate else a) for a, b in zip(n_el, n_fin)]
    return final, counts, inter


def jaccard_counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(|a ∩ b|, |a ∪ b|) of two boolean masks, so tensors can be pooled
    before dividing (a layer's Jaccard is Σ∩ / Σ∪ over its tensors)."""
    x, y = a.cpu().numpy(), b.cpu().numpy()
    return int(np.count_nonzero(x & y)), int(np.count_nonzero(x | y))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when both are empty (no sets to compare)."""
    inter, union = jaccard_counts(a, b)
    return inter / union if union else None
