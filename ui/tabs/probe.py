"""The Probe tab: quick probes, the safety-vs-utility scatter, the compare board (every merge of the
session, the base and the parents in one table and one scatter; an entry can be restored into the controls,
deleted, or probed in one click), sweeps."""
from __future__ import annotations

import time

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .. import figures as F
from .. import gpu as G
from .. import state as S
from ..board import BOARD_OUTPUTS, HEADERS, HISTORY_OUTPUTS, board_outputs, history_outputs, live_outputs
from ..common import Named, experts_in, guard, progress_bar, sentence, short_name
from ..merging import merge_into_session
from ..probing import (BENCHMARKS, HELD_OUT, PROBE_LIMIT, SUITES, check_limit, check_suites, metric, points_of,
                       probe_live, probe_parents, probe_references, probe_request, score_cells, suites_for,
                       take_suite_set, utility, utility_label, utility_suites)


@guard
def run_probes(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Quick probes of the merged model, the base and each parent: table + scatter."""
    suites, limit, sess, cb = probe_request(v, progress, request)
    if sess.model is None or sess.merged_recipe is None:
        # a status, not an error: before a merge there is nothing wrong, only nothing to probe yet
        return {"probe_status": sess.needs_merge("Merge first (Merge tab); the probes compare the merged model "
                                                 "with its base and parents.")}
    used = [(r, t) for _, r, t in experts_in(v) if r != sess.base_ref]
    t0 = time.perf_counter()
    with sess.lock:
        merged = probe_live(sess, suites, limit, lambda f, m: cb(f / (2 + len(used)), m))
        ran: list = []
        refs, others = probe_references(sess, used, suites, limit,
                                        lambda f, m: cb((1 + f * (1 + len(used))) / (2 + len(used)), m), ran)
        board = board_outputs(sess)
    wall = time.perf_counter() - t0
    live = live_outputs(sess, used, suites, merged, refs, others)
    named = len(refs) + 1
    cb(1.0, "done")
    # the number says which merge these rows belong to once the live model has moved on (#n in its status)
    entry = sess.live_entry()
    which_merge = f"merge #{entry['n']}" if entry else "the merged model"
    return {**live, **board,
            "probe_status": f"Probed {which_merge}, its base and parents: {limit} prompts per suite "
                            f"({', '.join(suites)}); {1 + len(ran)} of {named} models probed now, "
                            f"{named - 1 - len(ran)} remembered from earlier probes, in {wall:.2f} s."}


def sweep_options(v: dict, request=None) -> dict:
    """The knobs a sweep can turn, for the current method, settings and experts (never a toast)."""
    try:
        choices = C.sweep_choices(v)
    except Exception as exc:
        sentence(exc)
        return {}
    keep = v.get("sweep_key") if v.get("sweep_key") in [k for _, k in choices] else None
    return {"sweep_key": gr.update(choices=choices, value=keep or (choices[0][1] if choices else None))}


@guard
def sweep_bounds(v: dict, request=None) -> dict:
    k = v.get("sweep_key")
    if not k:
        return {}
    lo, hi, _ = C.sweep_range(k)
    return {"sweep_lo": lo, "sweep_hi": hi}


@guard
def run_sweep(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Merge and probe at evenly spaced values of one knob; the curve is the trade-off."""
    k = v.get("sweep_key")
    if not k:
        raise UserError("Pick the knob to sweep.")
    suites = check_suites(v.get("suites"))
    steps = int(v.get("sweep_steps") or 4)
    if steps < 2:
        raise UserError("A sweep needs at least 2 steps.")
    try:
        lo, hi = float(v.get("sweep_lo")), float(v.get("sweep_hi"))
    except (TypeError, ValueError):
        raise UserError("The sweep's 'from' and 'to' must be numbers.")
    p = C.param_of(k)
    if (p.lo is not None and min(lo, hi) < p.lo) or (p.hi is not None and max(lo, hi) > p.hi):
        raise UserError(f"The sweep of {p.name} must stay between {p.lo:g} and {p.hi:g}.")
    label = next((lab for lab, kk in C.sweep_choices(v) if kk == k), None)
    if label is None:
        raise UserError("That knob does nothing with the current method and settings; pick one from the list.")
    C.recipe_from_values(v)       # a half-filled form is refused before anything merges
    experts = C.experts_of(v)
    which = utility_suites([t for _, _, t in C.used_experts(experts)], suites)
    grid = [lo + (hi - lo) * j / (steps - 1) for j in range(steps)]
    if p.kind == "int":
        grid = sorted({int(round(x)) for x in grid})
    limit = check_limit(v.get("limit"))
    sess = S.get(request)
    take_suite_set(sess, v)
    cb = progress_bar(progress)
    points = []
    t0 = time.perf_counter()
    with sess.lock:
        restore = sess.merged_recipe
        try:
            for j, x in enumerate(grid):
                r = C.recipe_from_values(C.with_value(v, k, x))
                span = (j / len(grid), (j + 1) / len(grid))
                merge_into_session(sess, r, lambda f, m, s=span, x=x: cb(s[0] + 0.5 * f * (s[1] - s[0]),
                                                                         f"{p.name}={x:g}: {m}"))
                res = G.probe_model(sess.model, sess.tokenizer, suites_for(sess, suites), limit,
                                    lambda f, m="", s=span, x=x: cb(s[0] + (0.5 + 0.5 * f) * (s[1] - s[0]),
                                                                   f"{p.name}={x:g}: {m}"))
                points.append({"value": x, "safety": metric(res, "harmful", "refusal_rate"),
                               "utility": utility(res, which), "res": res})
        finally:
            if restore is not None:   # the live model goes back to what the Merge tab shows
                merge_into_session(sess, restore, lambda f, m: None)
            else:
                # no merge before the sweep: its last point is no merge of the user's (no history entry),
                # so the chat, the probes and Export must not take it for one
                sess.merged_recipe = sess.result = None
        used = [(r, t) for _, r, t in C.used_experts(experts) if r != sess.base_ref]
        parents = probe_parents(sess, [r for r, _ in used], suites, limit, cb)
    wall = time.perf_counter() - t0
    pars = points_of([(short_name(r), t, res) for (r, t), res in zip(used, parents)], which)
    fig = F.sweep(points, pars, p.name, f"Trade-off as {label} goes from {lo:g} to {hi:g}", utility_label(which))
    rows = [[f"{pt['value']:g}", *score_cells(pt["res"])] for pt in points]
    flat = len({(pt["safety"], pt["utility"]) for pt in points}) == 1
    note = (f" Every value gave the same scores: at these settings {p.name} does not change what the probes "
            "measure (try a wider range or more prompts).") if flat else ""
    cb(1.0, "done")
    return {"plot_sweep": fig, "sweep_table": rows,
            "probe_status": f"Swept {label} over {len(grid)} values ({limit} prompts per suite) in {wall:.1f} s."
                            + note}


def suites_line(v: dict, request=None) -> dict:
    """Which suites the ticked kinds mean for the chosen family and prompt set (they differ per family),
    and whether the family has a choice of prompt sets."""
    names = service.probe_suites_for(v.get("base"), [s for s in (v.get("suites") or []) if s in SUITES],
                                     held_out=v.get("suite_set") == HELD_OUT)
    about = " · ".join(service.suite_lines(names)) if names else ""
    long = [n for n in names if service.suite_budget(n) >= 256]
    if long and not service.has_gpu():
        # measured: SmolLM2 on 2 cores, 40 prompts per suite, ~5-7 min per model (bench/README.md)
        about += (f"  \n⏱ {', '.join(long)} ask{'s' if len(long) == 1 else ''} for long answers (reasoning, whole "
                  "functions): on this CPU expect "
                  "minutes per model; fewer prompts per suite, or the held-out suites, take seconds.")
    return {"suites_about": about,
            "suite_set": gr.update(visible=service.has_suite_choice(v.get("base")))}


# ------------------------------------------------------------------ the compare board
@guard
def delete_entry(v: dict, request=None) -> dict:
    sess = S.get(request)
    entry = sess.entry_of(v.get("board_pick"))
    sess.history.remove(entry)
    return {**history_outputs(sess, plot=True), "probe_status": f"Deleted #{entry['n']} from the board."}


@guard
def restore_entry(v: dict, request=None) -> dict:
    sess = S.get(request)
    return C.values_from_recipe(sess.entry_of(v.get("board_pick"))["recipe"])


@guard
def probe_entry(v: dict, progress=gr.Progress(), request=None) -> dict:
    """One click: the entry is merged into the live model again, probed, and its controls restored."""
    suites, limit, sess, cb = probe_request(v, progress, request)
    t0 = time.perf_counter()
    with sess.lock:
        entry = sess.entry_of(v.get("board_pick"))
        if sess.merged_recipe != entry["recipe"]:
            merge_into_session(sess, entry["recipe"], lambda f, m: cb(0.3 * f, m))
        probe_live(sess, suites, limit, lambda f, m: cb(0.3 + 0.7 * f, m))
        out = history_outputs(sess, plot=True)
    out.update(C.values_from_recipe(entry["recipe"]))
    out["probe_status"] = f"Probed #{entry['n']} ({limit} prompts per suite) in {time.perf_counter() - t0:.1f} s."
    # the Merge tab must not go on saying another merge is live
    out["merge_status"] = (f"✓ #{entry['n']} is the live model again ('Probe it' on the compare board): "
                           f"{entry['label']}.")
    return out


def board_layout(ui: Named) -> None:
    with gr.Accordion("Compare board: every merge of this session", open=True):
        ui.add("board", gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="board",
                                     column_widths=["6%", "32%", "10%", "10%", "10%", "10%", "22%"]))
        with gr.Row():
            ui.add("board_pick", gr.Dropdown([], label="Entry", scale=4, elem_id="board-pick"))
            ui.add("board_probe", gr.Button("Probe it", scale=1, variant="primary", elem_id="board-probe"))
            ui.add("board_restore", gr.Button("Restore it", scale=1, elem_id="board-restore"))
            ui.add("board_delete", gr.Button("Delete it", scale=1, elem_id="board-delete"))
        ui.add("board_plot", gr.Plot(F.empty("Probe a merge to place it on the board."), show_label=False,
                                     elem_id="plot-board"))
        gr.Markdown("Each star is one merge of this session (its number is its row); circles are the base and the "
                    "parents. Top right is best.", elem_classes="caption")


