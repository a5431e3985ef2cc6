"""One merge, one plan: the recipe is validated once, every model's headers
are read once, compatibility is checked once, and the method's prepare step
gets that plan (it never plans again)."""
from __future__ import annotations

from core import checkpoint, service

LED = {"merge_method": "led", "base_model": "zoo:base",
       "models": [{"model": "zoo:safety"}, {"model": "zoo:math"}, {"model": "zoo:code"}],
       "parameters": {"location": "magnitude"}}
REFS = ["zoo:base", "zoo:safety", "zoo:math", "zoo:code"]


def test_an_led_merge_to_a_folder_plans_once(plan_counts, tmp_path):
    res = service.merge(LED, out_dir=str(tmp_path / "m"))
    assert res.n_tensors > 0
    plan_counts.assert_once(REFS)


def test_the_plan_handed_to_merge_is_not_built_again(plan_counts):
    live = checkpoint.load_model("zoo:base", device="cpu")
    plan_counts["headers"].clear()          # loading the live model is not part of the merge
    plan = service.plan(LED)
    service.merge(plan, live_model=live)
    plan_counts.assert_once(REFS)


def test_scoring_loads_the_planned_models_without_reading_headers_again(plan_counts):
    """SNIP loads every model for its backward passes: from the plan's ModelInfo."""
    d = {**LED, "models": LED["models"][:1], "parameters": {"location": "snip", "n_samples": 2}}
    service.merge(d, live_model=checkpoint.load_model("zoo:base", device="cpu"))
    assert plan_counts["headers"].count(checkpoint.zoo_path("base") + "/model.safetensors") == 2  # live model + plan
    assert plan_counts["headers"].count(checkpoint.zoo_path("safety") + "/model.safetensors") == 1
