"""Wall time and peak memory of our merge against mergekit, same recipe, same run.

Not a test. Generates three random checkpoints shaped like a 0.5B Llama
(Qwen2-0.5B dims: hidden 896, intermediate 4864, 24 layers, 14 heads / 2 KV
heads, vocab 151936, tied embeddings) into bench/_work/ (git-ignored), then
runs every merge in a fresh subprocess and reads its peak RSS from
os.wait4's rusage. Runs are interleaved (mergekit, ours, mergekit, ours...)
and the page cache is warmed first, so neither tool pays for cold disk.

    python bench/bench_merge.py                      # full size, TA and TIES
    python bench/bench_merge.py --size small         # a quick smoke run
    python bench/bench_merge.py --mergekit /tmp/mkvenv/bin/mergekit-yaml

mergekit is run from its own virtual environment so the main one stays
untouched; without it the script reports our absolute numbers only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "_work")
sys.path.insert(0, ROOT)

SIZES = {
    # Qwen2-0.5B's shapes in Llama naming (mergekit knows Llama)
    "qwen05": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                   num_key_value_heads=2, vocab_size=151936),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8000),
}


def llama_config(dims: dict, dtype: str) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "dtype": dtype,
            "head_dim": dims["hidden_size"] // dims["num_attention_heads"], **dims}


def tensor_shapes(dims: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    kv = dims["num_key_value_heads"] * (h // dims["num_attention_heads"])
    out = [("model.embed_tokens.weight", (v, h))]
    for n in range(dims["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,))]


def make_models(size: str, dtype: str) -> dict[str, str]:
    """base + two 'fine-tunes' (base + small noise), streamed to disk tensor by tensor."""
    from core.checkpoint.writer import _ST_NAMES, ShardWriter
    tdtype = getattr(torch, dtype)
    dims = SIZES[size]
    folder = os.path.join(WORK, f"models-{size}-{dtype}")
    names = {"base": os.path.join(folder, "base"), "expert_a": os.path.join(folder, "expert_a"),
             "expert_b": os.path.join(folder, "expert_b")}
    stamp = os.path.join(folder, "done.json")
    if os.path.isfile(stamp):
        return names
    shutil.rmtree(folder, ignore_errors=True)
    shapes = tensor_shapes(dims)
    layout = [(n, _ST_NAMES[tdtype], s) for n, s in shapes]
    writers = {}
    for k, path in names.items():
        os.makedirs(path)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(llama_config(dims, dtype), f, indent=2)
        writers[k] = ShardWriter(path, layout, 2 * 1024**3)
    g = torch.Generator().manual_seed(0)
    for n, s in shapes:
        base = torch.randn(s, generator=g) * 0.02 + (1.0 if n.endswith("norm.weight") else 0.0)
        writers["base"].add(n, base.to(tdtype))
        for j, k in enumerate(("expert_a", "expert_b")):
            d = torch.randn(s, generator=g) * 0.002
            writers[k].add(n, (base + d).to(tdtype))
    for w in writers.values():
        w.finish()
    with open(stamp, "w") as f:
        json.dump({"size": size, "dtype": dtype, "params": sum(_numel(s) for _, s in shapes)}, f)
    return names


def _numel(s) -> int:
    n = 1
    for x in s:
        n *= x
    return n


def recipes(models: dict[str, str], dtype: str) -> dict[str, dict]:
    """Same merges for both tools, written once as our recipe."""
    base = {"base_model": models["base"], "dtype": dtype}
    return {
        "ta": {"merge_method": "task_arithmetic", **base,
               "models": [{"model": models["expert_a"], "parameters": {"weight": 0.7}},
                          {"model": models["expert_b"], "parameters": {"weight": 0.3}}],
               "parameters": {"lambda": 1.0}},
        "ties": {"merge_method": "ties", **base,
                 "models": [{"model": models["expert_a"], "parameters": {"weight": 0.7, "density": 0.5}},
                            {"model": models["expert_b"], "parameters": {"weight": 0.3, "density": 0.5}}],
                 "parameters": {"normalize": True}},
    }


def mergekit_yaml(rec: dict) -> str:
    """Through our exporter when the method is ours too; by hand otherwise."""
    import yaml
    from core import recipe as R
    from core.errors import UserError
    try:
        return R.to_mergekit_yaml(R.from_dict(rec))
    except UserError:
        return yaml.safe_dump(rec, sort_keys=False)


def run_measured(cmd: list[str], log: str) -> dict:
    """Run in a fresh process; wall time and that process tree's peak RSS."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    # ru_maxrss is KiB on Linux; it covers the process (children counted by
    # the caller's RUSAGE_CHILDREN would mix runs, so wait4 is used)
    # CPU time (user + system) is reported too: the machine is shared, and
    # other people's work stretches wall time far more than CPU time
    return {"rc": rc, "wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}


def warm(paths: list[str]) -> None:
    for root in paths:
        for f in os.listdir(root):
            if f.endswith(".safetensors"):
                with open(os.path.join(root, f), "rb") as fh:
                    while fh.read(64 << 20):
                        pass


def compare(a: str, b: str) -> dict:
    """Largest difference between two outputs, tensor by tensor."""
    from core import checkpoint as M
    ia, ib = M.inspect(a), M.inspect(b)
    worst, differ, total = 0.0, 0, 0
    with M.Reader(ia) as ra, M.Reader(ib) as rb:
        for n in sorted(ia.tensors):
            if n not in ib.tensors:
                return {"error": f"{n} missing from mergekit's output"}
            # mergekit computes in the recipe dtype, we in float32 rounded
            # once: in bf16 a few units in the last place apart is expected
            diff = (ra.get(n, torch.float32) - rb.get(n, torch.float32)).abs()
            worst = max(worst, float(diff.max()))
            differ += int((diff > 0).sum())
            total += diff.numel()
    return {"max_abs_diff": worst, "n_differing": differ, "n_total": total}


def compare_in_child(a: str, b: str) -> dict:
    """compare() in its own process, so this one stays small.

    Why: Linux carries a process's peak RSS from before exec into the
    child's ru_maxrss (the child starts as a copy of this process), so once
    this process had mapped a 1 GB output, every later run "peaked" at
    least that high -- it made our TIES merge read 2.4 GB instead of 1.0 GB.
    """
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--compare", a, b],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "compare failed"}
    return json.loads(out.stdout)


def make_models_in_child(size: str, dtype: str) -> dict[str, str]:
    """make_models in its own process, for the reason compare_in_child gives:
    generating 3 GB of tensors here would raise this process's peak RSS, and
    every run started after it would report at least that peak (a first run
    on a fresh machine read 2.3 GB for every tool, start-up included)."""
    subprocess.run([sys.executable, os.path.abspath(__file__), "--make", size, dtype], check=True, cwd=ROOT)
    return make_models(size, dtype)   # the stamp exists now: only the paths


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        print(json.dumps(compare(sys.argv[2], sys.argv[3])))
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "--make":
        make_models(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="qwen05")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--methods", default="ta,ties")
    ap.add_argument("--mergekit", default="/tmp/mkvenv/bin/mergekit-yaml",
                    help="mergekit-yaml of a separate venv; empty to skip mergekit")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    os.makedirs(WORK, exist_ok=True)
    t0 = time.perf_counter()
    models = make_models_in_child(args.size, args.dtype)
    gen_s = time.perf_counter() - t0
    from core.methods import REGISTRY
    mk = args.mergekit if args.mergekit and os.path.isfile(args.mergekit) else None
    all_recipes = recipes(models, args.dtype)
    warm(list(models.values()))
    rows = []
    # start-up alone (imports), so the merge work can be told from it
    rows.append({"method": "-", "tool": "ours start-up", **run_measured(
        [sys.executable, "-c", "import core.service, core.merge.engine, core.methods"], os.path.join(WORK, "startup-ours.log"))})
    if mk:
        rows.append({"method": "-", "tool": "mergekit start-up", **run_measured(
            [mk, "--help"], os.path.join(WORK, "startup-mergekit.log"))})
    for r in rows:
        print(r, flush=True)
    for method in args.methods.split(","):
        rec = all_recipes[method]
        rdir = os.path.join(WORK, f"run-{args.size}-{method}")
        shutil.rmtree(rdir, ignore_errors=True)
        os.makedirs(rdir)
        ours_yaml = os.path.join(rdir, "ours.yaml")
        mk_yaml = os.path.join(rdir, "mergekit.yaml")
        import yaml
        with open(ours_yaml, "w") as f:
            yaml.safe_dump(rec, f, sort_keys=False)
        with open(mk_yaml, "w") as f:
            f.write(mergekit_yaml(rec))
        have_ours = rec["merge_method"] in REGISTRY
        for r in range(args.repeat):
            if mk:
                out = os.path.join(rdir, "out-mergekit")
                shutil.rmtree(out, ignore_errors=True)
                res = run_measured([mk, mk_yaml, out, "--no-copy-tokenizer", "--quiet", "--out-shard-size", "5B"],
                                   os.path.join(rdir, f"mergekit-{r}.log"))
                rows.append({"method": method, "tool": "mergekit", "run": r, **res})
                print(rows[-1], flush=True)
            if have_ours:
                out = os.path.join(rdir, "out-ours")
                res = run_measured([sys.executable, "-m", "core", "merge", ours_yaml, "--out", out, "--force"],
                                   os.path.join(rdir, f"ours-{r}.log"))
                log = open(os.path.join(rdir, f"ours-{r}.log")).read()
                m = re.search(r"in ([\d.]+) s\.", log)
                res["engine_s"] = float(m.group(1)) if m else None
                rows.append({"method": method, "tool": "ours", "run": r, **res})
                print(rows[-1], flush=True)
        if mk and have_ours and all(x["rc"] == 0 for x in rows if x["method"] == method):
            diff = compare_in_child(os.path.join(rdir, "out-ours"), os.path.join(rdir, "out-mergekit"))
            rows.append({"method": method, "tool": "ours vs mergekit", **diff})
            print(rows[-1], flush=True)
    summary = summarize(rows)
    for line in summary:
        print(line)
    info = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "size": args.size, "dtype": args.dtype,
            "params": json.load(open(os.path.join(os.path.dirname(models["base"]), "done.json")))["params"],
            "generate_s": round(gen_s, 1), "mergekit": _mk_version(mk), "command": " ".join(sys.argv),
            "load_avg_at_end": os.getloadavg()}
    with open(os.path.join(WORK, f"results-{args.size}.json"), "w") as f:
        json.dump({"info": info, "rows": rows, "summary": summary}, f, indent=2)
    print(json.dumps(info, indent=2))
    return 0


