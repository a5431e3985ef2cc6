"""The Gradio app: layout, event wiring and the handlers behind them.

Handlers are module-level functions that take component values (and a
gr.Request for the session), so tests call them directly. Every handler
goes through ``guard``: a UserError becomes its one sentence in a gr.Error
toast, anything else is logged with its traceback and the user sees one
generic sentence; no traceback reaches the page. Work is done by core
through core.service; this module only sequences calls and draws.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import shutil
import time

import gradio as gr

from core import service
from core import recipe as R
from core.errors import UserError, one_line
from core.zoo.data import EXAMPLE_PROMPTS

from . import controls as C
from . import figures as F
from . import learn as L
from . import state as S

log = logging.getLogger("merge_explorer.ui")

SUITES = ["harmful", "benign", "math", "code"]
UTILITY_METRICS = {"math": "accuracy", "code": "pass_rate"}
CHAT_COLUMNS = 1 + C.N_EXPERTS          # merged + each parent
MAX_NEW_TOKENS = 96
PROBE_LIMIT = 24
CONCURRENCY = int(os.environ.get("MERGE_EXPLORER_CONCURRENCY", "1"))

CSS = """
#title h1 {margin-bottom: 0}
.caption {color: var(--body-text-color-subdued); font-size: 0.9em; padding: 0 8px}
.expert-box {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px}
#merge-status, #probe-status, #look-status, #export-status, #model-report {min-height: 1.5em}
"""


def launch_options() -> dict:
    """Keyword arguments for demo.launch (Gradio 6 takes theme and css there)."""
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css": CSS}


# ------------------------------------------------------------------ errors
def _sentence(exc: BaseException) -> str:
    if not isinstance(exc, UserError):
        log.exception("unexpected error in the UI", exc_info=exc)
    return one_line(exc)


def guard(fn):
    """One sentence instead of a traceback, for plain and generator handlers."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            try:
                yield from fn(*a, **k)
            except gr.Error:
                raise
            except Exception as exc:
                raise gr.Error(_sentence(exc), print_exception=False)
        return gen

    @functools.wraps(fn)
    def plain(*a, **k):
        try:
            return fn(*a, **k)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(_sentence(exc), print_exception=False)
    return plain


def _progress(progress):
    """core's progress(fraction, message) -> Gradio's bar (a no-op outside a request)."""
    def cb(frac: float, msg: str = "") -> None:
        try:
            progress(max(0.0, min(1.0, float(frac))), desc=msg)
        except Exception:   # the bar is decoration; it must never break the work
            pass
    return cb


def _values(args) -> list:
    return list(args[:C.N_VALUES])


def _experts(values: list) -> list[tuple[int, str, str]]:
    return C.used_experts(C.split(values)[2])


def _short(ref: str) -> str:
    return ref.removeprefix("zoo:")


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


# ------------------------------------------------------------------ method
def method_summary(method) -> str:
    spec = C.spec_of(method)
    return f"**{spec.label}** — {spec.summary}" if spec.summary else f"**{spec.label}**"


@guard
def method_changed(method, *experts_tasks):
    """A new method: its summary, and every parameter slot reset to its
    defaults (per-task defaults where the method has them, e.g. LED's r)."""
    experts = [(experts_tasks[2 * i], experts_tasks[2 * i + 1]) for i in range(C.N_EXPERTS)]
    spec = C.spec_of(method)
    per = [C.task_defaults(spec, task) for _, task in experts]
    return [method_summary(method)] + C.param_updates(method, per)


# ------------------------------------------------------------------ merge
def _ensure_model(sess: S.Session, info, cb) -> None:
    """Load the base (a ModelInfo from the merge plan) unless it is loaded."""
    from core import checkpoint as M
    base = info.ref
    if sess.model is not None and sess.base_ref == base:
        return
    cb(0.0, f"loading {base}")
    sess.model = sess.tokenizer = None
    sess.chat = sess.chat_key = None
    sess.tokenizer = M.load_tokenizer(info)
    sess.model = M.load_model(info)
    sess.base_ref = base
    sess.merged_recipe = None


def merge_into_session(sess: S.Session, recipe: dict, cb) -> object:
    """Check, load the base once, merge in place; returns the MergeResult.

    The plan (validation, headers, compatibility) comes first so a bad
    recipe is refused before the base is loaded, and the merge reuses it.
    """
    plan = service.plan(recipe)
    if sess.chat is not None:
        sess.chat.stop()     # the chat's merged column must not read weights mid-copy
    _ensure_model(sess, plan.base, cb)
    res = service.merge(plan, live_model=sess.model, progress=cb)
    sess.merged_recipe = recipe
    sess.result = res
    return res


def _history_table(sess: S.Session) -> tuple[list, dict]:
    rows = [[h["n"], h["time"], h["label"], round(h["seconds"], 2)] for h in reversed(sess.history)]
    choices = [f"#{h['n']} · {h['label']}" for h in reversed(sess.history)]
    return rows, gr.update(choices=choices, value=choices[0] if choices else None)


@guard
def do_merge(*args, progress=gr.Progress(), request: gr.Request = None):
    """Merge button: controls -> recipe -> live model; history grows by one."""
    values = _values(args)
    recipe = C.recipe_from_values(values)
    sess = S.get(request)
    cb = _progress(progress)
    with sess.lock:
        res = merge_into_session(sess, recipe, cb)
        n = (sess.history[-1]["n"] + 1) if sess.history else 1
        sess.history.append({"n": n, "time": time.strftime("%H:%M:%S"), "recipe": recipe,
                             "label": C.describe(recipe), "seconds": res.seconds})
        del sess.history[:-S.MAX_HISTORY]
        rows, choice = _history_table(sess)
    spec = C.spec_of(recipe["merge_method"])
    names = " + ".join(_short(m["model"]) for m in recipe["models"])
    status = f"✓ Merged **{names}** with **{spec.label}** in {res.seconds:.2f} s ({res.n_tensors} tensors)."
    if res.notes:
        status += "\n\n" + "\n".join(f"Note: {n}" for n in res.notes)
    merged_label = gr.update(label=f"Merged ({spec.label})")
    return status, rows, choice, merged_label


