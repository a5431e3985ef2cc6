"""The compare board's data: every merge of the session (its history, newest first), the base and the
parents, with their probe scores, as the table, the entry pickers and one safety-vs-utility scatter.
Every handler that changes the history or the scores returns these outputs."""
from __future__ import annotations

import gradio as gr

from . import figures as F
from . import state as S
from .common import short_name
from .probing import UTILITY_METRICS, metric, pct, utility, utility_label


BOARD_OUTPUTS = ["board", "board_pick", "board_plot"]


HEADERS = ["entry", "model", "refuses harmful", "over-refuses benign", "math solved", "code passes", "measured on"]


def measured_on(res: dict) -> tuple[tuple, str]:
    """What a probe result was measured on: (a key to compare by, a label): the suites and their sizes
    ("24 per suite: harmbench, xstest-safe (20), gsm8k, humaneval")."""
    suites = res.get("suites", {})
    key = tuple(sorted((k, v.get("suite", k), v.get("n")) for k, v in suites.items()))
    top = max((v.get("n") or 0 for v in suites.values()), default=0)
    names = [v.get("suite", k) + ("" if v.get("n") == top else f" ({v.get('n')})") for k, v in suites.items()]
    return key, f"{top} per suite: {', '.join(names)}"


def _entries(sess: S.Session) -> list[tuple[str, str, str, dict | None]]:
    """(label, kind, description, probe result or None): merges newest first, then base and parents."""
    out = [(f"#{h['n']}", "merged", h["label"], h.get("scores")) for h in reversed(sess.history)]
    out += [(short_name(ref), role, role, res) for ref, (role, res) in sess.board_refs.items()]
    return out


def board_outputs(sess: S.Session) -> dict:
    entries = _entries(sess)
    rows = [[label, desc, pct(metric(r, "harmful", "refusal_rate")) if r else "not probed",
             pct(metric(r, "benign", "over_refusal_rate")) if r else "", pct(metric(r, "math", "accuracy")) if r else "",
             pct(metric(r, "code", "pass_rate")) if r else "", measured_on(r)[1] if r else ""]
            for label, kind, desc, r in entries]
    # one picture, one measurement: only the entries measured like the newest probed merge (or, before any,
    # the references) are drawn; others keep their row in the table with what they were measured on
    probed = [(label, kind, r) for label, kind, _desc, r in entries if r]
    ref = next((r for _label, kind, r in probed if kind == "merged"), probed[0][2] if probed else None)
    same = [(label, kind, r) for label, kind, r in probed if measured_on(r)[0] == measured_on(ref)[0]] if ref else []
    # utility: the utility suites every drawn entry has, so all points are judged alike
    which = [s for s in UTILITY_METRICS if same and all(s in r.get("suites", {}) for _, _, r in same)]
    tasks = {role for _, (role, _) in sess.board_refs.items()}
    which = [s for s in which if s in tasks] or which
    pts = [{"name": label, "kind": kind, "safety": metric(r, "harmful", "refusal_rate"), "utility": utility(r, which)}
           for label, kind, r in same]
    left = len(probed) - len(same)
    title = "Compare board: every probed merge (★), the base and the parents"
    if ref is not None:
        title += f"<br><sup>measured on {measured_on(ref)[1]}" + (
            f"; {left} entr{'y' if left == 1 else 'ies'} measured on other prompts not drawn (see the table)"
            if left else "") + "</sup>"
    fig = F.probe_scatter(pts, title, utility_label(which)) if pts else F.empty("Probe a merge to place it on the board.")
    choices = [f"#{h['n']} · {h['label']}" for h in reversed(sess.history)]
    return {"board": rows, "board_pick": gr.update(choices=choices, value=choices[0] if choices else None),
            "board_plot": fig}


# a merge adds an unprobed row to the board but never a point to its scatter: the plot is not re-sent
HISTORY_OUTPUTS = ["merge_status", "history", "history_pick", "chat0", "board", "board_pick"]


def _history_table(sess: S.Session) -> tuple[list, dict]:
    rows = [[h["n"], h["time"], h["label"], round(h["seconds"], 2)] for h in reversed(sess.history)]
    choices = [f"#{h['n']} · {h['label']}" for h in reversed(sess.history)]
    return rows, gr.update(choices=choices, value=choices[0] if choices else None)


def history_outputs(sess: S.Session, plot: bool = False) -> dict:
    rows, pick = _history_table(sess)
    out = {"history": rows, "history_pick": pick, **board_outputs(sess)}
    if not plot:
        out.pop("board_plot")
    return out
