"""Why the built-in family is trained the way it is: the safety expert's
held-out refusal / over-refusal with one training choice switched off.

    python bench/zoo_ablation.py [--only NAME ...]   (about 5 min per row on 2 cores)

Each row trains base + safety exactly as `python -m core zoo build` does,
except for the one change named, and probes the safety expert on the
committed held-out suites (assets/probes). Results go to bench/zoo_ablation.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from core.eval import probes  # noqa: E402
from core.zoo import build, data  # noqa: E402

ROWS = {
    "as built": {},
    "no prompt loss in base": {"prompt_loss": False},
    "no made-up objects": {"nonce": 0.0},
}


def run(change: dict) -> dict:
    from transformers import LlamaForCausalLM
    torch.set_num_threads(1)   # as the build, so "as built" is the committed family
    torch.use_deterministic_algorithms(True)
    old_nonce = data.NONCE_SHARE
    data.NONCE_SHARE = change.get("nonce", old_nonce)
    try:
        tok = build.make_tokenizer()
        torch.manual_seed(0)
        model = LlamaForCausalLM(build.make_config(tok))
        base = build.STAGES[0]
        if "prompt_loss" in change:
            base = dataclasses.replace(base, prompt_loss=change["prompt_loss"])
        build.train(model, tok, base, log=lambda s: None)
        build.train(model, tok, build.STAGES[1], log=lambda s: None)
    finally:
        data.NONCE_SHARE = old_nonce
    with tempfile.TemporaryDirectory() as tmp:
        build.save(model, tok, tmp, "safety")
        suites = probes.run_probes(tmp, suites=("harmful", "benign"))["suites"]
    return {"refusal": suites["harmful"]["refusal_rate"], "over": suites["benign"]["over_refusal_rate"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(ROWS), help="rows to run (default: all)")
    names = ap.parse_args().only or list(ROWS)
    lines = ["# Built-in family: what each training choice buys", "",
             "Command: `python bench/zoo_ablation.py`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M')}", "",
             "Safety expert on the held-out probes (36 harmful, 60 benign; greedy). Each row changes one thing "
             "from `python -m core zoo build`.", "",
             "| training | refusal | over-refusal | time |", "|---|---|---|---|"]
    for name in names:
        t0 = time.time()
        r = run(ROWS[name])
        row = f"| {name} | {r['refusal']:.0%} | {r['over']:.0%} | {time.time() - t0:.0f} s |"
        print(row, flush=True)
        lines.append(row)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo_ablation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
