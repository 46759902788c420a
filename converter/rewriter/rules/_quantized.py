"""Reading quantization parameters for the rules of quantized dense layers (QDQ, QLinearMatMul, MatMulInteger).

A quantized tensor is ``(q, scale, zero_point)`` with ``real = (q - zero_point) * scale``. The
parameters are per tensor (``scale`` has one element) or per axis (``scale`` is 1-D along ``axis``).
Rewriting a ``[C, K]`` weight into a ``[K, C, 1, 1]`` Conv weight moves the integer data only:
``q`` is transposed and reshaped, ``scale`` and ``zero_point`` are kept as they are (the same
tensors), and a per-axis ``axis`` follows its dim (1 -> 0 for per-output-channel, 0 -> 1 for
per-input-channel). A weight stored ``[K, C]`` (Gemm's ``transB=1``) is only reshaped, and its axis stays
(0 is K, 1 is C, in both layouts). No value is requantized, so the dequantized weight is the original's,
bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper

from converter.graph import transpose_2d
from converter.providers import dtype_name
from converter.rewriter.rules._checks import require_constant_tensor
from converter.rewriter.rules._engine import Context, Decline

_DEFAULT = ("", "ai.onnx")
# Integer types whose numpy form is one element per value (packed 4-bit types are left alone).
QUANTIZED_TYPES = {
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.UINT16: np.dtype(np.uint16),
}


def attrs_of(node: NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def produced_by(ctx: Context, name: str, op_type: str) -> NodeProto | None:
    node = ctx.scope.producers.get(name)
    if node is None or node.op_type != op_type or node.domain not in _DEFAULT:
        return None
    return node


@dataclass(frozen=True)
class Params:
    """A quantization's scale and zero point (constant names; ``zero_point`` "" when absent) and their granularity.

    ``axis`` is the normalized per-axis dim, None for per-tensor.
    """

    scale: str
    zero_point: str
    axis: int | None
    scale_dtype: int


def _one_value(dims: list[int]) -> bool:
    return len(dims) <= 1 and all(d == 1 for d in dims)


def read_params(
    ctx: Context, node: NodeProto, scale_slot: int, zp_slot: int, data_dims: list[int | str | None], role: str
) -> Params:
    """Constant scale/zero point of a (De)QuantizeLinear-like node whose data has ``data_dims``."""
    scale_name = node.input[scale_slot]
    scale = require_constant_tensor(ctx, scale_name, f"{role}_scale")
    zp_name = node.input[zp_slot] if len(node.input) > zp_slot else ""
    zp_dims: list[int] | None = None
    if zp_name:
        zp_dims = list(require_constant_tensor(ctx, zp_name, f"{role}_zero_point").dims)
    dims = list(scale.dims)
    attrs = attrs_of(node)
    if attrs.get("block_size", 0):
        raise Decline("blocked_quantization", f"{node.op_type} {node.name!r} quantizes in blocks (block_size)")
    # A one-element scale and zero point of rank <= 1 agree (onnxruntime's quantizer writes an int32 bias's as [1] and []).
    if zp_dims is not None and zp_dims != dims and not (_one_value(dims) and _one_value(zp_dims)):
        raise Decline("quantization_params_mismatch", f"the {role} scale has shape {dims}, its zero point {zp_dims}")
    if len(dims) == 0 or (len(dims) == 1 and dims[0] == 1 and "axis" not in attrs):
        return Params(scale_name, zp_name, None, scale.data_type)
    rank = len(data_dims)
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if len(dims) != 1 or not 0 <= axis < rank:
        raise Decline("quantization_axis_mismatch", f"the {role} scale of shape {dims} is neither per tensor nor per axis {axis}")
    if isinstance(data_dims[axis], int) and data_dims[axis] != dims[0]:
        raise Decline(
            "quantization_axis_mismatch", f"the {role} scale has {dims[0]} elements, the {role}'s axis {axis} has {data_dims[axis]}"
        )
    return Params(scale_name, zp_name, axis, scale.data_type)


@dataclass(frozen=True)
class QuantizedWeight:
    """A dense layer's integer weight and its parameters, read only when the Conv weight is made.

    Stored ``[C, K]``, or ``[K, C]`` with ``stored_kc`` (Gemm's ``transB=1``: Conv's layout already).
    """

    tensor: TensorProto
    name: str
    c: int
    k: int
    dtype: np.dtype
    params: Params
    stored_kc: bool = False

    @property
    def conv_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c, 1, 1)

    @property
    def conv_axis(self) -> int | None:
        """The per-axis dim in the ``[K, C, 1, 1]`` layout: K (0) for per-output-channel, C (1) for per-input-channel."""
        if self.params.axis is None:
            return None
        return self.params.axis if self.stored_kc else 1 - self.params.axis

    @property
    def key(self) -> str:
        """What the Conv weight is made of ``tensor`` (for sharing it: a square weight may be read both ways)."""
        return "conv_weight_t" if self.stored_kc else "conv_weight"

    def conv(self, read: Any) -> np.ndarray:
        """``q^T`` (``q`` when stored ``[K, C]``) as ``[K, C, 1, 1]``: the integer data moved, not changed."""
        q = read(self.tensor)
        if self.stored_kc:
            return np.ascontiguousarray(q.reshape(self.conv_shape))
        return transpose_2d(q.reshape(self.c, self.k)).reshape(self.conv_shape)


def require_quantized_weight(
    ctx: Context, name: str, scale_slot: int, zp_slot: int, node: NodeProto, transposed: bool = False
) -> QuantizedWeight:
    """The constant integer ``[C, K]`` weight ``name`` (``[K, C]`` when ``transposed``) with the parameters
    ``node`` reads at the given slots."""
    t = require_constant_tensor(ctx, name, "weight")
    dims = list(t.dims)
    if t.data_type not in QUANTIZED_TYPES:
        raise Decline(
            "quantized_dtype_unsupported",
            f"weight {name!r} is {onnx.helper.tensor_dtype_to_string(t.data_type)}; int8, uint8, int16 and uint16 are supported",
        )
    if len(dims) != 2:
        raise Decline("weight_rank", f"quantized weight {name!r} has rank {len(dims)}; a dense layer needs [C, K]")
    params = read_params(ctx, node, scale_slot, zp_slot, dims, "weight")
    c, k = (dims[1], dims[0]) if transposed else (dims[0], dims[1])
    return QuantizedWeight(t, name, c, k, QUANTIZED_TYPES[t.data_type], params, transposed)


@dataclass(frozen=True)
class ActivationQDQ:
    """``x = DequantizeLinear(QuantizeLinear(a))`` in front of a layer; ``exclusive``: only the layer reads them."""

    q: NodeProto
    dq: NodeProto
    a: str
    q_params: Params
    dq_params: Params
    exclusive: bool


def activation_qdq(ctx: Context, x: str, x_dims: list[int | str | None], reader: NodeProto) -> ActivationQDQ | None:
    """The activation's QuantizeLinear -> DequantizeLinear pair, if ``x`` is one with constant parameters.

    A pair that is not of that shape (computed scales, blocks, another axis) is simply not moved: the
    layer's Transpose then stays between the pair and the Conv. Never declines the layer.
    """
    dq = produced_by(ctx, x, "DequantizeLinear")
    if dq is None:
        return None
    q = produced_by(ctx, dq.input[0], "QuantizeLinear")
    if q is None:
        return None
    try:
        q_params = read_params(ctx, q, 1, 2, x_dims, "activation")
        dq_params = read_params(ctx, dq, 1, 2, x_dims, "activation")
    except Decline:
        return None
    scope = ctx.scope
    exclusive = (
        [id(n) for n in scope.consumers(x)] == [id(reader)]
        and [id(n) for n in scope.consumers(dq.input[0])] == [id(dq)]
        and x not in scope.output_names
        and dq.input[0] not in scope.output_names
    )
    return ActivationQDQ(q, dq, q.input[0], q_params, dq_params, exclusive)


def nchw_axis(axis: int | None) -> int | None:
    """Where dim ``axis`` of an NHWC tensor is after ``Transpose(perm=[0, 3, 1, 2])``."""
    return None if axis is None else [0, 3, 1, 2].index(axis)


def moved_attrs(node: NodeProto, params: Params, new_axis: int | None) -> dict[str, Any]:
    """``node``'s attributes for the same parameters on data whose dim ``params.axis`` is now ``new_axis``.

    Per-tensor parameters keep every attribute as it was (an ``axis`` there is ignored by the op).
    """
    attrs = attrs_of(node)
    if params.axis is not None:
        attrs["axis"] = new_axis
    return attrs


def require_qdq_weight(
    ctx: Context, node: NodeProto, activation_type: int, transposed: bool = False
) -> tuple[QuantizedWeight, NodeProto]:
    """The ``DequantizeLinear`` of a constant integer ``[C, K]`` weight (``[K, C]`` when ``transposed``) that a QDQ
    MatMul or Gemm reads (input 1), and that weight.

    Raises ``Decline(NO_PATTERN)`` when the weight is no DequantizeLinear, ``weight_dtype_mismatch`` when it
    dequantizes to another float type than the activation's.
    """
    weight_dq = produced_by(ctx, node.input[1], "DequantizeLinear")
    if weight_dq is None:
        raise Decline(Decline.NO_PATTERN, "the weight is not a DequantizeLinear")
    w = require_quantized_weight(ctx, weight_dq.input[0], 1, 2, weight_dq, transposed)
    if w.params.scale_dtype != activation_type:
        raise Decline(
            "weight_dtype_mismatch",
            f"the weight dequantizes to {dtype_name(w.params.scale_dtype)}, the activation is {dtype_name(activation_type)}",
        )
    return w, weight_dq


def qdq_pair_nodes(
    ctx: Context, rule: str, origin: str, base: str, data: str, pair: ActivationQDQ, new_axis: int | None, tag: str
) -> tuple[list[NodeProto], str]:
    """``DequantizeLinear(QuantizeLinear(data))`` with ``pair``'s own parameters (the same tensors), a per-axis
    axis moved to ``new_axis``; returns the two nodes and the dequantized tensor."""
    q_out, dq_out = ctx.names.fresh(f"{base}_{tag}_quantized"), ctx.names.fresh(f"{base}_{tag}_dequantized")
    q_attrs = moved_attrs(pair.q, pair.q_params, new_axis)
    dq_attrs = moved_attrs(pair.dq, pair.dq_params, new_axis)
    q = ctx.node(rule, origin, "QuantizeLinear", [data, *pair.q.input[1:]], [q_out], f"{base}_{tag}_quantize", **q_attrs)
    dq = ctx.node(rule, origin, "DequantizeLinear", [q_out, *pair.dq.input[1:]], [dq_out], f"{base}_{tag}_dequantize", **dq_attrs)
    return [q, dq], dq_out


def qdq_weight_node(ctx: Context, rule: str, origin: str, base: str, w: QuantizedWeight, weight_dq: NodeProto) -> NodeProto:
    """``DequantizeLinear(Wq^T as [K, C, 1, 1], scale, zero_point)``: the same integers moved, the same parameters."""
    wq = ctx.derived_initializer(w.key, w.name, lambda: w.conv(ctx.scope.value_of), like=(w.conv_shape, w.dtype))
    weight = ctx.names.fresh(f"{base}_conv_weight")
    attrs = moved_attrs(weight_dq, w.params, w.conv_axis)
    return ctx.node(rule, origin, "DequantizeLinear", [wq, *weight_dq.input[1:]], [weight], f"{base}_weight", **attrs)


def quantized_bias(ctx: Context, name: str, k: int, dtype: int) -> NodeProto | None:
    """The ``DequantizeLinear`` that makes ``name`` from a constant int32 ``[K]`` with constant parameters dequantizing
    to ``dtype`` (the QDQ recipe's bias: scale ``x_scale * w_scale``, zero point 0), or None."""
    dq = produced_by(ctx, name, "DequantizeLinear")
    if dq is None or not ctx.scope.source(dq.input[0]).is_constant:
        return None
    q = ctx.scope.constant_tensor(dq.input[0])
    if q.data_type != TensorProto.INT32 or list(q.dims) != [k]:
        return None
    try:
        params = read_params(ctx, dq, 1, 2, [k], "bias")
    except Decline:
        return None
    return dq if params.scale_dtype == dtype else None


def qdq_bias_node(ctx: Context, rule: str, origin: str, base: str, bias_dq: NodeProto) -> NodeProto:
    """The Conv's bias: ``bias_dq`` again beside the Conv (the same int32 data and parameters); the original goes
    with the layer when only the layer read it."""
    out = ctx.names.fresh(f"{base}_conv_bias")
    return ctx.node(rule, origin, "DequantizeLinear", list(bias_dq.input), [out], f"{base}_bias", **attrs_of(bias_dq))
