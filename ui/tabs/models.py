"""The Models tab: the base and experts, and their compatibility read from headers."""
from __future__ import annotations

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .common import Named, _short, guard

DEFAULT_EXPERTS = [("zoo:safety", "safety"), ("zoo:math", "math"), (C.NONE, "code")]
MODEL_INPUTS = ["base"] + [f"{w}{i}" for i in range(C.N_EXPERTS) for w in ("expert", "task")]


@guard
def check_models(v: dict, request=None) -> dict:
    """Compatibility from config + headers only; nothing is loaded."""
    used = C.used_experts(C.experts_of(v))
    base = (v.get("base") or "").strip()
    if not base:
        return {"report": "⚠ Pick a base model.", "report_table": []}
    if not used:
        return {"report": "⚠ Pick at least one expert.", "report_table": []}
    try:
        rep = service.compatibility(base, [ref for _, ref, _ in used])
    except UserError as exc:
        return {"report": f"✗ {exc}", "report_table": []}
    rows = [[r.get("role"), r.get("model"), r.get("architecture"), r.get("layers"), r.get("vocab"),
             r.get("params (M)"), r.get("size (MB)")] for r in rep.rows]
    if rep.ok:
        arch = f" {rep.architecture}" if rep.architecture else ""
        text = f"✓ **Compatible**:{arch}, the same tensor names and shapes in every model. Nothing has been loaded yet."
    else:
        text = "✗ " + " ".join(rep.problems)
    if rep.notes:
        text += "\n\n" + "\n".join(f"Note: {n}" for n in rep.notes)
    return {"report": text, "report_table": rows}


def expert_headers(v: dict, request=None) -> dict:
    """Per-expert boxes on the Merge tab and chat columns follow the chosen experts."""
    out = {}
    for i, (ref, task) in enumerate(C.experts_of(v)):
        ref = (ref or "").strip()
        out[f"box{i}"] = gr.update(visible=bool(ref))
        out[f"head{i}"] = f"**Expert {i + 1}: {ref}** · task *{task}*" if ref else ""
        out[f"chat{i + 1}"] = gr.update(visible=bool(ref), label=f"{_short(ref)} ({task})" if ref else "")
    return out


def family(n: int) -> dict:
    vals = [("zoo:safety", "safety"), ("zoo:math", "math"), ("zoo:code", "code")][:n]
    vals += [(C.NONE, "code")] * (C.N_EXPERTS - n)
    out = {"base": "zoo:base"}
    for i, (ref, task) in enumerate(vals):
        out[f"expert{i}"], out[f"task{i}"] = ref, task
    return out


def task_changed(i: int):
    """A new task for expert i moves every method's by-task defaults (LED's r) to that task's."""
    def handler(v: dict, request=None) -> dict:
        task = v.get(f"task{i}")
        return {C.key(name, p.name, i): p.default_for(task)
                for name, spec in C.methods().items() for p in spec.params if p.per_model and p.by_task}
    return handler


def layout(ui: Named) -> None:
    with gr.Tab("Models", id="models"):
        gr.Markdown("The built-in tiny family works offline: `zoo:base` and three experts fine-tuned from it. "
                    "You can also type a local folder or a Hugging Face Hub id.")
        ui.add("base", gr.Dropdown(C.ZOO, value="zoo:base", allow_custom_value=True, label="Base model",
                                   elem_id="base"))
        for i in range(C.N_EXPERTS):
            with gr.Row():
                ui.add(f"expert{i}", gr.Dropdown([("— none —", C.NONE)] + [(z, z) for z in C.ZOO[1:]],
                                                 value=DEFAULT_EXPERTS[i][0], allow_custom_value=True,
                                                 label=f"Expert {i + 1}", scale=3, elem_id=f"expert{i + 1}"))
                ui.add(f"task{i}", gr.Dropdown(C.TASKS, value=DEFAULT_EXPERTS[i][1], label="task", scale=1,
                                               elem_id=f"task{i + 1}"))
        with gr.Row():
            ui.add("fam2", gr.Button("Built-in: safety + math", size="sm", elem_id="fam2"))
            ui.add("fam3", gr.Button("Built-in: safety + math + code", size="sm", elem_id="fam3"))
            ui.add("check", gr.Button("Check compatibility", variant="secondary", size="sm", elem_id="check"))
        ui.add("report", gr.Markdown(elem_id="model-report"))
        ui.add("report_table", gr.Dataframe(headers=["role", "model", "architecture", "layers", "vocab",
                                                     "params (M)", "size (MB)"], interactive=False,
                                            label="Read from config.json and safetensors headers only"))


def wire(ui: Named, demo) -> None:
    report = ["report", "report_table"]
    heads = [f"{w}{i}" for i in range(C.N_EXPERTS) for w in ("box", "head")] + \
        [f"chat{i + 1}" for i in range(C.N_EXPERTS)]
    ui.on(demo.load, check_models, MODEL_INPUTS, report)
    ui.on(demo.load, expert_headers, MODEL_INPUTS, heads)
    models = [ui[k] for k in MODEL_INPUTS]
    # a changed model clears the old verdict at once (a report about other models would be stale)
    ui.on([c.change for c in models], check_models, MODEL_INPUTS, report, trigger_mode="always_last",
          show_progress="hidden")
    ui.on([c.change for c in models], expert_headers, MODEL_INPUTS, heads, trigger_mode="always_last",
          show_progress="hidden")
    ui.on(ui["check"].click, check_models, MODEL_INPUTS, report)
    for n in (2, 3):
        ui.on(ui[f"fam{n}"].click, lambda v, request=None, n=n: family(n), [], MODEL_INPUTS)
    for i in range(C.N_EXPERTS):
        by_task = [C.key(name, p.name, i) for name, spec in C.methods().items() for p in spec.params
                   if p.per_model and p.by_task]
        ui.on(ui[f"task{i}"].input, task_changed(i), [f"task{i}"], by_task)
