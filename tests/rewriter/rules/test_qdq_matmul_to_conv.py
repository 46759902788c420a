"""QDQ MatMul(+Add) -> Transpose, QuantizeLinear, DequantizeLinear, Conv of a DequantizeLinear weight, Transpose.

Hand-built QDQ graphs in every signedness, granularity and zero-point kind, proved by structure (op
counts, the quantized tensors bit for bit, the axis moved) and numbers (onnxruntime, the verifier's
certificate and layer checks), and every decline by its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from converter.verifier.certificate.walk import certify
from tests.conftest import W_, C, H, K, N, assert_rewritten, with_output_shapes

OPSET = 17


@dataclass(frozen=True)
class Q:
    """One quantized dense layer: how its weight (and activation) are quantized, and what follows it."""

    signed: bool = True
    per_channel: bool = True
    symmetric: bool = True
    activation: str = "qdq"  # qdq | none | shared (the pair also feeds a graph output)
    bias: str = "none"  # none | float | int32
    output_q: bool = False  # the layer's output goes through QuantizeLinear -> DequantizeLinear
    seed: int = 0


def _quantize(w: np.ndarray, q: Q, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(integers, scale, zero point) of ``w`` [C, K], per output channel or per tensor."""
    lo, hi = (-128, 127) if q.signed else (0, 255)
    dtype = np.int8 if q.signed else np.uint8
    shape = (w.shape[1],) if q.per_channel else ()
    amax = np.abs(w).max(axis=0) if q.per_channel else np.abs(w).max()
    scale = np.asarray(amax / 127.0, np.float32).reshape(shape)
    if q.symmetric:
        zero = np.full(shape, 0 if q.signed else 128, dtype)
    else:
        zero = rng.integers(-20 if q.signed else 100, 20 if q.signed else 156, size=shape).astype(dtype)
    ints = np.clip(np.round(w / scale) + zero.astype(np.int32), lo, hi).astype(dtype)
    return ints, scale, zero


def qdq_dense(q: Q = Q(), c: int = C, k: int = K) -> onnx.ModelProto:
    rng = np.random.default_rng(q.seed)
    inits, nodes = [], []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    w_q, w_s, w_z = _quantize(rng.standard_normal((c, k)).astype(np.float32) / np.sqrt(c), q, rng)
    axis = {"axis": 1} if q.per_channel else {}
    nodes.append(helper.make_node("DequantizeLinear", [init("wq", w_q), init("ws", w_s), init("wz", w_z)], ["w"], "w_dq", **axis))
    x_scale = np.float32(0.05)
    a_dtype = np.int8 if q.signed else np.uint8
    x = "x"
    outputs = []
    if q.activation != "none":
        zx = init("xz", np.array(3 if q.signed else 131, a_dtype))
        nodes.append(helper.make_node("QuantizeLinear", ["x", init("xs", np.array(x_scale)), zx], ["xq"], "x_q"))
        nodes.append(helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"], "x_dq"))
        x = "xdq"
        if q.activation == "shared":
            nodes.append(helper.make_node("Relu", ["xdq"], ["side"], "side"))
            outputs.append("side")
    nodes.append(helper.make_node("MatMul", [x, "w"], ["y"], "matmul"))
    y = "y"
    if q.bias == "float":
        nodes.append(helper.make_node("Add", ["y", init("b", (rng.standard_normal(k) * 0.1).astype(np.float32))], ["z"], "bias"))
        y = "z"
    elif q.bias == "int32":
        b_scale = (x_scale * w_s).astype(np.float32)
        b_q = np.round(rng.standard_normal(k) * 0.1 / b_scale).astype(np.int32)
        b_axis = {"axis": 0} if q.per_channel else {}
        b_zero = np.zeros(b_scale.shape, np.int32)
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [init("bq", b_q), init("bs", b_scale), init("bz", b_zero)], ["b"], "b_dq", **b_axis
            )
        )
        nodes.append(helper.make_node("Add", ["y", "b"], ["z"], "bias"))
        y = "z"
    if q.output_q:
        z = init("oz", np.array(0 if q.signed else 128, a_dtype))
        nodes.append(helper.make_node("QuantizeLinear", [y, init("os", np.array(np.float32(0.04))), z], ["oq"], "out_q"))
        nodes.append(helper.make_node("DequantizeLinear", ["oq", "os", "oz"], ["out"], "out_dq"))
        y = "out"
    graph = helper.make_graph(
        nodes,
        "qdq_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", H, W_, c])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in [y, *outputs]],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))


def _conv_weight(result: converter.RewriteResult) -> tuple[onnx.NodeProto, np.ndarray]:
    """The Conv's weight DequantizeLinear and its integer data."""
    graph = result.model.graph
    conv = next(n for n in graph.node if n.op_type == "Conv")
    dq = next(n for n in graph.node if n.output[0] == conv.input[1])
    assert dq.op_type == "DequantizeLinear"
    inits = {t.name: t for t in graph.initializer}
    return dq, numpy_helper.to_array(inits[dq.input[0]])


