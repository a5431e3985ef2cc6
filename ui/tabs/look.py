"""The Look tab: per-layer pictures of the models and the merge."""
from __future__ import annotations


import gradio as gr

from core import service

from .. import controls as C
from .. import figures as F
from .. import state as S
from .common import _progress, _short, _values, guard


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


