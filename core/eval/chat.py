"""Side-by-side chat: one prompt, several models, answers streamed token by token.

The UI (and anyone else) uses ``ChatSession``::

    s = ChatSession(["zoo:safety", "zoo:math", ("merged", live_model, tok)])
    for texts in s.stream("What is 12 + 7?"):   # one string per model
        ...                                      # a Gradio handler yields them
    s.stop()      # from another handler: every model stops at its next token
    s.reset()     # forget the conversation

How it streams. Each model's ``generate`` runs in a worker thread and hands
every new token to a ``_QueueStreamer``, which decodes the answer so far and
puts it on one queue shared by all models; ``stream`` drains that queue and
yields the current texts. This is TextIteratorStreamer's design with one
queue instead of one per model, so the reader never blocks on a slow model
while another has tokens ready; the reader waits with a timeout and a worker
that fails reports its error on the queue, so nothing can hang forever.
Stopping sets a threading.Event that a StoppingCriteria checks every token
(closing the Python generator alone would leave the threads generating).

Parallel or in turn. ``mode="parallel"`` (default) runs one thread per
model; ``"turns"`` runs them one after another in one thread. Measured on
the 2-core machine with the built-in family (bench/README.md): parallel
finishes all three in about the time of turns and shows every column
moving from the first token, so it is the default. Seeded sampling always
runs in turns: torch's sampler draws from one global generator, so three
threads sampling at once would make a seed meaningless.

Models are loaded through ``ModelCache``: loaded once, kept until a
different set replaces them, and the memory for the whole set is checked
(headers only) before anything is loaded.
"""
from __future__ import annotations

import gc
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .. import policy
from .. import checkpoint as M
from ..errors import UserError, one_line, quoted

DEFAULT_MAX_NEW_TOKENS = 128
# a worker that has produced nothing for this long is treated as stuck
TOKEN_TIMEOUT_S = 120.0
HOLD_TIMEOUT_S = 30.0      # a merge waits this long for a running answer to stop


# ------------------------------------------------------------ model cache
@dataclass
class ChatModel:
    """One column of the chat: a display name, a model and its tokenizer."""
    name: str
    model: Any
    tokenizer: Any
    ref: str | None = None          # None for a model handed in already loaded


def bytes_per_param(device: str, quantization: str | None) -> float:
    if quantization == "8bit":
        return 1.0
    if quantization == "4bit":
        return 0.5
    return torch.empty((), dtype=M.default_dtype(device)).element_size()


def check_memory(refs: list[str], device: str = "auto", quantization: str | None = None) -> None:
    """Refuse, in one sentence, a set of models that does not fit.

    Counted from the safetensors headers (no weights read) against free RAM
    (MemAvailable) and, on CUDA, free GPU memory, because three models that
    fit one at a time may not fit together.
    """
    if not refs:
        return
    device = M.pick_device(device)
    infos = [M.inspect(r) for r in refs]
    bpp = bytes_per_param(device, quantization)
    if device == "cuda":
        need = policy.load_estimate(infos, bpp)
        free, _total = torch.cuda.mem_get_info()
        if need > free:
            names = ", ".join(f"{quoted(i.ref)}" for i in infos)
            raise UserError(f"Loading {names} needs about {policy.fmt_bytes(need)} of GPU memory but only "
                            f"{policy.fmt_bytes(free)} is free; use fewer or smaller models, or 4-bit loading.")
        return
    policy.check_chat(infos, bpp)


class ModelCache:
    """Chat models by (reference, device, quantization), loaded once.

    ``load(refs)`` returns the models for ``refs`` and drops every other
    cached model first ("kept until replaced"), so memory holds one chat's
    worth of models, and checks that the new ones fit before loading any.
    """

    def __init__(self):
        self._items: dict[tuple, tuple[Any, Any]] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[tuple]:
        return list(self._items)

    def get(self, ref: str, device: str = "auto", quantization: str | None = None):
        """The cached (model, tokenizer) for ``ref``, or None; loads nothing."""
        return self._items.get((ref, M.pick_device(device), quantization))

    def load(self, refs: list[str], device: str = "auto", quantization: str | None = None) -> list[tuple[Any, Any]]:
        device = M.pick_device(device)
        keys = [(r, device, quantization) for r in refs]
        with self._lock:
            dropped = [k for k in self._items if k not in keys]
            for k in dropped:
                del self._items[k]
            if dropped:
                gc.collect()   # free the replaced weights before measuring what is free
                if device == "cuda":
                    torch.cuda.empty_cache()
            missing = list(dict.fromkeys(k[0] for k in keys if k not in self._items))
            check_memory(missing, device, quantization)
            for ref in missing:
                tok = M.load_tokenizer(ref)
                model = M.load_model(ref, device=device, quantization=quantization)
                self._items[(ref, device, quantization)] = (model, tok)
            return [self._items[k] for k in keys]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        gc.collect()


