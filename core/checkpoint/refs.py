"""Model references: a built-in name (``zoo:safety``), a local folder, or a
Hub id (``org/name``), turned into a local folder or one clear sentence."""
from __future__ import annotations

import os
import re

from .. import ZOO_DIR, policy
from ..errors import UserError, quoted

ZOO_NAMES = ("base", "safety", "math", "code")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def zoo_path(name: str) -> str:
    return os.path.join(ZOO_DIR, name)


def builtin_name(path: str) -> str | None:
    """Which built-in model a folder is (base, safety, math, code), or None."""
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if os.path.dirname(real) == os.path.realpath(ZOO_DIR) and name in ZOO_NAMES:
        return name
    return None


def resolve(ref: str, *, allow_download: bool | None = None) -> str:
    """Turn a reference into a local folder, or raise one clear sentence.

    Hub ids are fetched with huggingface_hub only when it is installed and
    the machine is online (HF_HUB_OFFLINE unset); offline it must already be
    in the local Hub cache.
    """
    ref = (ref or "").strip()
    if not ref:
        raise UserError("No model given: pick a built-in model or enter a folder or Hub id.")
    if ref.startswith("zoo:"):
        name = ref[4:]
        if name not in ZOO_NAMES:
            raise UserError(f"Unknown built-in model {quoted(ref)}; choose one of " +
                            ", ".join("zoo:" + n for n in ZOO_NAMES) + ".")
        path = zoo_path(name)
        if not os.path.isdir(path):
            raise UserError(f"The built-in model {quoted(ref)} is missing; rebuild it with `python -m core zoo build`.")
        return path
    expanded = os.path.abspath(os.path.expanduser(ref))
    if os.path.isdir(expanded):
        policy.check_local_path(expanded, ref)   # Space mode: allowed folders only
        return expanded
    looks_local = ref.startswith((".", "/", "~")) or os.sep in ref.rstrip("/").split("/", 1)[0] \
        or ref.count("/") != 1 or not _HUB_ID.match(ref)
    if looks_local:
        # checked first so a Space does not tell what exists outside its folders
        policy.check_local_path(expanded, ref)
        raise UserError(f"The folder {quoted(ref)} does not exist.")
    policy.check_hub_id(ref)
    return _fetch_hub(ref, allow_download)


def _fetch_hub(repo_id: str, allow_download: bool | None) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - hub is a transformers dependency
        raise UserError(f"{quoted(repo_id)} looks like a Hub id but huggingface_hub is not installed.")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if allow_download is False:
        offline = True
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.md"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline)
    except Exception as exc:  # network, 404, gated repo ...
        kind = type(exc).__name__
        if offline or "Connect" in kind or "Offline" in kind or "LocalEntryNotFound" in kind:
            raise UserError(f"Cannot reach the Hugging Face Hub to fetch {quoted(repo_id)} (no network, and it is not in the local cache).")
        raise UserError(f"Could not fetch {quoted(repo_id)} from the Hub ({kind}).")
