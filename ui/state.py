"""Per-session state that must not go into gr.State.

gr.State is deep-copied per event and would copy whole models, so loaded
models, the chat session and the merge history live here, in a dict keyed
by the browser session (``request.session_hash``) and dropped when the page
is closed (``demo.unload``). Handlers called directly (tests, no request)
share the key "local".
"""
from __future__ import annotations

import logging
import os
import secrets
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
    held_out: bool = False                               # probe on the family's held-out suites, not benchmarks
    figures: dict = field(default_factory=dict)          # last analysis dicts (led, acm, tv, prov)
    look_open: bool = False                              # the Look tab is the one shown
    look_stale: bool = False                             # a merge happened since its pictures were drawn
    drawn: dict = field(default_factory=dict)            # Look figure key -> digest of the figure the page shows
    shows: dict = field(default_factory=dict)            # "led"/"acm" -> (base, experts) its Look panels are of
    tmp: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    touched: float = field(default_factory=time.monotonic)
    expired: bool = False              # made anew for a visitor whose session was dropped while idle
    # what the browser keeps (gr.BrowserState) to find this session again after a reload: a secret, not the
    # session hash, which a reload changes and which other requests carry
    token: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    def needs_merge(self, first: str) -> str:
        """The sentence for a handler that needs a merged model and finds none: ``first`` (what to do),
        or, for a visitor whose idle session was dropped, that it expired."""
        if self.expired:
            return (f"This session expired after {ttl_seconds() // 60:.0f} idle minutes and its models were "
                    "freed; merge again.")
        return first

    def live_entry(self) -> dict | None:
        """The history entry of the merge the live model holds (None before a merge)."""
        return next((h for h in reversed(self.history) if h["recipe"] == self.merged_recipe), None)

    def entry_of(self, choice) -> dict:
        """The history entry a "#n · label" choice names; one sentence when there is none."""
        from core.errors import UserError
        if not choice:
            raise UserError("Pick an entry of the merge history first.")
        try:
            n = int(str(choice).split("·")[0].strip().lstrip("#"))
        except ValueError:
            raise UserError("Pick an entry of the merge history first.")
        entry = next((h for h in self.history if h["n"] == n), None)
        if entry is None:
            raise UserError(f"History entry #{n} is gone; merge again.")
        return entry

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


# Sessions hold models (a SmolLM2 merge is ~0.5 GB), and an HTTP API client never unloads its page: idle
# ones are dropped after a time-to-live and beyond a maximum count, least recently used first
# (docs/RELIABILITY.md). A session busy with a merge or probes (its lock held) is never dropped.
DEFAULT_TTL_S = 30 * 60
DEFAULT_MAX_SESSIONS = 16
EXPIRED: "dict[str, float]" = {}      # keys dropped while idle -> when (bounded; for the sentence)
MAX_EXPIRED = 10_000


def _env_int(name: str, default: int, lo: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        v = int(raw) if raw else default
    except ValueError:
        log.warning("%s is %r, not a whole number; using %d.", name, raw, default)
        return default
    return max(lo, v)


def ttl_seconds() -> int:
    return _env_int("MERGE_EXPLORER_SESSION_TTL", DEFAULT_TTL_S, 1)


def max_sessions() -> int:
    return _env_int("MERGE_EXPLORER_MAX_SESSIONS", DEFAULT_MAX_SESSIONS, 1)


def _idle(s: Session) -> bool:
    if not s.lock.acquire(blocking=False):
        return False
    s.lock.release()
    return True


def _evict(keep: str, now: float) -> list[Session]:
    """Under _LOCK: pop the sessions past their TTL and, beyond the cap (counting the one being made),
    the least recently used idle ones; returns them to close outside the lock."""
    ttl, cap = ttl_seconds(), max_sessions()
    gone = [k for k, s in SESSIONS.items() if k != keep and now - s.touched > ttl and _idle(s)]
    room = len(SESSIONS) - len(gone) + (keep not in SESSIONS) - cap
    if room > 0:
        lru = sorted((s.touched, k) for k, s in SESSIONS.items() if k != keep and k not in gone and _idle(s))
        gone += [k for _, k in lru[:room]]
    out = []
    for k in gone:
        out.append(SESSIONS.pop(k))
        EXPIRED[k] = now
    while len(EXPIRED) > MAX_EXPIRED:
        EXPIRED.pop(next(iter(EXPIRED)))
    return out


def get(request) -> Session:
    k = key_of(request)
    now = time.monotonic()
    with _LOCK:
        gone = _evict(k, now)
        s = SESSIONS.get(k)
        if s is None:
            s = SESSIONS[k] = Session(expired=EXPIRED.pop(k, None) is not None)
        s.touched = now
    for old in gone:
        old.close()
    return s


def drop(request) -> None:
    """Free a closed tab's models and files at once."""
    with _LOCK:
        s = SESSIONS.pop(key_of(request), None)
    if s is not None:
        s.close()


# A reload unloads the page and loads it again with a new session hash: the session waits this long for the
# page to come back (``adopt``) before its models are freed.
RELOAD_GRACE_S = 30.0
PARKED: "dict[str, tuple[Session, float]]" = {}     # token -> (session of an unloaded page, when)


def park(request) -> None:
    """The page was unloaded (closed, or reloaded): keep its session for RELOAD_GRACE_S, then free it."""
    with _LOCK:
        s = SESSIONS.pop(key_of(request), None)
        if s is None:
            return
        PARKED[s.token] = (s, time.monotonic())
    timer = threading.Timer(RELOAD_GRACE_S + 0.5, _reap)
    timer.daemon = True
    timer.start()


def _reap() -> None:
    now = time.monotonic()
    with _LOCK:
        gone = [t for t, (_s, at) in PARKED.items() if now - at >= RELOAD_GRACE_S]
        old = [PARKED.pop(t)[0] for t in gone]
    for s in old:
        s.close()


def is_live(token: str | None) -> bool:
    """Whether a page that is still open holds the session of ``token``."""
    with _LOCK:
        return any(s.token == token for s in SESSIONS.values())


def adopt(token: str | None, request) -> Session | None:
    """The page came back (a reload) holding ``token``: its parked session becomes this page's. None when there
    is none (closed long ago, expired, still open in another tab, or never)."""
    if not isinstance(token, str) or not token:
        return None
    k = key_of(request)
    with _LOCK:
        # only a parked session: one still live belongs to an open page (a second tab shares the browser's
        # storage, and must not take the first tab's models); a reload's waits for the unload (app.reattach)
        found = PARKED.pop(token, (None, 0.0))[0]
        if found is None:
            return None
        mine = SESSIONS.pop(k, None)
        SESSIONS[k] = found
        found.touched = time.monotonic()
    if mine is not None and mine is not found:
        mine.close()
    return found
