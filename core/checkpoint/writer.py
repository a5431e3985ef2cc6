"""The one writer of model folders: safetensors shards streamed as they are
computed, the side files (config, generation config, tokenizer, recipe,
model card), all in a hidden temp folder renamed into place at the end, so
a failure or Ctrl-C leaves nothing behind."""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from typing import Iterable, Mapping

import torch

from ..errors import UserError, quoted
from ..zoo import FAMILIES
from .headers import DTYPE_BYTES, TOKENIZER_FILES

TOOL_NAME = "merge explorer"
# built-in references that are a published model: named by their Hub id in a card's base_model
HUB_IDS = {"smol:base": "HuggingFaceTB/SmolLM2-135M-Instruct"}
DEFAULT_SHARD_SIZE = 2 * 1024**3

_ST_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}


class ShardWriter:
    """Streams tensors into safetensors shards planned up front.

    Each shard's header (names, dtypes, shapes, offsets) is written when its
    first tensor arrives, then every tensor's bytes are appended in order.
    """

    def __init__(self, folder: str, layout: list[tuple[str, str, tuple[int, ...]]], shard_size: int,
                 metadata: dict[str, str] | None = None, file_name: str | None = None):
        self.folder = folder
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, st, shape in layout:
            n = _numel(shape) * DTYPE_BYTES[st]
            if self.shards[-1] and size + n > shard_size:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, st, shape, n))
            size += n
        total = len(self.shards)
        self.files = [file_name or "model.safetensors"] if total == 1 else \
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
        header: dict = {"__metadata__": dict(self.metadata)}
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


def write_file(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """One safetensors file, streamed tensor by tensor: no serialized copy of
    the whole set in memory (safetensors' save_file builds one, a model-sized
    block for LED's scores at 0.5B), and views or tied tensors need no clone."""
    write_stream(path, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], tensors.items(), metadata)


def write_stream(path: str, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 tensors: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """One safetensors file of the planned (name, dtype, shape) ``layout``,
    from tensors made one at a time in that order (none held after it is written)."""
    w = ShardWriter(os.path.dirname(path) or ".", [(k, _ST_NAMES[d], s) for k, d, s in layout], 1 << 62,
                    metadata, os.path.basename(path))
    try:
        for k, v in tensors:
            w.add(k, v)
        w.finish()
    finally:
        w.abort()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ------------------------------------------------------------ the folder
def check_target(out_dir: str, force: bool) -> None:
    """Refuse an output folder that exists (unless ``force``), is a file, or
    sits where nothing may be written; before any work is done."""
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise UserError(f"{quoted(out_dir)} exists and is a file; choose a folder name for the merged model.")
        if not force:
            raise UserError(f"The output folder {quoted(out_dir)} already exists; choose another or use --force to replace it.")
    parent = os.path.dirname(out_dir)
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not probe or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"Cannot write to {quoted(parent)}; choose an output folder you may write to.")


