"""LED-Merging's Location step, the cached side: which scores a merge needs,
from the cache or computed (scoring.py does the passes).

Location data: the built-in families' training generators (the tiny
family's for its models, the SmolLM2 family's English data for any other
model; ``location_samples``, train split) or a user file: JSONL of
{"prompt", "response"} or an AdvBench-style CSV (goal,target). Scores are
computed on the base model AND on each expert, each time with that
expert's task data (core.methods.led).

Cache (core.scores). SNIP and Wanda scores are written under
``core.CACHE_DIR/led`` as safetensors named by (model fingerprint, method,
data hash, n): the first run costs the backward passes, every later run
reads the file, and the memory cache makes a re-merge after a slider move
read nothing at all. Magnitude and random scores are cheap and computed per
tensor on demand (never whole-model in memory). ``scoring.STATS`` counts
the passes so tests can prove a cache hit runs none.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Callable

import numpy as np
import torch

from ... import checkpoint as M
from ... import userfiles
from ...scores import Cache
from ...errors import UserError, quoted
from .masks import GRID
from .scoring import MAX_LENGTH, encode, snip, wanda

Progress = Callable[[float, str], None]

METHODS = ("snip", "wanda", "magnitude", "random")
DEFAULT_N = 128
VERSION = "led-scores/v2"   # part of every cache key: bump when a score's definition changes
RANKS_VERSION = "led-ranks/v2"   # the rank-code file beside each score file (masks.rank_codes)
RANKS_EXT = ".ranks.safetensors"
SUMS = "__sums__"   # the ranks file's tensor of per-tensor Σ scores (no parameter is named so)

# scores held in memory up to this many bytes in all; larger sets are read
# per tensor from their cache file instead
MEMORY_BYTES = int(os.environ.get("MERGE_EXPLORER_SCORE_CACHE_MB", "1024")) * 2**20

CACHE = Cache("led", VERSION)   # files under CACHE_DIR/led


# ------------------------------------------------------------------ data
WHAT = "location data file"


def read_location_data(path: str) -> list[dict]:
    """[{prompt, response}] from a JSONL file or an AdvBench-style CSV (goal,target).

    The format follows the extension (.csv; .jsonl/.json/.ndjson); any other
    file is read as JSONL when its first non-blank character is '{'.
    """
    text = userfiles.read_text(path, WHAT)
    ext = os.path.splitext(path)[1].lower()
    rows = []
    if ext == ".csv" or (ext not in (".jsonl", ".json", ".ndjson") and not text.lstrip().startswith("{")):
        header, records = userfiles.csv_rows(path, WHAT, text)
        if "goal" not in header or "target" not in header:
            raise UserError(f"The {WHAT} {quoted(path)} needs the AdvBench columns 'goal' and 'target'.")
        for no, rec in records:
            if not rec["goal"] or not rec["target"]:
                raise UserError(f"Row {no} of the {WHAT} {quoted(path)} has an empty 'goal' or 'target'.")
            rows.append({"prompt": rec["goal"], "response": rec["target"]})
    else:
        for no, obj in userfiles.json_lines(path, WHAT, text):
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k].strip()
                                                    for k in ("prompt", "response")):
                raise UserError(f"Line {no} of the {WHAT} {quoted(path)} needs non-empty string fields "
                                "'prompt' and 'response'.")
            rows.append({"prompt": obj["prompt"], "response": obj["response"]})
    if not rows:
        raise UserError(f"The {WHAT} {quoted(path)} holds no samples.")
    return rows


def builtin_rows(task: str, n: int, seed: int = 0, base_path: str | None = None) -> list[dict]:
    """Built-in location data for ``task`` (safety | math | code): the tiny family's for its own models,
    the English data of the SmolLM2 family for every other model (core.zoo.data_for)."""
    from ...zoo import data_for
    return [{"prompt": r["prompt"], "response": r["response"]}
            for r in data_for(base_path).location_samples(task, n, seed)]


# ---------------------------------------------------------------- scores
class Ranks:
    """A score set's rank codes (masks.rank_codes) and per-tensor Σ scores:
    what a re-merge at an r on the slider's grid needs instead of the float
    scores (a quarter of the bytes, a compare instead of a selection). Held
    in memory, or read per tensor from their cache file."""

    def __init__(self, totals: dict[str, float], codes: dict[str, torch.Tensor] | None = None,
                 path: str | None = None):
        self.totals, self._codes = totals, codes
        self._reader = None
        if codes is None:
            info = M.ModelInfo(ref=path, path=os.path.dirname(path), config={}, tensors=M.read_safetensors_header(path))
            self._reader = M.Reader(info)

    def shape(self, name: str) -> tuple:
        if self._codes is not None:
            return tuple(self._codes[name].shape)
        return tuple(self._reader.info.tensors[name].shape)

    def codes(self, name: str) -> torch.Tensor:
        return self._codes[name] if self._codes is not None else self._reader.read(name)

    def nbytes(self) -> int:
        """Bytes held in memory."""
        return sum(c.numel() for c in self._codes.values()) if self._codes is not None else 0

    @classmethod
    def read(cls, path: str, scores_path: str, keep: bool) -> "Ranks | None":
        """The ranks filed for the scores at ``scores_path`` (written after
        them, same grid), in memory when ``keep``; None when absent or stale."""
        try:
            from safetensors import safe_open
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if (meta.get("version") != RANKS_VERSION or meta.get("grid") != str(GRID)
                        or meta.get("scores_mtime_ns") != str(os.stat(scores_path).st_mtime_ns)):
                    return None
                names = json.loads(meta["names"])
                totals = dict(zip(names, f.get_tensor(SUMS).tolist()))
                codes = {n: f.get_tensor(n) for n in names} if keep else None
            return cls(totals, codes, path)
        except Exception:
            return None   # unreadable: rebuilt from the scores


class Scores:
    """Per-tensor scores of one model on one data set; ``get(name)`` gives a
    float32 CPU tensor shaped like the model's tensor (do not modify it)."""

    key: str = ""
    ranks: Ranks | None = None

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self) -> int:
        return self.ranks.nbytes() if self.ranks is not None else 0

    def shapes(self) -> dict[str, tuple]:
        """{tensor name: shape} of the scores held (DictScores, FileScores)."""
        raise NotImplementedError

    def _whole(self, name: str, rows: int | None) -> bool:
        """Whether the ranks answer for this tensor: it has them, and a grown
        vocabulary does not cut it to fewer rows (codes rank the whole tensor)."""
        if self.ranks is None or name not in self.ranks.totals:
            return False
        shape = self.ranks.shape(name)
        return rows is None or not shape or shape[0] <= rows

    def ranked(self, name: str, rows: int | None = None) -> np.ndarray | None:
        """The tensor's rank codes (masks.rank_codes, shaped like it) when they
        answer for it, else None (none, a cut vocabulary). No r here: the
        caller turns its r into a grid step (masks.grid_step) once."""
        return self.ranks.codes(name).numpy() if self._whole(name, rows) else None

    def codes(self, name: str, r: float, rows: int | None = None) -> tuple[np.ndarray, int] | None:
        """(rank codes, j) when ``codes <= j`` is this tensor's top-r; None
        when the ranks cannot answer (none, a cut vocabulary, r off the grid)."""
        from .masks import grid_step
        codes = self.ranked(name, rows)
        if codes is None:
            return None
        j = grid_step(r, codes.size)
        return (codes, j) if j is not None else None

    def top(self, name: str, r: float, rows: int | None = None) -> torch.Tensor:
        """top_r of a tensor's scores (its first ``rows`` rows when given):
        from the rank codes when r is on their grid, else from the scores."""
        return self.mask(name, r, rows, *(self.codes(name, r, rows) or (None, None)))

    def mask(self, name: str, r: float, rows: int | None, codes: np.ndarray | None, j: int | None) -> torch.Tensor:
        """``top`` for a caller that already read the rank codes (``ranked``) and r's grid step j:
        ``codes <= j`` when both answer, else top_r of the scores."""
        from .masks import top_r
        if codes is not None and j is not None:
            # numpy compare: one thread, no torch pool spinning on a busy CPU
            return torch.from_numpy(codes <= j)
        return top_r(shared_rows(self.get(name), rows), r)

    def total(self, name: str, rows: int | None = None) -> float:
        """Σ of a tensor's scores (its first ``rows`` rows when given),
        remembered with the scores: the UI's heatmaps after a re-merge need
        no pass over them. numpy: one thread, no pool spinning on a busy CPU."""
        if self._whole(name, rows):
            return self.ranks.totals[name]
        memo = self.__dict__.setdefault("_totals", {})
        if (name, rows) not in memo:
            memo[(name, rows)] = float(shared_rows(self.get(name), rows).numpy().sum(dtype=np.float64))
        return memo[(name, rows)]


