"""``Reshape -> Gemm -> Reshape`` as onnxsim / onnxslim leave a 4D MatMul + Add: a 1x1 Conv.

Before::

    y = Reshape(Gemm(Reshape(x, [-1, C]), B, bias, alpha, beta, transB), [N, H, W, K])

After::

    y = Transpose(Conv(Transpose(x, [0, 3, 1, 2]), W as [K, C, 1, 1], beta * bias), [0, 2, 3, 1])

with ``W = alpha * (B^T if transB else B)`` as the [C, K] weight. Gemm's bias must be a per-output
vector (``[K]``, ``[1, K]`` or scalar); ``transA`` must be 0. A bias Add after the sandwich folds in
only when the Gemm has none.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from converter.rewriter.rules._checks import Bias, require_constant, require_weight
from converter.rewriter.rules._engine import Context, Decline, Replacement, Rule
from converter.rewriter.rules._sandwich import attr_value
from converter.rewriter.rules.tensordot_to_conv import SandwichPlan, plan_sandwich, rewrite_sandwich


def gemm_attributes(node: NodeProto) -> tuple[float, float, bool]:
    """``(alpha, beta, transB)`` of a Gemm that reads the activation as it is (``transA=1`` is declined)."""
    if attr_value(node, "transA", 0):
        raise Decline("gemm_trans_a", "Gemm with transA=1 multiplies the transposed activation")
    alpha, beta = float(attr_value(node, "alpha", 1.0)), float(attr_value(node, "beta", 1.0))  # type: ignore[arg-type]
    return alpha, beta, bool(attr_value(node, "transB", 0))


def gemm_bias(ctx: Context, node: NodeProto, k: int, beta: float) -> Bias | None:
    """Gemm's constant C as the Conv's bias, ``beta * C`` as a ``[K]`` vector (C ``[K]``, ``[1, K]`` or one value);
    None when the Gemm has no C."""
    if len(node.input) <= 2 or not node.input[2]:
        return None
    value = require_constant(ctx, node.input[2], "bias")
    if value.size not in (1, k) or any(d != 1 for d in value.shape[:-1]):
        raise Decline("bias_not_per_channel", f"Gemm bias of shape {list(value.shape)} is not per output")
    vector = np.broadcast_to(value.reshape(-1), (k,)) * np.asarray(beta, dtype=value.dtype)
    return Bias(node, node.input[2], vector.astype(value.dtype), "" if beta == 1.0 else f"_b{beta:g}", beta)


class GemmSandwichToConv(Rule):
    name = "gemm_sandwich_to_conv"
    op_type = "Gemm"

    def check(self, node: NodeProto, ctx: Context) -> SandwichPlan:
        producer = ctx.scope.producers.get(node.input[0])
        if producer is None or producer.op_type != "Reshape":
            raise Decline(Decline.NO_PATTERN, "the input is not a Reshape")
        alpha, beta, trans_b = gemm_attributes(node)
        w = require_weight(ctx, node.input[1], transposed=trans_b, alpha=alpha)
        bias = gemm_bias(ctx, node, w.k, beta)
        key = f"conv_weight{'_t' if trans_b else ''}{'' if alpha == 1.0 else f'_a{alpha:g}'}"
        plan = plan_sandwich(self, node, ctx, node.input[1], w, key, bias)
        if bias is not None and beta != 1.0:
            plan.notes["bias_scaled_by_beta"] = beta
        return plan

    def rewrite(self, plan: SandwichPlan, ctx: Context) -> Replacement:
        return rewrite_sandwich(self, plan, ctx)
