"""The merge recipe: mergekit's YAML, extended for LED-Merging and ACM.

    merge_method: led
    base_model: zoo:base
    models:
      - model: zoo:safety
        task: safety                  # ours: safety | math | code | custom
        parameters: {mask_ratio: 0.1, weight: 1.0}
    parameters: {election: "11", disjoint: true, location: snip}
    dtype: float32

Validation happens here, before any weight is read: every problem is one
sentence naming the field.
"""
from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Any

from . import userfiles
from .errors import UserError, quoted

TASKS = ("safety", "math", "code", "custom")


@dataclass
class ModelEntry:
    model: str                          # reference: zoo:NAME, folder, Hub id
    parameters: dict[str, Any] = field(default_factory=dict)
    task: str = "custom"


@dataclass
class Recipe:
    merge_method: str
    base_model: str | None
    models: list[ModelEntry]
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    tokenizer_source: str | None = None   # defaults to the base (or first model)
    name: str | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            d["base_model"] = self.base_model
        d["models"] = []
        for m in self.models:
            e: dict[str, Any] = {"model": m.model}
            if m.task and m.task != "custom":
                e["task"] = m.task
            if m.parameters:
                e["parameters"] = dict(m.parameters)
            d["models"].append(e)
        if self.parameters:
            d["parameters"] = dict(self.parameters)
        d["dtype"] = self.dtype
        if self.tokenizer_source:
            d["tokenizer_source"] = self.tokenizer_source
        if self.name:
            d["name"] = self.name
        return d

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def from_dict(d: Any) -> Recipe:
    """Structure only; method-specific checks are in ``validate``."""
    if not isinstance(d, dict):
        raise UserError("A recipe must be a YAML mapping with merge_method and models.")
    if "merge_method" not in d:
        raise UserError("The recipe has no merge_method.")
    models = d.get("models") or []
    if not isinstance(models, list):
        raise UserError("The recipe's models must be a list of {model: ...} entries.")
    entries = []
    for i, m in enumerate(models):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict) or not isinstance(m.get("model"), str) or not m.get("model"):
            raise UserError(f"Entry {i + 1} of models needs a 'model' naming a folder, Hub id or zoo:NAME.")
        params = m.get("parameters") or {}
        if not isinstance(params, dict):
            raise UserError(f"The parameters of {quoted(m['model'])} must be a mapping.")
        task = m.get("task", "custom")
        if task not in TASKS:
            raise UserError(f"The task of {quoted(m['model'])} is {quoted(task)}; use one of {', '.join(TASKS)}.")
        entries.append(ModelEntry(m["model"], dict(params), task))
    params = d.get("parameters") or {}
    if not isinstance(params, dict):
        raise UserError("The recipe's parameters must be a mapping.")
    base = d.get("base_model")
    if base is not None and (not isinstance(base, str) or not base):
        raise UserError("base_model must name a folder, Hub id or zoo:NAME.")
    return Recipe(str(d["merge_method"]), base, entries, dict(params), str(d.get("dtype") or "float32"),
                  d.get("tokenizer_source"), d.get("name"))


def loads(text: str) -> Recipe:
    import yaml
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"The recipe is not valid YAML{where}.")
    except RecursionError:   # PyYAML recurses per nesting level; ~1000 '[' is enough
        raise UserError("The recipe is nested too deeply to be a recipe.")
    except ValueError:       # int() of a 4300+ digit number, raised from inside PyYAML
        raise UserError("The recipe holds a number too long to read.")
    return from_dict(data)


def load(path: str) -> Recipe:
    # a recipe file is named on the command line; the UI parses uploaded text (loads)
    return loads(userfiles.read_text(path, "recipe file", space_check=False))


# ------------------------------------------------------------- validation
DTYPES = ("float32", "float16", "bfloat16")

# mergekit options that change nothing here: int8_mask only saves memory in
# mergekit, so a mergekit recipe that sets it must still load.
IGNORED = ("int8_mask",)


def _spec(recipe: Recipe):
    from .methods import get
    return get(recipe.merge_method)


def contributors(recipe: Recipe, spec=None) -> list[int]:
    """Indices of ``models`` entries that bring a task vector to the merge.

    A needs-base method skips an entry that repeats the base (mergekit
    allows listing it; its task vector is zero and mergekit ignores it).
    A method without a base (linear) averages every listed model.
    """
    spec = spec or _spec(recipe)
    if spec.needs_base:
        return [i for i, m in enumerate(recipe.models) if m.model != recipe.base_model]
    return list(range(len(recipe.models)))


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


