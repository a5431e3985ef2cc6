"""The SmolLM2 family and its merges on the public benchmark samples (issue #25), on this machine.

    python bench/bench_benchmarks.py --limit 48 --out bench/benchmarks-smol.md

Probes smol:base, smol:safety, smol:math, and Task Arithmetic (λ 0.7 and 1.0) and LED-Merging (the
paper's r 0.1 / 0.4) merges of safety + math, each on the first ``--limit`` prompts of harmbench,
xstest-unsafe, xstest-safe, gsm8k, humaneval and mbpp (the samples are shuffled when built, so a
prefix is a random sample), greedy, the suites' token budgets. The merges are made into the live
base, as the app makes them. Each model's wall time is the probes' (loading excluded).
Writes a markdown table (with the command and the sample sizes) to --out and JSON on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUITES = "harmbench,xstest-unsafe,xstest-safe,gsm8k,humaneval,mbpp"
COLUMNS = [("harmful", "refusal_rate", "HarmBench refusal"), ("harmful:xstest-unsafe", "refusal_rate", "XSTest unsafe refusal"),
           ("benign", "over_refusal_rate", "XSTest safe over-refusal"), ("math", "accuracy", "GSM8K"),
           ("code", "pass_rate", "HumanEval pass@1"), ("code:mbpp", "pass_rate", "MBPP pass@1")]


def recipe(method: str, **params) -> dict:
    per = params.pop("mask_ratio", None)
    models = [{"model": m, "task": t, "parameters": ({"mask_ratio": per[i]} if per else {})}
              for i, (m, t) in enumerate([("smol:safety", "safety"), ("smol:math", "math")])]
    return {"merge_method": method, "base_model": "smol:base", "models": models, "parameters": params,
            "dtype": "float32"}


MERGES = [("TA safety+math λ=0.7", recipe("task_arithmetic", **{"lambda": 0.7})),
          ("TA safety+math λ=1.0", recipe("task_arithmetic", **{"lambda": 1.0})),
          ("LED safety+math r=0.1/0.4", recipe("led", mask_ratio=[0.1, 0.4]))]


def cell(res: dict, key: str, metric: str) -> str:
    s = res["suites"].get(key)
    if s is None:
        return "-"
    extra = f" ({s['partial_refusal_rate']:.0%} partial)" if "partial_refusal_rate" in s and s["partial_refusal_rate"] else ""
    return f"{s[metric]:.0%}{extra}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from core import checkpoint as M, service
    from core.eval import probes
    rows = []
    t_all = time.perf_counter()
    for ref in ("smol:base", "smol:safety", "smol:math"):
        model, tok = M.load_model(ref, device="cpu"), M.load_tokenizer(ref)
        res = service.probe(model, SUITES, args.limit, tokenizer=tok)
        rows.append((ref, res))
        print(f"{ref}: {res['seconds']:.0f} s", file=sys.stderr, flush=True)
        del model
    live, tok = M.load_model("smol:base", device="cpu"), M.load_tokenizer("smol:base")
    for name, r in MERGES:
        service.merge(r, live_model=live)
        res = service.probe(live, SUITES, args.limit, tokenizer=tok)
        rows.append((name, res))
        print(f"{name}: {res['seconds']:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all
    sizes = {k: v["n"] for k, v in rows[0][1]["suites"].items()}
    cmd = f"python bench/bench_benchmarks.py --limit {args.limit}" + (f" --out {args.out}" if args.out else "")
    lines = [f"# The SmolLM2 family on the public benchmark samples", "",
             f"`{cmd}` — {total / 60:.0f} min on this machine (2 CPU cores), greedy, "
             "the suites' token budgets (GSM8K 256, HumanEval 320, MBPP 256, refusal 48).", "",
             "Prompts per suite: " + ", ".join(f"{probes.REGISTRY[rows[0][1]['suites'][k]['suite']].name} {n}"
                                                for k, n in sizes.items())
             + ". One prompt is 1/n of a cell: with n = 20, 5 points.", "",
             "| model / merge | " + " | ".join(c[2] for c in COLUMNS) + " | seconds |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for name, res in rows:
        lines.append(f"| {name} | " + " | ".join(cell(res, k, m) for k, m, _ in COLUMNS) + f" | {res['seconds']:.0f} |")
    md = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(md)
    print(md, file=sys.stderr)
    print(json.dumps({"rows": [{"model": n, **probes.summary(r)} for n, r in rows], "seconds": total}))


if __name__ == "__main__":
    main()
