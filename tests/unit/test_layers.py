"""Layers point one way: a module never imports one of a higher layer (its imports, including
those inside functions, are read from the source). A lower layer that needed an upper one would
drag the whole worker (Faust, tables, agents) into the producer, or the CLI into a library.

    0  app.settings, app.errors, app.obs, app.testing, app.model, app (the version)
    1  app.kube, app.kafka            clients of the two outside systems
    2  app.worker                     Faust app factory, batch loop, Faust corrections
    3  tables                         table definitions, written through app.worker's loop
    4  app.producer, app.core, app.sinks   the stages
    5  agents, app.supervise          register a pipeline on an app; `kubevents run`
    6  app.cli                        builds the settings and runs a command

Packages of one layer do not import each other either (the producer knows nothing of the core),
except in layer 0.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [
    ["app.settings", "app.errors", "app.obs", "app.testing", "app.model", "app"],
    ["app.kube", "app.kafka"],
    ["app.worker"],
    ["tables"],
    ["app.producer", "app.core", "app.sinks"],
    ["agents", "app.supervise"],
    ["app.cli"],
]


def unit(module: str) -> tuple[int, str]:
    """(layer, package) of a kubevents module: the longest prefix named in LAYERS."""
    best: tuple[int, str] | None = None
    for layer, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best[1])
            ):
                best = (layer, name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def modules() -> list[tuple[str, Path]]:
    out = []
    for top in ("app", "agents", "tables"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append((".".join(parts), path))
    return out


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("app", "agents", "tables")}


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    layer, package = unit(module)
    for imported in sorted(imports(path)):
        # "from app import __version__" names app itself; "from app.core import x" names both.
        top_level = imported.rsplit(".", 1)[0] == "app"
        name = "app" if top_level and not (ROOT / imported.replace(".", "/")).exists() else imported
        their_layer, their_package = unit(name)
        assert their_layer <= layer, f"{module} ({layer}) imports {name} ({their_layer})"
        if their_layer == layer and layer > 0:
            assert their_package == package, f"{module} imports its sibling {name}"