_YAML11_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _check_value(p, value: Any, where: str) -> Any:
    """One value against its Param; returns it normalised (int, float, choice)."""
    what = f"{quoted(p.name)}{where}"
    if p.kind in ("float", "int") and isinstance(value, str) and _YAML11_FLOAT.match(value.strip()):
        # YAML 1.1 reads 1e9 (no dot) as text; the user wrote a number: judge it as one
        value = float(value)
    if p.kind in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{what} must be a number, not {value!r}.")
        if value != value or value in (float("inf"), float("-inf")):
            raise UserError(f"{what} must be a finite number, not {value!r}.")
        if isinstance(value, int) and abs(value) >= 2**63:
            # float() of a 400-digit YAML integer overflows (fuzzing found it); no parameter is that large
            raise UserError(f"{what} is a number of {value.bit_length()} bits; it is far out of range.")
        if p.kind == "int":
            if float(value) != int(value):
                raise UserError(f"{what} must be a whole number, not {value!r}.")
            value = int(value)
        else:
            value = float(value)
        if (p.lo is not None and value < p.lo) or (p.hi is not None and value > p.hi):
            lo = "-inf" if p.lo is None else _fmt(p.lo)
            hi = "inf" if p.hi is None else _fmt(p.hi)
            raise UserError(f"{what} is {_fmt(value)}; it must be between {lo} and {hi}.")
        return value
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{what} must be true or false, not {value!r}.")
        return value
    if p.kind == "choice":
        # YAML reads an unquoted 11 as a number; match choices by their text
        for c in p.choices:
            if str(c) == str(value):
                return c
        raise UserError(f"{what} is {value!r}; use one of {', '.join(str(c) for c in p.choices)}.")
    if p.kind == "str":
        if not isinstance(value, str):
            raise UserError(f"{what} must be text, not {value!r}.")
        return value
    return value


def _canonical(spec, raw: dict, where: str, per_model: bool) -> dict:
    """Map mergekit names to ours, check every name and value."""
    alias = {p.mergekit: p.name for p in spec.params if p.mergekit and p.mergekit != p.name}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key in IGNORED:
            continue
        name = alias.get(key, key)
        if name in out:
            raise UserError(f"{quoted(name)}{where} is given twice (once as {quoted(key)}).")
        p = spec.param(name)
        if p is None and name == "seed" and not per_model:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:   # torch seeds are int64
                raise UserError(f"'seed'{where} must be a whole number from 0 to 2^63-1, not {str(value)[:20]!r}.")
            out[name] = int(value)
            continue
        if p is None and name == "normalize" and value is False:
            # mergekit's normalize: false is the plain sum every method here
            # does unless it declares normalize itself
            continue
        if p is None:
            known = sorted({q.name for q in spec.params if q.per_model or not per_model}
                           | ({"seed"} if not per_model else set()))
            have = f"known: {', '.join(known)}" if known else \
                f"{spec.name} takes no {'per-model ' if per_model else ''}parameters"
            raise UserError(f"{quoted(key)}{where} is not a parameter of {spec.name}; {have}.")
        if per_model and not p.per_model:
            raise UserError(f"{quoted(name)}{where} is a global parameter of {spec.name}; put it under the recipe's parameters.")
        out[name] = _check_value(p, value, where)
    return out


def task_of(entry: ModelEntry, written: dict, builtin: str | None = None) -> str:
    """An expert's task: its ``task`` parameter unless "auto", else the
    entry's task unless custom, else ``builtin`` (the built-in model the
    folder is, when the caller knows), else custom."""
    task = written.get("task")
    if task is not None and task != "auto":
        return str(task)
    if entry.task != "custom":
        return entry.task
    return builtin or "custom"


@dataclass
class Checked:
    """A recipe that passed every check that needs no weights, with what the
    checks found, so nothing downstream parses or checks it again."""
    recipe: Recipe
    spec: Any                       # the method's MethodSpec
    written: list[dict]             # per models entry: canonical values written (own and shared)
    written_global: dict            # canonical global values written (seed included)
    contributors: list[int]         # models entries that bring a task vector

    def params(self, tasks: list[str] | None = None) -> tuple[list, Any]:
        """(Params per models entry, global Params): typed, every default
        filled, per-model defaults by task (``tasks``: one per models entry;
        by default each entry's own, ``task_of`` without folder knowledge).

        Precedence follows mergekit: the method's default, then a per-model
        parameter written once under the recipe's parameters (applies to
        every model), then the model's own parameters.
        """
        from .methods.base import Params
        if tasks is None:
            tasks = [task_of(m, w) for m, w in zip(self.recipe.models, self.written)]
        per = []
        for w, task in zip(self.written, tasks):
            values, _ = self.spec.defaults(task)
            values.update(w)
            per.append(Params(values))
        _, glob = self.spec.defaults()
        glob.update(self.written_global)
        return per, Params(glob)

    @property
    def model_params(self) -> list:
        return self.params()[0]

    @property
    def global_params(self):
        return self.params()[1]


