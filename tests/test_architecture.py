"""The architecture, checked: the boundaries between stages (ruff's banned-api rules, per folder) and no import cycles.

The boundaries live in ruff configs (pyproject.toml and a ruff.toml in each folder that adds bans); these
tests make sure those rules are in force where they must be and catch every form of import, inside
functions too. The cycle check reads every import statement of the package (function-level ones
included) and fails on any cycle between modules.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "converter"
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")

# (a file of the package, an import, whether ruff must refuse it there)
BOUNDARIES = [
    ("converter/verifier/run.py", "import converter.rewriter.cleanup._edit as e", True),
    ("converter/verifier/numbers/layers.py", "from converter.rewriter.rules import RULES", True),
    ("converter/verifier/certificate/walk.py", "import converter.rewriter", True),
    ("converter/verifier/certificate/walk.py", "from converter.graph import transpose_perm", True),
    ("converter/verifier/certificate/walk.py", "from converter.verifier.numbers import layers", True),
    ("converter/verifier/certificate/walk.py", "from converter.report import RewrittenLayer", False),
    ("converter/rewriter/layout.py", "from converter.verifier import verify", True),
    ("converter/rewriter/rules/_engine.py", "import converter.files.save", True),
    ("converter/rewriter/rules/_engine.py", "from converter.graph import new_node", False),
    ("converter/graph/__init__.py", "from converter.rewriter.cleanup import CleanupOptions", True),
    ("converter/graph/__init__.py", "import converter.files.load", True),
    ("converter/files/save.py", "from converter.verifier.sessions import Runner", True),
    ("converter/pipeline.py", "import converter.cli", True),
    ("converter/pipeline.py", "import tensorflow", True),
    ("converter/pipeline.py", "import onnx_graphsurgeon", True),
    ("converter/gs.py", "import onnx_graphsurgeon", False),
    ("converter/frontends/worker.py", "import tensorflow", False),
    ("converter/cli/__init__.py", "from converter.cli import render", False),
]


@pytest.mark.skipif(RUFF is None, reason="ruff comes with the test extras")
@pytest.mark.parametrize(("where", "statement", "banned"), BOUNDARIES, ids=[f"{w}:{s}" for w, s, _ in BOUNDARIES])
def test_a_boundary_holds_for_every_form_of_import(where: str, statement: str, banned: bool) -> None:
    """At module level and inside a function alike (the old AST test saw only ``from ... import``)."""
    for source in (f"{statement}\n", f"def f():\n    {statement}\n"):
        r = subprocess.run(
            [RUFF, "check", "--stdin-filename", where, "--select", "TID251", "-"],
            input=source,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert ("TID251" in r.stdout) is banned, (where, source, r.stdout + r.stderr)


def test_every_folder_config_repeats_the_project_wide_bans() -> None:
    """ruff takes the nearest config whole: a folder's banned-api table replaces the project's, so it must repeat it."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"]
    configs = sorted(PACKAGE.rglob("ruff.toml"))
    assert len(configs) >= 5, configs
    for config in configs:
        bans = tomllib.loads(config.read_text())["lint"]["flake8-tidy-imports"]["banned-api"]
        assert set(root) <= set(bans), (config, set(root) - set(bans))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, every statement counted (inside functions too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import converter.x.y.z` where z is a name
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (scipy's, on the import graph)."""
    names = sorted(set(graph) | {m for targets in graph.values() for m in targets})
    number = {name: i for i, name in enumerate(names)}
    edges = [(number[a], number[b]) for a, targets in graph.items() for b in targets]
    rows = [a for a, _ in edges]
    cols = [b for _, b in edges]
    matrix = csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(matrix, directed=True, connection="strong")
    members: dict[int, list[str]] = {}
    for name, label in zip(names, labels, strict=True):
        members.setdefault(int(label), []).append(name)
    return sorted(m for m in members.values() if len(m) > 1)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycles() -> None:
    """Counting imports inside functions: a cycle held together by a lazy import is still a cycle."""
    graph = import_graph()
    assert "converter.rewriter.rules._engine" in graph["converter.rewriter.rules._checks"]
    assert cycles(graph) == []
