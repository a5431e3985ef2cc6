"""The Models tab: compatibility from headers, and the expert boxes that follow the chosen experts."""
from __future__ import annotations


import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .common import _short, guard


# ------------------------------------------------------------------ models
@guard
def check_models(base, *experts_tasks):
    """Compatibility from config + headers only; nothing is loaded."""
    experts = [(experts_tasks[2 * i], experts_tasks[2 * i + 1]) for i in range(C.N_EXPERTS)]
    used = C.used_experts(experts)
    if not (base or "").strip():
        return "⚠ Pick a base model.", []
    if not used:
        return "⚠ Pick at least one expert.", []
    try:
        rep = service.compatibility(base.strip(), [ref for _, ref, _ in used])
    except UserError as exc:
        return f"✗ {exc}", []
    rows = [[r.get("role"), r.get("model"), r.get("architecture"), r.get("layers"), r.get("vocab"),
             r.get("params (M)"), r.get("size (MB)")] for r in rep.rows]
    if rep.ok:
        text = "✓ **Compatible**: same architecture, tensor names and shapes. Nothing has been loaded yet."
    else:
        text = "✗ " + " ".join(rep.problems)
    if rep.notes:
        text += "\n\n" + "\n".join(f"Note: {n}" for n in rep.notes)
    return text, rows


def expert_headers(base, *experts_tasks):
    """Per-expert slider boxes and chat columns follow the chosen experts."""
    experts = [(experts_tasks[2 * i], experts_tasks[2 * i + 1]) for i in range(C.N_EXPERTS)]
    boxes, heads, chats = [], [], []
    for i, (ref, task) in enumerate(experts):
        ref = (ref or "").strip()
        boxes.append(gr.update(visible=bool(ref)))
        heads.append(f"**Expert {i + 1}: {ref}** · task *{task}*" if ref else "")
        chats.append(gr.update(visible=bool(ref), label=f"{_short(ref)} ({task})" if ref else ""))
    return boxes + heads + chats