def shared_rows(t: torch.Tensor, rows: int | None) -> torch.Tensor:
    """A grown vocabulary's scores cut to the rows the expert shares with the base."""
    return t[:rows] if rows is not None and t.dim() >= 1 and t.shape[0] > rows else t


class DictScores(Scores):
    def __init__(self, key: str, tensors: dict[str, torch.Tensor]):
        self.key, self.tensors = key, tensors

    def get(self, name: str) -> torch.Tensor:
        t = self.tensors.get(name)
        if t is None:
            raise UserError(f"No importance score for tensor {quoted(name)}; the checkpoint's tensor names differ from "
                            "the loaded model's, so LED cannot locate its weights.")
        return t

    def nbytes(self) -> int:
        return sum(t.numel() * 4 for t in self.tensors.values()) + super().nbytes()

    def shapes(self) -> dict[str, tuple]:
        return {n: tuple(t.shape) for n, t in self.tensors.items()}


class FileScores(Scores):
    """Scores read per tensor from their cache file (sets too big to hold),
    with the one weights reader (pread, not a memory map: a mapped 2 GB file
    per score set counted in the process's RSS once read, 10 GB for a 0.5B
    re-merge)."""

    def __init__(self, key: str, path: str):
        self.key, self.path = key, path
        info = M.ModelInfo(ref=path, path=os.path.dirname(path), config={},
                           tensors=M.read_safetensors_header(path))
        self._reader = M.Reader(info)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._reader.info.tensors:
            raise UserError(f"No importance score for tensor {quoted(name)} in {quoted(self.path)}; delete the file to recompute.")
        return self._reader.get(name, torch.float32)

    def shapes(self) -> dict[str, tuple]:
        return {n: tuple(t.shape) for n, t in self._reader.info.tensors.items()}


