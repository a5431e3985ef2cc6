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
"""

TABS = (models, merge, look, chat, probe, export, learn)


def launch_options() -> dict:
    """Keyword arguments for demo.launch (Gradio 6 takes theme and css there)."""
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css": CSS}


def _unload(request: gr.Request = None):
    """The tab closed: free its models, chat threads and files."""
    S.drop(request)


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
        with ui.add("tabs", gr.Tabs(elem_id="tabs")):
            for tab in TABS:
                tab.layout(ui)
        for tab in TABS:
            tab.wire(ui, demo)
        api.wire(demo, ui.heavy)
        demo.unload(_unload)
    demo.queue(max_size=int(os.environ.get("MERGE_EXPLORER_QUEUE", "32")), default_concurrency_limit=CONCURRENCY)
    return demo
