"""The merge controls as a fixed set of slots, and recipe <-> control values.

Gradio components are created once, but each method has its own
parameters. So the Merge tab holds a fixed pool of slots -- per expert a few
sliders, globally a few sliders, checkboxes, dropdowns and one text box --
and ``layout(spec)`` assigns a method's parameters to slots in registry
order. A method change relabels, re-ranges and shows/hides the slots; a
recipe (YAML upload, history entry, walkthrough step) is turned into the
value of every control by ``values_from_recipe``, and the controls are
turned back into a recipe by ``recipe_from_values``. Nothing here loads a
model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from core.errors import UserError

N_EXPERTS = 3
PM_SLOTS = 4          # per-expert numeric knobs (weight, density, gamma, r ...)
G_NUM, G_BOOL, G_CHOICE, G_STR = 4, 3, 3, 1
TASKS = ["safety", "math", "code", "custom"]
ZOO = ["zoo:base", "zoo:safety", "zoo:math", "zoo:code"]
NONE = ""             # an empty expert slot

# [method, base, (expert, task) x N, pm x N x PM_SLOTS, g_num, g_bool, g_choice, g_str]
N_MODEL_VALUES = 1 + 2 * N_EXPERTS
N_PARAM_VALUES = N_EXPERTS * PM_SLOTS + G_NUM + G_BOOL + G_CHOICE + G_STR
N_VALUES = 1 + N_MODEL_VALUES + N_PARAM_VALUES


@dataclass
class Layout:
    """Which parameter sits in which slot for one method."""
    pm_num: list = field(default_factory=list)
    g_num: list = field(default_factory=list)
    g_bool: list = field(default_factory=list)
    g_choice: list = field(default_factory=list)
    g_str: list = field(default_factory=list)
    hidden: list = field(default_factory=list)   # params with no slot: they keep their defaults


def methods() -> dict:
    from core import service
    return service.list_methods()


def method_choices() -> list[tuple[str, str]]:
    return [(s.label, name) for name, s in methods().items()]


def default_method() -> str:
    return "led"


def spec_of(name: str):
    reg = methods()
    if name not in reg:
        raise UserError(f"The merge method '{name}' is not available here; choose one from the list.")
    return reg[name]


def _slider_worthy(p) -> bool:
    """A seed (0..2^63) is no slider; such knobs keep their default here and
    are set in the recipe YAML instead."""
    return p.lo is None or p.hi is None or float(p.hi) - float(p.lo) <= 1e6


def layout(spec) -> Layout:
    lay = Layout()
    for p in spec.params:
        numeric = p.kind in ("float", "int") and _slider_worthy(p)
        if p.per_model and numeric and len(lay.pm_num) < PM_SLOTS:
            lay.pm_num.append(p)
        elif not p.per_model and numeric and len(lay.g_num) < G_NUM:
            lay.g_num.append(p)
        elif not p.per_model and p.kind == "bool" and len(lay.g_bool) < G_BOOL:
            lay.g_bool.append(p)
        elif not p.per_model and p.kind == "choice" and len(lay.g_choice) < G_CHOICE:
            lay.g_choice.append(p)
        elif not p.per_model and p.kind == "str" and len(lay.g_str) < G_STR:
            lay.g_str.append(p)
        else:
            lay.hidden.append(p)
    return lay


def task_defaults(spec, task: str) -> dict:
    """Per-expert defaults that depend on the expert's task, as the registry
    declares them (Param.by_task: LED's r, the paper's per-task reference);
    the sliders start there so what they show is what the merge uses."""
    return {p.name: p.default_for(task) for p in spec.params if p.per_model and p.by_task}


def _range(p) -> tuple[float, float, float]:
    lo = 0.0 if p.lo is None else float(p.lo)
    hi = float(p.hi) if p.hi is not None else max(1.0, 4.0 * abs(float(p.default or 1)))
    if p.kind == "int":
        return lo, hi, 1
    span = hi - lo
    step = 0.01 if span <= 2 else (0.05 if span <= 20 else 1.0)
    return lo, hi, step


def pretty(p) -> str:
    """A slider label: the parameter name, with the paper's symbol when it has one."""
    names = {"lambda": "λ (scale)", "mask_ratio": "r (mask ratio)", "temperature": "t (temperature)",
             "weight": "weight", "density": "density", "gamma": "γ (outliers)", "alpha": "α (scale)",
             "t": "t (interpolation)", "beta": "β (floor)"}
    return names.get(p.name, p.name.replace("_", " "))


