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

import datetime as _dt
import json
import os
import shutil
import threading
import time
import uuid
from typing import Callable

import torch

from .. import policy
from .. import checkpoint as M
from .. import recipe as R
from ..checkpoint.writer import ShardWriter
from ..errors import UserError, quoted
from . import plan
from .plan import Plan, _out_meta
from .result import MergeResult
from .walk import _Buffers, _inputs, _one_thread, _walk

Progress = Callable[[float, str], None]

TOOL_NAME = "merge explorer"
DEFAULT_SHARD_SIZE = 2 * 1024**3
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
# inputs are cached as float32 in memory for the UI's re-merge loop only


# one merge at a time per process: merges share the open readers, and two
# at once on a small CPU would only slow each other down
_LOCK = threading.RLock()


def _plan_of(recipe: R.Recipe | Plan, infos) -> Plan:
    """The plan itself, or one built from a recipe (the only place a merge plans)."""
    return recipe if isinstance(recipe, Plan) else plan.build(recipe, infos)


def merge_state_dict(recipe: R.Recipe | Plan, *, infos=None, device: str = "cpu", progress: Progress | None = None
                     ) -> tuple[dict[str, torch.Tensor], MergeResult]:
    """The merged weights in memory (output dtype), for tests and small models.

    Reuses the open readers of the previous call when the models are the
    same, so repeated merges of one family are cheap.
    """
    t0 = time.perf_counter()
    p = _plan_of(recipe, infos)
    dtype = _TORCH_DTYPES[p.recipe.dtype]
    device = M.pick_device(device)
    result = MergeResult(None, len(p.names), 0.0, list(p.notes), list(p.labels))
    out: dict[str, torch.Tensor] = {}
    with _LOCK:
        prepared = p.spec.prepare(p, progress) if p.spec.prepare else None
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
            raise UserError(f"The loaded model has no tensor {quoted(name)}, so it is not the model this recipe merges.")
        if tuple(state[name].shape) != tuple(t.shape):
            raise UserError(f"The loaded model's {quoted(name)} is {list(state[name].shape)} but the merge gives "
                            f"{list(t.shape)}; merge to a folder instead (the vocabulary changes size).")
    with torch.no_grad():
        for name, t in merged.items():
            state[name].copy_(t)


def run_merge(recipe: R.Recipe | Plan, *, out_dir: str | None = None, live_model=None,
              progress: Progress | None = None, device: str = "cpu", infos=None, force: bool = False,
              shard_size: int = DEFAULT_SHARD_SIZE, show_bar: bool = False) -> MergeResult:
    """Merge ``recipe`` into ``live_model`` (in place, no disk) or a new folder ``out_dir``.

    ``recipe`` is a Recipe or the Plan built from it (plan.build: a caller
    that checked the plan before loading a model passes it on, so nothing is
    validated or inspected twice). ``infos`` maps each reference written in
    the recipe to its ModelInfo (or is a list of ModelInfo) so callers that
    already inspected the models skip that step. Exactly one of ``out_dir``
    and ``live_model`` is given.
    """
    if (out_dir is None) == (live_model is None):
        raise UserError("Give either an output folder or a loaded model to merge into.")
    t0 = time.perf_counter()
    if out_dir is not None:
        out_dir = os.path.abspath(os.path.expanduser(out_dir))
        policy.check_output_dir(out_dir)   # Space mode: only under the output roots
        _check_out(out_dir, force)
    p = _plan_of(recipe, infos)
    recipe = p.recipe
    # headers only so far: refuse a merge that would not fit before reading weights
    policy.check_merge(p.base, p.sources, live=live_model is not None, needs_grad=p.spec.prepare is not None,
                       out_bytes=_TORCH_DTYPES[recipe.dtype].itemsize)
    if live_model is not None:
        merged, result = merge_state_dict(p, device=device, progress=progress)
        _into_live(live_model, merged)
        result.seconds = time.perf_counter() - t0
        return result
    return _to_folder(recipe, p, out_dir, force, progress, device, shard_size, show_bar, t0)


def _check_out(out_dir: str, force: bool) -> None:
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


def _to_folder(recipe: R.Recipe, p: Plan, out_dir: str, force: bool, progress: Progress | None,
               device: str, shard_size: int, show_bar: bool, t0: float) -> MergeResult:
    dtype = _TORCH_DTYPES[recipe.dtype]
    device = M.pick_device(device)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the folder {quoted(parent)} ({exc.strerror}).")
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
        prepared = p.spec.prepare(p, progress) if p.spec.prepare else None
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
        raise UserError(f"Could not write the merged model to {quoted(out_dir)} ({exc.strerror or exc}); nothing was kept.")
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


def _write_side_files(recipe: R.Recipe, p: Plan, folder: str, dtype: torch.dtype) -> None:
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


def model_card(recipe: R.Recipe, p: Plan) -> str:
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
