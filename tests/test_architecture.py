"""The house's arrows, read from the source: no import cycle in core or ui, core
never imports the UI or gradio, and every import points down the layers
(docs/ARCHITECTURE.md): ui -> service -> merge -> methods -> checkpoint. In ui/,
tabs never import tabs, ui reaches core only through core/service.py (and its
one exception type), and no module uses another's underscored names.

Imports inside functions count too: a lazy import is still an arrow, and
the cycle this test was written for (engine <-> limits) was a lazy one.
"""
from __future__ import annotations

import ast
import os

from core import ROOT

CORE = os.path.join(ROOT, "core")
UI = os.path.join(ROOT, "ui")

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

# ui/, lower layers first: what the page's parts share, the session's operations (probing, the board's data,
# merging, pictures, chatting), then the tabs (which never import each other), the HTTP API, the app.
UI_LAYERS = [
    ["ui.state", "ui.figures", "ui.learn"],        # the session, figure makers, the tour's words
    ["ui.controls"],                               # a method's controls from its Params
    ["ui.common", "ui.gpu"],                       # components by key and the error guard; the GPU's pure work
    ["ui.probing"],                                # probing the session's models, what a score means
    ["ui.board"],                                  # the compare board's and the history's data
    ["ui.merging"],                                # merging into the live model, the history
    ["ui.pictures", "ui.chatting"],                # the Look tab's pictures; the chat's answers
    ["ui.tabs"],                                   # one module per tab: layout, wiring, its own handlers
    ["ui.api"],                                    # the HTTP API
    ["ui.app"],                                    # assembles the page
]
# what ui/ may import of core: the façade and the one user-facing exception
UI_SEES = {"core.service", "core.errors"}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _is_module(name: str) -> bool:
    base = os.path.join(ROOT, *name.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def graph(top: str = CORE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({module: core/ui modules it imports}, {module: outside top-level packages it imports}) for the
    modules under ``top`` (core/ or ui/)."""
    edges: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for folder, _, files in os.walk(top):
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
                    if t.split(".")[0] in ("core", "ui"):
                        if t != me:
                            deps.add(t)
                    else:
                        ext.add(t.split(".")[0])
    return edges, outside


def _layer(module: str, layers=LAYERS) -> tuple[int, str]:
    best = (-1, "")
    for i, names in enumerate(layers):
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
    """Every hop the trace names (`ui.merging.merge_into_session(...)`, `core.methods.led.masks.k_of(...)`) is a
    function or class that exists where the trace says."""
    import re
    doc = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8").read()
    section = doc.split("## How a knob reaches its tensor", 1)[1].split("\n## ", 1)[0]
    hops = re.findall(r"`((?:core|ui)(?:\.\w+)+)\(", section)
    assert len(hops) >= 20
    for dotted in hops:
        parts = dotted.split(".")
        # the longest prefix that is a module; the rest is a function, or a class and its method
        cut = max(i for i in range(1, len(parts)) if _is_module(".".join(parts[:i])))
        mod, names = ".".join(parts[:cut]), parts[cut:]
        base = os.path.join(ROOT, *mod.split("."))
        path = base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")
        source = open(path, encoding="utf-8").read()
        for name in names:
            assert re.search(rf"^\s*(def|class) {name}\b", source, re.M), f"{mod} has no {'.'.join(names)}"


# ------------------------------------------------------------------ ui/
def test_a_tab_importing_a_tab_is_seen():
    edges, _ = graph(UI)
    assert "ui.tabs.chat" in edges and "ui.chatting" in edges["ui.tabs.chat"]
    assert "core.service" in edges["ui.pictures"]
    # a lazy import inside a function is an arrow too
    assert "ui.api" in edges["ui.app"]


def test_ui_has_no_import_cycle():
    edges, _ = graph(UI)
    assert _cycles({m: {d for d in deps if d.startswith("ui")} for m, deps in edges.items()}) == []


def test_tabs_never_import_tabs():
    edges, _ = graph(UI)
    bad = [f"{m} -> {d}" for m, deps in sorted(edges.items()) if m.startswith("ui.tabs.")
           for d in sorted(deps) if d.startswith("ui.tabs.") and d != "ui.tabs"]
    assert bad == []


def test_ui_reaches_core_only_through_the_service():
    edges, _ = graph(UI)
    bad = [f"{m} -> {d}" for m, deps in sorted(edges.items()) for d in sorted(deps)
           if d.startswith("core") and d not in UI_SEES]
    assert bad == []


def test_every_ui_import_points_down_its_layers():
    edges, _ = graph(UI)
    up = []
    for m, deps in sorted(edges.items()):
        if m == "ui":
            continue
        lm, pm = _layer(m, UI_LAYERS)
        for d in sorted(x for x in deps if x.startswith("ui.")):
            ld, pd = _layer(d, UI_LAYERS)
            if ld > lm or (ld == lm and pd != pm):
                up.append(f"{m} -> {d}")
    assert up == []


def test_no_ui_module_uses_another_modules_underscored_names():
    """An underscored name is its module's own: another module that needs it needs a public name."""
    bad = []
    for folder, _, files in os.walk(UI):
        for fn in files:
            if not fn.endswith(".py"):
                continue
            path = os.path.join(folder, fn)
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            mods = set()      # names bound to ui modules here ("from . import state as S")
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ui")):
                    for a in node.names:
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            bad.append(f"{os.path.relpath(path, ROOT)} imports {a.name}")
                        mods.add(a.asname or a.name)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in mods \
                        and node.attr.startswith("_") and not node.attr.startswith("__"):
                    bad.append(f"{os.path.relpath(path, ROOT)} uses {node.value.id}.{node.attr}")
    assert bad == []