def _num_update(p, value=None):
    lo, hi, step = _range(p)
    v = p.default if value is None else value
    return gr.update(label=pretty(p), info=p.help or None, minimum=lo, maximum=hi, step=step, value=v, visible=True)


def _hide():
    return gr.update(visible=False)


def param_updates(method: str, per_expert: list[dict] | None = None, glob: dict | None = None) -> list:
    """Updates for every parameter slot (N_PARAM_VALUES), values from the
    given dicts or the method's defaults."""
    spec = spec_of(method)
    lay = layout(spec)
    per_expert = per_expert or [{} for _ in range(N_EXPERTS)]
    glob = glob or {}
    out = []
    for i in range(N_EXPERTS):
        vals = per_expert[i] if i < len(per_expert) else {}
        for k in range(PM_SLOTS):
            out.append(_num_update(lay.pm_num[k], vals.get(lay.pm_num[k].name)) if k < len(lay.pm_num) else _hide())
    for k in range(G_NUM):
        out.append(_num_update(lay.g_num[k], glob.get(lay.g_num[k].name)) if k < len(lay.g_num) else _hide())
    for k in range(G_BOOL):
        if k < len(lay.g_bool):
            p = lay.g_bool[k]
            out.append(gr.update(label=pretty(p), info=p.help or None, value=bool(glob.get(p.name, p.default)),
                                 visible=True))
        else:
            out.append(_hide())
    for k in range(G_CHOICE):
        if k < len(lay.g_choice):
            p = lay.g_choice[k]
            choices = [str(c) for c in p.choices]
            out.append(gr.update(label=pretty(p), info=p.help or None, choices=choices,
                                 value=str(glob.get(p.name, p.default)), visible=True))
        else:
            out.append(_hide())
    for k in range(G_STR):
        if k < len(lay.g_str):
            p = lay.g_str[k]
            out.append(gr.update(label=pretty(p), info=p.help or None, value=str(glob.get(p.name, p.default) or ""),
                                 visible=True))
        else:
            out.append(_hide())
    return out


def split(values: list) -> tuple:
    """(method, base, experts [(ref, task)], pm [[...] per expert], g_num, g_bool, g_choice, g_str)."""
    if len(values) != N_VALUES:
        raise ValueError(f"expected {N_VALUES} control values, got {len(values)}")
    method, base = values[0], values[1]
    experts = [(values[2 + 2 * i], values[3 + 2 * i]) for i in range(N_EXPERTS)]
    j = 1 + N_MODEL_VALUES
    pm = [values[j + i * PM_SLOTS: j + (i + 1) * PM_SLOTS] for i in range(N_EXPERTS)]
    j += N_EXPERTS * PM_SLOTS
    g_num = values[j:j + G_NUM]
    j += G_NUM
    g_bool = values[j:j + G_BOOL]
    j += G_BOOL
    g_choice = values[j:j + G_CHOICE]
    j += G_CHOICE
    g_str = values[j:j + G_STR]
    return method, base, experts, pm, g_num, g_bool, g_choice, g_str


def _num(p, v):
    if v is None:
        return p.default
    return int(round(float(v))) if p.kind == "int" else float(v)


def used_experts(experts: list[tuple]) -> list[tuple[int, str, str]]:
    """(slot, ref, task) of the filled expert slots, in order."""
    out = []
    for i, (ref, task) in enumerate(experts):
        ref = (ref or "").strip()
        if ref:
            out.append((i, ref, task if task in TASKS else "custom"))
    return out


