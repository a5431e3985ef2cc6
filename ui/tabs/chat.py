"""The Chat tab: one prompt streamed to the merged model and its parents."""
from __future__ import annotations


import gradio as gr

from core import service
from core.errors import UserError
from core.zoo.data import EXAMPLE_PROMPTS

from .. import controls as C
from .. import state as S
from .common import _experts, _short, _values, guard


CHAT_COLUMNS = 1 + C.N_EXPERTS          # merged + each parent
MAX_NEW_TOKENS = 96

# ------------------------------------------------------------------ chat
def _chat_session(sess: S.Session, refs: list[str], tasks: list[str]):
    from core.eval import chat
    key = (id(sess.model), tuple(refs))
    if sess.chat is None or sess.chat_key != key:
        if sess.cache is None:
            sess.cache = chat.ModelCache()
        sess.chat = service.chat_session([("merged", sess.model, sess.tokenizer)] + list(refs), cache=sess.cache,
                                         names=["merged"] + [f"{_short(r)} ({t})" for r, t in zip(refs, tasks)])
        sess.chat_key = key
        sess.transcripts = [[] for _ in sess.chat.columns]
        sess.chat_merge = None
    return sess.chat


def _chat_values(sess: S.Session, prompt: str | None = None, texts: list[str] | None = None) -> list:
    out = []
    for i in range(CHAT_COLUMNS):
        if i < len(sess.transcripts):
            msgs = [dict(m) for m in sess.transcripts[i]]
            if prompt is not None:
                msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": texts[i] if texts else ""}]
            out.append(msgs)
        else:
            out.append([])
    return out


@S.gpu(duration=120)
@guard
def chat_send(prompt, max_new, multi_turn, *args, request: gr.Request = None):
    """Stream one prompt to the merged model and each parent, side by side.

    Single-turn by default: each prompt is answered on its own (what a merge
    comparison wants, and the tiny models were trained on single turns);
    the columns still show every exchange. With ``multi_turn`` the models
    see the earlier turns too.
    """
    values = _values(args)
    prompt = (prompt or "").strip()
    if not prompt:
        raise UserError("Type a message first (or click an example).")
    sess = S.get(request)
    if sess.model is None or sess.merged_recipe is None:
        raise UserError("Merge first (Merge tab); then the merged model answers next to its parents.")
    used = _experts(values)
    refs = [r for _, r, _ in used if r != sess.base_ref]
    tasks = [t for _, r, t in used if r != sess.base_ref]
    session = _chat_session(sess, refs, tasks)
    merge = C.describe(sess.merged_recipe)
    if sess.chat_merge is not None and sess.chat_merge != merge:
        # the merged column's earlier answers came from another merge: say so in place
        sess.transcripts[0].append({"role": "assistant", "content": f"*(re-merged: {merge})*"})
        session.histories[0] = []
    sess.chat_merge = merge
    if not multi_turn:
        session.reset()
    yield _chat_values(sess, prompt) + [""]
    texts = [""] * len(session.columns)
    try:
        for texts in session.stream(prompt, max_new_tokens=int(max_new or MAX_NEW_TOKENS)):
            yield _chat_values(sess, prompt, texts) + [gr.skip()]
    finally:
        for i, t in enumerate(texts):
            sess.transcripts[i] += [{"role": "user", "content": prompt}, {"role": "assistant", "content": t}]
    yield _chat_values(sess) + [gr.skip()]


def chat_stop(request: gr.Request = None):
    sess = S.get(request)
    if sess.chat is not None:
        sess.chat.stop()


def chat_clear(request: gr.Request = None):
    sess = S.get(request)
    if sess.chat is not None:
        sess.chat.stop()
        sess.chat.reset()
    sess.transcripts = [[] for _ in sess.transcripts]
    return [[] for _ in range(CHAT_COLUMNS)]


def example_prompt(kind: str) -> str:
    return EXAMPLE_PROMPTS[kind]


