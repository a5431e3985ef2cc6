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

from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

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
            raise UserError(f"The parameters of '{m['model']}' must be a mapping.")
        task = m.get("task", "custom")
        if task not in TASKS:
            raise UserError(f"The task of '{m['model']}' is '{task}'; use one of {', '.join(TASKS)}.")
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
    return from_dict(data)


def load(path: str) -> Recipe:
    try:
        with open(path, encoding="utf-8") as f:
            return loads(f.read())
    except OSError:
        raise UserError(f"Cannot read the recipe file '{path}'.")
    except UnicodeDecodeError:
        raise UserError(f"The recipe file '{path}' is not UTF-8 text.")
