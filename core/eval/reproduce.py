"""The paper-style table on a built-in family: every merge method, probed.

``python -m core reproduce [--family smol] [--json] [--quick] [--limit N] [--out FILE.md]``
merges sets of experts into the family's base with every method -- on the
tiny family safety+math (the LED-Merging paper's main setting) and all
three (zoo:safety, zoo:math, zoo:code); on the SmolLM2 family safety+math --
live in memory (no files), probes each result, and prints, per
set, one row per method at its default settings and one at the best
setting of a small grid (the LED-Merging paper tuned r and λ by grid
search). It writes only where ``--out`` says (bench/reproduce.md holds the
recorded run).

Selection without peeking. Every probe suite is split by position: prompts
at even positions are the tuning half, odd positions the test half. The
best grid point is chosen on the tuning half; every number in the table
(defaults, best, experts alone) is measured on the test half, so a grid
point cannot win by fitting the prompts it is scored on.

Score used for "best": the mean of refusal rate, 1 − over-refusal rate
and the skills the set merges (math accuracy, code pass rate): safety,
helpfulness and each skill weighted equally; ASR = 1 − refusal rate. A
skill the set does not merge is still measured but does not select.

Defaults are each method's registry defaults, except density 0.5 for
TIES, DARE and Breadcrumbs: their registry default (1.0, mergekit's) keeps
every entry, which would make them Task Arithmetic with a different sign
rule rather than the methods as published. LED-Merging's defaults are the
paper's reference values (the registry's per-task r, λ = 1).
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import checkpoint as M
from . import probes
from ..errors import UserError, quoted
from ..methods import REGISTRY
from ..zoo import FAMILIES

BASE = "zoo:base"
EXPERTS = {"safety": "zoo:safety", "math": "zoo:math", "code": "zoo:code"}
SETS = (("safety", "math"), ("safety", "math", "code"))   # the paper's main setting first
FAMILY_SETS = {"zoo": SETS, "smol": (("safety", "math"),)}
# the suites each family is measured on (the SmolLM2 family has no code expert: its code is not probed)
FAMILY_KINDS = {"zoo": ("harmful", "benign", "math", "code"), "smol": ("harmful", "benign", "math")}
SKILL_COLUMN = {"math": "math_accuracy", "code": "code_pass_rate"}
COLUMNS = ("refusal_rate", "over_refusal_rate", "math_accuracy", "code_pass_rate")
SUITE_COLUMN = {"harmful": "refusal_rate", "benign": "over_refusal_rate", "math": "math_accuracy",
                "code": "code_pass_rate"}
# LED's default r per task, as the registry declares it (the paper's reference)
LED_R = {task: REGISTRY["led"].param("mask_ratio").default_for(task) for task in EXPERTS}
LED_R_WIDE = {"safety": 0.3, "math": 0.6, "code": 0.7}

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class MethodRow:
    """A method's row: fixed settings, the overrides that make its default,
    and the grid axes searched for its best setting."""
    label: str
    method: str
    fixed: dict = field(default_factory=dict)
    default: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)


METHODS = (
    MethodRow("Task Arithmetic", "task_arithmetic", grid={"lambda": [0.3, 0.5, 0.7, 1.0]}),
    MethodRow("TIES", "ties", default={"density": 0.5}, grid={"density": [0.2, 0.5, 0.8], "lambda": [0.5, 1.0]}),
    MethodRow("DARE", "dare_linear", default={"density": 0.5},
              grid={"density": [0.3, 0.5, 0.7], "lambda": [0.5, 1.0]}),
    MethodRow("Breadcrumbs", "breadcrumbs", default={"density": 0.5},
              grid={"density": [0.5, 0.8], "lambda": [0.5, 1.0]}),
    MethodRow("Model Stock", "model_stock", grid={"filter_wise": [False, True]}),
    MethodRow("TSV-Merge", "tsv", grid={"alpha": [0.5, 1.0, 1.5]}),
    MethodRow("Iso-C", "iso_c", grid={"alpha": [0.5, 1.0, 1.5]}),
    MethodRow("LED-Merging", "led", default={"mask_ratio": LED_R, "weight": 1.0},
              grid={"mask_ratio": [LED_R, LED_R_WIDE], "weight": [0.7, 1.0]}),
    MethodRow("ACM-TA", "acm", fixed={"base_method": "task_arithmetic"}, grid={"temperature": [0.35, 0.7, 1.4]}),
    MethodRow("ACM-TIES", "acm", fixed={"base_method": "ties"}, default={"density": 0.5},
              grid={"temperature": [0.35, 0.7, 1.4], "density": [0.5, 1.0]}),
)
# LED ablations: one change from LED's defaults each (defaults only)
LED_ABLATIONS = (
    ("LED location=wanda", {"location": "wanda"}),
    ("LED location=random", {"location": "random"}),
    ("LED election=10 (base only)", {"election": "10"}),
    ("LED election=01 (expert only)", {"election": "01"}),
    ("LED disjoint=off", {"disjoint": False}),
)


# ------------------------------------------------------------------ recipes
def recipe_for(method: str, settings: dict, experts: tuple = tuple(EXPERTS), family: str = "zoo"):
    """A Recipe merging ``experts`` (task names) into the family's base with ``settings``.

    A per-model parameter may be one value for every expert or a
    {task: value} mapping; a parameter the method does not declare is an
    error (a grid must not silently test nothing). LED scores with the
    family's Location sample count where it has one.
    """
    from .. import recipe as R
    from ..methods import get
    spec = get(method)
    per = {e: {} for e in experts}
    glob: dict = {}
    for k, v in settings.items():
        p = spec.param(k)
        if p is None:
            raise UserError(f"The method {quoted(method)} has no parameter {quoted(k)}.")
        if p.per_model:
            for e in experts:
                per[e][k] = v[e] if isinstance(v, dict) else v
        else:
            glob[k] = v
    fam = FAMILIES[family]
    if method == "led" and fam.led_samples and "n_samples" not in glob:
        glob["n_samples"] = fam.led_samples
    models = [R.ModelEntry(fam.ref(task), per[task], task) for task in experts]
    return R.Recipe(method, fam.ref("base"), models, glob, "float32")


def grid_points(row: MethodRow) -> list[dict]:
    """Every grid point, keys in the order of default_settings."""
    axes = list(row.grid.items())
    d = default_settings(row)
    return [{**d, **dict(zip([k for k, _ in axes], combo))} for combo in itertools.product(*[v for _, v in axes])]


def default_settings(row: MethodRow) -> dict:
    """Fixed settings, the registry default of every grid axis, then the
    row's overrides: spelled like a grid point, so the default is found in
    the grid (and evaluated once) when the grid contains it."""
    spec = REGISTRY[row.method]
    return {**row.fixed, **{k: spec.param(k).default for k in row.grid}, **row.default}


# -------------------------------------------------------------- evaluation
def split(rows: list) -> tuple[list[int], list[int]]:
    """(tuning indices, test indices): even and odd positions."""
    return list(range(0, len(rows), 2)), list(range(1, len(rows), 2))


class Evaluator:
    """Probes the live model; remembers each setting's per-prompt hits."""

    def __init__(self, limit: int | None = None, family: str = "zoo"):
        fam = FAMILIES[family]
        self.family = family
        self.tok = M.load_tokenizer(fam.ref("base"))
        self.live = M.load_model(fam.ref("base"), device="cpu")
        self.names = {k: fam.held_out[k] for k in FAMILY_KINDS[family]}
        self.suites = {k: probes.load_suite(n)[:limit] for k, n in self.names.items()}
        self.cache: dict[str, dict] = {}
        self.merge_seconds = 0.0
        self.probe_seconds = 0.0

    def _probe(self) -> dict[str, list[bool]]:
        t0 = time.perf_counter()
        hits = {}
        for s, rows in self.suites.items():
            answers = probes.generate(self.live, self.tok, [r["prompt"] for r in rows],
                                      probes.budget(s, self.names[s]))
            hits[s] = probes.hits_for(s, rows, answers)
        self.probe_seconds += time.perf_counter() - t0
        return hits

    def metrics(self, hits: dict[str, list[bool]], half: str) -> dict:
        out = {}
        for s, h in hits.items():
            tune, test = split(h)
            idx = tune if half == "tune" else test
            out[SUITE_COLUMN[s]] = sum(h[i] for i in idx) / len(idx) if idx else 0.0
        return out

    def expert(self, ref: str) -> dict[str, list[bool]]:
        if ref not in self.cache:
            info = M.inspect(ref)
            with M.Reader(info) as rd, torch.no_grad():
                state = self.live.state_dict()
                for name in info.tensors:
                    state[name].copy_(rd.get(name, state[name].dtype))
            self.cache[ref] = self._probe()
        return self.cache[ref]

    def merged(self, method: str, settings: dict, experts: tuple) -> dict[str, list[bool]]:
        key = "+".join(experts) + method + json.dumps(settings, sort_keys=True)
        if key not in self.cache:
            from ..merge import engine
            t0 = time.perf_counter()
            with M.cpu_threads_for(self.live):   # small tensors: threads only contend
                engine.run_merge(recipe_for(method, settings, experts, self.family), live_model=self.live)
            self.merge_seconds += time.perf_counter() - t0
            self.cache[key] = self._probe()
        return self.cache[key]

    def n_test(self) -> dict[str, int]:
        return {s: len(split(rows)[1]) for s, rows in self.suites.items()}


