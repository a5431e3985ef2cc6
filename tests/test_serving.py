"""Space-grade serving (#26): cache keys that cannot serve stale results, memory checked before
loading, and no merge under a running generation."""
from __future__ import annotations

import logging
import os
import threading
import time

import pytest
import torch

from core import checkpoint as M
from core import service
from core.checkpoint import headers
import importlib
L = importlib.import_module("core.checkpoint.layout")   # the package exports the function under that name
from core.errors import UserError


# ------------------------------------------------------------ fingerprints
def test_fingerprint_covers_every_byte_of_a_large_shard(tmp_path, write_model):
    """A fine-tune that changes one entry of one tensor -- anywhere in a shard over 64 MiB, where
    sampled blocks once stood for the whole file -- gets a new fingerprint (its own LED scores)."""
    big = torch.zeros(18 * 2**20 + 3, dtype=torch.float32)      # 72 MiB: above the old 64 MiB cut
    a = headers.inspect(write_model(tmp_path / "a", {"model.embed_tokens.weight": big.view(-1, 1)}))
    moved = big.clone()
    moved[5 * 2**20 + 77] = 1e-3                                  # between two of the old sampled blocks
    b = headers.inspect(write_model(tmp_path / "b", {"model.embed_tokens.weight": moved.view(-1, 1)}))
    assert a.fingerprint() != b.fingerprint()


