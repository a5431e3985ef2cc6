"""The Gradio app: ``build_demo`` assembles the tabs (ui/tabs/, one module
each) and the HTTP API (ui/api.py).

Each tab module lays out its components, registering them by key in one
``Named`` registry, then wires its events by key. Handlers are
module-level functions that take ``{key: value}`` (and a gr.Request for the
session), so tests call them directly. Every handler goes through ``guard``
(ui/common.py): a UserError becomes its one sentence in a gr.Error
toast, anything else is logged with its traceback and the user sees one
generic sentence; no traceback reaches the page.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import gradio as gr

from . import controls as C
from . import state as S
from .tabs import chat, export, learn, look, merge, models, probe
from .common import CONCURRENCY, Named

log = logging.getLogger("merge_explorer.ui")

CSS = """
#title h1 {margin-bottom: 0}
.caption {color: var(--body-text-color-subdued); font-size: 0.9em; padding: 0 8px}
.expert-box {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px}
#merge-status, #probe-status, #look-status, #export-status, #model-report {min-height: 1.5em}
.plotly-preload {position: absolute; left: -10000px; width: 10px; height: 10px; overflow: hidden}
/* a chat column's label floats over its top edge: start the scrolling messages below it, or a scrolled
   answer (and a new merge's section header) runs under the label */
.chat-col .bubble-wrap {margin-top: 2.6em; height: calc(100% - 2.6em)}
/* five columns are narrow: code wraps inside its column instead of running out of it */
.chat-col pre, .chat-col code {white-space: pre-wrap; overflow-wrap: anywhere}
/* a column's own trash icon would empty that column on the page only (the session keeps its transcript, and
   the next answer brings it back): the Clear button clears every column and the session; and without it
   a column's label has room before the copy icon */
.chat-col button[aria-label="Clear"] {display: none}
"""

TABS = (models, merge, look, chat, probe, export, learn)


def launch_options() -> dict:
    """Keyword arguments for demo.launch (Gradio 6 takes theme and css there)."""
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css": CSS}


def _unload(request: gr.Request = None):
    """The tab closed or reloads: its models, chat threads and files are freed unless the page comes back
    within a few seconds (state.park)."""
    S.park(request)


# the reloaded page's load can arrive before the old page's unload: it waits this long for it
ADOPT_WAIT_S = 3.0


def reattach(v: dict, request=None) -> dict:
    """Page load: a reloaded page gets its session back (merges, the live model, the board, the chat), and
    the page shows it; a page whose browser had a session that is gone says so. The browser keeps the
    session's secret token (gr.BrowserState), written here."""
    from .board import history_outputs
    from .chatting import CHAT_COLUMNS
    from .merging import merged_label
    token = v.get("sid")
    deadline = time.monotonic() + ADOPT_WAIT_S
    sess = S.adopt(token, request)
    while sess is None and token and S.is_live(token) and time.monotonic() < deadline:
        time.sleep(0.1)
        sess = S.adopt(token, request)
    if sess is None:
        fresh = S.get(request)
        out = {"sid": fresh.token}
        if token and S.is_live(token):
            out["merge_status"] = "This tab has a session of its own; the other tab keeps its merges."
        elif token:
            out["merge_status"] = ("A new session: this browser's earlier one is gone (closed, or idle for "
                                   f"{S.ttl_seconds() // 60} minutes) and its merges with it.")
        return out
    # the new page shows no picture yet and opens on the Models tab: the Look tab draws everything when opened
    sess.drawn.clear()
    sess.shows.clear()
    sess.look_open, sess.look_stale = False, sess.merged_recipe is not None
    out = {"sid": sess.token, **history_outputs(sess, plot=True)}
    entry = sess.live_entry()
    if sess.model is not None and sess.merged_recipe is not None:
        out.update(C.values_from_recipe(sess.merged_recipe))
        which = f"#{entry['n']}: {entry['label']}" if entry else C.describe(sess.merged_recipe)
        out["merge_status"] = (f"✓ The page was reloaded and kept its session: {len(sess.history)} merge"
                               f"{'' if len(sess.history) == 1 else 's'} in the history; the live model is {which}.")
    if len(sess.transcripts) == CHAT_COLUMNS:
        out.update({f"chat{i}": [dict(m) for m in sess.transcripts[i]] for i in range(CHAT_COLUMNS)})
    if sess.merged_recipe is not None:
        out["chat0"] = gr.update(value=out.get("chat0", []), label=merged_label(sess.merged_recipe))
    return out


