"""Recipe in, merged model out: walk the tensors, feed the method, write.

The engine holds no method math. It checks everything that can be checked
before touching a weight (recipe, headers, compatibility), then streams one
tensor name at a time: read it from every model (pread into reused buffers,
see FileReader), compute in float32, hand base + task vectors to the method,
and send the result to a sink -- the UI's live model (fast re-merge, no
disk) or safetensors shards. Elementwise methods get row blocks instead of
whole tensors, so their passes run in cache (see CHUNK_ELEMS).

Shards are written as they are computed: every output shape and dtype is
known from the headers, so each shard's header is planned up front and its
tensors are appended to the file one by one. Peak memory is one tensor per
input plus one output tensor (one row block per input for elementwise
methods, plus one float32 task vector for a ``delta_stats`` pre-pass such
as TIES's thresholds), never a whole shard.

Outputs go to a temp folder next to the target and are renamed into place
only when everything succeeded; a failure or Ctrl-C leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import limits
from . import models as M
from . import recipe as R
from .errors import UserError
from .methods.base import TensorContext

Progress = Callable[[float, str], None]

TOOL_NAME = "merge explorer"
DEFAULT_SHARD_SIZE = 2 * 1024**3
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ST_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}
_FLOAT_ST = ("F64", "F32", "F16", "BF16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
# inputs are cached as float32 in memory for the UI's re-merge loop only
# when they are this small (the built-in family is a few MB)
CACHE_BYTES = int(os.environ.get("MERGE_EXPLORER_ENGINE_CACHE_MB", "512")) * 2**20


@dataclass
class TensorStats:
    """Cheap per-tensor scalars the UI plots (task-vector norms per layer)."""
    layer: int | None
    module: str
    merged_norm: float            # ‖θ − θ₀‖₂ of the merged tensor (shared rows)
    expert_norms: list[float]     # ‖τᵢ‖₂, in MergeResult.experts order


@dataclass
class MergeResult:
    out_dir: str | None
    n_tensors: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)          # refs, order of expert_norms
    stats: dict[str, TensorStats] = field(default_factory=dict)

    def layer_norms(self) -> dict:
        """{layer or module name: {"merged": n, ref: n, ...}} with n the L2 norm over the layer.

        Norms of a layer are combined as sqrt(Σ norm²), i.e. the norm of the
        layer's concatenated task vector.
        """
        out: dict = {}
        for s in self.stats.values():
            key = s.layer if s.layer is not None else s.module
            row = out.setdefault(key, {"merged": 0.0, **{e: 0.0 for e in self.experts}})
            row["merged"] += s.merged_norm ** 2
            for e, n in zip(self.experts, s.expert_norms):
                row[e] += n ** 2
        return {k: {kk: vv ** 0.5 for kk, vv in v.items()} for k, v in out.items()}


# ----------------------------------------------------------------- planning
@dataclass
class _Plan:
    """Everything decided before any weight is read."""
    spec: object
    base: M.ModelInfo                     # reference model (base, or models[0])
    sources: list[M.ModelInfo]            # one per task vector; None-free
    model_params: list[dict]
    global_params: dict
    zero_first: bool                      # sources[0] is the base itself (zero task vector)
    labels: list[str]
    names: list[str]                      # walk order
    grow_from: M.ModelInfo | None         # expert whose extra vocab rows are kept
    grow_index: int                       # its position among the readers
    notes: list[str]
    seed: int
    infos: dict


def tensor_order(name: str) -> tuple:
    """Embeddings first, then layer by layer, then the final norm and head,
    so progress 'tensor i of n' moves through the network in order."""
    layer = M.layer_of(name)
    if layer is None:
        return (0 if M.module_of(name) == "embed" else 2, 0, name)
    return (1, layer, name)


def _infos_for(recipe: R.Recipe, infos) -> dict[str, M.ModelInfo]:
    """ModelInfo per reference as written in the recipe (base_model and each model)."""
    if isinstance(infos, (list, tuple)):
        infos = {i.ref: i for i in infos}
    infos = dict(infos or {})
    refs = ([recipe.base_model] if recipe.base_model else []) + [m.model for m in recipe.models]
    for ref in refs:
        if ref not in infos:
            infos[ref] = M.inspect(ref)
    return infos


def plan(recipe: R.Recipe, infos=None) -> _Plan:
    """Validate the recipe, inspect headers, check compatibility; no weights read."""
    R.validate(recipe)
    from .methods import get
    spec = get(recipe.merge_method)
    per, glob = R.resolve_params(recipe, spec)
    infos = _infos_for(recipe, infos)
    idx = R.contributors(recipe, spec)
    zero_first = False
    if recipe.base_model:
        base = infos[recipe.base_model]
        if not spec.needs_base and recipe.base_model in [m.model for m in recipe.models]:
            # listed as a model too: it joins the average with a zero task vector
            j = [m.model for m in recipe.models].index(recipe.base_model)
            idx = [j] + [i for i in idx if i != j]
            zero_first = True
    else:
        # no base (linear): models[0] is the reference and joins the average
        # with its zero task vector, so only the listed models are averaged
        base = infos[recipe.models[0].model]
        zero_first = True
    sources = [infos[recipe.models[i].model] for i in idx]
    experts = sources[1:] if zero_first else sources
    rep = M.compatibility(base, experts) if experts else M.CompatReport(ok=True)
    if not rep.ok:
        raise UserError(rep.sentence())
    notes = list(rep.notes)
    grow_from, grow_index = None, -1
    for k, e in enumerate(experts):
        if e.ref in rep.vocab_extra:
            grow_from, grow_index = e, k
            break
    if grow_from is not None:
        others = [e.ref for e in experts if e.ref in rep.vocab_extra and e is not grow_from]
        notes.append(f"The vocabulary grows to {grow_from.vocab_size or '?'} tokens: the extra embedding rows, "
                     f"the tokenizer and the config come from '{grow_from.ref}'" +
                     (f"; the extra rows of {', '.join(others)} are dropped." if others else "."))
    names = sorted(base.tensors, key=tensor_order)
    seed = int(glob.get("seed", recipe.parameters.get("seed", 0)) or 0)
    return _Plan(spec=spec, base=base, sources=sources, model_params=[per[i] for i in idx],
                 global_params=glob, zero_first=zero_first, labels=[s.ref for s in sources], names=names,
                 grow_from=grow_from, grow_index=grow_index, notes=notes, seed=seed, infos=infos)


def _out_meta(p: _Plan, name: str, dtype: torch.dtype) -> tuple[str, tuple[int, ...]]:
    """(safetensors dtype, shape) of one output tensor, known before computing it."""
    meta = p.base.tensors[name]
    if meta.dtype not in _FLOAT_ST:
        return meta.dtype, meta.shape
    shape = meta.shape
    if p.grow_from is not None and M.is_vocab_tensor(name):
        shape = p.grow_from.tensors[name].shape
    return _ST_NAMES[dtype], shape


# ------------------------------------------------------------------ inputs
class FileReader:
    """Reads one tensor at a time with pread into a buffer the caller owns.

    Why not the memory map of models.TensorReader: safetensors hands out
    views of its private map, so every page read stays mapped (and counts
    in the resident size) until the file is closed -- a 0.5B merge would
    hold all its inputs resident -- and a write into such a view changes
    what the next read returns. pread copies straight from the page cache
    into a reused buffer: no page faults on fresh memory, nothing aliased.
    """

    def __init__(self, info: M.ModelInfo):
        self.info = info
        self._fds: dict[str, int] = {}
        self._where: dict[str, tuple[str, int, int]] = {}   # name -> (file, start, nbytes)

    def _locate(self, name: str) -> tuple[int, int, int]:
        meta = self.info.tensors[name]
        if meta.file not in self._fds:
            try:
                fd = os.open(meta.file, os.O_RDONLY)
                n = int.from_bytes(os.pread(fd, 8, 0), "little")
                header = json.loads(os.pread(fd, n, 8))
            except (OSError, ValueError) as exc:
                raise UserError(f"Cannot read '{meta.file}' ({exc}).")
            self._fds[meta.file] = fd
            for k, v in header.items():
                if k != "__metadata__":
                    a, b = v["data_offsets"]
                    self._where[k] = (meta.file, 8 + n + a, b - a)
        file, start, nbytes = self._where[name]
        return self._fds[file], start, nbytes

    def nbytes(self, name: str) -> int:
        meta = self.info.tensors[name]
        return meta.numel * M.DTYPE_BYTES[meta.dtype]

    def read(self, name: str, staging: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor as stored (dtype, shape); in ``staging`` (uint8, CPU) when given."""
        meta = self.info.tensors[name]
        return self.read_rows(name, 0, meta.shape[0] if meta.shape else 1, staging)

    def read_rows(self, name: str, a: int, b: int, staging: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [a, b) of the tensor as stored (the whole tensor for a scalar)."""
        meta = self.info.tensors[name]
        fd, start, nbytes = self._locate(name)
        if nbytes != self.nbytes(name):
            raise UserError(f"Tensor '{name}' of '{self.info.ref}' has {nbytes} bytes but its shape needs "
                            f"{self.nbytes(name)}; the file is corrupt.")
        shape = tuple(meta.shape)
        row = nbytes // shape[0] if shape and shape[0] else nbytes
        size = (b - a) * row if shape else nbytes
        raw = staging[:size] if staging is not None else torch.empty(size, dtype=torch.uint8)
        view = memoryview(raw.numpy())
        done, off = 0, start + (a * row if shape else 0)
        while done < size:   # one read returns at most ~2 GiB on Linux
            got = os.preadv(fd, [view[done:]], off + done)
            if got <= 0:
                raise UserError(f"Tensor '{name}' of '{self.info.ref}' could not be read; the file is truncated.")
            done += got
        return raw.view(M.torch_dtype_of(meta.dtype)).view(((b - a),) + shape[1:] if shape else shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


# Elementwise methods (entry i of the result depends only on entry i of the
# inputs) are fed row blocks of about this many entries: every pass of the
# method then runs in cache instead of memory, and no float32 copy of a
# whole tensor is ever made. A method whose blocks need per-tensor numbers
# first (TIES's thresholds) gets them from its ``delta_stats`` hook, run on
# one whole task vector at a time in a scratch buffer. Methods with other
# per-tensor work (cosines, SVDs, DARE's masks) always see whole tensors.
CHUNK_ELEMS = 1 << 18


@contextlib.contextmanager
def _one_thread(on: bool):
    """torch on one thread while row blocks are merged.

    A block is ~1 MB, so splitting each of its ~30 passes across threads is
    mostly synchronisation, and on a busy machine a thread that waits for a
    descheduled partner spins: on the shared 2-core box (load 5) the 0.5B
    TIES merge took 258 s on 2 threads and 29 s on one. The setting is
    process-wide, so it is restored as soon as the walk ends.
    """
    old = torch.get_num_threads()
    if not on or old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def elementwise(spec) -> bool:
    """The spec says so itself (MethodSpec.elementwise, off by default)."""
    return bool(getattr(spec, "elementwise", False))


def _chunked(p: _Plan, name: str) -> bool:
    meta = p.base.tensors[name]
    return (elementwise(p.spec) and p.spec.prepare is None and meta.dtype in _FLOAT_ST
            and len(meta.shape) >= 1 and meta.numel > CHUNK_ELEMS)


class _Buffers:
    """Work buffers reused for every tensor of a streamed merge: fresh large
    allocations cost a page fault per 4 KiB, which made up a third of the
    merge time. Whole-tensor float32 buffers are sized for the largest
    tensor that is not fed in row blocks."""

    def __init__(self, p: _Plan, n_readers: int, device: str, dtype: torch.dtype):
        floats = [n for n in p.names if p.base.tensors[n].dtype in _FLOAT_ST]
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

    def __init__(self, p: _Plan, device: str, cache: bool):
        self.key = _inputs_key(p, device)
        self.device = device
        self.base_reader = FileReader(p.base)
        self.readers = [FileReader(s) for s in (p.sources[1:] if p.zero_first else p.sources)]
        self.cache_on = cache
        self._cache: dict[str, tuple] = {}

    def _load(self, reader: FileReader, name: str, dst: torch.Tensor | None, bufs: _Buffers | None,
              rows: int | None = None, minus: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(float32 tensor cut to ``rows``, less ``minus`` if given; float32 extra rows or None).

        Written into ``dst`` when given. Convert first, then subtract in
        place: torch's mixed-dtype ``sub(out=)`` allocates hidden temporaries
        and measured 2.5x slower.
        """
        raw = reader.read(name, bufs.staging if bufs is not None else None)
        extra = None
        if rows is not None and raw.shape[0] > rows:
            extra = raw[rows:].to(torch.float32, copy=True)   # kept past the staging buffer's reuse
            raw = raw[:rows]
        if dst is None:
            t = raw.to(self.device, torch.float32, copy=True)
            return (t.sub_(minus) if minus is not None else t), extra
        dst.copy_(raw)
        return (dst.sub_(minus) if minus is not None else dst), extra

    def get(self, name: str, n_rows: int | None, bufs: _Buffers | None = None
            ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """(θ₀ float32, [τᵢ] cut to the base's rows, [extra vocab rows of each expert or None]).

        With ``bufs`` the tensors are views of the reused buffers, valid
        until the next call. Cached tensors are cloned on the way out:
        methods are meant to be pure, but one that works in place must not
        poison the next re-merge.
        """
        hit = self._cache.get(name)
        if hit is not None:
            b, ds, xs = hit
            return b.clone(), [d.clone() for d in ds], xs
        shape = self.base_reader.info.tensors[name].shape
        use = bufs if not self.cache_on else None
        base, _ = self._load(self.base_reader, name, _slot(use.base, shape) if use else None, use)
        deltas, extras = [], []
        for i, r in enumerate(self.readers):
            t, extra = self._load(r, name, _slot(use.deltas[i], shape) if use else None, use, n_rows, base)
            deltas.append(t)
            extras.append(extra)
        if self.cache_on:
            self._cache[name] = (base, deltas, extras)
            return base.clone(), [d.clone() for d in deltas], extras
        return base, deltas, extras

    def culprit(self, name: str) -> None:
        """Name the model whose tensor holds NaN/Inf (called only after a norm was not finite)."""
        for r in [self.base_reader] + self.readers:
            if _has_nonfinite(r.read(name).to(torch.float32)):
                raise UserError(f"Tensor '{name}' of '{r.info.ref}' contains NaN or Inf values; nothing was written.")

    def close(self) -> None:
        self.base_reader.close()
        for r in self.readers:
            r.close()
        self._cache.clear()


_LAST_INPUTS: _Inputs | None = None
# one merge at a time per process: merges share the open readers, and two
# at once on a small CPU would only slow each other down
_LOCK = threading.RLock()


def _inputs_key(p: _Plan, device: str) -> tuple:
    srcs = [p.base] + list(p.sources)
    return (device,) + tuple((s.path, s.fingerprint()) for s in srcs)


def _inputs(p: _Plan, device: str, live: bool) -> _Inputs:
    """Reuse the last set of readers when the models are the same files."""
    global _LAST_INPUTS
    key = _inputs_key(p, device)
    n_models = 1 + len(p.sources)
    cache = live and p.base.n_params * 4 * n_models <= CACHE_BYTES
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


# ------------------------------------------------------------------- sinks
class ShardWriter:
    """Streams tensors into safetensors shards planned up front.

    Each shard's header (names, dtypes, shapes, offsets) is written when its
    first tensor arrives, then every tensor's bytes are appended in order.
    """

    def __init__(self, folder: str, layout: list[tuple[str, str, tuple[int, ...]]], shard_size: int):
        self.folder = folder
        self.shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, st, shape in layout:
            n = _numel(shape) * M.DTYPE_BYTES[st]
            if self.shards[-1] and size + n > shard_size:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, st, shape, n))
            size += n
        total = len(self.shards)
        self.files = ["model.safetensors"] if total == 1 else \
            [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
        self._where = {t[0]: (i, j) for i, s in enumerate(self.shards) for j, t in enumerate(s)}
        self._shard = -1
        self._next = 0
        self._fh = None
        self._written = 0
        self.total_size = sum(t[3] for s in self.shards for t in s)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        i, j = self._where[name]
        if i != self._shard:
            self._close()
            self._open(i)
        if j != self._next:
            raise RuntimeError(f"tensor {name} arrived out of the planned order")
        _, st, shape, n = self.shards[i][j]
        t = tensor.detach().to("cpu").contiguous()
        if tuple(t.shape) != tuple(shape) or _ST_NAMES.get(t.dtype) != st:
            raise RuntimeError(f"tensor {name} is {t.dtype}{list(t.shape)}, planned {st}{list(shape)}")
        if n:
            buf = t.reshape(-1).view(torch.uint8).numpy()
            self._fh.write(memoryview(buf))
        self._next += 1
        self._written += 1

    def _open(self, i: int) -> None:
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, st, shape, n in self.shards[i]:
            header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)   # safetensors aligns the data to 8 bytes
        self._fh = open(os.path.join(self.folder, self.files[i]), "wb")
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._shard, self._next = i, 0

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> None:
        self._close()
        if self._written != len(self._where):
            raise RuntimeError(f"{len(self._where) - self._written} planned tensors were never written")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size},
                     "weight_map": {t[0]: self.files[i] for i, s in enumerate(self.shards) for t in s}}
            with open(os.path.join(self.folder, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=2)

    def abort(self) -> None:
        self._close()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ------------------------------------------------------------------ merging
def _merge_rows(p: _Plan, inputs: _Inputs, name: str, bufs: _Buffers, dtype: torch.dtype,
                ctx: TensorContext) -> tuple[torch.Tensor, list[float], float]:
    """An elementwise method fed row blocks; returns (output, ‖τᵢ‖, ‖τ‖)."""
    meta = p.base.tensors[name]
    shape = tuple(meta.shape)
    rows = shape[0]
    per = max(1, bufs.block // (meta.numel // rows))
    out = _slot(bufs.out, _out_meta(p, name, dtype)[1])
    norm = torch.linalg.vector_norm
    ssq = [0.0] * len(inputs.readers)
    merged = 0.0
    row = meta.numel // rows
    if getattr(p.spec, "delta_stats", None) is not None:
        ctx = dataclasses.replace(ctx, aux={**ctx.aux, "delta_stats": _delta_stats(p, inputs, name, bufs, per)})
    for a in range(0, rows, per):
        b = min(rows, a + per)
        cshape = (b - a,) + shape[1:]
        base = _slot(bufs.cbase, cshape).copy_(inputs.base_reader.read_rows(name, a, b, bufs.cstaging[0]))
        deltas = []
        for i, r in enumerate(inputs.readers):
            d = _slot(bufs.cdeltas[i], cshape).copy_(r.read_rows(name, a, b, bufs.cstaging[i + 1])).sub_(base)
            ssq[i] += float(norm(d)) ** 2
            deltas.append(d)
        if p.zero_first:
            deltas = [_slot(bufs.czero, cshape).zero_()] + deltas
        delta = p.spec.fn(base, deltas, p.model_params, p.global_params, dataclasses.replace(ctx, offset=a * row))
        if tuple(delta.shape) != cshape:
            raise RuntimeError(f"{p.spec.name} returned shape {list(delta.shape)} for a block of {name} {list(cshape)}")
        if delta.dtype != torch.float32 or delta.device != base.device:
            delta = delta.to(base.device, torch.float32)
        merged += float(norm(delta)) ** 2
        if delta.is_contiguous() and delta.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
            out[a:b].copy_(delta.add_(base))
        else:
            out[a:b].copy_(torch.add(base, delta))
    if M.is_vocab_tensor(name) and p.grow_from is not None:
        r = inputs.readers[p.grow_index]
        total = r.info.tensors[name].shape[0]
        for a in range(rows, total, per):
            b = min(total, a + per)
            raw = r.read_rows(name, a, b, bufs.cstaging[0])
            if _has_nonfinite(raw.to(torch.float32)):
                inputs.culprit(name)
            out[a:b].copy_(raw)
    return out, [x ** 0.5 for x in ssq], merged ** 0.5


def _delta_stats(p: _Plan, inputs: _Inputs, name: str, bufs: _Buffers, per: int) -> list:
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
                        f"tensor '{name}'; nothing was written (merge in float32 or bfloat16).")


def _walk(p: _Plan, inputs: _Inputs, dtype: torch.dtype, emit: Callable[[str, torch.Tensor], None],
          progress: Progress | None, prepared, result: MergeResult, bar=None, bufs: _Buffers | None = None) -> None:
    """The hot loop: one tensor name at a time through the method.

    With ``bufs`` the emitted tensor is a view of a reused buffer, so the
    sink must consume it at once (the shard writer does); without, every
    emitted tensor is freshly allocated and may be kept.
    """
    spec = p.spec
    n = len(p.names)
    every = max(1, n // 200)  # the UI need not hear about every tiny norm vector
    norm = torch.linalg.vector_norm
    for i, name in enumerate(p.names):
        meta = p.base.tensors[name]
        layer, module = M.layer_of(name), M.module_of(name)
        if meta.dtype not in _FLOAT_ST:
            # integer buffers (position ids ...) are not weights: keep the base's
            emit(name, inputs.base_reader.read(name))
            continue
        vocab = M.is_vocab_tensor(name)
        aux = prepared.aux(name) if prepared is not None else {}
        ctx = TensorContext(name, layer, module, p.seed, aux if aux is not None else {})
        if bufs is not None and name in bufs.chunked and not inputs.cache_on:
            out, norms, merged_norm = _merge_rows(p, inputs, name, bufs, dtype, ctx)
            # NaN/Inf in any input makes a task-vector norm non-finite
            if not all(_finite_norm(x) for x in norms) or not inputs.readers:
                inputs.culprit(name)
            if not _finite_norm(merged_norm):
                raise UserError(f"The {spec.name} merge produced NaN or Inf in tensor '{name}'; nothing was written.")
            result.stats[name] = TensorStats(layer, module, merged_norm, ([0.0] if p.zero_first else []) + norms)
            _check_range(out, dtype, spec.name, name)
            emit(name, out)
            if bar is not None:
                bar.update(1)
            if progress is not None and (i % every == 0 or i == n - 1):
                progress((i + 1) / n, f"merged tensor {i + 1} of {n}: {name}")
            continue
        base, deltas, extras = inputs.get(name, meta.shape[0] if vocab else None, bufs)
        norms = [float(norm(d)) for d in deltas]
        # NaN/Inf in any input makes a task-vector norm non-finite (a NaN
        # base poisons them all), so the norms double as the input check
        if not all(_finite_norm(x) for x in norms) or not deltas:
            inputs.culprit(name)
        for x in extras:
            if x is not None and _has_nonfinite(x):
                inputs.culprit(name)
        if p.zero_first:
            zero = _slot(bufs.zero, meta.shape).zero_() if bufs is not None else torch.zeros_like(base)
            deltas, norms = [zero] + deltas, [0.0] + norms
        delta = spec.fn(base, deltas, p.model_params, p.global_params, ctx)
        if tuple(delta.shape) != tuple(base.shape):
            raise RuntimeError(f"{spec.name} returned shape {list(delta.shape)} for {name} {list(base.shape)}")
        if delta.dtype != torch.float32 or delta.device != base.device:
            delta = delta.to(base.device, torch.float32)
        merged_norm = float(norm(delta))
        if not _finite_norm(merged_norm):
            raise UserError(f"The {spec.name} merge produced NaN or Inf in tensor '{name}'; nothing was written.")
        result.stats[name] = TensorStats(layer, module, merged_norm, norms)
        grow = vocab and p.grow_from is not None and extras[p.grow_index] is not None
        if delta.is_contiguous() and delta.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
            out = delta.add_(base)   # the method's result is ours unless it shares memory with θ₀
        else:
            out = torch.add(base, delta)
        del delta, deltas, base
        if grow:
            out = torch.cat([out, extras[p.grow_index].to(out.device)], 0)
        elif bufs is not None and bufs.out is not None and dtype != torch.float32:
            # into a reused buffer: torch's add(out=) to another dtype
            # allocates a float32 temporary anyway
            out = _slot(bufs.out, out.shape).copy_(out)
        if out.dtype != dtype:
            out = out.to(dtype)
        _check_range(out, dtype, spec.name, name)
        emit(name, out)
        if bar is not None:
            bar.update(1)
        if progress is not None and (i % every == 0 or i == n - 1):
            progress((i + 1) / n, f"merged tensor {i + 1} of {n}: {name}")


def merge_state_dict(recipe: R.Recipe, *, infos=None, device: str = "cpu", progress: Progress | None = None,
                     _plan: _Plan | None = None) -> tuple[dict[str, torch.Tensor], MergeResult]:
    """The merged weights in memory (output dtype), for tests and small models.

    Reuses the open readers of the previous call when the models are the
    same, so repeated merges of one family are cheap.
    """
    t0 = time.perf_counter()
    p = _plan or plan(recipe, infos)
    dtype = _TORCH_DTYPES[recipe.dtype]
    device = M.pick_device(device)
    result = MergeResult(None, len(p.names), 0.0, list(p.notes), list(p.labels))
    out: dict[str, torch.Tensor] = {}
    with _LOCK:
        prepared = p.spec.prepare(recipe, p.infos, progress) if p.spec.prepare else None
        inputs = _inputs(p, device, live=True)
        _walk(p, inputs, dtype, out.__setitem__, progress, prepared, result)
    result.seconds = time.perf_counter() - t0
    return out, result


def _into_live(live_model, merged: dict[str, torch.Tensor]) -> None:
    """Copy merged tensors into the model's own parameters, in place.

    Everything is checked first, so a mismatch leaves the live model as it
    was rather than half-merged.
    """
    state = live_model.state_dict(keep_vars=True)
    for name, t in merged.items():
        if name not in state:
            raise UserError(f"The loaded model has no tensor '{name}', so it is not the model this recipe merges.")
        if tuple(state[name].shape) != tuple(t.shape):
            raise UserError(f"The loaded model's '{name}' is {list(state[name].shape)} but the merge gives "
                            f"{list(t.shape)}; merge to a folder instead (the vocabulary changes size).")
    with torch.no_grad():
        for name, t in merged.items():
            state[name].copy_(t)


def run_merge(recipe: R.Recipe, *, out_dir: str | None = None, live_model=None, progress: Progress | None = None,
              device: str = "cpu", infos=None, force: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
              show_bar: bool = False) -> MergeResult:
    """Merge ``recipe`` into ``live_model`` (in place, no disk) or a new folder ``out_dir``.

    ``infos`` maps each reference written in the recipe to its ModelInfo
    (or is a list of ModelInfo) so callers that already inspected the models
    skip that step. Exactly one of ``out_dir`` and ``live_model`` is given.
    """
    if (out_dir is None) == (live_model is None):
        raise UserError("Give either an output folder or a loaded model to merge into.")
    t0 = time.perf_counter()
    if out_dir is not None:
        out_dir = os.path.abspath(os.path.expanduser(out_dir))
        limits.check_output_dir(out_dir)   # Space mode: only under the output roots
        _check_out(out_dir, force)
    p = plan(recipe, infos)
    # headers only so far: refuse a merge that would not fit before reading weights
    limits.check_merge(p.base, p.sources, live=live_model is not None, needs_grad=p.spec.prepare is not None,
                       out_bytes=_TORCH_DTYPES[recipe.dtype].itemsize)
    if live_model is not None:
        merged, result = merge_state_dict(recipe, device=device, progress=progress, _plan=p)
        _into_live(live_model, merged)
        result.seconds = time.perf_counter() - t0
        return result
    return _to_folder(recipe, p, out_dir, force, progress, device, shard_size, show_bar, t0)


def _check_out(out_dir: str, force: bool) -> None:
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise UserError(f"'{out_dir}' exists and is a file; choose a folder name for the merged model.")
        if not force:
            raise UserError(f"The output folder '{out_dir}' already exists; choose another or use --force to replace it.")
    parent = os.path.dirname(out_dir)
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not probe or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"Cannot write to '{parent}'; choose an output folder you may write to.")


def _to_folder(recipe: R.Recipe, p: _Plan, out_dir: str, force: bool, progress: Progress | None,
               device: str, shard_size: int, show_bar: bool, t0: float) -> MergeResult:
    dtype = _TORCH_DTYPES[recipe.dtype]
    device = M.pick_device(device)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the folder '{parent}' ({exc.strerror}).")
    # the pid in the name lets a later merge tell a folder left by a killed
    # process (SIGKILL skips every cleanup) from one still being written
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    result = MergeResult(out_dir, len(p.names), 0.0, list(p.notes), list(p.labels))
    writer = None
    bar = None
    _LOCK.acquire()
    try:
        _clean_stale(parent, os.path.basename(out_dir))
        os.makedirs(tmp)
        prepared = p.spec.prepare(recipe, p.infos, progress) if p.spec.prepare else None
        inputs = _inputs(p, device, live=False)
        writer = ShardWriter(tmp, [(n, *_out_meta(p, n, dtype)) for n in p.names], shard_size)
        bufs = _Buffers(p, len(inputs.readers), device, dtype) if not inputs.cache_on else None
        if show_bar:
            from tqdm import tqdm
            bar = tqdm(total=len(p.names), unit="tensor", desc=f"merging ({p.spec.name})")
        with _one_thread(bufs is not None and bool(bufs.chunked)):
            _walk(p, inputs, dtype, writer.add, progress, prepared, result, bar, bufs)
        del bufs
        writer.finish()
        _write_side_files(recipe, p, tmp, dtype)
        if os.path.exists(out_dir):   # force: swap the old folder out only now
            old = os.path.join(parent, f".{os.path.basename(out_dir)}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except OSError as exc:
        _cleanup(writer, tmp)
        raise UserError(f"Could not write the merged model to '{out_dir}' ({exc.strerror or exc}); nothing was kept.")
    except BaseException:
        _cleanup(writer, tmp)
        raise
    finally:
        _LOCK.release()
        if bar is not None:
            bar.close()
    if progress is not None:
        progress(1.0, f"wrote {out_dir}")
    result.seconds = time.perf_counter() - t0
    return result


def _clean_stale(parent: str, base: str) -> None:
    """Remove ``.<base>.partial-<pid>-*`` folders whose process is gone.

    A merge killed with SIGKILL (or by the OOM killer) cannot clean up after
    itself; its hidden temp folder is removed by the next merge to the same
    output. Folders of this process are stale too: merges here hold _LOCK.
    """
    prefix = f".{base}.partial-"
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for entry in names:
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue            # still running: another process is writing it
            except ProcessLookupError:
                pass
            except OSError:         # exists but is not ours to signal
                continue
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _cleanup(writer: ShardWriter | None, tmp: str) -> None:
    if writer is not None:
        writer.abort()
    shutil.rmtree(tmp, ignore_errors=True)


def _write_side_files(recipe: R.Recipe, p: _Plan, folder: str, dtype: torch.dtype) -> None:
    """config.json, generation_config.json, tokenizer, recipe and model card."""
    src = p.grow_from or p.base
    config = dict(src.config)
    config["dtype"] = recipe.dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = recipe.dtype
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    gen = os.path.join(src.path, "generation_config.json")
    if os.path.isfile(gen):
        shutil.copyfile(gen, os.path.join(folder, "generation_config.json"))
    tok_dir = src.path
    if p.grow_from is None and recipe.tokenizer_source:
        info = p.infos.get(recipe.tokenizer_source)
        tok_dir = info.path if info is not None else M.resolve(recipe.tokenizer_source)
    for fn in TOKENIZER_FILES:
        path = os.path.join(tok_dir, fn)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(folder, fn))
    with open(os.path.join(folder, "merge_recipe.yaml"), "w", encoding="utf-8") as f:
        f.write(recipe.to_yaml())
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(recipe, p))


