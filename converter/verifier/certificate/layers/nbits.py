"""What an original MatMulNBits (onnxruntime's com.microsoft 4- or 8-bit layer) computes, for the proof of its Conv.

``Y = A @ W^T (+ bias)`` with ``W [N, K]`` dequantized from its packed blocks (:func:`..blocks.nbits_weight`, the
certificate's own reading of the format), so it is a dense layer whose Conv weight must be, bit for bit, ``W`` as
``[N, K, 1, 1]`` (N the output channels), its bias the MatMulNBits' bias input or a constant Add after it, and
its input the layer's activation in NCHW or as ``[B, C, 1, S]``: :func:`.dense.prove` checks all of that from the
:class:`DenseLayer` given here. A Conv whose weight is ``DequantizeLinear`` in blocks of constants is a constant to
the walk (:func:`..constants.dequantize`), so the two floats are compared, whatever integers, scales and zero
points each side stores them as.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from converter.report import RewrittenLayer
from converter.verifier.certificate.blocks import nbits_weight
from converter.verifier.certificate.facts import Const, Fact
from converter.verifier.certificate.nodes import Attributes
from converter.verifier.certificate.original import Original
from converter.verifier.certificate.proofs import DenseLayer, Mismatch

DOMAIN, OP = "com.microsoft", "MatMulNBits"


def is_nbits(node: NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP


def original_layer(orig: Original, node: NodeProto, layer: RewrittenLayer, add_bias: Const | None) -> DenseLayer | str:
    """The dense layer an original MatMulNBits ``node`` computes from ``layer.input``, or why it is not the claimed one.

    Args:
        orig: the original graph.
        node: the MatMulNBits producing the layer's anchor.
        layer: the rule's claim.
        add_bias: the constant of an Add after it that the claim's output ends in, if any.
    """
    if node.output[0] != layer.anchor:
        return f"the MatMulNBits writes {node.output[0]!r}, not the layer's {layer.anchor!r}"
    if node.input[0] != layer.input:
        return f"the layer reads {node.input[0]!r}, not {layer.input!r}"
    ins = [orig.canon(n) for n in node.input]

    def weight_kc() -> np.ndarray:
        w = nbits_weight(node, ins)
        if isinstance(w, str):
            raise Mismatch(w)
        return w

    own = ins[5] if len(node.input) > 5 and node.input[5] else None
    if own is not None and add_bias is not None:
        return "both the MatMulNBits' bias and an Add after it"
    if own is not None and not isinstance(own, Const):
        return "the MatMulNBits' bias is not a constant"
    source = own if isinstance(own, Const) else add_bias
    try:
        n = Attributes(node).get_int("N", 0)
    except TypeError:
        return "MatMulNBits with a malformed N"
    bias = None if source is None else _bias(source, ins[2], n)
    return DenseLayer(node.input[0], weight_kc, bias)


def _bias(bias: Const, scales: Fact, n: int) -> Callable[[], np.ndarray]:
    """The bias as the Conv's ``[N]``: of the scales' (A's) type, varying along the last axis only."""

    def make() -> np.ndarray:
        b = np.asarray(bias.get())
        dtype = np.asarray(scales.get()).dtype if isinstance(scales, Const) else None
        if b.dtype != dtype:
            raise Mismatch(f"the original bias is {b.dtype}, the scales {dtype}")
        if b.ndim > 4 or any(d != 1 for d in b.shape[:-1]) or (b.ndim and b.shape[-1] not in (1, n)):
            raise Mismatch(f"the original bias of shape {list(b.shape)} is not per output channel")
        return np.broadcast_to(b.reshape(-1), (n,))

    return make
