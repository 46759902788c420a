"""A shape the certificate uses must be the one onnxruntime computes, not only the one onnx's shape inference says.

They disagree on some ops: a ConvTranspose with ``auto_pad`` SAME_LOWER and ``output_padding`` (inference 11x15,
onnxruntime 10x14), MaxPool and AveragePool with ``ceil_mode`` and pads (inference 5x5, onnxruntime 4x5). The
original multiplies a dense layer's output by ``Shape(t)[2]`` inside an If branch that random inputs never take;
a candidate that multiplies by inference's number instead computes something else there, which no numbers see.
It passed while the certificate folded ``Shape(t)`` from inference. ``t`` is computed three ways: from constants
(the certificate computes it in onnxruntime and takes its shape), from an input in the main graph (the verifier
checks the inferred shape against onnxruntime's run of the original and proves again without it) and from an
input inside the branch (no shape: the branch never runs). The tool's own conversion, which keeps the Shape
nodes, passes in every case; the candidate holding onnxruntime's number passes where the engine computed it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier import run, sessions
from converter.verifier.numbers.shapes import shape_nodes
from tests.conftest import run_command

C = K = 8
SOURCES = {  # op, its attributes, its input's shape, the extra weight's shape
    "convtranspose": (
        "ConvTranspose",
        {"strides": [2, 2], "auto_pad": "SAME_LOWER", "output_padding": [1, 1]},
        [1, 3, 5, 7],
        [3, 2, 3, 3],
    ),
    "maxpool": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, [1, 3, 7, 8], None),
    "averagepool": (
        "AveragePool",
        {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        [1, 3, 7, 8],
        None,
    ),
}
WHERE = ["constant", "main", "branch"]  # what t is computed from: constants, an input in the main graph, an input in the branch


def _source(source: str, src: str, rng: np.random.Generator) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    op, attrs, _, weight = SOURCES[source]
    inits = [numpy_helper.from_array(rng.standard_normal(weight).astype(np.float32), "t_w")] if weight else []
    nodes = [
        helper.make_node(op, [src, "t_w"] if weight else [src], ["t"], name="t_op", **attrs),
        helper.make_node("Shape", ["t"], ["ts"], name="shape"),
        helper.make_node("Gather", ["ts", "two"], ["t2"], axis=0, name="pick"),
        helper.make_node("Cast", ["t2"], ["k"], to=TensorProto.FLOAT, name="cast"),
    ]
    return nodes, [*inits, numpy_helper.from_array(np.array(2, np.int64), "two")]


def _slice_expression() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``k = float(ReduceSum(Slice([5, 6, 7], -10, -9, step -3)))``: onnxruntime's Slice gives ``[5]`` (an end of -1
    after clamping is before the first element), onnx's reference evaluator ``[]`` (numpy reads -1 as the last)."""
    ints = {"data": [5, 6, 7], "starts": [-10], "ends": [-9], "axes": [0], "steps": [-3]}
    nodes = [
        helper.make_node("Slice", list(ints), ["sl"], name="slice"),
        helper.make_node("ReduceSum", ["sl"], ["total"], keepdims=0, name="sum"),
        helper.make_node("Cast", ["total"], ["k"], to=TensorProto.FLOAT, name="cast"),
    ]
    return nodes, [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in ints.items()]


