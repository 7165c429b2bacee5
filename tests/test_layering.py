"""The architecture's direction (README "Layout"): data knows no model — importing
``chaincrf.data`` imports no embeddings, encoders, tagger or metrics module, and nothing of the
tagger's side reaches into ``cli/``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from chaincrf.data.casing import CASING_CLASSES
from chaincrf.network.embeddings import NUM_CASING

SRC = Path(__file__).resolve().parents[1] / "src" / "chaincrf"


def _new_modules(setup: str, statement: str) -> list[str]:
    code = (
        "import json, sys\n"
        f"{setup}\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith('chaincrf'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_data_imports_no_model_module():
    loaded = _new_modules("import chaincrf", "import chaincrf.data")
    assert loaded and all(
        m.startswith("chaincrf.data") or m == "chaincrf.data.schemes" for m in loaded
    ), loaded


def test_the_tagger_imports_no_cli_module():
    loaded = _new_modules("import chaincrf", "from chaincrf.tagger import SequenceTagger")
    assert "chaincrf.training.module" in loaded
    assert not [m for m in loaded if m.startswith("chaincrf.cli")], loaded


def test_the_casing_feature_size_is_the_datas():
    assert len(CASING_CLASSES) == NUM_CASING


def _imports(path: Path, module: str, package: bool, known: set[str]) -> set[str]:
    """The chaincrf modules ``module`` imports, anywhere in the file: in functions (a lazy
    import still ties the two) and under ``if TYPE_CHECKING:`` (so do annotations)."""
    base = module if package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                source = ".".join(parts + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in known:
                    found.add(target)
                elif source in known:
                    found.add(source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module under ``root`` -> the modules under ``root`` it imports."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return {name: _imports(path, name, pkg, set(modules)) for name, (path, pkg) in modules.items()}


def import_circles(root: Path) -> list[list[str]]:
    """Every import circle among the modules under ``root`` (strongly connected components
    of the import graph with more than one module)."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return circles


def test_no_import_circle_under_src():
    assert import_circles(SRC) == []


def test_the_circle_finder_finds_a_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text("from pkg.a import f\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    assert import_circles(package) == [["pkg.a", "pkg.b"]]


UTILITIES = {"atomic", "extras", "spec"}
"""The root modules every layer may use (they import no other chaincrf module but each other)."""

ROLES = {
    "crf": set(),
    "data": UTILITIES,
    "files": UTILITIES | {"data"},
    "network": UTILITIES | {"crf", "data"},
    "predict": UTILITIES | {"crf", "data", "files", "network"},
    "training": UTILITIES | {"crf", "data", "files", "network", "predict"},
    "tagger": UTILITIES | {"network", "predict", "training"},
    "cli": UTILITIES | {"crf", "data", "files", "network", "predict", "training", "tagger"},
}
"""What each role may import (README "Layout"): the arrows point one way, from the commands
down to the CRF; ``data`` knows no model; ``files`` reads model files without building one."""


def _role(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "chaincrf"


def test_the_roles_import_in_one_direction():
    graph = import_graph(SRC)
    assert {_role(m) for m in graph} - {"chaincrf"} == set(
        ROLES
    ) | UTILITIES  # no stray root module
    allowed = {**ROLES, **dict.fromkeys(UTILITIES, UTILITIES), "chaincrf": {"crf"}}
    wrong = sorted(
        f"{module} imports {other}"
        for module, imported in graph.items()
        for other in imported
        if _role(other) != _role(module)
        and _role(other) not in allowed[_role(module)]
        and other != "chaincrf"  # the package itself (its version), which imports nothing
    )
    assert wrong == []


def test_the_old_module_paths_import_the_moved_modules():
    """Code and model files naming a path from before the regrouping get the same module."""
    import importlib

    import chaincrf

    for old, new in chaincrf.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from chaincrf.encoders.bilstm import BiLSTMEncoder

    from chaincrf.network.encoders.bilstm import BiLSTMEncoder as moved
    from chaincrf.training import check_loss
    from chaincrf.training.callbacks import check_loss as home

    assert BiLSTMEncoder is moved and check_loss is home
    for new in chaincrf.MOVED.values():  # the moved modules keep their own spec (name, path)
        assert importlib.import_module(new).__spec__.name == new
    assert importlib.import_module("chaincrf.network.encoders").__path__
