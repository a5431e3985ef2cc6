"""LED-Merging on the built-in family: scoring once, then re-merges from cached scores.

Not a test. In one process, with a fresh score cache in a temp folder:

1. cold: LED's prepare step on base + safety + math + code (SNIP, n_samples
   backward passes on the base for each expert's data and on each expert:
   6 x n in all), counted and timed; the same for Wanda (forward only);
2. disk hit: the memory cache cleared, prepare again (reads the cache files);
3. re-merge: the UI's loop -- the safety expert's r moved through several
   values, each a full ``engine.run_merge`` into a loaded model (memory hit,
   no backward pass), timed; Task Arithmetic's re-merge of the same models
   is the reference measured in the same run. Both with the small model on
   one torch thread (``checkpoint.cpu_threads_for``, as reproduce and the chat
   use) and with torch's default threads;
4. ``service.led_analysis`` from the cache.

    python bench/bench_led.py                 # n_samples 128 (the default)
    python bench/bench_led.py --n 32 --repeat 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def family(n: int, location: str = "snip", **glob) -> dict:
    return {"merge_method": "led", "base_model": "zoo:base",
            "models": [{"model": "zoo:safety"}, {"model": "zoo:math"}, {"model": "zoo:code"}],
            "parameters": {"n_samples": n, "location": location, **glob}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="location samples per expert")
    ap.add_argument("--repeat", type=int, default=5, help="re-merges per r value sweep (median reported)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()

    import torch
    import core
    from core import checkpoint as M, recipe as R, service
    from core.methods.led import importance as I
    from core.methods.led import scoring as S
    from core.merge import engine
    from core.merge.plan import build
    from core.methods import led
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()

    core.CACHE_DIR = tempfile.mkdtemp(prefix="bench-led-cache-")
    I.clear_memory_cache()
    out: dict = {"date": dt.datetime.now().isoformat(timespec="minutes"), "machine": platform.platform(),
                 "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "load_avg": os.getloadavg(), "n_samples": args.n, "command": "python bench/bench_led.py " +
                 " ".join(sys.argv[1:])}

    # 1. cold scoring
    for loc in ("snip", "wanda"):
        b0, f0 = S.STATS["backward"], S.STATS["forward"]
        t = time.perf_counter()
        prep = led.prepare(build(R.from_dict(family(args.n, loc))))
        out[f"cold_{loc}_s"] = time.perf_counter() - t
        out[f"cold_{loc}_backward"] = S.STATS["backward"] - b0
        out[f"cold_{loc}_forward"] = S.STATS["forward"] - f0
        assert not prep.cached
    # 2. from disk
    I.clear_memory_cache()
    b0 = S.STATS["backward"]
    t = time.perf_counter()
    prep = led.prepare(build(R.from_dict(family(args.n))))
    out["disk_hit_s"] = time.perf_counter() - t
    assert prep.cached and S.STATS["backward"] == b0

    # 3. re-merge loop into a loaded model
    live = M.load_model("zoo:base", device="cpu")
    ratios = [0.05, 0.1, 0.15, 0.2, 0.3]

    def sweep(method: str, one_thread: bool) -> list[float]:
        times = []
        for _ in range(args.repeat):
            for r in ratios:
                d = family(args.n)
                if method == "led":
                    d["models"][0]["parameters"] = {"mask_ratio": r}
                else:
                    d = {"merge_method": "task_arithmetic", "base_model": "zoo:base", "models": d["models"],
                         "parameters": {"lambda": r * 3}}
                rec = R.from_dict(d)
                t = time.perf_counter()
                if one_thread:
                    with M.cpu_threads_for(live):
                        engine.run_merge(rec, live_model=live)
                else:
                    engine.run_merge(rec, live_model=live)
                times.append(time.perf_counter() - t)
        return times

    b0 = S.STATS["backward"]
    for method in ("led", "task_arithmetic"):
        sweep(method, True)   # warm: readers opened, inputs cached
        for one in (True, False):
            ts = sweep(method, one)
            tag = f"remerge_{method}_{'1thread' if one else 'default_threads'}"
            out[tag + "_median_s"] = statistics.median(ts)
            out[tag + "_max_s"] = max(ts)
    out["remerge_backward"] = S.STATS["backward"] - b0

    # 4. analysis from the cache
    ts = []
    for r in ratios:
        d = family(args.n)
        d["models"][0]["parameters"] = {"mask_ratio": r}
        t = time.perf_counter()
        service.led_analysis(d)
        ts.append(time.perf_counter() - t)
    out["analysis_median_s"] = statistics.median(ts)
    out["load_avg_end"] = os.getloadavg()

    for k, v in out.items():
        print(f"{k:45s} {v:.3f}" if isinstance(v, float) else f"{k:45s} {v}")
    led_t = out["remerge_led_1thread_median_s"]
    ta_t = out["remerge_task_arithmetic_1thread_median_s"]
    print(f"\nLED re-merge / TA re-merge (one thread): {led_t / ta_t:.2f}x; goal < 0.5 s: "
          f"{'met' if out['remerge_led_1thread_max_s'] < 0.5 else 'NOT met'} (max {out['remerge_led_1thread_max_s']:.3f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
