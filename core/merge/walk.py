"""The walk over tensors: read inputs, call the method, hand results to a sink."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .. import checkpoint as M
from .. import policy
from ..checkpoint.reader import Reader
from ..errors import UserError, quoted
from ..methods.base import TensorContext
from .plan import Plan, _out_meta
from .result import MergeResult, TensorStats

Progress = Callable[[float, str], None]

# Elementwise methods (entry i of the result depends only on entry i of the
# inputs) are fed row blocks of about this many entries: every pass of the
# method then runs in cache instead of memory, and no float32 copy of a
# whole tensor is ever made. A method whose blocks need per-tensor numbers
# first (TIES's thresholds) gets them from its ``delta_stats`` hook, run on
# one whole task vector at a time in a scratch buffer. Methods with other
# per-tensor work (cosines, SVDs, DARE's masks) always see whole tensors.
CHUNK_ELEMS = 1 << 18


def elementwise(spec) -> bool:
    """The spec says so itself (MethodSpec.elementwise, off by default)."""
    return bool(getattr(spec, "elementwise", False))


def _chunked(p: Plan, name: str) -> bool:
    meta = p.base.tensors[name]
    return (elementwise(p.spec) and meta.is_float and len(meta.shape) >= 1 and meta.numel > CHUNK_ELEMS)


class _Buffers:
    """Work buffers reused for every tensor of a streamed merge: fresh large
    allocations cost a page fault per 4 KiB, which made up a third of the
    merge time. Whole-tensor float32 buffers are sized for the largest
    tensor that is not fed in row blocks."""

    def __init__(self, p: Plan, n_readers: int, device: str, dtype: torch.dtype):
        floats = [n for n in p.names if p.base.tensors[n].is_float]
        self.chunked = {n for n in floats if _chunked(p, n)}
        whole = [n for n in floats if n not in self.chunked]
        infos = [p.base] + list(p.sources)
        numel = max((p.base.tensors[n].numel for n in whole), default=1)
        raw = max((i.tensors[n].nbytes for i in infos for n in whole), default=1)
        self.base = torch.empty(numel, dtype=torch.float32, device=device)
        self.deltas = [torch.empty(numel, dtype=torch.float32, device=device) for _ in range(n_readers)]
        self.staging = torch.empty(raw, dtype=torch.uint8)
        self.zero = torch.empty(numel, dtype=torch.float32, device=device) if p.zero_first else None
        out_numel = max((_numel(_out_meta(p, n, dtype)[1]) for n in (floats if self.chunked else whole)), default=1)
        self.out = torch.empty(out_numel, dtype=dtype, device=device) \
            if dtype != torch.float32 or self.chunked else None
        # row-block buffers: a block is at least one row
        rows = [p.base.tensors[n].numel // p.base.tensors[n].shape[0] for n in self.chunked]
        block = max([CHUNK_ELEMS] + rows) if self.chunked else 0
        self.block = block
        self.cbase = torch.empty(block, dtype=torch.float32, device=device)
        self.cdeltas = [torch.empty(block, dtype=torch.float32, device=device) for _ in range(n_readers)]
        self.czero = torch.empty(block, dtype=torch.float32, device=device) if p.zero_first else None
        self.cstaging = [torch.empty(block * 8, dtype=torch.uint8) for _ in range(n_readers + 1)] if block else []
        # one whole float32 task vector for the delta_stats pre-pass
        stats_numel = max((p.base.tensors[n].numel for n in self.chunked), default=0) \
            if getattr(p.spec, "delta_stats", None) is not None else 0
        self.scratch = torch.empty(stats_numel, dtype=torch.float32, device=device)


def _slot(buf: torch.Tensor, shape) -> torch.Tensor:
    return buf[:_numel(shape)].view(shape)


class _Inputs:
    """Open readers (and, for small models, float32 task vectors) for one set
    of models, kept between calls so the UI's re-merge after every slider
    move does not re-open files or re-read weights."""

    def __init__(self, p: Plan, device: str, cache: bool):
        self.key = _inputs_key(p, device)
        self.device = device
        self.base_reader = Reader(p.base)
        self.readers = [Reader(s) for s in (p.sources[1:] if p.zero_first else p.sources)]
        self.cache_on = cache
        self._cache: dict[str, tuple] = {}

    def block(self, name: str, a: int, b: int, base_buf: torch.Tensor | None, delta_bufs: list | None,
              staging: list | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(θ₀, [τᵢ]) of rows [a, b) in float32: views of the given buffers
        (valid until the next call), else fresh tensors. An expert's rows
        past the base's (a grown vocabulary) are never part of a block.

        Convert first, then subtract in place: torch's mixed-dtype
        ``sub(out=)`` allocates hidden temporaries and measured 2.5x slower.
        Whole tensors of small models are cached as float32 and cloned on
        the way out: methods are meant to be pure, but one that works in
        place must not poison the next re-merge.
        """
        hit = self._cache.get(name)
        if hit is not None:
            return hit[0].clone(), [d.clone() for d in hit[1]]
        shape = self.base_reader.info.tensors[name].shape
        cshape = (b - a,) + tuple(shape[1:]) if shape else ()

        def load(reader: Reader, i: int, dst: torch.Tensor | None) -> torch.Tensor:
            raw = reader.read_rows(name, a, b, staging[i] if staging is not None else None)
            if dst is None:
                return raw.to(self.device, torch.float32, copy=True)
            return _slot(dst, cshape).copy_(raw)

        base = load(self.base_reader, 0, base_buf)
        deltas = [load(r, i + 1, delta_bufs[i] if delta_bufs is not None else None).sub_(base)
                  for i, r in enumerate(self.readers)]
        if self.cache_on:
            self._cache[name] = (base, deltas)
            return base.clone(), [d.clone() for d in deltas]
        return base, deltas

    def culprit(self, name: str) -> None:
        """Name the model whose tensor holds NaN/Inf (called only after a norm was not finite)."""
        for r in [self.base_reader] + self.readers:
            if _has_nonfinite(r.read(name).to(torch.float32)):
                raise UserError(f"Tensor {quoted(name)} of {quoted(r.info.ref)} contains NaN or Inf values; nothing was written.")

    def close(self) -> None:
        self.base_reader.close()
        for r in self.readers:
            r.close()
        self._cache.clear()


