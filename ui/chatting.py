"""Chatting with the live merge and its parents: one prompt streamed to every column, each answer tagged
by the probes' scorers, the transcripts kept per merge. The Send button's handler lives here because the
tour and the HTTP API use it too."""
from __future__ import annotations

import re
import time

import gradio as gr

from core import service
from core.errors import UserError

from . import controls as C
from . import gpu as G
from . import state as S
from .common import Named, column_label, experts_in, guard


CHAT_COLUMNS = 2 + C.N_EXPERTS          # merged, each parent, the base (optional, last)
BASE_COLUMN = CHAT_COLUMNS - 1
MAX_NEW_TOKENS = 96
# a prompt longer than this is refused before any model sees it (and is not kept):
# far beyond what a small model's context holds, and streamed back in every column
MAX_PROMPT_CHARS = 4000
# how long a message waits for a merge in its session before it is refused (a sweep takes minutes)
MERGE_WAIT_S = 10.0


def verdict(prompt: str, answer: str) -> str:
    """An answer's tag: refused / correct / wrong / code / answered (core's scorers.chat_tag)."""
    return service.answer_tag(prompt, answer)


def shown(answer: str) -> str:
    """An answer as the chat column shows it: code in a fenced block, so its indentation survives Markdown."""
    if "```" in answer or not re.search(r"^(def |class |import |from )", answer, re.M):
        return answer
    code = service.code_in(answer)
    before = answer[:len(answer) - len(code)].rstrip()
    return (before + "\n\n" if before else "") + "```python\n" + code.rstrip() + "\n```"


def chat_session(sess: S.Session, refs: list[str], tasks: list[str], with_base: bool = False):
    refs = list(refs) + ([sess.base_ref] if with_base else [])
    names = ["merged"] + [column_label(r, t) for r, t in zip(refs, tasks)] + (["base"] if with_base else [])
    key = (id(sess.model), tuple(refs))
    if sess.chat is None or sess.chat_key != key:
        if sess.cache is None:
            sess.cache = service.model_cache()
        sess.chat = service.chat_session([("merged", sess.model, sess.tokenizer)] + refs, cache=sess.cache,
                                         names=names)
        sess.chat_key = key
    return sess.chat


def _chat_values(sess: S.Session, cols: list[int], prompt: str | None = None, texts: list[str] | None = None
                 ) -> dict:
    """Every column's messages; ``cols`` maps the chat session's columns to the page's."""
    out = {}
    live = {c: j for j, c in enumerate(cols)}
    for i in range(CHAT_COLUMNS):
        msgs = [dict(m) for m in sess.transcripts[i]]
        if prompt is not None and i in live:
            t = texts[live[i]] if texts else ""
            # still streaming: no tag yet (a half answer would be judged)
            msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": shown(t)}]
        out[f"chat{i}"] = msgs
    return out


def _tagged(prompt: str, text: str, stopped: bool = False) -> str:
    body = shown(text) + (" *(stopped)*" if stopped else "")
    tag = verdict(prompt, text)
    return f"{body}\n\n`{tag}`" if tag and not stopped else body


def _start(v: dict, request) -> tuple:
    """What a send needs, checked before anything changes: (prompt, session, used experts, with_base, chat)."""
    prompt = (v.get("prompt") or "").strip()
    if not prompt:
        raise UserError("Type a message first (or click an example).")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"The message is {len(prompt):,} characters long; the chat takes at most "
                        f"{MAX_PROMPT_CHARS:,}.")
    sess = S.get(request)
    # a merge (or a sweep's) holds the session's lock while the weights change: the chat starts after it
    if not sess.lock.acquire(timeout=MERGE_WAIT_S):
        raise UserError("A merge or a sweep is still running in this session; send the message again when it "
                        "has finished.")
    try:
        if sess.model is None or sess.merged_recipe is None:
            raise UserError(sess.needs_merge("Merge first (Merge tab); then the merged model answers next to its "
                                             "parents."))
        used = [(i, r, t) for i, r, t in experts_in(v) if r != sess.base_ref]
        with_base = bool(v.get("with_base"))
        session = chat_session(sess, [r for _, r, _ in used], [t for _, _, t in used], with_base)
    finally:
        sess.lock.release()
    return prompt, sess, used, with_base, session