CACHE = ModelCache()   # the process-wide default; a UI may keep one per session


# -------------------------------------------------------------- streaming
class _QueueStreamer:
    """Receives generate()'s tokens; posts (index, "text", answer-so-far).

    Decodes the whole answer at each token (answers are short) so text that
    spans tokens comes out right; holds back while the last character is an
    incomplete UTF-8 sequence (decoded as U+FFFD).
    """

    def __init__(self, tok, index: int, q: queue.Queue):
        self.tok, self.index, self.q = tok, index, q
        self.ids: list[int] = []
        self.prompt_done = False
        self.text = ""

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_done:          # the first call carries the prompt
            self.prompt_done = True
            return
        self.ids.extend(int(x) for x in value.reshape(-1).tolist())
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text != self.text and not text.endswith("\ufffd"):
            self.text = text
            self.q.put((self.index, "text", text))

    def end(self) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text != self.text:
            self.text = text
            self.q.put((self.index, "text", text))


def _stop_criteria(event: threading.Event):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _EventStop(StoppingCriteria):
        """Stops every sequence as soon as the event is set (checked per token)."""

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_EventStop()])


def _as_column(item, i: int) -> ChatModel | str:
    if isinstance(item, ChatModel):
        return item
    if isinstance(item, str):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 3:
        return ChatModel(str(item[0]), item[1], item[2])
    if hasattr(item, "generate"):
        path = getattr(item, "name_or_path", "") or ""
        if not path:
            raise UserError(f"Model {i + 1} was given without a tokenizer; pass (name, model, tokenizer).")
        return ChatModel(path, item, M.load_tokenizer(path))
    raise UserError(f"Model {i + 1} is neither a reference nor a loaded model.")


class Answers(list):
    """Each column's answer so far (a list of strings), with ``errors``: per column None or the error
    shown in it. Plain data, so it crosses a process boundary (a ZeroGPU worker) whole."""

    def __init__(self, texts, errors=None):
        super().__init__(texts)
        self.errors = tuple(errors) if errors is not None else (None,) * len(self)