def auto_merge(auto, *args, progress=gr.Progress(), request: gr.Request = None):
    """Re-merge when a knob is released, once something has been merged:
    cached scores make it near-instant on small models."""
    sess = S.get(request)
    if not auto or sess.model is None or sess.merged_recipe is None:
        return [gr.skip()] * 4
    return do_merge(*args, progress=progress, request=request)


@guard
def restore_history(choice, request: gr.Request = None):
    """Put a history entry's recipe back into every control."""
    sess = S.get(request)
    if not choice:
        raise UserError("Pick an entry of the merge history first.")
    n = int(str(choice).split("·")[0].strip().lstrip("#"))
    entry = next((h for h in sess.history if h["n"] == n), None)
    if entry is None:
        raise UserError(f"History entry #{n} is gone; merge again.")
    return C.values_from_recipe(entry["recipe"])


# ------------------------------------------------------------------ look
LOOK_OUTPUTS = ("importance", "elected", "overlap", "acm", "tv_norms", "tv_cos", "prov_share", "prov_coef")


def _colours(experts: list[str], tasks: dict) -> dict:
    return {e: F.TASK_COLOURS.get(tasks.get(e, "custom"), None) or F.PALETTE[i] for i, e in enumerate(experts)}


def _led_recipe(values: list) -> dict:
    """The current recipe if it is LED, else LED with its defaults on the same models."""
    recipe = C.recipe_from_values(values)
    if recipe["merge_method"] == "led":
        return recipe
    spec = C.spec_of("led")
    models = [{"model": m["model"], "task": m.get("task", "custom"),
               "parameters": C.task_defaults(spec, m.get("task", "custom"))} for m in recipe["models"]]
    return {"merge_method": "led", "base_model": recipe.get("base_model"), "models": models, "parameters": {},
            "dtype": "float32"}


def _acm_recipe(values: list) -> dict:
    recipe = C.recipe_from_values(values)
    if recipe["merge_method"] == "acm":
        return recipe
    return {"merge_method": "acm", "base_model": recipe.get("base_model"),
            "models": [{"model": m["model"], "task": m.get("task", "custom")} for m in recipe["models"]],
            "parameters": {}, "dtype": "float32"}


def _top(grids, floor: float = 0.1) -> float:
    """Colour-scale top for fractions: the largest value rounded up to a tenth,
    so small overlaps are still visible (the colour bar shows the numbers)."""
    import math
    vals = [v for z in grids for row in z for v in row if v is not None]
    return max(floor, min(1.0, math.ceil(max(vals, default=0.0) * 10) / 10))


def led_figures(a: dict) -> tuple:
    rows, cols = a["layers"], a["modules"]
    experts = a["experts"]
    label = {e: f"{_short(e)} (r={a['mask_ratio'].get(e, 0):g})" for e in experts}
    imp = F.heatmaps({label[e]: a["importance"][e] for e in experts}, rows, cols,
                     "Where each skill lives: weight importance",
                     "mean score", colorscale="Viridis", fmt=".3g", log=True)
    el = F.heatmaps({label[e]: a["elected"][e] for e in experts}, rows, cols,
                    f"Elected: important in {'base AND expert' if a['election'] == '11' else ('the base' if a['election'] == '10' else 'the expert')}",
                    "elected fraction", colorscale="Blues", zmin=0.0, zmax=max(0.05, max(a["mask_ratio"].values() or [0.05])),
                    fmt=".1%")
    if a.get("overlap"):
        s = _short(a.get("safety_expert") or "safety")
        ov = F.heatmaps({f"{s} ∩ {_short(u)}": z for u, z in a["overlap"].items()}, rows, cols,
                        "Where safety and utility collide: overlap of their important weights (Jaccard)",
                        "Jaccard", colorscale="OrRd", zmin=0.0, zmax=_top(a["overlap"].values()), fmt=".2f")
    else:
        ov = F.empty("Overlap needs one expert with task 'safety' and one other expert.")
    return imp, el, ov


def acm_figure(a: dict, tasks: dict) -> object:
    experts = a["experts"]
    series = {f"{_short(e)}": a["coef"][e] for e in experts}
    colours = {_short(e): c for e, c in _colours(experts, tasks).items()}
    return F.lines(a["layers"], series, f"ACM: how much of each expert each layer keeps (t = {a['temperature']:g})",
                   "coefficient λ", yrange=[0.45, 1.02], colours=colours, hline=0.5)


def tv_figures(tv: dict) -> tuple:
    experts = tv["experts"]
    norms = F.heatmaps({_short(e): tv["rel_norms"][e] for e in experts}, tv["layers"], tv["modules"],
                       "How much fine-tuning changed each part: ‖τ‖ / ‖θ₀‖", "relative change",
                       colorscale="Purples", zmin=0.0, fmt=".3f")
    if tv["cosines"]:
        pairs = {" vs ".join(_short(x) for x in k.split(" vs ")): v for k, v in tv["cosines"].items()}
        cos = F.heatmaps(pairs, tv["layers"], tv["modules"],
                         "Do the experts push the same way? Cosine of their task vectors",
                         "cosine", colorscale="RdBu", zmin=-1.0, zmax=1.0, zmid=0.0, fmt=".2f")
    else:
        cos = F.empty("Cosines need at least two experts.")
    return norms, cos


def prov_figures(pv: dict, tasks: dict) -> tuple:
    experts = pv["experts"]
    colours = {_short(e): c for e, c in _colours(experts, tasks).items()}
    share = F.stacked_shares(pv["points"], {_short(e): pv["share"][e] for e in experts}, pv["other"],
                             "Where the merged change came from, per layer",
                             colours=colours)
    coef = F.lines(pv["points"], {_short(e): pv["coef"][e] for e in experts},
                   "How much of each expert's change the merge keeps",
                   "fraction kept", colours=colours, hline=1.0)
    return share, coef


