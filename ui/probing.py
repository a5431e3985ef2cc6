"""Probing the session's models: which suites a kind means for the session's family, the live merge's
scores (kept on its history entry), the base's and parents' (computed once per process), and what one
score means on the page (refusal, utility as the mean of the skills a merge was made for)."""
from __future__ import annotations

from core import service
from core.errors import UserError

from . import gpu as G
from . import state as S
from .common import progress_bar


SUITES = list(service.probe_kinds())
PROBE_LIMIT = 24
# a real family is probed on public benchmarks by default; its own held-out suites show what its experts
# were trained for (SmolLM2's math expert: 82% of smol-math, near 0% of GSM8K)
BENCHMARKS, HELD_OUT = "public benchmarks", "the family's held-out suites"
# the skills a merge is for besides safety (refusing harmful requests, not refusing harmless ones)
UTILITY_METRICS = {k: m for k, m in service.probe_kinds().items() if k not in ("harmful", "benign")}


def metric(res: dict, suite: str, key: str):
    s = res.get("suites", {}).get(suite)
    return None if s is None else s.get(key)


def utility_suites(tasks, suites) -> list[str]:
    """The utility suites that count: those of the experts' tasks (a safety +
    math merge is judged on math, not on code nobody taught it), or every
    utility suite run when no expert has a math or code task."""
    run = [s for s in UTILITY_METRICS if s in suites]
    mine = [s for s in run if s in set(tasks)]
    return mine or run


def utility(res: dict, which: list[str]) -> float | None:
    vals = [metric(res, s, UTILITY_METRICS[s]) for s in which]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def utility_label(which: list[str]) -> str:
    """The utility axis' title, naming what it averages ("utility: mean of math solved and code tests passed")."""
    names = {"math": "math solved", "code": "code tests passed"}
    if not which:
        return "utility: none probed"
    if len(which) == 1:
        return f"utility: {names[which[0]]}"
    return "utility: mean of " + " and ".join(names[s] for s in which)


def pct(v) -> str:
    return "—" if v is None else f"{v:.0%}"


def score_cells(res: dict) -> list[str]:
    """A probe result's four table cells: refuses harmful, over-refuses benign, math solved, code passes."""
    return [pct(metric(res, k, m)) for k, m in service.probe_kinds().items()]


def probe_parents(sess: S.Session, refs: list[str], suites: list[str], limit: int, cb,
                   ran: list | None = None) -> list[dict]:
    """Probe results of reference models (the base, the parents): computed once per process (service);
    the names of those probed now (not remembered from earlier) are added to ``ran``."""
    if sess.cache is None:
        sess.cache = service.model_cache()

    def run(jobs, *a, **k):
        if ran is not None:
            ran.extend(name for _, _, name in jobs)
        return G.probe_models(jobs, *a, **k)
    # the session's model cache holds the chat's parents: loading the same set reuses them; the probing
    # runs where the GPU is (a ZeroGPU worker), the results are remembered here
    return service.probe_references(refs, suites_for(sess, suites), limit, sess.cache.load, progress=cb, run=run)


def suites_for(sess: S.Session, kinds: list[str]) -> str:
    """The suites measuring ``kinds`` for this session's models: the public benchmarks' samples, or their
    family's held-out suites (the tiny family has only those)."""
    return ",".join(service.probe_suites_for(sess.base_ref, kinds, held_out=sess.held_out))


def take_suite_set(sess: S.Session, v: dict) -> None:
    sess.held_out = v.get("suite_set") == HELD_OUT


def check_suites(suites) -> list[str]:
    suites = [s for s in (suites or []) if s in SUITES]
    if not suites:
        raise UserError("Tick at least one probe suite.")
    return suites


def check_limit(limit) -> int:
    try:
        n = int(limit if limit is not None else PROBE_LIMIT)
    except (TypeError, ValueError):
        raise UserError("The number of prompts per suite must be a whole number.")
    if not 1 <= n <= 1000:
        raise UserError(f"The number of prompts per suite must be between 1 and 1000; got {n}.")
    return n


def probe_live(sess: S.Session, suites: list[str], limit: int, cb) -> dict:
    """Probe the live merged model and keep the scores on its history entry (the compare board shows them)."""
    res = G.probe_model(sess.model, sess.tokenizer, suites_for(sess, suites), limit,
                        lambda f, m="": cb(f, f"merged model: {m}"))
    entry = sess.live_entry()
    if entry is not None:
        entry["scores"] = res
    return res


def probe_request(v: dict, progress, request) -> tuple[list[str], int, S.Session, object]:
    """What every probing handler starts from: checked suites and limit, the session (with the prompt
    set chosen), the progress callback."""
    suites, limit, sess = check_suites(v.get("suites")), check_limit(v.get("limit")), S.get(request)
    take_suite_set(sess, v)
    return suites, limit, sess, progress_bar(progress)


def measured_on(res: dict) -> tuple[tuple, str]:
    """What a probe result was measured on: (a key to compare by, a label): the suites and their sizes
    ("24 per suite: harmbench, xstest-safe (20), gsm8k, humaneval")."""
    suites = res.get("suites", {})
    key = tuple(sorted((k, v.get("suite", k), v.get("n")) for k, v in suites.items()))
    top = sample_size(res)
    names = [v.get("suite", k) + ("" if v.get("n") == top else f" ({v.get('n')})") for k, v in suites.items()]
    return key, f"{top} per suite: {', '.join(names)}"


def probe_references(sess: S.Session, used: list[tuple[str, str]], suites: list[str], limit: int, cb,
                     ran: list | None = None) -> tuple:
    """Probe the base and the parents ``used`` [(ref, task)] (cached per process) and put them on the
    board; (refs, results)."""
    refs = [sess.base_ref] + [r for r, _ in used]
    res = probe_parents(sess, refs, suites, limit, cb, ran)
    for ref, role, r in zip(refs, ["base"] + [t for _, t in used], res):
        # every measurement is kept: the board draws a reference measured as the merges it is drawn with
        sess.board_refs.setdefault(ref, (role, {}))[1][measured_on(r)[0]] = r
    return refs, res


def sample_size(res: dict) -> int:
    """Prompts per suite of a probe result (the largest suite's: a suite smaller than the limit has all it has)."""
    return max((v.get("n") or 0 for v in res.get("suites", {}).values()), default=0)


def points_of(rows: list[tuple[str, str, dict]], which: list[str]) -> list[dict]:
    """Scatter points: each with its refusal, its utility (mean over ``which``) and its sample size."""
    return [{"name": name, "kind": kind, "safety": metric(res, "harmful", "refusal_rate"),
             "utility": utility(res, which), "n": sample_size(res)} for name, kind, res in rows]
