"""The proof of a float dense layer's Conv: what the original computes from the layer's input to its output.

A Conv that a rule made (named in a ``RewrittenLayer``) must be a plain 1x1 convolution whose weight is, bit
for bit, the original weight transposed to ``[K, C, 1, 1]`` (Gemm: ``alpha`` applied, ``transB`` honoured),
whose bias is the original per-channel bias (Gemm: times ``beta``; an Add of a constant after the MatMul), and
whose input is the layer's original activation in NCHW (a token sequence ``[B, S, C]``: as ``[B, C, 1, S]``,
or with its trailing dims merged by ``Reshape [0, 0, C]`` first); its output is then the layer's original
output in the same layout. What the layer is, is read from the original graph, not from the rule.

A quantized sandwich (``Reshape -> Q -> DQ -> MatMul -> [Q -> DQ] -> Reshape``, a Tensordot's QDQ form) is
read the same way, its pairs kept for :mod:`.sandwich`: the Conv then reads the activation's pair.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from converter.report import RewrittenLayer
from converter.verifier.certificate.constants import differs
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.facts import FLAT, VIEW, Const, SameAs, Unknown, describe, merged
from converter.verifier.certificate.layers import nbits
from converter.verifier.certificate.layouts import NCHW, TOKENS, Layout, compose
from converter.verifier.certificate.nodes import Attributes, is_default, plain_conv
from converter.verifier.certificate.original import Original
from converter.verifier.certificate.proofs import DenseLayer, LayerProof, Mismatch


def qdq_pair(orig: Original, name: str) -> tuple[NodeProto, NodeProto] | None:
    """(QuantizeLinear, DequantizeLinear) when ``name`` is ``DequantizeLinear(QuantizeLinear(t))`` in the original."""
    dq = orig.producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or not is_default(dq):
        return None
    q = orig.producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or not is_default(q):
        return None
    return q, dq


def _reshaped_pair(orig: Original, name: str) -> bool:
    """Whether ``name`` is ``DequantizeLinear(QuantizeLinear(Reshape(x)))``: a quantized sandwich's activation."""
    pair = qdq_pair(orig, name)
    first = orig.producers.get(pair[0].input[0]) if pair else None
    return first is not None and first.op_type == "Reshape" and is_default(first)


