"""The Probe tab: quick probes, the safety-vs-utility scatter, sweeps."""
from __future__ import annotations


import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .. import figures as F
from .. import state as S
from .merge import merge_into_session
from .common import _experts, _progress, _sentence, _short, _values, guard


SUITES = ["harmful", "benign", "math", "code"]
PROBE_LIMIT = 24
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


