"""TIES-Merging (Yadav et al. 2023): trim, elect sign, disjoint mean.

Follows mergekit's ``ties`` (generalized_task_arithmetic.py, mergekit 0.1.5)
so the same YAML gives the same tensors:

* trim: each τᵢ keeps its ⌊density·n⌋ largest |τᵢ| per tensor (at least one
  entry when density > 0, as mergekit does; density ≥ 1 keeps everything);
  ties at the threshold are kept in index order, so exactly k survive;
* the weights multiply the trimmed vectors BEFORE the sign election, and the
  elected sign is that of Σ wᵢτᵢ (a zero sum elects +);
* an entry joins the sum only if its weighted sign equals the elected one
  (zero entries never agree); ``normalize`` (default on) divides by the sum of
  the agreeing weights, so an entry where one expert agrees is that expert's
  value, not a fraction of it;
* λ scales the result.

The combination step (``combine``) and the L1 rescale are shared with DARE
and Breadcrumbs, which differ from TIES only in how they sparsify.

Streaming: once each τᵢ's trim threshold is known, every step above is
elementwise, so the spec is ``elementwise`` with a ``delta_stats`` hook that
selects the threshold (one task vector at a time, in the engine's scratch
buffer) and the engine feeds row blocks. Whole tensors work the same way
with the threshold computed on the spot. Entries are boolean-masked and
combined expert by expert: no stacked copy of all task vectors is made.
"""
from __future__ import annotations

import torch

from ._threshold import TopK, tie_order
from .base import MethodSpec, Param, TensorContext, register

_EPS = 1e-7   # mergekit's: below it an L1 norm counts as zero and nothing is rescaled


def rescale_l1(delta: torch.Tensor, mask: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """δ⊙m scaled so its L1 norm equals δ's (mergekit's ``rescale``).

    Matching the norm rather than dividing by the density keeps the expected
    size of the update exact for this very tensor, not just on average.
    Below ``eps`` either norm is treated as zero and nothing is scaled.
    """
    masked = delta * mask
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


class Trim:
    """What trimming one τᵢ needs to know about the whole tensor: its top-k
    set (as a threshold) and the L1 rescale factor (1 when off)."""

    __slots__ = ("top", "scale")

    def __init__(self, top: TopK | None, scale: float = 1.0):
        self.top, self.scale = top, scale   # top None: density ≥ 1 keeps everything

    def apply(self, delta: torch.Tensor, weight: float = 1.0, offset: int = 0) -> torch.Tensor:
        """The trimmed, rescaled and weighted block of τᵢ from flat ``offset``; a new tensor."""
        if self.top is None:
            return delta * weight
        out = self.top.keep(delta, offset)
        if self.scale != 1.0:
            out.mul_(self.scale)    # as mergekit: rescale the trimmed vector, then weight it
        return out.mul_(weight)


def trim_stats(tau: torch.Tensor, params: dict, global_params: dict, *, overwrite: bool = True) -> Trim:
    """The ``delta_stats`` hook: τᵢ's trim threshold, from the whole tensor.

    ``overwrite``: ``tau`` is the engine's scratch copy and may be scrambled.
    """
    density = params["density"]
    if density >= 1:
        return Trim(None)
    n = tau.numel()
    k = 0 if density <= 0 or n == 0 else max(1, int(density * n))
    rescale = global_params["rescale"]
    # ties at the cut broken as mergekit's argsort breaks them (its magnitude trim)
    top = TopK.of(tau, k, overwrite=overwrite, l1=rescale, order=tie_order("desc"))
    scale = 1.0
    if rescale and top.abs_sum >= _EPS and top.top_sum >= _EPS:
        # as a float32 quotient, like mergekit's tensor division
        scale = float(torch.tensor(top.abs_sum, dtype=torch.float32) / torch.tensor(top.top_sum, dtype=torch.float32))
    return Trim(top, scale)


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the ⌊density·n⌋ largest |δ| (at least one when density > 0)."""
    if density >= 1:
        return delta
    return trim_stats(delta, {"density": density}, {"rescale": rescale}, overwrite=False).apply(delta)


def combine(deltas: list, weights: list[float], *, consensus: bool, normalize: bool,
            lam: float) -> torch.Tensor:
    """mergekit's generalized task arithmetic after sparsification.

    ``deltas`` are already sparsified; weights are applied here, before the
    sign election, exactly as mergekit does.
    """
    return elect([d * w for d, w in zip(deltas, weights)], weights, consensus=consensus, normalize=normalize,
                 lam=lam)


def sparse_merge(sparsify, *, consensus: bool):
    """The merge fn of a sparsify-then-combine method (DARE, Breadcrumbs):
    ``sparsify(deltas, model_params, global_params, ctx)``, then ``combine``
    with the weights, ``normalize`` and λ (TIES's sign vote when ``consensus``)."""
    def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
              ctx: TensorContext) -> torch.Tensor:
        return combine(sparsify(deltas, model_params, global_params, ctx), [p["weight"] for p in model_params],
                       consensus=consensus, normalize=global_params["normalize"], lam=global_params["lambda"])
    return merge


def sparse_params(density_help: str, normalize_help: str, *, rescale: bool, extra: tuple = ()) -> list[Param]:
    """The knobs of a sparsify-then-combine method, in the UI's order: weight,
    density, ``extra`` per-model knobs, λ, rescale (default ``rescale``), normalize."""
    return [
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="wᵢ: how much of this expert's task vector to add"),
        Param("density", 1.0, 0.0, 1.0, per_model=True, help=density_help),
        *extra,
        Param("lambda", 1.0, 0.0, 2.0, symbol="λ", label="scale", help="λ: global scale of the merged task vector"),
        Param("rescale", rescale, kind="bool", help="scale the kept entries so each task vector keeps its L1 norm"),
        Param("normalize", False, kind="bool", help=normalize_help),
    ]