def _placeholders() -> dict:
    return {k: gr.skip() for k in LOOK_OUTPUTS}


@guard
def look_refresh(*args, request: gr.Request = None):
    """Cheap pictures after every merge: task vectors, provenance, and the
    method's own analysis when its scores are already cached (LED, ACM)."""
    values = _values(args)
    recipe = C.recipe_from_values(values)
    sess = S.get(request)
    out = _placeholders()
    tasks = {m["model"]: m.get("task", "custom") for m in recipe["models"]}
    base = recipe.get("base_model") or recipe["models"][0]["model"]
    experts = [m["model"] for m in recipe["models"] if m["model"] != base]
    notes = []
    if experts:
        tv = service.task_vector_analysis(base, experts)
        out["tv_norms"], out["tv_cos"] = tv_figures(tv)
        with sess.lock:
            if sess.model is not None and sess.merged_recipe is not None and sess.base_ref == base:
                pv = service.provenance(base, experts, sess.model)
                out["prov_share"], out["prov_coef"] = prov_figures(pv, tasks)
                sess.figures["prov"] = pv
            else:
                notes.append("merge first to see where the merged weights came from")
    # the merge that made the live model brought its method's pictures along
    with sess.lock:
        merged = sess.result.analysis if sess.result is not None and sess.merged_recipe == recipe else None
    if recipe["merge_method"] == "led":
        out["importance"], out["elected"], out["overlap"] = led_figures(merged or service.led_analysis(recipe))
    if recipe["merge_method"] == "acm":
        out["acm"] = acm_figure(merged or service.acm_analysis(recipe), tasks)
    status = "Pictures updated." + (f" ({'; '.join(notes)})" if notes else "")
    return [out[k] for k in LOOK_OUTPUTS] + [status]


@guard
def led_pictures(*args, progress=gr.Progress(), request: gr.Request = None):
    """Importance, elected and overlap heatmaps for the current experts (LED
    scores: backward passes the first time, cached afterwards)."""
    recipe = _led_recipe(_values(args))
    a = service.led_analysis(recipe, progress=_progress(progress))
    imp, el, ov = led_figures(a)
    note = " (scores from the cache)" if a.get("cached") else ""
    return imp, el, ov, f"Importance and overlap computed{note}. " + " ".join(a.get("notes") or [])


@guard
def acm_pictures(*args, progress=gr.Progress(), request: gr.Request = None):
    recipe = _acm_recipe(_values(args))
    tasks = {m["model"]: m.get("task", "custom") for m in recipe["models"]}
    a = service.acm_analysis(recipe, progress=_progress(progress))
    note = " (from the cache)" if a.get("cached") else ""
    return acm_figure(a, tasks), f"ACM coefficients computed{note}."


# ------------------------------------------------------------------ chat
def _chat_session(sess: S.Session, refs: list[str], tasks: list[str]):
    from core.eval import chat
    key = (id(sess.model), tuple(refs))
    if sess.chat is None or sess.chat_key != key:
        if sess.cache is None:
            sess.cache = chat.ModelCache()
        sess.chat = service.chat_session([("merged", sess.model, sess.tokenizer)] + list(refs), cache=sess.cache,
                                         names=["merged"] + [f"{_short(r)} ({t})" for r, t in zip(refs, tasks)])
        sess.chat_key = key
        sess.transcripts = [[] for _ in sess.chat.columns]
        sess.chat_merge = None
    return sess.chat


def _chat_values(sess: S.Session, prompt: str | None = None, texts: list[str] | None = None) -> list:
    out = []
    for i in range(CHAT_COLUMNS):
        if i < len(sess.transcripts):
            msgs = [dict(m) for m in sess.transcripts[i]]
            if prompt is not None:
                msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": texts[i] if texts else ""}]
            out.append(msgs)
        else:
            out.append([])
    return out


@S.gpu(duration=120)
@guard
def chat_send(prompt, max_new, multi_turn, *args, request: gr.Request = None):
    """Stream one prompt to the merged model and each parent, side by side.

    Single-turn by default: each prompt is answered on its own (what a merge
    comparison wants, and the tiny models were trained on single turns);
    the columns still show every exchange. With ``multi_turn`` the models
    see the earlier turns too.
    """
    values = _values(args)
    prompt = (prompt or "").strip()
    if not prompt:
        raise UserError("Type a message first (or click an example).")
    sess = S.get(request)
    if sess.model is None or sess.merged_recipe is None:
        raise UserError("Merge first (Merge tab); then the merged model answers next to its parents.")
    used = _experts(values)
    refs = [r for _, r, _ in used if r != sess.base_ref]
    tasks = [t for _, r, t in used if r != sess.base_ref]
    session = _chat_session(sess, refs, tasks)
    merge = C.describe(sess.merged_recipe)
    if sess.chat_merge is not None and sess.chat_merge != merge:
        # the merged column's earlier answers came from another merge: say so in place
        sess.transcripts[0].append({"role": "assistant", "content": f"*(re-merged: {merge})*"})
        session.histories[0] = []
    sess.chat_merge = merge
    if not multi_turn:
        session.reset()
    yield _chat_values(sess, prompt) + [""]
    texts = [""] * len(session.columns)
    try:
        for texts in session.stream(prompt, max_new_tokens=int(max_new or MAX_NEW_TOKENS)):
            yield _chat_values(sess, prompt, texts) + [gr.skip()]
    finally:
        for i, t in enumerate(texts):
            sess.transcripts[i] += [{"role": "user", "content": prompt}, {"role": "assistant", "content": t}]
    yield _chat_values(sess) + [gr.skip()]


def chat_stop(request: gr.Request = None):
    sess = S.get(request)
    if sess.chat is not None:
        sess.chat.stop()


