"""Registry of merge methods: one module per method, each registers a spec.

``REGISTRY`` maps recipe names to MethodSpec. The UI builds its controls
from it; recipe validation checks parameters against it.
"""
from __future__ import annotations

import importlib

from ..errors import quoted
from .base import MethodSpec, Param, TensorContext  # noqa: F401

REGISTRY: dict[str, MethodSpec] = {}

# Modules are imported here so that adding a method is adding a file and a
# line; a module that fails to import is a bug and should fail loudly.
_MODULES = [
    "task_arithmetic", "linear", "ties", "dare", "breadcrumbs", "model_stock", "slerp",
    "tsv", "iso", "subspace_boosting", "led", "acm",
]


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec


def _load() -> None:
    for m in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{m}")
        except ModuleNotFoundError as exc:
            # a method still being written is simply absent from the menu
            if exc.name != f"{__name__}.{m}":
                raise


def get(name: str) -> MethodSpec:
    from ..errors import UserError
    if name not in REGISTRY:
        raise UserError(f"Unknown merge method {quoted(name)}; known methods: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


_load()
