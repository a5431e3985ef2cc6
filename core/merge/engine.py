"""Recipe in, merged model out: plan once, prepare the method, walk, sink.

The engine holds no method math. The plan (merge.plan) checks everything
that can be checked before touching a weight (recipe, headers,
compatibility, memory); the method's ``prepare`` runs once on it (LED's
scores, ACM's coefficients); the walk (merge.walk) streams one tensor name
at a time through the method; a sink takes each result: the UI's live model
(fast re-merge, no disk) or safetensors shards in an atomic folder
(checkpoint.writer), written as they are computed, never a whole shard in
memory. A failure or Ctrl-C leaves nothing behind.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

import torch

from .. import checkpoint as M
from .. import policy
from .. import recipe as R
from ..checkpoint import harness, writer
from ..checkpoint.writer import DEFAULT_SHARD_SIZE
from ..errors import UserError, quoted
from . import plan
from .plan import Plan, _out_meta
from .result import MergeResult
from .walk import _Buffers, _inputs, _walk

Progress = Callable[[float, str], None]

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# one merge at a time per process: merges share the open readers, and two
# at once on a small CPU would only slow each other down
_LOCK = threading.RLock()


def _plan_of(recipe: R.Recipe | Plan, infos) -> Plan:
    """The plan itself, or one built from a recipe (the only place a merge plans)."""
    return recipe if isinstance(recipe, Plan) else plan.build(recipe, infos)


def merge_state_dict(recipe: R.Recipe | Plan, *, infos=None, device: str = "cpu", progress: Progress | None = None
                     ) -> tuple[dict[str, torch.Tensor], MergeResult]:
    """The merged weights in memory (output dtype), for tests and small models.

    Reuses the open readers of the previous call when the models are the
    same, so repeated merges of one family are cheap.
    """
    t0 = time.perf_counter()
    p = _plan_of(recipe, infos)
    dtype = _TORCH_DTYPES[p.recipe.dtype]
    device = M.pick_device(device)
    result = MergeResult(None, len(p.names), 0.0, list(p.notes), list(p.labels))
    out: dict[str, torch.Tensor] = {}
    with _LOCK:
        prepared = p.spec.prepare(p, progress) if p.spec.prepare else None
        inputs = _inputs(p, device, live=True)
        _walk(p, inputs, dtype, out.__setitem__, progress, prepared, result)
    result.seconds = time.perf_counter() - t0
    return out, result


def _into_live(live_model, merged: dict[str, torch.Tensor]) -> None:
    """Copy merged tensors into the model's own parameters, in place.

    Everything is checked first, so a mismatch leaves the live model as it
    was rather than half-merged.
    """
    state = live_model.state_dict(keep_vars=True)
    for name, t in merged.items():
        if name not in state:
            raise UserError(f"The loaded model has no tensor {quoted(name)}, so it is not the model this recipe merges.")
        if tuple(state[name].shape) != tuple(t.shape):
            raise UserError(f"The loaded model's {quoted(name)} is {list(state[name].shape)} but the merge gives "
                            f"{list(t.shape)}; merge to a folder instead (the vocabulary changes size).")
    with torch.no_grad():
        for name, t in merged.items():
            state[name].copy_(t)


def check_fits(p: Plan, live: bool) -> None:
    """Refuse, from the headers alone, a merge that would not fit in memory: before any weight is read
    (the app calls it before it loads the base into the session, through service.plan)."""
    policy.check_merge(p.base, p.sources, live=live, needs_grad=p.spec.prepare is not None,
                       out_bytes=_TORCH_DTYPES[p.recipe.dtype].itemsize, sorts=p.spec.sorts_ties)


def run_merge(recipe: R.Recipe | Plan, *, out_dir: str | None = None, live_model=None,
              progress: Progress | None = None, device: str = "cpu", infos=None, force: bool = False,
              shard_size: int = DEFAULT_SHARD_SIZE, show_bar: bool = False,
              handoff_folder: str | None = None) -> MergeResult:
    """Merge ``recipe`` into ``live_model`` (in place, no disk) or a new folder ``out_dir``.

    ``recipe`` is a Recipe or the Plan built from it (plan.build: a caller
    that checked the plan before loading a model passes it on, so nothing is
    validated or inspected twice). ``infos`` maps each reference written in
    the recipe to its ModelInfo (or is a list of ModelInfo) so callers that
    already inspected the models skip that step. Exactly one of ``out_dir``
    and ``live_model`` is given. ``handoff_folder``: where the user will have
    the folder (the Export tab's zip, unpacked), for the card's lm_eval
    commands; default ``out_dir``.
    """
    if (out_dir is None) == (live_model is None):
        raise UserError("Give either an output folder or a loaded model to merge into.")
    t0 = time.perf_counter()
    if out_dir is not None:
        out_dir = os.path.abspath(os.path.expanduser(out_dir))
        policy.check_output_dir(out_dir)   # Space mode: only under the output roots
        writer.check_target(out_dir, force)
    p = _plan_of(recipe, infos)
    recipe = p.recipe
    check_fits(p, live=live_model is not None)
    if live_model is not None:
        merged, result = merge_state_dict(p, device=device, progress=progress)
        _into_live(live_model, merged)
        result.seconds = time.perf_counter() - t0
        return result
    return _to_folder(p, out_dir, progress, device, shard_size, show_bar, t0, handoff_folder or out_dir)


def _to_folder(p: Plan, out_dir: str, progress: Progress | None, device: str, shard_size: int,
               show_bar: bool, t0: float, handoff_folder: str) -> MergeResult:
    recipe = p.recipe
    dtype = _TORCH_DTYPES[recipe.dtype]
    device = M.pick_device(device)
    result = MergeResult(out_dir, len(p.names), 0.0, list(p.notes), list(p.labels))
    bar = None
    try:
        with _LOCK, writer.Folder(out_dir) as folder:
            prepared = p.spec.prepare(p, progress) if p.spec.prepare else None
            inputs = _inputs(p, device, live=False)
            shards = folder.shards([(n, *_out_meta(p, n, dtype)) for n in p.names], shard_size)
            bufs = _Buffers(p, len(inputs.readers), device, dtype) if not inputs.cache_on else None
            if show_bar:
                from tqdm import tqdm
                bar = tqdm(total=len(p.names), unit="tensor", desc=f"merging ({p.spec.name})")
            # row blocks are ~1 MB: threads would only synchronise (see checkpoint.loading.single_thread)
            with M.single_thread(bufs is not None and bool(bufs.chunked)):
                _walk(p, inputs, dtype, shards.add, progress, prepared, result, bar, bufs)
            del bufs
            shards.finish()
            tok_dir = _tokenizer_dir(p)
            result.handoff = harness.commands(handoff_folder, recipe.dtype, p.tasks,
                                              chat_template=harness.has_chat_template(tok_dir))
            _side_files(p, folder, tok_dir, result.handoff)
            folder.commit()
    finally:
        if bar is not None:
            bar.close()
    if progress is not None:
        progress(1.0, f"wrote {out_dir}")
    result.seconds = time.perf_counter() - t0
    return result


def _tokenizer_dir(p: Plan) -> str:
    """The folder of the tokenizer the output has: the grown expert's, else the base's, else the recipe's
    tokenizer_source."""
    src = p.grow_from or p.base
    if p.grow_from is None and p.recipe.tokenizer_source:
        info = p.infos.get(p.recipe.tokenizer_source)
        return info.path if info is not None else M.resolve(p.recipe.tokenizer_source)
    return src.path


def _side_files(p: Plan, folder: writer.Folder, tok_dir: str, handoff) -> None:
    """Config, generation config and tokenizer of the model whose vocabulary
    the output has, the recipe and the model card (with the lm-evaluation-harness hand-over)."""
    recipe = p.recipe
    src = p.grow_from or p.base
    card = writer.model_card(title=recipe.name, method=p.spec.name, label=p.spec.label, summary=p.spec.summary,
                             dtype=recipe.dtype, base=p.base.ref if recipe.base_model else None,
                             parents=[(s.ref, mp) for s, mp in zip(p.sources, p.model_params)],
                             params=p.global_params, notes=p.notes, recipe_yaml=recipe.to_yaml(),
                             sections=harness.card_section(handoff))
    folder.side_files(config=src.config, dtype=recipe.dtype, source_dir=src.path, tokenizer_dir=tok_dir,
                      recipe_yaml=recipe.to_yaml(), card=card)
