"""The Probe tab: quick probes, the safety-vs-utility scatter, sweeps."""
from __future__ import annotations


import time

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .. import figures as F
from .. import gpu as G
from .. import state as S
from .merge import live_entry, merge_into_session
from ..common import Named, _experts, _progress, _sentence, _short, guard


SUITES = ["harmful", "benign", "math", "code"]
PROBE_LIMIT = 24
# a real family is probed on public benchmarks by default; its own held-out suites show what its experts
# were trained for (SmolLM2's math expert: 82% of smol-math, near 0% of GSM8K)
BENCHMARKS, HELD_OUT = "public benchmarks", "the family's held-out suites"
UTILITY_METRICS = {"math": "accuracy", "code": "pass_rate"}

# ------------------------------------------------------------------ probes
def _metric(res: dict, suite: str, key: str):
    s = res.get("suites", {}).get(suite)
    return None if s is None else s.get(key)


def _utility_suites(tasks, suites) -> list[str]:
    """The utility suites that count: those of the experts' tasks (a safety +
    math merge is judged on math, not on code nobody taught it), or every
    utility suite run when no expert has a math or code task."""
    run = [s for s in UTILITY_METRICS if s in suites]
    mine = [s for s in run if s in set(tasks)]
    return mine or run


def _utility(res: dict, which: list[str]) -> float | None:
    vals = [_metric(res, s, UTILITY_METRICS[s]) for s in which]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _utility_label(which: list[str]) -> str:
    names = {"math": "math solved", "code": "code tests passed"}
    return "utility: " + (" / ".join(names[s] for s in which) if which else "none probed")


def _pct(v) -> str:
    return "—" if v is None else f"{v:.0%}"


def _probe_parents(sess: S.Session, refs: list[str], suites: list[str], limit: int, cb,
                   ran: list | None = None) -> list[dict]:
    """Probe results of reference models (the base, the parents): computed once per process (service);
    the names of those probed now (not remembered from earlier) are added to ``ran``."""
    from core.eval import chat
    if sess.cache is None:
        sess.cache = chat.ModelCache()

    def run(jobs, *a, **k):
        if ran is not None:
            ran.extend(name for _, _, name in jobs)
        return G.probe_models(jobs, *a, **k)
    # the session's model cache holds the chat's parents: loading the same set reuses them; the probing
    # runs where the GPU is (a ZeroGPU worker), the results are remembered here
    return service.probe_references(refs, _named(sess, suites), limit, sess.cache.load, progress=cb, run=run)


def _named(sess: S.Session, kinds: list[str]) -> str:
    """The suites measuring ``kinds`` for this session's models: the public benchmarks' samples, or their
    family's held-out suites (the tiny family has only those)."""
    return ",".join(service.probe_suites_for(sess.base_ref, kinds, held_out=sess.held_out))


def _take_suite_set(sess: S.Session, v: dict) -> None:
    sess.held_out = v.get("suite_set") == HELD_OUT


def _probe_row(name: str, role: str, res: dict) -> list:
    return [name, role, _pct(_metric(res, "harmful", "refusal_rate")), _pct(_metric(res, "benign", "over_refusal_rate")),
            _pct(_metric(res, "math", "accuracy")), _pct(_metric(res, "code", "pass_rate")),
            round(float(res.get("seconds", 0.0)), 1)]


def _check_suites(suites) -> list[str]:
    suites = [s for s in (suites or []) if s in SUITES]
    if not suites:
        raise UserError("Tick at least one probe suite.")
    return suites


def probe_live(sess: S.Session, suites: list[str], limit: int, cb) -> dict:
    """Probe the live merged model and keep the scores on its history entry (the compare board shows them)."""
    res = G.probe_model(sess.model, sess.tokenizer, _named(sess, suites), limit,
                        lambda f, m="": cb(f, f"merged model: {m}"))
    entry = live_entry(sess)
    if entry is not None:
        entry["scores"] = res
    return res


def probe_request(v: dict, progress, request) -> tuple[list[str], int, S.Session, object]:
    """What every probing handler starts from: checked suites and limit, the session (with the prompt
    set chosen), the progress callback."""
    suites, limit, sess = _check_suites(v.get("suites")), _check_limit(v.get("limit")), S.get(request)
    _take_suite_set(sess, v)
    return suites, limit, sess, _progress(progress)


def probe_references(sess: S.Session, used: list[tuple[str, str]], suites: list[str], limit: int, cb,
                     ran: list | None = None) -> tuple:
    """Probe the base and the parents ``used`` [(ref, task)] (cached per process) and put them on the
    board; (refs, results)."""
    refs = [sess.base_ref] + [r for r, _ in used]
    res = _probe_parents(sess, refs, suites, limit, cb, ran)
    for ref, role, r in zip(refs, ["base"] + [t for _, t in used], res):
        sess.board_refs[ref] = (role, r)
    return refs, res


def points_of(rows: list[tuple[str, str, dict]], which: list[str]) -> list[dict]:
    return [{"name": name, "kind": kind, "safety": _metric(res, "harmful", "refusal_rate"),
             "utility": _utility(res, which)} for name, kind, res in rows]


