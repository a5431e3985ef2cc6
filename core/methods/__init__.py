"""Merge methods: one module per classic method; LED-Merging and ACM are
packages with their scoring, masks/coefficients and analysis.

Each module registers a MethodSpec (core.methods.base) in ``REGISTRY``,
which maps recipe names to specs. Adding a method is adding a file and an
import line here; a module that fails to import fails loudly.
"""
from __future__ import annotations

from ..errors import UserError, quoted
# the order of these imports is the order of the UI's method menu
from . import task_arithmetic, linear, ties, dare, breadcrumbs, model_stock, slerp  # noqa: F401,I001
from . import tsv, iso, subspace_boosting, led, acm  # noqa: F401,I001  (each registers its spec)
from .base import REGISTRY, MethodSpec, Param, TensorContext, register  # noqa: F401


def get(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise UserError(f"Unknown merge method {quoted(name)}; known methods: {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]
