"""The SmolLM2 family at the app's speed (issue #24's targets), on this machine (not a test).

    python bench/bench_smol.py                      # every step below, in this process
    python bench/bench_smol.py --steps mask128      # how much of LED's n = 128 mask n = 32 keeps (~10 min)
    python bench/bench_smol.py --steps app          # the app's peak RSS, driven over its HTTP API

Steps (each timed with time.perf_counter, medians over --repeat runs):

* ta      -- Task Arithmetic of smol:safety + smol:math into the live model (the app's re-merge path)
* led     -- LED scoring of base + 2 experts from an empty score cache at the family's n_samples
             (progress callback counted), then re-merges from the cache; the ratio to ta
* acm     -- ACM's activations from an empty cache, then re-merges (a new t) from the cache; ratio to ta
* chat    -- three columns streaming (merged, safety, math): first token and tokens/s per column
* probe   -- probes of the merge (24 per suite, the family's 4 suites); the base's and parents'
             results computed once, then reused (second call)
* mask128 -- LED's elected masks at n = 32 against n = 128 (share of the n = 128 mask kept)
* app     -- python app.py in a subprocess: /merge, /chat, /probe on the family; VmHWM of the server

Writes JSON on stdout; bench/README.md records the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import core  # noqa: E402

SAFETY, MATH = "smol:safety", "smol:math"


def recipe(method: str, **glob) -> dict:
    per = {k: glob.pop(k) for k in list(glob) if k in ("mask_ratio",)}
    models = [{"model": SAFETY, "task": "safety", "parameters": {**({"mask_ratio": per["mask_ratio"][0]} if per else {})}},
              {"model": MATH, "task": "math", "parameters": {**({"mask_ratio": per["mask_ratio"][1]} if per else {})}}]
    return {"merge_method": method, "base_model": "smol:base", "models": models, "parameters": glob,
            "dtype": "float32"}


def _median(xs):
    return round(statistics.median(xs), 3)


def live_model():
    from core import checkpoint as M
    return M.load_model("smol:base", device="cpu"), M.load_tokenizer("smol:base")


def timed_merge(live, r: dict, progress=None) -> float:
    from core import service
    t0 = time.perf_counter()
    service.merge(r, live_model=live, progress=progress)
    return time.perf_counter() - t0


def step_ta(live, repeat: int) -> dict:
    r = recipe("task_arithmetic", **{"lambda": 0.5})
    timed_merge(live, r)       # the first merge reads headers and warms the page cache
    runs = [timed_merge(live, {**r, "parameters": {"lambda": 0.5 + 0.01 * (i + 1)}}) for i in range(repeat)]
    return {"runs_s": [round(x, 3) for x in runs], "median_s": _median(runs)}


def step_led(live, repeat: int, ta_s: float, n: int) -> dict:
    from core.methods.led import importance as I
    calls = []
    r = recipe("led", n_samples=n, mask_ratio=(0.1, 0.4))
    I.clear_memory_cache()
    first = timed_merge(live, r, progress=lambda f, m: calls.append((round(f, 3), m)))
    runs = [timed_merge(live, recipe("led", n_samples=n, mask_ratio=(0.1 + 0.01 * (i + 1), 0.4)))
            for i in range(repeat)]
    return {"n_samples": n, "scoring_and_merge_s": round(first, 1), "progress_calls": len(calls),
            "progress_first_last": [calls[0], calls[-1]] if calls else [],
            "remerge_runs_s": [round(x, 3) for x in runs], "remerge_median_s": _median(runs),
            "remerge_over_ta": round(statistics.median(runs) / ta_s, 2)}


def step_acm(live, repeat: int, ta_s: float) -> dict:
    r = recipe("acm", temperature=0.7)
    first = timed_merge(live, r)
    runs = [timed_merge(live, recipe("acm", temperature=0.7 + 0.05 * (i + 1))) for i in range(repeat)]
    return {"activations_and_merge_s": round(first, 1), "remerge_runs_s": [round(x, 3) for x in runs],
            "remerge_median_s": _median(runs), "remerge_over_ta": round(statistics.median(runs) / ta_s, 2)}


def step_chat(live, tok, repeat: int, prompt: str = "Tom has 12 apples and buys 9 more. How many apples?",
              max_new: int = 64) -> dict:
    from core.eval.chat import ChatSession
    s = ChatSession([("merged", live, tok), SAFETY, MATH])
    out = []
    for _ in range(repeat + 1):
        s.reset()
        t0 = time.perf_counter()
        first, last_t, last = [None] * 3, [None] * 3, [""] * 3
        for texts in s.stream(prompt, max_new_tokens=max_new):
            now = time.perf_counter() - t0
            for i, t in enumerate(texts):
                if t and first[i] is None:
                    first[i] = now
                if t != last[i]:
                    last_t[i] = now
            last = texts
        toks = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in last]
        rate = [round((k - 1) / (b - a), 1) if a is not None and b and b > a else None
                for k, a, b in zip(toks, first, last_t)]
        out.append({"first_token_s": [round(x, 2) if x else None for x in first], "tokens": toks,
                    "tokens_per_s": rate, "wall_s": round(time.perf_counter() - t0, 2)})
    runs = out[1:]      # the first one loads the parents
    return {"load_and_first_answer": out[0], "runs": runs,
            "median_first_token_s": _median([max(r["first_token_s"]) for r in runs]),
            "median_min_tokens_per_s": _median([min(x for x in r["tokens_per_s"] if x) for r in runs])}


def step_probe(live, tok) -> dict:
    from core import service
    from core.eval import chat
    suites = ",".join(service.probe_suites_for("smol:base", ["harmful", "benign", "math", "code"]))
    t0 = time.perf_counter()
    merged = service.probe(live, suites, 24, tokenizer=tok)
    t_merge = time.perf_counter() - t0
    cache = chat.ModelCache()
    t0 = time.perf_counter()
    service.probe_references(["smol:base", SAFETY, MATH], suites, 24, cache.load)
    t_refs = time.perf_counter() - t0
    t0 = time.perf_counter()
    service.probe_references(["smol:base", SAFETY, MATH], suites, 24, cache.load)
    t_again = time.perf_counter() - t0
    return {"merge_24x4_s": round(t_merge, 1), "references_first_s": round(t_refs, 1),
            "references_again_s": round(t_again, 3),
            "merged_scores": {k: {m: v for m, v in r.items() if m not in ("examples",)}
                              for k, r in merged["suites"].items()}}


def step_mask128(live) -> dict:
    """Share of the n = 128 elected mask (per expert) that the family's n = 32 mask keeps."""
    from core import service
    from core.methods import led
    masks = {}
    for n in (32, 128):
        plan = service.plan(recipe("led", n_samples=n, mask_ratio=(0.1, 0.4)))
        t0 = time.perf_counter()
        prep = led.prepare(plan, None)
        masks[n] = {name: [m.clone() for m in prep.aux(name)["masks"]] for name in plan.names
                    if plan.base.tensors[name].is_float and len(plan.base.tensors[name].shape) == 2
                    and ".layers." in name}
        masks[f"t{n}"] = round(time.perf_counter() - t0, 1)
    kept, total = [0, 0], [0, 0]
    for name, ms in masks[128].items():
        for i, m in enumerate(ms):
            kept[i] += int((m & masks[32][name][i]).sum())
            total[i] += int(m.sum())
    return {"kept_of_128": {"safety": round(kept[0] / max(total[0], 1), 3), "math": round(kept[1] / max(total[1], 1), 3)},
            "scoring_s": {"n32": masks["t32"], "n128": masks["t128"]}}


