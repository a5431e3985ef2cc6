"""How far our TIES / Breadcrumbs merges of bf16 checkpoints are from mergekit 0.1.5's, and why (issue #26).

    python bench/bf16_parity.py            # ~1 min; writes the table on stdout

bf16 copies of the built-in family (base, safety, math) are merged by our engine and by mergekit's
run_merge with the same recipe. Counted over every tensor:

* "one side only": entries that one merge changed from the base and the other did not (a trim that
  kept an entry on one side and dropped it on the other);
* "differ": entries whose values differ at all.

Four comparisons separate the two causes:

  A  ours, ties broken earliest index first (before #26)   vs mergekit, dtype bfloat16
  B  ours, ties broken as mergekit's sort                   vs mergekit, dtype bfloat16
  C  ours (bf16 out)                                        vs mergekit, dtype float32, rounded to bf16
  D  mergekit, dtype float32, rounded to bf16               vs mergekit, dtype bfloat16

A − B is tie order. C is what is left when both compute in float32 (0 when only the order differed).
D is mergekit's arithmetic in bf16 (τ = θ − θ₀ rounded to bf16, the sums rounded at each step)
against float32 arithmetic rounded once, which is what we do: B ≈ D means what is left is arithmetic.
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

RECIPES = {
    "ties": ("ties", [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.7}], {}),
    "breadcrumbs": ("breadcrumbs", [{"weight": 1.0, "density": 0.8, "gamma": 0.05},
                                    {"weight": 1.0, "density": 0.7, "gamma": 0.02}], {}),
    "breadcrumbs_ties": ("breadcrumbs_ties", [{"weight": 1.0, "density": 0.8, "gamma": 0.05},
                                              {"weight": 1.0, "density": 0.7, "gamma": 0.02}], {}),
}


def bf16_copies(root: str) -> dict:
    from safetensors.torch import load_file, save_file
    import json
    import shutil
    from core import checkpoint as M
    out = {}
    for name in ("base", "safety", "math"):
        src = M.resolve(f"zoo:{name}")
        dst = os.path.join(root, name)
        shutil.copytree(src, dst)
        w = load_file(os.path.join(src, "model.safetensors"))
        save_file({k: v.bfloat16().contiguous() for k, v in w.items()}, os.path.join(dst, "model.safetensors"),
                  metadata={"format": "pt"})
        cfg = json.load(open(os.path.join(dst, "config.json")))
        cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
        json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
        out[name] = dst
    return out


def ours(paths, method, per, glob, dtype, old_ties: bool):
    from core.merge import engine
    from core.methods import _threshold as T
    from core.recipe import ModelEntry, Recipe
    recipe = Recipe(method, paths["base"], [ModelEntry(paths[e], dict(p)) for e, p in zip(("safety", "math"), per)],
                    dict(glob), dtype)
    real = T.TopK.of.__func__
    if old_ties:
        T.TopK.of = classmethod(lambda cls, x, k, **kw: real(cls, x, k, **{**kw, "order": None}))
    try:
        merged, _ = engine.merge_state_dict(recipe)
    finally:
        T.TopK.of = classmethod(real)
    return {k: v.to(torch.bfloat16) for k, v in merged.items()}


def mergekit(paths, method, per, glob, dtype, out):
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file
    from core.recipe import ModelEntry, Recipe, to_mergekit_yaml
    recipe = Recipe(method, paths["base"], [ModelEntry(paths[e], dict(p)) for e, p in zip(("safety", "math"), per)],
                    dict(glob), dtype)
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(to_mergekit_yaml(recipe))), out,
              MergeOptions(copy_tokenizer=False))
    return {k: v.to(torch.bfloat16) for k, v in load_file(os.path.join(out, "model.safetensors")).items()}


def compare(a: dict, b: dict, base: dict) -> tuple[float, float]:
    one_side = differ = n = 0
    for k in a:
        x, y, z = a[k].float(), b[k].float(), base[k].float()
        one_side += int(((x != z) ^ (y != z)).sum())
        differ += int((x != y).sum())
        n += x.numel()
    return 100.0 * one_side / n, 100.0 * differ / n


def main() -> None:
    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory() as root:
        paths = bf16_copies(root)
        base = load_file(os.path.join(paths["base"], "model.safetensors"))
        print("| merge | A: old tie order vs mergekit bf16 | B: mergekit's tie order vs mergekit bf16 | "
              "C: both float32 | D: mergekit bf16 vs its float32 |")
        print("|---|---|---|---|---|")
        for name, (method, per, glob) in RECIPES.items():
            mk16 = mergekit(paths, method, per, glob, "bfloat16", os.path.join(root, f"mk16-{name}"))
            mk32 = mergekit(paths, method, per, glob, "float32", os.path.join(root, f"mk32-{name}"))
            new = ours(paths, method, per, glob, "bfloat16", old_ties=False)
            old = ours(paths, method, per, glob, "bfloat16", old_ties=True)
            cells = [compare(old, mk16, base), compare(new, mk16, base), compare(new, mk32, base),
                     compare(mk32, mk16, base)]
            print(f"| {name} | " + " | ".join(f"{o:.2f}% one side, {d:.2f}% differ" for o, d in cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