class ChatSession:
    """Several models answering the same prompts, each with its own history.

    Attributes: ``columns`` (ChatModel per model, in order), ``histories``
    (one list of {"role", "content"} per model), ``system_prompt``, ``mode``.
    """

    def __init__(self, models: list, *, names: list[str] | None = None, cache: ModelCache | None = None,
                 device: str = "auto", quantization: str | None = None, system_prompt: str | None = None,
                 mode: str = "parallel"):
        """``models``: references (zoo:NAME, folder, Hub id), ChatModel, a
        (name, model, tokenizer) triple, or a loaded model whose
        name_or_path has the tokenizer (the UI's live merged model)."""
        if not models:
            raise UserError("Pick at least one model to chat with.")
        if mode not in ("parallel", "turns"):
            raise UserError(f"Chat mode {quoted(mode)} is unknown; use parallel or turns.")
        cache = cache if cache is not None else CACHE
        cols = [_as_column(m, i) for i, m in enumerate(models)]
        refs = [c for c in cols if isinstance(c, str)]
        loaded = dict(zip(refs, cache.load(refs, device, quantization))) if refs else {}
        self.columns = [ChatModel(c, *loaded[c], ref=c) if isinstance(c, str) else c for c in cols]
        if names:
            for c, n in zip(self.columns, names):
                c.name = n
        self.histories = [[] for _ in self.columns]
        self.system_prompt = system_prompt
        self.mode = mode
        self._event = threading.Event()
        self._busy = threading.Lock()
        # a merge changes the merged column's weights in place: ``hold`` stops and joins the running
        # generation and keeps new ones from starting until the weights are whole again
        self._gate = threading.Condition()
        self._holds = 0
        self._threads: list[threading.Thread] = []
        self.cut = False     # the last answer was stopped by a hold (a merge), not by its end or Stop

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def reset(self) -> None:
        self.histories = [[] for _ in self.columns]

    def stop(self) -> None:
        """Ask every model to stop at its next token (safe from any thread)."""
        self._event.set()

    @contextmanager
    def hold(self, timeout: float = HOLD_TIMEOUT_S):
        """Inside, no model generates: a running answer stops at its next token and its threads are
        joined before the body runs (the answer ends "(stopped)", with the old weights' tokens only);
        an answer asked for meanwhile waits and then starts on the new weights."""
        with self._gate:
            self._holds += 1
            self.cut = any(t.is_alive() for t in self._threads)
        try:
            self._event.set()
            for t in list(self._threads):
                t.join(timeout)
            if any(t.is_alive() for t in self._threads):
                raise UserError(f"The chat did not stop within {timeout:.0f} s, so nothing was changed; "
                                "try again when it has.")
            yield
        finally:
            with self._gate:
                self._holds -= 1
                self._gate.notify_all()

    def messages(self, i: int) -> list[dict]:
        """Column i's conversation as {"role", "content"} dicts (a Chatbot value)."""
        return [dict(m) for m in self.histories[i]]

    # ---------------------------------------------------------------
    def _inputs(self, col: ChatModel, history: list[dict], prompt: str, max_new: int):
        """Token ids of the conversation, oldest turns dropped to fit the
        model's context; returns (encoding, new-token budget)."""
        from .probes import chat_text, context_limit
        tok = col.tokenizer
        limit = context_limit(col.model, tok)
        sys_msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        turns = list(history)
        while True:
            msgs = sys_msgs + turns + [{"role": "user", "content": prompt}]
            ids = tok(chat_text(tok, msgs), return_tensors="pt", add_special_tokens=False)
            n = ids["input_ids"].shape[1]
            if limit is None or n + min(max_new, 16) <= limit or not turns:
                break
            turns = turns[2:]           # drop the oldest user/assistant pair
        if limit is not None and n + 1 > limit:
            raise UserError(f"The message is too long for {col.name} ({n} tokens; its context holds {limit}).")
        budget = max_new if limit is None else max(1, min(max_new, limit - n))
        device = next(col.model.parameters()).device
        return ids.to(device), budget

    def _generate(self, i: int, q: queue.Queue, enc, budget: int, gen_kw: dict, seed: int | None,
                  side_by_side: bool = False) -> None:
        col = self.columns[i]
        tok = col.tokenizer
        # models answering side by side share the cores: one thread each, not a pool each that waits on the
        # others' (three SmolLM2 columns on 2 cores: first token 0.35 s vs 0.45 s, slowest column 9.7 vs 9.0
        # tokens/s, medians of 3; bench/README.md, SmolLM2 family)
        threads = M.single_thread(True) if side_by_side else M.cpu_threads_for(col.model)
        try:
            if seed is not None:
                torch.manual_seed(seed)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            with torch.no_grad(), threads:
                col.model.generate(**enc, max_new_tokens=budget, streamer=_QueueStreamer(tok, i, q),
                                   stopping_criteria=_stop_criteria(self._event), pad_token_id=pad,
                                   eos_token_id=tok.eos_token_id, **gen_kw)
        except Exception as exc:   # shown in this model's column; the others go on
            q.put((i, "error", one_line(exc) if isinstance(exc, UserError) else
                   f"{type(exc).__name__}: {str(exc)[:200]}"))
        finally:
            q.put((i, "done", None))

    def stream(self, prompt: str, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, do_sample: bool = False,
               temperature: float = 0.7, top_p: float = 0.95, seed: int | None = None,
               mode: str | None = None, timeout: float = TOKEN_TIMEOUT_S, record: bool = True
               ) -> Iterator["Answers"]:
        """Yield the current answer of every model (``Answers``: a list of strings, one per column, with
        each column's error) each time any of them has a new token; the last value holds the full
        answers, which are then added to each model's history -- or, with ``record=False``, left for
        the caller to ``record`` (a ZeroGPU worker's changes to the session are lost).

        Greedy by default; ``do_sample`` with ``temperature``/``top_p`` and
        an optional ``seed`` (same seed, same answers).
        """
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("Type a message first.")
        if max_new_tokens < 1:
            raise UserError("The answer length must be at least one token.")
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
            raise UserError("Sampling needs a temperature above 0 and top_p in (0, 1].")
        if not self._busy.acquire(blocking=False):
            raise UserError("This chat is still answering; stop it or wait for it to finish.")
        try:
            yield from self._stream(prompt, max_new_tokens, do_sample, temperature, top_p, seed, mode or self.mode,
                                    timeout, record)
        finally:
            self._busy.release()

    def blank(self) -> "Answers":
        """No answer yet from any column."""
        return Answers([""] * len(self.columns))

    def record(self, prompt: str, answers: "Answers") -> None:
        """Add one exchange to each model's history (a column that failed keeps none)."""
        for i, (text, err) in enumerate(zip(answers, answers.errors)):
            if err is None:
                self.histories[i] += [{"role": "user", "content": prompt.strip()},
                                      {"role": "assistant", "content": text}]

    def _stream(self, prompt, max_new_tokens, do_sample, temperature, top_p, seed, mode, timeout, record):
        n = len(self.columns)
        texts = [""] * n
        errors: list[str | None] = [None] * n
        jobs = []
        for i, col in enumerate(self.columns):
            try:
                jobs.append((i, *self._inputs(col, self.histories[i], prompt, max_new_tokens)))
            except UserError as exc:
                errors[i] = str(exc)
                texts[i] = f"[{exc}]"
        gen_kw = ({"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample
                  else {"do_sample": False})
        q: queue.Queue = queue.Queue()
        if do_sample and seed is not None:
            mode = "turns"    # one global RNG: threads sampling at once would break the seed

        def run_turns():
            for i, enc, budget in jobs:
                if self._event.is_set():
                    q.put((i, "done", None))
                    continue
                self._generate(i, q, enc, budget, gen_kw, seed)

        if mode == "turns":
            threads = [threading.Thread(target=run_turns, daemon=True, name="chat-turns")]
        else:
            threads = [threading.Thread(target=self._generate, args=(i, q, enc, budget, gen_kw, seed, len(jobs) > 1),
                                        daemon=True, name=f"chat-{i}") for i, enc, budget in jobs]
        with self._gate:
            # a merge holding the weights: wait for it (the answer then comes from the new model)
            if not self._gate.wait_for(lambda: self._holds == 0, timeout):
                raise UserError("The model is being merged; send the message again in a moment.")
            self._event = threading.Event()
            self.cut = False
            self._threads = threads
            for t in threads:
                t.start()
        pending = {i for i, _, _ in jobs}
        try:
            if any(errors):
                yield Answers(texts, errors)
            while pending:
                try:
                    item = q.get(timeout=timeout)
                except queue.Empty:
                    self._event.set()
                    stuck = ", ".join(self.columns[i].name for i in sorted(pending))
                    raise UserError(f"No new token from {stuck} for {timeout:.0f} s, so the chat was stopped.")
                changed = self._apply(item, texts, errors, pending)
                while True:        # coalesce whatever else is ready into one update
                    try:
                        changed |= self._apply(q.get_nowait(), texts, errors, pending)
                    except queue.Empty:
                        break
                if changed:
                    yield Answers(texts, errors)
        finally:
            # also reached when the consumer closes the generator (UI cancel)
            self._event.set()
            for t in threads:
                t.join(timeout=10)
            if record:
                self.record(prompt, Answers(texts, errors))

    @staticmethod
    def _apply(item, texts, errors, pending) -> bool:
        i, kind, payload = item
        if kind == "text":
            texts[i] = payload
            return True
        if kind == "error":
            errors[i] = payload
            texts[i] = (texts[i] + "\n" if texts[i] else "") + f"[error: {payload}]"
            return True
        pending.discard(i)
        return False