def _model(source: str, where: str, k: float | None) -> onnx.ModelProto:
    """The dense layer (a MatMul and an Add; with ``k`` given, the candidate: its Conv and Transposes, the branch's
    factor the constant ``k``) and the If whose then branch multiplies by ``Shape(t)[2]`` (by the Slice
    expression's value, for ``source`` "slice")."""
    rng = np.random.default_rng(0)
    vi = helper.make_tensor_value_info
    w, b = rng.standard_normal((C, K)).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    if source == "slice":
        src_shape, (fold, fold_inits) = [1], _slice_expression()
    else:
        src_shape = SOURCES[source][2]
        fold, fold_inits = _source(source, "src" if where == "constant" else "z", rng)
        if where == "constant":
            fold_inits.append(numpy_helper.from_array(rng.standard_normal(src_shape).astype(np.float32), "src"))
    if k is not None:
        fold, fold_inits = [], [numpy_helper.from_array(np.array(k, np.float32), "k")]
    in_branch = where != "main"
    then_branch = helper.make_graph(
        [*(fold if in_branch else []), helper.make_node("Mul", ["a", "k"], ["t_out"], name="t_mul")],
        "then",
        [],
        [vi("t_out", TensorProto.FLOAT, ["N", "H", "W", K])],
        fold_inits if in_branch else [],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["e_out"], name="e_relu")],
        "else",
        [],
        [vi("e_out", TensorProto.FLOAT, ["N", "H", "W", K])],
    )
    if k is None:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "b"], ["a"], name="add")]
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    else:
        nodes = [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
            helper.make_node("Conv", ["xt", "wc", "b"], ["ac"], kernel_shape=[1, 1], name="mm_conv"),
            helper.make_node("Transpose", ["ac"], ["a"], perm=[0, 2, 3, 1], name="to_nhwc"),
        ]
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T.reshape(K, C, 1, 1)), "wc"), numpy_helper.from_array(b, "b")]
    nodes += [
        *([] if in_branch else fold),
        helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0, name="rmax"),
        helper.make_node("Greater", ["mx", "thr"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="if"),
    ]
    inits += [*([] if in_branch else fold_inits), numpy_helper.from_array(np.array(1000, np.float32), "thr")]
    inputs = [vi("x", TensorProto.FLOAT, ["N", "H", "W", C])]
    if where != "constant":
        inputs.append(vi("z", TensorProto.FLOAT, src_shape))
    graph = helper.make_graph(nodes, "g", inputs, [vi("y", TensorProto.FLOAT, ["N", "H", "W", K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _dims(source: str) -> tuple[int, int]:
    """``Shape(t)[2]`` as onnx's shape inference says it and as onnxruntime computes it (the test's premise: they differ)."""
    op, attrs, src_shape, weight = SOURCES[source]
    vi = helper.make_tensor_value_info
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(weight).astype(np.float32), "w")] if weight else []
    node = helper.make_node(op, ["s", "w"] if weight else ["s"], ["t"], **attrs)
    graph = helper.make_graph([node], "probe", [vi("s", TensorProto.FLOAT, src_shape)], [vi("t", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output[0].type.tensor_type.shape.dim[2].dim_value
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"s": np.ones(src_shape, np.float32)})[0].shape[2]
    return int(inferred), int(actual)


def _verdict(tmp_path: Path, original: onnx.ModelProto, candidate: onnx.ModelProto) -> tuple[int, str]:
    onnx.save(original, tmp_path / "original.onnx")
    onnx.save(candidate, tmp_path / "candidate.onnx")
    r = run_command(tmp_path / "original.onnx", "--check", tmp_path / "candidate.onnx")
    return r.returncode, r.stdout + r.stderr


def _takes_the_branch(original: onnx.ModelProto, candidate: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """Both models' outputs on an input that takes the then branch (the one random inputs never take)."""
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 2, 3, C)).astype(np.float32)}
    feeds["x"][0, 0, 0, 0] = 2000
    if any(i.name == "z" for i in original.graph.input):
        feeds["z"] = np.ones([d.dim_value for d in original.graph.input[1].type.tensor_type.shape.dim], np.float32)
    options = ort.SessionOptions()  # as verification runs them: with its optimizations on, onnxruntime folds a
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Shape from the inferred shape
    run = [
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for m in (original, candidate)
    ]
    return run[0], run[1]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("source", list(SOURCES))
def test_a_candidate_holding_the_inferred_dim_never_passes(tmp_path: Path, source: str, where: str) -> None:
    inferred, actual = _dims(source)
    assert inferred != actual
    original, candidate = _model(source, where, None), _model(source, where, float(inferred))
    yo, yc = _takes_the_branch(original, candidate)
    assert np.allclose(yc / yo, inferred / actual)  # it is wrong where the branch is taken
    rc, out = _verdict(tmp_path, original, candidate)
    last = out.strip().splitlines()[-1]
    assert rc != 0 and not last.startswith("PASSED"), out
    if where == "main":  # onnxruntime's own shape contradicted the one the proof had used
        _, _, src_shape, weight = SOURCES[source]
        assert f"onnxruntime computes [1, {weight[1] if weight else src_shape[1]}, {actual}" in out, out


@pytest.mark.parametrize("k", [0.0, 5.0])
def test_a_constant_slice_with_a_negative_step_is_what_onnxruntime_computes(tmp_path: Path, k: float) -> None:
    original, candidate = _model("slice", "constant", None), _model("slice", "constant", k)
    yo, yc = _takes_the_branch(original, candidate)
    assert np.array_equal(yo, yc) == (k == 5.0)  # onnxruntime's value is 5; the reference evaluator's 0
    rc, out = _verdict(tmp_path, original, candidate)
    assert out.strip().splitlines()[-1].startswith("PASSED") == (k == 5.0) and (rc == 0) == (k == 5.0), out


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_candidate_holding_what_onnxruntime_computes_from_constants_passes(tmp_path: Path, source: str) -> None:
    _, actual = _dims(source)
    original, candidate = _model(source, "constant", None), _model(source, "constant", float(actual))
    yo, yc = _takes_the_branch(original, candidate)
    np.testing.assert_array_equal(yo, yc)
    rc, out = _verdict(tmp_path, original, candidate)
    assert rc == 0 and out.strip().splitlines()[-1].startswith("PASSED"), out


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("source", list(SOURCES))
def test_the_tools_own_conversion_keeping_the_shape_nodes_passes(tmp_path: Path, source: str, where: str) -> None:
    original = _model(source, where, None)
    result = converter.rewrite(original, layout="keep-all")
    assert len(result.report.layers) == 1
    rc, out = _verdict(tmp_path, original, result.model)
    assert rc == 0 and out.strip().splitlines()[-1].startswith("PASSED"), out
    if where == "main":  # the proof was made again without the shape onnxruntime contradicted
        assert "the proof was made again without that shape" in out, out


def _sessions_built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models verification builds onnxruntime sessions of, by their first node's op (a probe is cut down)."""
    built: list[str] = []
    real = sessions.make_session

    def counted(model: object, *args: object, **kwargs: object) -> object:
        built.append("session")
        return real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sessions, "make_session", counted)
    return built


