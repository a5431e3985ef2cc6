"""Command line: ``python -m core {zoo,compat,merge,probe,reproduce}``.

Every user error prints one sentence on stderr and exits 2; an unexpected
failure prints one sentence, logs the traceback to the log file, exits 1.
Each subcommand's work lives in core.service; this file only parses.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import UserError, one_line

log = logging.getLogger("core")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="Merge explorer command line.")
    sub = p.add_subparsers(dest="cmd", required=True)

    z = sub.add_parser("zoo", help="the built-in tiny model family")
    z.add_argument("action", choices=["build", "check"], help="build: retrain all four models; check: measure them")
    z.add_argument("--out", default=None, help="folder for the family (default assets/zoo)")
    z.add_argument("--json", action="store_true")

    c = sub.add_parser("compat", help="compatibility report for a base and experts")
    c.add_argument("base")
    c.add_argument("experts", nargs="+")

    m = sub.add_parser("merge", help="merge the models of a recipe into a folder")
    m.add_argument("recipe", help="recipe YAML (mergekit format, extended)")
    m.add_argument("--out", required=True, help="output folder (must not exist, or use --force)")
    m.add_argument("--force", action="store_true", help="replace an existing output folder")
    m.add_argument("--device", default="cpu")

    pr = sub.add_parser("probe", help="quick safety/utility probes of one model")
    pr.add_argument("model", help="folder, Hub id or zoo:NAME")
    pr.add_argument("--suites", default="harmful,benign,math,code")
    pr.add_argument("--limit", type=int, default=None, help="at most this many prompts per suite")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--examples", action="store_true", help="include every prompt, answer and verdict in --json")
    pr.add_argument("--device", default="auto", help="auto (cuda, mps, cpu in that order), cuda, mps or cpu")
    pr.add_argument("--quantize", choices=["8bit", "4bit"], default=None, help="bitsandbytes loading (CUDA only)")
    pr.add_argument("--refusal-phrases", default=None,
                    help="JSON {start, anywhere, exceptions, window} replacing the refusal phrase lists")

    r = sub.add_parser("reproduce", help="the paper-style table on the built-in family")
    r.add_argument("--json", action="store_true")
    r.add_argument("--quick", action="store_true", help="defaults only, no grid search")
    r.add_argument("--limit", type=int, default=None, help="at most this many prompts per suite (a first look)")
    r.add_argument("--out", default=None, help="also write the table as markdown to this file "
                   "(bench/reproduce.md holds the recorded run); nothing is written without it")
    return p


def _log_crash(cmd: str) -> str | None:
    """Write the current traceback to a log file, never to the terminal.

    log.exception alone went through basicConfig's stderr handler, so the
    user saw the whole traceback above the one sentence. The file is
    MERGE_EXPLORER_LOG, else <cache>/logs/cli.log; returns its path.
    """
    from . import CACHE_DIR
    path = os.environ.get("MERGE_EXPLORER_LOG") or os.path.join(CACHE_DIR, "logs", "cli.log")
    crash = logging.getLogger("core.crash")
    crash.propagate = False
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    crash.addHandler(handler)
    try:
        crash.exception("unexpected failure in %s", cmd)
    finally:
        crash.removeHandler(handler)
        handler.close()
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    try:
        return int(_run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one sentence for the user, details in the log
        where = _log_crash(args.cmd)
        msg = one_line(exc)
        if where and msg.endswith("in the log."):
            msg = msg[:-1] + f" ({where})."
        print(f"error: {msg}", file=sys.stderr)
        return 1


def _run(args) -> int:
    return _CLI[args.cmd](args)    # argparse admits only these commands


def _cli_zoo(args) -> int:
    from .zoo import build, check
    if args.action == "build":
        build.build_all(out=args.out)
        return 0
    res = check.check_all(out=args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(res, indent=2) if args.json else check.format_check(res))
    # non-zero when the family does not do what it is for (issue #15's criteria 1-4)
    return 0 if check.ok(res) else 1


def _cli_compat(args) -> int:
    from . import service
    rep = service.compatibility(args.base, args.experts)
    for row in rep.rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    for n in rep.notes:
        print("note:", n)
    if not rep.ok:
        for p in rep.problems:
            print("error:", p, file=sys.stderr)
        return 2
    print(rep.sentence())   # "Compatible: Qwen2ForCausalLM (qwen2)."
    return 0


def _cli_merge(args) -> int:
    from . import service
    res = service.merge(args.recipe, out_dir=args.out, force=args.force, device=args.device, show_bar=True)
    for n in res.notes:
        print("note:", n)
    print(f"Wrote {res.out_dir} ({res.n_tensors} tensors) in {res.seconds:.2f} s.")
    return 0


def _quiet_loading() -> None:
    """transformers draws a 'Loading weights' bar per model; on the command
    line it buries the result (and a reproduce run loads dozens)."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def _cli_probe(args) -> int:
    from . import service
    from .checkpoint import resolve
    from .eval import probes, scorers
    phrases = scorers.load_phrases(args.refusal_phrases) if getattr(args, "refusal_phrases", None) else None
    resolve(args.model)                 # a wrong name or file is reported before
    probes.parse_suites(args.suites)    # transformers is even imported
    _quiet_loading()
    res = service.probe(args.model, args.suites, args.limit, phrases=phrases, device=getattr(args, "device", "auto"),
                        quantization=getattr(args, "quantize", None))
    if args.json:
        print(json.dumps(probes.summary(res, examples=getattr(args, "examples", False))))
    else:
        print(probes.format_table(res))
    return 0


def _cli_reproduce(args) -> int:
    from . import service
    from .eval import reproduce as rep
    if args.out:
        rep.check_out(args.out)     # before minutes of merging, not after
    _quiet_loading()
    res = service.reproduce(quick=args.quick, show_bar=True, limit=args.limit)
    cmd = ("python -m core reproduce" + (" --quick" if args.quick else "")
           + (f" --limit {args.limit}" if args.limit is not None else "") + (f" --out {args.out}" if args.out else ""))
    if args.out:
        rep.write_markdown(rep.markdown(res, cmd), args.out)
    if args.json:
        keys = ("method", "settings", "selection", "refusal_rate", "over_refusal_rate", "math_accuracy",
                "code_pass_rate")
        print(json.dumps({"tables": [{"experts": t["experts"], "rows": [{k: r[k] for k in keys} for r in t["rows"]]}
                                     for t in res["tables"]]}))
    else:
        for t in res["tables"]:
            print(" + ".join(t["experts"]))
            print(rep.format_table(t["rows"]))
            print()
        print(f"({res['seconds']:.0f} s" + (f"; written to {args.out})" if args.out else ")"))
    return 0


_CLI = {"zoo": _cli_zoo, "compat": _cli_compat, "merge": _cli_merge, "probe": _cli_probe, "reproduce": _cli_reproduce}
