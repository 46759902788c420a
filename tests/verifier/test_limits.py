"""Verification's limits: the memory budget counts every trial and every tensor kept, shapes are sane sizes.

``--trials N`` keeps the original model's outputs and layer tensors of every trial until the rewritten
model has run on them all; the budget once counted one trial's declared outputs, so N trials (or layer
tensors far larger than the outputs) went past ``--max-memory`` unnoticed. ``--input-shape`` sizes were
a product that a 0 dim made 0, whatever the other dims were. And a model whose Constant is past
protobuf's limit must reach onnxruntime through external data, as one whose weights are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.errors import InputError
from converter.files import save as saving
from converter.verifier import sessions
from tests.conftest import run_command
from tests.files.test_limits import LIMIT, dense_with_constant

C = K = 16
MiB = 1 << 20
# x [1, 512, 1024, 16] float32: 32 MiB; the layer's output as large; the model's output (a mean) tiny.
SHAPE = "x:1,512,1024,16"
BUDGET = "200M"  # one trial holds about 128 MiB (two trials 160 MiB): fits; eight trials hold about 352 MiB: do not


def reduced_dense() -> onnx.ModelProto:
    """A dense layer whose output is reduced to a [N, 1, 1, K] mean: the layer's tensors, which verification
    keeps for its numbers, are far larger than the model's output (the only size the old budget knew)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
            helper.make_node("Add", ["mm", "b"], ["dense"], name="bias"),
            helper.make_node("ReduceMean", ["dense"], ["y"], axes=[1, 2], keepdims=1),
        ],
        "reduced_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W", C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 1, K])],
        [
            numpy_helper.from_array(rng.standard_normal((C, K)).astype(np.float32) / 4, "w"),
            numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error:") and "Traceback" not in stderr, stderr
    return lines[0]


def test_trials_past_the_memory_budget_are_refused_in_one_line(tmp_path: Path) -> None:
    """Through the command: one trial (and the default two) fit the budget; eight do not, and nothing is written."""
    onnx.save(reduced_dense(), tmp_path / "m.onnx")
    args = ["--input-shape", SHAPE, "--max-memory", BUDGET]
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "one.onnx", *args, "--trials", "1", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "two.onnx", *args, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "eight.onnx", *args, "--trials", "8", timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    line = _one_line(r.stderr)
    assert "--max-memory" in line and "fewer --trials" in line and "over 8 trials" in line, line
    assert "over the 200.0 MiB budget" in line, line
    assert not (tmp_path / "eight.onnx").exists()


def test_the_budget_counts_the_layer_tensors_of_every_trial() -> None:
    """The library: what one trial keeps is measured (the layer's output, 32 MiB, not the model's 512-byte output)
    and multiplied by the trials kept: 2 x 32 MiB of inputs + (trials + 1) x 32 MiB."""
    model = reduced_dense()
    rewritten = converter.rewrite(model)
    shapes = {"x": [1, 512, 1024, C]}
    assert converter.verify(model, rewritten, input_shapes=shapes, trials=1, max_memory=129 * MiB).passed
    with pytest.raises(InputError, match=r"about 128\.0 MiB: 32\.0 MiB of outputs and layer tensors per trial"):
        converter.verify(model, rewritten, input_shapes=shapes, trials=1, max_memory=127 * MiB)
    with pytest.raises(InputError, match=r"about 192\.0 MiB: .* over 3 trials .* over the 190\.0 MiB budget") as e:
        converter.verify(model, rewritten, input_shapes=shapes, trials=3, max_memory=190 * MiB)
    assert "\n" not in str(e.value) and "--max-memory" in str(e.value)


def test_declared_outputs_are_counted_for_every_trial_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs whose size the model declares are refused before any model runs: 2 x inputs + (trials + 1) x outputs."""
    model = reduced_dense()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "H"
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "W"
    model.graph.node[-1].op_type = "Relu"  # y is the layer's output made positive: [N, H, W, K], 32 MiB
    del model.graph.node[-1].attribute[:]
    rewritten = converter.rewrite(model)

    def no_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a model ran before the budget was checked")

    monkeypatch.setattr(sessions.Runner, "run", no_run)
    with pytest.raises(InputError, match=r"about 352\.0 MiB of inputs and outputs at shapes .* over 8 trials .*fewer --trials"):
        converter.verify(model, rewritten, input_shapes={"x": [1, 512, 1024, C]}, trials=8, max_memory=200 * MiB)


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ((0, 99999999999999999999, 5, C), "dim 0 is 0, which leaves the input empty"),
        ((2, 0, 5, C), "dim 1 is 0, which leaves the input empty"),
        ((2, 99999999999999999999, 5, C), "more than any tensor can have"),
        ((2, -3, 5, C), "dim 1 is -3; a dim is at least 1"),
        ((2**32, 2**32, 2**32, C), "over the 4.0 GiB budget"),  # numpy's int64 product would wrap to 0
    ],
)
def test_input_shapes_that_are_empty_or_absurd_are_refused_by_the_library(tmp_path: Path, dims: tuple, message: str) -> None:
    model = reduced_dense()
    with pytest.raises(InputError, match=message) as e:
        converter.verify(model, converter.rewrite(model), input_shapes={"x": dims})
    assert "\n" not in str(e.value)
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(InputError, match=message):
        converter.convert(tmp_path / "m.onnx", tmp_path / "out.onnx", input_shapes={"x": dims})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_empty_declared_dim_does_not_make_a_huge_given_dim_free() -> None:
    """x is declared [0, N]: the size check counts the 0 as 1, so N = 2**62 is far over the budget."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, "N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, "N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match="over the 4.0 GiB budget"):
        converter.verify(model, model, input_shapes={"x": [0, 2**62]})


def test_a_session_of_a_model_with_a_large_constant_goes_through_external_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier's sessions count Constants as save does: past the (lowered) limit, onnxruntime reads the model
    from a file with external data, not from one serialized message."""
    monkeypatch.setattr(saving, "EXTERNAL_DATA_ABOVE", LIMIT)
    model = dense_with_constant("main")
    given: list[object] = []
    real = sessions.make_session

    def spy(source: object, *args: object, **kwargs: object) -> object:
        given.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(sessions, "make_session", spy)
    runner = sessions.Runner(model, ["CPUExecutionProvider"], ["dense"])
    assert len(given) == 1 and isinstance(given[0], str)  # a path: the model was written with external data
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 8)).astype(np.float32)
    got = runner.run({"x": x})
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got["y"], expected)


# ---------------------------------------------------------------------------------------------
# The slow tier: the command's peak memory, in a child


@pytest.mark.slow  # peak memory: a child's
def test_refused_trials_never_hold_more_than_one_trial(tmp_path: Path) -> None:
    """Eight trials are refused after the first has run: the refused run's peak stays near the one-trial run's
    (before, it kept all eight trials' 32 MiB layer outputs: about 220 MiB more)."""
    onnx.save(reduced_dense(), tmp_path / "m.onnx")
    args = ["--input-shape", SHAPE, "--max-memory", BUDGET]
    one = run_command(tmp_path / "m.onnx", "-o", tmp_path / "one.onnx", *args, "--trials", "1", child=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    eight = run_command(tmp_path / "m.onnx", "-o", tmp_path / "eight.onnx", *args, "--trials", "8", child=True, timeout=300)
    assert eight.returncode == 2 and "--max-memory" in _one_line(eight.stderr)
    assert one.maxrss is not None and eight.maxrss is not None
    print(f"peak RSS: one trial {one.maxrss / MiB:.0f} MiB, eight refused {eight.maxrss / MiB:.0f} MiB")
    assert eight.maxrss < one.maxrss + 64 * MiB, (one.maxrss / MiB, eight.maxrss / MiB)
