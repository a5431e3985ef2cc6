"""Command line: ``python -m core {zoo,compat,merge,probe,reproduce,bench}``.

Every user error prints one sentence on stderr and exits 2; an unexpected
failure prints one sentence, logs the traceback to the log file, exits 1.
Each subcommand's work lives in core.service; this file only parses.
"""
from __future__ import annotations

import argparse
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
    r.add_argument("--write", default=None, help="markdown file to write the table to")
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
    from . import service
    try:
        return int(service.run_cli(args) or 0)
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


if __name__ == "__main__":
    sys.exit(main())
