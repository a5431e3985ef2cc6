"""The Learn tab: a five-step tour; each step is one click that uses the other tabs' handlers."""
from __future__ import annotations

import time

import gradio as gr

from core import service

from .. import controls as C
from .. import learn as L
from .. import state as S
from ..board import BOARD_OUTPUTS, HISTORY_OUTPUTS, history_outputs, live_outputs
from ..chatting import send_from
from ..common import Named, experts_in, guard
from ..merging import do_merge, merge_and_record, merge_into_session
from ..pictures import LOOK_OUTPUTS, after_merge, led_pictures, look_opened, open_tab
from ..probing import measured_on, probe_live, probe_references, probe_request


def tour_family(v: dict):
    """The family the tour runs on: the Models tab's base's, the tiny one otherwise."""
    return service.family_of(v.get("base")) or service.families()["zoo"]


def learn_recipe(step: str, v: dict | None = None) -> dict:
    """Controls for a walkthrough step's merge (step 1: Task Arithmetic, step 4: LED) on the tour's family."""
    fam = tour_family(v or {})
    if step == "ta":
        return C.values_from_recipe(L.ta_recipe(fam.prefix))
    if step == "led":
        return C.values_from_recipe(L.led_recipe(C.spec_of("led"), fam.prefix, fam.led_samples))
    raise ValueError(step)


def open_merge(step: str):
    """A merge step's first event: its controls, and the Merge tab (its sliders are the lesson)."""
    def handler(v: dict, request=None) -> dict:
        return {**learn_recipe(step, v), "tabs": open_tab("merge", request)}
    handler.__name__ = f"tour_{step}"
    return handler


