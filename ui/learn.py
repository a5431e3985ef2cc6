"""The classroom walkthrough: each step is one click and two sentences.

The steps only name what to do; ui/app.py wires each to the handlers the
other tabs use, so the walkthrough always shows the real thing.
"""
from __future__ import annotations

INTRO = (
    "A five-minute tour for a classroom. Each button does one step on the family chosen on the Models tab: "
    "the tiny family (a base model and three experts fine-tuned from it, seconds per step) or the "
    "SmolLM2-135M family (a real pretrained model and two LoRA experts; LED's scoring takes a minute or two), "
    "and opens the tab where it happens; come back here for the next step."
)

# (key, button label, two sentences). No scores here: the built-in family is
# retrained from time to time, so the tour lets the probes say the numbers.
STEPS = [
    ("ta", "1 · Merge safety + math with Task Arithmetic",
     "Task Arithmetic adds each expert's change to the base: θ = θ₀ + λ·Σ τᵢ. "
     "It is the simplest merge and it often works, so it is the baseline to beat."),
    ("ask_harmful", "2 · Ask a harmful question side by side",
     "The safety expert refuses and the math expert complies. The plain sum keeps most of the math expert's skill "
     "but refuses far fewer held-out harmful requests than the safety expert: the math expert's over-compliance wins."),
    ("overlap", "3 · Open the overlap heatmap",
     "Each cell shows how many of the weights that matter most for safety also matter most for math (Jaccard index). "
     "Where the sets overlap, adding both task vectors makes them fight over the same weights."),
    ("led", "4 · Merge with LED-Merging",
     "LED-Merging keeps, for each expert, only the weights important in both the base and the expert (r is the "
     "fraction kept: small for safety), and drops weights two experts both claim. "
     "The Merge tab shows its sliders; move an expert's r or its weight λᵢ and the merge follows on release, and the "
     "probes say whether "
     "it kept both skills on this family (on the tiny family it does not: a larger safety r brings refusals back "
     "only by losing the math; the paper measured 7B models)."),
    ("compare", "5 · Compare Task Arithmetic and LED on the board",
     "The compare board probes both merges, the base and the parents on held-out prompts and puts them on one "
     "safety-vs-utility picture. The merge you want sits high (safe) and to the right (useful)."),
]

# the recipes the steps merge, on a family (its prefix: zoo, smol); the LED one
# follows the paper's defaults (small r for safety, larger for the utility expert, λ = 1)
def ta_recipe(prefix: str = "zoo") -> dict:
    return {"merge_method": "task_arithmetic", "base_model": f"{prefix}:base",
            "models": [{"model": f"{prefix}:safety", "task": "safety", "parameters": {"weight": 1.0}},
                       {"model": f"{prefix}:math", "task": "math", "parameters": {"weight": 1.0}}],
            "parameters": {"lambda": 1.0}, "dtype": "float32"}


def led_recipe(spec, prefix: str = "zoo", n_samples: int | None = None) -> dict:
    """LED on safety + math with the method's own defaults: r is the
    registry's per-task default (the paper's reference for each task), so
    the controls show it and the merge uses it; ``n_samples`` is the
    family's Location sample count when it has one."""
    models = [{"model": f"{prefix}:safety", "task": "safety", "parameters": {}},
              {"model": f"{prefix}:math", "task": "math", "parameters": {}}]
    return {"merge_method": spec.name, "base_model": f"{prefix}:base", "models": models,
            "parameters": {"n_samples": n_samples} if n_samples else {}, "dtype": "float32"}