def test_a_file_is_hashed_once_while_its_size_and_mtime_stay(tmp_path, write_model, monkeypatch):
    folder = write_model(tmp_path / "m", {"model.embed_tokens.weight": torch.arange(12.0).reshape(4, 3)})
    info = headers.inspect(folder)
    first = info.fingerprint()
    reads = []
    real = headers.hashlib.file_digest
    monkeypatch.setattr(headers.hashlib, "file_digest", lambda f, d: reads.append(1) or real(f, d))
    assert headers.inspect(folder).fingerprint() == first and reads == []
    # rewritten in place (same size, new bytes, new mtime): read again, and told apart
    other = write_model(tmp_path / "m2", {"model.embed_tokens.weight": torch.arange(12.0).reshape(4, 3) + 1})
    os.replace(os.path.join(other, "model.safetensors"), os.path.join(folder, "model.safetensors"))
    st = os.stat(os.path.join(folder, "model.safetensors"))
    os.utime(os.path.join(folder, "model.safetensors"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert headers.inspect(folder).fingerprint() != first and reads == [1]


# ------------------------------------------------------------------ layout
def test_a_fallback_layout_is_never_cached(tmp_path, write_model):
    """Two models with one config that transformers cannot build, but different tensor names: each
    gets a layout of its own names (the fallback used to be cached under the config)."""
    cfg = {"architectures": ["NoSuchForCausalLM"], "model_type": "no-such-model"}
    a = headers.inspect(write_model(tmp_path / "a", {"wte.weight": torch.zeros(4, 3)}, **cfg))
    b = headers.inspect(write_model(tmp_path / "b", {"tok_embeddings.weight": torch.zeros(4, 3)}, **cfg))
    la, lb = L.layout(a), L.layout(b)
    assert not la.known and not lb.known
    assert "wte.weight" in la.checkpoint_names and "tok_embeddings.weight" in lb.checkpoint_names
    assert "wte.weight" not in lb.checkpoint_names


def test_a_layout_after_a_passing_failure_is_built_again(tiny_family, monkeypatch):
    info = headers.inspect(tiny_family["safety"])
    L._CACHE.clear()
    import transformers
    real = transformers.AutoModelForCausalLM.from_config

    def broken(*a, **k):
        raise RuntimeError("a package is half installed")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", broken)
    assert not L.layout(info).known
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", real)
    assert L.layout(info).known and L.layout(info).tied is not None


# -------------------------------------------------------------- ACM's key
def test_acm_statistics_are_keyed_by_the_dtype_of_their_forward_passes(monkeypatch):
    from core.methods.acm import activations as A
    rows = [{"prompt": "a"}, {"prompt": "b"}]
    keys = {A.cache_key("fp", rows, None, n=2, k=1, seed=0, dtype=d) for d in (torch.float32, torch.bfloat16)}
    assert len(keys) == 2
    assert A.cache_key("fp", rows, None, n=2, k=1, seed=0, dtype=torch.float32) in keys


# --------------------------------------------------------- broken caches
def test_a_broken_score_file_is_reported_once_and_replaced(tmp_path, monkeypatch, caplog):
    import core
    from core.methods.led import importance as I
    monkeypatch.setattr(core, "CACHE_DIR", str(tmp_path))
    I.clear_memory_cache()
    path = I.CACHE.path("k1", ".safetensors")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with caplog.at_level(logging.WARNING, logger="core.scores"):
        assert I.cached("k1") is None
        assert I.cached("k1") is None
    said = [r.getMessage() for r in caplog.records if r.name == "core.scores"]
    assert len(said) == 1 and "could not be read" in said[0] and "computed again and replaced" in said[0]
    assert "Traceback" not in caplog.text
    # the recomputed result's write replaces the file
    I.store("k1", {"w": torch.ones(2)}, {})
    I.clear_memory_cache()
    got = I.cached("k1")
    assert got is not None and torch.equal(got.get("w"), torch.ones(2))


# ------------------------------------------------------------------ memory
def test_the_memory_budget_is_checked_before_the_base_is_loaded(monkeypatch):
    """The app's merge refuses from the headers alone: the session's model stays as it was."""
    from ui import state as S
    from ui import merging as MRG
    monkeypatch.setenv("MERGE_EXPLORER_MEMORY_BUDGET_GB", "0.000001")
    loaded = []
    monkeypatch.setattr(M, "load_model", lambda *a, **k: loaded.append(a) or pytest.fail("a weight was loaded"))
    sess = S.Session()
    recipe = {"merge_method": "task_arithmetic", "base_model": "zoo:base",
              "models": [{"model": "zoo:math", "parameters": {}}], "parameters": {"lambda": 0.5}, "dtype": "float32"}
    with pytest.raises(UserError, match=r"needs about .* of memory but only .* is free"):
        MRG.merge_into_session(sess, recipe, lambda f, m: None)
    assert sess.model is None and loaded == []
    with pytest.raises(UserError, match="of memory"):
        service.plan(recipe, live=False)


# -------------------------------------------------------------------- race
def test_a_merge_waits_for_the_running_answer_to_stop_and_never_mixes_weights():
    from core.eval import chat
    model, tok = M.load_model("zoo:base", device="cpu"), M.load_tokenizer("zoo:base")
    s = chat.ChatSession([("merged", model, tok)], device="cpu")
    gen = s.stream("Tell me a story.", max_new_tokens=400)
    first = next(gen)
    while not first[0]:
        first = next(gen)
    seen = []
    with s.hold():
        # inside: no generation thread is alive, so changing the weights mixes nothing
        assert not any(t.is_alive() for t in s._threads)
        with torch.no_grad():
            before = model.model.embed_tokens.weight.clone()
            model.model.embed_tokens.weight.mul_(0.5)
        seen = [t for t in threading.enumerate() if t.name.startswith("chat-")]
    rest = [list(x) for x in gen]
    final = (rest[-1] if rest else first)[0]
    assert s.cut and seen == []
    assert len(final) < 300                     # stopped early, not finished with the new weights
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(before)


def test_a_message_sent_during_a_merge_waits_and_answers_with_the_new_weights():
    from core.eval import chat
    model, tok = M.load_model("zoo:math", device="cpu"), M.load_tokenizer("zoo:math")
    s = chat.ChatSession([("merged", model, tok)], device="cpu")
    want = [list(x) for x in s.stream("What is 12 + 7?", max_new_tokens=12)][-1][0]
    s.reset()
    out: list = []
    with s.hold():
        t = threading.Thread(target=lambda: out.extend(list(x) for x in s.stream("What is 12 + 7?", max_new_tokens=12)))
        t.start()
        time.sleep(0.3)
        assert out == []                       # waiting, not generating on weights being changed
    t.join(10)
    assert out and out[-1][0] == want and not s.cut


# ---------------------------------------------------------------- sessions
class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def sessions(monkeypatch):
    from ui import state as S
    clock = _Clock()
    monkeypatch.setattr(S.time, "monotonic", clock)
    monkeypatch.setattr(S, "SESSIONS", {})
    monkeypatch.setattr(S, "EXPIRED", {})
    return S, clock


def _req(key: str):
    from types import SimpleNamespace
    return SimpleNamespace(session_hash=key)


def test_idle_sessions_are_dropped_after_the_ttl_and_beyond_the_cap_lru_first(sessions, monkeypatch):
    S, clock = sessions
    monkeypatch.setenv("MERGE_EXPLORER_SESSION_TTL", "600")
    monkeypatch.setenv("MERGE_EXPLORER_MAX_SESSIONS", "3")
    closed = []
    monkeypatch.setattr(S.Session, "close", lambda self: closed.append(self))
    a, b, c = (S.get(_req(k)) for k in "abc")
    clock.t += 10
    S.get(_req("a"))                       # a is used again: b is now the least recently used
    busy = S.get(_req("c"))
    held, release = threading.Event(), threading.Event()

    def merging():                         # c merges in a worker thread: never dropped, however old
        with busy.lock:
            held.set()
            release.wait(10)
    worker = threading.Thread(target=merging)
    worker.start()
    held.wait(5)
    try:
        clock.t += 10
        S.get(_req("d"))                   # a fourth visitor: the cap drops b, the LRU idle one
        assert set(S.SESSIONS) == {"a", "c", "d"} and closed == [b]
        clock.t += 601                     # all idle past the TTL but c (busy) and e (new)
        S.get(_req("e"))
        assert set(S.SESSIONS) == {"c", "e"} and a in closed and c not in closed
    finally:
        release.set()
        worker.join()


def test_an_expired_session_gets_one_sentence_and_merges_again(sessions, monkeypatch):
    from ui import api
    from ui.tabs import probe as PR
    from ui import chatting as CHT
    S, clock = sessions
    monkeypatch.setenv("MERGE_EXPLORER_SESSION_TTL", "900")
    first = S.get(_req("visitor"))
    first.model, first.merged_recipe = object(), {"merge_method": "linear"}
    clock.t += 901
    S.get(_req("other"))                   # any visit sweeps the idle ones
    assert "visitor" not in S.SESSIONS
    sentence = "This session expired after 15 idle minutes and its models were freed; merge again."
    with pytest.raises(UserError) as e:
        api._session(_req("visitor"))
    assert str(e.value) == sentence
    with pytest.warns(UserWarning) as said:       # the page's handler: the same sentence, as a warning toast
        list(CHT.chat_send({"prompt": "hi"}, request=_req("visitor")))
    assert [str(w.message) for w in said] == [sentence]
    assert PR.run_probes({"suites": ["math"], "limit": 4}, request=_req("visitor"))["probe_status"] == sentence
    # merging again makes it an ordinary session
    api.merge('{"merge_method": "linear", "base_model": "zoo:base", "models": [{"model": "zoo:math"}, '
              '{"model": "zoo:safety"}]}',
              request=_req("visitor"))
    assert S.SESSIONS["visitor"].model is not None


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_api_sessions_that_never_unload_stop_at_the_cap(smol_base, tmp_path):
    """A fresh server (``python app.py``, as a Space runs it) with the cap at 2: seven HTTP API clients each
    merge SmolLM2 (~0.5 GB a session) and never unload; its resident memory stops growing at the cap."""
    import subprocess
    import sys
    from gradio_client import Client
    from core import ROOT
    from tests.ui._browser import free_port, wait_until_serving
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MERGE_EXPLORER_MAX_SESSIONS": "2",
           "MERGE_EXPLORER_WARM": "0", "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py")], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    recipe = ('{"merge_method": "task_arithmetic", "base_model": "smol:base", "parameters": {"lambda": 0.5}, '
              '"models": [{"model": "smol:safety"}, {"model": "smol:math"}]}')
    try:
        url = wait_until_serving(f"http://127.0.0.1:{port}/", seconds=120)
        rss = []
        for _ in range(7):
            Client(url, verbose=False).predict(recipe, api_name="/merge")
            rss.append(_rss(server.pid))
        one_model = M.inspect("smol:base").nbytes
        mib = [r // 2**20 for r in rss]
        # unbounded, seven sessions grow it by ~5 models (measured: 1,608 -> 4,311 MiB); with the cap, by two
        # models and the engine's process-wide input cache (<= 512 MB) at most (1,534 -> 2,167 MiB) ...
        assert max(rss) - rss[0] < 3 * one_model, mib
        # ... and the last three clients add nothing
        assert max(rss[4:]) - max(rss[:4]) < 0.25 * one_model, mib
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


# ---------------------------------------------------------------- ZeroGPU
def test_the_fork_loses_what_the_worker_changes_as_zero_gpu_does(monkeypatch):
    """The stand-in is faithful: a change made inside a decorated function is lost, its result is not,
    and its error reaches the caller."""
    from ui import gpu as G
    monkeypatch.setenv("MERGE_EXPLORER_GPU_FORK", "1")
    box = {"n": 0}

    @G.gpu()
    def bump(k):
        box["n"] += k
        if k < 0:
            raise UserError("no negative steps")
        return box["n"] * 10

    @G.gpu()
    def count(k):
        for i in range(k):
            box["n"] += 1
            yield i
    assert bump(3) == 30 and box["n"] == 0
    assert list(count(4)) == [0, 1, 2, 3] and box["n"] == 0
    with pytest.raises(UserError, match="no negative steps"):
        bump(-1)
    gen = count(10**6)
    assert next(gen) == 0
    gen.close()                    # a Stop: the worker is ended, not left running
    assert os.getpid() == os.getpid()


def test_chat_probes_board_and_tour_keep_their_results_when_the_gpu_work_runs_in_a_fork(monkeypatch):
    from ui import controls as C, state as S
    from ui.tabs import learn as LN, probe as PR
    from ui import merging as MRG
    from ui import chatting as CHT
    from ui import board as BRD
    monkeypatch.setenv("MERGE_EXPLORER_GPU_FORK", "1")
    S.drop(None)
    try:
        r = {"merge_method": "task_arithmetic", "base_model": "zoo:base", "parameters": {"lambda": 0.5},
             "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}],
             "dtype": "float32"}
        def values(lam):
            rr = {**r, "parameters": {"lambda": lam}}
            return {k: (u.get("value") if isinstance(u, dict) else u) for k, u in C.values_from_recipe(rr).items()}
        v = values(0.5)
        MRG.do_merge(v)
        sess = S.get(None)
        # chat: the answers are shown, kept in the columns and in each model's history (multi-turn sees them)
        last = list(CHT.chat_send({**v, "prompt": "What is 12 + 7?", "max_new": 12, "multi": True}))[-1]
        answer = [m for m in last["chat0"] if m["role"] == "assistant"][-1]["content"]
        assert answer.strip() and sess.transcripts[0][-1]["content"] == answer
        assert [m["role"] for m in sess.chat.messages(0)] == ["user", "assistant"]
        # probes: the merge's scores land on its history entry, the references on the board
        out = PR.run_probes({**v, "suites": ["harmful", "math"], "limit": 4})
        assert sess.history[-1]["scores"]["suites"]["math"]["n"] == 4
        assert set(sess.board_refs) == {"zoo:base", "zoo:safety", "zoo:math"}
        assert out["board"][0][2].endswith("%")
        # the board's "Probe it" on a second merge, and the tour's compare step
        MRG.do_merge(values(1.0))
        pick = next(c for c in BRD.board_outputs(sess)["board_pick"]["choices"] if c.startswith("#2"))
        PR.probe_entry({**v, "board_pick": pick, "suites": ["harmful", "math"], "limit": 4})
        assert sess.history[-1]["scores"] is not None
        MRG.do_merge(values(0.7))
        LN.compare_tour({**v, "suites": ["harmful", "math"], "limit": 4})
        assert all(h["scores"] for h in sess.history)
    finally:
        S.drop(None)


# ------------------------------------------------------------ warm start
def test_after_warming_a_first_visitor_s_first_probes_run_the_merge_alone(monkeypatch):
    """What start-up prepares is exactly what the page's first 'Run probes' needs: afterwards only the
    merged model is probed."""
    from core.eval import probes
    from ui import app as A, controls as C, state as S
    from ui.tabs import probe as PR
    from ui import probing as PRB
    from ui import merging as MRG
    probes.RESULTS.clear_memory()
    A.start_warming().join(120)
    calls = []
    real = probes.run_probes
    monkeypatch.setattr(probes, "run_probes", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    S.drop(None)
    try:
        r = {"merge_method": "task_arithmetic", "base_model": "zoo:base", "parameters": {"lambda": 0.5},
             "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
        v = {k: (u.get("value") if isinstance(u, dict) else u) for k, u in C.values_from_recipe(r).items()}
        MRG.do_merge(v)
        out = PR.run_probes({**v, "suites": PRB.SUITES, "limit": PRB.PROBE_LIMIT})
        assert calls == [S.get(None).model]
        assert [row[0] for row in out["probe_table"]][1:] == ["base", "safety", "math"]
    finally:
        S.drop(None)


def test_a_merge_in_the_same_session_during_a_streamed_chat_cuts_it_cleanly(monkeypatch):
    """Concurrency 2: one event streams the chat, another merges in the same session. The answer shown
    is the old model's, cut and marked "(stopped)" -- never tokens of the new weights, never an error."""
    from ui import controls as C, state as S
    from ui.tabs import chat as CH
    from ui import merging as MRG
    from ui import chatting as CHT
    S.drop(None)
    try:
        def values(lam):
            r = {"merge_method": "task_arithmetic", "base_model": "zoo:base", "parameters": {"lambda": lam},
                 "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
            return {k: (u.get("value") if isinstance(u, dict) else u) for k, u in C.values_from_recipe(r).items()}
        old = values(0.3)
        MRG.do_merge(old)
        prompt = "Tell me a long story about a dragon."
        full = [m for m in list(CHT.chat_send({**old, "prompt": prompt, "max_new": 300}))[-1]["chat0"]
                if m["role"] == "assistant"][-1]["content"]
        CH.chat_clear({})
        gen = CHT.chat_send({**old, "prompt": prompt, "max_new": 300})
        next(gen)
        next(gen)                                   # tokens are arriving
        errors = []
        merger = threading.Thread(target=lambda: errors.append(None) if MRG.do_merge(values(1.0)) else None)
        merger.start()
        shown = list(gen)[-1]["chat0"]
        merger.join(30)
        answer = [m for m in shown if m["role"] == "assistant"][-1]["content"]
        assert answer.endswith("*(stopped)*")
        text = answer[:-len(" *(stopped)*")]
        # greedy, so the old model's tokens are a prefix of its full answer: nothing from the new weights
        body = full.rsplit("\n\n`", 1)[0]          # the finished answer without its tag
        assert text.strip() and body.startswith(text.strip()) and len(text) < len(body)
        assert S.get(None).merged_recipe["parameters"]["lambda"] == 1.0
    finally:
        S.drop(None)
