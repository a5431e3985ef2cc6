"""What a tensor name says: its decoder layer, its module kind, its point.
Which tensors are the vocabulary, the final norm or the head is asked of
transformers (layout.py); a Layout given to ``point_of`` overrides the
name rules below."""
from __future__ import annotations

import re


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


def tensor_order(name: str) -> tuple:
    """Embeddings first, then layer by layer, then the final norm and head,
    so progress 'tensor i of n' moves through the network in order."""
    layer = layer_of(name)
    if layer is None:
        return (0 if module_of(name) == "embed" else 2, 0, name)
    return (1, layer, name)


# Points: one per place in the forward pass where ACM measures activations
# and the per-layer figures put a value -- the embedding, each decoder layer,
# the final norm, the lm_head. Every tensor of decoder layer k belongs to
# "layer k"; the others to the point of their module.
OUTSIDE_POINTS = {"embed": "embed", "final_norm": "norm", "head": "lm_head"}   # module kind -> point


def point_names(n_layers: int) -> list[str]:
    """The points of a model, in forward order."""
    return ["embed"] + [f"layer {k}" for k in range(n_layers)] + ["norm", "lm_head"]


def point_of(name: str, layout=None) -> str | None:
    """The point a tensor belongs to (None: none, e.g. GPT-2's position
    embedding). ``layout`` (checkpoint.layout.Layout): what transformers says
    is the embedding, final norm and head of the architecture."""
    layer = layer_of(name)
    if layer is not None:
        return f"layer {layer}"
    if layout is not None and layout.known:
        for point, names in (("embed", layout.embed), ("norm", layout.norm), ("lm_head", layout.head)):
            if name in names:
                return point
    return OUTSIDE_POINTS.get(module_of(name))
