"""The import graph of ``python/tsuika`` (and of the Rust core's modules) keeps the
shape ARCHITECTURE.md describes: no import cycles, and every layer imports only
the layers its row of the table allows.

Imports are read with ``ast`` from the source, not by importing: every
``import`` statement counts, at module level, under ``TYPE_CHECKING`` and
inside functions alike. A lazy import hides a cycle at import time but the
two modules still depend on each other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "tsuika"
RUST_CORE = ROOT / "rust" / "core" / "src"


# --------------------------------------------------------------------------- python graph


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``python/tsuika``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, package: str, known: set[str]) -> list[str]:
    """The tsuika modules one import statement names (the most specific that exists)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{a.name}" for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("tsuika"):
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the tsuika modules it imports anywhere in its source."""
    files = module_files()
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(_imported(node, package, known))
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# --------------------------------------------------------------------------- layers


def layer_table() -> list[tuple[str, list[str], list[str]]]:
    """(layer, modules, may import) rows of ARCHITECTURE.md's layer table."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            not line.startswith("|")
            or len(cells) != 3
            or cells[0] in ("layer", "")
            or "---" in line
        ):
            continue
        modules = re.findall(r"`([\w.]+)`", cells[1])
        allowed = re.findall(r"`([\w.]+)`|\b([a-z]+)\b", cells[2])
        rows.append((cells[0], modules, [a or b for a, b in allowed]))
    return rows


def owner(module: str, table: list[tuple[str, list[str], list[str]]]) -> str | None:
    """The layer whose module list holds ``module`` (``tsuika`` itself only exactly)."""
    best, length = None, -1
    for layer, modules, _ in table:
        for prefix in modules:
            exact = prefix == "tsuika"
            if (module == prefix or (not exact and module.startswith(prefix + "."))) and len(
                prefix
            ) > length:
                best, length = layer, len(prefix)
    return best


def allowed(source: str, target: str, table: list[tuple[str, list[str], list[str]]]) -> bool:
    """May ``source`` import ``target``? Its own layer, a listed layer, or a listed module."""
    layer, dest = owner(source, table), owner(target, table)
    if layer == dest or source.split(".")[:2] == target.split(".")[:2]:
        return True
    rules = next(r for name, _, r in table if name == layer)
    return "everything" in rules or dest in rules or target in rules


def layer_violations() -> list[str]:
    table = layer_table()
    graph = import_graph()
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if not allowed(source, target, table)
    )


# --------------------------------------------------------------------------- rust graph


def rust_graph() -> dict[str, set[str]]:
    """Top-level core module -> the ``crate::`` modules its non-test files use."""
    graph: dict[str, set[str]] = {}
    for path in sorted(RUST_CORE.rglob("*.rs")):
        rel = path.relative_to(RUST_CORE)
        module = rel.parts[0].removesuffix(".rs")
        if module in ("lib", "main") or "test" in path.stem:
            continue
        text = path.read_text(encoding="utf-8")
        text = text.split("#[cfg(test)]")[0]  # unit tests may reach anywhere
        text = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("//"))
        deps = set(re.findall(r"crate::(\w+)", text)) - {module}
        graph.setdefault(module, set()).update(deps)
    return graph


# --------------------------------------------------------------------------- tests


def test_the_reader_sees_the_known_edges() -> None:
    """The parser finds what we know is there (so an empty result below means something)."""
    graph = import_graph()
    assert "tsuika.methods.registry" in graph["tsuika.training.loop"]
    assert "tsuika.training.objective" in graph["tsuika.training.loop"]
    assert "tsuika.methods.lora.inject" in graph["tsuika.methods.lora.method"]  # relative
    assert "tsuika.torch_utils" in graph["tsuika.methods.lora.stack"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert rust_graph()["decode"]  # decode uses the crate's error module at least


def test_python_import_graph_has_no_cycles() -> None:
    found = cycles(import_graph())
    assert found == [], f"import cycles: {found}"


def test_rust_core_module_graph_has_no_cycles() -> None:
    found = cycles(rust_graph())
    assert found == [], f"rust/core module cycles: {found}"


def test_every_module_belongs_to_a_layer() -> None:
    table = layer_table()
    assert {name for name, _, _ in table} >= {"foundation", "files", "methods", "training"}
    homeless = sorted(m for m in import_graph() if owner(m, table) is None)
    assert homeless == [], f"modules in no layer of ARCHITECTURE.md: {homeless}"


def test_layers_import_only_what_architecture_md_allows() -> None:
    violations = layer_violations()
    assert violations == [], f"imports the layer table forbids: {violations}"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("tsuika.data.split", "tsuika.training.loop"),
        ("tsuika.formats.embedding", "tsuika.training.loop"),
        ("tsuika.models.base", "tsuika.methods.base"),
        ("tsuika.methods.base", "tsuika.training.objective"),
        ("tsuika.training.loop", "tsuika.cli"),
        ("tsuika.torch_utils", "tsuika.models.base"),
    ],
)
def test_the_rules_forbid_upward_imports(source: str, target: str) -> None:
    """The table is not vacuous: the imports the design rules out are refused."""
    assert not allowed(source, target, layer_table())
