"""The merge plan: everything decided before any weight is read."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checkpoint as M
from .. import recipe as R
from ..checkpoint.naming import tensor_order
from ..checkpoint.refs import builtin_name
from ..checkpoint.writer import _ST_NAMES
from ..errors import UserError, quoted



@dataclass
class Plan:
    """Everything decided before any weight is read, built once per merge.

    The engine walks it, the sinks write from it, and a method's ``prepare``
    receives it (methods never plan or validate again). Fields a method may
    read: ``base``, ``sources``, ``entries``, ``tasks``, ``model_params``,
    ``global_params``, ``seed``, ``notes``, ``names``.
    """
    recipe: R.Recipe
    spec: object
    base: M.ModelInfo                     # reference model (base, or models[0])
    sources: list[M.ModelInfo]            # one per task vector; None-free
    entries: list[R.ModelEntry]           # the recipe's entry of each source
    tasks: list[str]                      # the task of each source (recipe.task_of)
    model_params: list                    # Params of each source: typed, defaults filled (by its task)
    global_params: object                 # Params
    zero_first: bool                      # sources[0] is the base itself (zero task vector)
    labels: list[str]
    names: list[str]                      # walk order
    grow_from: M.ModelInfo | None         # expert whose extra vocab rows are kept
    grow_index: int                       # its position among the readers
    notes: list[str]
    seed: int
    infos: dict


def _infos_for(recipe: R.Recipe, infos) -> dict[str, M.ModelInfo]:
    """ModelInfo per reference as written in the recipe (base_model and each model)."""
    if isinstance(infos, (list, tuple)):
        infos = {i.ref: i for i in infos}
    infos = dict(infos or {})
    refs = ([recipe.base_model] if recipe.base_model else []) + [m.model for m in recipe.models]
    for ref in refs:
        if ref not in infos:
            infos[ref] = M.inspect(ref)
    return infos


def _builtin_task(info: M.ModelInfo) -> str | None:
    name = builtin_name(info.path)
    return name if name in R.TASKS and name != "custom" else None


def build(recipe: R.Recipe, infos=None) -> Plan:
    """Validate the recipe, inspect headers, check compatibility; no weights read.

    ``infos`` maps references to ModelInfo (or is a list of them) for callers
    that inspected some models already; the others are inspected here, once.
    """
    checked = R.validate(recipe)
    spec = checked.spec
    infos = _infos_for(recipe, infos)
    # a folder of the built-in family is an expert of its task (zoo:safety, or its path)
    tasks = [R.task_of(m, w, _builtin_task(infos[m.model])) for m, w in zip(recipe.models, checked.written)]
    per, glob = checked.params(tasks)
    idx = list(checked.contributors)
    zero_first = False
    if recipe.base_model:
        base = infos[recipe.base_model]
        if not spec.needs_base and recipe.base_model in [m.model for m in recipe.models]:
            # listed as a model too: it joins the average with a zero task vector
            j = [m.model for m in recipe.models].index(recipe.base_model)
            idx = [j] + [i for i in idx if i != j]
            zero_first = True
    else:
        # no base (linear): models[0] is the reference and joins the average
        # with its zero task vector, so only the listed models are averaged
        base = infos[recipe.models[0].model]
        zero_first = True
    sources = [infos[recipe.models[i].model] for i in idx]
    experts = sources[1:] if zero_first else sources
    rep = M.compatibility(base, experts) if experts else M.CompatReport(ok=True)
    if not rep.ok:
        raise UserError(rep.sentence())
    notes = list(rep.notes)
    grow_from, grow_index = None, -1
    for k, e in enumerate(experts):
        if e.ref in rep.vocab_extra:
            grow_from, grow_index = e, k
            break
    if grow_from is not None:
        others = [e.ref for e in experts if e.ref in rep.vocab_extra and e is not grow_from]
        notes.append(f"The vocabulary grows to {grow_from.vocab_size or '?'} tokens: the extra embedding rows, "
                     f"the tokenizer and the config come from {quoted(grow_from.ref)}" +
                     (f"; the extra rows of {', '.join(others)} are dropped." if others else "."))
    names = sorted(base.tensors, key=tensor_order)
    seed = int(glob["seed"]) if "seed" in glob else 0
    return Plan(recipe=recipe, spec=spec, base=base, sources=sources, entries=[recipe.models[i] for i in idx],
                tasks=[tasks[i] for i in idx], model_params=[per[i] for i in idx],
                global_params=glob, zero_first=zero_first, labels=[s.ref for s in sources], names=names,
                grow_from=grow_from, grow_index=grow_index, notes=notes, seed=seed, infos=infos)


def _out_meta(p: Plan, name: str, dtype: torch.dtype) -> tuple[str, tuple[int, ...]]:
    """(safetensors dtype, shape) of one output tensor, known before computing it."""
    meta = p.base.tensors[name]
    if not meta.is_float:
        return meta.dtype, meta.shape
    shape = meta.shape
    if p.grow_from is not None and name in M.vocab_tensors(p.base):
        shape = p.grow_from.tensors[name].shape
    return _ST_NAMES[dtype], shape