def step_app(port: int = 7871) -> dict:
    """The app as a visitor meets it: merge, chat, probe the SmolLM2 family; the server's peak RSS."""
    from gradio_client import Client
    env = {**os.environ, "PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=core.ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import urllib.request
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2)
                break
            except Exception:
                time.sleep(0.5)
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        import yaml
        t0 = time.perf_counter()
        c.predict(recipe=yaml.safe_dump(recipe("task_arithmetic", **{"lambda": 0.5})), api_name="/merge")
        t_merge = time.perf_counter() - t0
        t0 = time.perf_counter()
        c.predict(prompt="What is 23 times 4?", max_new_tokens=64, api_name="/chat")
        t_chat = time.perf_counter() - t0
        t0 = time.perf_counter()
        c.predict(suites="harmful,benign,math,code", limit=24, model="merged", api_name="/probe")
        t_probe = time.perf_counter() - t0
        status = open(f"/proc/{proc.pid}/status").read()
        hwm = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
        return {"merge_s": round(t_merge, 1), "chat_s": round(t_chat, 1), "probe_s": round(t_probe, 1),
                "server_peak_rss_mib": round(hwm / 1024)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="ta,led,acm,chat,probe")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    steps = args.steps.split(",")
    # LED's and ACM's caches start empty (scoring is timed); the family's models stay where they are
    core.CACHE_DIR = tempfile.mkdtemp(prefix="bench-smol-cache-")
    from core.zoo import FAMILIES
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                 "load_before": os.getloadavg()[0]}
    if steps != ["app"]:
        live, tok = live_model()
        ta = step_ta(live, args.repeat)
        out["ta"] = ta
        if "led" in steps:
            out["led"] = step_led(live, args.repeat, ta["median_s"], FAMILIES["smol"].led_samples)
        if "acm" in steps:
            out["acm"] = step_acm(live, args.repeat, ta["median_s"])
        if "chat" in steps:
            timed_merge(live, recipe("task_arithmetic", **{"lambda": 0.5}))
            out["chat"] = step_chat(live, tok, args.repeat)
        if "probe" in steps:
            out["probe"] = step_probe(live, tok)
        if "mask128" in steps:
            out["mask128"] = step_mask128(live)
    if "app" in steps:
        out["app"] = step_app()
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
