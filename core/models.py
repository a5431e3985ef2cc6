"""Resolve model references, read headers, check compatibility, load lazily.

A reference is a built-in name (``zoo:safety``), a local folder, or a Hub id
(``org/name``). Everything that decides whether a merge can happen is read
from config.json and the safetensors headers, so a wrong pair of models is
refused in milliseconds, before any weight is read.
"""
from __future__ import annotations

import json
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from typing import Iterable

import torch

from . import ZOO_DIR, limits
from .errors import UserError

ZOO_NAMES = ("base", "safety", "math", "code")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

# safetensors dtype names -> bytes per element (for memory estimates)
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_ST_TO_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


@dataclass(frozen=True)
class TensorMeta:
    dtype: str            # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]
    file: str             # absolute path of the shard holding it

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)


def _as_int(x) -> int:
    """A config count, or -1 when it is not a number (shown, and then it
    mismatches the base, instead of a ValueError from int())."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or x in (float("inf"), float("-inf")):
        return -1
    return int(x)


@dataclass
class ModelInfo:
    """What we know about a model without loading it."""
    ref: str                       # what the user typed
    path: str                      # local folder
    config: dict
    tensors: dict[str, TensorMeta]
    name: str = ""                 # short display name

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures")
        if not isinstance(archs, list) or not archs:   # a hand-edited config may hold anything
            archs = [self.config.get("model_type", "?")]
        return str(archs[0])

    @property
    def n_layers(self) -> int:
        return _as_int(self.config.get("num_hidden_layers", 0))

    @property
    def vocab_size(self) -> int:
        return _as_int(self.config.get("vocab_size", 0))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def fingerprint(self) -> str:
        """Identity of the weights for caches, from their bytes.

        Not from mtimes: a copy or a fresh clone gives every file of a
        family the same second, and two fine-tunes of one base have the same
        sizes and headers, so only content tells them apart. Files up to
        64 MiB are hashed whole; larger ones by 16 evenly spaced 1 MiB
        blocks (fine-tunes change every block, so this stays cheap and safe).
        """
        import hashlib
        h = hashlib.sha256()
        block, whole = 1 << 20, 64 << 20
        for f in sorted({t.file for t in self.tensors.values()}):
            size = os.path.getsize(f)
            h.update(f"{os.path.basename(f)}:{size}".encode())
            with open(f, "rb") as fh:
                if size <= whole:
                    h.update(fh.read())
                else:
                    for i in range(16):
                        fh.seek((size - block) * i // 15)
                        h.update(fh.read(block))
        for k in sorted(self.tensors):
            t = self.tensors[k]
            h.update(f"{k}:{t.dtype}:{t.shape}".encode())
        return h.hexdigest()[:16]


def zoo_path(name: str) -> str:
    return os.path.join(ZOO_DIR, name)


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
            raise UserError(f"Unknown built-in model '{ref}'; choose one of " +
                            ", ".join("zoo:" + n for n in ZOO_NAMES) + ".")
        path = zoo_path(name)
        if not os.path.isdir(path):
            raise UserError(f"The built-in model '{ref}' is missing; rebuild it with `python -m core zoo build`.")
        return path
    expanded = os.path.abspath(os.path.expanduser(ref))
    if os.path.isdir(expanded):
        limits.check_local_path(expanded, ref)   # Space mode: allowed folders only
        return expanded
    looks_local = ref.startswith((".", "/", "~")) or os.sep in ref.rstrip("/").split("/", 1)[0] \
        or ref.count("/") != 1 or not _HUB_ID.match(ref)
    if looks_local:
        # checked first so a Space does not tell what exists outside its folders
        limits.check_local_path(expanded, ref)
        raise UserError(f"The folder '{ref}' does not exist.")
    limits.check_hub_id(ref)
    return _fetch_hub(ref, allow_download)


def _fetch_hub(repo_id: str, allow_download: bool | None) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - hub is a transformers dependency
        raise UserError(f"'{repo_id}' looks like a Hub id but huggingface_hub is not installed.")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if allow_download is False:
        offline = True
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.md"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline)
    except Exception as exc:  # network, 404, gated repo ...
        kind = type(exc).__name__
        if offline or "Connect" in kind or "Offline" in kind or "LocalEntryNotFound" in kind:
            raise UserError(f"Cannot reach the Hugging Face Hub to fetch '{repo_id}' (no network, and it is not in the local cache).")
        raise UserError(f"Could not fetch '{repo_id}' from the Hub ({kind}).")


def read_safetensors_header(path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse one safetensors header without touching the tensor data."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("too short")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > min(size - 8, 100_000_000):
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:   # RecursionError: deeply nested JSON
        raise UserError(f"'{path}' is not a readable safetensors file ({exc}).")
    if not isinstance(header, dict):   # valid JSON but not a header (fuzzing found this)
        raise UserError(f"'{path}' is not a readable safetensors file (its header is not a JSON object).")
    out = {}
    data_len = size - 8 - n
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            start, end = v["data_offsets"]
            shape = tuple(int(s) for s in v["shape"])
            dtype = v["dtype"]
            # strings or floats here used to escape as TypeError/KeyError later
            if not all(type(x) is int for x in (start, end)) or dtype not in DTYPE_BYTES or min(shape, default=0) < 0:
                raise ValueError(dtype)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"'{path}' has a malformed safetensors header entry for '{k}'.")
        if end > data_len or start > end:
            raise UserError(f"'{path}' is truncated or corrupt: tensor '{k}' lies past the end of the file.")
        if end - start != TensorMeta(dtype, shape, path).nbytes:
            raise UserError(f"'{path}' is corrupt: tensor '{k}' has {end - start} bytes but its shape needs "
                            f"{TensorMeta(dtype, shape, path).nbytes}.")
        out[k] = (dtype, shape)
    return out


def _weight_files(folder: str) -> list[str]:
    idx = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(idx):
        try:
            with open(idx) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            if not all(isinstance(x, str) and x and os.path.basename(x) == x for x in files):
                # a shard name like ../../x or /x would read a file outside the model folder
                raise ValueError("shard names must be plain file names")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise UserError(f"'{idx}' is not a valid safetensors index.")
        missing = [x for x in files if not os.path.isfile(os.path.join(folder, x))]
        if missing:
            raise UserError(f"'{folder}' is missing the shard {missing[0]} named in its index.")
        return [os.path.join(folder, x) for x in files]
    return sorted(os.path.join(folder, x) for x in os.listdir(folder) if x.endswith(".safetensors"))


def inspect(ref: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
            allow_download: bool | None = None) -> ModelInfo:
    """Config + tensor headers of one model; no weights are read."""
    limits.check_opt_ins(ref, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    path = resolve(ref, allow_download=allow_download)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        if not os.listdir(path):
            raise UserError(f"The folder '{ref}' is empty.")
        raise UserError(f"'{ref}' has no config.json, so it is not a Hugging Face model folder.")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"The config.json of '{ref}' is not valid JSON ({exc}).")
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(f"'{ref}' needs custom code (auto_map in config.json); enable trust_remote_code only if you trust its author.")
    files = _weight_files(path)
    if not files:
        pickled = [x for x in os.listdir(path) if x.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        if pickled and not allow_pickle:
            raise UserError(f"'{ref}' has only pickled weights ({pickled[0]}); pickles can run code, so they are refused unless you opt in.")
        if pickled:
            path = _convert_pickled(ref, path, sorted(x for x in pickled if x.endswith(".bin")))
            files = _weight_files(path)
        else:
            raise UserError(f"'{ref}' has no .safetensors weights.")
    tensors: dict[str, TensorMeta] = {}
    for fpath in files:
        for k, (dtype, shape) in read_safetensors_header(fpath).items():
            tensors[k] = TensorMeta(dtype, shape, fpath)
    if not tensors:
        raise UserError(f"'{ref}' has safetensors files but no tensors in them.")
    name = ref[4:] if ref.startswith("zoo:") else os.path.basename(os.path.normpath(ref))
    return ModelInfo(ref=ref, path=path, config=config, tensors=tensors, name=name)


def _convert_pickled(ref: str, folder: str, bins: list[str]) -> str:
    """The user opted in: a safetensors copy of ``pytorch_model*.bin`` in the cache.

    ``torch.load(weights_only=True)`` unpickles tensors and plain containers
    only, so even an opted-in pickle cannot run code here; everything after
    it (engine, chat) then reads the copy like any safetensors model. The
    copy is keyed by the files' names, sizes and mtimes.
    """
    import hashlib
    import shutil
    from safetensors.torch import save_file
    from . import CACHE_DIR
    if not bins:
        raise UserError(f"'{ref}' has pickled weights but no pytorch_model*.bin; convert them to safetensors first.")
    h = hashlib.sha256(os.path.realpath(folder).encode())
    for b in bins:
        st = os.stat(os.path.join(folder, b))
        h.update(f"{b}:{st.st_size}:{int(st.st_mtime)}".encode())
    dst = os.path.join(CACHE_DIR, "from-pickle", h.hexdigest()[:16])
    if os.path.isfile(os.path.join(dst, "model.safetensors")):
        return dst
    state: dict = {}
    for b in bins:
        try:
            part = torch.load(os.path.join(folder, b), map_location="cpu", weights_only=True)
        except Exception as exc:   # a pickle with code in it lands here too
            raise UserError(f"'{ref}': {b} is not a plain tensor checkpoint ({type(exc).__name__}); it was not loaded.")
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise UserError(f"'{ref}': {b} does not hold a state dict of tensors.")
        state.update(part)
    tmp = f"{dst}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for x in os.listdir(folder):   # config, tokenizer, generation config ...
            if os.path.isfile(os.path.join(folder, x)) and not x.endswith((".bin", ".pt", ".pth", ".ckpt")):
                shutil.copyfile(os.path.join(folder, x), os.path.join(tmp, x))
        # tied weights share storage, which safetensors refuses: give each its own
        save_file({k: v.contiguous().clone() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        os.replace(tmp, dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"Could not write a safetensors copy of '{ref}' to {dst} ({exc.strerror or exc}).")
    return dst


@dataclass
class CompatReport:
    """Whether base + experts can be merged, with every reason in one place."""
    ok: bool
    problems: list[str] = field(default_factory=list)   # each blocks the merge
    notes: list[str] = field(default_factory=list)      # handled, but worth saying
    vocab_extra: dict[str, int] = field(default_factory=dict)  # expert ref -> extra rows
    rows: list[dict] = field(default_factory=list)      # one per model, for a table

    def sentence(self) -> str:
        return self.problems[0] if self.problems else "Compatible."


# tensors whose first dimension is the vocabulary
VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight")


def is_vocab_tensor(name: str) -> bool:
    return name.endswith(VOCAB_TENSORS) or name.endswith("wte.weight")


def compatibility(base: ModelInfo, experts: Iterable[ModelInfo]) -> CompatReport:
    """Same family, same tensor names and shapes; vocab growth is allowed."""
    experts = list(experts)
    rep = CompatReport(ok=True)
    rep.rows.append(_row(base, "base"))
    seen = {base.path}
    for e in experts:
        rep.rows.append(_row(e, "expert"))
        if e.path in seen:
            rep.problems.append(f"'{e.ref}' is listed twice (or is the base); each model may appear once.")
            continue
        seen.add(e.path)
        if e.config.get("model_type") != base.config.get("model_type") or e.architecture != base.architecture:
            rep.problems.append(f"'{e.ref}' is a {e.architecture} but the base '{base.ref}' is a {base.architecture}; only models of one architecture merge.")
            continue
        if e.n_layers != base.n_layers:
            rep.problems.append(f"'{e.ref}' has {e.n_layers} layers but the base has {base.n_layers}; it was not fine-tuned from this base.")
            continue
        missing = sorted(set(base.tensors) - set(e.tensors))
        extra = sorted(set(e.tensors) - set(base.tensors))
        if missing or extra:
            what = f"lacks '{missing[0]}'" if missing else f"has an extra tensor '{extra[0]}'"
            rep.problems.append(f"'{e.ref}' {what}; its tensor names do not match the base.")
            continue
        for k, bt in base.tensors.items():
            et = e.tensors[k]
            if et.shape == bt.shape:
                continue
            if is_vocab_tensor(k) and et.shape[1:] == bt.shape[1:] and et.shape[0] > bt.shape[0]:
                rep.vocab_extra[e.ref] = et.shape[0] - bt.shape[0]
                continue
            if is_vocab_tensor(k) and et.shape[1:] == bt.shape[1:]:
                # the shapes alone did not say this is about the vocabulary
                rep.problems.append(f"'{e.ref}' has a smaller vocabulary than the base ({et.shape[0]} rows in {k}, "
                                    f"the base has {bt.shape[0]}); only an expert that adds tokens can be merged.")
                break
            rep.problems.append(f"'{e.ref}' has {k} of shape {list(et.shape)} but the base has {list(bt.shape)}.")
            break
        if e.ref in rep.vocab_extra:
            rep.notes.append(f"'{e.ref}' adds {rep.vocab_extra[e.ref]} tokens to the vocabulary: shared rows are merged, its extra rows are kept as they are.")
    if not experts:
        rep.problems.append("No experts chosen: pick at least one model to merge into the base.")
    rep.ok = not rep.problems
    return rep


def _row(m: ModelInfo, role: str) -> dict:
    return {"role": role, "model": m.ref, "architecture": m.architecture, "layers": m.n_layers,
            "vocab": m.vocab_size, "params (M)": round(m.n_params / 1e6, 2),
            "size (MB)": round(m.nbytes / 2**20, 1)}


class TensorReader:
    """Per-tensor access to a model's weights, memory-mapped.

    Opening a shard is cheap (safetensors mmaps it); ``get`` materialises one
    tensor. Readers are reused across tensors so each file is opened once.
    """

    def __init__(self, info: ModelInfo):
        from safetensors import safe_open
        self.info = info
        self._open = {}
        self._safe_open = safe_open

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        meta = self.info.tensors[name]
        h = self._open.get(meta.file)
        if h is None:
            try:
                h = self._safe_open(meta.file, framework="pt", device="cpu")
            except Exception as exc:
                raise UserError(f"Cannot read '{meta.file}' ({exc}).")
            self._open[meta.file] = h
        try:
            t = h.get_tensor(name)
        except Exception as exc:
            raise UserError(f"Tensor '{name}' of '{self.info.ref}' could not be read; the file may be corrupt ({exc}).")
        return t.to(dtype) if dtype is not None else t

    def close(self) -> None:
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pick_device(prefer: str = "auto") -> str:
    if prefer != "auto":
        return prefer
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow there); bf16 on CUDA when supported."""
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