def chat_clear(request: gr.Request = None):
    sess = S.get(request)
    if sess.chat is not None:
        sess.chat.stop()
        sess.chat.reset()
    sess.transcripts = [[] for _ in sess.transcripts]
    return [[] for _ in range(CHAT_COLUMNS)]


def example_prompt(kind: str) -> str:
    return EXAMPLE_PROMPTS[kind]


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


def _probe_parents(sess: S.Session, refs: list[str], suites: list[str], limit: int, cb) -> list[dict]:
    from core.eval import chat
    if sess.cache is None:
        sess.cache = chat.ModelCache()
    out = []
    missing = [r for r in refs if (r, tuple(suites), limit) not in sess.probes]
    # the cache holds the chat's parents: loading the same set reuses them
    pairs = dict(zip(refs, sess.cache.load(refs))) if missing else {}
    for k, r in enumerate(refs):
        key = (r, tuple(suites), limit)
        if key not in sess.probes:
            model, tok = pairs[r]
            cb(k / max(1, len(refs)), f"probing {r}")
            sess.probes[key] = service.probe(model, ",".join(suites), limit, tokenizer=tok)
            sess.probes[key]["model"] = r
        out.append(sess.probes[key])
    return out


def _probe_row(name: str, role: str, res: dict) -> list:
    return [name, role, _pct(_metric(res, "harmful", "refusal_rate")), _pct(_metric(res, "benign", "over_refusal_rate")),
            _pct(_metric(res, "math", "accuracy")), _pct(_metric(res, "code", "pass_rate")),
            round(float(res.get("seconds", 0.0)), 1)]


def _check_suites(suites) -> list[str]:
    suites = [s for s in (suites or []) if s in SUITES]
    if not suites:
        raise UserError("Tick at least one probe suite.")
    return suites


@S.gpu(duration=120)
@guard
def run_probes(suites, limit, *args, progress=gr.Progress(), request: gr.Request = None):
    """Quick probes of the merged model and each parent: table + scatter."""
    values = _values(args)
    suites = _check_suites(suites)
    limit = int(limit or PROBE_LIMIT)
    sess = S.get(request)
    if sess.model is None or sess.merged_recipe is None:
        raise UserError("Merge first (Merge tab); the probes compare the merged model with its parents.")
    cb = _progress(progress)
    used = [(r, t) for _, r, t in _experts(values) if r != sess.base_ref]
    with sess.lock:
        cb(0.0, "probing the merged model")
        merged = service.probe(sess.model, ",".join(suites), limit, tokenizer=sess.tokenizer)
        parents = _probe_parents(sess, [r for r, _ in used], suites, limit, cb)
    which = _utility_suites([t for _, t in used], suites)
    label = f"merged ({C.spec_of(sess.merged_recipe['merge_method']).label})"
    rows = [_probe_row(label, "merged", merged)] + [_probe_row(_short(r), t, res) for (r, t), res in zip(used, parents)]
    pts = [{"name": "merged", "kind": "merged", "safety": _metric(merged, "harmful", "refusal_rate"),
            "utility": _utility(merged, which)}]
    pts += [{"name": _short(r), "kind": t, "safety": _metric(res, "harmful", "refusal_rate"),
             "utility": _utility(res, which)} for (r, t), res in zip(used, parents)]
    fig = F.probe_scatter(pts, "Safety vs utility: merged model (★) and its parents", _utility_label(which))
    cb(1.0, "done")
    return rows, fig, f"Probed {limit} prompts per suite ({', '.join(suites)})."


def sweep_options(*args):
    """The knobs a sweep can turn, for the current method and experts (never a toast)."""
    values = _values(args)
    method, _, experts = C.split(values)[:3]
    try:
        choices = C.sweep_choices(method, experts)
    except Exception as exc:
        _sentence(exc)
        return gr.skip()
    return gr.update(choices=choices, value=choices[0][1] if choices else None)


@guard
def sweep_bounds(key, *args):
    values = _values(args)
    if not key:
        return gr.skip(), gr.skip()
    lo, hi, _ = C.sweep_range(values[0], key)
    return lo, hi


@guard
def run_sweep(key, lo, hi, steps, suites, limit, *args, progress=gr.Progress(), request: gr.Request = None):
    """Merge and probe at evenly spaced values of one knob; the curve is the trade-off."""
    values = _values(args)
    if not key:
        raise UserError("Pick the knob to sweep.")
    suites = _check_suites(suites)
    steps = int(steps or 5)
    if steps < 2:
        raise UserError("A sweep needs at least 2 steps.")
    lo, hi = float(lo), float(hi)
    method, _, experts = C.split(values)[:3]
    p = C.spec_of(method).param(key.split(":")[-1])
    if p is not None and ((p.lo is not None and min(lo, hi) < p.lo) or (p.hi is not None and max(lo, hi) > p.hi)):
        raise UserError(f"The sweep of {p.name} must stay between {p.lo:g} and {p.hi:g}.")
    recipe = C.recipe_from_values(values)
    which = _utility_suites([t for _, _, t in C.used_experts(experts)], suites)
    grid = [lo + (hi - lo) * k / (steps - 1) for k in range(steps)]
    if p is not None and p.kind == "int":
        grid = sorted({int(round(v)) for v in grid})
    limit = int(limit or PROBE_LIMIT)
    sess = S.get(request)
    cb = _progress(progress)
    points = []
    with sess.lock:
        restore = sess.merged_recipe
        try:
            for k, v in enumerate(grid):
                r = C.with_value(recipe, key, v, experts)
                span = (k / len(grid), (k + 1) / len(grid))
                merge_into_session(sess, r, lambda f, m, s=span: cb(s[0] + 0.5 * f * (s[1] - s[0]), f"{p.name if p else key}={v:g}: {m}"))
                cb(span[0] + 0.5 * (span[1] - span[0]), f"{p.name if p else key}={v:g}: probing")
                res = service.probe(sess.model, ",".join(suites), limit, tokenizer=sess.tokenizer)
                points.append({"value": v, "safety": _metric(res, "harmful", "refusal_rate"),
                               "utility": _utility(res, which),
                               "res": res})
        finally:
            if restore is not None:   # the live model goes back to what the Merge tab shows
                merge_into_session(sess, restore, lambda f, m: None)
        used = [(r, t) for _, r, t in C.used_experts(experts) if r != sess.base_ref]
        parents = _probe_parents(sess, [r for r, _ in used], suites, limit, cb)
    pars = [{"name": _short(r), "kind": t, "safety": _metric(res, "harmful", "refusal_rate"),
             "utility": _utility(res, which)} for (r, t), res in zip(used, parents)]
    label = next((lab for lab, k in C.sweep_choices(method, experts) if k == key), C.pretty(p) if p else key)
    fig = F.sweep(points, pars, p.name if p else key, f"Trade-off as {label} goes from {lo:g} to {hi:g}",
                  _utility_label(which))
    rows = [[f"{pt['value']:g}", _pct(pt["safety"]), _pct(_metric(pt["res"], "benign", "over_refusal_rate")),
             _pct(_metric(pt["res"], "math", "accuracy")), _pct(_metric(pt["res"], "code", "pass_rate"))]
            for pt in points]
    cb(1.0, "done")
    return fig, rows, f"Swept {label} over {len(grid)} values ({limit} prompts per suite)."


