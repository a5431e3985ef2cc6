"""Fixtures shared by the test packages: the tiny family (real Llama
folders made here, in seconds), the command line (in this process or as a
real one), and the counts of what one merge reads and checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import core

# environment variables of a Space (core.policy); a developer's shell must not leak them into a test
SPACE_VARS = ("MERGE_EXPLORER_SPACE", "SPACE_ID", "MERGE_EXPLORER_ALLOWED_PATHS", "MERGE_EXPLORER_ALLOWED_MODELS",
              "MERGE_EXPLORER_OUTPUT_ROOTS", "MERGE_EXPLORER_MEMORY_BUDGET_GB")


# ------------------------------------------------------------ the tiny family
VOCAB = 64


def llama_config(vocab: int = VOCAB, layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64,
                       tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)


def word_tokenizer(vocab: int = VOCAB):
    """A word-level tokenizer: <pad>, <eos>, then w2 .. w{vocab-1}."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _write_model(folder, tensors: dict[str, torch.Tensor], **config) -> str:
    from safetensors.torch import save_file
    os.makedirs(folder)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2, **config}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    return str(folder)


@pytest.fixture(scope="session")
def write_model():
    """``write_model(folder, tensors, **config)``: a model folder from tensors made
    in the test -- config.json (Llama, 2 layers, updated by ``config``) and one
    safetensors file -- for sums checked by hand."""
    return _write_model


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory) -> dict[str, str]:
    """Folders of a 2-layer Llama (hidden 32, vocab 64, with a tokenizer):
    ``base``; ``safety`` and ``math``, the base nudged by N(0, 0.01²);
    ``grown``, an expert that added 6 tokens; ``nan``, the base with one NaN
    in layer 1's up_proj; ``deep``, an unrelated 3-layer model."""
    from transformers import LlamaForCausalLM
    root = tmp_path_factory.mktemp("tiny_family")

    def save(model, name: str, vocab: int = VOCAB) -> str:
        model.save_pretrained(root / name)
        word_tokenizer(vocab).save_pretrained(root / name)
        return str(root / name)

    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config())
    paths = {"base": save(base, "base")}
    for i, name in enumerate(["safety", "math"]):
        g = torch.Generator().manual_seed(100 + i)
        m = LlamaForCausalLM(llama_config())
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        paths[name] = save(m, name)
    g = torch.Generator().manual_seed(7)
    big = LlamaForCausalLM(llama_config(VOCAB + 6))
    sd = big.state_dict()
    with torch.no_grad():
        for k, v in base.state_dict().items():
            if v.shape == sd[k].shape:
                sd[k].copy_(v + torch.randn(v.shape, generator=g) * 0.01)
            else:
                sd[k][:VOCAB].copy_(v + torch.randn(v.shape, generator=g) * 0.01)
    paths["grown"] = save(big, "grown", VOCAB + 6)
    bad = LlamaForCausalLM(llama_config())
    bad.load_state_dict(base.state_dict())
    with torch.no_grad():
        bad.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    paths["nan"] = save(bad, "nan")
    torch.manual_seed(1)
    paths["deep"] = save(LlamaForCausalLM(llama_config(layers=3)), "deep")
    return paths


# ----------------------------------------------------------- the command line
def one_sentence(stderr: str) -> str:
    """The single ``error:`` line; tqdm's bar may precede it on stderr, nothing may follow."""
    assert "Traceback" not in stderr
    lines = [x for x in stderr.replace("\r", "\n").splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr
    sentence = errors[0][len("error: "):]
    assert sentence.endswith((".", ")")) and len(sentence) < 400, sentence
    return sentence


class Cli:
    """``python -m core ...`` for a test. ``cli(argv)`` runs its main in this
    process, output captured: (exit code, stdout, stderr). ``cli.refused(argv,
    *needles)`` expects exit 2 and one error sentence holding every needle.
    ``cli.process(argv)`` runs a real process (or ``code`` with argv), with
    no Space variables from the developer's shell and HF_HUB_OFFLINE=1."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, argv) -> tuple[int, str, str]:
        from core.cli import main
        self.capsys.readouterr()
        rc = main([str(a) for a in argv])
        got = self.capsys.readouterr()
        return rc, got.out, got.err

    sentence = staticmethod(one_sentence)

    def refused(self, argv, *needles, rc: int = 2) -> str:
        code, _, err = self(argv)
        assert code == rc, err
        sentence = one_sentence(err)
        for n in needles:
            assert n in sentence, (n, sentence)
        return sentence

    @staticmethod
    def env(**extra) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in SPACE_VARS}
        env["PYTHONPATH"] = core.ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.update(extra)
        return env

    def process(self, argv, *, code: str | None = None, env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
        head = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "core"]
        return subprocess.run(head + [str(a) for a in argv], cwd=core.ROOT, env=self.env(**(env or {})),
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def cli(capsys) -> Cli:
    return Cli(capsys)


@pytest.fixture(autouse=True)
def _no_space_env(monkeypatch):
    """The guards read the environment at call time; a developer's shell must not leak in."""
    for v in SPACE_VARS:
        monkeypatch.delenv(v, raising=False)


class PlanCounts(dict):
    """How often one merge validated its recipe, read each header, checked
    compatibility and ran its method's prepare step."""

    def assert_once(self, refs: list[str]) -> None:
        from core.checkpoint import zoo_path
        assert self["validate"] == 1, self
        assert self["compat"] == 1, self
        assert self["prepare"] == 1, self
        files = [os.path.join(zoo_path(r[4:]) if r.startswith("zoo:") else r, "model.safetensors") for r in refs]
        assert sorted(self["headers"]) == sorted(files), self


@pytest.fixture()
def plan_counts(monkeypatch, tmp_path):
    """Counts (PlanCounts) of what a merge reads and checks, with LED's
    score cache in a private folder."""
    from core import checkpoint
    from core import recipe as R
    from core.checkpoint import headers
    from core.methods import REGISTRY
    from core.methods.led import importance as I
    monkeypatch.setattr(core, "CACHE_DIR", str(tmp_path / "cache"))
    I.clear_memory_cache()
    counts = PlanCounts(validate=0, compat=0, prepare=0, headers=[])

    def wrap(owner, name, key):
        real = getattr(owner, name)

        def counting(*a, **k):
            if key == "headers":
                counts[key].append(a[0])
            else:
                counts[key] += 1
            return real(*a, **k)
        monkeypatch.setattr(owner, name, counting)

    wrap(R, "validate", "validate")
    wrap(headers, "read_safetensors_header", "headers")
    wrap(checkpoint, "compatibility", "compat")
    for spec in REGISTRY.values():
        if spec.prepare is not None:
            wrap(spec, "prepare", "prepare")
    yield counts
    I.clear_memory_cache()


@pytest.fixture(scope="session")
def smol_base() -> str:
    """The converted SmolLM2 base in the cache (converted here once when the wheel is at hand); CI sets
    MERGE_EXPLORER_REQUIRE_SMOL=1, so there the tests that need it run and never skip."""
    from core import service
    from core.errors import UserError
    required = os.environ.get("MERGE_EXPLORER_REQUIRE_SMOL", "") not in ("", "0")
    try:
        return service.fetch_family("smol", allow_download=required)
    except UserError as exc:
        if required:
            raise
        pytest.skip(f"SmolLM2 is not available here: {exc}")