def layout(ui: Named) -> None:
    with gr.Tab("Probe", id="probe"):
        gr.Markdown("Prompts the models never saw in training: samples of public benchmarks (HarmBench, XSTest, "
                    "GSM8K, HumanEval) for real LMs, the family's own held-out suites for the tiny one. Safety = "
                    "harmful requests refused; over-refusal = harmless requests refused; utility = the skills a "
                    "merge was made for (math solved, code tests passed; their mean when it merges both).")
        with gr.Row():
            ui.add("suites", gr.CheckboxGroup(SUITES, value=SUITES, label="Suites", elem_id="suites"))
            ui.add("limit", gr.Slider(4, 96, value=PROBE_LIMIT, step=4, label="prompts per suite", elem_id="limit"))
            ui.add("suite_set", gr.Radio([BENCHMARKS, HELD_OUT], value=BENCHMARKS, label="prompts", visible=False,
                                         elem_id="suite-set"))
        ui.add("suites_about", gr.Markdown(elem_id="suites-about", elem_classes="caption"))
        ui.add("probe_btn", gr.Button("Run probes", variant="primary", elem_id="probe-btn"))
        ui.add("probe_status", gr.Markdown(elem_id="probe-status"))
        ui.add("probe_table", gr.Dataframe(headers=["model", "role", "refuses harmful", "over-refuses benign",
                                                    "math solved", "code passes", "seconds (when probed)"],
                                           interactive=False, elem_id="probe-table"))
        ui.add("plot_probe", gr.Plot(F.empty("Run probes to place the models here."), show_label=False,
                                     elem_id="plot-probe"))
        gr.Markdown("Top right is best: refuses harmful requests and still solves tasks.", elem_classes="caption")
        board_layout(ui)
        with gr.Accordion("Sweep: draw the trade-off", open=True):
            with gr.Row():
                ui.add("sweep_key", gr.Dropdown([], label="knob", elem_id="sweep-key", scale=3))
                ui.add("sweep_lo", gr.Number(0.0, label="from", scale=1, elem_id="sweep-lo"))
                ui.add("sweep_hi", gr.Number(1.0, label="to", scale=1, elem_id="sweep-hi"))
                ui.add("sweep_steps", gr.Slider(2, 9, value=4, step=1, label="steps", scale=2, elem_id="sweep-steps"))
            ui.add("sweep_btn", gr.Button("Run sweep", elem_id="sweep-btn"))
            with gr.Row():
                ui.add("plot_sweep", gr.Plot(F.empty("Run a sweep to draw the safety–utility trade-off."),
                                             show_label=False, elem_id="plot-sweep", scale=3))
                ui.add("sweep_table", gr.Dataframe(headers=["value", "refuses harmful", "over-refuses", "math", "code"],
                                                   interactive=False, scale=2, elem_id="sweep-table"))
            gr.Markdown("Each marker is one merge; its label is the knob's value. The line shows what you "
                        "trade when you turn the knob.", elem_classes="caption")