_SMALL_MODEL_PARAMS = 50_000_000
_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


class cpu_threads_for:
    """Run a small model's generation on one CPU thread, then restore.

    Why: for a model of a few million parameters each matmul is tiny and
    intra-op threads only add synchronisation; on a shared 2-core machine
    two spinning threads made the built-in family's probe run 3-15x slower
    (3 s with one thread against 10-50 s with two, measured under load).
    Larger models and GPUs keep torch's setting. Counted, so concurrent
    users (one thread per chat model) restore the setting only once.
    """

    def __init__(self, model):
        self.small = False
        try:
            dev = next(model.parameters()).device.type
            self.small = dev == "cpu" and sum(p.numel() for p in model.parameters()) <= _SMALL_MODEL_PARAMS
        except (StopIteration, AttributeError, TypeError):
            pass

    def __enter__(self):
        global _threads_users, _threads_saved
        if self.small:
            with _threads_lock:
                if _threads_users == 0:
                    _threads_saved = torch.get_num_threads()
                    torch.set_num_threads(1)
                _threads_users += 1
        return self

    def __exit__(self, *exc):
        global _threads_users
        if self.small:
            with _threads_lock:
                _threads_users -= 1
                if _threads_users == 0:
                    torch.set_num_threads(_threads_saved)


