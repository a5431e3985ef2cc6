"""Two users at once: separate sessions, and a queue that bounds heavy jobs.

The demo is launched in this process on a free port, so the test can look at
the server's per-session state (ui.state.SESSIONS) next to what each page
shows. The browser test drives Debian's chromium with two browser contexts
(two sessions, as two people on two machines); it is skipped when chromium
or Playwright is missing unless MERGE_EXPLORER_REQUIRE_BROWSER=1. The queue
tests use gradio_client (two clients = two sessions) and time the merges
the server really runs.
"""
import json
import re
import threading
import time
from types import SimpleNamespace

import pytest

from tests.ui._browser import choose_method, chromium as _chromium, launch, need as _need
import torch

from core import service
from core.zoo.data import EXAMPLE_PROMPTS
from ui import app as A
from ui import merging as MRG
from ui import chatting as CHT
from ui import controls as C
from ui import state as S

HARMFUL = EXAMPLE_PROMPTS["harmful"]

# session A: the naive merge of the walkthrough (safety + math, λ = 1)
TA = {"merge_method": "task_arithmetic", "base_model": "zoo:base",
      "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"weight": 1.0}},
                 {"model": "zoo:math", "task": "math", "parameters": {"weight": 1.0}}],
      "parameters": {"lambda": 1.0}, "dtype": "float32"}
# session B: a model soup that takes only the safety expert
SOUP = {"merge_method": "linear", "base_model": "zoo:base",
        "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"weight": 1.0}},
                   {"model": "zoo:math", "task": "math", "parameters": {"weight": 0.0}}],
        "parameters": {"normalize": True}, "dtype": "float32"}


def values(updates: dict) -> dict:
    """What the browser would send back after these control updates (by key)."""
    return {k: (u.get("value") if isinstance(u, dict) else u) for k, u in updates.items()}



def _launch(monkeypatch, concurrency: int | None = None, queue: int | None = None):
    """A fresh demo on a free port; (demo, url). Concurrency and queue size
    are read when the demo is built, as app.py does from the environment."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    if concurrency is not None:
        monkeypatch.setattr(A, "CONCURRENCY", concurrency)
    if queue is not None:
        monkeypatch.setenv("MERGE_EXPLORER_QUEUE", str(queue))
    demo = A.build_demo()
    return demo, launch(demo, **A.launch_options())


def _reference(recipe: dict) -> tuple[str, dict]:
    """What the handlers answer for this recipe in a session of their own:
    the merged column's greedy answer to the harmful prompt, and the weights."""
    S.drop(None)
    try:
        v = values(C.values_from_recipe(recipe))
        MRG.do_merge(v)
        final = list(CHT.chat_send({**v, "prompt": HARMFUL, "max_new": CHT.MAX_NEW_TOKENS}))[-1]
        sess = S.get(None)
        return final["chat0"][-1]["content"], {k: t.detach().clone() for k, t in sess.model.state_dict().items()}
    finally:
        S.drop(None)


def _same_weights(model, ref: dict) -> bool:
    sd = model.state_dict()
    return sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


def _words(text: str) -> str:
    """The answer as the page shows it, for comparison: the chatbot renders
    markdown, so emphasis marks go and whitespace collapses."""
    return " ".join(re.sub(r"[*_`#]", "", text).split())


# ------------------------------------------------------------------ browser


