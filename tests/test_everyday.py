"""Everyday use (issue 15), through the command with its output piped: full-width tables, the verification's
numbers, the op table, progress, --version and ``dense2conv``, nothing to rewrite, polygraphy's shape syntax, and
onnx-graphsurgeon graphs through the Python API.

The command runs in this process (tests/conftest.py's ``run_command``, stdout and stderr on files as a pipe would
have them); in a child where that is the point: the installed ``dense2conv`` script, progress on a terminal."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import converter
from converter.cli import _round_up
from converter.verifier.numbers.outputs import compare
from models.graphs import convnext_block
from tests.conftest import BIN, CONVERT, W_, C, CliResult, H, dense_model, run_command, with_output_shapes

LONG = "a_tensor_name_long_enough_that_no_80_column_table_could_hold_it_whole_" * 2


def run(*args: str | Path, script: str = "convert", child: bool = False) -> CliResult:
    """The command with stdout and stderr piped. COLUMNS=40: piped output must not heed a terminal width."""
    return run_command(*args, script=script, env={"COLUMNS": "40"}, child=child)


def assert_full_width(stdout: str) -> None:
    """No cell cut with an ellipsis, and no table row wrapped: every line of a table has the table's width."""
    assert "…" not in stdout, stdout
    block: list[str] = []
    for line in [*stdout.splitlines(), ""]:
        if line[:1] in "┏┃┡│└":
            block.append(line)
        elif block:
            assert len({len(row) for row in block}) == 1, "\n".join(block)
            block = []