@guard
def ask_harmful(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Step 2: the harmful example in the prompt box and the Chat tab open; on a fresh page (nothing merged yet)
    it first makes step 1's merge, so the merged model has something to answer with."""
    out = {"prompt": service.example_prompts(v.get("base"))["harmful"], "tabs": open_tab("chat", request)}
    sess = S.get(request)
    if sess.model is None or sess.merged_recipe is None:
        ta = learn_recipe("ta", v)
        merged = do_merge({**v, **ta}, progress=progress, request=request)
        out.update(ta)
        out.update(merged)
        out["merge_status"] = "Step 1's merge, made by step 2 (nothing was merged yet): " + merged["merge_status"]
    return out


def tour_done(step: str):
    """After a step: the bar above the tabs says which step is done and offers the next (or a way back)."""
    keys = [k for k, _, _ in L.STEPS]
    k = keys.index(step)

    def title(j: int) -> str:
        return L.STEPS[j][1].split(" · ", 1)[1]       # "2 · Ask a harmful question…" -> its words

    def handler(v: dict, request=None) -> dict:
        nxt = keys[k + 1] if k + 1 < len(keys) else None
        text = f"**Tour** · step {k + 1} of {len(keys)} done: {title(k)}."
        text += " That was the last step; the compare board holds both merges." if nxt is None else \
            f" Next: {title(k + 1)}."
        return {"tour_bar": gr.update(visible=True), "tour_text": text,
                **{f"next-{s}": gr.update(visible=s == nxt) for s in keys[1:]}}
    handler.__name__ = f"done_{step}"
    return handler


@guard
def compare_tour(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Step 5: probe every merge on the board that has no scores yet (the tour's Task Arithmetic and LED), the
    base and the parents, then leave the live model on the latest merge. On a fresh page it first makes the
    merges of steps 1 and 4."""
    suites, limit, sess, cb = probe_request(v, progress, request)
    # the lesson is the conflict on the family's own tasks, in a minute: its held-out suites, not the
    # public benchmarks (minutes per model on a CPU, and near 0% math for a 135M model)
    sess.held_out = True
    t0 = time.perf_counter()
    with sess.lock:
        made = {}
        if not sess.history:
            # a fresh page: the board compares the merges of steps 1 and 4, so this step makes them first
            for k, step in enumerate(("ta", "led")):
                made = learn_recipe(step, v)
                merge_and_record(sess, C.recipe_from_values({**v, **made}),
                                 lambda f, m, k=k, n=(1, 4)[k]: cb(0.25 * (k + f), f"step {n}: {m}"))
        todo = [h for h in sess.history if not h.get("scores")]
        latest = sess.merged_recipe
        for k, h in enumerate(todo):
            span = (k / (len(todo) + 1), (k + 1) / (len(todo) + 1))
            merge_into_session(sess, h["recipe"], lambda f, m, s=span: cb(s[0] + 0.2 * f * (s[1] - s[0]), m))
            probe_live(sess, suites, limit, lambda f, m, s=span: cb(s[0] + (0.2 + 0.8 * f) * (s[1] - s[0]), m))
        if latest is not None and sess.merged_recipe != latest:
            merge_into_session(sess, latest, lambda f, m: None)
        used = [(r, t) for _, r, t in experts_in(v) if r != sess.base_ref]
        refs, others = probe_references(sess, used, suites, limit, lambda f, m: cb(len(todo) / (len(todo) + 1), m))
        # the table and scatter right under the status show the live merge (step 4's), its base and parents,
        # measured as the board is
        entry = sess.live_entry()
        live = entry.get("scores") if entry else None
        if live is None or measured_on(live)[0] != measured_on(others[0])[0]:
            live = probe_live(sess, suites, limit, lambda f, m: None)
        out = {**history_outputs(sess, plot=True), **live_outputs(sess, used, suites, live, refs, others)}
    if made:
        # the controls and the Merge tab show the live merge, step 4's
        out.update(made)
        out["merge_status"] = (f"✓ Steps 1 and 4's merges, made by step 5 (nothing was merged yet): "
                               f"#{sess.history[-2]['n']} and #{sess.history[-1]['n']}; #{sess.history[-1]['n']} "
                               "is the live model.")
    out["probe_status"] = (f"Compared {len(sess.history)} merges with the base and the parents "
                           f"({limit} prompts per suite of the family's held-out suites) in "
                           f"{time.perf_counter() - t0:.1f} s.")
    return out


def layout(ui: Named) -> None:
    with gr.Tab("Learn", id="learn"):
        gr.Markdown(L.INTRO)
        for key, label, text in L.STEPS:
            with gr.Row(equal_height=True):
                ui.add(f"learn-{key}", gr.Button(label, scale=1, elem_id=f"learn-{key}"))
                gr.Markdown(text)


def bar_layout(ui: Named) -> None:
    """Above the tabs, shown once a step has run: which step is done, the next one, the way back to Learn."""
    with ui.add("tour_bar", gr.Row(visible=False, elem_id="tour-bar", equal_height=True)):
        ui.add("tour_text", gr.Markdown(elem_id="tour-text"))
        for key, label, _text in L.STEPS[1:]:
            ui.add(f"next-{key}", gr.Button(f"Step {label.split(' · ')[0]} →", variant="primary", visible=False,
                                            size="sm", elem_id=f"next-{key}", scale=0, min_width=110))
        ui.add("tour_back", gr.Button("Back to Learn", size="sm", elem_id="tour-back", scale=0, min_width=110))


TOUR_BAR = ["tour_bar", "tour_text"] + [f"next-{k}" for k, _, _ in L.STEPS[1:]]


def wire(ui: Named, demo) -> None:
    controls = ui.controls()
    look = LOOK_OUTPUTS + ["look_status"]

    def step(key: str, trigger) -> None:
        """One step's chain, from a Learn button or the bar's Next; the bar follows when it has run."""
        if key in ("ta", "led"):
            d = ui.on(trigger, open_merge(key), ["base"], controls + ["tabs"])
            d = ui.on(d.success, do_merge, controls, HISTORY_OUTPUTS, **ui.heavy)
            d = ui.on(d.success, after_merge, controls, look, **ui.heavy)
        elif key == "ask_harmful":
            d = ui.on(trigger, ask_harmful, controls, ["prompt", "tabs"] + controls + HISTORY_OUTPUTS, **ui.heavy)
            d = send_from(ui, d.success)
        elif key == "overlap":
            d = ui.on(trigger, lambda v, request=None: {"tabs": open_tab("look", request)}, [], ["tabs"])
            # the tab opened by the tour, not by a click: draw what the earlier steps' merges changed, then LED's
            d = ui.on(d.then, look_opened, controls, look, **ui.heavy)
            d = ui.on(d.then, led_pictures, controls, ["importance", "elected", "overlap", "look_status"], **ui.heavy)
        else:
            d = ui.on(trigger, lambda v, request=None: {"tabs": open_tab("probe", request)}, [], ["tabs"])
            d = ui.on(d.then, compare_tour, controls + ["suites", "limit", "suite_set"],
                      list(dict.fromkeys(BOARD_OUTPUTS + HISTORY_OUTPUTS + controls +
                                         ["probe_table", "plot_probe", "probe_status"])), **ui.heavy)
        ui.on(d.success, tour_done(key), [], TOUR_BAR, show_progress="hidden")

    for key, _label, _text in L.STEPS:
        step(key, ui[f"learn-{key}"].click)
        if f"next-{key}" in ui.comp:
            step(key, ui[f"next-{key}"].click)
    ui.on(ui["tour_back"].click, lambda v, request=None: {"tabs": open_tab("learn", request)}, [], ["tabs"])
