"""What this process may read and how much memory a job may take.

Two guards, both checked from headers alone, before any weight is loaded:

* **Space mode** (a public demo): only the built-in family, folders under an
  allow-list and Hub ids on an allow-list may be opened, merges are written
  only under the output roots, and the opt-ins that run a stranger's code
  (``trust_remote_code``, pickled weights) are refused. Without it a person
  on a public Space could read any folder of the server or make it download
  and run any repository.

  ==============================  ============================================
  MERGE_EXPLORER_SPACE            ``1`` turns it on; on by default when
                                  ``SPACE_ID`` is set (Hugging Face Spaces set
                                  it), unless this is ``0``
  MERGE_EXPLORER_ALLOWED_PATHS    colon-separated folders that may be read
                                  (the built-in family is always allowed)
  MERGE_EXPLORER_ALLOWED_MODELS   comma-separated Hub ids; an entry ending in
                                  ``/`` or ``*`` is a prefix (``Qwen/``)
  MERGE_EXPLORER_OUTPUT_ROOTS     colon-separated folders merges may be
                                  written under (default: the temp folder and
                                  the cache folder)
  ==============================  ============================================

* **Memory budget**: an estimate of a job's bytes from the safetensors
  headers, against MemAvailable (or MERGE_EXPLORER_MEMORY_BUDGET_GB), so a
  model that would push the machine into swap or the OOM killer is refused
  with a sentence instead of killing the app for every user.

The estimates are deliberately simple and say what they count; they are
upper-bound-ish for the engine (which streams one tensor at a time) and
close for chat (whole models in memory).
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable

from . import CACHE_DIR, SMOL_ASSETS, SMOL_CACHE, ZOO_DIR
from .errors import UserError, quoted

_TRUE = ("1", "true", "yes", "on")


# ------------------------------------------------------------- Space mode
def space_mode() -> bool:
    """Explicit flag first; on a Hugging Face Space (SPACE_ID set) default on."""
    flag = os.environ.get("MERGE_EXPLORER_SPACE")
    if flag is not None and flag.strip() != "":
        return flag.strip().lower() in _TRUE
    return bool(os.environ.get("SPACE_ID"))


def _roots(env: str, default: list[str]) -> list[str]:
    raw = os.environ.get(env)
    items = [x for x in raw.split(":") if x.strip()] if raw else default
    # realpath: a symlink inside an allowed root must not lead outside it
    return [os.path.realpath(os.path.expanduser(x.strip())) for x in items]


def allowed_roots() -> list[str]:
    roots = _roots("MERGE_EXPLORER_ALLOWED_PATHS", [])
    # the built-in families: the tiny one, the SmolLM2 adapters and what they become in the cache
    own = [os.path.realpath(p) for p in (ZOO_DIR, SMOL_ASSETS, SMOL_CACHE)]
    return own + [r for r in roots if r not in own]


def allowed_models() -> list[str]:
    raw = os.environ.get("MERGE_EXPLORER_ALLOWED_MODELS", "")
    return [x.strip() for x in raw.split(",") if x.strip()]


def output_roots() -> list[str]:
    return _roots("MERGE_EXPLORER_OUTPUT_ROOTS", [tempfile.gettempdir(), CACHE_DIR])


def _under(path: str, roots: Iterable[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def check_local_path(path: str, ref: str | None = None) -> None:
    """In Space mode refuse a folder or file outside the allowed roots.

    Called before checking that the path exists, so a refusal says nothing
    about what is on the server's disk.
    """
    if not space_mode():
        return
    if not _under(path, allowed_roots()):
        raise UserError(f"{quoted(ref or path)} is outside the folders this Space may read; "
                        "pick a built-in model or an allowed Hub model.")


def hub_id_allowed(repo_id: str) -> bool:
    rid = repo_id.strip().lower()
    for entry in allowed_models():
        e = entry.lower()
        if e.endswith(("/", "*")):
            if rid.startswith(e.rstrip("*")):
                return True
        elif rid == e:
            return True
    return False


def check_hub_id(repo_id: str) -> None:
    """In Space mode refuse a Hub id that is not on the allow-list."""
    if not space_mode() or hub_id_allowed(repo_id):
        return
    allowed = allowed_models()
    shown = ", ".join(allowed[:5]) + (", ..." if len(allowed) > 5 else "")
    raise UserError(f"{quoted(repo_id)} is not on this Space's list of allowed Hub models" +
                    (f" ({shown})." if allowed else "; only the built-in models may be used here."))


def check_opt_ins(ref: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
    """A public Space never runs a stranger's code, whatever the request says."""
    if not space_mode():
        return
    if trust_remote_code:
        raise UserError(f"This Space does not run custom model code, so {quoted(ref)} cannot be loaded with trust_remote_code.")
    if allow_pickle:
        raise UserError(f"This Space does not open pickled weights, so {quoted(ref)} cannot be loaded; use a safetensors model.")