def noisy_wide_model() -> onnx.ModelProto:
    """A dense layer on 1x32x32x15 under a long node name, beside a random output under a long name (it fails)."""
    model = dense_model(x_shape=(1, 32, 32, 15), weight_shape=(15, 6))
    model.graph.node[0].name = LONG
    model.graph.node.append(helper.make_node("RandomNormalLike", ["x"], [LONG], dtype=TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info(LONG, TensorProto.FLOAT, [1, 32, 32, 15]))
    return with_output_shapes(model)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "dense.onnx"
    onnx.save(dense_model(x_shape=("N", H, W_, C)), path)
    return path


@pytest.fixture
def noisy_file(tmp_path: Path) -> Path:
    path = tmp_path / "noisy.onnx"
    onnx.save(noisy_wide_model(), path)
    return path


# --- 1. piped output is full width -------------------------------------------------------------


def test_piped_output_is_neither_cut_nor_wrapped(noisy_file: Path, tmp_path: Path) -> None:
    r = run(noisy_file, "-o", tmp_path / "o.onnx")
    assert r.returncode == 1, r.stdout + r.stderr
    assert_full_width(r.stdout)
    fail_row = next(line for line in r.stdout.splitlines() if line.startswith(f"│ {LONG} "))
    assert "│ 1x32x32x15 │" in fail_row and re.search(r"│ FAIL \d+ of 30720 \((100|>99\.9|\d\d(\.\d)?)%\) │$", fail_row)
    r = run(noisy_file, "--dry-run", "-v")
    assert r.returncode == 0, r.stderr
    assert_full_width(r.stdout)
    assert any(line.startswith(f"│ main  │ {LONG} │") and "bias folded" in line for line in r.stdout.splitlines())


# --- 2. the verification table -----------------------------------------------------------------


def test_a_failing_output_says_how_many_where_and_what_tolerance_would_pass(noisy_file: Path, tmp_path: Path) -> None:
    r = run(noisy_file, "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith(f"  {LONG}: "))
    assert re.search(r": \d+ of 30720 elements \([^)]+%\) failed over 2 trials; worst element at \[0, \d+, \d+, \d+\]; ", line)
    assert "would pass with --atol " in line and ", or with --atol 0 --rtol " in line
    noise = next(o for o in json.loads((tmp_path / "r.json").read_text())["verify"]["outputs"] if o["name"] == LONG)
    assert f"worst element at [{', '.join(map(str, noise['worst_index']))}]" in line
    assert f"--atol {_round_up(noise['max_abs_error'])}," in line
    # The tolerance line says how the default was derived (compare.py's end_to_end_atol), or that it was given.
    assert (
        "  tolerance: an element fails past atol + rtol x |original|; rtol 0.0001 (float32 default); atol 1e-05 "
        "(float32 default) x max(1, rms of the output) x max(1, sqrt(channels of the rewritten layers) / 32), "
        "at least 4x the sum of their rounding bounds"
    ) in r.stdout.splitlines()
    r = run(noisy_file, "-o", tmp_path / "o.onnx", "--atol", "0.001")
    assert "  tolerance: an element fails past atol + rtol x |original|; rtol 0.0001 (float32 default); atol 0.001 (--atol)" in (
        r.stdout.splitlines()
    )


def test_the_worst_element_is_the_one_furthest_past_the_rule_and_the_printed_tolerance_passes() -> None:
    ref = np.array([[100.0, 1.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
    actual = ref + np.array([[0.02, 0.0, 0.0], [0.0, 0.015, 0.0]], np.float32)
    check = compare("y", actual, ref, 1e-5, 1e-4)
    # 0.02 at 100 is 0.01 past the rule; 0.015 at 1 is 0.0149 past it: the second is the worst.
    assert not check.passed and check.mismatched == 2 and check.worst_index == [1, 1]
    assert compare("y", actual, ref, float(_round_up(check.max_abs_error)), 1e-4).passed
    assert compare("y", actual, ref, 0.0, float(_round_up(check.max_rel_error))).passed
    assert [_round_up(x) for x in (0.0123, 4.1, 4.2, 650.0001)] == ["0.013", "4.1", "4.2", "6.6e+02"]


def test_verbose_shows_every_candidate(model_file: Path, tmp_path: Path) -> None:
    r = run(model_file, "-o", tmp_path / "o.onnx", "-v")
    assert r.returncode == 0, r.stderr
    assert "Candidates" in r.stdout and "rewrite (matmul_add_to_conv)" in r.stdout
    assert "Candidates" not in run(model_file, "-o", tmp_path / "p.onnx").stdout


# --- 3. the op table, sizes and the signature --------------------------------------------------


def test_op_table_has_a_delta_the_sizes_and_the_signature(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    r = run(model_file, "-o", out)
    assert r.returncode == 0, r.stderr
    assert_full_width(r.stdout)
    lines = r.stdout.splitlines()
    assert lines[1] == f"Signature: x float32 (N,{H},{W_},{C}) -> y float32 (N,{H},{W_},6)"
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]] for line in lines if line.startswith("│ ")}
    assert rows["MatMul"] == ["1", "0", "-1"] and rows["Transpose"] == ["0", "2", "+2"] and rows["Conv"] == ["0", "1", "+1"]
    before, after = model_file.stat().st_size, out.stat().st_size
    assert f"Size: {before} B -> {after} B (+{after - before} B)" in lines


def test_size_counts_external_data(tmp_path: Path) -> None:
    model = dense_model(x_shape=(1, H, 7, 256), weight_shape=(256, 64), bias_shape=(64,))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    r = run(tmp_path / "ext.onnx", "-o", tmp_path / "o.onnx", "--dry-run")
    assert r.returncode == 0, r.stderr
    total = (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    size = total / 1024
    assert f"Size: {size:.3g} KiB (model files and their external data); nothing written" in r.stdout.splitlines()


# --- 4. progress -------------------------------------------------------------------------------


def _stderr_on_a_terminal(*args: str | Path) -> tuple[int, str, bytes]:
    """Run with stderr on a pseudo-terminal and stdout piped: (status, stdout, what the terminal got).

    The terminal is read while the command runs: a pty holds a few KiB, and the spinner redraws ten times a
    second, so on a loaded machine a long run would otherwise fill it and block the command.
    """
    import pty
    import threading

    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "TERM": "xterm"}
    p = subprocess.Popen([CONVERT, *map(str, args)], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    stdout, _ = p.communicate(timeout=600)
    reader.join(timeout=60)
    os.close(master)
    return p.returncode, stdout.decode(), b"".join(chunks)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_progress_counts_steps_on_the_terminal_and_leaves_piped_stdout_clean(model_file: Path, tmp_path: Path) -> None:
    rc, stdout, seen = _stderr_on_a_terminal(model_file, "-o", tmp_path / "a.onnx")
    assert rc == 0
    for step in (
        b"] rewriting",
        b"] rewriting: candidate 1 of 1",  # the rules' own count, inside the rewriting step
        b"] verifying: running the original model (trial 2 of 2)",
        b"] saving",
    ):
        assert step in seen, seen
    assert seen.rstrip().endswith(b"\x1b[2K")  # cleared when done: the line does not stay on the terminal
    for word in ("] verifying", "] rewriting", "\x1b", "\r"):  # the progress line's pieces
        assert word not in stdout, stdout
    assert stdout.splitlines()[-1].startswith("PASSED")
    rc, stdout, seen = _stderr_on_a_terminal(model_file, "-o", tmp_path / "b.onnx", "-q")
    assert rc == 0 and seen == b"" and stdout.startswith("PASSED") and len(stdout.splitlines()) == 1
    r = run(model_file, "-o", tmp_path / "c.onnx")  # both piped
    assert r.returncode == 0 and r.stderr == "" and "verifying" not in r.stdout


# --- 5. --version, converter.__version__ and the dense2conv script ------------------------------


def test_version_and_the_dense2conv_script(model_file: Path, tmp_path: Path) -> None:
    version = importlib.metadata.version("dense2conv")
    assert converter.__version__ == version
    assert run("--version").stdout == f"convert (dense2conv) {version}\n"
    r = run("--version", script="dense2conv")
    assert r.returncode == 0 and r.stdout == f"dense2conv (dense2conv) {version}\n"
    r = run(tmp_path / "missing.onnx", script="dense2conv")
    assert r.returncode == 2 and r.stderr.startswith("dense2conv: error: ") and len(r.stderr.splitlines()) == 1
    # The installed script under its own name (a child: the script pip wrote, as users run it).
    r = run(model_file, "-o", tmp_path / "o.onnx", script="dense2conv", child=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("PASSED: rewrote 1 of 1 candidates"), r.stderr
    assert onnx.load(tmp_path / "o.onnx").graph.node[1].op_type == "Conv"


# --- 6. nothing to rewrite ---------------------------------------------------------------------


def test_nothing_to_rewrite_says_so_and_writes_the_model_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(dense_model(weight="runtime", x_shape=(1, H, W_, C)), path)
    r = run(path, "-o", tmp_path / "o.onnx")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == (
        f"UNCHANGED: nothing to rewrite (1 candidate skipped: 1 x weight_not_constant); wrote {tmp_path / 'o.onnx'}, "
        "the model as it was"
    )
    assert (tmp_path / "o.onnx").read_bytes() == path.read_bytes()
    r = run(path, "-o", tmp_path / "n.onnx", "--no-verify", "-q")
    assert r.returncode == 0 and r.stdout.startswith("UNCHANGED: ") and r.stdout.rstrip().endswith("not verified (--no-verify)")
    relu = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H, W_, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H, W_, C])],
    )
    onnx.save(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    r = run(tmp_path / "relu.onnx", "-o", tmp_path / "r.onnx", "-q")
    assert r.returncode == 0 and "nothing to rewrite (no MatMul or Gemm" in r.stdout and (tmp_path / "r.onnx").exists()


# --- 7. --no-verify ----------------------------------------------------------------------------


def test_no_verify_ends_with_done(model_file: Path, tmp_path: Path) -> None:
    r = run(model_file, "-o", tmp_path / "o.onnx", "--no-verify")
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("DONE: rewrote 1 of 1 candidates, not verified")
    assert_full_width(r.stdout)


# --- 8. polygraphy's shape syntax --------------------------------------------------------------


@pytest.mark.parametrize("spec", [f"x:[3,{H},{W_},{C}]", f"x:3,{H},{W_},{C}", f"x:[3, {H}, {W_}, {C}]"])
def test_input_shape_in_either_syntax(model_file: Path, tmp_path: Path, spec: str) -> None:
    r = run(model_file, "-o", tmp_path / "o.onnx", "--input-shape", spec, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verify"]["inputs"][0]["shape"] == [3, H, W_, C]


@pytest.mark.parametrize("spec", ["x:[3,3,5,4", "x:[]", "x:[3,a]", "[3,3,5,4]"])
def test_bad_shape_syntax_is_one_line_and_exit_2(model_file: Path, tmp_path: Path, spec: str) -> None:
    r = run(model_file, "-o", tmp_path / "o.onnx", "--input-shape", spec)
    assert r.returncode == 2 and r.stdout == "" and not (tmp_path / "o.onnx").exists()
    assert len(r.stderr.splitlines()) == 1 and "expected NAME:DIM,DIM,... or NAME:[DIM,DIM,...]" in r.stderr


# --- 9. onnx-graphsurgeon ----------------------------------------------------------------------


@pytest.fixture
def gs():
    return pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is the [gs] extra: pip install -e '.[gs]'")


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: dense_model(x_shape=("N", H, W_, C)), (2, H, W_, C)),  # NHWC: N=2, H != W
        (lambda: convnext_block(c=8, h=5, w=7), (2, 8, 5, 7)),  # NCHW around the permutes and Linears
    ],
    ids=["dense", "convnext_block"],
)
def test_a_gs_graph_in_gives_a_gs_graph_out(gs, build, shape) -> None:
    model = build()
    graph = gs.import_onnx(model)
    ops_before = [n.op for n in graph.nodes]
    result = converter.rewrite(graph)
    assert isinstance(result.model, gs.Graph) and result.report.rewritten >= 1
    assert [n.op for n in graph.nodes] == ops_before  # the caller's graph is not modified
    assert "Conv" in [n.op for n in result.model.nodes] and "MatMul" not in [n.op for n in result.model.nodes]
    exported = gs.export_onnx(result.model)
    onnx.checker.check_model(exported)
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for want, got in zip(_outputs(model, feeds), _outputs(exported, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Verification proves the gs round trip: the graph as gs gave it vs the rewritten one.
    check = converter.verify(gs.export_onnx(graph), exported, layers=result.report.layers)
    assert check.verdict == "passed", check.to_dict()


def test_rewrite_takes_a_path(model_file: Path) -> None:
    want = converter.rewrite(onnx.load(model_file))
    for given in (model_file, str(model_file)):
        got = converter.rewrite(given)
        assert isinstance(got.model, onnx.ModelProto)
        assert got.model.SerializeToString(deterministic=True) == want.model.SerializeToString(deterministic=True)
    with pytest.raises(TypeError, match="takes an onnx.ModelProto, a path or a gs.Graph, not int"):
        converter.rewrite(42)


def test_graphsurgeon_is_imported_only_by_its_module() -> None:
    """ruff's banned-api rule (pyproject.toml) refuses onnx_graphsurgeon anywhere in the package but converter/gs.py."""
    ruff = shutil.which("ruff", path=str(BIN)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff comes with the test extras")
    root = Path(__file__).resolve().parent.parent
    for name, banned in (("converter/graph.py", True), ("converter/gs.py", False)):
        r = subprocess.run(
            [ruff, "check", "--stdin-filename", name, "--select", "TID251", "-"],
            input="import onnx_graphsurgeon\n",
            capture_output=True,
            text=True,
            cwd=root,
            timeout=60,
        )
        assert (r.returncode != 0 and "TID251" in r.stdout) is banned, r.stdout + r.stderr
    code = "import sys, converter, converter.cli; assert 'onnx_graphsurgeon' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0  # only a gs.Graph brings it
