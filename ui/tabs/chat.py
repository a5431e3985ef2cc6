"""The Chat tab: one prompt streamed to the merged model and its parents (ui/chatting.py answers)."""
from __future__ import annotations

import time

import gradio as gr

from core import service

from .. import state as S
from ..chatting import BASE_COLUMN, CHAT_COLUMNS, CHAT_OUTPUTS, MAX_NEW_TOKENS, send_from
from ..common import Named
from ..probing import SUITES


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
                # one copy icon per column (copy all), not one per message: five narrow columns had 2-3 icons
                # on every message and the column label hid under the share/copy icons
                ui.add(f"chat{i}", gr.Chatbot(label=label, height=360, visible=i < 3, elem_id=f"chat-{i}",
                                              elem_classes="chat-col", buttons=["copy_all"]))


def wire(ui: Named, demo) -> None:
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