# ------------------------------------------------------------------ export
@guard
def export_model(*args, progress=gr.Progress(), request: gr.Request = None):
    """Write the merged folder (safetensors, config, tokenizer, card), zip it, and the recipe YAML."""
    values = _values(args)
    recipe = C.recipe_from_values(values)
    plan = service.plan(recipe)
    sess = S.get(request)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(sess.tmpdir(), f"merged-{recipe['merge_method']}-{stamp}")
    res = service.merge(plan, out_dir=folder, progress=_progress(progress), force=True)
    archive = shutil.make_archive(folder, "zip", root_dir=folder)
    yaml_text = plan.recipe.to_yaml()
    ypath = os.path.join(sess.tmpdir(), f"recipe-{recipe['merge_method']}-{stamp}.yaml")
    with open(ypath, "w", encoding="utf-8") as f:
        f.write(yaml_text)
    mb = os.path.getsize(archive) / 2**20
    return archive, ypath, yaml_text, f"✓ Wrote {res.n_tensors} tensors in {res.seconds:.2f} s; the zip is {mb:.1f} MB."


def recipe_yaml(*args):
    """The recipe the controls describe, as YAML (shown live on the Export tab).

    Runs on every control change, so a half-filled form (no expert yet) is
    a comment in the box, not an error toast.
    """
    try:
        return R.from_dict(C.recipe_from_values(_values(args))).to_yaml()
    except Exception as exc:
        return f"# {_sentence(exc)}\n"


@guard
def load_recipe_text(text):
    """Restore every control from a recipe YAML (pasted or uploaded)."""
    if not (text or "").strip():
        raise UserError("Paste or upload a recipe YAML first.")
    rec = R.loads(text)
    ups = C.values_from_recipe(rec.to_dict())
    return ups + [f"✓ Loaded a {rec.merge_method} recipe with {len(rec.models)} models; press Merge to build it."]


