"""The compare board (on the Probe tab): every merge of the session, the
base and the parents, with their probe scores in one table and one
safety-vs-utility scatter. An entry can be restored into the controls,
deleted, or probed in one click (merged again and probed)."""
from __future__ import annotations

import time

import gradio as gr

from .. import controls as C
from .. import figures as F
from .. import state as S
from ..common import Named, _short, guard

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
    out += [(_short(ref), role, role, res) for ref, (role, res) in sess.board_refs.items()]
    return out


def board_outputs(sess: S.Session) -> dict:
    from .probe import _metric, _pct, _utility, _utility_label, UTILITY_METRICS
    entries = _entries(sess)
    rows = [[label, desc, _pct(_metric(r, "harmful", "refusal_rate")) if r else "not probed",
             _pct(_metric(r, "benign", "over_refusal_rate")) if r else "", _pct(_metric(r, "math", "accuracy")) if r else "",
             _pct(_metric(r, "code", "pass_rate")) if r else "", measured_on(r)[1] if r else ""]
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
    pts = [{"name": label, "kind": kind, "safety": _metric(r, "harmful", "refusal_rate"), "utility": _utility(r, which)}
           for label, kind, r in same]
    left = len(probed) - len(same)
    title = "Compare board: every probed merge (★), the base and the parents"
    if ref is not None:
        title += f"<br><sup>measured on {measured_on(ref)[1]}" + (
            f"; {left} entr{'y' if left == 1 else 'ies'} measured on other prompts not drawn (see the table)"
            if left else "") + "</sup>"
    fig = F.probe_scatter(pts, title, _utility_label(which)) if pts else F.empty("Probe a merge to place it on the board.")
    choices = [f"#{h['n']} · {h['label']}" for h in reversed(sess.history)]
    return {"board": rows, "board_pick": gr.update(choices=choices, value=choices[0] if choices else None),
            "board_plot": fig}


@guard
def delete_entry(v: dict, request=None) -> dict:
    from .merge import entry_of, history_outputs
    sess = S.get(request)
    entry = entry_of(sess, v.get("board_pick"))
    sess.history.remove(entry)
    return {**history_outputs(sess, plot=True), "probe_status": f"Deleted #{entry['n']} from the board."}


@guard
def restore_entry(v: dict, request=None) -> dict:
    from .merge import entry_of
    sess = S.get(request)
    return C.values_from_recipe(entry_of(sess, v.get("board_pick"))["recipe"])


@guard
def probe_entry(v: dict, progress=gr.Progress(), request=None) -> dict:
    """One click: the entry is merged into the live model again, probed, and its controls restored."""
    from .merge import entry_of, history_outputs, merge_into_session
    from .probe import probe_live, probe_request
    suites, limit, sess, cb = probe_request(v, progress, request)
    t0 = time.perf_counter()
    with sess.lock:
        entry = entry_of(sess, v.get("board_pick"))
        if sess.merged_recipe != entry["recipe"]:
            merge_into_session(sess, entry["recipe"], lambda f, m: cb(0.3 * f, m))
        probe_live(sess, suites, limit, lambda f, m: cb(0.3 + 0.7 * f, m))
        out = history_outputs(sess, plot=True)
    out.update(C.values_from_recipe(entry["recipe"]))
    out["probe_status"] = f"Probed #{entry['n']} ({limit} prompts per suite) in {time.perf_counter() - t0:.1f} s."
    # the Merge tab must not go on saying another merge is live
    out["merge_status"] = (f"✓ #{entry['n']} is the live model again ('Probe it' on the compare board): "
                           f"{entry['label']}.")
    return out


def layout(ui: Named) -> None:
    with gr.Accordion("Compare board: every merge of this session", open=True):
        ui.add("board", gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="board",
                                     column_widths=["6%", "32%", "10%", "10%", "10%", "10%", "22%"]))
        with gr.Row():
            ui.add("board_pick", gr.Dropdown([], label="Entry", scale=4, elem_id="board-pick"))
            ui.add("board_probe", gr.Button("Probe it", scale=1, variant="primary", elem_id="board-probe"))
            ui.add("board_restore", gr.Button("Restore it", scale=1, elem_id="board-restore"))
            ui.add("board_delete", gr.Button("Delete it", scale=1, elem_id="board-delete"))
        ui.add("board_plot", gr.Plot(F.empty("Probe a merge to place it on the board."), show_label=False,
                                     elem_id="plot-board"))
        gr.Markdown("Each star is one merge of this session (its number is its row); circles are the base and the "
                    "parents. Top right is best.", elem_classes="caption")


def wire(ui: Named, demo) -> None:
    from .merge import HISTORY_OUTPUTS
    controls = ui.controls()
    ui.on(ui["board_probe"].click, probe_entry, controls + ["board_pick", "suites", "limit", "suite_set"],
          HISTORY_OUTPUTS + ["board_plot", "probe_status"] + controls, show_progress_on=ui["probe_status"],
          **ui.heavy)
    ui.on(ui["board_restore"].click, restore_entry, ["board_pick"], controls)
    ui.on(ui["board_delete"].click, delete_entry, ["board_pick"], HISTORY_OUTPUTS + ["board_plot", "probe_status"])
