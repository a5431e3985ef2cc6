"""LED and ACM at real size: a random family shaped like Qwen2.5-0.5B (bf16).

Not a test. The family is bench_merge.py's (Qwen2-0.5B's shapes in Llama
naming, 494,005,120 parameters, bf16, tied embeddings: a base and two
"fine-tunes", base + N(0, 0.002²)), with a byte-level BPE tokenizer trained
here on the built-in task data (8,192 tokens, so a sample is about as many
tokens as a real tokenizer makes of it). Every step runs in a fresh
process; wall, CPU and peak RSS come from os.wait4 (bench_merge.run_measured),
and the load average is read before and after each step.

1. score: LED's prepare step (SNIP, --n samples of the built-in safety and
   math data): the base on each expert's data and each expert on its own,
   4 x n backward passes, into a fresh score cache;
2. stability: SNIP on the base with the safety data, the top-r masks
   (r = 0.1, safety's default) after 4, 8, 16, ... samples compared with
   the masks after the last (the share of the final mask already chosen);
3. led: an LED re-merge from the cached scores (folder out), against
4. ta: a Task Arithmetic merge of the same family (folder out);
5. acm: ACM-TA, calibration (K-means over a pool of 4 x n_calibration
   built-in prompts, then base and experts on the chosen ones) + merge;
6. chat: tokens per second of greedy generation from the ACM merge.

    python bench/bench_arch.py                   # n 128: the issue's setting
    python bench/bench_arch.py --n 16 --stability 4,8,16,32,64
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import bench_merge as BM   # noqa: E402  (the family, run_measured, the CPU name)

WORK = os.path.join(BM.WORK, "arch")   # outputs and the score cache (git-ignored)
CACHE = os.path.join(WORK, "cache")
TASKS = ("safety", "math")


# ---------------------------------------------------------------- family
def tokenizer(folder: str) -> None:
    """A byte-level BPE trained on the built-in data, saved into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from core.zoo.data import calibration_pool, location_samples
    texts = [r["prompt"] + " " + r["response"] for t in ("safety", "math", "code")
             for r in location_samples(t, 2000, 1)] + calibration_pool(2000, 1)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8192, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    t.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                       "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    t.save_pretrained(folder)


def family(size: str) -> dict[str, str]:
    models = BM.make_models_in_child(size, "bfloat16")
    for path in models.values():
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            tokenizer(path)
    return models


def led_recipe(m: dict, n: int) -> dict:
    return {"merge_method": "led", "base_model": m["base"], "dtype": "bfloat16",
            "models": [{"model": m["expert_a"], "task": "safety"}, {"model": m["expert_b"], "task": "math"}],
            "parameters": {"n_samples": n}}


