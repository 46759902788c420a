"""compose_shape_reads: ``Gather(Gather(Shape(a), perm), i)`` -> ``Gather(Shape(a), perm[i])``.

When the layout moves a tensor whose shape the export reads (TorchScript's ``x.shape[1]``), the Shape handler
reads it as ``Gather(Shape(a), perm)``; the dims picked out of that compose into one Gather, which onnxruntime
folds where those dims are known (a shifted window's attention mask on a dynamic batch stays a constant). A
scalar index keeps its scalar (the runtime's Concat after an Unsqueeze checks the rank).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

import converter
from converter.graph import count_ops
from tests.rewriter.cleanup._harness import run

N, C, H, W, K = 2, 4, 5, 7, 6


def _model() -> onnx.ModelProto:
    """x NCHW -> NHWC -> a dense layer -> NCHW; the NHWC tensor's H (scalar index) and W (1-D index) read out of its
    shape into a second output."""
    rng = np.random.default_rng(3)
    inits = [
        onnx.numpy_helper.from_array((rng.standard_normal((C, K)) * 0.5).astype(np.float32), "w"),
        onnx.numpy_helper.from_array((rng.standard_normal(K) * 0.1 + 0.05).astype(np.float32), "b"),
        onnx.numpy_helper.from_array(np.array(1, np.int64), "one"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "two"),
        onnx.numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y"]),
        helper.make_node("Transpose", ["y"], ["out"], perm=[0, 3, 1, 2]),
        helper.make_node("Shape", ["t"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["h"], axis=0),
        helper.make_node("Gather", ["s", "two"], ["w_dim"], axis=0),
        helper.make_node("Unsqueeze", ["h", "axis0"], ["h1"]),
        helper.make_node("Concat", ["h1", "w_dim"], ["hw"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, W])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", K, H, W]),
            helper.make_tensor_value_info("hw", TensorProto.INT64, [2]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _gathers_of_gathers(model: onnx.ModelProto) -> int:
    made = {o: n for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Gather" and getattr(made.get(n.input[0]), "op_type", "") == "Gather")


def test_dims_read_out_of_a_moved_tensor_are_one_gather_of_its_shape() -> None:
    model = _model()
    result = converter.rewrite(model)
    assert result.report.rewritten == 1 and count_ops(result.model.graph).get("Transpose", 0) == 0
    assert result.report.cleanup["changes"].get("compose_shape_reads") == 2
    assert _gathers_of_gathers(result.model) == 0
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((N, C, H, W)).astype(np.float32)}
    want, got = run(model, feeds), run(result.model, feeds)
    assert got[1].tolist() == want[1].tolist() == [H, W]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    check = converter.verify(model, result)
    assert check.passed and check.structure["proved"], check.to_dict()


def test_without_the_pass_the_shape_is_read_through_two_gathers(monkeypatch) -> None:  # noqa: ANN001
    import converter.rewriter.run as rewrite_run

    monkeypatch.setattr(rewrite_run, "CLEANUP", tuple(p for p in rewrite_run.CLEANUP if p.name != "compose_shape_reads"))
    result = converter.rewrite(_model())
    assert result.report.rewritten == 1 and _gathers_of_gathers(result.model) == 2
