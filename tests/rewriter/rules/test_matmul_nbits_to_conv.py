"""MatMulNBits (com.microsoft) -> DequantizeLinear in blocks -> 1x1 Conv (``matmul_nbits_to_conv``, opt-in).

What onnxruntime's ``MatMulNBitsQuantizer`` writes (4 bits, blocks of 16 to 128, symmetric and asymmetric) on rank-4
tensors and on token sequences, and hand-written MatMulNBits for what it does not write (a bias input, g_idx, 8
bits); each proved by the certificate and by onnxruntime's numbers against onnxruntime's own MatMulNBits kernel,
and by structure: the Conv's integers, scales and zero points are exactly what the same quantizer writes in its
QDQ format for the same weights, moved to the Conv's layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate.walk import certify
from tests.conftest import assert_rewritten

C, K = 80, 24  # C is not a multiple of 32 or 64: a short last block
N, H, W, S = 2, 3, 5, 7


@dataclass(frozen=True)
class NB:
    block: int = 32
    symmetric: bool = False
    rank: int = 3
    bias: bool = True  # a float Add after the layer (the quantizer leaves it)
    seed: int = 0


def float_dense(nb: NB) -> onnx.ModelProto:
    rng = np.random.default_rng(nb.seed)
    inits = [numpy_helper.from_array((rng.standard_normal((C, K)) / np.sqrt(C)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], "dense")]
    out = "y"
    if nb.bias:
        inits.append(numpy_helper.from_array((rng.standard_normal(K) * 0.1).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["y", "b"], ["z"], "bias"))
        out = "z"
    lead: list[int | str] = ["batch", "sequence"] if nb.rank == 3 else ["N", H, W]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, C])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [*lead, K])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def quantized(nb: NB, qdq: bool = False) -> onnx.ModelProto:
    """``float_dense(nb)`` through onnxruntime's MatMulNBitsQuantizer (as MatMulNBits, or in its QDQ format)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    fmt = QuantFormat.QDQ if qdq else QuantFormat.QOperator
    config = mq.DefaultWeightOnlyQuantConfig(block_size=nb.block, is_symmetric=nb.symmetric, quant_format=fmt)
    q = mq.MatMulNBitsQuantizer(float_dense(nb), algo_config=config)
    q.process()
    return q.model.model


def shapes(nb: NB) -> dict[str, list[int]]:
    return {"x": [N, S, C] if nb.rank == 3 else [N, H, W, C]}


def _ops(nb: NB) -> dict[str, int]:
    return {"DequantizeLinear": 1, "Transpose": 2, "Conv": 1} | ({"Unsqueeze": 1, "Squeeze": 1} if nb.rank == 3 else {})


CASES = [
    NB(block=b, symmetric=s, rank=r, seed=i)
    for i, (b, s, r) in enumerate((b, s, r) for b in (16, 32, 64, 128) for s in (True, False) for r in (3, 4))
]


@pytest.mark.parametrize("nb", CASES, ids=lambda nb: f"bs{nb.block}-{'sym' if nb.symmetric else 'asym'}-rank{nb.rank}")
def test_the_quantizers_matmulnbits_becomes_a_blocked_conv(nb: NB) -> None:
    model = quantized(nb)
    assert [n.op_type for n in model.graph.node][0] == "MatMulNBits"
    result = converter.rewrite(model, tokens=nb.rank == 3, matmul_nbits=True, fold_transposes=False)
    assert_rewritten(model, result, _ops(nb), input_shapes=shapes(nb))
    d = result.report.decisions[0]
    assert d.rewritten and d.rule == "matmul_nbits_to_conv" and d.notes["bias_folded"]
    # The same integers, scales and zero points as the quantizer's own QDQ format, moved to [K, C, 1, 1].
    reference = quantized(nb, qdq=True)
    ref = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    ref_dq = next(n for n in reference.graph.node if n.op_type == "DequantizeLinear")
    graph = result.model.graph
    conv = next(n for n in graph.node if n.op_type == "Conv")
    dq = next(n for n in graph.node if n.output[0] == conv.input[1])
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute} == {"axis": 1, "block_size": nb.block}
    mine = {t.name: t for t in graph.initializer}
    assert len(dq.input) == len(ref_dq.input) == (2 if nb.symmetric else 3)
    for got_name, want_name in zip(dq.input, ref_dq.input, strict=True):
        got, want = mine[got_name], ref[want_name]
        assert got.data_type == helper.np_dtype_to_tensor_dtype(want.dtype)
        expected = np.ascontiguousarray(want.T).reshape(*want.T.shape, 1, 1)
        assert got.raw_data == numpy_helper.from_array(expected).raw_data


def test_opt_in() -> None:
    nb = NB()
    model = quantized(nb)
    result = converter.rewrite(model, tokens=True)
    d = result.report.decisions[0]
    assert not d.rewritten and d.reason == "nbits_opt_in" and "--matmul-nbits" in d.detail
    assert result.model.SerializeToString() == model.SerializeToString()


