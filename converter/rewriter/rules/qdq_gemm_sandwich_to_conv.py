"""A quantized (QDQ) Gemm sandwich: a Linear on a 4D tensor as onnxsim leaves it, quantized by onnxruntime, becomes a
quantized 1x1 Conv.

Before (``Reshape -> Gemm -> Reshape`` after ``quantize_static(..., quant_format=QDQ)``; the output's pair is optional)::

    rows = DequantizeLinear(QuantizeLinear(Reshape(x, [-1, C]), sx, zx), sx, zx)     x: [N, H, W, C]
    flat = Gemm(rows, DequantizeLinear(Wq, sw, zw[, axis]), b, transB)                Wq: int [C, K], or [K, C] (transB=1)
    y    = Reshape(DequantizeLinear(QuantizeLinear(flat, sy, zy), sy, zy), [N, H, W, K])

where ``b`` is the quantizer's ``DequantizeLinear(bq, sx * sw, 0, axis=0)`` of an int32 ``[K]``, or a float
constant (``[K]``, ``[1, K]`` or one value), or absent. onnxruntime 1.32 keeps the Gemm and its ``transB`` as they
are, and quantizes a ``transB=1`` weight per output channel along axis 0 (its K), a ``transB=0`` one along axis 1.

After::

    xt = DequantizeLinear(QuantizeLinear(Transpose(x, [0, 3, 1, 2]), sx, zx), sx, zx)
    yt = Conv(xt, DequantizeLinear(Wq' as [K, C, 1, 1], sw, zw[, axis']), b')
    y  = Transpose(DequantizeLinear(QuantizeLinear(yt, sy, zy), sy, zy), [0, 2, 3, 1])

with ``Wq' = Wq^T`` (``transB=0``: ``W[c, k] = (Wq[c, k] - zw) sw`` so ``W^T`` is the dequantized ``Wq^T``, and a
per-channel axis 1 (K) becomes 0, 0 (C) becomes 1) or ``Wq`` itself (``transB=1``: stored ``[K, C]``, Conv's layout
already; the axis stays: 0 is K in both). ``b'`` is ``b``'s DequantizeLinear again beside the Conv (the same int32
data and parameters), or the float bias times ``beta`` as a ``[K]`` vector. The Conv adds the bias inside the
output's pair, where the Gemm did, so ``y`` is the original's value for value. Everything else is the QDQ MatMul
sandwich's (``qdq_sandwich_to_conv.py``): the Reshapes proved per position, the pairs moved onto the 4D tensor,
nothing requantized.

Declines, besides the QDQ sandwich's (``activation_not_quantized`` among them): ``gemm_trans_a``
(``transA=1``), ``gemm_alpha`` (``alpha != 1``: it would scale the dequantized weight, which is
requantizing), ``gemm_beta`` (``beta != 1`` on a quantized bias, the same),
``bias_not_per_channel`` / ``bias_not_constant`` / ``bias_is_graph_input`` (the float bias, as the float Gemm
sandwich reads it).
"""

from __future__ import annotations

from onnx import NodeProto

from converter.rewriter.rules._engine import Context, Decline, Replacement, Rule
from converter.rewriter.rules._quantized import quantized_bias
from converter.rewriter.rules._sandwich import attr_value
from converter.rewriter.rules.gemm_sandwich_to_conv import gemm_attributes, gemm_bias
from converter.rewriter.rules.qdq_sandwich_to_conv import QdqSandwichPlan, plan_qdq_sandwich, rewrite_qdq_sandwich


class QdqGemmSandwichToConv(Rule):
    name = "qdq_gemm_sandwich_to_conv"
    op_type = "Gemm"

    def check(self, node: NodeProto, ctx: Context) -> QdqSandwichPlan:
        plan = plan_qdq_sandwich(node, ctx, transposed=bool(attr_value(node, "transB", 0)))  # the pattern first
        alpha, beta, _ = gemm_attributes(node)
        if alpha != 1.0:
            raise Decline("gemm_alpha", f"Gemm with alpha={alpha:g} would scale the dequantized weight (requantize it)")
        c = node.input[2] if len(node.input) > 2 else ""
        if not c:
            return plan
        w, x_type = plan.weight, plan.sandwich.x_type  # type: ignore[union-attr]
        assert w is not None and x_type is not None
        plan.bias_dq = quantized_bias(ctx, c, w.k, x_type.elem_type)
        if plan.bias_dq is not None:
            if beta != 1.0:
                raise Decline("gemm_beta", f"Gemm with beta={beta:g} would scale the dequantized bias (requantize it)")
            if [id(n) for n in ctx.scope.consumers(c)] == [id(node)] and c not in ctx.scope.output_names:
                plan.removed.append(plan.bias_dq)
            plan.notes["bias_quantized"] = True
        else:
            plan.bias = gemm_bias(ctx, node, w.k, beta)
            if beta != 1.0:
                plan.notes["bias_scaled_by_beta"] = beta
        plan.notes["bias_folded"] = True
        plan.notes.pop("bias_reason")
        return plan

    def rewrite(self, plan: QdqSandwichPlan, ctx: Context) -> Replacement:
        return rewrite_qdq_sandwich(self, plan, ctx)