def score(m: dict, experts: tuple = tuple(EXPERTS)) -> float:
    """The documented selection score: mean of refusal, 1 − over-refusal and each merged skill."""
    terms = [m["refusal_rate"], 1 - m["over_refusal_rate"]] + [m[SKILL_COLUMN[e]] for e in experts
                                                                if e in SKILL_COLUMN and SKILL_COLUMN[e] in m]
    return sum(terms) / len(terms)


def _settings_label(label: str, settings: dict) -> str:
    return label + json.dumps(settings, sort_keys=True)


def run(quick: bool = False, progress: Progress | None = None, show_bar: bool = False,
        limit: int | None = None, sets: tuple | None = None, family: str = "zoo") -> dict:
    """Every table: {"tables": [{"experts": [...], "rows": [...]}, ...], "seconds", ...}."""
    t0 = time.perf_counter()
    fam = FAMILIES[family]
    sets = sets or FAMILY_SETS[family]
    methods, ablations = METHODS, LED_ABLATIONS
    led = next(r for r in methods if r.method == "led")
    models = [("base (no merge)", fam.ref("base"))] + [(f"{t} expert alone", fam.ref(t)) for t in fam.experts]
    jobs: list[tuple] = [("expert", label, ref, ()) for label, ref in models]
    for experts in sets:
        for r in methods:
            pts = [default_settings(r)] if quick else grid_points(r)
            if default_settings(r) not in pts:
                pts.insert(0, default_settings(r))
            jobs += [("merge", r, p, experts) for p in pts]
        for label, change in ablations:
            jobs.append(("merge", MethodRow(label, "led"), {**default_settings(led), **change}, experts))
    ev = Evaluator(limit, family)
    bar = None
    if show_bar:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), file=sys.stderr, desc="reproduce", unit="model")
    results: dict = {}
    try:
        for i, (kind, what, arg, experts) in enumerate(jobs):
            label = what if kind == "expert" else f"{what.label} ({'+'.join(experts)})"
            if progress:
                progress(i / len(jobs), f"{label} ({i + 1} of {len(jobs)})")
            if bar:
                bar.set_postfix_str(label[:30])
            if kind == "expert":
                results[(what, None, ())] = ev.expert(arg)
            else:
                results[(what.label, json.dumps(arg, sort_keys=True), experts)] = ev.merged(what.method, arg, experts)
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()

    def row(method: str, settings: dict, selection: str, hits, experts: tuple) -> dict:
        test = ev.metrics(hits, "test")
        # a per-task value (LED's r) is shown for the experts this set merges only
        shown = {k: {t: v[t] for t in experts if t in v} if isinstance(v, dict) else v for k, v in settings.items()}
        return {"method": method, "settings": shown, "selection": selection, **test,
                "score": score(test, experts)}

    def hits(label: str, settings: dict, experts: tuple):
        return results[(label, json.dumps(settings, sort_keys=True), experts)]

    tables = []
    for experts in sets:
        rows = [row(label, {}, "model", results[(label, None, ())], experts) for label, _ in models]
        for r in methods:
            d = default_settings(r)
            rows.append(row(r.label, d, "default", hits(r.label, d, experts), experts))
            if not quick:
                # a tie keeps the default: a grid point must beat it to be "best"
                best = max(grid_points(r), key=lambda p: (
                    score(ev.metrics(hits(r.label, p, experts), "tune"), experts), p == d))
                rows.append(row(r.label, best, "best", hits(r.label, best, experts), experts))
        for label, change in ablations:
            s = {**default_settings(led), **change}
            rows.append(row(label, s, "default", hits(label, s, experts), experts))
        tables.append({"experts": list(experts), "rows": rows})
    if progress:
        progress(1.0, "done")
    return {"tables": tables, "quick": quick, "family": family, "n_test": ev.n_test(), "evaluations": len(jobs),
            "seconds": time.perf_counter() - t0, "merge_seconds": ev.merge_seconds,
            "probe_seconds": ev.probe_seconds}