class _LazyScores(Scores):
    """Computed per tensor from the checkpoint (magnitude, random); memoised
    when the model is small enough to keep them."""

    def __init__(self, key: str, info: M.ModelInfo, keep: bool):
        self.key, self.info, self.keep = key, info, keep
        self._reader = M.Reader(info)
        self._memo: dict[str, torch.Tensor] = {}

    def _compute(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        t = self._memo.get(name)
        if t is None:
            if name not in self.info.tensors:
                raise UserError(f"{quoted(self.info.ref)} has no tensor {quoted(name)}.")
            t = self._compute(name)
            if self.keep:
                self._memo[name] = t
        return t

    def nbytes(self) -> int:
        return sum(t.numel() * 4 for t in self._memo.values())


class MagnitudeScores(_LazyScores):
    def _compute(self, name: str) -> torch.Tensor:
        return self._reader.get(name, torch.float32).abs()


class RandomScores(_LazyScores):
    def __init__(self, key: str, info: M.ModelInfo, keep: bool, seed: int):
        super().__init__(key, info, keep)
        self.seed = seed
        self.fingerprint = info.fingerprint()   # stats every shard: once, not per tensor

    def _compute(self, name: str) -> torch.Tensor:
        # a stable per-(seed, model, tensor) stream: the same tensor gets the
        # same scores whatever order tensors are visited in, and base and
        # expert draw independent sets
        h = hashlib.sha256(f"{self.seed}:{self.fingerprint}:{name}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF)
        return torch.rand(self.info.tensors[name].shape, generator=g, dtype=torch.float32)


# ------------------------------------------------------------------ cache
def data_hash(rows: list[dict], tokenizer_dir: str | None, **knobs) -> str:
    """Identity of the location data as a model sees it (scores.Cache.data_hash)."""
    return CACHE.data_hash(([r["prompt"], r["response"]] for r in rows), tokenizer_dir, **knobs)


def cache_key(info: M.ModelInfo, method: str, rows: list[dict] | None, *, tokenizer_dir: str | None = None,
              seed: int = 0, dtype: str = "float32", max_length: int = MAX_LENGTH) -> str:
    """(model fingerprint, method, data hash, n) as a file name stem."""
    if method in ("magnitude", "random"):
        return f"{info.fingerprint()}-{method}" + (f"-s{seed}" if method == "random" else "")
    dh = data_hash(rows or [], tokenizer_dir, dtype=dtype, max_length=max_length)
    return f"{info.fingerprint()}-{method}-{dh}-n{len(rows or [])}"


def cached(key: str) -> Scores | None:
    """The scores under ``key`` from memory, else from disk (then kept in memory); None if absent."""
    hit = CACHE.remembered(key)
    if hit is not None:
        return hit
    path = CACHE.path(key, ".safetensors")
    if not os.path.isfile(path):
        return None
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("version") != VERSION:
                return None
            shapes = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}
            numel = sum(_numel(s) for s in shapes.values())
            if numel * 5 <= _room():
                scores: Scores = DictScores(key, {n: f.get_tensor(n).float() for n in shapes})
            else:
                scores = None
        if scores is None:
            scores = FileScores(key, path)
        rank(scores, keep=numel <= _room() - scores.nbytes())
    except Exception as exc:   # a truncated or foreign file: said once, then recomputed and rewritten
        CACHE.report_broken(path, exc)
        return None
    return CACHE.remember(key, scores)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _room() -> int:
    return MEMORY_BYTES - sum(s.nbytes() for s in CACHE.values())


def rank(scores: Scores, keep: bool) -> None:
    """Give ``scores`` their ranks: the file filed beside their score file
    when it is theirs, else made from the scores (one tensor at a time) and
    filed there; held in memory when ``keep``, or when they cannot be filed."""
    from ...checkpoint.writer import write_stream
    from .masks import rank_codes
    key, shapes = scores.key, scores.shapes()
    path, ranks_path = CACHE.path(key, ".safetensors"), CACHE.path(key, RANKS_EXT)
    on_disk = isinstance(scores, FileScores) or os.path.isfile(path)
    scores.ranks = Ranks.read(ranks_path, path, keep) if on_disk else None
    if scores.ranks is not None:
        return
    names = list(shapes)
    sums = torch.zeros(len(names), dtype=torch.float64)
    codes: dict[str, torch.Tensor] = {}

    def each():
        # one read of each score tensor gives its codes and its sum; the sums
        # go last, as a tensor, since a header written first cannot hold them
        for i, n in enumerate(names):
            t = scores.get(n)
            sums[i] = float(t.numpy().sum(dtype=np.float64))
            codes[n] = c = rank_codes(t)
            del t
            yield n, c
            if not keep:
                del codes[n]
        yield SUMS, sums

    def write(tmp: str) -> None:
        write_stream(tmp, [(n, torch.uint8, s) for n, s in shapes.items()] + [(SUMS, torch.float64, (len(names),))],
                     each(), {"version": RANKS_VERSION, "grid": str(GRID), "names": json.dumps(names),
                              "scores_mtime_ns": str(os.stat(path).st_mtime_ns)})
    if on_disk and CACHE.write(key, RANKS_EXT, write):
        totals = dict(zip(names, sums.tolist()))
        scores.ranks = Ranks(totals, codes) if keep else Ranks(totals, path=ranks_path)
    else:   # not filed: made in memory (the folder may be read-only)
        keep = True
        codes.clear()
        for _ in each():
            pass
        scores.ranks = Ranks(dict(zip(names, sums.tolist())), codes)


def store(key: str, tensors: dict[str, torch.Tensor], meta: dict) -> Scores:
    """Write scores to the disk cache and remember them (without ranks: see ``rank``)."""
    from ...checkpoint.writer import write_file

    def write(tmp: str) -> None:
        write_file(tmp, tensors, {"version": VERSION, **{k: str(v) for k, v in meta.items()}})
    written = CACHE.write(key, ".safetensors", write)
    # held whole when scores and ranks fit (4 bytes an entry, and 1); a larger
    # set is read back from its files
    if sum(t.numel() for t in tensors.values()) * 5 <= _room() or not written:
        scores: Scores = DictScores(key, tensors)
    else:
        scores = FileScores(key, CACHE.path(key, ".safetensors"))
    return CACHE.remember(key, scores)


def clear_memory_cache() -> None:
    CACHE.clear_memory()


# ------------------------------------------------------------- front door
class Job:
    """One score set to provide: a model on one data set (rows None for the
    data-free methods)."""

    def __init__(self, info: M.ModelInfo, rows: list[dict] | None, label: str, tokenizer_info: M.ModelInfo | None = None):
        self.info, self.rows, self.label = info, rows, label
        self.tok_info = tokenizer_info or info   # whose tokenizer encodes the rows


def _tokenizer_dir(job: Job) -> str:
    own = job.info.path
    if os.path.isfile(os.path.join(own, "tokenizer.json")) or os.path.isfile(os.path.join(own, "tokenizer_config.json")):
        return own
    return job.tok_info.path


def compute(jobs: list[Job], method: str = "snip", *, seed: int = 0, device: str = "auto",
            progress: Progress | None = None) -> tuple[list[Scores], bool]:
    """Scores for every job (same order) and whether all came from the cache.

    Models are loaded one at a time, each once for all of its jobs (the
    base is scored on every expert's data), and only for jobs the cache
    lacks: a cache hit runs no forward or backward pass.
    """
    if method not in METHODS:
        raise UserError(f"Unknown location method {quoted(method)}; use one of {', '.join(METHODS)}.")
    dev = M.pick_device(device)
    dtype = M.default_dtype(dev) if dev != "cpu" else torch.float32
    dtype_name = str(dtype).replace("torch.", "")
    out: list[Scores | None] = [None] * len(jobs)
    if method in ("magnitude", "random"):
        for i, j in enumerate(jobs):
            key = cache_key(j.info, method, None, seed=seed)

            def make(key=key, info=j.info):
                keep = info.n_params * 4 <= _room()
                return (MagnitudeScores(key, info, keep) if method == "magnitude"
                        else RandomScores(key, info, keep, seed))
            out[i] = CACHE.remember_new(key, make)
        return out, True
    # keyed by the cap, not by the model's own context when shorter: that is
    # in its config, so in its fingerprint, and asking it builds the
    # architecture's layout (transformers' modeling imports, ~10 s at 0.5B)
    # that a cache hit never needs
    keys = [cache_key(j.info, method, j.rows, tokenizer_dir=_tokenizer_dir(j), dtype=dtype_name,
                      max_length=MAX_LENGTH) for j in jobs]
    todo: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        hit = cached(key)
        if hit is not None:
            out[i] = hit
        else:
            todo.setdefault(jobs[i].info.path, []).append(i)
    all_cached = not todo
    n_todo = sum(len(v) for v in todo.values())
    done = 0
    bar = None
    if progress is None and todo and sys.stderr.isatty():
        # the command line passes no callback; scoring takes long enough to deserve a bar
        from tqdm import tqdm
        bar = tqdm(total=1000, desc=f"locating ({method})", file=sys.stderr,
                   bar_format="{percentage:3.0f}%|{bar:24}| {elapsed} {desc}")

        def progress(frac: float, msg: str) -> None:
            bar.n = int(frac * 1000)
            bar.set_description_str(msg[:70], refresh=True)
    for path, idx in todo.items():
        info = jobs[idx[0]].info
        model = M.load_model(info, device=dev, dtype=dtype)
        try:
            with M.cpu_threads_for(model):
                for i in idx:
                    j = jobs[i]
                    key, max_len = keys[i], M.max_length(j.info, MAX_LENGTH)
                    tok = M.load_tokenizer(_tokenizer_dir(j))
                    samples = encode(tok, j.rows or [], max_len)
                    if not samples:
                        raise UserError(f"None of the location samples for {j.label} has an answer token left "
                                        f"within {max_len} tokens; give shorter prompts.")
                    span = (done / n_todo, (done + 1) / n_todo)
                    fn = snip if method == "snip" else wanda
                    # scored on the parameters as transformers holds them; stored
                    # per checkpoint tensor (fused MoE experts split back per expert)
                    tensors = M.to_checkpoint(model, fn(model, samples, progress, span, label=j.label))
                    tensors = {k: v for k, v in tensors.items() if k in info.tensors}
                    missing = [k for k, t in info.tensors.items() if t.is_float and k not in tensors]
                    lay = M.layout(info)
                    for k in [k for k in missing if lay.known and k not in lay.checkpoint_names]:
                        # a tensor the model class never reads (an old buffer such as
                        # GPT-2's attn.bias): no importance, so the base's is kept
                        tensors[k] = torch.zeros(info.tensors[k].shape, dtype=torch.float32)
                    missing = [k for k in missing if k not in tensors]
                    if missing:
                        raise UserError(f"LED cannot map the loaded model's parameters back to the checkpoint tensor "
                                        f"{quoted(missing[0])} of {quoted(info.ref)} ({len(missing)} unmapped).")
                    out[i] = store(key, tensors, {"method": method, "model": info.ref, "n": len(samples),
                                                  "data": j.label})
                    # a set too big to keep is read back from its file: drop this copy
                    # before the next pass (it was a third model-sized block at 0.5B)
                    del tensors
                    done += 1
        finally:
            del model
            M.release_memory()
        # ranked once the model is gone: the sort and the codes never sit beside
        # a model and its gradients, the scoring's peak (a large set's ranks are
        # read from their file, not held, for the same reason)
        for i in idx:
            if progress is not None:
                progress(done / n_todo, f"ranking the scores of {jobs[i].label}")
            rank(out[i], keep=isinstance(out[i], DictScores))
        M.release_memory()
    if bar is not None:
        bar.close()
        progress = None
    if progress is not None:
        progress(1.0, "importance scores ready" + (" (cached)" if all_cached else ""))
    return out, all_cached