CASES = [
    Q(signed=s, per_channel=p, symmetric=y, seed=i)
    for i, (s, p, y) in enumerate((s, p, y) for s in (True, False) for p in (True, False) for y in (True, False))
]


@pytest.mark.parametrize(
    "q",
    CASES,
    ids=lambda q: f"{'s8' if q.signed else 'u8'}-{'channel' if q.per_channel else 'tensor'}-{'sym' if q.symmetric else 'asym'}",
)
def test_quantized_weight_moves_bit_for_bit(q: Q) -> None:
    model = qdq_dense(q)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {"Transpose": 2, "QuantizeLinear": 1, "DequantizeLinear": 2, "Conv": 1})
    dq, ints = _conv_weight(result)
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wq"))
    assert ints.dtype == original.dtype and ints.shape == (K, C, 1, 1)
    assert ints.reshape(K, C).T.tobytes() == original.tobytes()  # the integers, moved and not changed
    assert list(dq.input[1:]) == ["ws", "wz"]  # the same scale and zero point tensors
    axis = [helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"]
    assert axis == ([0] if q.per_channel else [])
    # The activation's pair sits between the layout Transpose and the Conv, as QDQ fusion expects.
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    producers = {o: n for n in result.model.graph.node for o in n.output}
    chain = [producers[conv.input[0]].op_type, producers[producers[conv.input[0]].input[0]].op_type]
    assert chain == ["DequantizeLinear", "QuantizeLinear"]
    d = result.report.decisions[0]
    assert d.rewritten and d.rule == "qdq_matmul_to_conv"
    assert d.notes["weight_quantization"] == ("per_channel" if q.per_channel else "per_tensor")


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bias", ["float", "int32"])
def test_bias_folds_into_the_conv(bias: str, per_channel: bool) -> None:
    model = qdq_dense(Q(bias=bias, per_channel=per_channel))
    result = converter.rewrite(model, fold_transposes=False)
    dq_count = 3 if bias == "int32" else 2
    assert_rewritten(model, result, {"Transpose": 2, "QuantizeLinear": 1, "DequantizeLinear": dq_count, "Conv": 1})
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3
    if bias == "int32":  # still DequantizeLinear(int32) with scale x_scale * w_scale, as the QDQ recipe has it
        b = next(n for n in result.model.graph.node if n.output[0] == conv.input[2])
        assert b.op_type == "DequantizeLinear" and list(b.input) == ["bq", "bs", "bz"]
    assert result.report.decisions[0].notes["bias_folded"]


def test_without_activation_pair_and_with_output_pair() -> None:
    model = qdq_dense(Q(activation="none", output_q=True))
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {"Transpose": 2, "QuantizeLinear": 1, "DequantizeLinear": 2, "Conv": 1})


def test_a_shared_activation_pair_is_copied_for_the_conv() -> None:
    model = qdq_dense(Q(activation="shared"))
    result = converter.rewrite(model, fold_transposes=False)
    # The original pair stays for its other reader; the Conv reads its own copy behind the Transpose.
    assert_rewritten(model, result, {"Transpose": 2, "QuantizeLinear": 2, "DequantizeLinear": 3, "Conv": 1, "Relu": 1})


def test_cleanup_moves_the_output_transpose_through_the_output_pair() -> None:
    model = qdq_dense(Q(output_q=True))
    result = converter.rewrite(model, layout="keep-all")
    check = assert_rewritten(model, result, {"Transpose": 2, "QuantizeLinear": 2, "DequantizeLinear": 3, "Conv": 1})
    assert check.passed
    producers = {o: n for n in result.model.graph.node for o in n.output}
    # Conv -> QuantizeLinear -> DequantizeLinear -> Transpose: the Conv's output is quantized directly.
    out = producers["out"]
    assert out.op_type == "Transpose"
    assert [producers[out.input[0]].op_type, producers[producers[out.input[0]].input[0]].op_type] == [
        "DequantizeLinear",
        "QuantizeLinear",
    ]


def _edit(model: onnx.ModelProto, edit) -> onnx.ModelProto:  # noqa: ANN001
    m = onnx.ModelProto()
    m.CopyFrom(model)
    edit(m)
    return m


def _as_graph_input(name: str):  # noqa: ANN202
    def edit(m: onnx.ModelProto) -> None:
        t = next(t for t in m.graph.initializer if t.name == name)
        m.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))

    return edit


def _weight_as(dtype: int, values: np.ndarray | None = None):  # noqa: ANN202
    def edit(m: onnx.ModelProto) -> None:
        i = next(i for i, t in enumerate(m.graph.initializer) if t.name == "wq")
        old = numpy_helper.to_array(m.graph.initializer[i])
        new = old.astype(helper.tensor_dtype_to_np_dtype(dtype)) if values is None else values
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(new, "wq"))
        for name in ("wz",):
            j = next(j for j, t in enumerate(m.graph.initializer) if t.name == name)
            z = numpy_helper.to_array(m.graph.initializer[j]).astype(new.dtype)
            m.graph.initializer[j].CopyFrom(numpy_helper.from_array(z, name))

    return edit


