"""The Merge tab: the method's controls (one set per method, built from its
registry entry), merging into the session's live model (ui/merging.py), the history."""
from __future__ import annotations

import gradio as gr

from core.errors import UserError

from .. import controls as C
from .. import state as S
from ..board import HISTORY_OUTPUTS
from ..common import DEFAULT_EXPERTS, Named, guard
from ..merging import do_merge
from ..pictures import LOOK_OUTPUTS, after_merge


def method_summary(method) -> str:
    spec = C.spec_of(method)
    return f"**{spec.label}** — {spec.summary}" if spec.summary else f"**{spec.label}**"


def visibility(v: dict, request=None) -> dict:
    """Show the chosen method's controls (the others keep their values, hidden),
    and of those only the knobs its current settings use."""
    method = v.get("method") or C.default_method()
    out = {"summary": method_summary(method)}
    for name, spec in C.methods().items():
        glob = {p.name: v.get(C.key(name, p.name), p.default) for p in spec.params if not p.per_model}
        if any(p.per_model and C.shown(p) for p in spec.params):
            for i in range(C.N_EXPERTS):
                out[f"grp/{name}/{i}"] = gr.update(visible=name == method)
        if glob:
            out[f"grp/{name}"] = gr.update(visible=name == method)
        for (m, pname), _need in C.USED_WHEN.items():
            if m == name:
                for k in C.used_when_keys(name, pname):
                    out[k] = gr.update(visible=C.in_use(name, pname, glob))
    return out


def method_changed(v: dict, request=None) -> dict:
    """A new method: its controls, and the merge status no longer describes what the controls show."""
    out = visibility(v)
    sess = S.get(request)
    if sess.merged_recipe is not None and sess.merged_recipe["merge_method"] != v.get("method"):
        label = C.spec_of(v["method"]).label
        out["merge_status"] = f"Method: **{label}**. The live model still holds the last merge; press Merge."
    return out


def models_changed(v: dict, request=None) -> dict:
    return {"merge_status": "Models changed; press Merge.", "probe_status": "", "look_status": ""}


# ------------------------------------------------------------------ merge