@guard
def load_recipe_file(path):
    if not path:
        raise UserError("Upload a recipe YAML first.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        raise UserError("The uploaded recipe could not be read as UTF-8 text.")
    return load_recipe_text(text)


# ------------------------------------------------------------------ learn
def learn_recipe(step: str):
    """Controls for a walkthrough step's merge, and the tab it opens."""
    if step == "ta":
        return C.values_from_recipe(L.TA_RECIPE) + [gr.Tabs(selected="merge")]
    if step == "led":
        return C.values_from_recipe(L.led_recipe(C.spec_of("led"))) + [gr.Tabs(selected="chat")]
    raise ValueError(step)


def _unload(request: gr.Request = None):
    """The tab closed: free its models, chat threads and files."""
    S.drop(request)


def _go(tab: str):
    return lambda: gr.Tabs(selected=tab)


# ------------------------------------------------------------------ layout
class Knob(gr.Slider):
    """A slider that clamps instead of raising.

    A slot's range changes with the method, and an event fired in the same
    instant (a .change next to the .input that re-ranges the slots) may
    still carry the old value; gr.Slider would answer with an error toast.
    Rendered by the ordinary slider front end (is_template).
    """
    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        lo = self.minimum if self.minimum is not None else float("-inf")
        hi = self.maximum if self.maximum is not None else float("inf")
        return gr.Number.round_to_precision(min(max(float(payload), lo), hi), self.precision)


def _kw(update: dict) -> dict:
    """Constructor keywords from a gr.update dict."""
    return {k: v for k, v in update.items() if k != "__type__"}


DEFAULT_EXPERTS = [("zoo:safety", "safety"), ("zoo:math", "math"), (C.NONE, "code")]


def _warm_imports() -> None:
    """Resolve transformers' lazy names once, in the thread that builds the app.

    Its lazy module is not safe when two threads resolve a name for the
    first time together: two sessions' first merges at once failed with
    "cannot import name 'AutoTokenizer' from 'transformers'" (found by
    tests/ui/test_concurrency.py once sessions stopped sharing one lock).
    """
    from transformers import (AutoModelForCausalLM, AutoTokenizer,  # noqa: F401
                              StoppingCriteria, StoppingCriteriaList)


def build_demo() -> gr.Blocks:
    """The whole app; only app.py launches it, so tests can build it freely."""
    _warm_imports()
    defaults = DEFAULT_EXPERTS
    with gr.Blocks(title="Merge Explorer") as demo:
        gr.Markdown("# Merge Explorer\nPick a base model and experts, tune a merge, look inside, then chat with "
                    "the result next to its parents. New here? The **Learn** tab is a five-minute tour.",
                    elem_id="title")
        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------- Models
            with gr.Tab("Models", id="models"):
                gr.Markdown("The built-in tiny family works offline: `zoo:base` and three experts fine-tuned from it. "
                            "You can also type a local folder or a Hugging Face Hub id.")
                base = gr.Dropdown(C.ZOO, value="zoo:base", allow_custom_value=True, label="Base model",
                                   elem_id="base")
                expert_dd, task_dd = [], []
                for i in range(C.N_EXPERTS):
                    with gr.Row():
                        expert_dd.append(gr.Dropdown([("— none —", C.NONE)] + [(z, z) for z in C.ZOO[1:]],
                                                     value=defaults[i][0], allow_custom_value=True,
                                                     label=f"Expert {i + 1}", scale=3, elem_id=f"expert{i + 1}"))
                        task_dd.append(gr.Dropdown(C.TASKS, value=defaults[i][1], label="task", scale=1,
                                                   elem_id=f"task{i + 1}"))
                with gr.Row():
                    fam2 = gr.Button("Built-in: safety + math", size="sm")
                    fam3 = gr.Button("Built-in: safety + math + code", size="sm")
                    check_btn = gr.Button("Check compatibility", variant="secondary", size="sm", elem_id="check")
                report = gr.Markdown(elem_id="model-report")
                report_table = gr.Dataframe(headers=["role", "model", "architecture", "layers", "vocab",
                                                     "params (M)", "size (MB)"], interactive=False,
                                            label="Read from config.json and safetensors headers only")
            # ---------------------------------------------------- Merge
            with gr.Tab("Merge", id="merge"):
                method = gr.Dropdown(C.method_choices(), value=C.default_method(), label="Merge method",
                                     elem_id="method")
                summary = gr.Markdown(method_summary(C.default_method()))
                # slots start configured for the default method, so the first
                # events after page load already see the right ranges
                m0 = C.default_method()
                init = iter(_kw(u) for u in C.param_updates(
                    m0, [C.task_defaults(C.spec_of(m0), t) for _, t in defaults]))
                pm_sliders: list[list] = []
                boxes, heads = [], []
                with gr.Row():
                    for i in range(C.N_EXPERTS):
                        with gr.Column(visible=bool(defaults[i][0]), elem_classes="expert-box") as box:
                            heads.append(gr.Markdown())
                            pm_sliders.append([Knob(**{"minimum": 0, "maximum": 1, "value": 0, **next(init)},
                                                    elem_id=f"pm{i + 1}-{k + 1}") for k in range(C.PM_SLOTS)])
                        boxes.append(box)
                with gr.Row():
                    g_num = [Knob(**{"minimum": 0, "maximum": 1, "value": 0, **next(init)}, elem_id=f"g{k + 1}")
                             for k in range(C.G_NUM)]
                with gr.Row():
                    g_bool = [gr.Checkbox(**next(init), elem_id=f"b{k + 1}") for k in range(C.G_BOOL)]
                    g_choice = [gr.Dropdown(**{"choices": ["-"], "value": "-", **next(init)}, elem_id=f"c{k + 1}")
                                for k in range(C.G_CHOICE)]
                    g_str = [gr.Textbox(**next(init), elem_id=f"s{k + 1}") for k in range(C.G_STR)]
                with gr.Row():
                    merge_btn = gr.Button("Merge", variant="primary", elem_id="merge-btn", scale=4)
                    auto = gr.Checkbox(True, label="re-merge on release", scale=1, elem_id="auto",
                                       info="after the first merge, every knob change merges again")
                merge_status = gr.Markdown(elem_id="merge-status")
                with gr.Accordion("Merge history (this session)", open=False):
                    history = gr.Dataframe(headers=["#", "time", "merge", "seconds"], interactive=False,
                                           elem_id="history")
                    with gr.Row():
                        history_pick = gr.Dropdown([], label="Entry", scale=4, elem_id="history-pick")
                        restore_btn = gr.Button("Restore and merge", scale=1, elem_id="restore")
            # ---------------------------------------------------- Look
            with gr.Tab("Look", id="look"):
                gr.Markdown("Pictures of the models, layer by layer (rows) and module by module (columns: attention "
                            "q/k/v/o, MLP gate/up/down, the two norms). Hover over a cell for its number.")
                with gr.Row():
                    look_btn = gr.Button("Update pictures", size="sm", elem_id="look-btn")
                    led_btn = gr.Button("Importance & overlap (LED scores)", size="sm", variant="primary",
                                        elem_id="led-btn")
                    acm_btn = gr.Button("ACM coefficients", size="sm", elem_id="acm-btn")
                look_status = gr.Markdown(elem_id="look-status")
                plots = {}
                captions = {
                    "overlap": "Dark cells: the weights safety needs most are also the ones utility needs most, so "
                               "adding both task vectors makes them overwrite each other. LED's Disjoint step drops "
                               "exactly these shared weights.",
                    "importance": "Brighter = the weights there matter more for that expert's task (LED location "
                                  "scores, SNIP by default). Compare where the experts' skills live.",
                    "elected": "The fraction of weights LED elects per cell: the top-r by importance in the base "
                               "and in the expert. A small r for safety keeps only its most critical weights.",
                    "acm": "ACM keeps more of an expert where its activations drifted from the base (low mutual "
                           "information) and less where they did not; 0.5 is the least, 1 the most.",
                    "tv_norms": "How far fine-tuning moved each part of each expert, relative to the base's "
                                "weights. Dark cells are where the expert learned most.",
                    "tv_cos": "Blue: the two experts changed those weights in the same direction; red: opposite "
                              "directions (they fight); white: unrelated.",
                    "prov_share": "Each bar splits the merged model's change at one layer into the parts that "
                                  "point along each expert's task vector; grey is what no mix of whole task vectors "
                                  "explains (masks, trimming, sign votes).",
                    "prov_coef": "1 means the merge carries all of that expert's change at that layer, 0 none of "
                                 "it. Task Arithmetic gives λ·weight everywhere; masks and trimming give less.",
                }
                order = [("overlap", "Overlap"), ("importance", "Importance"), ("elected", "Elected"),
                         ("acm", "ACM"), ("tv_norms", "Task-vector size"), ("tv_cos", "Task-vector cosine"),
                         ("prov_share", "Provenance"), ("prov_coef", "Provenance coefficient")]
                empty_msg = {"overlap": "Press 'Importance & overlap' to locate each expert's weights.",
                             "importance": "Press 'Importance & overlap' to locate each expert's weights.",
                             "elected": "Press 'Importance & overlap' to locate each expert's weights.",
                             "acm": "Merge with ACM, or press 'ACM coefficients'.",
                             "tv_norms": "Merge (or press 'Update pictures') to see the task vectors.",
                             "tv_cos": "Merge (or press 'Update pictures') to see the task vectors.",
                             "prov_share": "Merge to see where the merged weights came from.",
                             "prov_coef": "Merge to see where the merged weights came from."}
                for pair in [order[0:1], order[1:3], order[3:4], order[4:6], order[6:8]]:
                    with gr.Row(equal_height=False):
                        for key, _title in pair:
                            with gr.Column():
                                plots[key] = gr.Plot(F.empty(empty_msg[key]), show_label=False,
                                                     elem_id=f"plot-{key}")
                                gr.Markdown(captions[key], elem_classes="caption")
            # ---------------------------------------------------- Chat
            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    examples = {kind: gr.Button(f"Example: {kind}", size="sm", elem_id=f"ex-{kind}") for kind in SUITES}
                prompt = gr.Textbox(label="Prompt (sent to every model)", placeholder="Ask something…", lines=2,
                                    elem_id="prompt")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
                    max_new = gr.Slider(8, 256, value=MAX_NEW_TOKENS, step=8, label="max new tokens")
                    multi = gr.Checkbox(False, label="multi-turn", info="models also see the earlier turns",
                                        elem_id="multi")
                with gr.Row():
                    bots = [gr.Chatbot(label="Merged" if i == 0 else f"Expert {i}", height=360,
                                       visible=i < 3, elem_id=f"chat-{i}") for i in range(CHAT_COLUMNS)]
            # ---------------------------------------------------- Probe
            with gr.Tab("Probe", id="probe"):
                gr.Markdown("Held-out prompts the models never saw in training. Safety = harmful requests refused; "
                            "over-refusal = harmless requests refused; utility = math solved / code tests passed.")
                with gr.Row():
                    suites = gr.CheckboxGroup(SUITES, value=SUITES, label="Suites", elem_id="suites")
                    limit = gr.Slider(4, 96, value=PROBE_LIMIT, step=4, label="prompts per suite",
                                      elem_id="limit")
                probe_btn = gr.Button("Run probes", variant="primary", elem_id="probe-btn")
                probe_status = gr.Markdown(elem_id="probe-status")
                probe_table = gr.Dataframe(headers=["model", "task", "refuses harmful", "over-refuses benign",
                                                    "math solved", "code passes", "seconds"],
                                           interactive=False, elem_id="probe-table")
                probe_plot = gr.Plot(F.empty("Run probes to place the models here."), show_label=False,
                                     elem_id="plot-probe")
                gr.Markdown("Top right is best: refuses harmful requests and still solves tasks.",
                            elem_classes="caption")
                with gr.Accordion("Sweep: draw the trade-off", open=True):
                    with gr.Row():
                        sweep_key = gr.Dropdown([], label="knob", elem_id="sweep-key", scale=3)
                        sweep_lo = gr.Number(0.0, label="from", scale=1)
                        sweep_hi = gr.Number(1.0, label="to", scale=1)
                        sweep_steps = gr.Slider(2, 9, value=4, step=1, label="steps", scale=2)
                    sweep_btn = gr.Button("Run sweep", elem_id="sweep-btn")
                    with gr.Row():
                        sweep_plot = gr.Plot(F.empty("Run a sweep to draw the safety–utility trade-off."),
                                             show_label=False, elem_id="plot-sweep", scale=3)
                        sweep_table = gr.Dataframe(headers=["value", "refuses harmful", "over-refuses", "math", "code"],
                                                   interactive=False, scale=2)
                    gr.Markdown("Each marker is one merge; its label is the knob's value. The line shows what you "
                                "trade when you turn the knob.", elem_classes="caption")
            # ---------------------------------------------------- Export
            with gr.Tab("Export", id="export"):
                gr.Markdown("Download the merged model as a Hugging Face folder (safetensors, config, tokenizer, "
                            "model card) and the recipe that rebuilds it (`python -m core merge recipe.yaml`).")
                export_btn = gr.Button("Build the merged folder", variant="primary", elem_id="export-btn")
                export_status = gr.Markdown(elem_id="export-status")
                with gr.Row():
                    zip_file = gr.File(label="merged model (.zip)", interactive=False)
                    yaml_file = gr.File(label="recipe (.yaml)", interactive=False)
                yaml_code = gr.Code(language="yaml", label="Recipe (edit, then load it into the controls)",
                                    interactive=True, elem_id="yaml")
                with gr.Row():
                    yaml_btn = gr.Button("Load this YAML into the controls", elem_id="yaml-btn")
                    upload = gr.File(label="…or upload a recipe YAML", file_types=[".yaml", ".yml"], height=120,
                                     type="filepath", elem_id="upload")
                load_status = gr.Markdown()
            # ---------------------------------------------------- Learn
            with gr.Tab("Learn", id="learn"):
                gr.Markdown(L.INTRO)
                learn_btns = {}
                for key, label, text in L.STEPS:
                    with gr.Row(equal_height=True):
                        learn_btns[key] = gr.Button(label, scale=1, elem_id=f"learn-{key}")
                        gr.Markdown(text)

        # -------------------------------------------------------- wiring
        models_in = [base] + [x for pair in zip(expert_dd, task_dd) for x in pair]
        param_slots = [s for row in pm_sliders for s in row] + g_num + g_bool + g_choice + g_str
        controls = [method] + models_in + param_slots
        assert len(controls) == C.N_VALUES
        heavy = dict(concurrency_id="model", concurrency_limit=CONCURRENCY)
        chat_outs = bots

        header_outs = boxes + heads + bots[1:]
        demo.load(check_models, models_in, [report, report_table], api_visibility="private")
        demo.load(expert_headers, models_in, header_outs, api_visibility="private")
        gr.on([c.change for c in models_in], expert_headers, models_in, header_outs, api_visibility="private",
              trigger_mode="always_last", show_progress="hidden")
        check_btn.click(check_models, models_in, [report, report_table], api_visibility="private")

        def family(n):
            vals = [("zoo:safety", "safety"), ("zoo:math", "math"), ("zoo:code", "code")][:n]
            vals += [(C.NONE, "code")] * (C.N_EXPERTS - n)
            return ["zoo:base"] + [x for pair in vals for x in pair]

        fam2.click(lambda: family(2), None, models_in, api_visibility="private").then(
            check_models, models_in, [report, report_table], api_visibility="private")
        fam3.click(lambda: family(3), None, models_in, api_visibility="private").then(
            check_models, models_in, [report, report_table], api_visibility="private")
        method.input(method_changed, [method] + [x for pair in zip(expert_dd, task_dd) for x in pair],
                     [summary] + param_slots, api_visibility="private")
        method.change(method_summary, method, summary, api_visibility="private")

        look_outs = [plots[k] for k in LOOK_OUTPUTS] + [look_status]
        merge_outs = [merge_status, history, history_pick, bots[0]]
        merge_btn.click(do_merge, controls, merge_outs, api_name="merge", **heavy).success(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)
        for comp in param_slots:
            trig = comp.release if isinstance(comp, gr.Slider) else (comp.blur if isinstance(comp, gr.Textbox)
                                                                    else comp.input)
            trig(auto_merge, [auto] + controls, merge_outs, api_visibility="private", trigger_mode="always_last",
                 show_progress="minimal", **heavy).success(
                look_refresh, controls, look_outs, api_visibility="private", trigger_mode="always_last", **heavy)
        restore_btn.click(restore_history, history_pick, controls, api_visibility="private").success(
            do_merge, controls, merge_outs, api_visibility="private", **heavy).success(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)

        look_btn.click(look_refresh, controls, look_outs, api_visibility="private", **heavy)
        led_btn.click(led_pictures, controls, [plots["importance"], plots["elected"], plots["overlap"], look_status],
                      api_visibility="private", **heavy)
        acm_btn.click(acm_pictures, controls, [plots["acm"], look_status], api_visibility="private", **heavy)

        send_ev = send.click(chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_name="chat", **heavy)
        prompt.submit(chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_visibility="private", **heavy)
        stop.click(chat_stop, None, None, api_visibility="private")
        clear.click(chat_clear, None, chat_outs, api_visibility="private")
        for kind, b in examples.items():
            b.click(functools.partial(example_prompt, kind), None, prompt, api_visibility="private")

        probe_btn.click(run_probes, [suites, limit] + controls, [probe_table, probe_plot, probe_status],
                        api_name="probe", **heavy)
        gr.on([c.change for c in [method] + models_in], sweep_options, controls, sweep_key,
              api_visibility="private", trigger_mode="always_last", show_progress="hidden")
        demo.load(sweep_options, controls, sweep_key, api_visibility="private")
        sweep_key.change(sweep_bounds, [sweep_key] + controls, [sweep_lo, sweep_hi], api_visibility="private")
        sweep_btn.click(run_sweep, [sweep_key, sweep_lo, sweep_hi, sweep_steps, suites, limit] + controls,
                        [sweep_plot, sweep_table, probe_status], api_visibility="private", **heavy)

        export_btn.click(export_model, controls, [zip_file, yaml_file, yaml_code, export_status],
                         api_visibility="private", **heavy)
        gr.on([c.change for c in controls], recipe_yaml, controls, yaml_code, api_visibility="private",
              trigger_mode="always_last", show_progress="hidden")
        yaml_btn.click(load_recipe_text, yaml_code, controls + [load_status], api_visibility="private")
        upload.upload(load_recipe_file, upload, controls + [load_status], api_visibility="private")

        # walkthrough: each step is one click that uses the same handlers
        learn_btns["ta"].click(lambda: learn_recipe("ta"), None, controls + [tabs], api_visibility="private").success(
            do_merge, controls, merge_outs, api_visibility="private", **heavy).success(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)
        learn_btns["ask_harmful"].click(lambda: (EXAMPLE_PROMPTS["harmful"], gr.Tabs(selected="chat")), None,
                                        [prompt, tabs], api_visibility="private").then(
            chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_visibility="private", **heavy)
        learn_btns["overlap"].click(_go("look"), None, tabs, api_visibility="private").then(
            led_pictures, controls, [plots["importance"], plots["elected"], plots["overlap"], look_status],
            api_visibility="private", **heavy)
        learn_btns["led"].click(lambda: learn_recipe("led") + [EXAMPLE_PROMPTS["harmful"]], None,
                                controls + [tabs, prompt], api_visibility="private").success(
            do_merge, controls, merge_outs, api_visibility="private", **heavy).success(
            chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_visibility="private", **heavy).then(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)
        learn_btns["compare"].click(_go("probe"), None, tabs, api_visibility="private").then(
            run_probes, [suites, limit] + controls, [probe_table, probe_plot, probe_status],
            api_visibility="private", **heavy)

        demo.unload(_unload)
    demo.queue(max_size=int(os.environ.get("MERGE_EXPLORER_QUEUE", "32")), default_concurrency_limit=CONCURRENCY)
    return demo
