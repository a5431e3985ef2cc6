"""The contract every merge method follows.

A method is a pure function on ONE tensor, so the engine can stream any
model size and the UI can show any intermediate:

    delta = spec.fn(base, deltas, model_params, global_params, ctx)

* base          -- θ₀ for this tensor (float32; on the engine's device)
* deltas        -- [τ_i = θ_i − θ₀], one per expert, same shape as base
                   (for vocab tensors already cut to the shared rows)
* model_params  -- one Params per expert: {"weight": .., "density": ..}
* global_params -- Params of the method's global knobs ({"lambda": ..})
* ctx           -- TensorContext: name, layer, module, seed, aux from
                   the method's ``prepare`` step (LED masks, ACM coeffs)

It returns the merged delta τ (θ = θ₀ + τ). Parameters are declared in the
spec with defaults and ranges; the UI builds its sliders from them and the
recipe validator checks values against them before any weight is read.
A method receives them resolved (``Params``): every declared parameter is
there, typed, with its declared default where the recipe is silent, so a
method reads ``params["weight"]`` and never repeats a default. A default
may depend on the expert's task (``Param.by_task``: LED's r); the registry
is the one place that says so, and the UI asks it. The same holds for what
else a control is: the paper's symbol and the words a person reads
(``Param.title``: "λ (scale)"), and when a method uses the parameter at all
(``Param.used_when``: ACM's density only with base_method ties). The UI
hides a knob its settings do not use; recipe validation refuses one set to
a value other than its default (core.recipe), for the UI, the HTTP API and
the command line alike.

Row blocks. A spec with ``elementwise=True`` promises that entry j of the
result depends only on entry j of the inputs, so the engine may call ``fn``
on consecutive row blocks of a large tensor (in flat order, each once, with
``ctx.offset`` = flat index of the block's first entry) instead of on the
whole tensor. That keeps every pass in cache and no float32 copy of a whole
tensor is made (0.5B Task Arithmetic: 3.1 GB -> 0.5 GB peak RSS).

Methods that need one number per tensor first (TIES: the k-th largest |τᵢ|)
add ``delta_stats(tau, params_i, global_params) -> object``: the engine
calls it once per task vector (in ``deltas`` order, one whole tensor at a
time, flattened float32 in a scratch buffer the hook may overwrite) and
hands the results to the row blocks as ``ctx.aux["delta_stats"]``. Only one
whole task vector is ever held, instead of all of them at once. ``fn`` must
still work on whole tensors without that key (small tensors, the UI's
in-memory re-merge, tests): it then computes the statistics itself.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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
    by_task: tuple = ()            # ((task, default), ...): defaults that depend on the expert's task
    step: float | None = None      # a slider's step where the UI's rule of thumb cannot reach the default
    symbol: str = ""               # the paper's symbol ("λ", "r", "t"); the control reads "λ (scale)"
    label: str = ""                # the control's words (default: the name, "_" read as a space)
    used_when: tuple = ()          # (global param, value): used only when that global has that value

    def default_for(self, task: str | None = None) -> Any:
        """The default for an expert of ``task``; the plain default when the task has none."""
        return dict(self.by_task).get(task, self.default)

    @property
    def title(self) -> str:
        """What a person reads for this parameter: "λ (scale)", "r (mask ratio)", "density"."""
        words = self.label or self.name.replace("_", " ")
        return f"{self.symbol} ({words})" if self.symbol else words

    def used_with(self, global_params: Mapping) -> bool:
        """Whether a method with these global settings uses this parameter at all
        (``used_when``; a global missing from ``global_params`` has no value, so it matches none)."""
        if not self.used_when:
            return True
        name, value = self.used_when
        return str(global_params.get(name)) == str(value)


class Params(Mapping):
    """Resolved parameters of one expert (or a method's globals): every
    declared parameter, typed (int, float, bool, a choice, text), its
    default where the recipe is silent; plus ``seed`` among the globals when
    the recipe sets one. Read-only; reading an undeclared name is a bug and
    raises KeyError. A plain dict with the same keys works the same for a
    method (tests and methods that call each other use one)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping):
        self._values = dict(values)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


@dataclass
class TensorContext:
    name: str
    layer: int | None = None
    module: str = "other"
    seed: int = 0
    aux: dict = field(default_factory=dict)   # e.g. {"masks": [...]} or {"coeffs": [...]}
    offset: int = 0   # flat index of the first entry fn sees (row blocks; 0 for a whole tensor)


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
    # prepare(plan, progress) -> Prepared, given the merge plan (core.merge.plan.Plan,
    # built once per merge; a method never plans again), for methods that need
    # whole-model work first (LED scores, ACM MI). Prepared.aux(name) -> dict is
    # handed to fn as ctx.aux, once per tensor in walk order; Prepared.summary()
    # -> dict | None is what the UI draws for the merge (MergeResult.analysis)
    prepare: Callable | None = None
    # fn may be fed row blocks (see the module docstring); off by default so
    # a new method is always given whole tensors unless it says otherwise
    elementwise: bool = False
    # delta_stats(tau_flat_f32, params_i, global_params) -> object, once per
    # task vector before the row blocks; results in ctx.aux["delta_stats"]
    delta_stats: Callable | None = None
    # trims by magnitude as mergekit does: where equal magnitudes straddle a cut (bf16 weights) it sorts the
    # whole tensor once, as mergekit does (core/methods/_threshold.py); the memory estimate counts the sort
    sorts_ties: bool = False
    # check(model_params, global_params) raises UserError for a rule between parameters that
    # Param.used_when cannot say (ACM: clusters <= n_calibration); recipe validation runs it once,
    # with the contributing experts' resolved Params, before any weight is read
    check: Callable | None = None

    @property
    def short_label(self) -> str:
        """The label without its gloss: "ACM", not "ACM (activation-guided)" (sentences, narrow columns)."""
        return self.label.split(" (")[0]

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self, task: str | None = None) -> tuple[dict, dict]:
        """(per-model defaults for an expert of ``task``, global defaults)."""
        pm = {p.name: p.default_for(task) for p in self.params if p.per_model}
        gl = {p.name: p.default for p in self.params if not p.per_model}
        return pm, gl


# Recipe name -> MethodSpec. The UI builds its controls from it; recipe
# validation checks parameters against it. Filled by the method modules,
# which core.methods imports (all of them, so the registry is complete).
REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec
