"""How a model's checkpoint names its tensors against how transformers
holds them in memory, asked of transformers itself.

transformers 5 renames and reshapes some tensors on load (its weight
conversion: GPT-NeoX's ``embed_out`` becomes ``lm_head``; the per-expert
tensors of Mixtral and Qwen2-MoE are fused into one ``experts.gate_up_proj``
and one ``experts.down_proj`` per layer) and reverts that on save. Merging
works on the checkpoint's tensors; LED's scores and ACM's hooks come from
the loaded model. This module bridges the two with transformers' own
machinery (``revert_weight_conversion``, ``get_input_embeddings``,
``get_output_embeddings``, ``get_decoder``), never with a hand list of
names:

* ``to_checkpoint(model, tensors)``: tensors named and shaped like the
  model's parameters (LED's scores) -> named and shaped like the checkpoint
  (a fused expert tensor's scores split back per expert).
* ``layout(info)``: from the config alone (a model built on the meta
  device, no weights), which checkpoint tensors are the vocabulary rows of
  the input and output embeddings, the final norm, and whether the head is
  tied.
* ``decoder_parts(model)``: the embedding, the decoder blocks and the final
  norm of any decoder-only model (ACM hooks them).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import torch

from ..errors import UserError, quoted
from .headers import ModelInfo

# used only when transformers cannot build the model from its config (a
# hand-written config.json in a test or a fuzzer's folder)
FALLBACK_VOCAB = ("embed_tokens.weight", "lm_head.weight", "wte.weight")


@dataclass(frozen=True)
class Layout:
    """What transformers says about a model class, in checkpoint names."""
    architecture: str
    embed: frozenset[str]        # input embedding tensors whose rows are the vocabulary
    head: frozenset[str]         # output embedding tensors whose rows are the vocabulary (absent when tied)
    norm: frozenset[str]         # the final norm's tensors
    tied: bool                   # the output embedding is the input embedding
    memory_names: frozenset[str]     # parameter names as transformers holds them
    checkpoint_names: frozenset[str]  # the same, as transformers writes them
    known: bool = True           # False: the fallback (transformers could not build it)
    max_positions: int | None = None   # the config's context length, whatever it calls it (GPT-2: n_positions)

    @property
    def vocab(self) -> frozenset[str]:
        return self.embed | self.head


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def to_checkpoint(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors named like ``model``'s parameters -> named (and split) like its
    checkpoint, through the conversion transformers applies when it saves.
    A fused MoE parameter's tensor comes back as one tensor per expert;
    renamed ones (GPT-NeoX's lm_head) under their checkpoint names."""
    from transformers.core_model_loading import revert_weight_conversion
    out = revert_weight_conversion(model, dict(tensors))
    return {k: (v[0] if isinstance(v, list) else v) for k, v in out.items()}


def _module_names(model, module) -> list[str]:
    """Memory names of ``module``'s own parameters inside ``model``."""
    if module is None:
        return []
    ids = {id(p): n for n, p in module.named_parameters(recurse=False)}
    return [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids
            and n.rsplit(".", 1)[-1] == ids[id(p)]]


def _vocab_rows(model, module, params: dict, vocab: int) -> list[str]:
    """Names of the module's parameters whose first dimension is the vocabulary."""
    return [n for n in _module_names(model, module) if params[n].shape[:1] == (vocab,)]


