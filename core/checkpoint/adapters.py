"""LoRA adapters as experts: ``BASE+ADAPTER`` (mergekit's reference syntax) and
the SmolLM2 family's experts (``smol:safety`` is an adapter in assets/smol
over ``smol:base``) become full Hugging Face folders in the cache, made on
first use and reused while neither the base nor the adapter changes.

Most fine-tunes people download are PEFT LoRA adapters; merging works on
full weights, so an adapter is materialised: W' = W + s · B A for every
adapted module (s = lora_alpha / r, or / √r with rsLoRA; per-module r and
alpha from rank_pattern / alpha_pattern), embeddings likewise, and
``modules_to_save`` copied whole. Everything else is the base's, bytes and
side files (config, tokenizer, generation config) included.

Bit for bit the same on every machine: B A is summed one rank-1 term at a
time in float64, where each product of two float32 (or 16-bit) numbers is
exact, then scaled, added to W and rounded once to the base's dtype. A BLAS
matmul would sum in an order (and with fused multiply-adds) that depends on
the CPU, so the committed SmolLM2 experts could not be checked against the
digests their build recorded.

Refused with one sentence: other PEFT methods (IA3, prefix tuning...), DoRA,
pickled adapters, modules the base does not have, shapes that do not fit.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading

import torch

from .. import CACHE_DIR
from ..errors import UserError, quoted
from .headers import ModelInfo, inspect, read_safetensors_header
from .reader import Reader
from .refs import register_resolver, resolve

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
STAMP = "merge-explorer-adapter.json"
VERSION = "lora-materialise/v1"   # part of the stamp: bump when the arithmetic changes
_PREFIX = "base_model.model."
_LOCK = threading.Lock()          # one materialisation at a time per process (sessions share the cache)


def split_ref(ref: str) -> tuple[str, str] | None:
    """(base, adapter) of ``BASE+ADAPTER``; None for any other reference.

    As mergekit reads it: exactly one '+'. A folder whose own name has a
    '+' in it stays a folder.
    """
    if ref.count("+") != 1 or os.path.isdir(os.path.expanduser(ref)):
        return None
    base, adapter = (x.strip() for x in ref.split("+"))
    return (base, adapter) if base and adapter else None


# ----------------------------------------------------------- the adapter
class Adapter:
    """A PEFT LoRA adapter folder, read and checked (no base needed yet)."""

    def __init__(self, path: str, ref: str):
        self.path, self.ref = path, ref
        cfg_path = os.path.join(path, CONFIG)
        if not os.path.isfile(cfg_path):
            raise UserError(f"{quoted(ref)} has no {CONFIG}, so it is not a PEFT adapter folder.")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
            if not isinstance(cfg, dict):
                raise ValueError("not an object")
        except (OSError, ValueError, RecursionError) as exc:
            raise UserError(f"The {CONFIG} of {quoted(ref)} is not valid JSON ({exc}).")
        kind = str(cfg.get("peft_type", "")).upper()
        if kind != "LORA":
            raise UserError(f"{quoted(ref)} is a {kind or 'PEFT'} adapter; only LoRA adapters can be merged.")
        if cfg.get("use_dora"):
            raise UserError(f"{quoted(ref)} is a DoRA adapter, which cannot be materialised as W + s·BA; "
                            "merge it with PEFT first.")
        weights = os.path.join(path, WEIGHTS)
        if not os.path.isfile(weights):
            pickled = os.path.isfile(os.path.join(path, "adapter_model.bin"))
            raise UserError(f"{quoted(ref)} has no {WEIGHTS}" +
                            (" (only a pickled adapter_model.bin, which is refused: pickles can run code)." if pickled
                             else "."))
        self.config, self.weights = cfg, weights
        self.tensors = read_safetensors_header(weights)
        self.r, self.alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
        self.rslora = bool(cfg.get("use_rslora"))
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        self.rank_pattern = cfg.get("rank_pattern") or {}
        self.alpha_pattern = cfg.get("alpha_pattern") or {}

    def digest(self) -> str:
        h = hashlib.sha256()
        for fn in (CONFIG, WEIGHTS):
            with open(os.path.join(self.path, fn), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]

    def _pattern(self, table: dict, module: str, default):
        for key, value in table.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    def scaling(self, module: str) -> float:
        r = self._pattern(self.rank_pattern, module, self.r)
        alpha = self._pattern(self.alpha_pattern, module, self.alpha)
        return alpha / (r ** 0.5) if self.rslora else alpha / r

    def plan(self, base: ModelInfo) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
        """({base tensor: (kind, A key, B key)}, {base tensor: adapter key of a whole replacement})."""
        pairs: dict[str, dict[str, str]] = {}
        whole: dict[str, str] = {}
        for key in self.tensors:
            name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
            m = re.match(r"^(.*)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$", name) or \
                re.match(r"^(.*)\.(lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?$", name)
            if m:
                pairs.setdefault(m.group(1), {})[m.group(2)] = key
            elif ".lora_" in name:
                raise UserError(f"{quoted(self.ref)} holds {quoted(key)}, a LoRA tensor this tool cannot place.")
            else:   # modules_to_save, or a LoRA'd embedding's own saved weights: whole new weights
                name = name.replace(".modules_to_save.default.", ".").replace(".base_layer.", ".")
                whole[name] = key
        out: dict[str, tuple[str, str, str]] = {}
        for module, ab in sorted(pairs.items()):
            target = f"{module}.weight"
            if target not in base.tensors:
                raise UserError(f"{quoted(self.ref)} adapts {quoted(module)}, which the base {quoted(base.ref)} does "
                                "not have; is it an adapter of another model?")
            if "lora_A" in ab and "lora_B" in ab:
                out[target] = ("linear", ab["lora_A"], ab["lora_B"])
            elif "lora_embedding_A" in ab and "lora_embedding_B" in ab:
                out[target] = ("embedding", ab["lora_embedding_A"], ab["lora_embedding_B"])
            else:
                raise UserError(f"{quoted(self.ref)} has only half of the LoRA pair of {quoted(module)}.")
        for target in whole:
            if target not in base.tensors:
                raise UserError(f"{quoted(self.ref)} replaces {quoted(target)}, which the base {quoted(base.ref)} "
                                "does not have; is it an adapter of another model?")
            if base.tensors[target].shape != self.tensors[whole[target]].shape:
                raise UserError(f"{quoted(self.ref)} replaces {quoted(target)} with another shape than the base's.")
        if not out and not whole:
            raise UserError(f"{quoted(self.ref)} holds no LoRA weights.")
        return out, whole


def delta(A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """s · B A in float64, summed one rank-1 term at a time (see the module: the same bits everywhere)."""
    A, B = A.double(), B.double()
    acc = torch.zeros(B.shape[0], A.shape[1], dtype=torch.float64)
    for k in range(A.shape[0]):
        acc += torch.outer(B[:, k], A[k])
    return acc.mul_(scale)


def materialise(base: ModelInfo, adapter: Adapter, out: str, card: str | None = None) -> str:
    """Write base + adapter as a full folder at ``out`` (atomic); returns ``out``."""
    from .naming import tensor_order
    from .headers import TOKENIZER_FILES
    from .writer import Folder
    import shutil
    lora, whole = adapter.plan(base)
    names = sorted(base.tensors, key=tensor_order)
    tied = base.config.get("tie_word_embeddings", False)
    if tied and any(n.startswith("lm_head.") for n in list(lora) + list(whole)):
        raise UserError(f"{quoted(adapter.ref)} changes lm_head, which {quoted(base.ref)} ties to its embeddings; "
                        "such an adapter cannot be written as a tied model.")
    with Reader(base) as rb, Reader(ModelInfo(ref=adapter.ref, path=adapter.path, config={},
                                              tensors=adapter.tensors)) as ra, Folder(out) as folder:
        shards = folder.shards([(n, base.tensors[n].dtype, tuple(base.tensors[n].shape)) for n in names])
        for n in names:
            w = rb.get(n)
            if n in whole:
                w = ra.get(whole[n]).to(w.dtype)
            if n in lora:
                kind, ka, kb = lora[n]
                A, B = ra.get(ka), ra.get(kb)
                if kind == "embedding":        # PEFT's embedding LoRA: (B A)ᵀ, shape (vocab, dim)
                    d = delta(A, B, adapter.scaling(n[:-len(".weight")])).T
                else:
                    d = delta(A, B, adapter.scaling(n[:-len(".weight")]))
                    if adapter.fan_in_fan_out:
                        d = d.T
                if tuple(d.shape) != tuple(w.shape):
                    raise UserError(f"{quoted(adapter.ref)} does not fit {quoted(n)} of {quoted(base.ref)}: "
                                    f"its update is {list(d.shape)}, the weight {list(w.shape)}.")
                w = (w.double() + d).to(w.dtype)
            shards.add(n, w)
        shards.finish()
        for fn in ("config.json", "generation_config.json", *TOKENIZER_FILES):
            src = os.path.join(base.path, fn)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(folder.tmp, fn))
        if card is None:
            card = (f"# {adapter.ref} materialised over {base.ref}\n\nMade by merge explorer from the PEFT LoRA "
                    f"adapter {quoted(adapter.ref)} and its base {quoted(base.ref)}: W + s·BA per adapted module.\n")
        with open(os.path.join(folder.tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        with open(os.path.join(folder.tmp, STAMP), "w") as f:
            json.dump(_stamp(base, adapter), f, indent=2)
        folder.commit()
    return out


def _stamp(base: ModelInfo, adapter: Adapter) -> dict:
    return {"version": VERSION, "base": base.fingerprint(), "adapter": adapter.digest()}


def _current(out: str, base: ModelInfo, adapter: Adapter) -> bool:
    try:
        with open(os.path.join(out, STAMP)) as f:
            return json.load(f) == _stamp(base, adapter)
    except (OSError, ValueError):
        return False


# ------------------------------------------------- resolving references
_FRESH: dict[tuple, str] = {}   # (stats of base and adapter files) -> folder already checked this process


def _stats(*folders: str) -> tuple:
    out = []
    for d in folders:
        for fn in sorted(os.listdir(d)):
            if fn.endswith((".json", ".safetensors")):
                st = os.stat(os.path.join(d, fn))
                out.append((d, fn, st.st_size, st.st_mtime_ns))
    return tuple(out)


def folder_for(base_ref: str, adapter_ref: str, out: str | None = None, card: str | None = None,
               adapter_path: str | None = None) -> str:
    """The materialised folder of ``base_ref`` + ``adapter_ref``, made when missing or stale
    (``adapter_path``: a built-in adapter's folder, which needs no resolving)."""
    base = inspect(base_ref)
    adapter_path = adapter_path or resolve(adapter_ref)
    key = (_stats(base.path, adapter_path), out)
    hit = _FRESH.get(key)
    if hit and os.path.isdir(hit):
        return hit
    adapter = Adapter(adapter_path, adapter_ref)
    if out is None:
        out = os.path.join(CACHE_DIR, "from-adapter", f"{base.fingerprint()}-{adapter.digest()}")
    with _LOCK:
        if not _current(out, base, adapter):
            materialise(base, adapter, out, card)
    _FRESH[key] = out
    return out


def _resolver(ref: str) -> str | None:
    """refs.resolve's hook: ``smol:EXPERT`` and ``BASE+ADAPTER``."""
    from ..zoo import FAMILIES, SMOL_ASSETS
    if ref.startswith("smol:") and ref[5:] in FAMILIES["smol"].experts:
        name = ref[5:]
        adapter = os.path.join(SMOL_ASSETS, name)
        if not os.path.isfile(os.path.join(adapter, CONFIG)):
            raise UserError(f"The SmolLM2 expert {quoted(ref)} is missing from assets/smol; build the family with "
                            "`python -m core zoo build --family smol`.")
        card_path = os.path.join(adapter, "README.md")
        card = open(card_path, encoding="utf-8").read() if os.path.isfile(card_path) else None
        return folder_for("smol:base", ref, FAMILIES["smol"].folder(name), card, adapter_path=adapter)
    parts = split_ref(ref)
    return folder_for(*parts) if parts else None


register_resolver(_resolver)
