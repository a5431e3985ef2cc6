"""The house's arrows, read from the source: no import cycle in core, core
never imports the UI or gradio, and every import points down the layers
(docs/ARCHITECTURE.md): ui -> service -> merge -> methods -> checkpoint.

Imports inside functions count too: a lazy import is still an arrow, and
the cycle this test was written for (engine <-> limits) was a lazy one.
"""
from __future__ import annotations

import ast
import os

from core import ROOT

CORE = os.path.join(ROOT, "core")

# Lower layers first; an import may only point to a lower layer or stay
# inside its own package (where the cycle check still applies).
LAYERS = [
    ["core", "core.errors"],                       # paths and the one user-facing exception
    ["core.policy", "core.zoo.data", "core.zoo.smol_data", "core.zoo"],   # Space allow-lists and memory budget;
                                                   # the families: names, folders, data
    ["core.userfiles"],                            # the one reader of files a user hands in
    ["core.checkpoint"],                           # all disk I/O of models
    ["core.zoo.smol"],                             # the SmolLM2 base: fetched and converted with the writer
    ["core.scores"],                               # the one score cache
    ["core.methods"],                              # merge methods, LED and ACM with their scoring
    ["core.recipe"],                               # parse and validate once
    ["core.merge"],                                # plan, walk, sinks
    ["core.eval"],                                 # probes, scorers, chat, weight analysis, reproduce
    ["core.zoo.check"],                            # the family's floors, measured with eval and merge
    ["core.zoo.build", "core.zoo.smol_build"],     # training the families (measured by zoo.check)
    ["core.service"],
    ["core.cli"],
    ["core.__main__"],
]


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _is_module(name: str) -> bool:
    base = os.path.join(ROOT, *name.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({core module: core modules it imports}, {core module: outside top-level packages it imports})."""
    edges: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for folder, _, files in os.walk(CORE):
        for fn in files:
            if not fn.endswith(".py"):
                continue
            path = os.path.join(folder, fn)
            me = _module_name(path)
            package = me if fn == "__init__.py" else me.rsplit(".", 1)[0]
            deps, ext = edges.setdefault(me, set()), outside.setdefault(me, set())
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = package.split(".")
                        base = ".".join(parts[:len(parts) - node.level + 1])
                        base = f"{base}.{node.module}" if node.module else base
                    else:
                        base = node.module
                    # "from pkg import sub" imports the submodule; "from pkg import name" the package
                    targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
                else:
                    continue
                for t in targets:
                    if t == "core" or t.startswith("core."):
                        if t != me:
                            deps.add(t)
                    else:
                        ext.add(t.split(".")[0])
    return edges, outside


def _layer(module: str) -> tuple[int, str]:
    best = (-1, "")
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > len(best[1]):
                best = (i, n)
    assert best[0] >= 0, f"{module} is in no layer of this test; add it to LAYERS"
    return best


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_modules_and_their_lazy_imports():
    edges, outside = graph()
    assert "core.merge.engine" in edges and "core.methods.led" in edges
    assert "core.merge.plan" in edges["core.merge.engine"]
    assert "torch" in outside["core.merge.walk"]
    # imports inside functions count (service imports its heavy modules lazily)
    assert "core.merge.engine" in edges["core.service"]


def test_a_planted_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_has_no_import_cycle():
    edges, _ = graph()
    assert _cycles(edges) == []


def test_core_never_imports_the_ui_or_gradio():
    edges, outside = graph()
    assert not [m for m, deps in edges.items() if any(d == "ui" or d.startswith("ui.") for d in deps)]
    assert not [m for m, ext in outside.items() if ext & {"ui", "gradio", "gradio_client", "app"}]


def test_methods_never_import_the_merge_engine_or_the_recipe():
    edges, _ = graph()
    bad = [(m, d) for m, deps in edges.items() if m.startswith("core.methods")
           for d in deps if d.startswith(("core.merge", "core.recipe", "core.service", "core.eval"))]
    assert bad == []


def test_every_import_points_down_the_layers():
    edges, _ = graph()
    up = []
    for m, deps in sorted(edges.items()):
        lm, pm = _layer(m)
        for d in sorted(deps):
            ld, pd = _layer(d)
            if ld > lm or (ld == lm and pd != pm):
                up.append(f"{m} -> {d}")
    assert up == []


def test_the_knob_path_in_docs_architecture_names_real_functions():
    import re
    doc = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8").read()
    hops = re.findall(r"`((?:core|ui)/[\w/]+\.py):([\w.]+)`", doc.split("## A knob", 1)[1])
    assert len(hops) >= 6
    for path, name in hops:
        source = open(os.path.join(ROOT, path), encoding="utf-8").read()
        last = name.split(".")[-1]
        assert re.search(rf"^\s*(def|class) {last}\b", source, re.M), f"{path} has no {name}"
