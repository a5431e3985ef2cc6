"""Loading a model for generation: device, dtype, threads, quantization."""
from __future__ import annotations

import threading

import torch

from .. import policy
from ..errors import UserError, quoted
from .headers import ModelInfo, inspect
from .refs import resolve

def release_memory() -> None:
    """Hand the C heap's freed pages back to the system (glibc; a no-op
    elsewhere). A model's 3-17 MB tensors live on the heap, below glibc's
    mmap threshold, and once freed their pages stayed resident: 1.6-2 GB
    after a 0.5B model, under the next model loaded beside them."""
    import ctypes
    try:
        ctypes.CDLL(None).malloc_trim(0)   # the process's own symbols: libc's, without a search
    except (OSError, AttributeError):
        pass


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


class single_thread:
    """torch on one CPU thread inside the block (when ``on``), then back.

    The one thread limiter: small models' generation (``cpu_threads_for``)
    and the merge's row blocks use it. Why: when each matmul or pass is
    tiny, intra-op threads only add synchronisation, and on a busy machine a
    thread that waits for a descheduled partner spins -- on the shared
    2-core box the built-in family's probes took 3 s with one thread and
    10-50 s with two, and the 0.5B TIES merge 29 s against 258 s (load 5).
    Counted, so concurrent users (one thread per chat model, a merge next
    to a chat) restore the process-wide setting only once, after the last.
    """

    def __init__(self, on: bool = True):
        self.on = on

    def __enter__(self):
        global _threads_users, _threads_saved
        if self.on:
            with _threads_lock:
                if _threads_users == 0:
                    _threads_saved = torch.get_num_threads()
                    torch.set_num_threads(1)
                _threads_users += 1
        return self

    def __exit__(self, *exc):
        global _threads_users
        if self.on:
            with _threads_lock:
                _threads_users -= 1
                if _threads_users == 0:
                    torch.set_num_threads(_threads_saved)


def cpu_threads_for(model) -> single_thread:
    """One thread for a small model on the CPU (generation, re-merge);
    larger models and GPUs keep torch's setting."""
    small = False
    try:
        dev = next(model.parameters()).device.type
        small = dev == "cpu" and sum(p.numel() for p in model.parameters()) <= _SMALL_MODEL_PARAMS
    except (StopIteration, AttributeError, TypeError):
        pass
    return single_thread(small)


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


def load_tokenizer(ref: str | ModelInfo, trust_remote_code: bool = False):
    """The tokenizer of a reference, or of a model already inspected (no second look)."""
    from transformers import AutoTokenizer
    path = ref.path if isinstance(ref, ModelInfo) else resolve(ref)
    ref = ref.ref if isinstance(ref, ModelInfo) else ref
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UserError(f"Cannot load the tokenizer of {quoted(ref)} ({type(exc).__name__}: {str(exc)[:120]}).")


def load_model(ref: str | ModelInfo, *, device: str = "auto", dtype: torch.dtype | None = None,
               quantization: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False):
    """Load a model for generation (eval mode), optionally 8/4-bit.

    ``ref`` is a reference, or the ModelInfo of a model already inspected
    (a merge's plan holds them: its headers are not read again).
    ``allow_pickle`` loads a .bin-only model from its safetensors copy (see
    _convert_pickled); it is off unless the user opts in.
    """
    from transformers import AutoModelForCausalLM
    if isinstance(ref, ModelInfo):
        info, ref = ref, ref.ref
    else:
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
        policy.check_memory(policy.load_estimate([info], torch.empty((), dtype=kwargs["dtype"]).element_size()),
                            f"Loading {quoted(ref)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(info.path, **kwargs)
    except Exception as exc:
        raise UserError(f"Cannot load {quoted(ref)} ({type(exc).__name__}: {str(exc)[:160]}).")
    if quantization not in ("8bit", "4bit"):
        model.to(device)
    model.eval()
    return model
