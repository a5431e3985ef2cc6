"""Whether a base and experts can be merged: same family, same tensor names
and shapes (a grown vocabulary is allowed), every reason in one place."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..errors import quoted
from .headers import ModelInfo
from .layout import describe, fused_format, layout, vocab_tensors


@dataclass
class CompatReport:
    """Whether base + experts can be merged, with every reason in one place."""
    ok: bool
    problems: list[str] = field(default_factory=list)   # each blocks the merge
    notes: list[str] = field(default_factory=list)      # handled, but worth saying
    vocab_extra: dict[str, int] = field(default_factory=dict)  # expert ref -> extra rows
    rows: list[dict] = field(default_factory=list)      # one per model, for a table
    architecture: str = ""                              # the base's, e.g. "Qwen2ForCausalLM (qwen2)"

    def sentence(self) -> str:
        if self.problems:
            return self.problems[0]
        return f"Compatible: {self.architecture}." if self.architecture else "Compatible."




def compatibility(base: ModelInfo, experts: Iterable[ModelInfo]) -> CompatReport:
    """Same family, same tensor names and shapes; vocab growth is allowed."""
    experts = list(experts)
    rep = CompatReport(ok=True, architecture=describe(base))
    rep.rows.append(_row(base, "base"))
    vocab = None
    seen = {base.path}
    for e in experts:
        rep.rows.append(_row(e, "expert"))
        if e.path in seen:
            rep.problems.append(f"{quoted(e.ref)} is listed twice (or is the base); each model may appear once.")
            continue
        seen.add(e.path)
        if e.config.get("model_type") != base.config.get("model_type") or e.architecture != base.architecture:
            rep.problems.append(f"{quoted(e.ref)} is a {quoted(e.architecture)} but the base {quoted(base.ref)} is a {quoted(base.architecture)}; only models of one architecture merge.")
            continue
        if e.n_layers != base.n_layers:
            rep.problems.append(f"{quoted(e.ref)} has {e.n_layers} layers but the base has {base.n_layers}; it was not fine-tuned from this base.")
            continue
        if _same_tensors(base, e):
            # The architecture's layout (tied heads, fused experts, vocabulary tensors) is asked only when
            # the tensors differ: building it imports the model's code and builds it on the meta device,
            # ~10 s of a 15 s Task Arithmetic merge of a 0.5B model, for nothing when every name and shape match.
            continue
        tied = _tied_mismatch(base, e)
        if tied:
            rep.problems.append(tied)
            continue
        fused = fused_format(base, e)
        if fused:
            rep.problems.append(fused)
            continue
        missing = sorted(set(base.tensors) - set(e.tensors))
        extra = sorted(set(e.tensors) - set(base.tensors))
        if missing or extra:
            what = f"lacks {quoted(missing[0])}" if missing else f"has an extra tensor {quoted(extra[0])}"
            rep.problems.append(f"{quoted(e.ref)} {what}; its tensor names do not match the base.")
            continue
        for k, bt in base.tensors.items():
            et = e.tensors[k]
            if et.shape == bt.shape:
                continue
            if vocab is None:
                vocab = vocab_tensors(base)
            if k in vocab and et.shape[1:] == bt.shape[1:] and et.shape[0] > bt.shape[0]:
                rep.vocab_extra[e.ref] = et.shape[0] - bt.shape[0]
                continue
            if k in vocab and et.shape[1:] == bt.shape[1:]:
                # the shapes alone did not say this is about the vocabulary
                rep.problems.append(f"{quoted(e.ref)} has a smaller vocabulary than the base ({et.shape[0]} rows in {quoted(k)}, "
                                    f"the base has {bt.shape[0]}); only an expert that adds tokens can be merged.")
                break
            rep.problems.append(f"{quoted(e.ref)} has {quoted(k)} of shape {list(et.shape)} but the base has {list(bt.shape)}.")
            break
        if e.ref in rep.vocab_extra:
            rep.notes.append(f"{quoted(e.ref)} adds {rep.vocab_extra[e.ref]} tokens to the vocabulary: shared rows are merged, its extra rows are kept as they are.")
    if not experts:
        rep.problems.append("No experts chosen: pick at least one model to merge into the base.")
    rep.ok = not rep.problems
    return rep


def _same_tensors(base: ModelInfo, e: ModelInfo) -> bool:
    """The same tensor names and shapes, and the same say on tied embeddings."""
    return (e.tensors.keys() == base.tensors.keys()
            and all(e.tensors[k].shape == t.shape for k, t in base.tensors.items())
            and _tie_flag(e.config) == _tie_flag(base.config))


def _tie_flag(config: dict):
    """tie_word_embeddings, where multimodal configs keep it too (under text_config)."""
    text = config.get("text_config")
    return (config.get("tie_word_embeddings"), text.get("tie_word_embeddings") if isinstance(text, dict) else None)


def _tied_mismatch(base: ModelInfo, e: ModelInfo) -> str | None:
    """One sentence when one model ties its output embedding to the input
    embedding and the other stores its own (the head tensor is in one checkpoint only)."""
    lb, le = layout(base), layout(e)
    if not (lb.known and le.known) or lb.tied == le.tied:
        return None
    tied, untied = (base, e) if lb.tied else (e, base)
    head = sorted(layout(untied).head & set(untied.tensors))
    what = f" ({quoted(head[0])})" if head else ""
    return (f"{quoted(untied.ref)} has its own output embedding{what} but {quoted(tied.ref)} ties it to the input "
            "embedding (tie_word_embeddings); they were not fine-tuned from one base, so they do not merge.")


def _row(m: ModelInfo, role: str) -> dict:
    return {"role": role, "model": m.ref, "architecture": m.architecture, "layers": m.n_layers,
            "vocab": m.vocab_size, "params (M)": round(m.n_params / 1e6, 2),
            "size (MB)": round(m.nbytes / 2**20, 1)}
