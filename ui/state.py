"""Per-session state that must not go into gr.State.

gr.State is deep-copied per event and would copy whole models, so loaded
models, the chat session and the merge history live here, in a dict keyed
by the browser session (``request.session_hash``) and dropped when the page
is closed (``demo.unload``). Handlers called directly (tests, no request)
share the key "local".
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("merge_explorer.ui")

MAX_HISTORY = 30


@dataclass
class Session:
    """Everything heavy or long-lived one browser tab owns."""
    base_ref: str | None = None        # the model loaded as ``model`` (merged in place)
    model: Any = None                  # the live merged model
    tokenizer: Any = None
    merged_recipe: dict | None = None  # what ``model`` holds now (None: plain base)
    result: Any = None                 # the last engine.MergeResult
    cache: Any = None                  # core.eval.chat.ModelCache for the parents
    chat: Any = None                   # core.eval.chat.ChatSession
    chat_key: tuple | None = None
    transcripts: list = field(default_factory=list)      # what each chat column shows (all exchanges)
    chat_merge: str | None = None                        # the merge the merged column last answered with
    chat_stopped: bool = False                           # Stop was pressed during the current answer
    stop_pressed: float = 0.0                            # time.monotonic() of the last Stop
    history: list[dict] = field(default_factory=list)    # {"n", "time", "recipe", "label", "seconds", "scores"}
    board_refs: dict = field(default_factory=dict)       # base/parent ref -> (role, last probe result)
    figures: dict = field(default_factory=dict)          # last analysis dicts (led, acm, tv, prov)
    look_open: bool = False                              # the Look tab is the one shown
    look_stale: bool = False                             # a merge happened since its pictures were drawn
    drawn: dict = field(default_factory=dict)            # Look figure key -> digest of the figure the page shows
    tmp: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    touched: float = field(default_factory=time.time)

    def tmpdir(self) -> str:
        if self.tmp is None:
            self.tmp = tempfile.mkdtemp(prefix="merge-explorer-ui-")
        return self.tmp

    def close(self) -> None:
        if self.chat is not None:
            try:
                self.chat.stop()
            except Exception:   # closing must never fail the unload
                log.exception("stopping the chat on close")
        if self.cache is not None:
            self.cache.clear()
        self.model = self.tokenizer = self.chat = self.cache = self.result = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


SESSIONS: dict[str, Session] = {}
_LOCK = threading.Lock()


def _event_request():
    """The request of the Gradio event running in this context, if any.

    Gradio injects gr.Request only into POSITIONAL parameters (its
    special_args stops at ``*args``), so handlers written
    ``fn(*values, request=None)`` get None even inside a real event; without
    this every browser tab shared the session "local" (one model, one chat,
    one history for all users; found by tests/ui/test_concurrency.py). Gradio
    sets the same request in a context variable for the duration of the call.
    """
    try:
        from gradio.context import LocalContext
        return LocalContext.request.get(None)
    except Exception:   # no gradio / another version: direct calls stay "local"
        return None


def key_of(request) -> str:
    if request is None:
        request = _event_request()
    return getattr(request, "session_hash", None) or "local"


def get(request) -> Session:
    k = key_of(request)
    with _LOCK:
        s = SESSIONS.get(k)
        if s is None:
            s = SESSIONS[k] = Session()
        s.touched = time.time()
        return s


def drop(request) -> None:
    """Free a closed tab's models and files (demo.unload)."""
    with _LOCK:
        s = SESSIONS.pop(key_of(request), None)
    if s is not None:
        s.close()


def gpu(duration: int = 60):
    """``spaces.GPU`` on a ZeroGPU Space, a no-op decorator elsewhere.

    The spaces package is imported only if installed; off a Space its
    decorator already returns the function unchanged. Only generation is
    decorated (chat, probes): merging stays on the CPU in the main process,
    since the decorated call runs in a worker whose changes to the session
    would be lost.
    """
    import os
    if not os.environ.get("SPACES_ZERO_GPU"):
        return lambda fn: fn
    try:
        import spaces  # type: ignore
        return spaces.GPU(duration=duration)
    except Exception:
        return lambda fn: fn
