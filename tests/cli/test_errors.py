"""Every failure is one line and an exit code (issue 20, item 8): the classes that reached a traceback, through
the command. In this process (``main(argv)``) where a child is not the point; a child for resource limits,
HOME and the standard streams."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.cli import EXIT_INTERNAL, EXIT_USAGE, main
from tests.conftest import CONVERT, W_, C, CliResult, H, dense_model, run_command
from tests.test_hostile import snapshot

# Tests that hold once a change outside the command's files is made (the exact diffs are in the report that came
# with these tests); strict, so that the change shows here as an unexpected pass: then remove the mark.


def one_line(r: CliResult, code: int, starts: str) -> str:
    """The run ended with ``code`` and exactly one line on stderr, beginning ``starts``; no traceback. Returns it."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), r.stderr
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(dense_model(x_shape=("N", H, W_, C)), path)
    return path


# ---------------------------------------------------------------------------------------------
# Paths with no name, the empty path


@pytest.mark.parametrize("where", [".", "/", "sub/.."])
def test_an_input_with_no_name_needs_an_output_path(where: str, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    before = snapshot(tmp_path)
    r = run_command(where, cwd=tmp_path)
    line = one_line(r, EXIT_USAGE, "convert: error: ")
    assert line == f"convert: error: {where}: has no file or folder name to name the output after; give an output path (-o)"
    assert snapshot(tmp_path) == before


def test_the_empty_input_path(tmp_path: Path) -> None:
    r = run_command("", cwd=tmp_path)
    assert one_line(r, EXIT_USAGE, "convert: error: ") == (
        "convert: error: argument input: the input path is empty (see convert --help)"
    )


def test_a_negative_seed(model: Path) -> None:
    r = run_command(model, "--seed", "-1")
    one_line(r, EXIT_USAGE, "convert: error: argument --seed: must be 0 or more")


# ---------------------------------------------------------------------------------------------
# Empty tensors: a 0 in --input-shape, a zero-size array in --inputs, a dense layer with K = 0


def _zero_batch(model: Path, how: str) -> list[str | Path]:
    if how == "--input-shape":
        return [model, "-o", model.with_name("o.onnx"), "--input-shape", f"x:0,{H},{W_},{C}"]
    np.savez(model.with_name("zero.npz"), x=np.zeros((0, H, W_, C), np.float32))
    return [model, "-o", model.with_name("o.onnx"), "--inputs", model.with_name("zero.npz")]


@pytest.mark.parametrize("how", ["--input-shape", "--inputs"])
def test_an_empty_input_is_one_line(model: Path, how: str) -> None:
    args = _zero_batch(model, how)
    before = snapshot(model.parent)
    r = run_command(*args)
    line = one_line(r, EXIT_USAGE, "convert: error: ")
    assert "leaves the input empty" in line
    assert snapshot(model.parent) == before


def test_a_dense_layer_with_no_output_channels_is_declined(tmp_path: Path) -> None:
    path = tmp_path / "k0.onnx"
    onnx.save(dense_model(x_shape=("N", H, W_, C), weight_shape=(C, 0), bias=None), path)
    r = run_command(path, "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines()[-1].startswith("UNCHANGED: nothing to rewrite (1 candidate skipped: 1 x zero_size)")
    (decision,) = json.loads((tmp_path / "r.json").read_text())["rewrite"]["decisions"]
    assert decision["reason"] == "zero_size" and "K = 0" in decision["detail"]


def test_an_integer_dense_layer_with_no_output_channels_is_declined(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", H, W_, C])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["N", H, W_, 0])
    w = numpy_helper.from_array(np.zeros((C, 0), np.uint8), "w")
    zero = numpy_helper.from_array(np.array(3, np.uint8), "x_zero")
    node = helper.make_node("MatMulInteger", ["x", "w", "x_zero"], ["y"], name="dense")
    graph = helper.make_graph([node], "g", [x], [y], [w, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "k0.onnx")
    r = run_command(tmp_path / "k0.onnx", "-o", tmp_path / "o.onnx")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines()[-1].startswith("UNCHANGED: nothing to rewrite (1 candidate skipped: 1 x zero_size)")


# ---------------------------------------------------------------------------------------------
# The catch-all: what the command did not expect is one line, exit 4, and -v has the traceback


def test_an_unexpected_error_is_one_line_naming_it(model: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:  # noqa: ANN001
    import converter.pipeline

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something no one expected\nand its second line")

    monkeypatch.setattr(converter.pipeline, "convert", broken)
    assert main([str(model), "-o", str(model.with_name("o.onnx"))]) == EXIT_INTERNAL
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "convert: internal error: RuntimeError: something no one expected; nothing was written "
        "(a bug in convert; run it again with -v for the traceback)"
    ]
    assert main([str(model), "-o", str(model.with_name("o.onnx")), "-v"]) == EXIT_INTERNAL
    err = capfd.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and err[-1].startswith("convert: internal error: RuntimeError")


def test_an_unexpected_error_after_the_work_says_what_was_written(
    model: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd,  # noqa: ANN001
) -> None:
    import converter.cli.render

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("column")

    monkeypatch.setattr(converter.cli.render, "show", broken)
    out = model.with_name("o.onnx")
    assert main([str(model), "-o", str(out)]) == EXIT_INTERNAL
    err = capfd.readouterr().err.splitlines()
    assert err == [
        f"convert: internal error: KeyError: 'column'; {out} was written (a bug in convert; run it again with -v for the traceback)"
    ]
    assert out.exists()


# ---------------------------------------------------------------------------------------------
# A write that fails under `ulimit -f` is a write error, exit 2, and nothing is left half-written


def _large(tmp_path: Path) -> Path:
    path = tmp_path / "big.onnx"  # 512 KiB of weights
    onnx.save(dense_model(x_shape=("N", 3, 5, 256), weight_shape=(256, 512), bias_shape=(512,)), path)
    return path


@pytest.mark.slow
def test_a_file_size_limit_on_the_output_is_a_write_error(tmp_path: Path) -> None:
    path = _large(tmp_path)
    before = snapshot(tmp_path)
    r = run_command(path, "-o", tmp_path / "o.onnx", "--no-verify", child=True, limits={resource.RLIMIT_FSIZE: 400 << 10})
    assert one_line(r, EXIT_USAGE, "convert: error: ") == f"convert: error: {tmp_path / 'o.onnx'}: cannot write (File too large)"
    assert snapshot(tmp_path) == before  # no partial file, no temporary file


@pytest.mark.slow
def test_a_file_size_limit_during_verification_is_not_a_mismatch(tmp_path: Path) -> None:
    path = _large(tmp_path)
    before = snapshot(tmp_path)
    r = run_command(path, "-o", tmp_path / "o.onnx", child=True, limits={resource.RLIMIT_FSIZE: 400 << 10})
    line = one_line(r, EXIT_USAGE, "convert: error: cannot write verification's temporary files")
    assert line.endswith("(File too large)")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# What libraries print on their own: onnxruntime's telemetry warning when HOME is not writable


@pytest.mark.slow
def test_onnxruntime_warnings_on_import_do_not_reach_the_terminal(model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_bytes(b"")  # nothing can be made under it, whoever runs the test
    probe = subprocess.run(
        [sys.executable, "-c", "import onnxruntime"], env={**os.environ, "HOME": str(home)}, capture_output=True, timeout=120
    )
    if not probe.stderr:
        pytest.skip("this onnxruntime prints nothing on import when HOME is not writable")
    r = run_command(model, "-o", tmp_path / "o.onnx", "-q", env={"HOME": str(home)}, child=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("PASSED")
    r = run_command("--help", env={"HOME": str(home)}, child=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ---------------------------------------------------------------------------------------------
# A closed or full stdout: the work's status stands, one line on stderr (issue 24, item 5)


def _with_stdout(stdout: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed command with stdout closed ("closed") or on /dev/full ("full")."""
    if stdout == "closed":
        return subprocess.run(
            [str(CONVERT), *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            preexec_fn=lambda: os.close(1),
        )
    with open("/dev/full", "w") as full:
        return subprocess.run([str(CONVERT), *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["closed", "full"])
@pytest.mark.parametrize("quiet", [False, True], ids=["summary", "-q"])
def test_a_stdout_that_cannot_take_the_summary_leaves_the_status(model: Path, tmp_path: Path, stdout: str, quiet: bool) -> None:
    out = tmp_path / "o.onnx"
    r = _with_stdout(stdout, model, "-o", out, *(["-q"] if quiet else []))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    cause = "stdout is closed" if stdout == "closed" else "cannot write to stdout (No space left on device)"
    assert len(lines) == 1 and lines[0].startswith(f"convert: {cause}; PASSED: rewrote 1 of 1 candidates"), r.stderr
    assert onnx.load(out).graph.node  # the work stands


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_a_json_report_that_cannot_be_delivered_is_an_error(model: Path, tmp_path: Path, stdout: str) -> None:
    out = tmp_path / "o.onnx"
    r = _with_stdout(stdout, model, "-o", out, "--report", "-")
    assert r.returncode == EXIT_USAGE, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error: cannot write the JSON report to stdout ("), r.stderr
    assert lines[0].endswith(f"); the model was written to {out}")


@pytest.mark.slow
def test_a_mismatch_keeps_its_status_on_a_full_stdout(model: Path, tmp_path: Path) -> None:
    """FAILED stays 1 when the summary cannot be shown."""
    code = (
        "import sys, tests.bugs as b; b.patch_rewrite('channels_reversed'); import converter.cli as c; "
        "rc = c.main(); sys.exit(rc if b.INJECTED else 99)"
    )
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [sys.executable, "-c", code, str(model), "-o", str(tmp_path / "o.onnx")],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("convert: cannot write to stdout (No space left on device); FAILED:"), r.stderr
