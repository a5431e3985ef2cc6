"""The Look tab's pictures as the session's models are: per-layer figures of the task vectors, the merge's
provenance and the methods' own analyses (LED's importance, election and overlap; ACM's coefficients),
redrawn after a merge when the tab is open (or once it opens), and only those that changed. The tour
and the Merge tab run these too."""
from __future__ import annotations

import time

import gradio as gr

from core import service
from core.errors import UserError

from . import controls as C
from . import figures as F
from . import state as S
from .common import guard, progress_bar, short_names


LOOK_OUTPUTS = ["importance", "elected", "overlap", "acm", "tv_norms", "tv_cos", "prov_share", "prov_coef"]


def _colours(experts: list[str], tasks: dict) -> dict:
    """One colour per expert, by its task, in every figure."""
    return {e: F.TASK_COLOURS.get(tasks.get(e, "custom"), None) or F.PALETTE[i] for i, e in enumerate(experts)}


def led_recipe_of(v: dict) -> dict:
    """The current recipe if it is LED, else LED with its defaults on the same models."""
    recipe = C.recipe_from_values(v)
    if recipe["merge_method"] == "led":
        return recipe
    spec = C.spec_of("led")
    models = [{"model": m["model"], "task": m.get("task", "custom"),
               "parameters": C.task_defaults(spec, m.get("task", "custom"))} for m in recipe["models"]]
    return {"merge_method": "led", "base_model": recipe.get("base_model"), "models": models, "parameters": {},
            "dtype": "float32"}


def acm_recipe(v: dict) -> dict:
    recipe = C.recipe_from_values(v)
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
    # r decides what is elected, not how important a weight is: only the elected panels name it, so
    # moving r leaves the importance picture as it is (and unsent)
    name = short_names(experts)
    label = {e: f"{name[e]} (r={a['mask_ratio'].get(e, 0):g})" for e in experts}
    by_task = _colours(experts, a.get("tasks", {}))
    colours = {label[e]: c for e, c in by_task.items()}
    imp = F.heatmaps({name[e]: a["importance"][e] for e in experts}, rows, cols,
                     "Where each skill lives: weight importance", "mean score", colorscale=F.SEQUENTIAL["importance"],
                     fmt=".3g", log=True, panel_colours={name[e]: c for e, c in by_task.items()})
    el = F.heatmaps({label[e]: a["elected"][e] for e in experts}, rows, cols,
                    f"Elected: important in {'base AND expert' if a['election'] == '11' else ('the base' if a['election'] == '10' else 'the expert')}",
                    "elected fraction", colorscale=F.SEQUENTIAL["elected"], zmin=0.0,
                    zmax=max(0.05, max(a["mask_ratio"].values() or [0.05])), fmt=".1%", panel_colours=colours)
    if a.get("overlap"):
        s = name.get(a.get("safety_expert"), "safety")
        ov = F.heatmaps({f"{s} ∩ {name.get(u, u)}": z for u, z in a["overlap"].items()}, rows, cols,
                        "Where safety and utility collide: overlap of their important weights (Jaccard)",
                        "Jaccard", colorscale=F.SEQUENTIAL["overlap"], zmin=0.0, zmax=_top(a["overlap"].values()), fmt=".2f")
    else:
        ov = F.empty("Overlap needs one expert with task 'safety' and one other expert.")
    return imp, el, ov


def acm_figure(a: dict, tasks: dict) -> object:
    """ACM's coefficient λᵢ per layer (solid, in [0.5, 1)) and what the merge adds of each task
    vector, λᵢ/N (dotted): ACM averages over the N experts, so the provenance chart's
    "fraction kept" shows λᵢ/N, not λᵢ."""
    experts = a["experts"]
    n = len(experts)
    name = short_names(experts)
    series = {name[e]: a["coef"][e] for e in experts}
    added = {f"{name[e]} · λ/N (added)": [c / n for c in a["coef"][e]] for e in experts}
    colours = {name[e]: c for e, c in _colours(experts, tasks).items()}
    return F.lines(a["layers"], series, f"ACM: how much of each expert each layer keeps (t = {a['temperature']:g}, "
                   f"N = {n})", "coefficient", yrange=[0.0, 1.02], colours=colours, hline=0.5, dashed=added)