def _warm_imports() -> None:
    """Resolve transformers' lazy names once, in the thread that builds the app.

    Its lazy module is not safe when two threads resolve a name for the
    first time together: two sessions' first merges at once failed with
    "cannot import name 'AutoTokenizer' from 'transformers'" (found by
    tests/ui/test_concurrency.py once sessions stopped sharing one lock).
    """
    from transformers import (AutoModelForCausalLM, AutoTokenizer,  # noqa: F401
                              StoppingCriteria, StoppingCriteriaList)
    # The first compatibility check builds the architecture on the meta device (checkpoint.layout), which
    # imports its modeling code: 3-5 s that the first visitor waited for before "Compatible" appeared.
    # Paid here, at start-up, for the family the page opens with.
    from core import service
    from .common import DEFAULT_BASE
    try:
        service.warm_layout(DEFAULT_BASE)
    except Exception:   # the page reports a broken family itself, in one sentence
        log.debug("warming the default family's layout failed", exc_info=True)


def warm_probes() -> None:
    """The probe results a first visitor's first "Run probes" needs besides the merge itself: the page's
    default base and experts on the default suites and size (process-wide results, service.probe_references).
    Run by ``start_warming`` in the background; a failure only means the first click computes them."""
    from core import service
    from .common import DEFAULT_BASE, DEFAULT_EXPERTS
    from .probing import PROBE_LIMIT, SUITES
    refs = [DEFAULT_BASE] + [r for r, _ in DEFAULT_EXPERTS if r]
    suites = ",".join(service.probe_suites_for(DEFAULT_BASE, SUITES))
    load = lambda rs: [(service.load_model(r, device="cpu"), service.load_tokenizer(r)) for r in rs]  # noqa: E731
    service.probe_references(refs, suites, PROBE_LIMIT, load)


def start_warming() -> threading.Thread:
    """``warm_probes`` in a daemon thread, so neither the page nor the first merge waits for it (the built-in
    family's models answer on one thread each, leaving the other core to a merge)."""
    def run():
        t0 = time.perf_counter()
        try:
            warm_probes()
            log.info("warmed the first probes in %.1f s", time.perf_counter() - t0)
        except Exception as exc:   # never a traceback: the first probes will compute what is missing
            log.warning("warming the first probes failed (%s); the first 'Run probes' computes them.",
                        " ".join(str(exc).split())[:200] or type(exc).__name__)
    t = threading.Thread(target=run, name="warm-probes", daemon=True)
    t.start()
    return t


def build_demo() -> gr.Blocks:
    """The whole app: each tab lays itself out, then each wires its events
    (a tab may wire to another's components, by key); only app.py launches it."""
    from . import api
    _warm_imports()
    ui = Named()
    ui.heavy["concurrency_limit"] = CONCURRENCY
    with gr.Blocks(title="Merge Explorer") as demo:
        gr.Markdown("# Merge Explorer\nPick a base model and experts, tune a merge, look inside, then chat with "
                    "the result next to its parents. New here? The **Learn** tab is a five-minute tour.",
                    elem_id="title")
        # Plotly's library is ~3.5 MB of JavaScript that the page fetches and parses when it first draws a
        # plot: 2.3 s of the first Look tab's 4.8 s here. A tiny plot that is never shown, drawn with the first
        # tab, makes the browser do that while the person reads the Models tab.
        from . import figures as F
        gr.Plot(F.empty("", height=10), show_label=False, elem_classes="plotly-preload", container=False)
        learn.bar_layout(ui)
        with ui.add("tabs", gr.Tabs(elem_id="tabs")):
            for tab in TABS:
                tab.layout(ui)
        for tab in TABS:
            tab.wire(ui, demo)
        api.wire(demo, ui.heavy)
        ui.add("sid", gr.BrowserState(None, storage_key="merge-explorer-session"))
        from .board import BOARD_OUTPUTS, HISTORY_OUTPUTS
        from .chatting import CHAT_COLUMNS
        # not queued behind a merge: the page must show what it holds as soon as it loads
        ui.on(demo.load, reattach, ["sid"], list(dict.fromkeys(
            ["sid"] + HISTORY_OUTPUTS + BOARD_OUTPUTS + ui.controls() + [f"chat{i}" for i in range(CHAT_COLUMNS)])),
            concurrency_limit=None, show_progress="hidden")
        demo.unload(_unload)
    demo.queue(max_size=int(os.environ.get("MERGE_EXPLORER_QUEUE", "32")), default_concurrency_limit=CONCURRENCY)
    return demo
