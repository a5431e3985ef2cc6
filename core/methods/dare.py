"""DARE (Yu et al. 2024): randomly drop task-vector entries, rescale the rest.

Two recipes, as in mergekit: ``dare_linear`` (drop, then a weighted sum like
Task Arithmetic) and ``dare_ties`` (drop, then TIES's sign election). Both
follow mergekit 0.1.5's semantics:

* each entry survives with probability ``density`` (density ≥ 1 keeps all);
* ``rescale`` (default on) scales the survivors so the tensor's L1 norm
  equals the original one, ‖δ‖₁/‖δ⊙m‖₁ — mergekit's rescale, not the
  paper's 1/density;
* neither normalises by default (``normalize`` off), dare_ties included.

Reproducibility: the drop masks come from a generator seeded by a stable
hash of (recipe seed, tensor name), so re-merging with the same seed gives
bit-identical masks for every tensor regardless of the order tensors are
visited, and different tensors get independent masks. Experts draw from the
same generator in recipe order. mergekit uses torch's global RNG, so only
the statistics (kept fraction, L1 norm), not the exact masks, can match it.
Masks are reproducible per device type (a CUDA generator draws different
numbers than a CPU one).
"""
from __future__ import annotations

import hashlib

import torch

from .base import MethodSpec, TensorContext, register
from .ties import rescale_l1, sparse_merge, sparse_params


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed that depends only on the recipe seed and the tensor name."""
    h = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def random_drop(delta: torch.Tensor, density: float, gen: torch.Generator, rescale: bool) -> torch.Tensor:
    if density >= 1:
        return delta
    keep = (torch.rand(delta.shape, generator=gen, device=delta.device, dtype=torch.float32) < density)
    mask = keep.to(delta.dtype)
    return rescale_l1(delta, mask) if rescale else delta * mask


def _dropped(deltas: list, model_params: list, global_params: dict, ctx: TensorContext) -> list:
    gen = torch.Generator(device=deltas[0].device if deltas else "cpu")
    gen.manual_seed(tensor_seed(ctx.seed, ctx.name))
    rescale = global_params["rescale"]
    return [random_drop(d, p["density"], gen, rescale) for d, p in zip(deltas, model_params)]


merge_linear = sparse_merge(_dropped, consensus=False)
merge_ties = sparse_merge(_dropped, consensus=True)
_DENSITY = "probability that each entry of this expert's task vector is kept (1 keeps all)"


SPEC_LINEAR = register(MethodSpec(
    name="dare_linear", label="DARE (linear)", fn=merge_linear, mergekit_name="dare_linear",
    summary="Randomly drop task-vector entries, rescale the survivors, then add them up.",
    params=sparse_params(_DENSITY, "divide by the sum of the weights", rescale=True),
))

SPEC_TIES = register(MethodSpec(
    name="dare_ties", label="DARE-TIES", fn=merge_ties, mergekit_name="dare_ties",
    summary="Randomly drop task-vector entries, rescale the survivors, then merge them with TIES's sign vote.",
    params=sparse_params(_DENSITY, "divide each entry by the summed weights of the experts that agree with its sign",
                         rescale=True),
))
