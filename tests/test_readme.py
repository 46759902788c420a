"""The README's Quickstart is what users run first: run it as written (in a copy of the repo's files)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
CONVERT = str(Path(sys.executable).parent / "convert")


def quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", text, re.S)
    assert block, "README has no Quickstart bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_has_the_two_commands() -> None:
    install_and_run, install_and_test = quickstart()
    assert install_and_run.startswith("pip install -e . && convert ")
    assert install_and_test == 'pip install -e ".[test]" && python -m pytest'
    assert install_and_test in (ROOT / ".ci" / "run").read_text().splitlines()  # CI runs exactly this


def test_first_command_converts_the_bundled_example(tmp_path: Path) -> None:
    convert_part = quickstart()[0].split("&&", 1)[1].split()
    shutil.copytree(ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns("*_conv.onnx"))
    r = subprocess.run([CONVERT, *convert_part[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and "Rewritten 1 of 1 candidates" in r.stdout
    out = onnx.load(tmp_path / "models" / "seed_dense_conv.onnx")
    assert [n.op_type for n in out.graph.node] == ["Transpose", "Conv", "Transpose"]


def test_bundled_example_is_what_its_script_builds(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "models" / "seed_dense.py"), str(tmp_path / "s.onnx")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (tmp_path / "s.onnx").read_bytes() == (ROOT / "models" / "seed_dense.onnx").read_bytes()
    shape = [d.dim_value for d in onnx.load(tmp_path / "s.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 2, 2, 1]


def test_seed_notebook_example_runs_as_written(tmp_path: Path) -> None:
    """The README's TensorFlow example, run exactly as printed (in a scratch folder)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## TensorFlow and Keras input.*?```python\n(.*?)```", text, re.S)
    assert block, "README has no TensorFlow example"
    r = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ops = [n.op_type for n in onnx.load(tmp_path / "seed.onnx").graph.node]
    assert "Conv" in ops and "MatMul" not in ops
