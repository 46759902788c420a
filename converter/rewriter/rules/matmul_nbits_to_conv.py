"""onnxruntime's MatMulNBits is a block-quantized 1x1 convolution (opt-in: ``matmul_nbits``).

Before (``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer``, the genai model builder)::

    Y = MatMulNBits(A, B, scales[, zero_points][, g_idx][, bias])     com.microsoft; K, N, bits, block_size
    Y = A @ W^T (+ bias)        W[n, k] = (q[n, k] - z[n, k // bs]) * s[n, k // bs]

where ``q[n, k]`` is element ``k % bs`` of block ``k // bs`` of row ``n`` in ``B [N, ceil(K / bs), bs * bits / 8]``
(uint8, ``bits`` bits per value, the lowest bits first), ``s`` is ``scales`` as ``[N, ceil(K / bs)]``, and ``z`` is
``zero_points`` (uint8, ``bits`` bits per value, each row of N starting on a byte), ``2^(bits - 1)`` when absent.
A is ``[N, H, W, K]`` (rank 4) or a token sequence ``[B, S, K]`` (rank 3, with ``tokens``).

After::

    Wc = DequantizeLinear(Q [N, K, 1, 1], S [N, ceil(K / bs), 1, 1], Z [N, ceil(K / bs), 1, 1], axis=1, block_size=bs)
    Y  = Transpose(Conv(Transpose(A, [0, 3, 1, 2]), Wc, bias), [0, 2, 3, 1])       rank 4 (matmul_add_to_conv)
    Y  = Transpose(Squeeze(Conv(Unsqueeze(Transpose(A, [0, 2, 1]), [2]), Wc, bias), [2]), [0, 2, 1])    tokens

because ``Wc[n, k, 0, 0] = (Q[n, k] - Z[n, k // bs]) * S[n, k // bs] = W[n, k]`` (DequantizeLinear in blocks of
``bs`` along axis 1) and ``Conv(x, W)[.., n] = sum_k x[.., k] W[n, k]`` is what ``A @ W^T`` computes at every
position. ``Q`` is ``q`` unpacked, the padding of the last block cut off; ``S`` is ``scales``, whose order is already
the Conv's (output channel first); ``Z`` is ``z`` unpacked. With zero points, ``Q`` and ``Z`` are uint4 (uint8 for
8 bits): the same integers. Without (symmetric), ``Q`` is written signed, ``int4(q - 8)`` (``int8(q - 128)``), with
no zero point: ``(q - 8) - 0 = q - 8`` for every element, exactly, and the form onnxruntime's own quantizer writes
for symmetric weights in QDQ format. ``g_idx`` is accepted when it is ``k // bs`` (the default order) and there
are no zero points; a bias input (or a constant ``[N]`` Add after it) becomes the Conv's bias.

Why opt-in: onnxruntime runs MatMulNBits on CPU with packed 4-bit kernels, and ``DequantizeLinear -> Conv``
dequantizes the whole weight on every run: measured 1.32 CPU, 1 thread, four 1024x1024 layers at one token,
0.7 ms -> 22-28 ms (``python -m benchmarks.llm --nbits`` prints the figures). The output is as large (the same packed
integers and scales). NPU compilers that lower block-quantized Convs want the converted form; CPU users want
the original.

Declines (stable codes): ``nbits_opt_in`` (without ``matmul_nbits``), ``weight_not_constant`` /
``weight_is_graph_input`` (and the same for ``weight_scale``, ``weight_zero_point``, ``group_index``, ``bias``),
``quantized_dtype_unsupported`` (bits other than 4 and 8: DequantizeLinear has no 2-bit type in the opsets
onnxruntime 1.32 runs), ``zero_point_not_integer`` (float zero points, HQQ's: not a DequantizeLinear zero point),
``group_index_reordered`` (a g_idx that is not ``k // bs``: no blocked DequantizeLinear states it),
``group_index_unsupported`` (g_idx with zero points: onnxruntime 1.32 reads the zero points otherwise then),
``weight_dtype_mismatch`` (scales of another type than A), ``shape_mismatch``, ``weight_rank`` (B, scales or zero
points of other sizes than the attributes give), ``opset_too_old`` (blocked DequantizeLinear needs opset 21),
``runtime_kernel_missing``, plus ``rank_*``, ``constant_input`` and ``dtype_unsupported``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto, helper

from converter.graph import TensorType
from converter.providers import dtype_name
from converter.rewriter.rules._checks import (
    Bias,
    find_bias,
    require_constant_tensor,
    require_conv_dtype,
    require_rank,
    require_varying,
)
from converter.rewriter.rules._conv import conv_bias, conv_nodes
from converter.rewriter.rules._engine import Context, Decline, Plan, Replacement, Rule, node_label
from converter.rewriter.rules._integer import integer_type
from converter.rewriter.rules._quantized import FOUR_BIT_TYPES, attrs_of, dequantize_conv_runs, integer_initializer
from converter.rewriter.rules._tokens import conv_of, token_conv_nodes

_BLOCKED_OPSET = 21  # DequantizeLinear's block_size, and int4/uint4, from opset 21 on
# bits -> (the unsigned type, the signed type) the Conv's weight is written in.
_TYPES = {4: (TensorProto.UINT4, TensorProto.INT4), 8: (TensorProto.UINT8, TensorProto.INT8)}


@dataclass(frozen=True)
class NBitsWeight:
    """A MatMulNBits' weight as its attributes and constants give it, read only when the Conv's is written."""

    packed: TensorProto  # B
    scales: TensorProto
    zero_points: TensorProto | None
    k: int  # input channels (the Conv's C)
    n: int  # output channels (the Conv's K)
    bits: int
    block: int

    @property
    def blocks(self) -> int:
        return -(-self.k // self.block)

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    @property
    def q_type(self) -> int:
        unsigned, signed = _TYPES[self.bits]
        return signed if self.symmetric else unsigned

    def np_type(self, t: int) -> np.dtype:
        return FOUR_BIT_TYPES.get(t) or np.dtype(helper.tensor_dtype_to_np_dtype(t))

    def data(self, read) -> np.ndarray:  # noqa: ANN001 - the scope's value_of
        """``Q [N, K, 1, 1]``: B's values unpacked, the last block's padding cut; signed ``q - 2^(bits-1)`` when symmetric."""
        blob = self.block * self.bits // 8
        packed = np.asarray(read(self.packed), np.uint8).reshape(self.n, self.blocks * blob)
        q = _unpack(packed, self.bits)[:, : self.k]
        if self.symmetric:
            return (q.astype(np.int16) - (1 << (self.bits - 1))).astype(self.np_type(self.q_type)).reshape(self.n, self.k, 1, 1)
        return q.astype(self.np_type(self.q_type)).reshape(self.n, self.k, 1, 1)

    def scale(self, read) -> np.ndarray:  # noqa: ANN001
        """``S [N, ceil(K / bs), 1, 1]``: the scales as they are, given the Conv's layout."""
        return np.ascontiguousarray(np.asarray(read(self.scales)).reshape(self.n, self.blocks, 1, 1))

    def zero_point(self, read) -> np.ndarray:  # noqa: ANN001
        """``Z [N, ceil(K / bs), 1, 1]``: the zero points unpacked (each row of N starts on a byte)."""
        assert self.zero_points is not None
        row = -(-self.blocks * self.bits // 8)
        z = _unpack(np.asarray(read(self.zero_points), np.uint8).reshape(self.n, row), self.bits)[:, : self.blocks]
        return z.astype(self.np_type(self.q_type)).reshape(self.n, self.blocks, 1, 1)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """``[rows, bytes]`` uint8 as ``[rows, values]`` uint8, ``bits`` bits each, the lowest bits of a byte first."""
    if bits == 8:
        return packed
    mask = np.uint8((1 << bits) - 1)
    parts = [(packed >> np.uint8(shift)) & mask for shift in range(0, 8, bits)]
    return np.stack(parts, axis=-1).reshape(packed.shape[0], -1)


@dataclass
class NBitsPlan(Plan):
    x: str = ""
    rank: int = 4
    weight: NBitsWeight | None = None
    bias_input: str = ""  # the MatMulNBits' own bias (input 5)
    bias: Bias | None = None  # or an Add after it
    origin: str = ""


class MatMulNBitsToConv(Rule):
    name = "matmul_nbits_to_conv"
    op_type = "MatMulNBits"
    domain = "com.microsoft"

    def check(self, node: NodeProto, ctx: Context) -> NBitsPlan:
        if not ctx.options.matmul_nbits:
            raise Decline(
                "nbits_opt_in",
                "MatMulNBits becomes DequantizeLinear -> Conv only on request (matmul_nbits=True, --matmul-nbits): "
                "onnxruntime's CPU runs it much faster as it is",
            )
        x = node.input[0]
        xt = _activation(ctx, x)
        shape = xt.shape or ()
        rank = len(shape)
        require_varying(ctx, x)
        w = _require_weight(ctx, node, xt.elem_type)
        if isinstance(shape[-1], int) and shape[-1] != w.k:
            raise Decline("shape_mismatch", f"{x!r} has {shape[-1]} channels but the MatMulNBits has K={w.k}")
        require_conv_dtype(ctx, xt.elem_type)
        if ctx.opset < _BLOCKED_OPSET:
            raise Decline(
                "opset_too_old",
                f"the model imports opset {ctx.opset}; DequantizeLinear in blocks (and 4-bit types) need opset {_BLOCKED_OPSET}",
            )
        why = dequantize_conv_runs(
            w.q_type, w.scales.data_type, not w.symmetric, w.block, 1, ctx.opset, 0, tuple(ctx.options.providers)
        )
        if why is not None:
            raise Decline(
                "runtime_kernel_missing",
                f"onnxruntime {'+'.join(ctx.options.providers)} cannot run the {dtype_name(w.q_type)} weight's "
                f"DequantizeLinear in blocks of {w.block} before a Conv: {why}",
            )
        bias_input = node.input[5] if len(node.input) > 5 else ""
        if bias_input:
            bias_t = require_constant_tensor(ctx, bias_input, "bias")
            if list(bias_t.dims) != [w.n] or bias_t.data_type != xt.elem_type:
                raise Decline("bias_not_per_channel", f"the MatMulNBits bias {bias_input!r} is not a [{w.n}] tensor of A's type")
        removed = [node]
        bias, bias_reason = None, None
        if not bias_input:
            bias, bias_reason = find_bias(ctx, node.output[0], np.dtype(helper.tensor_dtype_to_np_dtype(xt.elem_type)), w.n)
            if bias is not None and len(ctx.scope.constant_tensor(bias.name).dims) > rank:
                bias, bias_reason = None, "bias_not_per_channel"
            if bias is not None:
                removed.append(bias.add)
        out = node.output[0] if bias is None else bias.add.output[0]
        notes: dict[str, object] = {
            "bias_folded": bool(bias_input) or bias is not None,
            "weight_quantization": f"blocks_of_{w.block}",
            "bits": w.bits,
            "zero_point": "none (symmetric, written signed)" if w.symmetric else "uint",
        }
        level = int(attrs_of(node).get("accuracy_level", 0))
        if level > 1:  # onnxruntime may compute it with lower-precision activations; the Conv computes in A's type
            notes["accuracy_level"] = level
        if bias_reason:
            notes["bias_reason"] = bias_reason
        return NBitsPlan(removed, [out], notes, x=x, rank=rank, weight=w, bias_input=bias_input, bias=bias, origin=node_label(node))

    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        assert isinstance(plan, NBitsPlan)
        w, node = plan.weight, plan.removed[0]
        assert w is not None
        base = node.name or node.output[0]
        rule, origin, read = self.name, plan.origin, ctx.scope.value_of
        packed, scales = node.input[1], node.input[2]
        shape = (w.n, w.k, 1, 1)
        q = integer_initializer(ctx, "conv_weight", packed, lambda: w.data(read), shape, w.np_type(w.q_type))
        params_shape = (w.n, w.blocks, 1, 1)
        s_type = np.dtype(helper.tensor_dtype_to_np_dtype(w.scales.data_type))
        s = ctx.derived_initializer("conv_scale", scales, lambda: w.scale(read), like=(params_shape, s_type))
        inputs = [q, s]
        released = [packed, scales]
        if not w.symmetric:
            zp_name = node.input[3]
            zp_type = w.np_type(w.q_type)
            inputs.append(integer_initializer(ctx, "conv_zero_point", zp_name, lambda: w.zero_point(read), params_shape, zp_type))
            released.append(zp_name)
        if len(node.input) > 4 and node.input[4]:
            released.append(node.input[4])  # g_idx: the default order, said by the blocks
        weight = ctx.names.fresh(f"{base}_conv_weight")
        dq = ctx.node(rule, origin, "DequantizeLinear", inputs, [weight], f"{base}_weight", axis=1, block_size=w.block)
        bias: str | None = plan.bias_input or None
        vanished = []
        if plan.bias is not None:
            bias = conv_bias(ctx, plan.bias, w.n)
            released.append(plan.bias.name)
            vanished.append(node.output[0])
        out = plan.outputs[0]
        if plan.rank == 4:
            nodes = [dq, *conv_nodes(ctx, rule, origin, base, plan.x, weight, bias, out)]
            conv = nodes[2]
        else:
            nodes = [dq, *token_conv_nodes(ctx, rule, origin, base, plan.x, weight, bias, out)]
            conv = conv_of(nodes)
        return Replacement(nodes, released=released, vanished=vanished, layer=(plan.x, out, conv.name))


def _activation(ctx: Context, x: str) -> TensorType:
    """A's type: rank 4, or rank 3 with ``tokens``. Shape inference stops at every MatMulNBits (an op of onnxruntime's
    domain), so where it knows nothing the type is carried through them (``integer_type``)."""
    declared = ctx.scope.type_of(x)
    if declared is None or declared.shape is None:
        carried = integer_type(ctx, x)
        if carried is not None and carried.shape is not None:
            if len(carried.shape) == 4 or (len(carried.shape) == 3 and ctx.options.tokens):
                return carried
            raise Decline("rank_not_4", f"{x!r} has rank {len(carried.shape)}, not 4")
    rank = 3 if declared is not None and declared.shape is not None and declared.rank == 3 and ctx.options.tokens else 4
    return require_rank(ctx, x, rank)


def _require_weight(ctx: Context, node: NodeProto, elem_type: int) -> NBitsWeight:
    """The MatMulNBits' constants, checked against its attributes (see the module docstring for the declines)."""
    attrs = attrs_of(node)
    k, n, bits, block = (int(attrs.get(a, 0)) for a in ("K", "N", "bits", "block_size"))
    if bits not in _TYPES:
        raise Decline(
            "quantized_dtype_unsupported",
            f"MatMulNBits with {bits}-bit weights; DequantizeLinear takes 4- and 8-bit integers (no 2-bit type in opset 21)",
        )
    if k < 1 or n < 1 or block < 1 or block * bits % 8:
        raise Decline("weight_rank", f"MatMulNBits with K={k}, N={n}, block_size={block}")
    if len(node.input) < 3:
        raise Decline("weight_rank", "MatMulNBits without its scales")
    packed = require_constant_tensor(ctx, node.input[1], "weight")
    blocks = -(-k // block)
    blob = block * bits // 8
    if packed.data_type != TensorProto.UINT8 or int(np.prod(packed.dims)) != n * blocks * blob:
        raise Decline(
            "weight_rank", f"the packed weight {node.input[1]!r} of shape {list(packed.dims)} is not uint8 [{n}, {blocks}, {blob}]"
        )
    scales = require_constant_tensor(ctx, node.input[2], "weight_scale")
    if int(np.prod(scales.dims)) != n * blocks:
        raise Decline("weight_rank", f"the scales {node.input[2]!r} of shape {list(scales.dims)} are not [{n}, {blocks}]")
    if scales.data_type != elem_type:
        raise Decline(
            "weight_dtype_mismatch", f"the scales are {dtype_name(scales.data_type)}, the activation is {dtype_name(elem_type)}"
        )
    zero_points = None
    if len(node.input) > 3 and node.input[3]:
        zero_points = require_constant_tensor(ctx, node.input[3], "weight_zero_point")
        if zero_points.data_type != TensorProto.UINT8:
            raise Decline(
                "zero_point_not_integer",
                f"the zero points {node.input[3]!r} are {dtype_name(zero_points.data_type)}; DequantizeLinear's zero point is an "
                "integer of the weight's type",
            )
        row = -(-blocks * bits // 8)
        if int(np.prod(zero_points.dims)) != n * row:
            raise Decline("weight_rank", f"the zero points of shape {list(zero_points.dims)} are not uint8 [{n}, {row}]")
    if len(node.input) > 4 and node.input[4]:
        if zero_points is not None:
            raise Decline(
                "group_index_unsupported",
                f"g_idx {node.input[4]!r} with zero points: onnxruntime 1.32 then reads the zero points otherwise than "
                "without g_idx (measured), in a way no DequantizeLinear states",
            )
        g_idx = require_constant_tensor(ctx, node.input[4], "group_index")
        order = np.asarray(ctx.scope.value_of(g_idx)).reshape(-1)
        if order.shape != (k,) or not np.array_equal(order.astype(np.int64), np.arange(k) // block):
            raise Decline(
                "group_index_reordered",
                f"g_idx {node.input[4]!r} groups the input channels in another order than k // {block}; a DequantizeLinear in "
                "blocks only states consecutive blocks",
            )
    return NBitsWeight(packed, scales, zero_points, k, n, bits, block)
