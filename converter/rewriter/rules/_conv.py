"""The replacement every dense-to-conv rule emits: Transpose to NCHW, 1x1 Conv, Transpose back."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from converter.rewriter.rules._checks import Bias, Weight
from converter.rewriter.rules._engine import Context


def conv_bias(ctx: Context, bias: Bias, k: int) -> str:
    """Conv's bias input: the original initializer when it already is a [K] vector, else a new one."""
    # A bias read through Identity (the TorchScript exporter's deduplicated zeros) is the initializer it reads.
    root = ctx.scope.identity_root(bias.name)
    src = ctx.scope.source(root)
    dims = list(src.owner.initializers[root].dims) if src.kind == "initializer" else None  # type: ignore[union-attr]
    if not bias.transform and dims == [k]:
        return root
    value = bias.value
    return ctx.derived_initializer(
        f"conv_bias{bias.transform}", bias.name, lambda: np.ascontiguousarray(value), exact=(k, bias.scale)
    )


def conv_parameters(
    ctx: Context, weight_name: str, w: Weight, bias: Bias | None, matmul_out: str
) -> tuple[str, str | None, list[str], list[str]]:
    """A float layer's Conv weight ``[K, C, 1, 1]`` (made when it is written) and bias, with the constants the
    layer no longer reads (released) and, when the bias folds, the MatMul output that no longer exists (vanished)."""
    weight = ctx.derived_initializer("conv_weight", weight_name, w.conv, like=(w.conv_shape, w.dtype))
    if bias is None:
        return weight, None, [weight_name], []
    return weight, conv_bias(ctx, bias, w.k), [weight_name, bias.name], [matmul_out]


def conv_nodes(ctx: Context, rule: str, origin: str, base: str, x: str, weight: str, bias: str | None, out: str) -> list[NodeProto]:
    """``out = Transpose(Conv(Transpose(x)))``; the last node writes the original tensor name. The Conv is second."""
    nchw = ctx.names.fresh(f"{base}_nchw")
    conv_out = ctx.names.fresh(f"{base}_conv_nchw")
    inputs = [nchw, weight] + ([bias] if bias is not None else [])
    return [
        ctx.node(rule, origin, "Transpose", [x], [nchw], f"{base}_to_nchw", perm=[0, 3, 1, 2]),
        ctx.node(rule, origin, "Conv", inputs, [conv_out], f"{base}_conv", kernel_shape=[1, 1]),
        ctx.node(rule, origin, "Transpose", [conv_out], [out], f"{base}_to_nhwc", perm=[0, 2, 3, 1]),
    ]
