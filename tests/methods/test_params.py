"""What a control is lives in its Param alone: the UI's labels and visibility read the registry."""
from __future__ import annotations

import pytest

from core import methods as registry
from core.methods.base import MethodSpec, Param

C = pytest.importorskip("ui.controls")

# The labels people read (browser tests find the controls by them): one per named parameter.
LABELS = {"lambda": "λ (scale)", "mask_ratio": "r (mask ratio)", "temperature": "t (temperature)",
          "gamma": "γ (outliers)", "alpha": "α (scale)", "t": "t (interpolation)", "beta": "β (floor)",
          "weight": "weight", "density": "density", "location_data": "location data (file)",
          "calibration": "calibration data (file)", "common_space_fraction": "common space fraction"}


def _all_params():
    return [(name, p) for name, spec in registry.REGISTRY.items() for p in spec.params]


def test_every_symbol_is_on_its_control():
    with_symbol = {(name, p.name): p.symbol for name, p in _all_params() if p.symbol}
    lam = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
           "subspace_boosting")
    assert with_symbol == {**{(m, "lambda"): "λ" for m in lam},
                           ("breadcrumbs", "gamma"): "γ", ("breadcrumbs_ties", "gamma"): "γ", ("slerp", "t"): "t",
                           ("tsv", "alpha"): "α", ("iso_c", "alpha"): "α", ("iso_cts", "alpha"): "α",
                           ("subspace_boosting", "beta"): "β", ("led", "mask_ratio"): "r",
                           ("acm", "temperature"): "t"}
    for name, p in _all_params():
        label = C.pretty(p)
        if p.symbol:
            assert label.startswith(f"{p.symbol} (") and label.endswith(")"), (name, label)
        assert label == LABELS.get(p.name, p.name.replace("_", " ")), (name, p.name, label)


def test_a_new_symbol_needs_no_ui_change(monkeypatch):
    spec = MethodSpec("toy_sym", "Toy", lambda *a: None,
                      params=[Param("rho", 0.5, 0.0, 1.0, symbol="ρ", label="sharpness"),
                              Param("n_steps", 3, 1, 9, kind="int")])
    monkeypatch.setitem(registry.REGISTRY, "toy_sym", spec)
    assert [C.pretty(p) for p in spec.params] == ["ρ (sharpness)", "n steps"]


def test_used_when_comes_from_the_registry(monkeypatch):
    assert C.USED_WHEN == {("acm", "density"): ("base_method", "ties"),
                           ("subspace_boosting", "density"): ("base_method", "ties"),
                           ("subspace_boosting", "normalize"): ("base_method", "ties")}
    assert C.USED_WHEN == C.used_when()
    assert not C.in_use("acm", "density", {"base_method": "task_arithmetic"})
    assert C.in_use("acm", "density", {"base_method": "ties"})
    assert C.in_use("acm", "temperature", {"base_method": "task_arithmetic"})
    spec = MethodSpec("toy_when", "Toy", lambda *a: None,
                      params=[Param("mode", "a", kind="choice", choices=("a", "b")),
                              Param("keep", 1.0, 0.0, 1.0, per_model=True, used_when=("mode", "b"))])
    monkeypatch.setitem(registry.REGISTRY, "toy_when", spec)
    assert C.used_when()[("toy_when", "keep")] == ("mode", "b")
    assert not C.in_use("toy_when", "keep", {"mode": "a"})
    assert C.in_use("toy_when", "keep", {"mode": "b"})