@pytest.mark.parametrize("built_early", [True, False], ids=["built-while-proving", "built-after-the-proof"])
def test_the_shapes_are_checked_on_the_originals_own_session(monkeypatch: pytest.MonkeyPatch, built_early: bool) -> None:
    """No second session of the original: its verification session returns ``Shape(t)`` of what a proof may read
    (built while the proof is made) or of what it read (built after it, as for models past ``PARALLEL_BELOW``),
    and the candidate holding inference's number is still caught by onnxruntime's."""
    if not built_early:
        monkeypatch.setattr(run, "PARALLEL_BELOW", 0)
    inferred, actual = _dims("convtranspose")
    original = _model("convtranspose", "main", None)
    built = _sessions_built(monkeypatch)
    report = converter.verify(original, _model("convtranspose", "main", float(inferred)))
    assert report.verdict != "passed" and len(built) == 2, (report.verdict, built)
    assert any(f"onnxruntime computes [1, 2, {actual}" in n for n in report.notes), report.notes
    built.clear()
    assert converter.verify(original, converter.rewrite(original, layout="keep-all")).passed
    assert len(built) == 2


def test_a_shape_the_session_does_not_return_is_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the original's session was not told a tensor whose shape the proof read, a probe session computes it."""
    monkeypatch.setattr(run, "readable", lambda model: [])
    inferred, actual = _dims("convtranspose")
    built = _sessions_built(monkeypatch)
    report = converter.verify(_model("convtranspose", "main", None), _model("convtranspose", "main", float(inferred)))
    assert report.verdict != "passed" and len(built) == 3, (report.verdict, built)
    assert any(f"onnxruntime computes [1, 2, {actual}" in n for n in report.notes), report.notes


def test_the_shape_nodes_follow_the_graph_the_latest_tensor_first() -> None:
    """onnxruntime walks a graph from its leaves, the last first: a Shape node placed so runs right after the tensor
    it reads is made (in the graph's order, every tensor read would be kept until the last of them is made)."""
    original = _model("convtranspose", "main", None)
    names = [n.output[0] for n in original.graph.node if n.op_type in ("ConvTranspose", "MatMul", "Add")]
    body = sessions.with_outputs(original, [], sessions._latest_first(original.graph, shape_nodes(names)))
    nodes = onnx.load_from_string(body).graph.node
    assert [n.op_type for n in nodes[: len(original.graph.node)]] == [n.op_type for n in original.graph.node]
    made = {o: i for i, n in enumerate(original.graph.node) for o in n.output}
    added = [made[n.input[0]] for n in nodes[len(original.graph.node) :]]
    assert len(added) == 3 and added == sorted(added, reverse=True)
