"""The JSON report (``--report``, report.py's schema version 2): it says what the run amounts to, UNCHANGED and DONE
as what they are rather than as passed, and it is strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from converter.report import SCHEMA_VERSION, ConvertReport, OutputCheck, RewriteReport, VerifyReport
from tests.conftest import W_, C, H, dense_model, run_command


def strict(text: str) -> dict:
    """Parse as strict JSON: ``Infinity`` / ``NaN``, which Python writes by default, are refused."""

    def refuse(name: str) -> float:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def no_candidates() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", H, W_, C])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", H, W_, C])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CASES = {
    # model, options -> verdict, status, verification, ok, exit code
    "passed": (dense_model, [], ("PASSED", "passed", "passed", True, 0)),
    "unchanged": (no_candidates, [], ("UNCHANGED", "unchanged", "passed", True, 0)),
    "unchanged, not verified": (no_candidates, ["--no-verify"], ("UNCHANGED", "unchanged", "not run", True, 0)),
    "done": (dense_model, ["--no-verify"], ("DONE", "not verified", "not run", True, 0)),
    "dry run": (dense_model, ["--dry-run"], ("DRY RUN", "dry run", "not run", True, 0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_report_says_what_the_run_amounts_to(case: str, tmp_path: Path) -> None:
    build, options, (verdict, status, verification, ok, code) = CASES[case]
    onnx.save(build(), tmp_path / "m.onnx")
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json", *options)
    assert r.returncode == code, r.stderr
    data = strict((tmp_path / "r.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert (data["verdict"], data["status"], data["verification"], data["ok"]) == (verdict, status, verification, ok)
    assert r.stdout.splitlines()[-1].startswith(f"{verdict}: ")  # the same word as the command's last line


def test_the_report_on_stdout_carries_the_verdict(tmp_path: Path) -> None:
    onnx.save(no_candidates(), tmp_path / "m.onnx")
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--report", "-")
    assert r.returncode == 0, r.stderr
    assert strict(r.stdout)["verdict"] == "UNCHANGED" and r.stderr.startswith("UNCHANGED: ")


def test_numbers_that_are_not_finite_are_strings() -> None:
    # An output onnxruntime could not produce is compared as an infinite error (verifier/run.py's failed()).
    check = OutputCheck("y", "float32", [1, 2], math.inf, math.nan, 2, 1e-5, 1e-4, False, problem="could not run")
    report = ConvertReport("m.onnx", "o.onnx", RewriteReport(), verify=VerifyReport(["CPUExecutionProvider"], outputs=[check]))
    data = strict(json.dumps(report.to_dict(), allow_nan=False))
    (out,) = data["verify"]["outputs"]
    assert (out["max_abs_error"], out["max_rel_error"], out["atol"]) == ("inf", "nan", 1e-5)
    assert (data["verdict"], data["status"], data["ok"]) == ("FAILED", "failed", False)