def quantization_status() -> dict[str, str]:
    """Which bitsandbytes modes can run here, and why not when they cannot.

    Returns {"8bit": reason-or-"", "4bit": reason-or-""}; an empty string
    means available. Merging always happens in float precision (quantized
    weights cannot be merged); quantization is for chat and probes only.
    """
    if not torch.cuda.is_available():
        why = "No CUDA GPU on this machine; 8-bit and 4-bit loading are offered only on a GPU."
        return {"8bit": why, "4bit": why}
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        why = f"bitsandbytes is not usable here ({type(exc).__name__}); install bitsandbytes for 8/4-bit loading."
        return {"8bit": why, "4bit": why}
    try:
        import accelerate  # noqa: F401  (transformers needs it for bitsandbytes loading)
    except Exception:
        why = "8/4-bit loading needs the accelerate package, which is not installed."
        return {"8bit": why, "4bit": why}
    return {"8bit": "", "4bit": ""}


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    path = resolve(ref)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UserError(f"Cannot load the tokenizer of '{ref}' ({type(exc).__name__}: {str(exc)[:120]}).")


def load_model(ref: str, *, device: str = "auto", dtype: torch.dtype | None = None,
               quantization: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False):
    """Load a model for generation (eval mode), optionally 8/4-bit.

    ``allow_pickle`` loads a .bin-only model from its safetensors copy (see
    _convert_pickled); it is off unless the user opts in.
    """
    from transformers import AutoModelForCausalLM
    info = inspect(ref, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    device = pick_device(device)
    kwargs: dict = {"dtype": dtype or default_dtype(device), "trust_remote_code": trust_remote_code}
    if quantization in ("8bit", "4bit"):
        why = quantization_status()[quantization]
        if why:
            raise UserError(why)
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "8bit"
                                         else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=default_dtype("cuda"),
                                                                 bnb_4bit_quant_type="nf4"))
        kwargs["device_map"] = {"": 0}
    if quantization not in ("8bit", "4bit"):
        # loaded into RAM first (then moved): refuse before the OOM killer does
        limits.check_memory(limits.load_estimate([info], torch.empty((), dtype=kwargs["dtype"]).element_size()),
                            f"Loading '{ref}'")
    try:
        model = AutoModelForCausalLM.from_pretrained(info.path, **kwargs)
    except Exception as exc:
        raise UserError(f"Cannot load '{ref}' ({type(exc).__name__}: {str(exc)[:160]}).")
    if quantization not in ("8bit", "4bit"):
        model.to(device)
    model.eval()
    return model


def layer_of(name: str) -> int | None:
    """Decoder layer index of a tensor name, or None for embeddings/head/final norm."""
    m = re.search(r"\.layers\.(\d+)\.", name) or re.search(r"\.h\.(\d+)\.", name)
    return int(m.group(1)) if m else None


MODULE_KINDS = ("q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm")


def module_of(name: str) -> str:
    """Short module kind used by figures: q,k,v,o,gate,up,down,norms,embed,head."""
    table = [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"),
             ("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"),
             ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm"),
             ("embed_tokens", "embed"), ("lm_head", "head")]
    for key, short in table:
        if key in name:
            return short
    if name.endswith("norm.weight"):
        return "final_norm"
    return "other"


def torch_dtype_of(st_dtype: str) -> torch.dtype:
    return _ST_TO_TORCH.get(st_dtype, torch.float32)