def summarize(rows: list[dict]) -> list[str]:
    """Median wall time, CPU time and peak RSS per method and tool, and the
    mergekit / ours ratios. Medians, because on a shared machine one run in
    three is often stretched by someone else's job."""
    import statistics
    out = []
    by: dict = {}
    for r in rows:
        if r.get("run") is not None and r.get("rc") == 0:
            by.setdefault((r["method"], r["tool"]), []).append(r)
    for (method, tool), rs in by.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "cpu_s", "peak_rss_mib")}
        by[(method, tool)] = med
        out.append(f"{method} {tool}: median of {len(rs)} runs: wall {med['wall_s']:.1f} s, "
                   f"CPU {med['cpu_s']:.1f} s, peak RSS {med['peak_rss_mib']:.0f} MiB")
    for method in dict.fromkeys(m for m, _ in by):
        mk, ours = by.get((method, "mergekit")), by.get((method, "ours"))
        if mk and ours:
            out.append(f"{method}: ours is {mk['wall_s'] / ours['wall_s']:.1f}x faster (wall), "
                       f"{mk['cpu_s'] / ours['cpu_s']:.1f}x less CPU, "
                       f"{mk['peak_rss_mib'] / ours['peak_rss_mib']:.1f}x less peak RSS than mergekit")
    return out


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mk_version(mk: str | None) -> str | None:
    if not mk:
        return None
    py = os.path.join(os.path.dirname(mk), "python")
    try:
        return subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                              capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