@guard
def run_probes(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Quick probes of the merged model, the base and each parent: table + scatter."""
    from .compare import board_outputs
    suites, limit, sess, cb = probe_request(v, progress, request)
    if sess.model is None or sess.merged_recipe is None:
        # a status, not an error: before a merge there is nothing wrong, only nothing to probe yet
        return {"probe_status": sess.needs_merge("Merge first (Merge tab); the probes compare the merged model "
                                                 "with its base and parents.")}
    used = [(r, t) for _, r, t in _experts(v) if r != sess.base_ref]
    t0 = time.perf_counter()
    with sess.lock:
        merged = probe_live(sess, suites, limit, lambda f, m: cb(f / (2 + len(used)), m))
        ran: list = []
        refs, others = probe_references(sess, used, suites, limit,
                                        lambda f, m: cb((1 + f * (1 + len(used))) / (2 + len(used)), m), ran)
        board = board_outputs(sess)
    wall = time.perf_counter() - t0
    which = _utility_suites([t for _, t in used], suites)
    label = f"merged ({C.spec_of(sess.merged_recipe['merge_method']).label})"
    named = [(label, "merged", merged), (_short(refs[0]), "base", others[0])] + \
        [(_short(r), t, res) for (r, t), res in zip(used, others[1:])]
    rows = [_probe_row(n, k, res) for n, k, res in named]
    fig = F.probe_scatter(points_of([("merged", k, res) if k == "merged" else (n, k, res) for n, k, res in named], which),
                          "Safety vs utility: merged model (★), its base and its parents", _utility_label(which))
    cb(1.0, "done")
    # the number says which merge these rows belong to once the live model has moved on (#n in its status)
    entry = live_entry(sess)
    which_merge = f"merge #{entry['n']}" if entry else "the merged model"
    return {"probe_table": rows, "plot_probe": fig, **board,
            "probe_status": f"Probed {which_merge}, its base and parents: {limit} prompts per suite "
                            f"({', '.join(suites)}); {1 + len(ran)} of {len(named)} models probed now, "
                            f"{len(named) - 1 - len(ran)} remembered from earlier probes, in {wall:.2f} s."}


def _check_limit(limit) -> int:
    try:
        n = int(limit if limit is not None else PROBE_LIMIT)
    except (TypeError, ValueError):
        raise UserError("The number of prompts per suite must be a whole number.")
    if not 1 <= n <= 1000:
        raise UserError(f"The number of prompts per suite must be between 1 and 1000; got {n}.")
    return n


def sweep_options(v: dict, request=None) -> dict:
    """The knobs a sweep can turn, for the current method, settings and experts (never a toast)."""
    try:
        choices = C.sweep_choices(v)
    except Exception as exc:
        _sentence(exc)
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
    suites = _check_suites(v.get("suites"))
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
    which = _utility_suites([t for _, _, t in C.used_experts(experts)], suites)
    grid = [lo + (hi - lo) * j / (steps - 1) for j in range(steps)]
    if p.kind == "int":
        grid = sorted({int(round(x)) for x in grid})
    limit = _check_limit(v.get("limit"))
    sess = S.get(request)
    _take_suite_set(sess, v)
    cb = _progress(progress)
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
                res = G.probe_model(sess.model, sess.tokenizer, _named(sess, suites), limit,
                                    lambda f, m="", s=span, x=x: cb(s[0] + (0.5 + 0.5 * f) * (s[1] - s[0]),
                                                                   f"{p.name}={x:g}: {m}"))
                points.append({"value": x, "safety": _metric(res, "harmful", "refusal_rate"),
                               "utility": _utility(res, which), "res": res})
        finally:
            if restore is not None:   # the live model goes back to what the Merge tab shows
                merge_into_session(sess, restore, lambda f, m: None)
            else:
                # no merge before the sweep: its last point is no merge of the user's (no history entry),
                # so the chat, the probes and Export must not take it for one
                sess.merged_recipe = sess.result = None
        used = [(r, t) for _, r, t in C.used_experts(experts) if r != sess.base_ref]
        parents = _probe_parents(sess, [r for r, _ in used], suites, limit, cb)
    wall = time.perf_counter() - t0
    pars = points_of([(_short(r), t, res) for (r, t), res in zip(used, parents)], which)
    fig = F.sweep(points, pars, p.name, f"Trade-off as {label} goes from {lo:g} to {hi:g}", _utility_label(which))
    rows = [[f"{pt['value']:g}", _pct(pt["safety"]), _pct(_metric(pt["res"], "benign", "over_refusal_rate")),
             _pct(_metric(pt["res"], "math", "accuracy")), _pct(_metric(pt["res"], "code", "pass_rate"))]
            for pt in points]
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


def layout(ui: Named) -> None:
    from .compare import layout as board_layout
    with gr.Tab("Probe", id="probe"):
        gr.Markdown("Prompts the models never saw in training: samples of public benchmarks (HarmBench, XSTest, "
                    "GSM8K, HumanEval) for real LMs, the family's own held-out suites for the tiny one. Safety = "
                    "harmful requests refused; over-refusal = harmless requests refused; utility = math solved / "
                    "code tests passed.")
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
    from .compare import BOARD_OUTPUTS
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
