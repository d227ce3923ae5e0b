"""The layering of docs/design.md, held against the code: every import of every module of the
package (at module level or inside a function) is an arrow the design's table allows, and no
two modules import each other, directly or around a cycle."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "attnzoo"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The attnzoo modules ``path`` imports: ``from attnzoo.x import y`` is ``attnzoo.x.y``
    where that is a module, ``attnzoo.x`` otherwise."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "attnzoo")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "attnzoo":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def design_table(design: Path = ROOT / "docs" / "design.md"
                 ) -> tuple[dict[str, str], dict[str, set[str]]]:
    """``(module prefix -> layer, layer -> layers it may import)`` from docs/design.md."""
    text = design.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    owner, allowed = {}, {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "---") or set(cells[0]) <= {"-"}:
            continue
        layer, names, may = cells
        for name in re.findall(r"`([\w.]+)`", names):
            owner[name] = layer
        allowed[layer] = {m.strip() for m in may.split(",")}
    return owner, allowed


def layer_of(module: str, owner: dict[str, str]) -> str:
    """The layer of the longest prefix of ``module`` the table names."""
    best = max((p for p in owner if module == p or module.startswith(p + ".")), key=len,
               default=None)
    assert best is not None, f"docs/design.md names no layer for {module}"
    return owner[best]


def test_the_design_table_covers_every_module_and_names_real_layers():
    owner, allowed = design_table()
    assert len(allowed) >= 10
    for layer, may in allowed.items():
        assert may <= set(allowed), (layer, may - set(allowed))
    for name in modules():
        layer_of(name, owner)


def forbidden_arrows(package: Path = PACKAGE) -> list[str]:
    """``"module (layer) -> module (layer)"`` for every import the design's table forbids."""
    owner, allowed = design_table()
    known = modules(package)
    out = []
    for name, path in known.items():
        source = layer_of(name, owner)
        for target in imports(path, known):
            if target == "attnzoo" and name != "attnzoo":
                continue
            destination = layer_of(target, owner)
            if destination != source and destination not in allowed[source]:
                out.append(f"{name} ({source}) -> {target} ({destination})")
    return out


def test_every_import_is_an_arrow_the_design_allows():
    forbidden = forbidden_arrows()
    assert not forbidden, "imports docs/design.md forbids:\n" + "\n".join(forbidden)


def cycles(package: Path = PACKAGE) -> list[list[str]]:
    """The groups of modules that import each other around a cycle."""
    known = modules(package)
    graph = {name: {t for t in imports(path, known) if t in known and t != name}
             for name, path in known.items()}
    return [c for c in strongly_connected(graph) if len(c) > 1]


def test_no_module_imports_itself_around_a_cycle():
    assert not cycles(), f"import cycles: {cycles()}"


def test_a_cycle_is_found(tmp_path):
    """``convert.mmseg`` and ``convert.segformer`` imported each other before this layering: put
    back, in a copy of the package, the cycle is found."""
    import shutil

    copy = tmp_path / "attnzoo"
    shutil.copytree(PACKAGE, copy)
    module = copy / "convert" / "mmseg.py"
    module.write_text(module.read_text() + "\n\ndef _f():\n    import attnzoo.convert.segformer\n")
    assert cycles(copy) == [["attnzoo.convert.mmseg", "attnzoo.convert.segformer"]]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("source, target", [
    ("attnzoo.models.segmentor", "attnzoo.data"),
    ("attnzoo.convert.mmseg", "attnzoo.engine.config"),
    ("attnzoo.heads.danet", "attnzoo.models"),
])
def test_a_forbidden_arrow_is_found(source, target, tmp_path):
    """The check finds the arrows the design forbids (among them the ones this layering
    removed): each added, inside a function, to its module in a copy of the package."""
    import shutil

    copy = tmp_path / "attnzoo"
    shutil.copytree(PACKAGE, copy)
    module = copy.joinpath(*source.split(".")[1:]).with_suffix(".py")
    module.write_text(module.read_text() + f"\n\ndef _f():\n    import {target}\n")
    assert forbidden_arrows(copy) == [f"{source} ({layer_of(source, design_table()[0])}) -> "
                                      f"{target} ({layer_of(target, design_table()[0])})"]