def check_output_dir(out_dir: str) -> None:
    """In Space mode merges go only under the output roots (never over app files)."""
    if not space_mode():
        return
    if not _under(out_dir, output_roots()):
        raise UserError(f"This Space writes merged models only under {', '.join(output_roots())}; "
                        f"{quoted(out_dir)} is outside.")


# ---------------------------------------------------------- memory budget
GB = 1024 ** 3
# the engine keeps a small model's inputs as float32 in memory for the UI's
# re-merge loop only when they are this small (the built-in family is a few MB)
CACHE_BYTES = int(os.environ.get("MERGE_EXPLORER_ENGINE_CACHE_MB", "512")) * 2**20
# chat holds whole models plus a KV cache and activations; 20% is a margin
# for short chats (a rule of thumb, not a measurement)
CHAT_OVERHEAD = 1.2


def fmt_bytes(n: float) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{max(n, 0) / 1024:.0f} KB"


def available_bytes() -> tuple[int | None, str]:
    """(bytes a job may use, where that number comes from); None when unknown."""
    env = os.environ.get("MERGE_EXPLORER_MEMORY_BUDGET_GB")
    if env:
        try:
            return int(float(env) * GB), "the memory budget MERGE_EXPLORER_MEMORY_BUDGET_GB"
        except ValueError:
            raise UserError(f"MERGE_EXPLORER_MEMORY_BUDGET_GB is {quoted(env)}; it must be a number of gigabytes.")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available memory"
    except OSError:
        pass
    return None, ""   # not Linux: no reliable number, so no refusal


def _float_numel(info) -> int:
    return sum(t.numel for t in info.tensors.values() if t.is_float)


def merge_estimate(base, sources: list, *, live: bool = False, needs_grad: bool = False,
                   out_bytes: int = 4, sorts: bool = False) -> int:
    """Bytes a merge needs beyond what is already loaded.

    Streamed to a folder the engine holds, per tensor, the base, one task
    vector per source, the output and staging copies, all float32: counted
    as (sources + 4) x the largest tensor. A live re-merge also builds the
    merged state dict (one model in the output dtype) and caches float32
    inputs of small models. Methods that score weights with a backward pass
    (LED, ACM) load a model with its gradients: 3 x its float32 size.
    A trim that breaks ties as mergekit does (``sorts``) may sort the largest
    tensor: its |x| in float32, the sorted values and their int64 indices,
    20 bytes an entry (measured: 0.5B bf16 TIES peaked at 4.4 GB, 1.0 GB
    without the sort).
    """
    largest = max((t.numel for t in base.tensors.values()), default=0)
    need = (len(sources) + 4) * largest * 4 + (20 * largest if sorts else 0)
    n = _float_numel(base)
    if live:
        need += n * out_bytes
        if n * 4 * (1 + len(sources)) <= CACHE_BYTES:
            need += n * 4 * (1 + len(sources))
    if needs_grad:
        need += 3 * n * 4
    return need


def load_estimate(infos: list, bytes_per_param: float = 4) -> int:
    """Bytes to hold these models for generation in a dtype of this width."""
    return int(sum(_float_numel(i) * bytes_per_param for i in infos) * CHAT_OVERHEAD)


def check_memory(need: int, what: str) -> None:
    """Refuse a job whose estimate exceeds what the machine can give."""
    avail, source = available_bytes()
    if avail is None or need <= avail:
        return
    raise UserError(f"{what} needs about {fmt_bytes(need)} of memory but only {fmt_bytes(avail)} is free "
                    f"({source}); use smaller models or fewer of them.")


def check_merge(base, sources: list, *, live: bool = False, needs_grad: bool = False, out_bytes: int = 4,
                sorts: bool = False) -> None:
    n = len(sources)
    check_memory(merge_estimate(base, sources, live=live, needs_grad=needs_grad, out_bytes=out_bytes, sorts=sorts),
                 f"Merging {n} model{'s' if n != 1 else ''} into {quoted(base.ref)}")


def check_chat(infos: list, bytes_per_param: float = 4) -> None:
    """Call before loading the models of a side-by-side chat, all of them at
    once (each alone may fit while three together do not), with their
    ModelInfo (headers only)."""
    names = ", ".join(f"{quoted(i.ref)}" for i in infos)
    check_memory(load_estimate(infos, bytes_per_param), f"Loading {names}")