def tv_figures(tv: dict, tasks: dict) -> tuple:
    experts = tv["experts"]
    name = short_names(experts)
    colours = {name[e]: c for e, c in _colours(experts, tasks).items()}
    norms = F.heatmaps({name[e]: tv["rel_norms"][e] for e in experts}, tv["layers"], tv["modules"],
                       "How much fine-tuning changed each part: ‖τ‖ / ‖θ₀‖", "relative change",
                       colorscale=F.SEQUENTIAL["norms"], zmin=0.0, fmt=".3f", panel_colours=colours)
    if tv["cosines"]:
        pairs = {" vs ".join(name.get(x, x) for x in k.split(" vs ")): v for k, v in tv["cosines"].items()}
        cos = F.heatmaps(pairs, tv["layers"], tv["modules"],
                         "Do the experts push the same way? Cosine of their task vectors",
                         "cosine", colorscale=F.COSINE_SCALE, zmin=-1.0, zmax=1.0, zmid=0.0, fmt=".2f")
    else:
        cos = F.empty("Cosines need at least two experts.")
    return norms, cos


def prov_figures(pv: dict, tasks: dict) -> tuple:
    experts = pv["experts"]
    name = short_names(experts)
    colours = {name[e]: c for e, c in _colours(experts, tasks).items()}
    share = F.stacked_shares(pv["points"], {name[e]: pv["share"][e] for e in experts}, pv["other"],
                             "Where the merged change came from, per layer",
                             colours=colours)
    coef = F.lines(pv["points"], {name[e]: pv["coef"][e] for e in experts},
                   "How much of each expert's change the merge keeps",
                   "fraction kept", colours=colours, hline=1.0)
    return share, coef


def only_changed(sess: S.Session, out: dict) -> dict:
    """Leave out the figures the page already shows as they are.

    Drawing is most of what a redraw costs the person (eight Plotly figures serialised, sent and drawn
    by the browser; the server needs a fraction of it), and a re-merge moves only some of them: the
    task vectors and LED's importance do not depend on any knob."""
    import hashlib
    for key in LOOK_OUTPUTS:
        fig = out.get(key)
        if fig is None:
            continue
        digest = hashlib.sha1(fig.to_json().encode()).hexdigest()
        if sess.drawn.get(key) == digest:
            del out[key]
        else:
            sess.drawn[key] = digest
    return out


def _subject(recipe: dict) -> tuple[str, tuple[str, ...]]:
    """What a method's pictures are of: the base and the experts, in order."""
    base = recipe.get("base_model") or recipe["models"][0]["model"]
    return base, tuple(m["model"] for m in recipe["models"] if m["model"] != base)


def _names(subject) -> str:
    return " + ".join(short_names(subject[1]).values()) or "no expert"


# a method's panels and the button that draws them for other models
METHOD_PANELS = {"led": (("importance", "elected", "overlap"), "Importance & overlap"),
                 "acm": (("acm",), "ACM coefficients")}


def _take_down_stale(sess: S.Session, subject, method: str, out: dict) -> None:
    """A method's panels drawn for other experts than ``subject`` (and not redrawn now, the merge being another
    method's) are replaced by a sentence: an overlap of two experts under a three-expert merge, or ACM's N = 2
    after a merge of three, would contradict what the model is."""
    for group, (keys, button) in METHOD_PANELS.items():
        old = sess.shows.get(group)
        if group == method or old is None or old == subject:
            continue
        for k in keys:
            out[k] = F.empty(f"Drawn for {_names(old)}; the experts are now {_names(subject)}: "
                             f"press '{button}'.")
        del sess.shows[group]


