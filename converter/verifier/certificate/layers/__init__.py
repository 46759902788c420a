"""The layer provers: the proof of a Conv that a rule made (named in a ``RewrittenLayer``), by its op type.

A prover receives the walk's :class:`~converter.verifier.certificate.context.Context`, the Conv node and the
layer's claim, and returns the :class:`LayerProof` and the layout in which the Conv reads the layer's
activation (NCHW, or TOKENS for a token sequence); it records what the layer is in the original in
``ctx.cert.originals`` (for the numeric checks). The walk sets the Conv's output fact from that.
:mod:`.sandwich` proves the Q/DQ nodes around a quantized sandwich's Conv.
"""

from __future__ import annotations

from collections.abc import Callable

from onnx import NodeProto

from converter.report import RewrittenLayer
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.layers import dense, integer
from converter.verifier.certificate.layers.integer import INTEGER_CONVS
from converter.verifier.certificate.layouts import Layout
from converter.verifier.certificate.proofs import LayerProof

LayerProver = Callable[[Context, NodeProto, RewrittenLayer], tuple[LayerProof, Layout]]

LAYER_PROVERS: dict[str, LayerProver] = {
    "Conv": dense.prove,  # MatMul / Gemm (+ Add), a quantized sandwich's too
    "QLinearConv": integer.prove,  # QLinearMatMul
    "ConvInteger": integer.prove,  # MatMulInteger
}

__all__ = ["INTEGER_CONVS", "LAYER_PROVERS", "LayerProver"]