def validate(recipe: Recipe) -> Checked:
    """Every check that needs no weights; raises one sentence on the first problem."""
    spec = _spec(recipe)  # unknown method -> sentence listing the known ones
    if recipe.dtype not in DTYPES:
        raise UserError(f"dtype {quoted(recipe.dtype)} is not supported; use one of {', '.join(DTYPES)}.")
    if not recipe.models:
        raise UserError("The recipe lists no models to merge.")
    seen: set[str] = set()
    for m in recipe.models:
        key = m.model.strip().rstrip("/")
        if key in seen:
            raise UserError(f"{quoted(m.model)} is listed twice in models; each model may appear once.")
        seen.add(key)
    if spec.needs_base and not recipe.base_model:
        raise UserError(f"{spec.name} needs a base_model: the task vectors are measured from it.")
    idx = contributors(recipe, spec)
    n = len(idx)
    if n == 0:
        raise UserError("The recipe lists no models to merge besides the base.")
    if n < spec.min_models:
        raise UserError(f"{spec.name} needs at least {spec.min_models} models to merge, but the recipe has {n}.")
    if spec.max_models is not None and n > spec.max_models:
        raise UserError(f"{spec.name} merges at most {spec.max_models} models, but the recipe has {n}.")
    top = _canonical(spec, recipe.parameters, " in parameters", per_model=False)
    shared = {k: v for k, v in top.items() if spec.param(k) is not None and spec.param(k).per_model}
    written = [{**shared, **_canonical(spec, m.parameters, f" of {quoted(m.model)}", per_model=True)}
               for m in recipe.models]
    checked = Checked(recipe, spec, written, {k: v for k, v in top.items() if k not in shared}, idx)
    _check_rules(checked)
    return checked


def unused_sentence(spec, p) -> str:
    """The refusal of a parameter the method's settings do not use (``Param.used_when``)."""
    g, v = p.used_when
    return f"{spec.short_label}'s {p.name} is used only when {g} is {v}; set {g}: {v} or leave {p.name} out."


def _check_rules(checked: Checked) -> None:
    """The method's rules between parameters, once, on the written values:
    a parameter set to other than its default while its ``used_when`` does
    not hold (it would change nothing: say so rather than ignore it), then
    the method's own ``check``."""
    spec, idx = checked.spec, checked.contributors
    per, glob = checked.params()
    for p in spec.params:
        if not p.used_when or p.used_with(glob):
            continue
        if p.per_model:
            models, written = checked.recipe.models, checked.written
            hit = any(p.name in written[i] and written[i][p.name] != p.default_for(task_of(models[i], written[i]))
                      for i in idx)
        else:
            hit = p.name in checked.written_global and checked.written_global[p.name] != p.default
        if hit:
            raise UserError(unused_sentence(spec, p))
    if spec.check is not None:
        spec.check([per[i] for i in idx], glob)


def to_mergekit_yaml(recipe: Recipe) -> str:
    """The same merge as a mergekit YAML, for methods both tools implement.

    Built-in models become absolute folders, since mergekit knows no zoo: or smol:
    (``BASE+ADAPTER`` stays: mergekit reads that syntax itself).
    Parameters are written under mergekit's names; ours-only knobs are an
    error rather than silently dropped.
    """
    import yaml
    from .checkpoint import resolve
    from .zoo import FAMILIES
    spec = _spec(recipe)
    if not spec.mergekit_name:
        raise UserError(f"{spec.name} has no mergekit equivalent, so it cannot be exported as a mergekit recipe.")
    checked = validate(recipe)

    def ref(r: str) -> str:
        return resolve(r) if r.split(":", 1)[0] in FAMILIES and ":" in r else r

    def names(params: dict, where: str) -> dict:
        out = {}
        for k, v in params.items():
            p = spec.param(k)
            if p is None:          # seed: mergekit takes it on the command line
                continue
            if p.mergekit is None and p.name not in _MERGEKIT_NAMES:
                if v == p.default:  # an ours-only knob left alone changes nothing
                    continue
                raise UserError(f"{quoted(k)}{where} has no mergekit equivalent, so {spec.name} with it cannot be exported.")
            out[p.mergekit or p.name] = v
        return out

    per, glob = checked.params()
    d: dict[str, Any] = {"merge_method": spec.mergekit_name}
    if recipe.base_model and (spec.needs_base or recipe.base_model in [m.model for m in recipe.models]):
        # mergekit's linear makes base_model an input of the average; ours only
        # measures from it, so an unlisted base is left out of the YAML
        d["base_model"] = ref(recipe.base_model)
    d["models"] = []
    for m, params in zip(recipe.models, per):
        e: dict[str, Any] = {"model": ref(m.model)}
        if not (spec.needs_base and m.model == recipe.base_model):
            # mergekit wants every per-model parameter spelled out (weight
            # has no default there), so defaults are written explicitly
            e["parameters"] = names(params, f" of {quoted(m.model)}")
        d["models"].append(e)
    g = names(glob, " in parameters")
    if g:
        d["parameters"] = g
    d["dtype"] = recipe.dtype
    if recipe.tokenizer_source:
        d["tokenizer_source"] = ref(recipe.tokenizer_source)
    return yaml.safe_dump(d, sort_keys=False)


# parameter names mergekit itself uses, so a Param named like this needs no
# explicit mergekit= alias
_MERGEKIT_NAMES = ("weight", "density", "gamma", "lambda", "normalize", "t", "epsilon", "rescale", "select_topk")