def _scale_shape(shape: tuple[int, ...]):  # noqa: ANN202
    def edit(m: onnx.ModelProto) -> None:
        for name in ("ws", "wz"):
            j = next(j for j, t in enumerate(m.graph.initializer) if t.name == name)
            v = numpy_helper.to_array(m.graph.initializer[j])
            m.graph.initializer[j].CopyFrom(numpy_helper.from_array(np.resize(v, shape), name))

    return edit


def _computed_scale(m: onnx.ModelProto) -> None:
    """The weight's scale computed at run time (Abs is no op on constants the rules fold)."""
    dq = next(n for n in m.graph.node if n.name == "w_dq")
    m.graph.node.insert(0, helper.make_node("Abs", ["ws"], ["ws_run"], "scale_run"))
    dq.input[1] = "ws_run"


@pytest.mark.parametrize(
    ("q", "edit", "reason"),
    [
        (Q(), _as_graph_input("wq"), "weight_is_graph_input"),
        (Q(), _as_graph_input("ws"), "weight_scale_is_graph_input"),
        (Q(), _computed_scale, "weight_scale_not_constant"),
        (Q(), _weight_as(TensorProto.INT32), "quantized_dtype_unsupported"),
        (Q(), _scale_shape((K + 1,)), "quantization_axis_mismatch"),
        (Q(per_channel=False), _scale_shape((1, 1)), "quantization_axis_mismatch"),
    ],
    ids=["weight-input", "scale-input", "scale-computed", "int32-weight", "axis-length", "scale-rank2"],
)
def test_declines_with_reason(q: Q, edit, reason: str) -> None:  # noqa: ANN001
    model = _edit(qdq_dense(q), edit)
    result = converter.rewrite(model, fold_transposes=False)
    assert count_ops(result.model.graph) == count_ops(model.graph)
    decision = next(d for d in result.report.decisions if d.op_type == "MatMul")
    assert not decision.rewritten and decision.reason == reason, decision


def test_channel_mismatch_and_rank_decline() -> None:
    assert next(iter(converter.rewrite(qdq_dense(Q(), c=C), fold_transposes=False).report.decisions)).rewritten
    model = qdq_dense(Q())
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = C + 1
    decision = converter.rewrite(model, fold_transposes=False).report.decisions[0]
    assert decision.reason == "shape_mismatch"
    model = qdq_dense(Q())
    del model.graph.input[0].type.tensor_type.shape.dim[0]
    model.graph.ClearField("value_info")
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
    assert converter.rewrite(model, fold_transposes=False).report.decisions[0].reason == "rank_not_4"


def test_the_certificate_refutes_a_weight_moved_wrongly() -> None:
    """The structural proof compares the dequantized weight: integers moved to the wrong channels are refuted."""
    model = qdq_dense(Q(per_channel=False))
    result = converter.rewrite(model, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved
    dq, ints = _conv_weight(result)
    inits = {t.name: t for t in result.model.graph.initializer}
    wrong = np.ascontiguousarray(ints.reshape(K, C)[::-1]).reshape(K, C, 1, 1)  # output channels reversed
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array(wrong, dq.input[0]))
    (proof,) = certify(model, result.model, result.report.layers).layers.values()
    assert proof.status == "refuted" and "weight differs" in proof.detail, proof.detail
    check = converter.verify(model, result, input_shapes={"x": [N, H, W_, C]})
    assert check.verdict == "failed"


def test_the_certificate_refutes_a_per_channel_axis_left_at_1() -> None:
    """Per-channel parameters move with the data: a DequantizeLinear that kept axis=1 reads C scales where K are."""
    model = qdq_dense(Q(per_channel=True), c=K, k=K)  # C == K, so a wrong axis still runs
    result = converter.rewrite(model, fold_transposes=False)
    dq, _ = _conv_weight(result)
    next(a for a in dq.attribute if a.name == "axis").i = 1
    (proof,) = certify(model, result.model, result.report.layers).layers.values()
    assert proof.status == "refuted" and "weight differs" in proof.detail, proof.detail


def test_the_certificate_refutes_an_activation_pair_with_another_scale() -> None:
    """The moved QuantizeLinear must read the original's scale: requantizing is not allowed to pass."""
    model = qdq_dense(Q())
    result = converter.rewrite(model, fold_transposes=False)
    q = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear")
    result.model.graph.initializer.append(numpy_helper.from_array(np.float32(0.051), "xs_other"))
    q.input[1] = "xs_other"
    cert = certify(model, result.model, result.report.layers)
    assert not cert.proved and any("differs" in u for u in cert.unproved), cert.to_dict()


def test_a_float_model_is_left_to_the_plain_rule() -> None:
    from tests.conftest import Dense, dense_model

    result = converter.rewrite(dense_model(Dense()), fold_transposes=False)
    assert [d.rule for d in result.report.decisions] == ["matmul_add_to_conv"]