def recipe_from_values(values: list) -> dict:
    """The recipe (mergekit-style dict) the controls describe."""
    method, base, experts, pm, g_num, g_bool, g_choice, g_str = split(values)
    spec = spec_of(method)
    lay = layout(spec)
    base = (base or "").strip()
    if spec.needs_base and not base:
        raise UserError("Pick a base model on the Models tab.")
    used = used_experts(experts)
    if not used:
        raise UserError("Pick at least one expert on the Models tab.")
    models = []
    for i, ref, task in used:
        params = {p.name: _num(p, pm[i][k]) for k, p in enumerate(lay.pm_num)}
        models.append({"model": ref, "task": task, "parameters": params})
    glob: dict = {}
    for k, p in enumerate(lay.g_num):
        glob[p.name] = _num(p, g_num[k])
    for k, p in enumerate(lay.g_bool):
        glob[p.name] = bool(g_bool[k])
    for k, p in enumerate(lay.g_choice):
        v = g_choice[k]
        glob[p.name] = next((c for c in p.choices if str(c) == str(v)), p.default)
    for k, p in enumerate(lay.g_str):
        if g_str[k]:
            glob[p.name] = str(g_str[k])
    d = {"merge_method": method}
    if base:
        d["base_model"] = base
    d.update({"models": models, "parameters": glob, "dtype": "float32"})
    return d


def values_from_recipe(recipe: dict) -> list:
    """Updates for every control (N_VALUES) that restore ``recipe``.

    The recipe is validated first, so a bad file changes nothing.
    """
    from core import recipe as R
    rec = R.from_dict(recipe)
    checked = R.validate(rec)
    spec = checked.spec
    per, glob, idx = checked.model_params, checked.global_params, checked.contributors
    if len(idx) > N_EXPERTS:
        raise UserError(f"This app shows at most {N_EXPERTS} experts; the recipe has {len(idx)}.")
    experts = [(rec.models[i].model, rec.models[i].task) for i in idx]
    pers = [dict(per[i]) for i in idx]   # defaults filled, by task where the registry says so
    out = [gr.update(value=rec.merge_method), gr.update(value=rec.base_model or "")]
    for i in range(N_EXPERTS):
        ref, task = experts[i] if i < len(experts) else (NONE, TASKS[i] if i < 3 else "custom")
        out += [gr.update(value=ref), gr.update(value=task)]
    out += param_updates(rec.merge_method, pers + [{}] * (N_EXPERTS - len(pers)), glob)
    return out


def describe(recipe: dict) -> str:
    """One line for the merge history: method and the knobs that are set."""
    spec = spec_of(recipe["merge_method"])
    parts = []
    for m in recipe.get("models", []):
        name = m["model"].removeprefix("zoo:")
        kv = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.get("parameters", {}).items())
        parts.append(f"{name}({kv})" if kv else name)
    glob = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in (recipe.get("parameters") or {}).items() if v not in ("", None))
    return f"{spec.label}: " + " + ".join(parts) + (f"; {glob}" if glob else "")


def sweep_choices(method: str, experts: list[tuple]) -> list[tuple[str, str]]:
    """Numeric knobs a sweep can vary: 'pm:<slot>:<name>' or 'g:<name>'."""
    lay = layout(spec_of(method))
    out = []
    for i, ref, _task in used_experts(experts):
        for p in lay.pm_num:
            out.append((f"{pretty(p)} of {ref}", f"pm:{i}:{p.name}"))
    for p in lay.g_num:
        out.append((pretty(p), f"g:{p.name}"))
    return out


def with_value(recipe: dict, key: str, value: float, experts: list[tuple]) -> dict:
    """A copy of ``recipe`` with the swept knob set to ``value``."""
    import copy
    r = copy.deepcopy(recipe)
    if key.startswith("g:"):
        r.setdefault("parameters", {})[key[2:]] = value
        return r
    _, slot, name = key.split(":", 2)
    ref = (experts[int(slot)][0] or "").strip()
    for m in r["models"]:
        if m["model"] == ref:
            m.setdefault("parameters", {})[name] = value
            return r
    raise UserError("The swept expert is no longer in the recipe; pick the knob again.")


def sweep_range(method: str, key: str) -> tuple[float, float, float]:
    """(from, to, step) defaults for a swept knob: its declared range."""
    name = key.split(":")[-1]
    p = spec_of(method).param(name)
    if p is None:
        raise UserError(f"'{name}' is not a knob of this method.")
    lo, hi, step = _range(p)
    return lo, hi, step