_LAST_INPUTS: _Inputs | None = None


def _inputs_key(p: Plan, device: str) -> tuple:
    srcs = [p.base] + list(p.sources)
    return (device,) + tuple((s.path, s.fingerprint()) for s in srcs)


def _inputs(p: Plan, device: str, live: bool) -> _Inputs:
    """Reuse the last set of readers when the models are the same files."""
    global _LAST_INPUTS
    key = _inputs_key(p, device)
    n_models = 1 + len(p.sources)
    cache = live and p.base.n_params * 4 * n_models <= policy.CACHE_BYTES
    if _LAST_INPUTS is not None and _LAST_INPUTS.key == key:
        _LAST_INPUTS.cache_on = _LAST_INPUTS.cache_on or cache
        return _LAST_INPUTS
    if _LAST_INPUTS is not None:
        _LAST_INPUTS.close()
    _LAST_INPUTS = _Inputs(p, device, cache)
    return _LAST_INPUTS


def _has_nonfinite(t: torch.Tensor) -> bool:
    """A sum is one fast pass; only when it is not finite (NaN/Inf present,
    or a harmless overflow) is the exact element test run."""
    if not t.is_floating_point() or not t.numel() or torch.isfinite(t.sum()):
        return False
    return not bool(torch.isfinite(t).all())


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n