@pytest.mark.browser
@pytest.mark.slow
def test_two_browser_sessions_merge_and_chat_at_once_with_their_own_models(monkeypatch):
    _need(_chromium() is not None, "chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _need(False, "playwright is not installed (pip install playwright)")

    ans_ta, w_ta = _reference(TA)
    ans_soup, w_soup = _reference(SOUP)
    # the test can only tell the sessions apart if their models answer differently
    assert _words(ans_ta) != _words(ans_soup), (ans_ta, ans_soup)
    assert any(not torch.equal(w_ta[k], w_soup[k]) for k in w_ta)

    before = set(S.SESSIONS)
    demo, url = _launch(monkeypatch)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            expect.set_options(timeout=60_000)   # a shared 2-core machine
            ctx_a, ctx_b = browser.new_context(), browser.new_context()
            a, b = ctx_a.new_page(), ctx_b.new_page()
            for pg in (a, b):
                pg.set_default_timeout(60_000)
                pg.goto(url)
                expect(pg.locator("#model-report")).to_contain_text("Compatible")

            # B sets up its soup first, so that both merges can be sent together
            choose_method(b, "Linear (model soup)", "linear")
            expect(b.locator("#linear-weight-2")).to_contain_text("weight")
            b.locator("#linear-weight-2 input[type=range]").fill("0")
            b.get_by_role("tab", name="Export", exact=True).click()
            expect(b.locator("#yaml")).to_contain_text(re.compile(r"weight: 0(\.0)?\b"))
            b.get_by_role("tab", name="Merge", exact=True).click()

            # both merge at the same moment: A through the walkthrough (TA, λ = 1), B its soup
            a.get_by_role("tab", name="Learn", exact=True).click()
            a.locator("#learn-ta").click()
            b.locator("#merge-btn").click()
            expect(a.locator("#merge-status")).to_contain_text("with Task Arithmetic")
            expect(b.locator("#merge-status")).to_contain_text("with Linear (model soup)")

            # the server holds two sessions, each with its own model object and its own weights
            mine = {k: s for k, s in S.SESSIONS.items() if k not in before and s.merged_recipe}
            assert len(mine) == 2, list(S.SESSIONS)
            by_method = {s.merged_recipe["merge_method"]: (k, s) for k, s in mine.items()}
            (key_a, sa), (key_b, sb) = by_method["task_arithmetic"], by_method["linear"]
            assert sa.model is not sb.model
            assert _same_weights(sa.model, w_ta) and _same_weights(sb.model, w_soup)

            # both ask the same harmful question at once; each merged column answers from its own model
            for pg in (a, b):
                pg.get_by_role("tab", name="Chat", exact=True).click()
                pg.locator("#ex-harmful").click()
                expect(pg.locator("#prompt textarea")).to_have_value(HARMFUL)
            a.locator("#send").click()
            b.locator("#send").click()
            expect(a.locator("#chat-0")).to_contain_text("Merged (Task Arithmetic)")
            expect(b.locator("#chat-0")).to_contain_text("Merged (Linear)")
            for pg, ans in ((a, ans_ta), (b, ans_soup)):
                msg = pg.locator("#chat-0 .message.bot").last
                expect(msg).not_to_be_empty()
                deadline = time.time() + 60   # streaming: wait for the whole answer
                while _words(msg.inner_text()) != _words(ans) and time.time() < deadline:
                    time.sleep(0.2)
                assert _words(msg.inner_text()) == _words(ans)
            # what the server sent each session is its own model's answer too
            assert sa.transcripts[0][-1]["content"] == ans_ta
            assert sb.transcripts[0][-1]["content"] == ans_soup

            # each history holds only its own merge, numbered from 1
            for pg in (a, b):
                pg.get_by_role("tab", name="Merge", exact=True).click()
                pg.get_by_role("button", name=re.compile("Merge history")).click()
            expect(a.locator("#history-pick input")).to_have_value(re.compile(r"^#1 · Task Arithmetic"))
            expect(b.locator("#history-pick input")).to_have_value(
                re.compile(r"^#1 · Linear \(model soup\): safety\(weight=1\) \+ math\(weight=0\)"))
            expect(b.locator("#history")).not_to_contain_text("Task Arithmetic")
            expect(a.locator("#history")).not_to_contain_text("Linear")
            assert [h["recipe"]["merge_method"] for h in sb.history] == ["linear"]
            assert [h["recipe"]["merge_method"] for h in sa.history] == ["task_arithmetic"]

            # closing A's tab frees A's session (after the grace a reload would have to come back in); B keeps
            # its model
            monkeypatch.setattr(S, "RELOAD_GRACE_S", 1.0)
            ctx_a.close()
            deadline = time.time() + 20
            while (key_a in S.SESSIONS or sa.model is not None) and time.time() < deadline:
                time.sleep(0.2)
            assert key_a not in S.SESSIONS and sa.model is None
            assert S.SESSIONS.get(key_b) is sb and _same_weights(sb.model, w_soup)
            browser.close()
    finally:
        demo.close()


# ------------------------------------------------------------------ queue
@pytest.fixture()
def held_merges(monkeypatch):
    """service.merge records when it starts and ends, and waits at a gate the
    test opens: a job that runs while another is held is seen for certain,
    whatever the load on the machine."""
    rec = SimpleNamespace(started=[], spans=[], gate=threading.Event())
    lock = threading.Lock()
    real = service.merge

    def merge(*a, **k):
        t0 = time.perf_counter()
        with lock:
            rec.started.append(t0)
        rec.gate.wait(30)
        try:
            return real(*a, **k)
        finally:
            with lock:
                rec.spans.append((t0, time.perf_counter()))
    monkeypatch.setattr(service, "merge", merge)
    yield rec
    rec.gate.set()    # never leave a server thread waiting


def _api_values(recipe: dict) -> dict:
    return {"recipe": json.dumps(recipe)}


def _wait(cond, seconds: float = 30.0) -> None:
    deadline = time.time() + seconds
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_concurrency_limit_one_runs_two_merges_one_after_the_other_and_the_queue_is_capped(
        monkeypatch, held_merges):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError
    rec = held_merges
    demo, url = _launch(monkeypatch, concurrency=1, queue=1)
    try:
        c1, c2, c3 = (Client(url, verbose=False) for _ in range(3))   # three sessions
        assert len({c.session_hash for c in (c1, c2, c3)}) == 3
        j1 = c1.submit(**_api_values(TA), api_name="/merge")
        _wait(lambda: len(rec.started) == 1)              # the first merge runs (held)
        j2 = c2.submit(**_api_values(SOUP), api_name="/merge")
        _wait(lambda: j2.status().code.name == "IN_QUEUE")
        # one job runs, one waits: a queue of size 1 is full and the third user is told so
        with pytest.raises((QueueError, AppError, ValueError), match="(?i)queue is full"):
            c3.submit(**_api_values(TA), api_name="/merge").result(timeout=30)
        time.sleep(0.3)
        assert len(rec.started) == 1, "a second merge started while the first was running"
        rec.gate.set()
        r1, r2 = j1.result(timeout=60), j2.result(timeout=60)
    finally:
        demo.close()
    assert r1["method"] == "task_arithmetic" and r2["method"] == "linear"
    assert len(rec.spans) == 2, rec.spans          # the refused job never ran
    (s1, e1), (s2, e2) = sorted(rec.spans)
    assert s2 >= e1, f"the second merge started {e1 - s2:.2f} s before the first ended"


@pytest.mark.slow
def test_concurrency_limit_two_lets_two_merges_overlap(monkeypatch, held_merges):
    """The control for the test above: with a limit of 2 the same two merges
    (two sessions) run together, so 'one after the other' is the limit's
    doing (and two sessions no longer wait on one shared session lock)."""
    from gradio_client import Client
    rec = held_merges
    demo, url = _launch(monkeypatch, concurrency=2)
    try:
        c1, c2 = Client(url, verbose=False), Client(url, verbose=False)
        j1 = c1.submit(**_api_values(TA), api_name="/merge")
        j2 = c2.submit(**_api_values(SOUP), api_name="/merge")
        _wait(lambda: len(rec.started) == 2)               # both inside merge at once
        rec.gate.set()
        r1, r2 = j1.result(timeout=60), j2.result(timeout=60)
    finally:
        demo.close()
    assert r1["method"] == "task_arithmetic" and r2["method"] == "linear"
    (s1, e1), (s2, e2) = sorted(rec.spans)
    assert s2 < e1