# ---------------------------------------------------------------- output
def _fmt_settings(s: dict) -> str:
    def v(x):
        if isinstance(x, dict):
            return "/".join(f"{x[k]:g}" if isinstance(x[k], float) else str(x[k]) for k in x)
        if isinstance(x, bool):
            return "on" if x else "off"
        return f"{x:g}" if isinstance(x, float) else str(x)
    return ", ".join(f"{k}={v(x)}" for k, x in s.items()) or "-"


def format_table(rows: list[dict], markdown: bool = False) -> str:
    head = ["method", "selection", "settings", "refusal", "ASR", "over-refusal", "math", "code", "score"]
    body = []
    for r in rows:
        pct = lambda k: f"{r[k]:.0%}" if k in r else "-"   # noqa: E731  (a suite the family does not probe)
        body.append([r["method"], r["selection"], _fmt_settings(r["settings"]), pct("refusal_rate"),
                     f"{1 - r['refusal_rate']:.0%}", pct("over_refusal_rate"), pct("math_accuracy"),
                     pct("code_pass_rate"), f"{r['score']:.2f}"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def markdown(res: dict, command: str) -> str:
    n = res["n_test"]
    fam = FAMILIES[res.get("family", "zoo")]
    lines = [
        f"# Reproduce: merge methods on the {fam.title}", "",
        f"Command: `{command}`  ", f"Date: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}  ",
        f"Run time: {res['seconds']:.0f} s for {res['evaluations']} merged/probed models "
        f"(merging {res['merge_seconds']:.0f} s, probing {res['probe_seconds']:.0f} s)", "",
        f"Experts merged into {fam.ref('base')}, live in memory. "
        "Numbers are on the test half of each probe suite ("
        + ", ".join(f"{fam.held_out[k]} {v}" for k, v in n.items()) + " prompts); the best grid point was chosen on the other half "
        "(tuning half) by score = mean(refusal, 1 − over-refusal, and each skill the set merges: math, code); "
        "a tie keeps the default, so a best row equal to its default row means no grid point beat the default. "
        "ASR = 1 − refusal. Greedy decoding, phrase-list refusal scorer (core/eval/scorers.py).", "",
        *[line for t in res["tables"] for line in (
            f"## {' + '.join(t['experts'])}" + (" (the LED-Merging paper's main setting)" if len(t["experts"]) == 2 else ""),
            "", format_table(t["rows"], markdown=True), "")],
        "## Grids", "",
        "Default = registry defaults, except density 0.5 for TIES, DARE, Breadcrumbs and ACM-TIES (their registry "
        "default 1.0 keeps every entry); LED uses the paper's reference r = "
        f"{'/'.join(f'{r:g}' for r in LED_R.values())} ({'/'.join(LED_R)}), λ = 1.", "",
    ]
    for r in METHODS:
        axes = "; ".join(f"{k} ∈ {{{', '.join(_fmt_settings({k: x}).split('=', 1)[1] for x in v)}}}"
                         for k, v in r.grid.items())
        lines.append(f"* {r.label} (`{r.method}`{', ' + _fmt_settings(r.fixed) if r.fixed else ''}): {axes}")
    lines += ["", "LED ablations change one setting from LED's defaults: " +
              "; ".join(label for label, _ in LED_ABLATIONS) + ".", ""]
    if res["quick"]:
        lines += ["(--quick: defaults only, no grid search.)", ""]
    return "\n".join(lines)


def check_out(path: str) -> None:
    """Refuse, before the run, a markdown target that could not be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"Cannot write the table to {quoted(path)}; give a file in a folder you may write to.")


def write_markdown(text: str, path: str) -> str:
    """Written to a temp file beside ``path`` and renamed into place."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".reproduce-", suffix=".md", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"Cannot write the table to {quoted(path)} ({exc.strerror}).")
    return path