@guard
def look_refresh(v: dict, request=None) -> dict:
    """Cheap pictures of the live merge: task vectors, provenance, and the method's own analysis (brought by
    the merge, or from cached scores). Before any merge, of the models the controls name. The pictures never
    show the controls' settings while the live model holds another merge: they say so instead."""
    t0 = time.perf_counter()
    sess = S.get(request)
    with sess.lock:
        live = sess.merged_recipe if sess.model is not None else None
        entry = sess.live_entry() if live is not None else None
    try:
        shown = C.recipe_from_values(v)
    except UserError:
        if live is None:
            raise
        shown = None
    recipe = live or shown
    notes = []
    if live is not None and shown != live:
        which = f"the live merge #{entry['n']}" if entry else "the live merge"
        notes.append(f"these show {which}; the controls changed since: press Merge to see theirs")
    out = {}
    tasks = {m["model"]: m.get("task", "custom") for m in recipe["models"]}
    subject = _subject(recipe)
    base, experts = subject[0], list(subject[1])
    if experts:
        tv = service.task_vector_analysis(base, experts)
        out["tv_norms"], out["tv_cos"] = tv_figures(tv, tasks)
        with sess.lock:
            if live is not None and sess.base_ref == base:
                pv = service.provenance(base, experts, sess.model)
                out["prov_share"], out["prov_coef"] = prov_figures(pv, tasks)
                sess.figures["prov"] = pv
            else:
                notes.append("merge first to see where the merged weights came from")
    # the merge that made the live model brought its method's pictures along
    with sess.lock:
        merged = sess.result.analysis if sess.result is not None and live is not None else None
    method = recipe["merge_method"]
    if method == "led":
        out["importance"], out["elected"], out["overlap"] = led_figures(merged or service.led_analysis(recipe))
        sess.shows["led"] = subject
    if method == "acm":
        out["acm"] = acm_figure(merged or service.acm_analysis(recipe), tasks)
        sess.shows["acm"] = subject
    _take_down_stale(sess, subject, method, out)
    only_changed(sess, out)
    out["look_status"] = f"Pictures updated in {time.perf_counter() - t0:.3f} s." + \
        (f" ({'; '.join(notes)})" if notes else "")
    return out


def after_merge(v: dict, request=None) -> dict:
    """After a merge: redraw now if the Look tab is open, else once it is opened (a re-merge on every
    slider release must not wait for pictures nobody is looking at)."""
    sess = S.get(request)
    try:
        unmerged = C.recipe_from_values(v) != sess.merged_recipe
    except UserError:
        unmerged = True
    if unmerged:
        return {}       # a knob moved with re-merging off: the pictures stay those of the live model
    if not sess.look_open:
        sess.look_stale = True
        return {}
    sess.look_stale = False
    return look_refresh(v, request=request)


def look_opened(v: dict, request=None) -> dict:
    """The Look tab was opened: draw what changed while it was closed."""
    sess = S.get(request)
    if not sess.look_stale:
        return {}
    sess.look_stale = False
    return look_refresh(v, request=request)


def open_tab(tab_id: str, request=None) -> gr.Tabs:
    """Switch the page to a tab from a handler. Gradio's select event fires only on a person's click, so
    a switch made here must tell the session itself whether the Look tab is now the open one."""
    S.get(request).look_open = tab_id == "look"
    return gr.Tabs(selected=tab_id)


@guard
def led_pictures(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Importance, elected and overlap heatmaps for the current experts (LED
    scores: backward passes the first time, cached afterwards)."""
    recipe = led_recipe_of(v)
    a = service.led_analysis(recipe, progress=progress_bar(progress))
    imp, el, ov = led_figures(a)
    note = " (scores from the cache)" if a.get("cached") else ""
    sess = S.get(request)
    sess.shows["led"] = _subject(recipe)
    out = only_changed(sess, {"importance": imp, "elected": el, "overlap": ov})
    return {**out, "look_status": f"Importance and overlap of {_names(_subject(recipe))} computed{note}. "
                                  + _defaults_note(v, "led", a["mask_ratio"]) + " ".join(a.get("notes") or [])}


def _defaults_note(v: dict, method: str, values: dict | None = None) -> str:
    """When the chosen method is not ``method``, the pictures use ``method``'s defaults: say which."""
    if v.get("method") == method:
        return ""
    other = C.spec_of(v.get("method") or C.default_method()).label
    if method == "led":
        names = short_names(values)
        rs = ", ".join(f"{names[e]} {r:g}" for e, r in values.items())
        return f"The method chosen is {other}, so these use LED's default r per task ({rs}). "
    t = C.spec_of("acm").param("temperature").default
    return f"The method chosen is {other}, so this uses ACM's default t = {t:g}. "


@guard
def acm_pictures(v: dict, progress=gr.Progress(), request=None) -> dict:
    recipe = acm_recipe(v)
    tasks = {m["model"]: m.get("task", "custom") for m in recipe["models"]}
    a = service.acm_analysis(recipe, progress=progress_bar(progress))
    note = " (from the cache)" if a.get("cached") else ""
    sess = S.get(request)
    sess.shows["acm"] = _subject(recipe)
    return {**only_changed(sess, {"acm": acm_figure(a, tasks)}),
            "look_status": f"ACM coefficients of {_names(_subject(recipe))} computed{note}. " + _defaults_note(v, "acm")}