@guard
def chat_send(v: dict, request=None):
    """Stream one prompt to the merged model and each parent (and the base, if asked), side by side.

    Single-turn by default: each prompt is answered on its own (what a merge
    comparison wants, and the tiny models were trained on single turns);
    the columns still show every exchange. With ``multi`` the models see the
    earlier turns too. Each answer carries a tag from the probe scorers;
    Stop ends every answer at its next token and marks it "(stopped)".
    """
    try:
        prompt, sess, used, with_base, session = _start(v, request)
    except UserError as exc:
        # a message that cannot be sent changes nothing on the page: a warning, not an error mark on the
        # prompt box and on every column (which stayed until the next send)
        gr.Warning(str(exc))
        yield {}
        return
    cols = [0] + [i + 1 for i, _, _ in used] + ([BASE_COLUMN] if with_base else [])
    if len(sess.transcripts) != CHAT_COLUMNS:
        sess.transcripts = [[] for _ in range(CHAT_COLUMNS)]
    merge = C.describe(sess.merged_recipe)
    if sess.chat_merge != merge:
        # a new merge starts a new section in every column: earlier answers stay under the merge that gave them
        for i in range(CHAT_COLUMNS):
            if sess.transcripts[i] or i in cols:
                sess.transcripts[i].append({"role": "assistant", "content": f"**── {merge} ──**"})
        session.reset()
    sess.chat_merge = merge
    if not v.get("multi"):
        session.reset()
    yield {**_chat_values(sess, cols, prompt), "prompt": ""}
    texts = session.blank()
    if not sess.chat_stopped:
        # the generation runs where the GPU is (a ZeroGPU worker); the exchange is recorded here
        answers = G.stream_chat(session, prompt, int(v.get("max_new") or MAX_NEW_TOKENS))
        try:
            for texts in answers:
                yield _chat_values(sess, cols, prompt, texts)
                if sess.chat_stopped:
                    break        # closing the stream stops every model at its next token
        finally:
            answers.close()
        session.record(prompt, texts)
    # Stop pressed, or a merge cut the answer so as to change the weights: either way it ends "(stopped)"
    stopped, sess.chat_stopped = sess.chat_stopped or session.cut, False
    if texts and all(t.startswith("[") and t.endswith("]") for t in texts):
        # every model refused the message (too long for its context): nothing is kept, nothing re-sent
        yield _chat_values(sess, cols)
        raise UserError(texts[0].strip("[]"))
    for j, i in enumerate(cols):
        sess.transcripts[i] += [{"role": "user", "content": prompt},
                                {"role": "assistant", "content": _tagged(prompt, texts[j], stopped)}]
    yield _chat_values(sess, cols)


# Send and Stop reach the server as two requests that may be handled in either order; a Stop
# this close to a Send was meant for it
STOP_GRACE_S = 0.5


def chat_arm(v: dict, request=None) -> None:
    """Send was clicked (runs at once, before the answer waits in the queue): a Stop from now on
    stops this answer, even one pressed while it still waits."""
    sess = S.get(request)
    if time.monotonic() - sess.stop_pressed > STOP_GRACE_S:
        sess.chat_stopped = False


CHAT_INPUTS = ["prompt", "max_new", "multi", "with_base"]


CHAT_OUTPUTS = [f"chat{i}" for i in range(CHAT_COLUMNS)] + ["prompt"]


def send_from(ui: Named, trigger, **kw):
    """chat_send wired to a trigger (Send, Enter, a tour step), armed for Stop first (not queued)."""
    armed = ui.on(trigger, chat_arm, [], [], queue=False)
    return ui.on(armed.then, chat_send, ui.controls() + CHAT_INPUTS, CHAT_OUTPUTS, **ui.heavy, **kw)