def auto_merge(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Re-merge when a knob is released, once something has been merged:
    cached scores make it near-instant on small models. A release that
    changes nothing (the value it already had) merges nothing."""
    sess = S.get(request)
    if sess.model is None or sess.merged_recipe is None:
        return {}
    try:
        recipe = C.recipe_from_values(v)
    except UserError:
        recipe = None     # a half-filled form: do_merge says why
    entry = sess.live_entry()
    merge_n = f" (#{entry['n']})" if entry else ""
    if recipe is not None and recipe == sess.merged_recipe:
        # back where the live model is: nothing to merge, and the status says so again if it had said otherwise
        return {} if v.get("auto") else {"merge_status": f"The controls match the last merge{merge_n} again."}
    if not v.get("auto"):
        # the status must not go on describing a merge the controls no longer show
        return {"merge_status": f"Settings changed since the last merge{merge_n}; press Merge."}
    return do_merge(v, progress=progress, request=request)


def show_live(v: dict, request=None) -> dict:
    """The controls of the merge the live model holds, after a knob's value was refused (nothing before a merge,
    or when the live merge is another method's: its controls are hidden)."""
    sess = S.get(request)
    live = sess.merged_recipe
    if live is None or live["merge_method"] != v.get("method"):
        return {}
    entry = sess.live_entry()
    which = f" (#{entry['n']})" if entry else ""
    out = {k: x for k, x in C.values_from_recipe(live).items() if k in v}
    out["merge_status"] = f"That value was not merged; the controls show the live merge{which} again."
    return out


@guard
def restore_history(v: dict, request=None) -> dict:
    """Put a history entry's recipe back into the controls."""
    sess = S.get(request)
    return C.values_from_recipe(sess.entry_of(v.get("history_pick"))["recipe"])


# ------------------------------------------------------------------ layout
def _controls(ui: Named, spec, i: int | None, task: str | None, visible: bool) -> None:
    """The controls of one method: expert i's (per-expert parameters) or the globals (i None)."""
    params = [p for p in spec.params if C.shown(p) and p.per_model == (i is not None)]
    if not params:
        return
    grp = f"grp/{spec.name}" + (f"/{i}" if i is not None else "")
    with ui.add(grp, gr.Group(visible=visible)):
        with gr.Row() if i is None else gr.Column():
            for p in params:
                value = p.default_for(task) if i is not None else p.default
                elem = f"{spec.name}-{p.name}" + (f"-{i + 1}" if i is not None else "")
                ui.add(C.key(spec.name, p.name, i), C.component(p, value, elem))


def layout(ui: Named) -> None:
    m0 = C.default_method()
    with gr.Tab("Merge", id="merge"):
        ui.add("method", gr.Dropdown(C.method_choices(), value=m0, label="Merge method", elem_id="method"))
        ui.add("summary", gr.Markdown(method_summary(m0)))
        with gr.Row():
            for i in range(C.N_EXPERTS):
                with ui.add(f"box{i}", gr.Column(visible=bool(DEFAULT_EXPERTS[i][0]), elem_classes="expert-box")):
                    ui.add(f"head{i}", gr.Markdown())
                    for name, spec in C.methods().items():
                        _controls(ui, spec, i, DEFAULT_EXPERTS[i][1], name == m0)
        for name, spec in C.methods().items():
            _controls(ui, spec, None, None, name == m0)
        with gr.Row():
            ui.add("merge_btn", gr.Button("Merge", variant="primary", elem_id="merge-btn", scale=4))
            ui.add("auto", gr.Checkbox(True, label="re-merge on release", scale=1, elem_id="auto",
                                       info="after the first merge, every knob change merges again"))
        ui.add("merge_status", gr.Markdown(elem_id="merge-status"))
        with gr.Accordion("Merge history (this session)", open=False):
            ui.add("history", gr.Dataframe(headers=["#", "time", "merge", "seconds"], interactive=False,
                                           wrap=True, column_widths=["6%", "12%", "70%", "12%"],
                                           elem_id="history"))
            with gr.Row():
                ui.add("history_pick", gr.Dropdown([], label="Entry", scale=4, elem_id="history-pick"))
                ui.add("restore", gr.Button("Restore and merge", scale=1, elem_id="restore"))


def wire(ui: Named, demo) -> None:
    controls = ui.controls()
    look_outs = LOOK_OUTPUTS + ["look_status"]
    vis_outs = ["summary"] + ui.keys("grp/") + [k for (m, p) in C.USED_WHEN for k in C.used_when_keys(m, p)
                                                if k in ui.comp]
    ui.on(ui["method"].change, method_changed, controls, vis_outs + ["merge_status"], show_progress="hidden")
    models = [ui[k] for k in ("base", "expert0", "expert1", "expert2", "task0", "task1", "task2")]
    # the person changed a model: the statuses about the old ones no longer hold (.input: a tour step or a
    # restored recipe sets models too, and must not wipe the status of the merge it starts)
    ui.on([c.input for c in models], models_changed, [], ["merge_status", "probe_status", "look_status"],
          show_progress="hidden")
    for (m, _p), (g, _v) in C.USED_WHEN.items():
        ui.on(ui[C.key(m, g)].change, visibility, controls, vis_outs, show_progress="hidden")
    merged = ui.on(ui["merge_btn"].click, do_merge, controls, HISTORY_OUTPUTS, **ui.heavy)
    ui.on(merged.success, after_merge, controls, look_outs, **ui.heavy)
    for name in C.methods():
        # a knob's release sends only its method's controls: the merge reads nothing else
        mine = ui.method_controls(name)
        triggers = []
        for k in mine:
            if "." not in k:
                continue
            c = ui[k]
            triggers.append(c.release if isinstance(c, gr.Slider) else
                            (c.blur if isinstance(c, (gr.Textbox, gr.Number)) else c.input))
        if not triggers:
            continue
        re = ui.on(triggers, auto_merge, mine + ["auto"], HISTORY_OUTPUTS, trigger_mode="always_last",
                   show_progress="minimal", **ui.heavy)
        ui.on(re.success, after_merge, mine, look_outs, trigger_mode="always_last", **ui.heavy)
        # a refused value (r = 5 typed into a box whose slider then shows 1) or a failed re-merge: the controls
        # go back to what the live model holds instead of showing settings nobody merged
        ui.on(re.failure, show_live, mine, mine + ["merge_status"], show_progress="hidden")
    restored = ui.on(ui["restore"].click, restore_history, ["history_pick"], controls)
    merged = ui.on(restored.success, do_merge, controls, HISTORY_OUTPUTS, **ui.heavy)
    ui.on(merged.success, after_merge, controls, look_outs, **ui.heavy)
