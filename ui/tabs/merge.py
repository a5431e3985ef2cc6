"""The Merge tab: the method's controls, merging into the session's live model, the history."""
from __future__ import annotations

import time

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .. import state as S
from .common import _progress, _short, _values, guard


# ------------------------------------------------------------------ method
def method_summary(method) -> str:
    spec = C.spec_of(method)
    return f"**{spec.label}** — {spec.summary}" if spec.summary else f"**{spec.label}**"


@guard
def method_changed(method, *experts_tasks):
    """A new method: its summary, and every parameter slot reset to its
    defaults (per-task defaults where the method has them, e.g. LED's r)."""
    experts = [(experts_tasks[2 * i], experts_tasks[2 * i + 1]) for i in range(C.N_EXPERTS)]
    spec = C.spec_of(method)
    per = [C.task_defaults(spec, task) for _, task in experts]
    return [method_summary(method)] + C.param_updates(method, per)


# ------------------------------------------------------------------ merge
def _ensure_model(sess: S.Session, info, cb) -> None:
    """Load the base (a ModelInfo from the merge plan) unless it is loaded."""
    from core import checkpoint as M
    base = info.ref
    if sess.model is not None and sess.base_ref == base:
        return
    cb(0.0, f"loading {base}")
    sess.model = sess.tokenizer = None
    sess.chat = sess.chat_key = None
    sess.tokenizer = M.load_tokenizer(info)
    sess.model = M.load_model(info)
    sess.base_ref = base
    sess.merged_recipe = None


def merge_into_session(sess: S.Session, recipe: dict, cb) -> object:
    """Check, load the base once, merge in place; returns the MergeResult.

    The plan (validation, headers, compatibility) comes first so a bad
    recipe is refused before the base is loaded, and the merge reuses it.
    """
    plan = service.plan(recipe)
    if sess.chat is not None:
        sess.chat.stop()     # the chat's merged column must not read weights mid-copy
    _ensure_model(sess, plan.base, cb)
    res = service.merge(plan, live_model=sess.model, progress=cb)
    sess.merged_recipe = recipe
    sess.result = res
    return res


def _history_table(sess: S.Session) -> tuple[list, dict]:
    rows = [[h["n"], h["time"], h["label"], round(h["seconds"], 2)] for h in reversed(sess.history)]
    choices = [f"#{h['n']} · {h['label']}" for h in reversed(sess.history)]
    return rows, gr.update(choices=choices, value=choices[0] if choices else None)


@guard
def do_merge(*args, progress=gr.Progress(), request: gr.Request = None):
    """Merge button: controls -> recipe -> live model; history grows by one."""
    values = _values(args)
    recipe = C.recipe_from_values(values)
    sess = S.get(request)
    cb = _progress(progress)
    with sess.lock:
        res = merge_into_session(sess, recipe, cb)
        n = (sess.history[-1]["n"] + 1) if sess.history else 1
        sess.history.append({"n": n, "time": time.strftime("%H:%M:%S"), "recipe": recipe,
                             "label": C.describe(recipe), "seconds": res.seconds})
        del sess.history[:-S.MAX_HISTORY]
        rows, choice = _history_table(sess)
    spec = C.spec_of(recipe["merge_method"])
    names = " + ".join(_short(m["model"]) for m in recipe["models"])
    status = f"✓ Merged **{names}** with **{spec.label}** in {res.seconds:.2f} s ({res.n_tensors} tensors)."
    if res.notes:
        status += "\n\n" + "\n".join(f"Note: {n}" for n in res.notes)
    merged_label = gr.update(label=f"Merged ({spec.label})")
    return status, rows, choice, merged_label


def auto_merge(auto, *args, progress=gr.Progress(), request: gr.Request = None):
    """Re-merge when a knob is released, once something has been merged:
    cached scores make it near-instant on small models."""
    sess = S.get(request)
    if not auto or sess.model is None or sess.merged_recipe is None:
        return [gr.skip()] * 4
    return do_merge(*args, progress=progress, request=request)


@guard
def restore_history(choice, request: gr.Request = None):
    """Put a history entry's recipe back into every control."""
    sess = S.get(request)
    if not choice:
        raise UserError("Pick an entry of the merge history first.")
    n = int(str(choice).split("·")[0].strip().lstrip("#"))
    entry = next((h for h in sess.history if h["n"] == n), None)
    if entry is None:
        raise UserError(f"History entry #{n} is gone; merge again.")
    return C.values_from_recipe(entry["recipe"])



# ------------------------------------------------------------------ layout
class Knob(gr.Slider):
    """A slider that clamps instead of raising.

    A slot's range changes with the method, and an event fired in the same
    instant (a .change next to the .input that re-ranges the slots) may
    still carry the old value; gr.Slider would answer with an error toast.
    Rendered by the ordinary slider front end (is_template).
    """
    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        lo = self.minimum if self.minimum is not None else float("-inf")
        hi = self.maximum if self.maximum is not None else float("inf")
        return gr.Number.round_to_precision(min(max(float(payload), lo), hi), self.precision)


