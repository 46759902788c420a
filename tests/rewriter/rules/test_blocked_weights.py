"""Block-quantized weights: DequantizeLinear(Wq [C, K], blocks along C) -> MatMul becomes a Conv of
DequantizeLinear(Wq^T [K, C, 1, 1], blocks along the new C), on rank-4 tensors (``qdq_matmul_to_conv``) and on
token sequences (``qdq_matmul_tokens_to_conv``, with ``tokens``).

Every integer type the opset-21 DequantizeLinear takes in blocks (int4, uint4, int8, uint8), with and without zero
points, float32 and float16, blocks that divide C and blocks that do not. Proved twice by ``assert_rewritten``
(the certificate and onnxruntime's numbers, N=2, H != W, symbolic batch and sequence), and by structure: the
integers, scales and zero points are the original's moved, bit for bit, 4-bit packing included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate.walk import certify
from tests.conftest import assert_rewritten

OPSET = 21
N, H, W, S = 2, 3, 5, 7  # H != W; S tokens
FOUR_BIT = {TensorProto.INT4, TensorProto.UINT4}
RANGES = {TensorProto.INT4: (-8, 7), TensorProto.UINT4: (0, 15), TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255)}


@dataclass(frozen=True)
class B:
    """One block-quantized dense layer."""

    q_type: int = TensorProto.INT4
    zero_point: bool = True
    block: int = 16
    c: int = 48
    k: int = 12
    rank: int = 3  # 3: tokens [B, S, C]; 4: [N, H, W, C]
    dtype: int = TensorProto.FLOAT
    bias: bool = True
    seed: int = 0


def _np(t: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(t))


def quantize_blocks(w: np.ndarray, b: B, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(integers [C, K], scale [ceil(C / B), K], zero point or None) of ``w`` in blocks of ``b.block`` along C."""
    lo, hi = RANGES[b.q_type]
    blocks = -(-b.c // b.block)
    padded = np.zeros((blocks * b.block, b.k), np.float64)
    padded[: b.c] = w
    amax = np.abs(padded.reshape(blocks, b.block, b.k)).max(axis=1) + 1e-3
    scale = (amax / (hi - lo) * 2).astype(_np(b.dtype))
    zero = rng.integers(lo + 2, hi - 1, size=(blocks, b.k)) if b.zero_point else np.zeros((blocks, b.k), np.int64)
    per_row = np.repeat(scale.astype(np.float64), b.block, axis=0)[: b.c]
    ints = np.clip(np.round(w / per_row) + np.repeat(zero, b.block, axis=0)[: b.c], lo, hi)
    q = _np(b.q_type)
    return ints.astype(np.int64).astype(q), scale, (zero.astype(q) if b.zero_point else None)


def blocked_dense(b: B = B()) -> onnx.ModelProto:
    """``x -> MatMul(x, DequantizeLinear(Wq, scale[, zero], axis=0, block_size)) (+ bias)`` at opset 21."""
    rng = np.random.default_rng(b.seed)
    w = rng.standard_normal((b.c, b.k)) / np.sqrt(b.c)
    ints, scale, zero = quantize_blocks(w, b, rng)
    inits = [numpy_helper.from_array(ints, "wq"), numpy_helper.from_array(scale, "ws")]
    dq_in = ["wq", "ws"]
    if zero is not None:
        inits.append(numpy_helper.from_array(zero, "wz"))
        dq_in.append("wz")
    nodes = [
        helper.make_node("DequantizeLinear", dq_in, ["w"], "w_dq", axis=0, block_size=b.block),
        helper.make_node("MatMul", ["x", "w"], ["y"], "matmul"),
    ]
    out = "y"
    if b.bias:
        inits.append(numpy_helper.from_array((rng.standard_normal(b.k) * 0.1).astype(_np(b.dtype)), "b"))
        nodes.append(helper.make_node("Add", ["y", "b"], ["z"], "bias"))
        out = "z"
    lead: list[int | str] = ["batch", "sequence"] if b.rank == 3 else ["N", H, W]
    graph = helper.make_graph(
        nodes,
        "blocked_dense",
        [helper.make_tensor_value_info("x", b.dtype, [*lead, b.c])],
        [helper.make_tensor_value_info(out, b.dtype, [*lead, b.k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def shapes(b: B) -> dict[str, list[int]]:
    return {"x": [N, S, b.c] if b.rank == 3 else [N, H, W, b.c]}


def _converted(b: B, **options: object) -> tuple[onnx.ModelProto, converter.RewriteResult]:
    model = blocked_dense(b)
    return model, converter.rewrite(model, tokens=b.rank == 3, **options)


def _conv_weight(model: onnx.ModelProto) -> tuple[onnx.NodeProto, dict[str, onnx.TensorProto]]:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    return dq, {t.name: t for t in model.graph.initializer}


TYPES = (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8)
CASES = [
    B(q_type=t, zero_point=z, rank=r, seed=i)
    for i, (t, z, r) in enumerate((t, z, r) for t in TYPES for z in (True, False) for r in (3, 4))
]


def _id(b: B) -> str:
    return f"{helper.tensor_dtype_to_string(b.q_type).split('.')[-1].lower()}-{'zp' if b.zero_point else 'nozp'}-rank{b.rank}"


@pytest.mark.parametrize("b", CASES, ids=_id)
def test_blocks_become_a_conv_with_the_same_integers(b: B) -> None:
    model, result = _converted(b, fold_transposes=False)
    ops = {"Transpose": 2, "DequantizeLinear": 1, "Conv": 1}
    if b.rank == 3:
        ops |= {"Unsqueeze": 1, "Squeeze": 1}
    assert_rewritten(model, result, ops, input_shapes=shapes(b))
    d = result.report.decisions[0]
    assert d.rewritten and d.rule == ("qdq_matmul_tokens_to_conv" if b.rank == 3 else "qdq_matmul_to_conv")
    if b.rank == 3:
        assert d.notes["weight_quantization"] == f"blocks_of_{b.block}"
    dq, inits = _conv_weight(result.model)
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    assert attrs == {"axis": 1, "block_size": b.block}
    original = {t.name: t for t in model.graph.initializer}
    # The integers, the scales and the zero points: the original's, transposed to [K, C, 1, 1] / [K, blocks, 1, 1].
    for mine, theirs in zip(dq.input, ["wq", "ws", "wz"][: len(dq.input)], strict=True):
        got, want = inits[mine], original[theirs]
        assert got.data_type == want.data_type
        want_value = numpy_helper.to_array(want)
        expected = np.ascontiguousarray(want_value.T).reshape(*want_value.T.shape, 1, 1)
        assert list(got.dims) == list(expected.shape)
        assert got.raw_data == numpy_helper.from_array(expected).raw_data  # bit for bit, as ONNX stores it (packed)
    assert len(dq.input) == (3 if b.zero_point else 2)


@pytest.mark.parametrize(
    "b",
    [
        B(c=40, block=16),  # 40 = 2 * 16 + 8: a last, shorter block
        B(c=40, block=16, rank=4, q_type=TensorProto.UINT4),
        B(dtype=TensorProto.FLOAT16),
        B(dtype=TensorProto.FLOAT16, rank=4, q_type=TensorProto.UINT8, block=32, c=64),
        B(block=128, c=256, k=8, bias=False),
    ],
    ids=["short-last-block", "short-last-block-rank4", "float16", "float16-uint8-rank4", "blocks-of-128"],
)
def test_more_block_shapes_and_float16(b: B) -> None:
    model, result = _converted(b, fold_transposes=False)
    ops = {"Transpose": 2, "DequantizeLinear": 1, "Conv": 1} | ({"Unsqueeze": 1, "Squeeze": 1} if b.rank == 3 else {})
    assert_rewritten(model, result, ops, input_shapes=shapes(b))


def test_int4_packing_is_the_one_onnxruntime_reads() -> None:
    """An odd count of 4-bit values (K * C odd) packs a last half byte: the converted model still runs and is proved."""
    b = B(c=48, k=7, block=16)
    model, result = _converted(b, fold_transposes=False)
    dq, inits = _conv_weight(result.model)
    assert len(inits[dq.input[0]].raw_data) == (7 * 48 + 1) // 2
    assert_rewritten(
        model, result, {"Transpose": 2, "DequantizeLinear": 1, "Conv": 1, "Unsqueeze": 1, "Squeeze": 1}, input_shapes=shapes(b)
    )


def test_through_the_layout_cleanup_and_the_command(tmp_path, run_cli) -> None:  # noqa: ANN001
    model = blocked_dense(B(rank=3))
    path = tmp_path / "blocked.onnx"
    onnx.save(model, path)
    r = run_cli(path, "--tokens", "--layout", "keep-all", "--input-shape", "x:2,7,48", "-o", tmp_path / "out.onnx")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node].count("Conv") == 1 and "MatMul" not in [n.op_type for n in out.graph.node]


def test_without_tokens_a_rank_3_layer_stays() -> None:
    model = blocked_dense(B(rank=3))
    result = converter.rewrite(model)
    d = result.report.decisions[0]
    assert not d.rewritten and d.reason == "rank_not_4"
    assert result.model.SerializeToString() == model.SerializeToString()


def _edit(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    i = next(i for i, t in enumerate(out.graph.initializer) if t.name == name)
    out.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
    return out


@pytest.mark.parametrize("rank", [3, 4])
def test_declines_with_reason(rank: int) -> None:
    b = B(rank=rank)
    model = blocked_dense(b)
    scale = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "ws"))
    zero = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wz"))
    cases = {
        "quantization_axis_mismatch": _edit(model, "ws", np.concatenate([scale, scale[:1]])),  # one block too many
        "quantization_params_mismatch": _edit(model, "wz", zero[:, :-1]),
    }
    computed = onnx.ModelProto()
    computed.CopyFrom(model)
    computed.graph.node.insert(0, helper.make_node("Abs", ["ws"], ["ws_run"], "scale_run"))
    next(n for n in computed.graph.node if n.name == "w_dq").input[1] = "ws_run"
    cases["weight_scale_not_constant"] = computed
    for reason, edited in cases.items():
        d = converter.rewrite(edited, tokens=True).report.decisions[0]
        assert not d.rewritten and d.reason == reason, (reason, d)


def test_a_form_onnxruntime_cannot_run_is_declined_with_its_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where onnxruntime has no kernel for the DequantizeLinear -> Conv the rule would write, it says so."""
    from converter.rewriter.rules import _quantized

    seen = []

    def refuse(*args: object) -> str:
        seen.append(args)
        return "Could not find an implementation for DequantizeLinear(21) node with name ''"

    monkeypatch.setattr(_quantized, "dequantize_conv_runs", refuse)
    d = converter.rewrite(blocked_dense(B()), tokens=True).report.decisions[0]
    assert not d.rewritten and d.reason == "runtime_kernel_missing"
    assert "Could not find an implementation" in d.detail and "blocks of 16" in d.detail
    assert seen and seen[0][0] == TensorProto.INT4  # asked about the weight's own type


def test_onnxruntime_runs_every_blocked_form_on_cpu() -> None:
    """The probe itself: every form the rule writes runs on onnxruntime's CPU (1.32), so nothing is declined today."""
    from converter.rewriter.rules._quantized import dequantize_conv_runs

    for q in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8):
        for scale in (TensorProto.FLOAT, TensorProto.FLOAT16):
            for zero in (True, False):
                assert dequantize_conv_runs(q, scale, zero, 16, 1, OPSET, 0, ("CPUExecutionProvider",)) is None


def test_the_certificate_refutes_blocks_moved_wrongly() -> None:
    """The scales moved with the integers: blocks read in another order (the scale's blocks reversed) are refuted,
    and so are nibbles packed the other way round."""
    b = B(rank=3)
    model, result = _converted(b, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved
    dq, inits = _conv_weight(result.model)
    scale = numpy_helper.to_array(inits[dq.input[1]])
    wrong = onnx.ModelProto()
    wrong.CopyFrom(result.model)
    target = next(t for t in wrong.graph.initializer if t.name == dq.input[1])
    target.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(scale[:, ::-1]), dq.input[1]))
    (proof,) = certify(model, wrong, result.report.layers).layers.values()
    assert proof.status == "refuted" and "weight differs" in proof.detail, proof.detail
    swapped = onnx.ModelProto()
    swapped.CopyFrom(result.model)
    data = next(t for t in swapped.graph.initializer if t.name == dq.input[0])
    raw = np.frombuffer(data.raw_data, np.uint8)
    data.raw_data = ((raw >> 4) | (raw << 4)).astype(np.uint8).tobytes()
    (proof,) = certify(model, swapped, result.report.layers).layers.values()
    assert proof.status == "refuted" and "weight differs" in proof.detail, proof.detail


def test_an_activation_pair_in_blocks_is_left_where_it_is() -> None:
    """Only the weight's parameters move with it: an activation quantized in blocks keeps its pair, and the Conv
    reads it through the layout Transpose."""
    b = B(rank=4, q_type=TensorProto.INT8, c=32, block=16)
    model = blocked_dense(b)
    scale = np.full((N, H, W, 2), 0.05, np.float32)
    model.graph.initializer.append(numpy_helper.from_array(scale, "xs"))
    pair = [
        helper.make_node("QuantizeLinear", ["x", "xs"], ["xq"], "x_q", axis=3, block_size=16),
        helper.make_node("DequantizeLinear", ["xq", "xs"], ["xdq"], "x_dq", axis=3, block_size=16),
    ]
    for i, node in enumerate(pair):
        model.graph.node.insert(i, node)
    next(n for n in model.graph.node if n.name == "matmul").input[0] = "xdq"
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = N
    result = converter.rewrite(model, fold_transposes=False)
    assert result.report.decisions[0].rewritten
    assert_rewritten(model, result, {"Transpose": 2, "QuantizeLinear": 1, "DequantizeLinear": 2, "Conv": 1}, input_shapes={})


def test_the_certificate_reads_blocks_as_onnxruntime_does() -> None:
    """The certificate's own DequantizeLinear in blocks (certificate/blocks.py) gives onnxruntime's values, bit for bit,
    for every type, with and without zero points, a short last block included."""
    import onnxruntime as ort

    from converter.verifier.certificate.blocks import dequantize
    from converter.verifier.certificate.facts import Const

    for b in [replace(c, c=40, k=6, seed=i) for i, c in enumerate(CASES) if c.rank == 3]:
        model = blocked_dense(b)
        values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        dq = model.graph.node[0]
        ins = [Const((0, n), lambda v=values[n]: v) for n in dq.input]
        mine = dequantize(dq, ins)
        probe = helper.make_model(
            helper.make_graph([dq], "dq", [], [helper.make_tensor_value_info("w", b.dtype, None)], list(model.graph.initializer)),
            opset_imports=[helper.make_opsetid("", OPSET)],
        )
        (theirs,) = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
        assert mine is not None and mine.dtype == theirs.dtype and mine.tobytes() == theirs.tobytes(), _id(b)