def original_layer(orig: Original, layer: RewrittenLayer) -> DenseLayer | str:
    """What the original graph computes from ``layer.input`` to ``layer.output``, or why it is not a dense layer."""
    node = orig.producers.get(layer.output)
    if node is None:
        return f"the original has no node producing {layer.output!r}"
    add_bias: Const | None = None
    if is_default(node) and node.op_type == "Add" and layer.output != layer.anchor:
        a, b = (orig.canon(n) for n in node.input)
        if isinstance(b, Const) and not isinstance(a, Const):
            add_bias, inner = b, node.input[0]
        elif isinstance(a, Const) and not isinstance(b, Const):
            add_bias, inner = a, node.input[1]
        else:
            return f"{layer.output!r} is an Add without exactly one constant operand"
        found = orig.producers.get(inner)
        if found is None:
            return f"nothing produces {inner!r}"
        node = found
    if nbits.is_nbits(node):  # onnxruntime's MatMulNBits, read by layers/nbits.py
        return nbits.original_layer(orig, node, layer, add_bias)
    sandwich = False
    in_pair = out_pair = None
    end = layer.output
    if (
        is_default(node)
        and node.op_type in ("MatMul", "Gemm")
        and node.output[0] == layer.anchor
        and _reshaped_pair(orig, node.input[0])
    ):
        # A quantized sandwich claimed up to its MatMul's flat output (what the Conv computes before its
        # output pair): the layer ends at the second Reshape, after the output's pair if there is one.
        readers = [n for n in orig.graph.node if layer.anchor in n.input]
        after = [n for n in orig.graph.node if readers and readers[0].output[0] in n.input]
        pair = None
        if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and len(after) == 1:
            pair = qdq_pair(orig, after[0].output[0])
        flat = pair[1].output[0] if pair else layer.anchor
        last = [n for n in orig.graph.node if flat in n.input]
        if len(last) == 1 and last[0].op_type == "Reshape" and is_default(last[0]):
            node, end = last[0], last[0].output[0]
        # else no sandwich: the activation's pair only follows a Reshape (a head merge's, in a QDQ transformer),
        # and the MatMul is the layer, read as any other
    if is_default(node) and node.op_type == "Reshape" and node.output[0] != layer.anchor:
        sandwich = True
        out_pair = qdq_pair(orig, node.input[0])  # a quantized sandwich: the output's pair inside the Reshapes
        found = orig.producers.get(node.input[0] if out_pair is None else out_pair[0].input[0])
        if found is None:
            return "the Reshape's input has no producer"
        node = found
    if node.output[0] != layer.anchor or not is_default(node) or node.op_type not in ("MatMul", "Gemm"):
        return f"the chain from {layer.output!r} does not lead back to the MatMul/Gemm {layer.anchor!r}"
    act = node.input[0]
    if sandwich:
        in_pair = qdq_pair(orig, act)
        first = orig.producers.get(act if in_pair is None else in_pair[0].input[0])
        if first is None or first.op_type != "Reshape" or not is_default(first):
            return "the sandwich's first Reshape is missing"
        act = first.input[0]
    if act != layer.input:
        return f"the layer reads {act!r}, not {layer.input!r}"
    weight = orig.canon(node.input[1])
    if not isinstance(weight, Const):
        return "the weight is not a constant in the original"
    attrs = Attributes(node)
    if node.op_type == "MatMul":
        if attrs:
            return "MatMul with attributes"

        def weight_kc(w: Const = weight) -> np.ndarray:
            v = w.get()
            if v.ndim < 2 or any(d != 1 for d in v.shape[:-2]):
                raise Mismatch(f"the original weight has shape {list(v.shape)}, not [C, K]")
            return np.ascontiguousarray(v.reshape(v.shape[-2:]).T)

        bias = None if add_bias is None else _bias_vector(add_bias, weight, 1.0)
        if (in_pair or out_pair) and bias is not None:
            return "a quantized sandwich with a bias folded from outside its quantization pairs"
        return DenseLayer(act, weight_kc, bias, in_pair, out_pair, node.output[0], end)
    # Gemm
    if attrs.get_int("transA", 0):
        return "Gemm with transA"
    trans_b, alpha, beta = bool(attrs.get_int("transB", 0)), attrs.get_float("alpha", 1.0), attrs.get_float("beta", 1.0)

    def gemm_kc(w: Const = weight) -> np.ndarray:
        v = w.get()
        if v.ndim != 2:
            raise Mismatch(f"the original Gemm weight has rank {v.ndim}")
        kc = np.ascontiguousarray(v if trans_b else v.T)
        return kc if alpha == 1.0 else (kc * np.asarray(alpha, dtype=kc.dtype)).astype(kc.dtype)

    gemm_c = orig.canon(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if (in_pair or out_pair) and add_bias is not None:
        return "a quantized sandwich with a bias folded from outside its quantization pairs"
    if gemm_c is not None and not isinstance(gemm_c, Const):
        return "the Gemm's bias is not a constant"
    if gemm_c is not None and add_bias is not None:
        return "both the Gemm's bias and an Add after it"
    if gemm_c is not None:
        bias = _bias_vector(gemm_c, weight, beta, trans_b)
    else:
        bias = None if add_bias is None else _bias_vector(add_bias, weight, 1.0, trans_b)
    return DenseLayer(act, gemm_kc, bias, in_pair, out_pair, node.output[0], end)


def _bias_vector(bias: Const, weight: Const, scale: float, k_first: bool = False) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        b = bias.get()
        w = weight.get()
        k = w.shape[-2] if k_first else w.shape[-1]
        if b.dtype != w.dtype:
            raise Mismatch(f"the original bias is {b.dtype}, the weight {w.dtype}")
        if b.ndim > 4 or any(d != 1 for d in b.shape[:-1]) or (b.ndim and b.shape[-1] not in (1, k)):
            raise Mismatch(f"the original bias of shape {list(b.shape)} is not per output channel")
        vec = np.broadcast_to(b.reshape(-1), (k,))
        return vec if scale == 1.0 else (vec * np.asarray(scale, dtype=b.dtype)).astype(b.dtype)

    return make


def prove(ctx: Context, conv: NodeProto, layer: RewrittenLayer) -> tuple[LayerProof, Layout]:
    """The proof of a float layer's Conv, and the layout in which it reads the layer's activation (NCHW or TOKENS);
    records what the layer is in the original in ``ctx.cert.originals``."""
    if len(conv.output) != 1:
        return LayerProof("refuted", f"{conv.name!r} is a {conv.op_type}, not a Conv"), NCHW
    dense = original_layer(ctx.orig, layer)
    ctx.cert.originals[conv.name] = dense
    if isinstance(dense, str):
        return LayerProof("refuted", dense), NCHW
    problem = plain_conv(conv)
    if problem:
        return LayerProof("refuted", problem), NCHW
    x = ctx.fact(conv.input[0])
    want = ctx.orig.canon(layer.input)
    if isinstance(x, Unknown):
        return LayerProof("unproved", f"its input is not known: {x.reason}"), NCHW
    if not isinstance(want, SameAs) or not isinstance(x, SameAs):
        return LayerProof("refuted", "its input is a constant"), NCHW
    # An image [N, H, W, C] is read in NCHW, a token sequence [B, S, C] as [B, C, 1, S].
    expected: list[tuple[tuple[int | None, ...], SameAs]] = []
    if dense.in_pair is not None:  # a quantized sandwich: the Conv reads its activation's pair (in NCHW)
        want = SameAs(FLAT + dense.in_pair[1].output[0])
    for form in (NCHW, TOKENS):
        try:
            expected.append((form, SameAs(want.root, compose(want.layout, form))))
        except ValueError:
            continue
    # A token layer on an activation of higher rank, its trailing dims merged (nn.MultiheadAttention's
    # heads [S, B, H, D] before out_proj): the rewritten graph merges them with Reshape [0, 0, C].
    expected.append((TOKENS, SameAs(merged(want), TOKENS)))
    layout = next((k for k, v in expected if v == x), None)
    if layout is None and x.root:  # the cleanup folded the way there into a rearrangement
        layout = _folded_input(ctx, x, want)
    if layout is None:
        want_in, form_name = expected[0][1], "in NCHW" if expected[0][0] == NCHW else "as [B, C, 1, S]"
        # A rearrangement the walk could not match is a limit of the proof, not a disagreement.
        status = "unproved" if x.root.startswith(VIEW) else "refuted"
        return LayerProof(status, f"its input is {describe(x)}, not {layer.input!r} {form_name} ({describe(want_in)})"), NCHW
    try:
        kc = dense.weight_kc()
        problem = _same_const(ctx, conv.input[1], kc.reshape(*kc.shape, 1, 1), "weight")
        if problem:
            return LayerProof("refuted", problem), layout
        has_bias = len(conv.input) > 2 and conv.input[2]
        if dense.bias is None and has_bias:
            return LayerProof("refuted", "the Conv has a bias the original layer does not"), layout
        if dense.bias is not None:
            if not has_bias:
                return LayerProof("refuted", "the original layer's bias is missing from the Conv"), layout
            problem = _same_const(ctx, conv.input[2], dense.bias(), "bias")
            if problem:
                return LayerProof("refuted", problem), layout
    except Mismatch as e:
        return LayerProof("refuted", str(e)), layout
    return LayerProof("proved"), layout


def _folded_input(ctx: Context, x: SameAs, want: SameAs) -> tuple[int | None, ...] | None:
    """The layout in which ``x`` is the layer's activation ``want`` (in NCHW, as [B, C, 1, S], or with its
    trailing dims merged as [B, C, 1, S]), when one is a rearrangement of the other (``Views.same``)."""
    forms: list[tuple[tuple[int | None, ...], tuple[tuple[object, ...], ...]]] = [
        (NCHW, (("layout", NCHW),)),
        (TOKENS, (("layout", TOKENS),)),
        (TOKENS, (("reshape", (0, 0, None), False), ("layout", TOKENS))),
    ]
    return next((layout for layout, tail in forms if ctx.views.same(x, want, tail)), None)


def _same_const(ctx: Context, name: str, expected: np.ndarray, role: str) -> str | None:
    fact = ctx.fact(name)
    if not isinstance(fact, Const):
        return f"the Conv's {role} {name!r} is not a constant"
    return differs(fact.get(), expected, role)
