"""Merging into the session's live model: load the base once, merge in place (never under a running
chat answer), record the merge in the history. The Merge button's handler lives here because the tour
and "Restore and merge" run it too."""
from __future__ import annotations

import contextlib
import time

import gradio as gr

from core import service

from . import controls as C
from . import state as S
from .board import history_outputs
from .common import guard, progress_bar, short_name


def ensure_model(sess: S.Session, info, cb) -> None:
    """Load the base (a ModelInfo from the merge plan) unless it is loaded."""
    base = info.ref
    if sess.model is not None and sess.base_ref == base:
        return
    cb(0.0, f"loading {base}")
    sess.model = sess.tokenizer = None
    sess.chat = sess.chat_key = None
    sess.tokenizer = service.load_tokenizer(info)
    sess.model = service.load_model(info)
    sess.base_ref = base
    sess.merged_recipe = None


def merge_into_session(sess: S.Session, recipe: dict, cb) -> object:
    """Check, load the base once, merge in place; returns the MergeResult.

    The plan (validation, headers, compatibility) comes first so a bad
    recipe is refused before the base is loaded, and the merge reuses it.
    """
    plan = service.plan(recipe, live=True)    # memory too, before the base is loaded
    # the chat's merged column must never read weights mid-copy: its answer stops and ends first
    with sess.chat.hold() if sess.chat is not None else contextlib.nullcontext():
        ensure_model(sess, plan.base, cb)
        res = service.merge(plan, live_model=sess.model, progress=cb)
    sess.merged_recipe = recipe
    sess.result = res
    return res


def record(sess: S.Session, recipe: dict, seconds: float) -> dict:
    """The session's history gains the merge unless it repeats the latest entry."""
    if sess.history and sess.history[-1]["recipe"] == recipe:
        entry = sess.history[-1]
        entry.update(time=time.strftime("%H:%M:%S"), seconds=seconds)
        return entry
    n = (sess.history[-1]["n"] + 1) if sess.history else 1
    entry = {"n": n, "time": time.strftime("%H:%M:%S"), "recipe": recipe, "label": C.describe(recipe),
             "seconds": seconds, "scores": None}
    sess.history.append(entry)
    del sess.history[:-S.MAX_HISTORY]
    return entry


def merge_and_record(sess: S.Session, recipe: dict, cb) -> tuple[object, float, dict]:
    """Merge into the live model and record it; (MergeResult, wall seconds, history entry).
    The wall time counts everything the user waits for: the plan, loading the base, scoring, the walk."""
    t0 = time.perf_counter()
    with sess.lock:
        res = merge_into_session(sess, recipe, cb)
        wall = time.perf_counter() - t0
        entry = record(sess, recipe, wall)
    return res, wall, entry


def status_line(recipe: dict, res, wall: float, n: int) -> str:
    spec = C.spec_of(recipe["merge_method"])
    names = " + ".join(short_name(m["model"]) for m in recipe["models"])
    text = f"✓ Merged **{names}** with **{spec.label}** in {wall:.2f} s ({res.n_tensors} tensors; #{n} in the history)."
    if res.notes:
        text += "\n\n" + "\n".join(f"Note: {n}" for n in res.notes)
    return text


@guard
def do_merge(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Merge button: controls -> recipe -> live model; the history grows by one."""
    recipe = C.recipe_from_values(v)
    sess = S.get(request)
    res, wall, entry = merge_and_record(sess, recipe, progress_bar(progress))
    return {"merge_status": status_line(recipe, res, wall, entry["n"]), **history_outputs(sess),
            "chat0": gr.update(label=merged_label(recipe))}


def merged_label(recipe: dict) -> str:
    """The merged chat column's label: the method's name without its gloss ("Merged (ACM)", not "Merged (ACM
    (activation-guided))": a column is narrow)."""
    return f"Merged ({C.spec_of(recipe['merge_method']).short_label})"
