"""The replacement every token-layer rewrite emits: a 1x1 Conv in the (B, C, 1, S) layout.

``token_conv_nodes`` writes::

    Xc = Transpose(X, perm=[0, 2, 1])        [B, C, S]      (left out when X is given channels-first)
    X4 = Unsqueeze(Xc, axes=[2])             [B, C, 1, S]
    Z4 = Conv(X4, W [K, C, 1, 1], b)         [B, K, 1, S]
    Zc = Squeeze(Z4, axes=[2])               [B, K, S]      (the result, when the caller folds the way back)
    Z  = Transpose(Zc, perm=[0, 2, 1])       [B, S, K]

Shared by ``matmul_tokens_to_conv`` (a MatMul on [B, S, C]) and the Reshape sandwiches under
``tokens`` (``Reshape -> MatMul/Gemm -> Reshape`` back to rank 3), so both leave the same
nodes for the cleanup to cancel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from converter.rewriter.rules._engine import Context

TOKEN_AXIS = 2  # the unit axis the sequence gets: [B, C, S] -> [B, C, 1, S]
SWAP = [0, 2, 1]  # [B, S, C] <-> [B, C, S]


def token_conv_nodes(
    ctx: Context,
    rule: str,
    origin: str,
    base: str,
    x: str,
    weight: str,
    bias: str | None,
    out: str,
    *,
    channels_first: bool = False,
    fold_out: bool = False,
    convolution: Callable[[str, str], list[NodeProto]] | None = None,
) -> list[NodeProto]:
    """The nodes above, reading ``x`` ([B, S, C], or [B, C, S] with ``channels_first``) and writing ``out``
    ([B, S, K], or [B, K, S] with ``fold_out``: the Squeeze writes it). Exactly one node is the Conv.

    A quantized layer is another convolution: ``convolution(X4, Z4)`` gives the nodes that compute ``Z4`` from
    ``X4`` in its place (a QDQ activation's pair and weight's DequantizeLinear, then the Conv; a QLinearConv; a
    ConvInteger), and ``weight`` and ``bias`` are unused."""

    def make(op: str, inputs: list[str], output: str, suffix: str, **attrs: object) -> NodeProto:
        return ctx.node(rule, origin, op, inputs, [output], f"{base}_{suffix}", **attrs)

    axes, axes_attr = _axes(ctx), _axes_attr(ctx)
    nodes = []
    nct = x
    if not channels_first:
        nct = ctx.names.fresh(f"{base}_nct")
        nodes.append(make("Transpose", [x], nct, "to_nct", perm=SWAP))
    x4 = ctx.names.fresh(f"{base}_nc1t")
    conv_out = ctx.names.fresh(f"{base}_conv_nc1t")
    squeezed = out if fold_out else ctx.names.fresh(f"{base}_conv_nct")
    nodes.append(make("Unsqueeze", [nct, *axes], x4, "unsqueeze", **axes_attr))
    if convolution is None:
        nodes.append(make("Conv", [x4, weight] + ([bias] if bias is not None else []), conv_out, "conv", kernel_shape=[1, 1]))
    else:
        nodes += convolution(x4, conv_out)
    nodes.append(make("Squeeze", [conv_out, *axes], squeezed, "squeeze", **axes_attr))
    if not fold_out:
        nodes.append(make("Transpose", [squeezed], out, "to_nsc", perm=SWAP))
    return nodes


def conv_of(nodes: list[NodeProto], op: str = "Conv") -> NodeProto:
    return next(n for n in nodes if n.op_type == op)


def token_axis(axis: int | None) -> int | None:
    """Where dim ``axis`` of a ``[B, S, C]`` tensor is in the ``[B, C, 1, S]`` layout (None stays None)."""
    return None if axis is None else (0, 3, 1)[axis]


def _axes(ctx: Context) -> list[str]:
    """Squeeze/Unsqueeze's axes input (opset 13 on): one int64 constant ``[2]`` per graph."""
    if ctx.opset < 13:
        return []
    return [ctx.derived_initializer("axes", "tokens", lambda: np.array([TOKEN_AXIS], np.int64), exact=(TOKEN_AXIS,))]


def _axes_attr(ctx: Context) -> dict[str, object]:
    return {"axes": [TOKEN_AXIS]} if ctx.opset < 13 else {}