def _delta_stats(p: Plan, inputs: _Inputs, name: str, bufs: _Buffers, per: int) -> list:
    """The spec's delta_stats of every task vector of ``name``, one at a time.

    Each τᵢ is assembled block by block in the one scratch buffer (the hook
    may scramble it, e.g. partition it in place), so the pre-pass holds one
    whole float32 tensor, not one per expert. A non-finite input only gives
    meaningless statistics here; the row pass that follows names it.
    """
    meta = p.base.tensors[name]
    shape = tuple(meta.shape)
    rows = shape[0]
    row = meta.numel // rows
    tau = bufs.scratch[:meta.numel]
    hook = p.spec.delta_stats
    out = []
    if p.zero_first:
        out.append(hook(tau.zero_(), p.model_params[0], p.global_params))
    for i, r in enumerate(inputs.readers):
        for a in range(0, rows, per):
            b = min(rows, a + per)
            cshape = (b - a,) + shape[1:]
            base = _slot(bufs.cbase, cshape).copy_(inputs.base_reader.read_rows(name, a, b, bufs.cstaging[0]))
            tau[a * row:b * row].view(cshape).copy_(r.read_rows(name, a, b, bufs.cstaging[i + 1])).sub_(base)
        out.append(hook(tau, p.model_params[len(out)], p.global_params))
    return out


def _finite_norm(x: float) -> bool:
    return x == x and x != float("inf")


def _check_range(out: torch.Tensor, dtype: torch.dtype, method: str, name: str) -> None:
    """A finite float32 result can still overflow a half-precision output
    (float16 tops out at 65504); the float32 norm check cannot see that."""
    if dtype != torch.float32 and _has_nonfinite(out):
        raise UserError(f"The {method} merge gives values too large for {str(dtype).replace('torch.', '')} in "
                        f"tensor {quoted(name)}; nothing was written (merge in float32 or bfloat16).")