def acm_recipe(m: dict, n: int) -> dict:
    return {"merge_method": "acm", "base_model": m["base"], "dtype": "bfloat16",
            "models": [m["expert_a"], m["expert_b"]], "parameters": {"n_calibration": n, "clusters": max(2, n // 4)}}


# ------------------------------------------------------ steps (children)
def step(name: str, m: dict, args) -> dict:
    """One measured step, in this (child) process; returns what it saw."""
    import torch
    import core
    from core import service
    core.CACHE_DIR = CACHE
    out: dict = {}
    t0 = time.perf_counter()
    if name == "score":
        from core.methods import led
        from core.methods.led import scoring as S
        prep = led.prepare(service.plan(led_recipe(m, args.n)))
        out = {"backward_passes": S.STATS["backward"], "cached": prep.cached}
    elif name == "stability":
        out = stability(m, [int(x) for x in args.stability.split(",")])
    elif name in ("led", "ta"):
        rec = led_recipe(m, args.n) if name == "led" else BM.recipes(m, "bfloat16")["ta"]
        t1 = time.perf_counter()
        res = service.merge(rec, out_dir=os.path.join(WORK, f"out-{name}"), force=True)
        out = {"merge_s": round(time.perf_counter() - t1, 2)}   # the merge alone, imports not counted
        if name == "led":
            from core.methods.led import scoring as S
            out.update(backward_passes=S.STATS["backward"], cached=res.analysis.get("cached"))
    elif name == "acm":
        res = service.merge(acm_recipe(m, args.calibration), out_dir=os.path.join(WORK, "out-acm"), force=True)
        out = {"cached": res.analysis.get("cached"), "n_calibration": res.analysis.get("n_calibration")}
    elif name == "chat":
        from core import checkpoint as M
        folder = os.path.join(WORK, "out-acm")
        model, tok = M.load_model(folder), M.load_tokenizer(folder)
        ids = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad(), M.cpu_threads_for(model):
            model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)   # warm-up
            t1 = time.perf_counter()
            got = model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=0)
            dt_gen = time.perf_counter() - t1
        new = got.shape[1] - ids.shape[1]
        out = {"new_tokens": new, "generate_s": round(dt_gen, 2), "tokens_per_s": round(new / dt_gen, 2),
               "threads": torch.get_num_threads()}
    out["seconds_in_process"] = round(time.perf_counter() - t0, 2)
    return out


def stability(m: dict, ks: list[int]) -> dict:
    """Share of the final top-r mask already chosen after k samples.

    SNIP is a sum over samples, so the scores after k samples are the sum of
    snip over consecutive chunks: one backward pass per sample in all. Only
    the masks of each k are kept (one byte per weight)."""
    import torch
    from core import checkpoint as M
    from core.methods.led import RATIO_BY_TASK, importance as I, masks, scoring as S
    info = M.inspect(m["base"])
    model = M.load_model(info, dtype=torch.float32)
    rows = I.builtin_rows("safety", max(ks))
    samples = S.encode(M.load_tokenizer(info), rows, M.max_length(info, S.MAX_LENGTH))
    r = dict(RATIO_BY_TASK)["safety"]
    total: dict[str, torch.Tensor] = {}
    kept: dict[int, dict[str, torch.Tensor]] = {}
    start, t0, per_k = 0, time.perf_counter(), {}
    for k in sorted(ks):
        part = S.snip(model, samples[start:k])
        for name, t in part.items():
            if name in info.tensors:
                total[name] = total[name].add_(t) if name in total else t.clone()
        kept[k] = {n: masks.top_r(t, r) for n, t in total.items()}
        per_k[k] = round(time.perf_counter() - t0, 1)
        start = k
    final = kept[max(ks)]
    chosen = sum(int(v.sum()) for v in final.values())
    tokens = [int(s.answer.sum()) for s in samples]
    return {"r": r, "elapsed_s_at_k": per_k, "answer_tokens_mean": round(sum(tokens) / len(tokens), 1),
            "sample_tokens_mean": round(sum(len(s.ids) for s in samples) / len(samples), 1),
            "overlap_with_final": {k: round(sum(int((kept[k][n] & final[n]).sum()) for n in final) / chosen, 4)
                                   for k in sorted(ks)}}


# ------------------------------------------------------------------ main
def _load() -> str:
    """The 1, 5 and 15 minute load averages: the machine is shared."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--step":
        args = argparse.Namespace(**json.loads(sys.argv[3]))
        print("RESULT " + json.dumps(step(sys.argv[2], json.loads(sys.argv[4]), args)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(BM.SIZES), default="qwen05", help="small: a quick smoke run")
    ap.add_argument("--n", type=int, default=128, help="LED location samples per expert")
    ap.add_argument("--stability", default="4,8,16,32", help="sample counts whose masks are compared")
    ap.add_argument("--calibration", type=int, default=32, help="ACM's n_calibration (pool: 4x)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated for the chat measurement")
    ap.add_argument("--steps", default="score,stability,led,ta,acm,chat")
    ap.add_argument("--keep-cache", action="store_true", help="score with the cache of the last run")
    ap.add_argument("--json", default=os.path.join(WORK, "results-arch.json"))
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    models = family(args.size)
    if not args.keep_cache:
        shutil.rmtree(CACHE, ignore_errors=True)
    BM.warm(list(models.values()))
    from core import checkpoint as M
    fp32 = M.inspect(models["base"]).n_params * 4   # one model's float32 size, the memory yardstick
    rows = []
    for name in args.steps.split(","):
        before = _load()
        log = os.path.join(WORK, f"{name}.log")
        res = BM.run_measured([sys.executable, os.path.abspath(__file__), "--step", name,
                               json.dumps(vars(args)), json.dumps(models)], log)
        seen = [json.loads(x[7:]) for x in open(log) if x.startswith("RESULT ")]
        row = {"step": name, **res, "load_before": before, "load_after": _load(), **(seen[0] if seen else {}),
               "peak_rss_x_fp32_model": round(res["peak_rss_mib"] * 2**20 / fp32, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    by = {r["step"]: r for r in rows}
    if "led" in by and "ta" in by:
        print(f"LED re-merge / TA: {by['led']['merge_s'] / by['ta']['merge_s']:.2f}x (merge alone), "
              f"{by['led']['wall_s'] / by['ta']['wall_s']:.2f}x wall, {by['led']['cpu_s'] / by['ta']['cpu_s']:.2f}x CPU "
              "(whole process)")
    with open(args.json, "w") as f:
        json.dump({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": BM._cpu(),
                   "cores": os.cpu_count(), "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