def model_card(recipe: R.Recipe, p: _Plan) -> str:
    """A short Hugging Face model card saying how the model was made."""
    import yaml
    parents = [p.base.ref] + [s.ref for s in p.sources if s is not p.base]
    front = {"library_name": "transformers", "tags": ["merge", TOOL_NAME.replace(" ", "-"), p.spec.name],
             "base_model": [r for r in parents if not r.startswith("zoo:") and not os.path.isabs(r)] or None}
    front = {k: v for k, v in front.items() if v}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {recipe.name or 'Merged model'}", "",
             f"Made with {TOOL_NAME} on {_dt.date.today().isoformat()} by **{p.spec.label}** "
             f"(`{p.spec.name}`) in {recipe.dtype}.", ""]
    if p.spec.summary:
        lines += [p.spec.summary, ""]
    lines += ["## Parents", ""]
    if recipe.base_model:
        lines.append(f"* base: `{p.base.ref}`")
    for s, mp in zip(p.sources, p.model_params):
        params = ", ".join(f"{k}={v}" for k, v in mp.items())
        lines.append(f"* `{s.ref}`" + (f" ({params})" if params else ""))
    if p.global_params:
        lines += ["", "## Parameters", ""] + [f"* {k}: {v}" for k, v in p.global_params.items()]
    if p.notes:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in p.notes]
    lines += ["", "## Recipe", "", "```yaml", recipe.to_yaml().strip(), "```", ""]
    return "\n".join(lines)
