"""QDQ MatMul(+Add) on a token sequence [B, S, C] -> Transpose, Unsqueeze, the activation's pair, a Conv of a
DequantizeLinear weight in [B, C, 1, S], Squeeze, Transpose (``qdq_matmul_tokens_to_conv``, with ``tokens``).

Hand-built QDQ graphs in every signedness, granularity and zero-point kind, and what onnxruntime's own quantizer
writes for a transformer MLP; proved by structure (op counts, the integers moved bit for bit, the pair directly
in front of the Conv) and by numbers (onnxruntime, the certificate and the per-layer checks, N=2, symbolic batch
and sequence), every decline by its reason. Blocked and 4-bit weights: test_blocked_weights.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate.walk import certify
from tests.conftest import assert_rewritten
from tests.rewriter.rules.test_qdq_matmul_to_conv import Q, _quantize

OPSET = 17
C, K, S, N = 12, 20, 7, 2
TOKEN_OPS = {"Transpose": 2, "Unsqueeze": 1, "Squeeze": 1, "Conv": 1}


def qdq_tokens(q: Q | None = None, c: int = C, k: int = K) -> onnx.ModelProto:
    """``x [batch, sequence, C] -> Q -> DQ -> MatMul(., DQ(Wq)) (+ bias) (-> Q -> DQ)``, as quantize_static writes it."""
    q = q or Q()
    rng = np.random.default_rng(q.seed)
    inits, nodes = [], []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    w_q, w_s, w_z = _quantize(rng.standard_normal((c, k)).astype(np.float32) / np.sqrt(c), q, rng)
    axis = {"axis": 1} if q.per_channel else {}
    nodes.append(helper.make_node("DequantizeLinear", [init("wq", w_q), init("ws", w_s), init("wz", w_z)], ["w"], "w_dq", **axis))
    a_dtype = np.int8 if q.signed else np.uint8
    x, outputs = "x", []
    if q.activation != "none":
        zx = init("xz", np.array(3 if q.signed else 131, a_dtype))
        nodes.append(helper.make_node("QuantizeLinear", ["x", init("xs", np.array(np.float32(0.05))), zx], ["xq"], "x_q"))
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
        b_scale = (np.float32(0.05) * w_s).astype(np.float32)
        b_q = np.round(rng.standard_normal(k) * 0.1 / b_scale).astype(np.int32)
        b_axis = {"axis": 0} if q.per_channel else {}
        dq_in = [init("bq", b_q), init("bs", b_scale), init("bz", np.zeros(b_scale.shape, np.int32))]
        nodes.append(helper.make_node("DequantizeLinear", dq_in, ["b"], "b_dq", **b_axis))
        nodes.append(helper.make_node("Add", ["y", "b"], ["z"], "bias"))
        y = "z"
    if q.output_q:
        z = init("oz", np.array(0 if q.signed else 128, a_dtype))
        nodes.append(helper.make_node("QuantizeLinear", [y, init("os", np.array(np.float32(0.04))), z], ["oq"], "out_q"))
        nodes.append(helper.make_node("DequantizeLinear", ["oq", "os", "oz"], ["out"], "out_dq"))
        y = "out"
    value_infos = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence", k]) for name in [y]]
    value_infos += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence", c]) for name in outputs]
    graph = helper.make_graph(
        nodes, "qdq_tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", c])], value_infos, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


SHAPES = {"x": [N, S, C]}
CASES = [
    Q(signed=s, per_channel=p, symmetric=y, seed=i)
    for i, (s, p, y) in enumerate((s, p, y) for s in (True, False) for p in (True, False) for y in (True, False))
]


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.parametrize(
    "q",
    CASES,
    ids=lambda q: f"{'s8' if q.signed else 'u8'}-{'channel' if q.per_channel else 'tensor'}-{'sym' if q.symmetric else 'asym'}",
)
def test_a_quantized_token_layer_becomes_a_qdq_conv(q: Q) -> None:
    model = qdq_tokens(q)
    result = converter.rewrite(model, tokens=True, fold_transposes=False)
    assert_rewritten(model, result, TOKEN_OPS | {"QuantizeLinear": 1, "DequantizeLinear": 2}, input_shapes=SHAPES)
    d = result.report.decisions[0]
    assert d.rewritten and d.rule == "qdq_matmul_tokens_to_conv"
    assert d.notes["weight_quantization"] == ("per_channel" if q.per_channel else "per_tensor")
    graph = result.model.graph
    producers = _producers(result.model)
    conv = next(n for n in graph.node if n.op_type == "Conv")
    # The activation's pair directly in front of the Conv, behind the unit axis: QDQ fusion sees DQ -> Conv.
    chain = [producers[conv.input[0]]]
    while len(chain) < 4:
        chain.append(producers[chain[-1].input[0]])
    assert [n.op_type for n in chain] == ["DequantizeLinear", "QuantizeLinear", "Unsqueeze", "Transpose"]
    assert list(chain[1].input[1:]) == ["xs", "xz"] and list(chain[0].input[1:]) == ["xs", "xz"]
    weight = producers[conv.input[1]]
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wq"))
    ints = inits[weight.input[0]]
    assert ints.dtype == original.dtype and ints.shape == (K, C, 1, 1)
    assert ints.reshape(K, C).T.tobytes() == original.tobytes()  # the integers moved, not changed
    assert list(weight.input[1:]) == ["ws", "wz"]  # the same scale and zero point tensors
    axis = [helper.get_attribute_value(a) for a in weight.attribute if a.name == "axis"]
    assert axis == ([0] if q.per_channel else [])


@pytest.mark.parametrize("bias", ["float", "int32"])
def test_the_bias_folds_into_the_conv(bias: str) -> None:
    model = qdq_tokens(Q(bias=bias, output_q=True))
    result = converter.rewrite(model, tokens=True, fold_transposes=False)
    dq = 4 if bias == "int32" else 3
    assert_rewritten(model, result, TOKEN_OPS | {"QuantizeLinear": 2, "DequantizeLinear": dq}, input_shapes=SHAPES)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 3
    d = result.report.decisions[0]
    assert d.notes["bias_folded"] and d.notes.get("bias_quantized", False) == (bias == "int32")


def test_a_shared_pair_is_copied_and_no_pair_is_fine() -> None:
    shared = qdq_tokens(Q(activation="shared"))
    result = converter.rewrite(shared, tokens=True, fold_transposes=False)
    ops = TOKEN_OPS | {"QuantizeLinear": 2, "DequantizeLinear": 3, "Relu": 1}
    assert_rewritten(shared, result, ops, input_shapes=SHAPES)
    bare = qdq_tokens(Q(activation="none"))
    result = converter.rewrite(bare, tokens=True, fold_transposes=False)
    assert_rewritten(bare, result, TOKEN_OPS | {"DequantizeLinear": 1}, input_shapes=SHAPES)


def test_the_cleanup_cancels_the_transposes_between_two_quantized_layers() -> None:
    """Two quantized layers in a row (the first's output quantized for the second): the Transposes between them go."""
    first = qdq_tokens(Q(output_q=True, bias="float"))
    second = qdq_tokens(Q(activation="none", bias="float", seed=5), c=K, k=C)
    # Chain them: the second MatMul reads the first's output pair.
    renamed = {t.name: f"l2_{t.name}" for t in second.graph.initializer}
    for t in second.graph.initializer:
        t.name = renamed[t.name]
    for node in second.graph.node:
        node.name = f"l2_{node.name}"
        node.input[:] = [renamed.get(i, "out" if i == "x" else f"l2_{i}") for i in node.input]
        node.output[:] = [f"l2_{o}" for o in node.output]
    first.graph.node.extend(second.graph.node)
    first.graph.initializer.extend(second.graph.initializer)
    first.graph.ClearField("output")
    first.graph.output.append(helper.make_tensor_value_info("l2_z", TensorProto.FLOAT, ["batch", "sequence", C]))
    result = converter.rewrite(first, tokens=True)  # the default policy: both, as no Transpose is left between them
    assert result.report.rewritten == 2
    transposes = [n for n in result.model.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 2  # one at the input, one at the output: none between the layers
    check = converter.verify(first, result, input_shapes=SHAPES)
    assert check.passed and check.structure["proved"], check.to_dict()


def test_onnxruntimes_quantizer_output_converts() -> None:
    """What ``quantize_static(..., QuantFormat.QDQ)`` writes for a two-layer MLP on tokens, per channel."""
    import logging
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((C, K)) / 4).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(K) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((K, C)) / 4).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(C) * 0.1).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], "fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], "fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], "act"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], "fc2"),
        helper.make_node("Add", ["o", "b2"], ["y"], "fc2_bias"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", C]) for n in ("x", "y")]
    float_model = helper.make_model(
        helper.make_graph(nodes, "mlp", io[:1], io[1:], inits), opset_imports=[helper.make_opsetid("", 17)]
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter([{"x": rng.standard_normal((N, S, C)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.left, None)

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(float_model, src)
        quantize_static(src, dst, Batches(), quant_format=QuantFormat.QDQ, per_channel=True)
        model = onnx.load(dst)
    result = converter.rewrite(model, tokens=True, layout="keep-all")
    assert [d.rule for d in result.report.decisions if d.rewritten] == ["qdq_matmul_tokens_to_conv"] * 2
    check = converter.verify(model, result, input_shapes=SHAPES)
    assert check.passed and check.structure["proved"] and all(layer.verified for layer in check.layers), check.to_dict()
    assert "MatMul" not in [n.op_type for n in result.model.graph.node]


def test_declines_and_steps_aside() -> None:
    model = qdq_tokens()
    assert converter.rewrite(model).report.decisions[0].reason == "rank_not_4"  # without tokens
    as_input = onnx.ModelProto()
    as_input.CopyFrom(model)
    as_input.graph.input.append(helper.make_tensor_value_info("wq", TensorProto.INT8, [C, K]))
    d = converter.rewrite(as_input, tokens=True).report.decisions[0]
    assert not d.rewritten and d.reason == "weight_is_graph_input"
    wide = qdq_tokens()
    wide.graph.input[0].type.tensor_type.shape.dim[2].dim_value = C + 1
    d = converter.rewrite(wide, tokens=True).report.decisions[0]
    assert not d.rewritten and d.reason == "shape_mismatch"


def test_the_certificate_refutes_a_moved_pair_with_another_scale() -> None:
    model = qdq_tokens()
    result = converter.rewrite(model, tokens=True, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved
    q = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear")
    result.model.graph.initializer.append(numpy_helper.from_array(np.array(np.float32(0.051)), "xs_other"))
    q.input[1] = "xs_other"
    cert = certify(model, result.model, result.report.layers)
    assert not cert.proved, cert.to_dict()
