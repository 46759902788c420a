"""The ``convert`` command, with a bug injected into its rewrite, never prints PASSED and never writes the model.

The broken rewrite comes from tests/bugs.py, patched into the pipeline for one test (monkeypatch puts the
real one back); the command's own main() then runs in this process (tests/conftest.py's ``run_command``):
everything after the rewrite (verification, verdict, exit status, writing) is the command as users run it.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import converter.pipeline as pipeline
import tests.bugs as bugs
from models import graphs
from tests.bugs import BUGS
from tests.conftest import W_, C, CliResult, H, dense_model, run_command
from tests.verifier.test_verify import head_model

MODELS = {
    "static": lambda: dense_model(x_shape=(2, H, W_, C)),
    "symbolic": lambda: dense_model(x_shape=("N", "H", "W", C)),
    "zero_head": lambda: head_model("zero_head", symbolic=True),
    "nan": lambda: head_model("nan"),
    "saturated": lambda: head_model("saturated"),
    "if": graphs.dense_in_if,
}


def convert_with_bug(bug: str, model: onnx.ModelProto, folder: Path, monkeypatch: pytest.MonkeyPatch) -> CliResult:
    path = folder / "m.onnx"
    onnx.save(model, path)
    monkeypatch.setattr(bugs, "INJECTED", [])
    monkeypatch.setattr(pipeline, "rewrite_in_place", pipeline.rewrite_in_place)  # the real one, back after the test
    bugs.patch_rewrite(bug)
    # Every layer rewritten: this checks verification, not the layout policy (which may decline a toy's layers).
    return run_command(path, "-o", folder / "out.onnx", "--layout", "keep-all", child=False)  # the patch is in this process


CASES = [(m, b) for m in ("static", "symbolic") for b in BUGS] + [
    (m, b) for m in ("zero_head", "nan", "saturated", "if") for b in ("weights_scaled", "hw_swap_in", "bias_twice", "wrong_group")
]


@pytest.mark.parametrize(("model_name", "bug"), CASES)
def test_a_broken_rewrite_is_never_passed_nor_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_name: str, bug: str
) -> None:
    model = MODELS[model_name]()
    r = convert_with_bug(bug, model, tmp_path, monkeypatch)
    if "does not apply" in r.stderr + r.stdout:
        pytest.skip(f"{bug} does not apply to {model_name}")
    assert bugs.INJECTED == [bug]  # a stale patch point must not look like a caught bug
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode not in (0, 2), r.stdout + r.stderr
    assert "PASSED" not in r.stdout
    assert not (tmp_path / "out.onnx").exists()


def test_the_same_command_without_a_bug_passes_and_writes(tmp_path: Path) -> None:
    onnx.save(MODELS["symbolic"](), tmp_path / "m.onnx")
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--layout", "keep-all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and (tmp_path / "o.onnx").exists()
