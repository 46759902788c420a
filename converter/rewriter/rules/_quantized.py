"""Reading quantization parameters for the rules of quantized dense layers (QDQ, QLinearMatMul, MatMulInteger).

A quantized tensor is ``(q, scale, zero_point)`` with ``real = (q - zero_point) * scale``. The
parameters are per tensor (``scale`` has one element) or per axis (``scale`` is 1-D along ``axis``).
Rewriting a ``[C, K]`` weight into a ``[K, C, 1, 1]`` Conv weight moves the integer data only:
``q`` is transposed and reshaped, ``scale`` and ``zero_point`` are kept as they are (the same
tensors), and a per-axis ``axis`` follows its dim (1 -> 0 for per-output-channel, 0 -> 1 for
per-input-channel). A weight stored ``[K, C]`` (Gemm's ``transB=1``) is only reshaped, and its axis stays
(0 is K, 1 is C, in both layouts). No value is requantized, so the dequantized weight is the original's,
bit for bit.

In blocks (``block_size`` B, opset 21 on): ``scale`` has the data's rank, the data's dims except along ``axis``,
where it has ``ceil(D / B)``: ``real[.., i, ..] = (q[.., i, ..] - zero_point[.., i // B, ..]) * scale[.., i // B, ..]``.
Transposing ``q`` to the Conv's ``[K, C, 1, 1]`` transposes ``scale`` and ``zero_point`` with it (they are
indexed like ``q``, one element per block): ``scale^T`` as ``[K, ceil(C / B), 1, 1]`` (blocks along C, the
quantizers' form) and ``axis`` 0 -> 1, so element ``(k, c)`` reads block ``c // B`` of channel ``k``, the same
float as ``(c, k)`` read before. The same integers and floats, moved; a ``[K, C]`` weight (``transB=1``) is
reshaped only. 4-bit types (int4, uint4) are held one value per byte here and packed two per byte, low
nibble first, when written (``numpy_helper.from_array``); ONNX and onnxruntime read them so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper, numpy_helper

from converter.graph import transpose_2d
from converter.providers import dtype_name, make_session, run
from converter.rewriter.rules._checks import require_channels, require_constant_tensor
from converter.rewriter.rules._engine import Context, Decline

_DEFAULT = ("", "ai.onnx")
# Integer types whose numpy form is one element per value (packed 4-bit types are left alone).
QUANTIZED_TYPES: dict[int, np.dtype] = {
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.UINT16: np.dtype(np.uint16),
}
# 4-bit integers (opset 21 on), held one value per byte (ml_dtypes) and packed two per byte in the file. A
# DequantizeLinear weight may be of these types (the block-quantized LLM form); the integer kernels take none.
FOUR_BIT_TYPES: dict[int, np.dtype] = {
    int(t): np.dtype(helper.tensor_dtype_to_np_dtype(t)) for t in (TensorProto.INT4, TensorProto.UINT4)
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

    ``axis`` is the normalized per-axis (or blocked) dim, None for per-tensor.
    """

    scale: str
    zero_point: str
    axis: int | None
    scale_dtype: int
    block_size: int = 0  # in blocks of this many elements along ``axis`` (0: per tensor or per axis)


def _one_value(dims: list[int]) -> bool:
    return len(dims) <= 1 and all(d == 1 for d in dims)


def read_params(
    ctx: Context,
    node: NodeProto,
    scale_slot: int,
    zp_slot: int,
    data_dims: list[int | str | None],
    role: str,
    blocks: bool = False,
) -> Params:
    """Constant scale/zero point of a (De)QuantizeLinear-like node whose data has ``data_dims``; in blocks only
    with ``blocks`` (a constant weight's: its parameters move with it), else declined ``blocked_quantization``."""
    scale_name = node.input[scale_slot]
    scale = require_constant_tensor(ctx, scale_name, f"{role}_scale")
    zp_name = node.input[zp_slot] if len(node.input) > zp_slot else ""
    zp_dims: list[int] | None = None
    if zp_name:
        zp_dims = list(require_constant_tensor(ctx, zp_name, f"{role}_zero_point").dims)
    dims = list(scale.dims)
    attrs = attrs_of(node)
    if attrs.get("block_size", 0):
        if not blocks:
            raise Decline("blocked_quantization", f"{node.op_type} {node.name!r} quantizes in blocks (block_size)")
        return _block_params(scale_name, scale, zp_name, zp_dims, data_dims, role, attrs)
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