def elect(weighted: list, weights: list[float], *, consensus: bool, normalize: bool, lam: float) -> torch.Tensor:
    """Sign election and (disjoint) mean of already weighted task vectors.

    Works expert by expert, so its memory is a few tensors of one expert's
    size however many experts there are. The tensors in ``weighted`` are
    the caller's temporaries and are overwritten.

    The vote is done in float arithmetic, because torch's boolean kernels
    are several times slower than its float ones on CPU: with e = ±1 the
    elected sign, the entries of xᵢ that agree are exactly relu(e·xᵢ)·e,
    and sign(relu(e·xᵢ)) is 1 where they agree and 0 elsewhere.
    """
    if consensus and any(w <= 0 for w in weights):
        # a zero weight with a nonzero xᵢ (callers that weight xᵢ themselves,
        # like ACM) would leave a zero divisor under a nonzero sum
        return _elect_masks(weighted, weights, normalize=normalize, lam=lam)
    mixed = torch.add(weighted[0], weighted[1]) if len(weighted) > 1 else weighted[0].clone()
    for x in weighted[2:]:
        mixed.add_(x)
    if consensus:
        # copysign(1, Σ) elects + for a zero sum: a sum of nonzero entries
        # that cancel is +0, and a -0 sum means every xᵢ is zero (no vote)
        e = torch.copysign(torch.ones((), dtype=mixed.dtype, device=mixed.device), mixed)
        agreeing = [x.mul_(e).relu_() for x in weighted]     # |xᵢ| where xᵢ agrees, else 0
        if len(agreeing) > 1:
            torch.add(agreeing[0], agreeing[1], out=mixed)   # the vote total is no longer needed
        else:
            mixed.copy_(agreeing[0])
        for r in agreeing[2:]:
            mixed.add_(r)
        if normalize:
            divisor = agreeing[0].sign_().mul_(weights[0])
            for r, w in zip(agreeing[1:], weights[1:]):
                divisor.add_(r.sign_(), alpha=w)
            # no agreeing expert: the sum is 0 too, and 0 / tiny stays 0
            # (mergekit divides by 1 there); weights are > 0 on this path
            mixed.div_(divisor.clamp_min_(torch.finfo(divisor.dtype).tiny))
        mixed.mul_(e)
    elif normalize:
        total = torch.tensor(weights, dtype=torch.float32).sum()
        mixed.div_(total if total.abs() >= 1e-8 else 1.0)
    if lam != 1:
        mixed.mul_(lam)
    return mixed


def _elect_masks(weighted: list, weights: list[float], *, normalize: bool, lam: float) -> torch.Tensor:
    """The vote with boolean masks, for weights ≤ 0 (the float form assumes
    every agreeing expert adds to the divisor); slower, same result as mergekit."""
    total = weighted[0].clone()
    for x in weighted[1:]:
        total.add_(x)
    plus = total >= 0
    mixed = torch.zeros_like(total)
    divisor = torch.zeros_like(total)
    for x, w in zip(weighted, weights):
        agree = torch.where(plus, x > 0, x < 0)
        mixed.add_(x * agree)
        divisor.add_(agree * w)
    if normalize:
        divisor.masked_fill_(divisor == 0, 1.0)
        mixed.div_(divisor)
    if lam != 1:
        mixed.mul_(lam)
    return mixed


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    trims = ctx.aux.get("delta_stats")
    offset = ctx.offset
    if trims is None:   # a whole tensor: select here, on a copy
        trims = [trim_stats(d, p, global_params, overwrite=False) for d, p in zip(deltas, model_params)]
        offset = 0
    weights = [p["weight"] for p in model_params]
    weighted = [t.apply(d, w, offset) for t, d, w in zip(trims, deltas, weights)]
    return elect(weighted, weights, consensus=True, normalize=global_params["normalize"],
                 lam=global_params["lambda"])


SPEC = register(MethodSpec(
    name="ties", sorts_ties=True, label="TIES", fn=merge, mergekit_name="ties",
    summary="Trim each task vector to its largest entries (density: mergekit's default 1 trims nothing; the "
            "paper kept 20%), elect a sign per weight, average the agreeing ones.",
    params=[
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="wᵢ: this expert's weight, applied before the sign vote"),
        Param("density", 1.0, 0.0, 1.0, per_model=True,
              help="fraction of this expert's largest-magnitude changes kept per tensor (1 keeps all)"),
        Param("lambda", 1.0, 0.0, 2.0, symbol="λ", label="scale", help="λ: global scale of the merged task vector"),
        Param("normalize", True, kind="bool",
              help="divide each entry by the summed weights of the experts that agree with its sign"),
        Param("rescale", False, kind="bool",
              help="scale each trimmed task vector back to its original L1 norm"),
    ],
    elementwise=True, delta_stats=trim_stats,
))
