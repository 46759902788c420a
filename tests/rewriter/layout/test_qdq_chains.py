"""QDQ attention under ``--tokens``: the head split and merge run through per-tensor Q/DQ pairs.

A QDQ export wraps every op in its own pairs, the head split's Reshape and Transpose among them:
``DQ -> Reshape -> Q -> DQ -> Transpose -> Q -> DQ``. A per-tensor QuantizeLinear or DequantizeLinear acts element
by element, so it commutes with any rearrangement: the layout problem prices a chain of Reshapes and Transposes
through the pairs (an identity view for each), and the fold pass writes it stretch by stretch, each pair copied
onto a permuted copy of the tensor it read. Without that every pair stopped the chain, each single Reshape was
priced one Transpose more in channels-first, and the optimizer converted none of the layers. Here the q, k, v
and output Linears convert, with no more Transposes inside than the original, the certificate proves every pair
(and reads the output Linear, whose activation's pair follows the head merge's Reshape, as a plain layer, not as
a quantized sandwich), and onnxruntime gives the same integers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.rewriter.layout import census
from models.graphs import with_output_shapes
from tests._onnxruntime import first_output as _run

B, S, C, HEADS = 2, 5, 8, 2  # S != C != D: a swapped axis shows
D = C // HEADS


class _QDQ:
    """A graph writer that quantizes every activation per tensor (QuantizeLinear -> DequantizeLinear after each op)
    and every weight per tensor (a DequantizeLinear of int8 constants), as onnxruntime's quantizer writes QDQ."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value: np.ndarray) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def pair(self, x: str, scale: float, axis: int | None = None, size: int = 1) -> str:
        """``x`` through its own QuantizeLinear and DequantizeLinear (uint8 with a zero point): per tensor, or with
        ``axis``, per position along it (``size`` scales)."""
        if axis is None:
            s, z = self.const(np.float32(scale)), self.const(np.uint8(128))
            return self.op("DequantizeLinear", self.op("QuantizeLinear", x, s, z), s, z)
        s = self.const((scale * (1 + 0.25 * np.arange(size))).astype(np.float32))
        z = self.const(np.full(size, 128, np.uint8))
        return self.op("DequantizeLinear", self.op("QuantizeLinear", x, s, z, axis=axis), s, z, axis=axis)

    def then(self, op_type: str, *inputs: str, scale: float = 0.05, **attrs) -> str:
        return self.pair(self.op(op_type, *inputs, **attrs), scale)

    def linear(self, x: str, c: int, k: int) -> str:
        w = self.rng.standard_normal((c, k)) / np.sqrt(c)
        scale = np.float32(np.abs(w).max() / 127)
        ints = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        weight = self.op("DequantizeLinear", self.const(ints), self.const(scale), self.const(np.int8(0)))
        return self.then("MatMul", x, weight)

    def shape(self, *dims: int) -> str:
        return self.const(np.array(dims, np.int64))


