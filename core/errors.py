"""The one exception type a user can cause.

Everything a person can get wrong (a bad path, incompatible models, a value
out of range, a corrupt file) is raised as ``UserError`` with one sentence
that names the problem. The CLI prints that sentence on stderr and exits
non-zero; the UI shows it in a banner. Anything else is a bug: it is logged
with its traceback and the user sees a generic one-liner.
"""
from __future__ import annotations


def quoted(name) -> str:
    """``name`` in single quotes for a message, on one line whatever it holds.

    Names come from files and users (tensor names from a safetensors header,
    keys of a recipe, paths, references): a newline or another control
    character in one would break the one-sentence promise, so those are
    escaped as Python writes them (\\n, \\x00); printable text, non-ASCII
    included, stays as it is.
    """
    s = str(name)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return f"'{s}'"


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is the sentence to show."""


def one_line(exc: BaseException) -> str:
    """The sentence to show a user for any exception, never a traceback."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Ran out of memory; try smaller models or fewer experts."
    return f"Internal error ({type(exc).__name__}); details are in the log."