def decoder_parts(model):
    """(input embedding, decoder blocks, final norm) of a decoder-only model.

    Asked of the model: its decoder (``get_decoder``, else ``base_model``),
    the ModuleList there with one block per ``num_hidden_layers``, and the
    last norm module registered after it (Llama's ``norm``, GPT-2's
    ``ln_f``, GPT-NeoX's ``final_layer_norm``). None when one is missing.
    """
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else getattr(model, "base_model", None)
    if decoder is None:
        return None
    n = getattr(_text_config(model.config), "num_hidden_layers", None)
    children = list(decoder.named_children())
    at = next((i for i, (_, m) in enumerate(children) if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)
    if at is None:
        return None
    norm = None
    for _, m in children[at + 1:]:
        if "norm" in type(m).__name__.lower() and any(True for _ in m.parameters(recurse=False)):
            norm = m
    embed = model.get_input_embeddings()
    if norm is None or embed is None:
        return None
    return embed, list(children[at][1]), norm


def parts_or_refuse(model):
    """``decoder_parts`` or one sentence saying what is missing."""
    parts = decoder_parts(model)
    if parts is None:
        raise UserError(f"ACM cannot find the decoder blocks and the final norm of {type(model).__name__} "
                        "(it asks transformers for the decoder, a list of num_hidden_layers blocks and a norm "
                        "after them); this architecture cannot be merged with ACM.")
    return parts


_LOCK = threading.Lock()
_CACHE: dict[str, Layout] = {}


def layout(info: ModelInfo) -> Layout:
    """The Layout of a model folder, from its config (cached per config). Only a layout transformers
    built is cached: the fallback is made from one model's tensor names (another model with the same
    config may name others), and the failure behind it may pass (a package installed later)."""
    key = json.dumps(info.config, sort_keys=True, default=str)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        hit = _build(info)
        if hit.known:
            with _LOCK:
                _CACHE[key] = hit
    return hit


def _fallback(info: ModelInfo) -> Layout:
    names = frozenset(info.tensors)
    vocab = frozenset(n for n in names if n.endswith(FALLBACK_VOCAB))
    n = info.config.get("max_position_embeddings")
    return Layout(info.architecture, vocab, frozenset(), frozenset(), False, names, names, known=False,
                  max_positions=n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None)


def _build(info: ModelInfo) -> Layout:
    import logging
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            config = AutoConfig.from_pretrained(info.path)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        finally:
            hf_logging.set_verbosity(level)
    except Exception:   # not a model transformers can build: fall back to the tensor names
        logging.getLogger(__name__).debug("no transformers model for %s", info.ref, exc_info=True)
        return _fallback(info)
    vocab = getattr(_text_config(config), "vocab_size", None)
    embed, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and embed is not None and getattr(out, "weight", None) is getattr(embed, "weight", 0)
    parts = decoder_parts(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    ck = _checkpoint_names(model, params)
    embed_names = {ck[n] for n in _vocab_rows(model, embed, params, vocab) if n in ck}
    head_names = {ck[n] for n in _vocab_rows(model, out, params, vocab) if n in ck} - embed_names if not tied else set()
    norm_names = {ck[n] for n in _module_names(model, parts[2]) if n in ck} if parts else set()
    on_disk = to_checkpoint(model, {n: torch.empty(p.shape, device="meta") for n, p in params.items()})
    return Layout(type(model).__name__, frozenset(embed_names), frozenset(head_names), frozenset(norm_names),
                  bool(tied), frozenset(params), frozenset(on_disk),
                  max_positions=getattr(_text_config(config), "max_position_embeddings", None))


def _checkpoint_names(model, params: dict) -> dict[str, str]:
    """Memory name -> checkpoint name for every parameter that keeps one
    tensor on disk (renamed ones included); fused ones map to nothing."""
    out = {}
    for name, p in params.items():
        got = to_checkpoint(model, {name: torch.empty(p.shape, device="meta")})
        if len(got) == 1:
            out[name] = next(iter(got))
    return out


def vocab_tensors(info: ModelInfo) -> frozenset[str]:
    """Checkpoint tensors of ``info`` whose rows are the vocabulary (the
    input and output embeddings, however the architecture names them)."""
    return layout(info).vocab & frozenset(info.tensors) or _fallback(info).embed


def max_length(info: ModelInfo, cap: int) -> int:
    """Tokens a sample may have: ``cap``, or the model's context when shorter."""
    n = layout(info).max_positions
    return min(cap, n) if isinstance(n, int) and n > 0 else cap


def describe(info: ModelInfo) -> str:
    """A short name of the architecture for a report: 'Qwen2ForCausalLM (qwen2)'."""
    mt = info.config.get("model_type")
    return f"{info.architecture} ({mt})" if isinstance(mt, str) and mt else info.architecture


def fused_format(base: ModelInfo, other: ModelInfo) -> str | None:
    """A sentence when ``other`` stores its tensors as transformers holds them
    in memory and the base as checkpoints are saved (or the reverse): fused
    MoE experts against one tensor per expert, GPT-NeoX's lm_head against
    embed_out; None otherwise."""
    lay = layout(base)
    if not lay.known or lay.memory_names == lay.checkpoint_names:
        return None
    b, o = set(base.tensors), set(other.tensors)
    fused_b, fused_o = b <= lay.memory_names and not b <= lay.checkpoint_names, \
        o <= lay.memory_names and not o <= lay.checkpoint_names
    if fused_b == fused_o:
        return None
    fused, plain = (other, base) if fused_o else (base, other)
    example = sorted(set(fused.tensors) - lay.checkpoint_names)[0]
    theirs = sorted(set(plain.tensors) - lay.memory_names)
    return (f"{quoted(fused.ref)} stores its weights the way transformers holds them in memory (e.g. {quoted(example)}) "
            f"but {quoted(plain.ref)} stores them the way its checkpoints are saved"
            + (f" (e.g. {quoted(theirs[0])})" if theirs else "") + "; save both with save_pretrained so they use "
            "one format.")
