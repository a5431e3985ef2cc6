"""Model references: a built-in name (``zoo:safety``, ``smol:math``), a local
folder, a Hub id (``org/name``) or ``BASE+ADAPTER`` (a LoRA adapter over its
base), turned into a local folder or one clear sentence."""
from __future__ import annotations

import os
import re
from typing import Callable

from .. import policy
from ..errors import UserError, quoted
from ..zoo import FAMILIES, family_of

ZOO_NAMES = FAMILIES["zoo"].names
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
FETCH_HINT = "fetch it with `python -m core zoo fetch smol` or the Models tab's button"

# References whose folder is made on first use (adapters.py registers the
# LoRA ones: smol experts and BASE+ADAPTER). A hook, not an import: making a
# folder reads headers and writes with the writer, which resolve themselves.
_RESOLVERS: list[Callable[[str], str | None]] = []


def register_resolver(fn: Callable[[str], str | None]) -> None:
    if fn not in _RESOLVERS:
        _RESOLVERS.append(fn)


def zoo_path(name: str) -> str:
    return FAMILIES["zoo"].folder(name)


def builtin_name(path: str) -> str | None:
    """Which member of a built-in family a folder is (base, safety, math, code), or None."""
    hit = family_of(path)
    return hit[1] if hit else None


def _family_member(ref: str) -> str:
    prefix, name = ref.split(":", 1)
    fam = FAMILIES[prefix]
    if name not in fam.names:
        raise UserError(f"Unknown built-in model {quoted(ref)}; choose one of " +
                        ", ".join(fam.ref(n) for n in fam.names) + ".")
    path = fam.folder(name)
    if not os.path.isdir(path):
        if prefix == "smol":
            raise UserError(f"The SmolLM2 base is not in this machine's cache yet; {FETCH_HINT}.")
        raise UserError(f"The built-in model {quoted(ref)} is missing; rebuild it with `python -m core zoo build`.")
    return path


def resolve(ref: str, *, allow_download: bool | None = None) -> str:
    """Turn a reference into a local folder, or raise one clear sentence.

    Hub ids are fetched with huggingface_hub only when it is installed and
    the machine is online (HF_HUB_OFFLINE unset); offline it must already be
    in the local Hub cache.
    """
    ref = (ref or "").strip()
    if not ref:
        raise UserError("No model given: pick a built-in model or enter a folder or Hub id.")
    for fn in _RESOLVERS:
        path = fn(ref)
        if path:
            return path
    if ref.split(":", 1)[0] in FAMILIES and ":" in ref:
        return _family_member(ref)
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
