"""Side-by-side streaming chat on the built-in family."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from core.eval import chat, probes
from core.errors import UserError

REFS = ["zoo:safety", "zoo:math", "zoo:code"]


@pytest.fixture(scope="module")
def cache():
    c = chat.ModelCache()
    c.load(REFS, device="cpu")
    return c


@pytest.fixture
def session(cache):
    return chat.ChatSession(REFS, cache=cache, device="cpu")


def _drain(gen):
    updates = []
    for texts in gen:
        updates.append(list(texts))
    return updates


@pytest.mark.parametrize("mode", ["parallel", "turns"])
def test_three_models_stream_incrementally_and_match_greedy(session, mode):
    prompt = "What is 12 + 7?"
    updates = _drain(session.stream(prompt, max_new_tokens=40, mode=mode))
    assert all(len(u) == 3 for u in updates)
    final = updates[-1]
    for i, col in enumerate(session.columns):
        seen = [u[i] for u in updates]
        distinct = [t for k, t in enumerate(seen) if t and (k == 0 or t != seen[k - 1])]
        assert len(distinct) > 1, f"{col.name} arrived in one piece"
        # each update extends the previous one: text streams, it is not replaced
        assert all(b.startswith(a) for a, b in zip(distinct, distinct[1:]))
        # streaming gives exactly the greedy answer of batched generation
        assert final[i].strip() == probes.generate(col.model, col.tokenizer, [prompt], 40)[0]
    assert len({t for t in final}) == 3          # three different models, three different answers


def test_history_is_kept_per_model_and_used(session):
    _drain(session.stream("What is 12 + 7?", max_new_tokens=16))
    last = _drain(session.stream("And 3 + 4?", max_new_tokens=16))[-1]
    for i in range(3):
        msgs = session.messages(i)
        assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
        assert msgs[2]["content"] == "And 3 + 4?" and msgs[3]["content"] == last[i]
    enc, _ = session._inputs(session.columns[0], session.histories[0], "next", 8)
    text = session.columns[0].tokenizer.decode(enc["input_ids"][0])
    assert "What is 12 + 7?" in text and "And 3 + 4?" in text
    session.reset()
    assert session.histories == [[], [], []]


def test_old_turns_are_dropped_to_fit_the_context(session):
    col = session.columns[0]
    long_history = [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y" * 100}] * 3
    enc, budget = session._inputs(col, long_history, "What is 1 + 1?", 64)
    assert enc["input_ids"].shape[1] + budget <= col.model.config.max_position_embeddings
    with pytest.raises(UserError, match="too long"):
        session._inputs(col, [], "z" * 400, 64)


def test_stop_ends_every_model_early(cache):
    s = chat.ChatSession(["zoo:base"], cache=chat.ModelCache(), device="cpu")   # the base rambles
    full = _drain(s.stream("Tell me a story.", max_new_tokens=150))[-1][0]
    s.reset()
    gen = s.stream("Tell me a story.", max_new_tokens=150)
    first = next(gen)
    s.stop()
    rest = _drain(gen)
    stopped = (rest[-1] if rest else first)[0]
    assert len(full) >= 40 and len(stopped) < len(full) / 2


def test_closing_the_generator_stops_the_threads(session):
    gen = session.stream("Tell me a story.", max_new_tokens=150)
    next(gen)
    gen.close()                                     # what a UI cancel does
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("chat-")]
    assert all(len(h) == 2 for h in session.histories)   # the partial answers are kept


def test_seeded_sampling_repeats(session):
    a = _drain(session.stream("Hi", max_new_tokens=20, do_sample=True, temperature=1.5, seed=7))[-1]
    session.reset()
    b = _drain(session.stream("Hi", max_new_tokens=20, do_sample=True, temperature=1.5, seed=7))[-1]
    assert a == b


def test_loaded_models_and_cache_reuse(cache):
    model, tok = cache.get("zoo:math", "cpu")
    s = chat.ChatSession([("merged", model, tok), "zoo:math"], cache=cache, device="cpu")
    assert s.names == ["merged", "zoo:math"]
    assert s.columns[1].model is model                      # loaded once, reused
    assert cache.keys() == [("zoo:math", "cpu", None)]    # the others were replaced
    final = _drain(s.stream("What is 12 + 7?", max_new_tokens=20))[-1]
    assert final[0] == final[1]
    cache.load(REFS, device="cpu")                           # restore for the other tests


class _Broken(torch.nn.Module):
    """A model whose generate fails (or hangs), to see one column fail alone."""

    def __init__(self, hang: float = 0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = None
        self.hang = hang

    def generate(self, **kw):
        if self.hang:
            time.sleep(self.hang)
            return None
        raise RuntimeError("the weights are on fire")


def test_a_failing_model_shows_its_error_and_the_others_answer(cache):
    model, tok = cache.get("zoo:code", "cpu")
    s = chat.ChatSession([("broken", _Broken(), tok), ("code", model, tok)], device="cpu")
    final = _drain(s.stream("Write a Python function f(x) that returns x plus 2.", max_new_tokens=30))[-1]
    assert "the weights are on fire" in final[0]
    assert final[1].startswith("def ")


def test_a_stuck_model_times_out_with_a_sentence(cache):
    _, tok = cache.get("zoo:code", "cpu")
    s = chat.ChatSession([("stuck", _Broken(hang=1.5), tok)], device="cpu")
    with pytest.raises(UserError, match="No new token from stuck"):
        _drain(s.stream("Hi", timeout=0.3))


def test_memory_check_refuses_before_loading(monkeypatch):
    monkeypatch.setenv("MERGE_EXPLORER_MEMORY_BUDGET_GB", "0.001")
    c = chat.ModelCache()
    with pytest.raises(UserError, match="needs about .* of memory"):
        chat.ChatSession(REFS, cache=c, device="cpu")
    assert len(c) == 0


def test_bad_requests_are_sentences(session):
    with pytest.raises(UserError, match="Type a message"):
        next(session.stream("   "))
    with pytest.raises(UserError, match="temperature"):
        next(session.stream("hi", do_sample=True, temperature=0))
    with pytest.raises(UserError, match="at least one model"):
        chat.ChatSession([])


def test_quantization_is_refused_with_the_reason_without_cuda():
    from core import checkpoint as M
    status = M.quantization_status()
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert status["8bit"] and status["4bit"]
    with pytest.raises(UserError, match="CUDA"):
        chat.ChatSession(["zoo:base"], cache=chat.ModelCache(), device="cpu", quantization="4bit")
