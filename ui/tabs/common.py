"""What every tab shares: the one-sentence error guard, Gradio's progress
bar as core's callback, and small helpers on control values."""
from __future__ import annotations

import functools
import inspect
import logging
import os

import gradio as gr

from core.errors import UserError, one_line

from .. import controls as C

log = logging.getLogger("merge_explorer.ui")

CONCURRENCY = int(os.environ.get("MERGE_EXPLORER_CONCURRENCY", "1"))

# ------------------------------------------------------------------ errors
def _sentence(exc: BaseException) -> str:
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
                raise gr.Error(_sentence(exc), print_exception=False)
        return gen

    @functools.wraps(fn)
    def plain(*a, **k):
        try:
            return fn(*a, **k)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(_sentence(exc), print_exception=False)
    return plain


def _progress(progress):
    """core's progress(fraction, message) -> Gradio's bar (a no-op outside a request)."""
    def cb(frac: float, msg: str = "") -> None:
        try:
            progress(max(0.0, min(1.0, float(frac))), desc=msg)
        except Exception:   # the bar is decoration; it must never break the work
            pass
    return cb


def _values(args) -> list:
    return list(args[:C.N_VALUES])


def _experts(values: list) -> list[tuple[int, str, str]]:
    return C.used_experts(C.split(values)[2])


def _short(ref: str) -> str:
    return ref.removeprefix("zoo:")

