"""The Chat tab: one prompt streamed to the merged model and its parents."""
from __future__ import annotations


import re
import time

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .. import gpu as G
from .. import state as S
from ..common import Named, _experts, column_label, guard


CHAT_COLUMNS = 2 + C.N_EXPERTS          # merged, each parent, the base (optional, last)
BASE_COLUMN = CHAT_COLUMNS - 1
MAX_NEW_TOKENS = 96
# a prompt longer than this is refused before any model sees it (and is not kept):
# far beyond what a small model's context holds, and streamed back in every column
MAX_PROMPT_CHARS = 4000
# how long a message waits for a merge in its session before it is refused (a sweep takes minutes)
MERGE_WAIT_S = 10.0
# a plain sum asked in symbols or words ("47 + 8", "What's 47 plus 8?", "6 times 7")
_OPS = {"+": "+", "plus": "+", "-": "-", "minus": "-", "*": "*", "×": "*", "x": "*", "times": "*",
        "multiplied by": "*"}
_SUM = re.compile(r"^\D*?(-?\d+(?:\.\d+)?)\s*(multiplied by|plus|minus|times|[-+*×x])\s*(-?\d+(?:\.\d+)?)\D*$",
                  re.I)


def verdict(prompt: str, answer: str) -> str:
    """A tag from the probe scorers: "refused"; for a plain sum whether the final number is right
    ("correct", "wrong"); "code" for an answer that is code (its tests are the probes' job); else
    "answered" -- a neutral word: answering a harmless question is no fault."""
    from core.eval import scorers
    if not answer.strip():
        return ""
    if scorers.is_refusal(answer):
        return "refused"
    # code first: "a function that returns x times 3 plus 2" holds a sum that is not the question
    if re.search(r"^\s*(def |class )", scorers.extract_code(answer), re.M):
        return "code"
    m = _SUM.match(prompt.strip())
    if m:
        a, op, b = float(m.group(1)), _OPS[m.group(2).lower()], float(m.group(3))
        want = a + b if op == "+" else (a - b if op == "-" else a * b)
        return "correct" if scorers.math_correct(answer, want) else "wrong"
    return "answered"


def shown(answer: str) -> str:
    """An answer as the chat column shows it: code in a fenced block, so its indentation survives Markdown."""
    from core.eval import scorers
    if "```" in answer or not re.search(r"^(def |class |import |from )", answer, re.M):
        return answer
    code = scorers.extract_code(answer)
    before = answer[:len(answer) - len(code)].rstrip()
    return (before + "\n\n" if before else "") + "```python\n" + code.rstrip() + "\n```"


def _chat_session(sess: S.Session, refs: list[str], tasks: list[str], with_base: bool = False):
    from core.eval import chat
    refs = list(refs) + ([sess.base_ref] if with_base else [])
    names = ["merged"] + [column_label(r, t) for r, t in zip(refs, tasks)] + (["base"] if with_base else [])
    key = (id(sess.model), tuple(refs))
    if sess.chat is None or sess.chat_key != key:
        if sess.cache is None:
            sess.cache = chat.ModelCache()
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
        used = [(i, r, t) for i, r, t in _experts(v) if r != sess.base_ref]
        with_base = bool(v.get("with_base"))
        session = _chat_session(sess, [r for _, r, _ in used], [t for _, _, t in used], with_base)
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


def chat_stop(v: dict, request=None) -> None:
    """Every model stops at its next token; chat_send marks the answers."""
    sess = S.get(request)
    sess.chat_stopped = True
    sess.stop_pressed = time.monotonic()
    if sess.chat is not None:
        sess.chat.stop()


def chat_clear(v: dict, request=None) -> dict:
    sess = S.get(request)
    if sess.chat is not None:
        sess.chat.stop()
        sess.chat.reset()
    sess.transcripts = [[] for _ in range(CHAT_COLUMNS)]
    sess.chat_merge = None
    return {f"chat{i}": [] for i in range(CHAT_COLUMNS)}


def base_column(v: dict, request=None) -> dict:
    return {f"chat{BASE_COLUMN}": gr.update(visible=bool(v.get("with_base")))}


def layout(ui: Named) -> None:
    from .probe import SUITES
    with gr.Tab("Chat", id="chat"):
        with gr.Row():
            for kind in SUITES:
                ui.add(f"ex-{kind}", gr.Button(f"Example: {kind}", size="sm", elem_id=f"ex-{kind}"))
        ui.add("prompt", gr.Textbox(label="Prompt (sent to every model)", placeholder="Ask something…", lines=2,
                                    elem_id="prompt"))
        with gr.Row():
            ui.add("send", gr.Button("Send", variant="primary", elem_id="send"))
            ui.add("stop", gr.Button("Stop", elem_id="stop"))
            ui.add("clear", gr.Button("Clear", elem_id="clear"))
            ui.add("max_new", gr.Slider(8, 256, value=MAX_NEW_TOKENS, step=8, label="max new tokens",
                                        elem_id="max-new"))
            ui.add("multi", gr.Checkbox(False, label="multi-turn", info="models also see the earlier turns",
                                        elem_id="multi"))
            ui.add("with_base", gr.Checkbox(False, label="base column", info="the base model answers too",
                                            elem_id="with-base"))
        with gr.Row():
            for i in range(CHAT_COLUMNS):
                label = "Merged" if i == 0 else ("Base" if i == BASE_COLUMN else f"Expert {i}")
                ui.add(f"chat{i}", gr.Chatbot(label=label, height=360, visible=i < 3, elem_id=f"chat-{i}",
                                              elem_classes="chat-col"))


CHAT_INPUTS = ["prompt", "max_new", "multi", "with_base"]
CHAT_OUTPUTS = [f"chat{i}" for i in range(CHAT_COLUMNS)] + ["prompt"]


def send_from(ui: Named, trigger, **kw):
    """chat_send wired to a trigger (Send, Enter, a tour step), armed for Stop first (not queued)."""
    armed = ui.on(trigger, chat_arm, [], [], queue=False)
    return ui.on(armed.then, chat_send, ui.controls() + CHAT_INPUTS, CHAT_OUTPUTS, **ui.heavy, **kw)


def wire(ui: Named, demo) -> None:
    from .probe import SUITES
    send_from(ui, ui["send"].click)
    send_from(ui, ui["prompt"].submit)
    # not queued: Stop must run while the answer streams, not after it
    ui.on(ui["stop"].click, chat_stop, [], [], queue=False)
    ui.on(ui["with_base"].change, base_column, ["with_base"], [f"chat{BASE_COLUMN}"])
    ui.on(ui["clear"].click, chat_clear, [], CHAT_OUTPUTS[:-1])
    for kind in SUITES:
        ui.on(ui[f"ex-{kind}"].click,
              lambda v, request=None, kind=kind: {"prompt": service.example_prompts(v.get("base"))[kind]}, ["base"],
              ["prompt"])
