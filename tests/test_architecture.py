"""The house rules, checked on the source (plain Python, ``ast``; nothing is imported): no import circles between
modules, and no import from a lower layer up to a higher one. Every ``import`` statement counts, including the
lazy ones inside functions. docs/ARCHITECTURE.md explains the layers; this list is the one place they are written.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlens"

# Top floor first. A module belongs to the entry that names it or its package; modules of one layer may import each
# other (without circles) and anything below, never above. A new top-level module or package must be placed here.
LAYERS = [
    ("command line", ["vlens.__main__", "vlens.cli"]),
    ("surfaces", ["vlens.report", "vlens.web"]),
    ("composite capabilities", ["vlens.retrieval"]),
    ("capabilities", ["vlens.match", "vlens.ssl", "vlens.caption"]),
    ("data", ["vlens.data"]),
    ("ground floor", ["vlens.images", "vlens.image_formats", "vlens.photo_meta", "vlens.runs", "vlens.models",
                      "vlens.devices", "vlens.cpu", "vlens.faults",
                      "vlens.fields", "vlens.training", "vlens.sweep", "vlens.bulk", "vlens.plots", "vlens.tables",
                      "vlens.interrupt", "vlens.engines"]),
    ("foundations", ["vlens.errors", "vlens"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported vlens module, line, inside a function?) for every import statement in one module. ``from P import
    x`` names module ``P.x`` when that is a module, else ``P`` itself."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    lazy_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                  for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        lazy = id(node) in lazy_nodes
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, lazy) for a in node.names if a.name.split(".")[0] == "vlens"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "vlens":
                continue
            for a in node.names:
                out.append((f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod, node.lineno, lazy))
    return out


def graph() -> dict[str, dict[str, tuple[int, bool]]]:
    """module -> {imported module: (first line, every import of it lazy?)}; vlens modules only."""
    mods = modules()
    known = set(mods)
    edges: dict[str, dict[str, tuple[int, bool]]] = {}
    for name, path in mods.items():
        mine = edges.setdefault(name, {})
        for target, line, lazy in imports(name, path, known):
            while target not in known:  # `import vlens.x.y` of something that is not a module: its package
                target = target.rpartition(".")[0]
            if target != name:
                line0, lazy0 = mine.get(target, (line, True))
                mine[target] = (min(line0, line), lazy0 and lazy)
    return edges


def layer_of(name: str) -> int | None:
    """Index into LAYERS (0 = top) of the longest entry that names ``name`` or a package above it."""
    best, depth = None, -1
    for i, (_, entries) in enumerate(LAYERS):
        for e in entries:
            hit = name == e if e == "vlens" else (name == e or name.startswith(e + "."))
            if hit and e.count(".") > depth:
                best, depth = i, e.count(".")
    return best


def cycles(edges: dict[str, dict]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_every_module_has_a_layer():
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"place these modules in LAYERS (tests/test_architecture.py): {missing}"


def test_no_import_circles():
    edges = graph()
    found = cycles(edges)
    lines = []
    for comp in found:
        inside = set(comp)
        lines += [f"  {m} -> {t} (line {edges[m][t][0]})" for m in comp for t in sorted(edges[m]) if t in inside]
    assert not found, "import circles (move the shared piece into a module both can import):\n" + "\n".join(lines)


def test_no_import_up_a_layer():
    up = []
    for m, targets in graph().items():
        for t, (line, _lazy) in sorted(targets.items()):
            lm, lt = layer_of(m), layer_of(t)
            if lm is not None and lt is not None and lt < lm:
                up.append(f"  {m} (layer '{LAYERS[lm][0]}') imports {t} (layer '{LAYERS[lt][0]}') at line {line}")
    assert not up, "imports from a lower layer up to a higher one:\n" + "\n".join(up)


# ------------------------------------------------------------------------- the checker itself, on a made-up graph


def test_cycle_finder_on_known_graphs():
    assert cycles({"a": {"b": 0}, "b": {"c": 0}, "c": {"a": 0}, "d": {"a": 0}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 0}, "b": {}, "c": {"b": 0}}) == []
    two = cycles({"a": {"b": 0}, "b": {"a": 0}, "c": {"d": 0}, "d": {"c": 0, "a": 0}})
    assert sorted(two) == [["a", "b"], ["c", "d"]]


def test_layer_lookup_uses_the_longest_entry_and_the_root_only_exactly():
    assert LAYERS[layer_of("vlens.cli.match")][0] == "command line"
    assert LAYERS[layer_of("vlens.match.geometry")][0] == "capabilities"
    assert LAYERS[layer_of("vlens")][0] == "foundations"
    assert layer_of("vlens.not_placed_yet") is None


def test_lazy_imports_inside_functions_are_seen(tmp_path):
    src = "def f():\n    from vlens.report.lab import build\n    import vlens.cli\n"
    p = tmp_path / "mod.py"
    p.write_text(src)
    found = imports("vlens.match.mod", p, {"vlens.report.lab", "vlens.cli"})
    assert [(t, lazy) for t, _, lazy in found] == [("vlens.report.lab", True), ("vlens.cli", True)]
