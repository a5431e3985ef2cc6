"""Tiny random checkpoint families of the architectures people merge,
generated in the tests (no weights committed): a base and two experts
(the base nudged by N(0, 0.01²)) per architecture, saved with
``save_pretrained`` the way transformers writes them -- so the MoE models
keep one tensor per expert on disk while transformers fuses them in
memory, GPT-NeoX writes ``embed_out``, Phi3 its fused ``qkv_proj``."""
from __future__ import annotations

import os

import torch

VOCAB = 64
HIDDEN = 32
LAYERS = 2

_COMMON = dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0,
               eos_token_id=1, bos_token_id=None)


def _cfg(name: str, **over):
    import transformers
    return getattr(transformers, name)(**{**_COMMON, **over})


def _gpt2(**over):
    from transformers import GPT2Config
    return GPT2Config(**{**dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64, vocab_size=VOCAB,
                                pad_token_id=0, eos_token_id=1, bos_token_id=1), **over})


def _neox(**over):
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(**{**dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=64,
                                   tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1), **over})


# name -> config maker (vocab=... grows the vocabulary)
CONFIGS = {
    "llama": lambda **o: _cfg("LlamaConfig", tie_word_embeddings=False, **o),
    "qwen2-tied": lambda **o: _cfg("Qwen2Config", tie_word_embeddings=True, **o),
    "qwen2": lambda **o: _cfg("Qwen2Config", tie_word_embeddings=False, **o),
    "qwen3": lambda **o: _cfg("Qwen3Config", head_dim=8, tie_word_embeddings=True, **o),
    "mistral": lambda **o: _cfg("MistralConfig", head_dim=8, tie_word_embeddings=False, **o),
    "gemma2": lambda **o: _cfg("Gemma2Config", head_dim=8, **o),
    "gemma3": lambda **o: _cfg("Gemma3TextConfig", head_dim=8, sliding_window=16, **o),
    "phi3": lambda **o: _cfg("Phi3Config", tie_word_embeddings=False, **o),
    "gpt2": _gpt2,
    "gpt-neox": _neox,
    "qwen2-moe": lambda **o: _cfg("Qwen2MoeConfig", moe_intermediate_size=16, shared_expert_intermediate_size=32,
                                  num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False, **o),
    "mixtral": lambda **o: _cfg("MixtralConfig", num_local_experts=4, num_experts_per_tok=2,
                                tie_word_embeddings=False, **o),
    "olmo2": lambda **o: _cfg("Olmo2Config", tie_word_embeddings=False, **o),
}


# single characters, most frequent first: the built-in task data stays readable
CHARS = " etaoinsrhldcumfpgwybvkxjqz0123456789.,?!'-:+*=()ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer(vocab: int = VOCAB):
    """A byte-level BPE of single characters (<pad>, <eos>, then CHARS up to
    ``vocab``) with a chat template: every architecture's tokenizer class
    (Qwen2's rebuilds its own pipeline) reads it the same way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    table = _byte_chars()
    words = {"<pad>": 0, "<eos>": 1}
    for c in CHARS[:vocab - 2]:
        words[table[ord(c)]] = len(words)
    tok = Tokenizer(models.BPE(vocab=words, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    t.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return t


def build(arch: str, root: str, *, grown: int = 0, seed: int = 0) -> dict[str, str]:
    """Folders ``base``, ``e1``, ``e2`` (and ``grown``, an expert with
    ``grown`` extra tokens, when asked) of one architecture under ``root``."""
    from transformers import AutoModelForCausalLM
    make = CONFIGS[arch]
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(make())
    out = {}

    def save(model, name: str, vocab: int = VOCAB) -> None:
        path = os.path.join(root, name)
        model.save_pretrained(path)
        tokenizer(vocab).save_pretrained(path)
        out[name] = path
    save(base, "base")
    state = base.state_dict()
    for i, name in enumerate(("e1", "e2")):
        g = torch.Generator().manual_seed(100 + i)
        m = AutoModelForCausalLM.from_config(make())
        m.load_state_dict(state)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        save(m, name)
    if grown:
        g = torch.Generator().manual_seed(7)
        big = AutoModelForCausalLM.from_config(make(vocab_size=VOCAB + grown))
        with torch.no_grad():
            for k, v in big.state_dict().items():
                src = state[k]
                rows = slice(0, src.shape[0]) if v.shape != src.shape else slice(None)
                v[rows].copy_(src + torch.randn(src.shape, generator=g) * 0.01)
        save(big, "grown", VOCAB + grown)
    return out


def folder_tensors(folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors shards, by name."""
    from safetensors.torch import load_file
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out
