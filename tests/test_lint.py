"""Lint, types and hygiene of the repository itself.

- ruff holds the architecture (no print outside the command, no TensorFlow/tf2onnx/graphsurgeon imports in the
  core, the per-folder import bans) and the format.
- mypy checks the package against a baseline that may only go down: ``.ci/mypy-baseline.json`` holds the number of
  mypy errors and of ``# type: ignore`` comments; more of either fails. When a change lowers them, write the new
  counts (``python -m tests.test_lint --write-baseline``) so that they cannot come back.
- No committed file names a path of the machine it was made on (a home folder, a build farm's work folder):
  ONNX files included, whose exporters write stack traces into node metadata.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUFF = shutil.which("ruff", path=str(BIN)) or shutil.which("ruff")
MYPY = shutil.which("mypy", path=str(BIN)) or shutil.which("mypy")
BASELINE = ROOT / ".ci" / "mypy-baseline.json"
PACKAGE = ROOT / "converter"


@pytest.mark.skipif(RUFF is None, reason="ruff comes with the test extras")
@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff(args: list[str]) -> None:
    r = subprocess.run([RUFF, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# --- mypy against its baseline -------------------------------------------------------------------------------

_IGNORE = re.compile(r"#\s*type:\s*ignore\b")


def type_ignores() -> int:
    """``# type: ignore`` comments in the package (one per line that has one)."""
    return sum(len(_IGNORE.findall(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py")))


def mypy_errors(cache: Path | None = None) -> tuple[int, str, str]:
    """mypy over the package as pyproject.toml's [tool.mypy] configures it: (errors, its output, its version)."""
    if MYPY is None:
        raise FileNotFoundError("mypy comes with the test extras")
    cache_args = ["--cache-dir", str(cache)] if cache is not None else []
    r = subprocess.run([MYPY, *cache_args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode not in (0, 1):  # 2: mypy itself failed (a bad configuration, a crash)
        raise RuntimeError(f"mypy ended with {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    version = subprocess.run([MYPY, "--version"], capture_output=True, text=True, timeout=60).stdout.split()[1]
    return sum(": error:" in line for line in r.stdout.splitlines()), r.stdout, version


@pytest.fixture
def mypy_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """pytest's own cache folder (.pytest_cache, ignored by git) keeps mypy's between runs: 1 s warm, 6-9 s cold."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("mypy") if cache is not None else tmp_path


def test_type_ignores_do_not_grow() -> None:
    baseline = json.loads(BASELINE.read_text())
    count = type_ignores()
    assert count <= baseline["type_ignores"], (
        f"{count} `# type: ignore` comments in converter/, the baseline allows {baseline['type_ignores']}: "
        "type the new code instead of silencing the checker"
    )


@pytest.mark.skipif(MYPY is None, reason="mypy comes with the test extras")
def test_mypy_errors_do_not_grow(mypy_cache: Path) -> None:
    baseline = json.loads(BASELINE.read_text())
    errors, output, version = mypy_errors(mypy_cache)
    if version != baseline["mypy"]:
        pytest.skip(f"the baseline was counted with mypy {baseline['mypy']} (the test extra pins it); this is {version}")
    assert errors <= baseline["mypy_errors"], (
        f"mypy finds {errors} errors in converter/, the baseline allows {baseline['mypy_errors']}:\n{output[-6000:]}"
    )


# --- no machine paths in committed files ---------------------------------------------------------------------

# Written in pieces so that this file does not match itself.
_MACHINE_PATH = re.compile(rb"/(?:" + b"|".join([b"work", b"farm", b"root", b"home", b"Users"]) + rb")/")
_CHECKED = (".onnx", ".md", ".py", ".toml", ".txt", ".json", ".cfg", ".ini", ".sh")


def repository_files() -> list[Path]:
    """The files git tracks or would (not ignored); without git, every file outside hidden and build folders."""
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        r = subprocess.run(
            [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, timeout=60
        )
        if r.returncode == 0:
            return [ROOT / name for name in r.stdout.decode().split("\0") if name]
    skip = {"build", "dist", "__pycache__"}
    return [
        p
        for p in ROOT.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts[:-1])
    ]


def test_no_committed_file_names_a_machine_path() -> None:
    found = []
    for path in repository_files():
        if path.suffix in _CHECKED and path.is_file() and not path.is_symlink():
            for match in _MACHINE_PATH.finditer(path.read_bytes()):
                found.append(f"{path.relative_to(ROOT)} at byte {match.start()}")
                break
    assert found == [], "machine paths in: " + ", ".join(found)


def test_the_path_check_finds_a_planted_path(tmp_path: Path) -> None:
    """A positive control: the pattern matches such a path inside an ONNX string as the dynamo exporter writes it."""
    import onnx
    from onnx import helper

    node = helper.make_node("Relu", ["x"], ["y"])
    node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value='File "/' + 'home/someone/venv/site-packages/torch/nn/x.py"')
    assert _MACHINE_PATH.search(node.SerializeToString())
    scrubbed = onnx.NodeProto()
    scrubbed.CopyFrom(node)
    scrubbed.metadata_props[0].value = 'File "site-packages/torch/nn/x.py"'
    assert not _MACHINE_PATH.search(scrubbed.SerializeToString())


def write_baseline() -> dict[str, object]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mypy-") as cache:
        errors, _, version = mypy_errors(Path(cache))
    counts = {"mypy": version, "mypy_errors": errors, "type_ignores": type_ignores()}
    BASELINE.write_text(json.dumps(counts, indent=2) + "\n")
    return counts


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-baseline"]:
        raise SystemExit("usage: python -m tests.test_lint --write-baseline")
    print(write_baseline())
