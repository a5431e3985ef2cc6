"""A method's controls, built from its registry entry and read by name.

Every method gets components of its own: per expert one control for each
per-expert parameter, and one for each global parameter, created from its
``Param`` (range, default, help). Only the chosen method's controls are
visible; the others keep their values, so switching LED -> ACM -> LED finds
LED's sliders where they were left (settings are remembered per method for
the session), and no value of one method ever lands in another's control.

Handlers never see component positions: ``ui.tabs.common.Named`` hands
them ``{key: value}`` and they read keys made by ``key(...)``:

    "method", "base", "expert0".."expert2", "task0".."task2"
    "<method>.<param>"          a global parameter   (e.g. "acm.temperature")
    "<method>.<param>.<i>"      expert i's parameter (e.g. "led.mask_ratio.0")

``recipe_from_values`` turns such a dict into a recipe; ``values_from_recipe``
turns a recipe into ``{key: value}`` for the controls it restores (the
method's own, the models; other methods' controls are left alone). Nothing
here loads a model.
"""
from __future__ import annotations

import copy

import gradio as gr

from core import service
from core.errors import UserError, quoted

N_EXPERTS = 3

def family_refs() -> list[str]:
    """Every built-in model reference, family by family (zoo:base .. smol:math)."""
    return [f.ref(n) for f in service.families().values() for n in f.names]


ZOO = family_refs()

TASKS = service.tasks()
NONE = ""             # an empty expert slot

def methods() -> dict:
    return service.list_methods()


def used_when() -> dict:
    """A knob that only some settings of a method use: (method, param) -> (global param, value it
    needs), as the registry's ``Param.used_when`` says. ACM's per-expert density trims like TIES and
    only ACM-TIES uses it; a sweep of it under ACM-TA is flat."""
    return {(name, p.name): tuple(p.used_when) for name, spec in methods().items()
            for p in spec.params if p.used_when}


USED_WHEN = used_when()


def used_when_keys(method: str, name: str) -> list[str]:
    """The control keys of a knob in USED_WHEN: one per expert, or the one global control."""
    p = spec_of(method).param(name)
    return [key(method, name, i) for i in range(N_EXPERTS)] if p.per_model else [key(method, name)]


def method_choices() -> list[tuple[str, str]]:
    return [(s.label, name) for name, s in methods().items()]


def default_method() -> str:
    return "led"


def spec_of(name: str):
    reg = methods()
    if name not in reg:
        raise UserError(f"The merge method {quoted(name)} is not available here; choose one from the list.")
    return reg[name]


def key(method: str, name: str, i: int | None = None) -> str:
    return f"{method}.{name}" if i is None else f"{method}.{name}.{i}"


def shown(p) -> bool:
    """LED's per-expert 'task' repeats the expert's task on the Models tab; every other parameter has a control."""
    return not (p.per_model and p.name == "task")


def _slider_worthy(p) -> bool:
    """A seed (0..2^63) is a number box, not a slider."""
    return p.lo is not None and p.hi is not None and float(p.hi) - float(p.lo) <= 1e6


def _range(p) -> tuple[float, float, float]:
    lo = 0.0 if p.lo is None else float(p.lo)
    hi = float(p.hi) if p.hi is not None else max(1.0, 4.0 * abs(float(p.default or 1)))
    if p.kind == "int":
        return lo, hi, 1
    if p.step:
        return lo, hi, p.step
    span = hi - lo
    step = 0.01 if span <= 2 else (0.05 if span <= 20 else 1.0)
    return lo, hi, step


def pretty(p) -> str:
    """A control's label, as its Param says: the paper's symbol and words ("λ (scale)"), or the words alone."""
    return p.title


def numeric(p) -> bool:
    return p.kind in ("float", "int") and _slider_worthy(p)


class Knob(gr.Slider):
    """A slider whose out-of-range value is one quiet sentence.

    gr.Slider answers an out-of-range value (possible only from a hand-made
    request) with an error that prints a traceback into the server log; the
    value is refused either way, never clamped. Rendered by the ordinary
    slider front end (is_template).
    """
    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        try:
            x = float(payload)
        except (TypeError, ValueError):
            raise gr.Error(f"{self.label} must be a number.", print_exception=False)
        if not (self.minimum <= x <= self.maximum):
            raise gr.Error(f"{self.label} must be between {self.minimum:g} and {self.maximum:g}; got {x:g}.",
                           print_exception=False)
        return gr.Number.round_to_precision(x, self.precision)


def component(p, value, elem_id: str, visible: bool = True):
    """The control of one parameter, from its Param."""
    kw = dict(label=pretty(p), info=p.help or None, elem_id=elem_id, visible=visible)
    if numeric(p):
        lo, hi, step = _range(p)
        return Knob(lo, hi, value=value, step=step, **kw)
    if p.kind in ("float", "int"):
        return gr.Number(value=value, precision=0 if p.kind == "int" else None, **kw)
    if p.kind == "bool":
        return gr.Checkbox(value=bool(value), **kw)
    if p.kind == "choice":
        return gr.Dropdown([str(c) for c in p.choices], value=str(value), **kw)
    return gr.Textbox(value=str(value or ""), **kw)


def task_defaults(spec, task: str) -> dict:
    """Per-expert defaults that depend on the expert's task (Param.by_task: LED's r)."""
    return {p.name: p.default_for(task) for p in spec.params if p.per_model and p.by_task}


