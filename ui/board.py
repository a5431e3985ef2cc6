"""The compare board's data: every merge of the session (its history, newest first), the base and the
parents, with their probe scores, as the table, the entry pickers and one safety-vs-utility scatter.
Every handler that changes the history or the scores returns these outputs."""
from __future__ import annotations

import gradio as gr

from . import controls as C
from . import figures as F
from . import state as S
from .common import short_name
from .probing import UTILITY_METRICS, measured_on, points_of, score_cells, utility_label, utility_suites


BOARD_OUTPUTS = ["board", "board_pick", "board_plot"]


HEADERS = ["entry", "model", "refuses harmful", "over-refuses benign", "math solved", "code passes", "measured on"]


def _entries(sess: S.Session) -> list[tuple[str, str, str, dict | None, list]]:
    """(label, kind, description, probe result or None, tasks): merges newest first (with the tasks they merge),
    then the base and the parents, one row per measurement."""
    out = [(f"#{h['n']}", "merged", h["label"], h.get("scores"),
            [m.get("task", "custom") for m in h["recipe"]["models"]]) for h in reversed(sess.history)]
    out += [(short_name(ref), role, role, res, [role]) for ref, (role, results) in sess.board_refs.items()
            for res in results.values()]
    return out


def board_outputs(sess: S.Session) -> dict:
    entries = _entries(sess)
    rows = [[label, desc, *(score_cells(r) if r else ["not probed", "", "", ""]), measured_on(r)[1] if r else ""]
            for label, kind, desc, r, _t in entries]
    # one picture, one measurement: only the entries measured like the newest probed merge (or, before any,
    # the references) are drawn; others keep their row in the table with what they were measured on
    probed = [(label, kind, r, tasks) for label, kind, _desc, r, tasks in entries if r]
    ref = next((r for _label, kind, r, _t in probed if kind == "merged"), probed[0][2] if probed else None)
    same = [e for e in probed if measured_on(e[2])[0] == measured_on(ref)[0]] if ref else []
    # utility: the mean of the skills the drawn merges were made for (math and code for a three-expert merge),
    # of those every drawn entry was probed on, so all points are judged alike; the axis names them
    run = [s for s in UTILITY_METRICS if same and all(s in r.get("suites", {}) for _, _, r, _ in same)]
    merged = [t for _, kind, _, tasks in same if kind == "merged" for t in tasks]
    which = utility_suites(merged or [t for _, _, _, tasks in same for t in tasks], run)
    pts = points_of([(label, kind, r) for label, kind, r, _ in same], which)
    left = len(probed) - len(same)
    title = "Compare board: every probed merge (★), the base and the parents"
    if ref is not None:
        title += f"<br><sup>measured on {measured_on(ref)[1]}" + (
            f"; {left} entr{'y' if left == 1 else 'ies'} measured on other prompts not drawn (see the table)"
            if left else "") + "</sup>"
    fig = F.probe_scatter(pts, title, utility_label(which)) if pts else F.empty("Probe a merge to place it on the board.")
    return {"board": rows, "board_pick": _entry_picker(sess), "board_plot": fig}


def _entry_picker(sess: S.Session):
    """The choices of an entry dropdown (the history's, the board's): "#n · label", newest first, picked."""
    choices = [f"#{h['n']} · {h['label']}" for h in reversed(sess.history)]
    return gr.update(choices=choices, value=choices[0] if choices else None)


def live_outputs(sess: S.Session, used: list[tuple[str, str]], suites: list[str], merged: dict, refs: list[str],
                 others: list[dict]) -> dict:
    """The Probe tab's table and scatter of the live merge (``merged``: its result), its base and its parents
    ``used`` [(ref, task)] (``refs``/``others``: the base first, then the parents, and their results)."""
    which = utility_suites([t for _, t in used], suites)
    label = f"merged ({C.spec_of(sess.merged_recipe['merge_method']).label})"
    named = [(label, "merged", merged), (short_name(refs[0]), "base", others[0])] + \
        [(short_name(r), t, res) for (r, t), res in zip(used, others[1:])]
    rows = [[n, k, *score_cells(res), round(float(res.get("seconds", 0.0)), 1)] for n, k, res in named]
    fig = F.probe_scatter(points_of([("merged", k, res) if k == "merged" else (n, k, res) for n, k, res in named],
                                    which),
                          "Safety vs utility: merged model (★), its base and its parents", utility_label(which))
    return {"probe_table": rows, "plot_probe": fig}


# a merge adds an unprobed row to the board but never a point to its scatter: the plot is not re-sent
HISTORY_OUTPUTS = ["merge_status", "history", "history_pick", "chat0", "board", "board_pick"]


def history_outputs(sess: S.Session, plot: bool = False) -> dict:
    rows = [[h["n"], h["time"], h["label"], round(h["seconds"], 2)] for h in reversed(sess.history)]
    out = {"history": rows, "history_pick": _entry_picker(sess), **board_outputs(sess)}
    if not plot:
        out.pop("board_plot")
    return out