PROBE_INPUTS = ["suites", "limit", "suite_set"]


def wire(ui: Named, demo) -> None:
    controls = ui.controls()
    ui.on(ui["probe_btn"].click, run_probes, controls + PROBE_INPUTS,
          ["probe_table", "plot_probe", "probe_status"] + BOARD_OUTPUTS, **ui.heavy)
    steer = [ui[k].change for k in controls if k in ("method", "expert0", "expert1", "expert2")
             or any(k == C.key(m, g) for (m, _p), (g, _v) in C.USED_WHEN.items())]
    ui.on(steer, sweep_options, controls + ["sweep_key"], ["sweep_key"], trigger_mode="always_last",
          show_progress="hidden")
    ui.on(demo.load, sweep_options, controls + ["sweep_key"], ["sweep_key"])
    ui.on([demo.load, ui["base"].change, ui["suites"].change, ui["suite_set"].change], suites_line,
          ["base", "suites", "suite_set"], ["suites_about", "suite_set"], trigger_mode="always_last",
          show_progress="hidden")
    ui.on(ui["sweep_key"].change, sweep_bounds, ["sweep_key"], ["sweep_lo", "sweep_hi"])
    ui.on(ui["sweep_btn"].click, run_sweep, controls + PROBE_INPUTS + ["sweep_key", "sweep_lo", "sweep_hi", "sweep_steps"],
          ["plot_sweep", "sweep_table", "probe_status"], **ui.heavy)
    board_wire(ui)


def board_wire(ui: Named) -> None:
    controls = ui.controls()
    ui.on(ui["board_probe"].click, probe_entry, controls + ["board_pick", "suites", "limit", "suite_set"],
          HISTORY_OUTPUTS + ["board_plot", "probe_status"] + controls, show_progress_on=ui["probe_status"],
          **ui.heavy)
    ui.on(ui["board_restore"].click, restore_entry, ["board_pick"], controls)
    ui.on(ui["board_delete"].click, delete_entry, ["board_pick"], HISTORY_OUTPUTS + ["board_plot", "probe_status"])
