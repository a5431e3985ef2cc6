"""Side-by-side chat: both streaming modes on the built-in family (not a test).

For each mode ("turns": one model after the other; "parallel": one thread
per model), twice, alternating: the wall time, when each column showed its
first token, how many updates the stream yielded. bench/README.md records
what this measured when "parallel" became the default.

    python bench/bench_chat.py
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure_modes(refs=("zoo:safety", "zoo:math", "zoo:code"), prompt: str = "What is 12 + 7?",
                  max_new_tokens: int = 64) -> dict:
    from core.eval.chat import ChatSession
    s = ChatSession(list(refs))
    out = {}
    for mode in ("turns", "parallel", "turns", "parallel"):
        s.reset()
        t0 = time.perf_counter()
        first = [None] * len(refs)
        updates = 0
        last = [""] * len(refs)
        for texts in s.stream(prompt, max_new_tokens=max_new_tokens, mode=mode):
            updates += 1
            for i, t in enumerate(texts):
                if t and first[i] is None:
                    first[i] = time.perf_counter() - t0
            last = texts
        out[mode] = {"seconds": time.perf_counter() - t0, "first_token_s": first, "updates": updates,
                     "chars": [len(t) for t in last]}
    return out


if __name__ == "__main__":
    print(json.dumps(measure_modes(), indent=2))
