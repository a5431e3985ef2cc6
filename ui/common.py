"""What every tab shares: components by name, the one-sentence error guard,
Gradio's progress bar as core's callback.

``Named`` is the page's registry of components by key. An event wired with
``ui.on(...)`` hands its handler ``{key: value}`` (Gradio's set inputs,
turned from components into keys) and turns a returned ``{key: value}``
back into component updates, so no handler depends on the order of a list
of components, and tests call handlers with plain dicts."""
from __future__ import annotations

import functools
import inspect
import logging
import os

import gradio as gr

from core.errors import UserError, one_line

from . import controls as C

log = logging.getLogger("merge_explorer.ui")

CONCURRENCY = int(os.environ.get("MERGE_EXPLORER_CONCURRENCY", "1"))

# ------------------------------------------------------------------ errors
def sentence(exc: BaseException) -> str:
    if not isinstance(exc, UserError):
        log.exception("unexpected error in the UI", exc_info=exc)
    return one_line(exc)


def guard(fn):
    """One sentence instead of a traceback, for plain and generator handlers."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            try:
                yield from fn(*a, **k)
            except gr.Error:
                raise
            except Exception as exc:
                raise gr.Error(sentence(exc), print_exception=False)
        return gen

    @functools.wraps(fn)
    def plain(*a, **k):
        try:
            return fn(*a, **k)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(sentence(exc), print_exception=False)
    return plain


def progress_bar(progress):
    """core's progress(fraction, message) -> Gradio's bar (a no-op outside a request)."""
    def cb(frac: float, msg: str = "") -> None:
        try:
            progress(max(0.0, min(1.0, float(frac))), desc=msg)
        except Exception:   # the bar is decoration; it must never break the work
            pass
    return cb


def experts_in(v: dict) -> list[tuple[int, str, str]]:
    return C.used_experts(C.experts_of(v))


# the page opens on the tiny family: its base, its safety and math experts; the third slot is empty, set to code
DEFAULT_BASE = "zoo:base"
DEFAULT_EXPERTS = [("zoo:safety", "safety"), ("zoo:math", "math"), (C.NONE, "code")]
MODEL_KEYS = ("method", "base") + tuple(f"{w}{i}" for i in range(C.N_EXPERTS) for w in ("expert", "task"))


def _named_like(wrapper, fn):
    # not functools.wraps: Gradio reads the wrapper's own signature (set inputs, progress, request),
    # and inspect.signature would follow __wrapped__ to the handler's
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


class Named:
    """Components by key, and the adapter that lets handlers use the keys."""

    def __init__(self):
        self.comp: dict = {}       # key -> component
        self._key: dict = {}       # component id -> key
        self.tabs = None
        self.heavy = dict(concurrency_id="model", concurrency_limit=CONCURRENCY)

    def add(self, k: str, comp):
        self.comp[k] = comp
        self._key[comp._id] = k
        return comp

    def __getitem__(self, k: str):
        return self.comp[k]

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.comp if k.startswith(prefix)]

    def controls(self) -> list[str]:
        """Keys of what describes a merge: the method, the models and every method's controls."""
        return [k for k in self.comp if k in MODEL_KEYS or "." in k]

    def method_controls(self, method: str) -> list[str]:
        """Keys of what one method's merge reads: the method, the models and that method's controls.
        Events of a knob send only these (a dozen values instead of every method's hundreds)."""
        return [k for k in self.comp if k in MODEL_KEYS or k.startswith(method + ".")]

    def named(self, data: dict) -> dict:
        return {self._key[c._id]: v for c, v in data.items() if c._id in self._key}

    def updates(self, out, n: int | None = None):
        if isinstance(out, dict) and not out and n is not None:
            # nothing to change: Gradio reads an empty dict as one value, so skip each output instead
            return None if n == 0 else (gr.skip() if n == 1 else tuple(gr.skip() for _ in range(n)))
        if isinstance(out, dict):
            return {(self.comp[k] if isinstance(k, str) else k): v for k, v in out.items()}
        return out

    def adapt(self, fn, n: int | None = None):
        """fn({key: value}, progress=?, request=?) -> {key: update} as a Gradio handler on set inputs
        (``n``: how many outputs the event has)."""
        takes_progress = "progress" in inspect.signature(fn).parameters
        if inspect.isgeneratorfunction(fn):
            if takes_progress:
                def gen(data, progress=gr.Progress(), request: gr.Request = None):
                    for out in fn(self.named(data), progress=progress, request=request):
                        yield self.updates(out, n)
            else:
                def gen(data, request: gr.Request = None):
                    for out in fn(self.named(data), request=request):
                        yield self.updates(out, n)
            return _named_like(gen, fn)
        if takes_progress:
            def plain(data, progress=gr.Progress(), request: gr.Request = None):
                return self.updates(fn(self.named(data), progress=progress, request=request), n)
        else:
            def plain(data, request: gr.Request = None):
                return self.updates(fn(self.named(data), request=request), n)
        return _named_like(plain, fn)

    def on(self, trigger, fn, inputs, outputs, **kw):
        """trigger(fn) with inputs/outputs named by key (lists of keys or components)."""
        ins = {self.comp[k] if isinstance(k, str) else k for k in inputs}
        outs = [self.comp[k] if isinstance(k, str) else k for k in outputs]
        kw.setdefault("api_visibility", "private")
        status = next((k for k in outputs if isinstance(k, str) and k.endswith("status")), None)
        if status and "show_progress_on" not in kw:
            # the bar goes on the status line, not over the tables and plots the event also updates
            kw["show_progress_on"] = self.comp[status]
        if isinstance(trigger, list):      # several triggers: gr.on
            return gr.on(trigger, self.adapt(fn, len(outs)), ins, outs, **kw)
        return trigger(self.adapt(fn, len(outs)), ins, outs, **kw)


def column_label(ref: str, task: str) -> str:
    """A chat column's label: the model's short name, and its task when the name does not say it
    (zoo:safety is "safety", not "safety (safety)"; a folder "qwen-math/final (math)")."""
    name = short_name(ref)
    return name if name.rsplit(":", 1)[-1] == task else f"{name} ({task})"


def short_name(ref: str, parts: int = 2) -> str:
    """A model's name in labels, legends and status lines: zoo:math -> math; a local folder by its last
    two path parts (/data/runs/qwen-math/final -> qwen-math/final: a whole path does not fit a column's
    label, and the parent part tells apart the many folders called "final"); a Hub id as it is."""
    ref = ref.removeprefix("zoo:")
    if os.path.isabs(ref) or ref.startswith(("./", "../", "~")):
        names = [p for p in os.path.normpath(ref).split(os.sep) if p]
        return "/".join(names[-parts:]) or ref
    return ref


def short_names(refs) -> dict[str, str]:
    """``short_name`` of each of a set of models, with more of a folder's path where two would share a name
    (figures key their panels and legends by these names: a clash would drop a panel)."""
    refs = list(dict.fromkeys(refs))
    depth = dict.fromkeys(refs, 2)
    while True:
        names = {r: short_name(r, depth[r]) for r in refs}
        clash = [r for r in refs if list(names.values()).count(names[r]) > 1]
        grown = [r for r in clash if short_name(r, depth[r] + 1) != names[r]]
        if not clash or not grown:
            return names if not clash else {r: r.removeprefix("zoo:") for r in refs}
        for r in grown:
            depth[r] += 1

