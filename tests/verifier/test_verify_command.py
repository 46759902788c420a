"""The real ``convert`` command, with a bug injected into its rewrite, never prints PASSED and never writes the model.

The broken rewrite comes from tests/bugs.py, patched into the pipeline of a fresh interpreter that
then runs the command's own main(): everything after the rewrite (verification, verdict, exit
status, writing) is the command as users run it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from models import graphs
from tests.bugs import BUGS
from tests.conftest import W_, C, H, dense_model
from tests.verifier.test_verify import head_model

# Exit 99 if the bug never went in (a stale patch point must not look like a caught bug).
RUN = (
    "import sys, tests.bugs as b; b.patch_rewrite(sys.argv.pop(1)); import converter.cli as c; "
    "rc = c.main(); sys.exit(rc if b.INJECTED else 99)"
)
ROOT = Path(__file__).resolve().parents[2]

MODELS = {
    "static": lambda: dense_model(x_shape=(2, H, W_, C)),
    "symbolic": lambda: dense_model(x_shape=("N", "H", "W", C)),
    "zero_head": lambda: head_model("zero_head", symbolic=True),
    "nan": lambda: head_model("nan"),
    "saturated": lambda: head_model("saturated"),
    "if": graphs.dense_in_if,
}


def convert_with_bug(bug: str, model: onnx.ModelProto, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = folder / "m.onnx"
    onnx.save(model, path)
    return subprocess.run(
        # Every layer rewritten: this checks verification, not the layout policy (which may decline a toy's layers).
        [sys.executable, "-c", RUN, bug, str(path), "-o", str(folder / "out.onnx"), "--layout", "keep-all", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


CASES = [(m, b) for m in ("static", "symbolic") for b in BUGS] + [
    (m, b) for m in ("zero_head", "nan", "saturated", "if") for b in ("weights_scaled", "hw_swap_in", "bias_twice", "wrong_group")
]


@pytest.mark.parametrize(("model_name", "bug"), CASES)
def test_a_broken_rewrite_is_never_passed_nor_written(tmp_path: Path, model_name: str, bug: str) -> None:
    model = MODELS[model_name]()
    r = convert_with_bug(bug, model, tmp_path)
    if "does not apply" in r.stderr + r.stdout:
        pytest.skip(f"{bug} does not apply to {model_name}")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode not in (0, 2, 99), r.stdout + r.stderr
    assert "PASSED" not in r.stdout
    assert not (tmp_path / "out.onnx").exists()


def test_the_same_command_without_a_bug_passes_and_writes(tmp_path: Path) -> None:
    onnx.save(MODELS["symbolic"](), tmp_path / "m.onnx")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, converter.cli as c; sys.exit(c.main())",
            str(tmp_path / "m.onnx"),
            "-o",
            str(tmp_path / "o.onnx"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and (tmp_path / "o.onnx").exists()