def test_through_the_command(tmp_path, run_cli) -> None:  # noqa: ANN001
    path = tmp_path / "nbits.onnx"
    onnx.save(quantized(NB()), path)
    out = tmp_path / "out.onnx"
    r = run_cli(path, "--tokens", "--matmul-nbits", "--layout", "keep-all", "--input-shape", f"x:2,7,{C}", "-o", out)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
    assert "MatMulNBits" not in [n.op_type for n in onnx.load(out).graph.node]


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """``[rows, n]`` values of ``bits`` bits as bytes, the lowest bits first (MatMulNBits' packing), rows padded."""
    per = 8 // bits
    rows, n = values.shape
    padded = np.zeros((rows, -(-n // per) * per), np.uint8)
    padded[:, :n] = values
    parts = padded.reshape(rows, -1, per).astype(np.uint16)
    return sum(parts[:, :, i] << (bits * i) for i in range(per)).astype(np.uint8)


def handwritten(
    bits: int = 4,
    block: int = 16,
    zero_points: str = "packed",
    bias: bool = False,
    g_idx: str = "",
    accuracy_level: int = 0,
    opset: int = 21,
) -> onnx.ModelProto:
    """A MatMulNBits written with onnx.helper on [batch, sequence, C]: what the quantizer does not write."""
    rng = np.random.default_rng(7)
    blocks = -(-C // block)
    q = rng.integers(0, 1 << bits, (K, blocks * block)).astype(np.uint8)
    packed = _pack(q, bits).reshape(K, blocks, block * bits // 8)
    scales = (rng.random((K, blocks)) * 0.05 + 0.01).astype(np.float32)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "scales")]
    inputs = ["x", "B", "scales"]
    if zero_points == "packed":
        inits.append(
            numpy_helper.from_array(_pack(rng.integers(0, 1 << bits, (K, blocks)).astype(np.uint8), bits).reshape(-1), "zp")
        )
        inputs.append("zp")
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(rng.random((K, blocks)).astype(np.float32).reshape(-1) * 8, "zp"))
        inputs.append("zp")
    else:
        inputs.append("")
    if g_idx:
        order = np.arange(C) // block if g_idx == "default" else rng.permutation(np.arange(C) // block)
        inits.append(numpy_helper.from_array(order.astype(np.int32), "g_idx"))
        inputs.append("g_idx")
    else:
        inputs.append("")
    if bias:
        inits.append(numpy_helper.from_array((rng.standard_normal(K) * 0.1).astype(np.float32), "bias"))
        inputs.append("bias")
    while not inputs[-1]:
        inputs.pop()
    attrs = {"K": C, "N": K, "bits": bits, "block_size": block}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    node = helper.make_node("MatMulNBits", inputs, ["y"], "nbits", domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node],
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", K])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize(
    "kw",
    [
        {"bias": True},
        {"g_idx": "default", "zero_points": "none"},
        {"bits": 8, "block": 32},
        {"bits": 8, "block": 16, "zero_points": "none"},
        {"zero_points": "none", "bias": True},
    ],
    ids=["bias-input", "default-g_idx", "8-bit", "8-bit-symmetric", "symmetric-bias"],
)
def test_what_the_quantizer_does_not_write(kw: dict) -> None:
    model = handwritten(**kw)
    result = converter.rewrite(model, tokens=True, matmul_nbits=True, fold_transposes=False)
    assert_rewritten(model, result, _ops(NB()), input_shapes={"x": [N, S, C]})
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert (len(conv.input) == 3) == bool(kw.get("bias"))


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"bits": 2, "block": 16}, "quantized_dtype_unsupported"),
        ({"zero_points": "float"}, "zero_point_not_integer"),
        ({"g_idx": "reordered", "zero_points": "none"}, "group_index_reordered"),
        ({"g_idx": "default"}, "group_index_unsupported"),
        ({"opset": 17}, "opset_too_old"),
    ],
    ids=["2-bit", "float-zero-point", "reordered-g_idx", "g_idx-with-zero-points", "opset-17"],
)
def test_declines_with_reason(kw: dict, reason: str) -> None:
    model = handwritten(**kw)
    result = converter.rewrite(model, tokens=True, matmul_nbits=True)
    d = result.report.decisions[0]
    assert not d.rewritten and d.reason == reason, d
    assert result.model.SerializeToString() == model.SerializeToString()


def test_a_rank_3_layer_without_tokens_is_rank_not_4() -> None:
    d = converter.rewrite(handwritten(), matmul_nbits=True).report.decisions[0]
    assert not d.rewritten and d.reason == "rank_not_4"


def test_the_certificate_refutes_a_weight_read_in_the_wrong_order() -> None:
    """Unpacking with the nibbles the other way round gives other integers: refuted, not passed."""
    model = handwritten()
    result = converter.rewrite(model, tokens=True, matmul_nbits=True, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    dq = next(n for n in result.model.graph.node if n.output[0] == conv.input[1])
    data = next(t for t in result.model.graph.initializer if t.name == dq.input[0])
    raw = np.frombuffer(data.raw_data, np.uint8)
    data.raw_data = ((raw >> 4) | (raw << 4)).astype(np.uint8).tobytes()
    (proof,) = certify(model, result.model, result.report.layers).layers.values()
    assert proof.status == "refuted" and "weight differs" in proof.detail, proof.detail


def test_the_certificate_reads_matmulnbits_as_onnxruntime_runs_it() -> None:
    """The certificate's own reading of the packed format (certificate/blocks.py): ``x @ W^T`` with its ``W`` is what
    onnxruntime's MatMulNBits kernel computes, for 4 and 8 bits, with and without zero points, a short last block."""
    import onnxruntime as ort

    from converter.verifier.certificate.blocks import nbits_weight
    from converter.verifier.certificate.facts import EMPTY, Const

    x = np.random.default_rng(1).standard_normal((1, 3, C)).astype(np.float32)
    for kw in (
        {},
        {"zero_points": "none"},
        {"bits": 8, "block": 32},
        {"bits": 8, "block": 16, "zero_points": "none"},
        {"block": 64},
    ):
        model = handwritten(**kw)
        node = model.graph.node[0]
        inits = {t.name: t for t in model.graph.initializer}
        facts = [Const((0, n), partial(numpy_helper.to_array, inits[n])) if n in inits else EMPTY for n in node.input]
        w = nbits_weight(node, facts)
        assert not isinstance(w, str), w
        (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5, err_msg=str(kw))