def _block_params(
    scale_name: str,
    scale: TensorProto,
    zp_name: str,
    zp_dims: list[int] | None,
    data_dims: list[int | str | None],
    role: str,
    attrs: dict[str, Any],
) -> Params:
    """Parameters in blocks: the scale (and zero point) of the data's rank, its dims but ``ceil(D / B)`` along ``axis``."""
    block, rank, dims = int(attrs["block_size"]), len(data_dims), list(scale.dims)
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if block < 0 or not 0 <= axis < rank or len(dims) != rank:
        raise Decline(
            "quantization_axis_mismatch",
            f"the {role} scale of shape {dims} is not in blocks of {block} along axis {axis} of data of rank {rank}",
        )
    for i, (d, s) in enumerate(zip(data_dims, dims, strict=True)):
        want = -(-d // block) if isinstance(d, int) and i == axis else d
        if isinstance(want, int) and want != s:
            raise Decline(
                "quantization_axis_mismatch",
                f"the {role} scale has shape {dims}; blocks of {block} along axis {axis} of {list(data_dims)} "
                f"need {want} at dim {i}",
            )
    if zp_dims is not None and zp_dims != dims:
        raise Decline("quantization_params_mismatch", f"the {role} scale has shape {dims}, its zero point {zp_dims}")
    return Params(scale_name, zp_name, axis, scale.data_type, block)


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
        return self.conv_layout(read(self.tensor))

    def conv_layout(self, value: np.ndarray) -> np.ndarray:
        """A tensor indexed like the stored weight (the data, or a blocked scale or zero point) in the Conv's layout:
        transposed (unless stored ``[K, C]``) and given two unit axes."""
        rows, cols = value.shape[-2:]
        if self.stored_kc:
            return np.ascontiguousarray(value.reshape(rows, cols, 1, 1))
        return transpose_2d(value.reshape(rows, cols)).reshape(cols, rows, 1, 1)


def granularity(w: QuantizedWeight) -> str:
    """How the weight is quantized, for a decision's notes: ``per_tensor``, ``per_channel`` or ``blocks_of_<B>``."""
    if w.params.block_size:
        return f"blocks_of_{w.params.block_size}"
    return "per_tensor" if w.params.axis is None else "per_channel"


def require_quantized_weight(
    ctx: Context, name: str, scale_slot: int, zp_slot: int, node: NodeProto, transposed: bool = False, qdq: bool = False
) -> QuantizedWeight:
    """The constant integer ``[C, K]`` weight ``name`` (``[K, C]`` when ``transposed``) with the parameters
    ``node`` reads at the given slots; with ``qdq`` (a DequantizeLinear's weight) also 4-bit and in blocks."""
    t = require_constant_tensor(ctx, name, "weight")
    dims = list(t.dims)
    types = {**QUANTIZED_TYPES, **FOUR_BIT_TYPES} if qdq else QUANTIZED_TYPES
    if t.data_type not in types:
        supported = "int4, uint4, int8, uint8, int16 and uint16" if qdq else "int8, uint8, int16 and uint16"
        raise Decline(
            "quantized_dtype_unsupported",
            f"weight {name!r} is {onnx.helper.tensor_dtype_to_string(t.data_type)}; {supported} are supported",
        )
    if len(dims) != 2:
        raise Decline("weight_rank", f"quantized weight {name!r} has rank {len(dims)}; a dense layer needs [C, K]")
    c, k = (dims[1], dims[0]) if transposed else (dims[0], dims[1])
    require_channels(name, dims, c, k)
    params = read_params(ctx, node, scale_slot, zp_slot, dims, "weight", blocks=qdq)
    return QuantizedWeight(t, name, c, k, types[t.data_type], params, transposed)


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
    w = require_quantized_weight(ctx, weight_dq.input[0], 1, 2, weight_dq, transposed, qdq=True)
    out_type = int(attrs_of(weight_dq).get("output_dtype", 0)) or w.params.scale_dtype
    if out_type != activation_type:
        raise Decline(
            "weight_dtype_mismatch",
            f"the weight dequantizes to {dtype_name(out_type)}, the activation is {dtype_name(activation_type)}",
        )
    require_dequantize_runs(ctx, w, weight_dq)
    return w, weight_dq


def require_dequantize_runs(ctx: Context, w: QuantizedWeight, weight_dq: NodeProto) -> None:
    """The providers run the Conv's weight ``DequantizeLinear`` as the rule writes it (4-bit, in blocks, a float16
    scale...), asked of onnxruntime itself on a small model of the same form; else ``runtime_kernel_missing``."""
    if not w.params.block_size and w.tensor.data_type in QUANTIZED_TYPES:
        return  # per tensor or per axis on 8/16-bit data: the form onnxruntime has run since opset 13
    why = dequantize_conv_runs(
        w.tensor.data_type,
        w.params.scale_dtype,
        bool(w.params.zero_point),
        w.params.block_size,
        w.conv_axis,
        ctx.opset,
        int(attrs_of(weight_dq).get("output_dtype", 0)),
        tuple(ctx.options.providers),
    )
    if why is not None:
        raise Decline(
            "runtime_kernel_missing",
            f"onnxruntime {'+'.join(ctx.options.providers)} cannot run a {dtype_name(w.tensor.data_type)} weight's "
            f"DequantizeLinear{f' in blocks of {w.params.block_size}' if w.params.block_size else ''} before a Conv: {why}",
        )


@lru_cache(maxsize=64)
def dequantize_conv_runs(
    q_type: int,
    scale_type: int,
    zero_point: bool,
    block: int,
    axis: int | None,
    opset: int,
    output_dtype: int,
    providers: tuple[str, ...],
) -> str | None:
    """None when the providers run ``Conv(x, DequantizeLinear(q [K, C, 1, 1], scale, zero_point))`` of these
    types and granularity, else onnxruntime's reason (one small model, cached)."""
    k, c = 2, max(2 * block, 4)
    q_np = np.dtype(helper.tensor_dtype_to_np_dtype(q_type))
    f_type = output_dtype or scale_type
    f_np = np.dtype(helper.tensor_dtype_to_np_dtype(f_type))
    dims = [k, c, 1, 1]
    if axis is None:
        s_dims: list[int] = []
    elif block:
        s_dims = [k, -(-c // block), 1, 1] if axis == 1 else [-(-k // block), c, 1, 1]
    else:
        s_dims = [dims[axis]]
    attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
    if block:
        attrs["block_size"] = block
    if output_dtype:
        attrs["output_dtype"] = output_dtype
    inits = [
        numpy_helper.from_array(np.zeros(dims, np.int8).astype(q_np), "q"),
        numpy_helper.from_array(np.full(s_dims, 0.5, np.float32).astype(helper.tensor_dtype_to_np_dtype(scale_type)), "s"),
    ]
    if zero_point:
        inits.append(numpy_helper.from_array(np.ones(s_dims, np.int8).astype(q_np), "z"))
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s"] + (["z"] if zero_point else []), ["w"], **attrs),
        helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", f_type, [1, c, 1, 3])],
        [helper.make_tensor_value_info("y", f_type, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 13))])
    try:
        run(make_session(model.SerializeToString(), providers), {"x": np.ones((1, c, 1, 3), f_np)})
    except Exception as e:  # noqa: BLE001 - any failure is onnxruntime's "no"
        text = str(e)
        return (
            text[text.find("Status Message:") + 16 :].strip()[-160:] if "Status Message:" in text else text.splitlines()[0][-160:]
        )
    return None


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
    """``DequantizeLinear(Wq^T as [K, C, 1, 1], scale, zero_point)``: the same integers moved, the same parameters
    (in blocks: the same floats and integers moved with the data, see the module docstring)."""
    wq = integer_initializer(ctx, w.key, w.name, lambda: w.conv(ctx.scope.value_of), w.conv_shape, w.dtype)
    weight = ctx.names.fresh(f"{base}_conv_weight")
    attrs = moved_attrs(weight_dq, w.params, w.conv_axis)
    params = list(weight_dq.input[1:])
    if w.params.block_size:  # the scale and zero point are indexed like the data: moved with it
        params = [block_parameter(ctx, w, name, i == 1) for i, name in enumerate(params) if name]
    return ctx.node(rule, origin, "DequantizeLinear", [wq, *params], [weight], f"{base}_weight", **attrs)


def block_parameter(ctx: Context, w: QuantizedWeight, name: str, zero_point: bool) -> str:
    """A blocked weight's scale (or zero point) ``name`` in the Conv's layout, as the weight's data is moved."""
    t = ctx.scope.constant_tensor(name)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    rows, cols = list(t.dims)
    shape = (rows, cols, 1, 1) if w.stored_kc else (cols, rows, 1, 1)
    key = f"{w.key}_{'zero_point' if zero_point else 'scale'}"
    return integer_initializer(ctx, key, name, lambda: w.conv_layout(ctx.scope.value_of(t)), shape, dtype)


def integer_initializer(
    ctx: Context, key: str, source: str, make: Callable[[], np.ndarray], shape: tuple[int, ...], dtype: np.dtype
) -> str:
    """``ctx.derived_initializer(key, source, make, like=(shape, dtype))``, but a 4-bit tensor is packed two values per
    byte as ONNX stores it (``numpy_helper.from_array``): the graph's plain writer copies one byte per value."""
    if dtype not in FOUR_BIT_TYPES.values():
        return ctx.derived_initializer(key, source, make, like=(shape, dtype))
    name = ctx.names.fresh(f"{ctx.scope.identity_root(source)}_{key}")
    ctx.scope.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(make()), name))
    ctx.created.add(name)
    return name


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


def quantized_bias_add(ctx: Context, y: str, k: int, dtype: int) -> tuple[NodeProto, NodeProto] | None:
    """(Add, DequantizeLinear) when ``y``'s sole reader adds ``DequantizeLinear(int32 [K] constant)`` (see quantized_bias)."""
    readers = ctx.scope.consumers(y)
    if len(readers) != 1 or y in ctx.scope.output_names:
        return None
    add = readers[0]
    if add.op_type != "Add" or add.domain not in _DEFAULT or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == y else add.input[0]
    dq = quantized_bias(ctx, other, k, dtype) if other != y else None
    return None if dq is None else (add, dq)


def qdq_bias_node(ctx: Context, rule: str, origin: str, base: str, bias_dq: NodeProto) -> NodeProto:
    """The Conv's bias: ``bias_dq`` again beside the Conv (the same int32 data and parameters); the original goes
    with the layer when only the layer read it."""
    out = ctx.names.fresh(f"{base}_conv_bias")
    return ctx.node(rule, origin, "DequantizeLinear", list(bias_dq.input), [out], f"{base}_bias", **attrs_of(bias_dq))
