"""QDQ ``Reshape -> Gemm -> Reshape`` back to rank 3 under ``--tokens``: the token layer's Conv in ``[B, C, 1, S]``.

``quant_pre_process`` turns a rank-3 Linear into ``Reshape(x, [-1, C]) -> Gemm -> Reshape(-> [B, S, K])`` (timm's
ResMLP), and ``quantize_static`` (QDQ) puts a pair on the flat activation and one on the flat output. Its float twin
is a token layer (``gemm_sandwich_to_conv``); the quantized one converts the same way, with the pairs moved onto
``[B, C, 1, S]`` (per channel: axis 1) and nothing requantized. Proved by ``converter.verify`` (the certificate's
sandwich pairs read in the token layout, each layer's numbers) and by onnxruntime bit for bit; without ``tokens`` the
sandwich is no candidate.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from tests._onnxruntime import first_output as _run
from tests.conftest import with_output_shapes

RULE = "qdq_gemm_sandwich_to_conv"
S, C_IN, K_OUT = 7, 12, 10  # S != C != K: a swapped axis shows


def _quantized(w: np.ndarray, per_channel: bool, signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """A ``[K, C]`` weight (``transB=1``) as integers, scale, zero point and the DequantizeLinear's attributes."""
    lo, hi, dtype = (-128, 127, np.int8) if signed else (0, 255, np.uint8)
    if per_channel:
        scale = (np.abs(w).max(axis=1) / 127.0).astype(np.float32)
        zero = np.full(w.shape[0], 0 if signed else 128, dtype)
        ints = np.clip(np.round(w / scale[:, None]) + zero.astype(np.int32)[:, None], lo, hi).astype(dtype)
        return ints, scale, zero, {"axis": 0}
    scale = np.float32(np.abs(w).max() / 127.0)
    zero = np.array(0 if signed else 128, dtype)
    return np.clip(np.round(w / scale) + int(zero), lo, hi).astype(dtype), np.asarray(scale), zero, {}


def token_sandwich(per_channel: bool, signed: bool, out_pair: bool = True, seed: int = 0) -> onnx.ModelProto:
    """``x [B, S, C] -> Reshape [-1, C] -> Q/DQ -> Gemm(transB=1, int32 bias) -> [Q/DQ] -> Reshape [-1, S, K]``."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    a_dtype = np.int8 if signed else np.uint8
    w = (rng.standard_normal((K_OUT, C_IN)) / np.sqrt(C_IN)).astype(np.float32)
    wq, ws, wz, w_attrs = _quantized(w, per_channel, signed)
    b_scale = (0.05 * np.broadcast_to(ws, (K_OUT,))).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", init("rows_shape", np.array([-1, C_IN], np.int64))], ["rows"], "flatten"),
        helper.make_node("QuantizeLinear", ["rows", init("xs", np.float32(0.05)), init("xz", np.array(3, a_dtype))], ["rq"], "x_q"),
        helper.make_node("DequantizeLinear", ["rq", "xs", "xz"], ["rdq"], "x_dq"),
        helper.make_node("DequantizeLinear", [init("wq", wq), init("ws", ws), init("wz", wz)], ["w"], "w_dq", **w_attrs),
        helper.make_node(
            "DequantizeLinear",
            [init("bq", np.round(rng.standard_normal(K_OUT) * 0.1 / b_scale).astype(np.int32)), init("bs", b_scale)],
            ["b"],
            "b_dq",
            axis=0,
        ),
        helper.make_node("Gemm", ["rdq", "w", "b"], ["flat"], "gemm", transB=1),
    ]
    flat = "flat"
    if out_pair:
        nodes.append(
            helper.make_node(
                "QuantizeLinear", ["flat", init("ys", np.float32(0.04)), init("yz", np.array(1, a_dtype))], ["fq"], "y_q"
            )
        )
        nodes.append(helper.make_node("DequantizeLinear", ["fq", "ys", "yz"], ["fdq"], "y_dq"))
        flat = "fdq"
    nodes.append(helper.make_node("Reshape", [flat, init("y_shape", np.array([-1, S, K_OUT], np.int64))], ["y"], "restore"))
    graph = helper.make_graph(
        nodes,
        "qdq_gemm_tokens",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", S, C_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("out_pair", [True, False], ids=["out-pair", "no-out-pair"])
@pytest.mark.parametrize("signed", [True, False], ids=["s8", "u8"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["channel", "tensor"])
def test_the_token_sandwich_becomes_a_qdq_conv_and_is_proved(per_channel: bool, signed: bool, out_pair: bool) -> None:
    model = token_sandwich(per_channel, signed, out_pair)
    result = converter.rewrite(model, tokens=True, layout="keep-all")
    (d,) = result.report.decisions
    assert d.rewritten and d.rule == RULE and d.notes["bias_quantized"], d
    out = result.model
    ops = [n.op_type for n in out.graph.node]
    assert "Gemm" not in ops and ops.count("Conv") == 1 and ops.count("Reshape") == 0
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    made = {o: n for n in out.graph.node for o in n.output}
    # The QDQ Conv form: the activation's pair right in front (per tensor, as the original's), the weight's
    # integers moved bit for bit to [K, C, 1, 1] with the original's scale and zero point (axis 0: K).
    x_dq = made[conv.input[0]]
    assert x_dq.op_type == "DequantizeLinear" and list(x_dq.input[1:]) == ["xs", "xz"]
    w_dq = made[conv.input[1]]
    ints = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == w_dq.input[0]))
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wq"))
    assert ints.shape == (K_OUT, C_IN, 1, 1) and ints.reshape(K_OUT, C_IN).tobytes() == original.tobytes()
    assert list(w_dq.input[1:]) == ["ws", "wz"]
    report = converter.verify(model, result)
    assert report.verdict == "passed", report.structure
    assert [layer.structure for layer in report.layers] == ["proved"]
    x = np.random.default_rng(3).standard_normal((2, S, C_IN)).astype(np.float32)
    want, got = _run(model, x), _run(out, x)
    assert got.shape == want.shape == (2, S, K_OUT)
    np.testing.assert_array_equal(got, want)  # nothing requantized: the same integers, scales and sums


def test_without_tokens_the_token_sandwich_is_no_candidate() -> None:
    """Rank 3 back to rank 3 is a token layer: not converted by default (as its float twin)."""
    model = token_sandwich(per_channel=True, signed=True)
    result = converter.rewrite(model, layout="keep-all")
    assert result.report.rewritten == 0
    assert [n.op_type for n in result.model.graph.node].count("Gemm") == 1
