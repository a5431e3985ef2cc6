"""ACM's mutual-information estimator (a documented choice, tested in
tests/methods/test_acm.py).

* per calibration sample and point, the base's and the expert's outputs are
  paired entry by entry over the sample's real tokens (token x channel,
  padding excluded); at most ``activations.MAX_PAIRS`` pairs, a seeded subset that is
  the same for every model;
* each side is replaced by its rank and cut into ``BINS`` equal-frequency
  bins (an empirical copula), then the plug-in MI of the 2-D histogram is
  taken in nats with the Miller-Madow bias correction, clamped at 0;
* I_i^k is the mean over samples.

Why ranks rather than a fixed-range histogram of standardised values: LLM
residual streams carry a few "massive" outlier channels (Sun et al. 2024),
so a fixed range puts nearly every entry into one or two bins and the MI
then measures only the outliers. Ranks make the estimate invariant to any
monotone transform (as true MI is), make the marginals uniform, and give
identical signals exactly the maximum, log(BINS) + (BINS-1)/(2n) nats
(~3.47 for 32 bins). Miller-Madow removes most of the (BINS-1)^2/(2n)
upward bias of the plug-in estimate, which otherwise depends on how many
pairs a point has (the logits are wider than the residual stream) and
would tilt the coefficients between points. Nats are kept (not normalised
to [0, 1]) so the temperature t has the scale it has in the paper: with
t = 0.7 the coefficients span [0.5, ~0.92] instead of [0.5, 0.67].
"""
from __future__ import annotations

import math

import numpy as np
import torch

BINS = 32               # equal-frequency bins per side: 32x32 joint cells


def rank_bins(x: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Equal-frequency bin index (0..bins-1) of every entry of ``x`` (int64).

    Ties are ranked in index order (stable sort), so two signals with the
    same ties in the same places get the same bins. numpy's sort, because
    torch's threaded argsort of a few thousand entries is ~10x slower on a
    busy CPU and this runs once per sample, point and model.
    """
    v = x.detach().reshape(-1).float().cpu().numpy()
    n = v.size
    out = np.empty(n, dtype=np.int64)
    out[np.argsort(v, kind="stable")] = np.arange(n, dtype=np.int64) * bins // max(n, 1)
    return torch.from_numpy(out)


def _entropy(counts: torch.Tensor, n: int) -> tuple[float, int]:
    """(plug-in entropy in nats, number of occupied cells)."""
    c = counts[counts > 0].to(torch.float64)
    p = c / n
    return float(-(p * p.log()).sum()), int(c.numel())


def mi_from_bins(bx: torch.Tensor, by: torch.Tensor, bins: int = BINS) -> float:
    """MI (nats) of two paired bin-index vectors; Miller-Madow corrected, >= 0."""
    n = bx.numel()
    if n == 0:
        return 0.0
    joint = torch.bincount(bx.long() * bins + by.long(), minlength=bins * bins).view(bins, bins)
    hx, mx = _entropy(joint.sum(1), n)
    hy, my = _entropy(joint.sum(0), n)
    hxy, mxy = _entropy(joint.reshape(-1), n)
    mi = hx + hy - hxy + ((mx - 1) + (my - 1) - (mxy - 1)) / (2 * n)
    return max(0.0, mi)


def mutual_information(x: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> float:
    """MI in nats between paired samples ``x`` and ``y`` (same number of entries).

    The estimator of this module (see its docstring): ranks, equal-frequency
    bins, 2-D histogram, Miller-Madow. Identical signals give the maximum,
    log(bins) + (bins-1)/(2n); independent ones about 0.
    """
    if x.numel() != y.numel():
        raise ValueError(f"paired signals differ in size: {x.numel()} vs {y.numel()}")
    return mi_from_bins(rank_bins(x.float(), bins), rank_bins(y.float(), bins), bins)


def max_mi(n: int, bins: int = BINS) -> float:
    """What ``mutual_information`` gives for two identical signals of n entries."""
    return math.log(bins) + (bins - 1) / (2 * n)
