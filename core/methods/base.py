"""The contract every merge method follows.

A method is a pure function on ONE tensor, so the engine can stream any
model size and the UI can show any intermediate:

    delta = spec.fn(base, deltas, model_params, global_params, ctx)

* base          -- θ₀ for this tensor (float32; on the engine's device)
* deltas        -- [τ_i = θ_i − θ₀], one per expert, same shape as base
                   (for vocab tensors already cut to the shared rows)
* model_params  -- one dict per expert: {"weight": .., "density": ..}
* global_params -- dict of the method's global knobs ({"lambda": ..})
* ctx           -- TensorContext: name, layer, module, seed, aux from
                   the method's ``prepare`` step (LED masks, ACM coeffs)

It returns the merged delta τ (θ = θ₀ + τ). Parameters are declared in the
spec with defaults and ranges; the UI builds its sliders from them and the
recipe validator checks values against them before any weight is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    lo: float | None = None        # inclusive bounds for numbers
    hi: float | None = None
    kind: str = "float"            # float | int | bool | choice | str
    choices: tuple = ()
    per_model: bool = False        # True: one value per expert (models[].parameters)
    help: str = ""
    mergekit: str | None = None    # name in mergekit YAML when different/present


@dataclass
class TensorContext:
    name: str
    layer: int | None = None
    module: str = "other"
    seed: int = 0
    aux: dict = field(default_factory=dict)   # e.g. {"masks": [...]} or {"coeffs": [...]}


MergeFn = Callable[[torch.Tensor, list, list, dict, TensorContext], torch.Tensor]


@dataclass
class MethodSpec:
    name: str                     # recipe name (merge_method)
    label: str                    # human name for the UI
    fn: MergeFn
    params: list[Param] = field(default_factory=list)
    needs_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    mergekit_name: str | None = None   # same YAML gives same tensors as mergekit
    summary: str = ""             # one sentence for the UI
    # prepare(recipe, infos, progress) -> Prepared with .aux(name) -> dict;
    # used by methods that need whole-model work first (LED scores, ACM MI)
    prepare: Callable | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> tuple[dict, dict]:
        """(per-model defaults, global defaults)."""
        pm = {p.name: p.default for p in self.params if p.per_model}
        gl = {p.name: p.default for p in self.params if not p.per_model}
        return pm, gl


def stack(deltas: list) -> torch.Tensor:
    return torch.stack(list(deltas), 0)


def weights_of(model_params: list, key: str = "weight", default: float = 1.0) -> list[float]:
    return [float(p.get(key, default)) for p in model_params]
