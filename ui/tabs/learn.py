"""The Learn tab: a five-step tour; each step is one click that uses the other tabs' handlers."""
from __future__ import annotations

import time

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .. import learn as L
from ..board import BOARD_OUTPUTS, HISTORY_OUTPUTS, board_outputs
from ..chatting import send_from
from ..common import Named, experts_in, guard
from ..merging import do_merge, merge_into_session
from ..pictures import LOOK_OUTPUTS, after_merge, led_pictures, look_opened, open_tab
from ..probing import probe_live, probe_references, probe_request


def tour_family(v: dict):
    """The family the tour runs on: the Models tab's base's, the tiny one otherwise."""
    return service.family_of(v.get("base")) or service.families()["zoo"]


def learn_recipe(step: str, v: dict | None = None, request=None) -> dict:
    """Controls for a walkthrough step's merge, and the tab it opens (the Merge tab: its sliders are the lesson)."""
    fam = tour_family(v or {})
    if step == "ta":
        return {**C.values_from_recipe(L.ta_recipe(fam.prefix)), "tabs": open_tab("merge", request)}
    if step == "led":
        recipe = L.led_recipe(C.spec_of("led"), fam.prefix, fam.led_samples)
        return {**C.values_from_recipe(recipe), "tabs": open_tab("merge", request)}
    raise ValueError(step)


@guard
def compare_tour(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Step 5: probe every merge on the board that has no scores yet (the tour's Task Arithmetic and LED), the
    base and the parents, then leave the live model on the latest merge."""
    suites, limit, sess, cb = probe_request(v, progress, request)
    # the lesson is the conflict on the family's own tasks, in a minute: its held-out suites, not the
    # public benchmarks (minutes per model on a CPU, and near 0% math for a 135M model)
    sess.held_out = True
    t0 = time.perf_counter()
    with sess.lock:
        todo = [h for h in sess.history if not h.get("scores")]
        if not sess.history:
            raise UserError("Do steps 1 and 4 first: the board compares their merges.")
        latest = sess.merged_recipe
        for k, h in enumerate(todo):
            span = (k / (len(todo) + 1), (k + 1) / (len(todo) + 1))
            merge_into_session(sess, h["recipe"], lambda f, m, s=span: cb(s[0] + 0.2 * f * (s[1] - s[0]), m))
            probe_live(sess, suites, limit, lambda f, m, s=span: cb(s[0] + (0.2 + 0.8 * f) * (s[1] - s[0]), m))
        if latest is not None and sess.merged_recipe != latest:
            merge_into_session(sess, latest, lambda f, m: None)
        used = [(r, t) for _, r, t in experts_in(v) if r != sess.base_ref]
        probe_references(sess, used, suites, limit, lambda f, m: cb(len(todo) / (len(todo) + 1), m))
        out = board_outputs(sess)
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


def wire(ui: Named, demo) -> None:
    controls = ui.controls()
    look = LOOK_OUTPUTS + ["look_status"]
    for step in ("ta", "led"):
        d = ui.on(ui[f"learn-{step}"].click, lambda v, request=None, step=step: learn_recipe(step, v, request),
                  ["base"], controls + ["tabs"])
        d = ui.on(d.success, do_merge, controls, HISTORY_OUTPUTS, **ui.heavy)
        ui.on(d.success, after_merge, controls, look, **ui.heavy)
    d = ui.on(ui["learn-ask_harmful"].click,
              lambda v, request=None: {"prompt": service.example_prompts(v.get("base"))["harmful"],
                                       "tabs": open_tab("chat", request)},
              ["base"], ["prompt", "tabs"])
    send_from(ui, d.then)
    d = ui.on(ui["learn-overlap"].click, lambda v, request=None: {"tabs": open_tab("look", request)}, [], ["tabs"])
    # the tab opened by the tour, not by a click: draw what the earlier steps' merges changed, then LED's pictures
    d = ui.on(d.then, look_opened, controls, look, **ui.heavy)
    ui.on(d.then, led_pictures, controls, ["importance", "elected", "overlap", "look_status"], **ui.heavy)
    d = ui.on(ui["learn-compare"].click, lambda v, request=None: {"tabs": open_tab("probe", request)}, [], ["tabs"])
    ui.on(d.then, compare_tour, controls + ["suites", "limit", "suite_set"], BOARD_OUTPUTS + ["probe_status"], **ui.heavy)