def used_experts(experts: list[tuple]) -> list[tuple[int, str, str]]:
    """(slot, ref, task) of the filled expert slots, in order."""
    out = []
    for i, (ref, task) in enumerate(experts):
        ref = (ref or "").strip()
        if ref:
            out.append((i, ref, task if task in TASKS else "custom"))
    return out


def experts_of(v: dict) -> list[tuple]:
    return [(v.get(f"expert{i}"), v.get(f"task{i}")) for i in range(N_EXPERTS)]


def _typed(p, x):
    """A control's value as the recipe holds it (None: leave the parameter out)."""
    if x is None or (p.kind == "str" and not str(x).strip()):
        return None
    if p.kind == "int":
        return int(round(float(x)))
    if p.kind == "float":
        return float(x)
    if p.kind == "bool":
        return bool(x)
    if p.kind == "choice":
        hit = next((c for c in p.choices if str(c) == str(x)), None)
        if hit is None:   # only a hand-made request can send one; never silently the default
            raise UserError(f"{pretty(p).capitalize()} must be one of {', '.join(map(str, p.choices))}; "
                            f"got {str(x)!r}.")
        return hit
    return str(x).strip()


def recipe_from_values(v: dict) -> dict:
    """The recipe (mergekit-style dict) the controls describe; keys missing from ``v`` take their defaults."""
    method = v.get("method") or default_method()
    spec = spec_of(method)
    base = (v.get("base") or "").strip()
    if spec.needs_base and not base:
        raise UserError("Pick a base model on the Models tab.")
    used = used_experts(experts_of(v))
    if not used:
        raise UserError("Pick at least one expert on the Models tab.")
    glob = {}
    for p in spec.params:
        if not p.per_model:
            x = _typed(p, v.get(key(method, p.name), p.default))
            if x is not None:
                glob[p.name] = x
    # a global knob the other globals do not use (Subspace Boosting's normalize under Task Arithmetic) is hidden
    # and not sent either
    glob = {k: x for k, x in glob.items() if in_use(method, k, glob)}
    models = []
    for i, ref, task in used:
        params = {}
        for p in spec.params:
            # a knob hidden because the settings do not use it (ACM-TA's density) is not sent either
            if p.per_model and shown(p) and in_use(method, p.name, glob):
                x = _typed(p, v.get(key(method, p.name, i), p.default_for(task)))
                if x is not None:
                    params[p.name] = x
        models.append({"model": ref, "task": task, "parameters": params})
    d = {"merge_method": method}
    if base:
        d["base_model"] = base
    d.update({"models": models, "parameters": glob, "dtype": "float32"})
    return d


def values_from_recipe(recipe: dict) -> dict:
    """{key: value} of the controls that restore ``recipe``: the method, the
    models and the method's own controls (defaults where the recipe is
    silent, by task where the registry says so). Validated first, so a bad
    recipe changes nothing."""
    checked = service.validate(recipe)
    rec = checked.recipe
    spec = checked.spec
    idx = checked.contributors
    if len(idx) > N_EXPERTS:
        raise UserError(f"This app shows at most {N_EXPERTS} experts; the recipe has {len(idx)}.")
    out = {"method": rec.merge_method, "base": rec.base_model or ""}
    for slot in range(N_EXPERTS):
        if slot < len(idx):
            m = rec.models[idx[slot]]
            task = m.task
            if task == "custom" and m.parameters.get("task") in TASKS:
                task = m.parameters["task"]     # LED's own per-expert task parameter says it
            out[f"expert{slot}"], out[f"task{slot}"] = m.model, task
            for p in spec.params:
                if p.per_model and shown(p):
                    out[key(spec.name, p.name, slot)] = checked.model_params[idx[slot]][p.name]
        else:
            out[f"expert{slot}"], out[f"task{slot}"] = NONE, TASKS[slot]
    for p in spec.params:
        if not p.per_model:
            out[key(spec.name, p.name)] = checked.global_params[p.name] if p.name in checked.global_params \
                else p.default
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


def in_use(method: str, name: str, glob: dict) -> bool:
    """Whether the method, with these global settings, uses the parameter at all (``Param.used_when``)."""
    spec = methods().get(method)
    p = spec.param(name) if spec is not None else None
    return p is None or p.used_with(glob)


def sweep_choices(v: dict) -> list[tuple[str, str]]:
    """Numeric knobs a sweep can vary, for the method and settings the controls show: keys as in ``key``."""
    method = v.get("method") or default_method()
    spec = spec_of(method)
    glob = {p.name: v.get(key(method, p.name), p.default) for p in spec.params if not p.per_model}
    out = []
    for i, ref, _task in used_experts(experts_of(v)):
        for p in spec.params:
            if p.per_model and numeric(p) and in_use(method, p.name, glob):
                out.append((f"{pretty(p)} of {ref.removeprefix('zoo:')}", key(method, p.name, i)))
    for p in spec.params:
        if not p.per_model and numeric(p) and in_use(method, p.name, glob):
            out.append((pretty(p), key(method, p.name)))
    return out


def param_of(k: str):
    """The Param a control key names."""
    parts = k.split(".")
    p = spec_of(parts[0]).param(parts[1]) if len(parts) >= 2 else None
    if p is None:
        raise UserError(f"{quoted(k)} is not a knob of any method.")
    return p


def with_value(v: dict, k: str, value) -> dict:
    """A copy of the control values with one knob set (a sweep step)."""
    out = copy.copy(v)
    out[k] = value
    return out


def sweep_range(k: str) -> tuple[float, float, float]:
    """(from, to, step) defaults for a swept knob: its declared range."""
    return _range(param_of(k))
