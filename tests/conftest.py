"""Fixtures shared by the test packages."""
from __future__ import annotations

import os

import pytest

import core


class PlanCounts(dict):
    """How often one merge validated its recipe, read each header, checked
    compatibility and ran its method's prepare step."""

    def assert_once(self, refs: list[str]) -> None:
        from core.checkpoint import zoo_path
        assert self["validate"] == 1, self
        assert self["compat"] == 1, self
        assert self["prepare"] == 1, self
        files = [os.path.join(zoo_path(r[4:]) if r.startswith("zoo:") else r, "model.safetensors") for r in refs]
        assert sorted(self["headers"]) == sorted(files), self


@pytest.fixture()
def plan_counts(monkeypatch, tmp_path):
    """Counts (PlanCounts) of what a merge reads and checks, with LED's
    score cache in a private folder."""
    from core import checkpoint
    from core import recipe as R
    from core.checkpoint import headers
    from core.methods import REGISTRY
    from core.methods.led import importance as I
    monkeypatch.setattr(core, "CACHE_DIR", str(tmp_path / "cache"))
    I.clear_memory_cache()
    counts = PlanCounts(validate=0, compat=0, prepare=0, headers=[])

    def wrap(owner, name, key):
        real = getattr(owner, name)

        def counting(*a, **k):
            if key == "headers":
                counts[key].append(a[0])
            else:
                counts[key] += 1
            return real(*a, **k)
        monkeypatch.setattr(owner, name, counting)

    wrap(R, "validate", "validate")
    wrap(headers, "read_safetensors_header", "headers")
    wrap(checkpoint, "compatibility", "compat")
    for spec in REGISTRY.values():
        if spec.prepare is not None:
            wrap(spec, "prepare", "prepare")
    yield counts
    I.clear_memory_cache()