def _merge_tensor(p: Plan, inputs: _Inputs, name: str, dtype: torch.dtype, ctx: TensorContext,
                  bufs: _Buffers | None) -> tuple[torch.Tensor, list[float], float]:
    """One tensor through the method; returns (output in ``dtype``, ‖τᵢ‖, ‖τ‖).

    An elementwise method gets a large tensor in row blocks (``bufs.chunked``),
    any other tensor comes as one block. Per block: θ₀ and the task vectors
    in float32, the method's τ, θ₀ + τ into the output. A grown vocabulary's
    extra rows are copied from the expert that brings them, as stored.
    """
    meta = p.base.tensors[name]
    shape = tuple(meta.shape)
    rows = shape[0] if shape else 1
    row = meta.numel // rows if rows else 0
    chunked = bufs is not None and name in bufs.chunked and not inputs.cache_on
    per = max(1, bufs.block // row) if chunked else max(1, rows)
    if chunked and getattr(p.spec, "delta_stats", None) is not None:
        ctx = dataclasses.replace(ctx, aux={**ctx.aux, "delta_stats": _delta_stats(p, inputs, name, bufs, per)})
    if chunked:
        base_buf, delta_bufs, zero_buf, staging = bufs.cbase, bufs.cdeltas, bufs.czero, bufs.cstaging
    elif bufs is not None:
        base_buf, delta_bufs, zero_buf, staging = bufs.base, bufs.deltas, bufs.zero, [bufs.staging] * (1 + len(bufs.deltas))
    else:
        base_buf = delta_bufs = zero_buf = staging = None
    out_shape = _out_meta(p, name, dtype)[1]
    total = out_shape[0] if out_shape else 1
    # one block, nothing to append, no reused output buffer to fill: the
    # method's result is the output (no copy)
    whole = per >= rows and total == rows and (dtype == torch.float32 or bufs is None)
    out = None if whole else (_slot(bufs.out, out_shape) if bufs is not None and bufs.out is not None
                              else torch.empty(out_shape, dtype=dtype, device=inputs.device))
    norm = torch.linalg.vector_norm
    norms: list[list[float]] = [[] for _ in inputs.readers]
    merged: list[float] = []
    for a in range(0, rows, per) if rows else [0]:   # an empty tensor is one empty block
        b = min(rows, a + per)
        base, deltas = inputs.block(name, a, b, base_buf, delta_bufs, staging)
        for i, d in enumerate(deltas):
            norms[i].append(float(norm(d)))
        # NaN/Inf in any input makes a task-vector norm non-finite (a NaN
        # base poisons them all), so the norms double as the input check,
        # before the method sees the values
        if not inputs.readers or not all(_finite_norm(x[-1]) for x in norms):
            inputs.culprit(name)
        if p.zero_first:
            zero = _slot(zero_buf, base.shape).zero_() if zero_buf is not None else torch.zeros_like(base)
            deltas = [zero] + deltas
        delta = p.spec.fn(base, deltas, p.model_params, p.global_params, dataclasses.replace(ctx, offset=a * row))
        if tuple(delta.shape) != tuple(base.shape):
            raise RuntimeError(f"{p.spec.name} returned shape {list(delta.shape)} for rows {a}:{b} of {name} "
                               f"{list(base.shape)}")
        if delta.dtype != torch.float32 or delta.device != base.device:
            delta = delta.to(base.device, torch.float32)
        merged.append(float(norm(delta)))
        if not _finite_norm(merged[-1]):
            raise UserError(f"The {p.spec.name} merge produced NaN or Inf in tensor {quoted(name)}; nothing was written.")
        if delta.is_contiguous() and delta.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
            merged_rows = delta.add_(base)   # the method's result is ours unless it shares memory with θ₀
        else:
            merged_rows = torch.add(base, delta)
        del delta, deltas, base
        if whole:
            out = merged_rows
        else:
            # into the output: torch's add(out=) to another dtype allocates a float32 temporary anyway
            out[a:b].copy_(merged_rows)
    if total > rows:
        r = inputs.readers[p.grow_index]
        for a in range(rows, total, per):
            b = min(total, a + per)
            raw = r.read_rows(name, a, b, staging[0] if staging is not None else None)
            if _has_nonfinite(raw.to(torch.float32)):
                inputs.culprit(name)
            out[a:b].copy_(raw)
    if out.dtype != dtype:
        out = out.to(dtype)

    def combined(parts: list[float]) -> float:
        """A tensor's norm from its blocks' norms (the norm itself for one block)."""
        return parts[0] if len(parts) == 1 else sum(x * x for x in parts) ** 0.5
    return out, [combined(x) for x in norms], combined(merged)


def _walk(p: Plan, inputs: _Inputs, dtype: torch.dtype, emit: Callable[[str, torch.Tensor], None],
          progress: Progress | None, prepared, result: MergeResult, bar=None, bufs: _Buffers | None = None) -> None:
    """The hot loop: one tensor name at a time through the method.

    With ``bufs`` the emitted tensor may be a view of a reused buffer, so the
    sink must consume it at once (the shard writer does); without, every
    emitted tensor is freshly allocated and may be kept.
    """
    n = len(p.names)
    every = max(1, n // 200)  # the UI need not hear about every tiny norm vector
    for i, name in enumerate(p.names):
        meta = p.base.tensors[name]
        if not meta.is_float:
            # integer buffers (position ids ...) are not weights: keep the base's
            emit(name, inputs.base_reader.read(name))
        else:
            layer, module = M.layer_of(name), M.module_of(name)
            aux = prepared.aux(name) if prepared is not None else {}
            ctx = TensorContext(name, layer, module, p.seed, aux if aux is not None else {})
            out, norms, merged_norm = _merge_tensor(p, inputs, name, dtype, ctx, bufs)
            result.stats[name] = TensorStats(layer, module, merged_norm, ([0.0] if p.zero_first else []) + norms)
            _check_range(out, dtype, p.spec.name, name)
            emit(name, out)
        if bar is not None:
            bar.update(1)
        if progress is not None and (i % every == 0 or i == n - 1):
            progress((i + 1) / n, f"merged tensor {i + 1} of {n}: {name}")
    if prepared is not None:
        result.analysis = prepared.summary()