class Folder:
    """An output folder written atomically (a context manager).

    Everything is written to ``.<name>.partial-<pid>-<random>`` next to the
    target; ``commit`` renames it into place (swapping an old folder out
    only then). Leaving the block by an exception removes the temp folder;
    an OSError becomes one sentence. The pid in the name lets a later
    merge tell a folder left by a killed process (SIGKILL skips every
    cleanup) from one still being written. Callers in one process must not
    write the same target at once (the engine holds its lock).
    """

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.parent, self.name = os.path.dirname(out_dir), os.path.basename(out_dir)
        self.tmp = os.path.join(self.parent, f".{self.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._shards: ShardWriter | None = None

    def __enter__(self) -> "Folder":
        try:
            os.makedirs(self.parent, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the folder {quoted(self.parent)} ({exc.strerror}).")
        clean_stale(self.parent, self.name)
        try:
            os.makedirs(self.tmp)
        except OSError as exc:
            self._fail(exc)
        return self

    def shards(self, layout: list[tuple[str, str, tuple[int, ...]]], shard_size: int = DEFAULT_SHARD_SIZE
               ) -> "ShardWriter":
        self._shards = ShardWriter(self.tmp, layout, shard_size)
        return self._shards

    def side_files(self, *, config: dict, dtype: str, source_dir: str, tokenizer_dir: str, recipe_yaml: str,
                   card: str) -> None:
        """config.json (with the output dtype), generation_config.json from
        ``source_dir``, the tokenizer files of ``tokenizer_dir``, the recipe
        and the model card."""
        config = dict(config)
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
        with open(os.path.join(self.tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        gen = os.path.join(source_dir, "generation_config.json")
        if os.path.isfile(gen):
            shutil.copyfile(gen, os.path.join(self.tmp, "generation_config.json"))
        for fn in TOKENIZER_FILES:
            path = os.path.join(tokenizer_dir, fn)
            if os.path.isfile(path):
                shutil.copyfile(path, os.path.join(self.tmp, fn))
        with open(os.path.join(self.tmp, "merge_recipe.yaml"), "w", encoding="utf-8") as f:
            f.write(recipe_yaml)
        with open(os.path.join(self.tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)

    def commit(self) -> None:
        if os.path.exists(self.out_dir):   # force: swap the old folder out only now
            old = os.path.join(self.parent, f".{self.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.out_dir, old)
            os.replace(self.tmp, self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out_dir)

    def _fail(self, exc: OSError):
        self._cleanup()
        raise UserError(f"Could not write the merged model to {quoted(self.out_dir)} ({exc.strerror or exc}); "
                        "nothing was kept.")

    def _cleanup(self) -> None:
        if self._shards is not None:
            self._shards.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            return False
        if issubclass(exc_type, OSError):
            self._fail(exc)
        self._cleanup()
        return False


def clean_stale(parent: str, base: str) -> None:
    """Remove ``.<base>.partial-<pid>-*`` folders whose process is gone.

    A merge killed with SIGKILL (or by the OOM killer) cannot clean up after
    itself; its hidden temp folder is removed by the next merge to the same
    output. Folders of this process are stale too: one process writes one
    target at a time (see Folder).
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


def model_card(*, title: str | None, method: str, label: str, summary: str, dtype: str, base: str | None,
               parents: list[tuple[str, Mapping]], params: Mapping, notes: list[str], recipe_yaml: str,
               sections: list[str] = ()) -> str:
    """A short Hugging Face model card saying how the model was made.

    ``base``: the base model's reference when the recipe names one;
    ``parents``: (reference, parameters) of every model that brought a task
    vector; ``params``: the method's global parameters.
    """
    import yaml
    refs = ([base] if base else []) + [r for r, _ in parents if r != base]
    front = {"library_name": "transformers", "tags": ["merge", TOOL_NAME.replace(" ", "-"), method],
             "base_model": [HUB_IDS.get(r, r) for r in refs if (r in HUB_IDS or r.split(":", 1)[0] not in FAMILIES)
                            and not os.path.isabs(r) and "+" not in r] or None}
    front = {k: v for k, v in front.items() if v}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {title or 'Merged model'}", "",
             f"Made with {TOOL_NAME} on {_dt.date.today().isoformat()} by **{label}** (`{method}`) in {dtype}.", ""]
    if summary:
        lines += [summary, ""]
    lines += ["## Parents", ""]
    if base:
        lines.append(f"* base: `{base}`")
    for ref, mp in parents:
        kv = ", ".join(f"{k}={v}" for k, v in mp.items())
        lines.append(f"* `{ref}`" + (f" ({kv})" if kv else ""))
    if params:
        lines += ["", "## Parameters", ""] + [f"* {k}: {v}" for k, v in params.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in notes]
    lines += ["", "## Recipe", "", "```yaml", recipe_yaml.strip(), "```", ""]
    return "\n".join([*lines, *sections])