def qdq_attention(
    k_transposed_by_reshape: bool = False, per_head_queries: bool = False, kt_from_shape: bool = False, seed: int = 0
) -> onnx.ModelProto:
    """One attention block on tokens ``[B, S, C]``, quantized per tensor: q, k and v Linears, each split into
    heads (``Reshape -> pair -> Transpose -> pair``), ``K^T`` (a Transpose of the split keys, or, as dynamo writes T5,
    a Reshape and a Transpose after it), softmax attention, the heads merged (``Transpose -> pair -> Reshape ->
    pair``), the output Linear and the residual. With ``per_head_queries`` the queries' split is quantized per head
    (a scale along axis 2): a pair no chain runs through. With ``kt_from_shape`` ``K^T`` is dynamo's for a dynamic
    batch: the split keys reshaped to ``[B * H, S, D]``, transposed and reshaped back, the targets read from the
    shape of the split keys (a Shape inside the chain)."""
    g = _QDQ(seed)
    x = g.pair("x", 0.04)
    heads = []
    for i in range(3):
        split = g.op("Reshape", g.linear(x, C, C), g.shape(0, 0, HEADS, D))
        split = g.pair(split, 0.05, *((2, HEADS) if per_head_queries and i == 0 else ()))
        heads.append(g.then("Transpose", split, perm=[0, 2, 1, 3]))
    q, k, v = heads
    if k_transposed_by_reshape:
        k = g.then("Reshape", k, g.shape(B, HEADS, S, D))
    if kt_from_shape:  # dynamo's K^T on a dynamic batch: [B * H, S, D], transposed, back to [B, H, D, S]
        dims = g.op("Shape", k)
        pick = [g.op("Slice", dims, g.shape(i), g.shape(i + 1)) for i in range(4)]
        flat = g.then("Reshape", k, g.op("Concat", g.shape(-1), pick[2], pick[3], axis=0))
        kt = g.then("Transpose", flat, perm=[0, 2, 1])
        kt = g.then("Reshape", kt, g.op("Concat", pick[0], pick[1], pick[3], pick[2], axis=0))
    else:
        kt = g.then("Transpose", k, perm=[0, 1, 3, 2])
    scores = g.then("MatMul", q, kt, scale=0.1)
    att = g.then("MatMul", g.then("Softmax", scores, axis=-1, scale=1 / 255), v)
    merged = g.then("Reshape", g.then("Transpose", att, perm=[0, 2, 1, 3]), g.shape(0, 0, C))
    y = g.op("Add", x, g.linear(merged, C, C))
    graph = helper.make_graph(
        g.nodes,
        "qdq_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, C])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
        g.inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize(
    ("k_transposed_by_reshape", "kt_from_shape"),
    [(False, False), (True, False), (False, True)],
    ids=["kt", "reshape-kt", "shape-kt"],
)
def test_a_qdq_attention_converts_every_layer_through_its_pairs(k_transposed_by_reshape: bool, kt_from_shape: bool) -> None:
    model = qdq_attention(k_transposed_by_reshape, kt_from_shape=kt_from_shape)
    result = converter.rewrite(model, tokens=True)
    assert result.report.rewritten == 4, [(d.node, d.reason, d.detail) for d in result.report.decisions]
    before, after = census(model), census(result.model)
    assert after.inside <= before.inside and after.inside == result.report.layout.transposes_optimum
    out = result.model
    made = {o: n for n in out.graph.node for o in n.output}
    for n in out.graph.node:  # every pair kept per tensor, each Q read by its own DQ
        if n.op_type == "QuantizeLinear":
            assert [r.op_type for r in out.graph.node if n.output[0] in r.input] == ["DequantizeLinear"]
        if n.op_type == "DequantizeLinear" and n.input[0] in made:
            assert made[n.input[0]].op_type == "QuantizeLinear"
    check = converter.verify(model, result)
    assert check.verdict == "passed", check.structure
    assert all(layer.structure == "proved" for layer in check.layers), check.to_dict()
    x = np.random.default_rng(3).standard_normal((B, S, C)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(model, x))  # the same integers at every pair


def test_a_pair_quantized_per_head_stops_the_chain() -> None:
    """A pair with a scale per head acts on each head alone: no order of the split's axes but the stored one is
    the same tensor to it, so the chain stops there (the queries' split is priced as before). The layers that
    convert are the ones that cost nothing; the pair keeps its axis; the promises hold."""
    model = qdq_attention(per_head_queries=True)
    result = converter.rewrite(model, tokens=True)
    assert census(result.model).inside <= census(model).inside
    out = result.model
    per_head = [n for n in out.graph.node if n.op_type == "QuantizeLinear" and any(a.name == "axis" for a in n.attribute)]
    assert len(per_head) == 1 and per_head[0].attribute[0].i == 2
    check = converter.verify(model, result)
    assert check.verdict in ("passed", "unchanged"), check.structure
    x = np.random.default_rng(4).standard_normal((B, S, C)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(model, x))


def test_a_head_split_between_pairs_folds_into_no_transpose() -> None:
    """The keys' chain ``Reshape -> pair -> Transpose -> pair -> Transpose`` from the layer's channels-first
    output: the Reshape writes the split heads as ``[B, H, D, S]``, each pair reads a permuted copy of its tensor,
    and ``K^T`` is that tensor itself: none of the chain's Transposes is left."""
    model = qdq_attention()
    result = converter.rewrite(model, tokens=True)
    assert result.report.rewritten == 4
    out = result.model
    made = {o: n for n in out.graph.node for o in n.output}
    scores = next(n for n in out.graph.node if n.op_type == "MatMul")  # (the first: q K^T)
    chain = []
    name = scores.input[1]  # K^T as the scores read it
    while name in made and made[name].op_type != "Conv":
        chain.append(made[name].op_type)
        name = made[name].input[0]
    assert "Transpose" not in chain, chain
    assert chain.count("QuantizeLinear") == chain.count("DequantizeLinear") >= 2, chain


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_a_quantized_torch_attention_converts_every_layer(tmp_path, exporter: str, per_channel: bool) -> None:  # noqa: ANN001
    """A real export: one torch self-attention (q, k, v and output Linears, ``view -> transpose`` head split and
    ``transpose -> reshape`` merge), exported by each of torch's exporters and quantized by onnxruntime's
    ``quantize_static`` (QDQ, weights per tensor or per channel), converts every Linear under ``--tokens``."""
    torch = pytest.importorskip("torch")
    from models.quantized import Form, quantize

    class Attention(torch.nn.Module):
        def __init__(self, c: int = 16, heads: int = 2) -> None:
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.o = (torch.nn.Linear(c, c) for _ in range(4))

        def forward(self, x):  # noqa: ANN001, ANN202
            b, n, c = x.shape
            d = c // self.heads
            q, k, v = (f(x).view(b, n, self.heads, d).transpose(1, 2) for f in (self.q, self.k, self.v))
            a = (q @ k.transpose(-1, -2) * d**-0.5).softmax(-1) @ v
            return self.o(a.transpose(1, 2).reshape(b, n, c))

    torch.manual_seed(0)
    module, x = Attention().eval(), torch.randn(2, 6, 16)
    source = tmp_path / f"attention_{exporter}.onnx"
    if exporter == "dynamo":
        torch.onnx.export(module, (x,), dynamo=True, input_names=["x"], output_names=["y"]).save(str(source), external_data=False)
    else:
        torch.onnx.export(module, (x,), str(source), dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    target = quantize(source, tmp_path / "attention.qdq.onnx", Form("qdq", signed=True, per_channel=per_channel))
    model = onnx.load(str(target))
    result = converter.rewrite(model, tokens=True)
    assert result.report.rewritten == 4, [(d.node, d.reason, d.detail) for d in result.report.decisions]
    assert census(result.model).inside <= census(model).inside
    check = converter.verify(model, result)
    assert check.verdict == "passed", check.structure
    feed = x.numpy()
    np.testing.assert_array_equal(_run(result.model, feed), _run(model, feed))
