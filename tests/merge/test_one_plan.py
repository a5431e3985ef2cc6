"""One plan per merge, on the page's path: ``service.plan(recipe, live=True)`` (before the base is loaded),
then ``service.merge(plan, live_model=...)``. The Plan is built once and the recipe validated once, for
LED and for ACM, and the knob arrives resolved (LED's r, ACM's t); the live model then holds exactly the
weights a merge of the same recipe into a folder writes (docs/ARCHITECTURE.md, "How a knob reaches its
tensor")."""
from __future__ import annotations

import pytest
import torch

import core
from core import checkpoint, service
from core import recipe as R
from core.merge import plan as plans
from tests.archs import folder_tensors

# r off the slider's ends (0.3 on its grid of 0.01, 0.305 off it: both ways of electing), t off its default
LED = {"merge_method": "led", "base_model": "zoo:base",
       "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"mask_ratio": 0.3}},
                  {"model": "zoo:math", "task": "math", "parameters": {"mask_ratio": 0.305}}],
       "parameters": {"location": "snip", "n_samples": 4}}
ACM = {"merge_method": "acm", "base_model": "zoo:base",
       "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}],
       "parameters": {"temperature": 0.56, "n_calibration": 8, "clusters": 2}}


@pytest.fixture()
def counts(monkeypatch, tmp_path):
    """How often core.merge.plan.build and core.recipe.validate ran (the real ones, wrapped), with the
    score caches in a private folder."""
    from core.methods.acm import activations
    from core.methods.led import importance
    monkeypatch.setattr(core, "CACHE_DIR", str(tmp_path / "cache"))
    importance.clear_memory_cache()
    activations.clear_memory_cache()
    n = {"build": 0, "validate": 0}

    def wrap(owner, name):
        real = getattr(owner, name)

        def counting(*a, **k):
            n[name] += 1
            return real(*a, **k)
        monkeypatch.setattr(owner, name, counting)

    wrap(plans, "build")
    wrap(R, "validate")
    yield n
    importance.clear_memory_cache()
    activations.clear_memory_cache()


@pytest.mark.parametrize("recipe", [LED, ACM], ids=["led", "acm"])
def test_a_merge_from_the_page_builds_one_plan_and_gives_the_folder_merge(recipe, counts, tmp_path):
    plan = service.plan(recipe, live=True)
    assert counts == {"build": 1, "validate": 1}
    # the knob is resolved in the plan, once: what the method reads
    if recipe is LED:
        assert [mp["mask_ratio"] for mp in plan.model_params] == [0.3, 0.305]
    else:
        assert plan.global_params["temperature"] == 0.56
    model = checkpoint.load_model(plan.base, device="cpu")      # as the Merge tab loads its base: from the plan
    res = service.merge(plan, live_model=model)
    assert counts == {"build": 1, "validate": 1}, "the merge built or validated a second plan"
    if recipe is LED:
        assert list(res.analysis["mask_ratio"].values()) == [0.3, 0.305]
    else:
        assert res.analysis["temperature"] == 0.56

    # the counter sees a plan built inside service.merge: a recipe (not a plan) is planned there, once
    out = tmp_path / "m"
    service.merge(recipe, out_dir=str(out))
    assert counts == {"build": 2, "validate": 2}
    written, live = folder_tensors(out), model.state_dict()
    assert written and set(written) <= set(live)
    base = folder_tensors(checkpoint.zoo_path("base"))
    changed = [n for n in written if not torch.equal(written[n], base[n])]
    assert changed, "the merge changed nothing, so it would compare nothing"
    for name, t in written.items():
        assert torch.equal(live[name], t), name
