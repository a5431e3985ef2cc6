"""The HTTP API (Gradio's "Use via API"): merge a recipe, chat, probe.

Three named endpoints with named parameters, for scripts (README: "HTTP
API"). They are ``gr.api`` endpoints: Gradio hands the JSON values over
untouched (no component preprocessing), so every check is ours and a bad
value is one sentence (a gr.Error that prints nothing to the server log),
never a clamp. A client keeps its session: merge first, then chat and
probe the merged model. Paths a request names (models, LED location data,
ACM calibration data, probe files) pass core.service's Space allow-list.
"""
from __future__ import annotations

import json
import math
import time

import gradio as gr

from core import service
from core.errors import UserError

from . import state as S
from .chatting import MAX_PROMPT_CHARS, chat_session, verdict
from .common import guard
from .merging import merge_and_record
from .probing import PROBE_LIMIT, SUITES

MAX_TOKENS = 512
MAX_RECIPE_CHARS = 100_000


def _int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise UserError(f"{name} must be a whole number between {lo} and {hi}; got {json.dumps(value)[:40]}.")
    if not lo <= value <= hi:
        raise UserError(f"{name} must be between {lo} and {hi}; got {int(value)}.")
    return int(value)


def _text(name: str, value, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{name} must be non-empty text.")
    if len(value) > limit:
        raise UserError(f"{name} is {len(value):,} characters long; the limit is {limit:,}.")
    return value


def _session(request) -> S.Session:
    sess = S.get(request)
    if sess.model is None or sess.merged_recipe is None:
        raise UserError(sess.needs_merge("Merge first: call /merge with a recipe, then chat or probe in the same "
                                         "session."))
    return sess


@guard
def merge(recipe: str, request: gr.Request = None) -> dict:
    """Merge a recipe (mergekit-style YAML, or the same as JSON) into this session's model.

    Returns {"method", "models", "seconds" (wall time), "tensors", "notes", "recipe" (the YAML Export writes)}.
    Every parameter is checked against its method's declared range; nothing is clamped.
    """
    text = _text("recipe", recipe, MAX_RECIPE_CHARS)
    rec = service.parse_recipe(text)             # YAML is a superset of JSON: one parser for both
    d = rec.to_dict()
    sess = S.get(request)
    res, wall, _ = merge_and_record(sess, d, lambda f, m="": None)
    return {"method": rec.merge_method, "models": [m.model for m in rec.models], "seconds": round(wall, 3),
            "tensors": res.n_tensors, "notes": list(res.notes or []), "recipe": rec.to_yaml()}


@guard
def chat(prompt: str, max_new_tokens: int = 96, request: gr.Request = None) -> dict:
    """One prompt, answered greedily by the merged model and each parent of the last /merge.

    Returns {"answers": {column name: text}, "verdicts": {column name: tag}, "seconds"}.
    """
    prompt = _text("prompt", prompt, MAX_PROMPT_CHARS)
    n = _int("max_new_tokens", max_new_tokens, 1, MAX_TOKENS)
    sess = _session(request)
    t0 = time.perf_counter()
    with sess.lock:
        base = sess.base_ref
        used = [(m["model"], m.get("task", "custom")) for m in sess.merged_recipe["models"] if m["model"] != base]
        session = chat_session(sess, [r for r, _ in used], [t for _, t in used])
        session.reset()
        texts = [""] * len(session.columns)
        for texts in session.stream(prompt, max_new_tokens=n):
            pass
        names = session.names
    return {"answers": dict(zip(names, texts)), "verdicts": {k: verdict(prompt, t) for k, t in zip(names, texts)},
            "seconds": round(time.perf_counter() - t0, 3)}


@guard
def probe(suites: str = ",".join(SUITES), limit: int = PROBE_LIMIT, model: str = "merged",
          request: gr.Request = None) -> dict:
    """Quick probes of one model: "merged" (the last /merge of this session) or a reference (zoo:NAME, smol:NAME,
    an allowed folder or Hub id). ``suites``: comma-separated kinds (harmful, benign, math, code: the tiny
    family's own suite of that kind; for SmolLM2 and any other model, the public benchmark's: harmbench,
    xstest-safe, gsm8k, humaneval), built-in suite names (harmbench, xstest-unsafe, xstest-safe, gsm8k,
    humaneval, mbpp, smol-math, ...) or KIND=PATH files.

    Returns {"model", "suites": {name: {"n", metric[, full_refusal_rate, partial_refusal_rate]}}, "seconds"}.
    """
    if not isinstance(suites, str) or not suites.strip():
        raise UserError("suites must name at least one suite, e.g. \"harmful,math\".")
    n = _int("limit", limit, 1, 1000)
    if not isinstance(model, str) or not model.strip():
        raise UserError("model must be \"merged\" or a model reference such as zoo:math.")
    if model.strip() == "merged":
        sess = _session(request)
        with sess.lock:
            res = service.probe(sess.model, ",".join(service.probe_suites_for(sess.base_ref, suites)), n,
                                tokenizer=sess.tokenizer)
        name = "merged"
    else:
        res = service.probe(model.strip(), ",".join(service.probe_suites_for(model.strip(), suites)), n)
        name = model.strip()
    out = {k: {kk: vv for kk, vv in v.items() if kk != "examples"} for k, v in res.get("suites", {}).items()}
    return {"model": name, "suites": out, "seconds": round(float(res.get("seconds", 0.0)), 3)}


def wire(demo, heavy: dict) -> None:
    """The endpoints share the UI's queue group (``heavy``: concurrency id and limit)."""
    for fn in (merge, chat, probe):
        gr.api(fn, api_name=fn.__name__, **heavy)
