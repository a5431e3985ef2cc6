"""Config and safetensors headers: what a model is, read without its weights.

Everything that decides whether a merge can happen is read from
config.json and the safetensors headers, so a wrong pair of models is
refused in milliseconds, before any weight is read.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass

import torch

from .. import policy
from ..errors import UserError, quoted
from .refs import resolve

# the files of a model folder that decide how text becomes token ids (the
# chat template included): a merged folder gets copies, and a score cache
# hashes them (in this order) as part of its key
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.txt")

# safetensors dtype names -> bytes per element (for memory estimates)
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_ST_TO_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


@dataclass(frozen=True)
class TensorMeta:
    dtype: str            # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]
    file: str             # absolute path of the shard holding it
    offset: int = 0       # where its bytes start in that file (the reader needs no second header parse)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)

    @property
    def is_float(self) -> bool:
        """A weight to merge (integer buffers such as position ids are kept as the base's)."""
        return self.dtype in FLOAT_DTYPES


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
        sizes and headers, so only content tells them apart. Every byte of
        every file is hashed (a sample of blocks once gave a fine-tune that
        changed none of them its base's fingerprint, and its base's LED
        scores); ``file_digest`` remembers each file's digest by size and
        modification time, so a process reads a file once. The config counts too: the same weights under another rope_theta,
        norm epsilon or activation score differently for LED and ACM. Keys
        that only say where, by what or in which dtype a file was written do not.
        """
        h = hashlib.sha256()
        # the stored dtypes are hashed with the tensors below; transformers renamed torch_dtype to dtype
        cfg = {k: v for k, v in self.config.items()
               if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype")}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        for f in sorted({t.file for t in self.tensors.values()}):
            h.update(f"{os.path.basename(f)}:{os.path.getsize(f)}:".encode() + file_digest(f))
        for k in sorted(self.tensors):
            t = self.tensors[k]
            h.update(f"{k}:{t.dtype}:{t.shape}".encode())
        return h.hexdigest()[:16]


_DIGESTS: dict[tuple, bytes] = {}
_DIGESTS_LOCK = threading.Lock()


def file_digest(path: str) -> bytes:
    """sha256 of a file's bytes, remembered while its size and modification time stay the same (a file
    rewritten in place gets a new mtime, so it is read again)."""
    st = os.stat(path)
    k = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _DIGESTS_LOCK:
        d = _DIGESTS.get(k)
    if d is None:
        with open(path, "rb") as f:
            d = hashlib.file_digest(f, "sha256").digest()
        with _DIGESTS_LOCK:
            _DIGESTS[k] = d
    return d


def read_safetensors_header(path: str) -> dict[str, TensorMeta]:
    """Parse one safetensors header without touching the tensor data.

    Every entry is checked against the file (known dtype, byte count that
    matches its shape, inside the file), so a reader can trust it.
    """
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
        raise UserError(f"{quoted(path)} is not a readable safetensors file ({exc}).")
    if not isinstance(header, dict):   # valid JSON but not a header (fuzzing found this)
        raise UserError(f"{quoted(path)} is not a readable safetensors file (its header is not a JSON object).")
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
            raise UserError(f"{quoted(path)} has a malformed safetensors header entry for {quoted(k)}.")
        if end > data_len or start > end:
            raise UserError(f"{quoted(path)} is truncated or corrupt: tensor {quoted(k)} lies past the end of the file.")
        if end - start != TensorMeta(dtype, shape, path).nbytes:
            raise UserError(f"{quoted(path)} is corrupt: tensor {quoted(k)} has {end - start} bytes but its shape needs "
                            f"{TensorMeta(dtype, shape, path).nbytes}.")
        out[k] = TensorMeta(dtype, shape, path, 8 + n + start)
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
            raise UserError(f"{quoted(idx)} is not a valid safetensors index.")
        missing = [x for x in files if not os.path.isfile(os.path.join(folder, x))]
        if missing:
            raise UserError(f"{quoted(folder)} is missing the shard {quoted(missing[0])} named in its index.")
        return [os.path.join(folder, x) for x in files]
    return sorted(os.path.join(folder, x) for x in os.listdir(folder) if x.endswith(".safetensors"))


def inspect(ref: str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
            allow_download: bool | None = None) -> ModelInfo:
    """Config + tensor headers of one model; no weights are read."""
    policy.check_opt_ins(ref, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    path = resolve(ref, allow_download=allow_download)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        if not os.listdir(path):
            raise UserError(f"The folder {quoted(ref)} is empty.")
        raise UserError(f"{quoted(ref)} has no config.json, so it is not a Hugging Face model folder.")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"The config.json of {quoted(ref)} is not valid JSON ({exc}).")
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(f"{quoted(ref)} needs custom code (auto_map in config.json); enable trust_remote_code only if you trust its author.")
    files = _weight_files(path)
    if not files:
        pickled = [x for x in os.listdir(path) if x.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        if pickled and not allow_pickle:
            raise UserError(f"{quoted(ref)} has only pickled weights ({quoted(pickled[0])}); pickles can run code, so they are refused unless you opt in.")
        if pickled:
            path = _convert_pickled(ref, path, sorted(x for x in pickled if x.endswith(".bin")))
            files = _weight_files(path)
        else:
            raise UserError(f"{quoted(ref)} has no .safetensors weights.")
    tensors: dict[str, TensorMeta] = {}
    for fpath in files:
        tensors.update(read_safetensors_header(fpath))
    if not tensors:
        raise UserError(f"{quoted(ref)} has safetensors files but no tensors in them.")
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
    from .. import CACHE_DIR
    if not bins:
        raise UserError(f"{quoted(ref)} has pickled weights but no pytorch_model*.bin; convert them to safetensors first.")
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
            raise UserError(f"{quoted(ref)}: {quoted(b)} is not a plain tensor checkpoint ({type(exc).__name__}); it was not loaded.")
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise UserError(f"{quoted(ref)}: {quoted(b)} does not hold a state dict of tensors.")
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
        raise UserError(f"Could not write a safetensors copy of {quoted(ref)} to {dst} ({exc.strerror or exc}).")
    return dst



def torch_dtype_of(st_dtype: str) -> torch.dtype:
    return _ST_TO_TORCH.get(st_dtype, torch.float32)
