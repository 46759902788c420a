"""What the integer-kernel rules (QLinearMatMul -> QLinearConv, MatMulInteger -> ConvInteger) share.

A dense layer computed by an integer kernel becomes the convolution kernel of the same family with
the same integer tensors: only the weight's data is moved (``[C, K]`` -> ``[K, C, 1, 1]``), every
scale and zero point is the tensor the original reads. Whether onnxruntime can run the result is
asked of onnxruntime itself (a table would go stale with its releases); in 1.32 (measured, CPU):

- QLinearConv runs uint8 x uint8, uint8 x int8 and int8 x int8 (activation x weight), per-tensor or
  per-output-channel ``w_scale`` and ``w_zero_point`` (a per-channel zero point need not be zero or
  uniform); int8 x uint8 has no kernel, for QLinearMatMul either;
- ConvInteger runs every int8/uint8 pair, but only a one-element ``w_zero_point``: a ``[K]`` vector
  fails at run time ("Non per-tensor quantization is not supported"), even all zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from converter.graph import TensorType
from converter.providers import dtype_name, make_session, run
from converter.rewriter.rules._checks import require_constant_tensor, require_rank
from converter.rewriter.rules._engine import Context, Decline
from converter.rewriter.rules._quantized import QUANTIZED_TYPES

_ON = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8"}
# Where onnx's shape inference stops in a QOperator model: at onnxruntime's quantized ops (com.microsoft), and
# so at every op after them. The shape is then carried, here, through ops whose output is the broadcast of the
# given data inputs: (op, data input slots), and through the ops ``_SHAPE_OPS`` reads (the ones between a
# quantized model's dense layers: QGemm, a QLinearMatMul of two activations (attention), Split, Squeeze and
# Unsqueeze, MatMulNBits (its activation's shape, the last dim N: where a 4-bit LLM's shapes stop) and
# ReduceMean (a norm's mean: the reduced axes 1)). Everything else stays unknown.
_CONTRIB_ELEMENTWISE = {
    "QLinearAdd": (0, 3),
    "QLinearMul": (0, 3),
    "QLinearSigmoid": (0,),
    "QLinearLeakyRelu": (0,),
    "QLinearSoftmax": (0,),
}
_DEFAULT_ELEMENTWISE = {
    **{
        op: (0,)
        for op in (
            "QuantizeLinear",
            "DequantizeLinear",
            "LayerNormalization",
            "Cast",
            "Erf",
            "Relu",
            "Sigmoid",
            "Tanh",
            "Neg",
            "Abs",
            "Sqrt",
            "Reciprocal",
            "Softmax",
        )
    },
    **{op: (0, 1) for op in ("Add", "Sub", "Mul", "Div", "Pow")},
}
_CONTRIB = ("com.microsoft",)


def integer_type(ctx: Context, name: str) -> TensorType | None:
    """The tensor's type as shape inference has it, or else carried through the elementwise ops before it
    (see above) from tensors whose types are known. None when unknown."""
    memo: dict[str, TensorType | None] = {}

    def elem_of(node: NodeProto, first: TensorType | None) -> int:
        if node.op_type in _CONTRIB_ELEMENTWISE or node.op_type == "QuantizeLinear":
            zp = node.input[-1] if node.op_type != "QuantizeLinear" else (node.input[2] if len(node.input) > 2 else "")
            if zp and ctx.scope.source(zp).is_constant:
                return ctx.scope.constant_tensor(zp).data_type
            return TensorProto.UINT8 if node.op_type == "QuantizeLinear" else 0
        if node.op_type == "DequantizeLinear":
            return ctx.scope.constant_tensor(node.input[1]).data_type if ctx.scope.source(node.input[1]).is_constant else 0
        if node.op_type == "Cast":
            return next((a.i for a in node.attribute if a.name == "to"), 0)
        return first.elem_type if first is not None else 0

    def find(n: str) -> TensorType | None:
        if n in memo:
            return memo[n]
        memo[n] = None  # a cycle (none in a valid graph) ends here
        t = ctx.scope.type_of(n)
        if t is not None and t.shape is not None:
            memo[n] = t
            return t
        node = ctx.scope.producers.get(n)
        if node is not None and node.domain in ("", "ai.onnx") and node.op_type in ("Transpose", "QLinearConv"):
            k = None
            if node.op_type == "QLinearConv" and len(node.input) > 3 and ctx.scope.source(node.input[3]).is_constant:
                k = int(ctx.scope.constant_tensor(node.input[3]).dims[0])
            memo[n] = _layout_op(node, find(node.input[0]), k)
            return memo[n]
        if node is not None and node.domain in ("", "ai.onnx") and node.op_type == "Reshape" and len(node.input) == 2:
            x, target = find(node.input[0]), _target_dims(ctx, node.input[1])
            if x is not None and target is not None:
                memo[n] = TensorType(x.elem_type, target)
            return memo[n]
        if node is not None and node.domain in _CONTRIB and node.op_type == "MatMulNBits":
            x, attrs = find(node.input[0]), {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if x is not None and x.shape and isinstance(attrs.get("N"), int):
                memo[n] = TensorType(x.elem_type, (*x.shape[:-1], attrs["N"]))
            return memo[n]
        if node is not None and node.domain in ("", "ai.onnx") and node.op_type == "ReduceMean":
            memo[n] = _reduced(ctx, node, find(node.input[0]))
            return memo[n]
        if node is not None and node.op_type in _SHAPE_OPS and node.domain in _SHAPE_OPS[node.op_type][0]:
            memo[n] = _SHAPE_OPS[node.op_type][1](ctx, node, n, find)
            return memo[n]
        table = (
            _CONTRIB_ELEMENTWISE
            if node is not None and node.domain in _CONTRIB
            else _DEFAULT_ELEMENTWISE
            if node is not None and node.domain in ("", "ai.onnx")
            else {}
        )
        if node is None or node.op_type not in table:
            return t
        shapes, first = [], None
        for slot in table[node.op_type]:
            if len(node.input) <= slot or not node.input[slot]:
                return t
            if ctx.scope.source(node.input[slot]).is_constant:
                shapes.append(tuple(ctx.scope.constant_tensor(node.input[slot]).dims))
                continue
            inner = find(node.input[slot])
            if inner is None or inner.shape is None:
                return t
            first = inner if first is None else first  # the first computed operand (RMSNorm: Mul(weight, x))
            shapes.append(tuple(inner.shape))
        memo[n] = TensorType(elem_of(node, first), _broadcast(shapes))
        return memo[n]

    return find(name)


Find = Callable[[str], TensorType | None]


def _known(ctx: Context, name: str, find: Find) -> TensorType | None:
    """A tensor's type: a constant's dims and dtype, else what ``find`` carries to it."""
    if ctx.scope.source(name).is_constant:
        t = ctx.scope.constant_tensor(name)
        return TensorType(t.data_type, tuple(t.dims))
    return find(name)


def _zero_point_type(ctx: Context, node: NodeProto, slot: int, default: int) -> int:
    """The dtype of ``node``'s output zero point in ``slot`` (the quantized output's), or ``default``."""
    zp = node.input[slot] if len(node.input) > slot else ""
    return ctx.scope.constant_tensor(zp).data_type if zp and ctx.scope.source(zp).is_constant else default


def _matmul(ctx: Context, node: NodeProto, name: str, find: Find) -> TensorType | None:
    """QLinearMatMul (a dense layer, or two activations: attention's scores and their product with the values):
    numpy's matmul shape of its two operands, of its output zero point's dtype."""
    if len(node.input) != 8:
        return None
    a, b = _known(ctx, node.input[0], find), _known(ctx, node.input[3], find)
    if a is None or b is None or a.shape is None or b.shape is None or len(a.shape) < 2 or len(b.shape) < 2:
        return None
    batch = _broadcast([a.shape[:-2], b.shape[:-2]])
    return TensorType(_zero_point_type(ctx, node, 7, a.elem_type), (*batch, a.shape[-2], b.shape[-1]))


def _qgemm(ctx: Context, node: NodeProto, name: str, find: Find) -> TensorType | None:
    """onnxruntime's QGemm (A, a_scale, a_zero, B, b_scale, b_zero, C, y_scale, y_zero): ``[M, N]``, quantized to
    its output zero point's dtype, or float without an output scale."""
    if len(node.input) < 6:
        return None
    a, b = _known(ctx, node.input[0], find), _known(ctx, node.input[3], find)
    if a is None or b is None or a.shape is None or b.shape is None or len(a.shape) != 2 or len(b.shape) != 2:
        return None
    attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    m = a.shape[1] if attrs.get("transA", 0) else a.shape[0]
    k = b.shape[0] if attrs.get("transB", 0) else b.shape[1]
    quantized = len(node.input) > 7 and node.input[7]
    return TensorType(_zero_point_type(ctx, node, 8, TensorProto.UINT8) if quantized else TensorProto.FLOAT, (m, k))


def _axes(ctx: Context, node: NodeProto) -> list[int] | None:
    """A Squeeze's / Unsqueeze's / Split's constant axes (attribute, or input 1 from opset 13)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "axes" in attrs:
        return [int(v) for v in attrs["axes"]]
    if len(node.input) > 1 and node.input[1] and ctx.scope.source(node.input[1]).is_constant:
        return [int(v) for v in np.asarray(ctx.scope.value_of(ctx.scope.constant_tensor(node.input[1]))).reshape(-1)]
    return None


def _unit_axes(ctx: Context, node: NodeProto, name: str, find: Find) -> TensorType | None:
    """Squeeze (of the given axes) or Unsqueeze: the input's dims without or with those unit axes."""
    x, axes = find(node.input[0]), _axes(ctx, node)
    if x is None or x.shape is None or axes is None:
        return None
    if node.op_type == "Unsqueeze":
        rank = len(x.shape) + len(axes)
        where = {a + rank if a < 0 else a for a in axes}
        if len(where) != len(axes) or not all(0 <= a < rank for a in where):
            return None
        dims = iter(x.shape)
        return TensorType(x.elem_type, tuple(1 if i in where else next(dims) for i in range(rank)))
    where = {a + len(x.shape) if a < 0 else a for a in axes}
    if not where or any(not 0 <= a < len(x.shape) or x.shape[a] not in (1, None) for a in where):
        return None
    return TensorType(x.elem_type, tuple(d for i, d in enumerate(x.shape) if i not in where))


def _split(ctx: Context, node: NodeProto, name: str, find: Find) -> TensorType | None:
    """Split into constant sizes (input 1, the ``split`` attribute, or equal parts): output ``name``'s part."""
    x = find(node.input[0])
    if x is None or x.shape is None or not x.shape:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = int(attrs.get("axis", 0))
    axis = axis + len(x.shape) if axis < 0 else axis
    if not 0 <= axis < len(x.shape):
        return None
    sizes = attrs.get("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        if not ctx.scope.source(node.input[1]).is_constant:
            return None
        sizes = np.asarray(ctx.scope.value_of(ctx.scope.constant_tensor(node.input[1]))).reshape(-1).tolist()
    whole = x.shape[axis]
    if sizes is None:
        parts = len([o for o in node.output if o])
        sizes = [whole // parts] * parts if isinstance(whole, int) and parts and whole % parts == 0 else None
    i = list(node.output).index(name)
    if sizes is None or i >= len(sizes):
        return None
    return TensorType(x.elem_type, tuple(int(sizes[i]) if j == axis else d for j, d in enumerate(x.shape)))


def _broadcast(shapes: list[tuple]) -> tuple:
    """Numpy's broadcast of ``shapes``: a dim unknown (None) where they disagree."""
    rank = max((len(sh) for sh in shapes), default=0)
    dims: list[int | str | None] = []
    for i in range(rank):
        here = {sh[i - rank + len(sh)] for sh in shapes if i - rank + len(sh) >= 0}
        # In a valid graph every dim is 1 or the broadcast one: a known size > 1 is it, whatever the others.
        known = here - {1, None}
        sizes = {d for d in known if isinstance(d, int)}
        one = sizes if sizes else known
        dims.append(one.pop() if len(one) == 1 else (1 if here == {1} else None))
    return tuple(dims)


_DEFAULT = ("", "ai.onnx")
_SHAPE_OPS: dict[str, tuple[tuple[str, ...], Callable[[Context, NodeProto, str, Find], TensorType | None]]] = {
    "QLinearMatMul": (_DEFAULT, _matmul),
    "QGemm": (_CONTRIB, _qgemm),
    "Squeeze": (_DEFAULT, _unit_axes),
    "Unsqueeze": (_DEFAULT, _unit_axes),
    "Split": (_DEFAULT, _split),
}


def _reduced(ctx: Context, node: NodeProto, x: TensorType | None) -> TensorType | None:
    """A ReduceMean's output type: its input's, the reduced axes 1 (or gone without keepdims); None when unknown."""
    if x is None or x.shape is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1] and ctx.scope.source(node.input[1]).is_constant:
        axes = [int(v) for v in np.asarray(ctx.scope.value_of(ctx.scope.constant_tensor(node.input[1]))).reshape(-1)]
    rank = len(x.shape)
    if axes is None:
        if attrs.get("noop_with_empty_axes", 0):
            return None
        return TensorType(x.elem_type, (1,) * rank if attrs.get("keepdims", 1) else ())
    reduced = {a + rank if a < 0 else a for a in axes}
    if attrs.get("keepdims", 1):
        return TensorType(x.elem_type, tuple(1 if i in reduced else d for i, d in enumerate(x.shape)))
    return TensorType(x.elem_type, tuple(d for i, d in enumerate(x.shape) if i not in reduced))


def _target_dims(ctx: Context, name: str, depth: int = 0) -> tuple[int | None, ...] | None:
    """A Reshape target's dims as far as they are constants (-1 and 0 unknown): a constant, or a Concat of
    constants and run-time pieces of known length (tf2onnx's ``[N, H, W] of x ++ [K]``), through Casts."""
    if depth > 8:
        return None
    if ctx.scope.source(name).is_constant:
        values = np.asarray(ctx.scope.value_of(ctx.scope.constant_tensor(name))).reshape(-1)
        return tuple(int(v) if v > 0 else None for v in values)
    node = ctx.scope.producers.get(name)
    if node is not None and node.domain in ("", "ai.onnx") and node.op_type == "Cast":
        return _target_dims(ctx, node.input[0], depth + 1)
    if node is not None and node.domain in ("", "ai.onnx") and node.op_type == "Concat":
        parts = [_target_dims(ctx, i, depth + 1) for i in node.input]
        return None if any(p is None for p in parts) else tuple(d for p in parts for d in p)  # type: ignore[union-attr]
    t = ctx.scope.type_of(name)
    if t is not None and t.shape is not None and len(t.shape) == 1 and isinstance(t.shape[0], int):
        return (None,) * t.shape[0]
    return None


def _layout_op(node: NodeProto, x: TensorType | None, out_channels: int | None = None) -> TensorType | None:
    """A Transpose's output type, or a QLinearConv's (``out_channels``: its weight's K where known)."""
    if x is None or x.shape is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Transpose":
        perm = list(attrs.get("perm", range(len(x.shape) - 1, -1, -1)))
        return TensorType(x.elem_type, tuple(x.shape[p] for p in perm)) if sorted(perm) == list(range(len(x.shape))) else None
    kernel, pads = list(attrs.get("kernel_shape", [])), list(attrs.get("pads", [0, 0, 0, 0]))
    if len(x.shape) != 4 or len(kernel) != 2 or len(pads) != 4:
        return None
    keeps = attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and pads[0] + pads[2] == kernel[0] - 1
    keeps = keeps and pads[1] + pads[3] == kernel[1] - 1
    keeps = keeps and all(v == 1 for v in [*attrs.get("strides", [1, 1]), *attrs.get("dilations", [1, 1])])
    # H and W where the conv keeps them (stride 1, padding that adds back the kernel), else unknown: the rank
    # and the channels (a strided stem, a SAME_UPPER depthwise conv) are what a dense layer after it needs.
    dims = (x.shape[0], out_channels, *(x.shape[2:] if keeps else (None, None)))
    return TensorType(x.elem_type, tuple(dims))


def require_scalar(ctx: Context, node: NodeProto, slot: int, role: str) -> None:
    """Input ``slot`` of ``node`` holds one element (or is absent): the convolution takes its activation's
    and output's parameters per tensor only."""
    name = node.input[slot] if len(node.input) > slot else ""
    if not name:
        return
    t = ctx.scope.type_of(name)
    shape = None if t is None else t.shape
    if ctx.scope.source(name).is_constant:
        shape = list(ctx.scope.constant_tensor(name).dims)
    if shape is None or any(d != 1 for d in shape):
        raise Decline(
            "activation_quantization_per_axis",
            f"{role} {name!r} has shape {shape}; {'QLinearConv' if node.op_type == 'QLinearMatMul' else 'ConvInteger'} "
            "takes one value for the whole tensor",
        )


def require_integer_rank4(ctx: Context, name: str) -> TensorType:
    """As require_rank(ctx, name, 4), seeing through the contrib elementwise ops (see integer_type)."""
    t = integer_type(ctx, name)
    declared = ctx.scope.type_of(name)
    if t is not None and t.shape is not None and (declared is None or declared.shape is None):
        if len(t.shape) != 4:
            raise Decline("rank_not_4", f"{name!r} has rank {len(t.shape)}, not 4")
        return t
    return require_rank(ctx, name, 4)


def require_integer_type(ctx: Context, name: str, role: str) -> int:
    t = integer_type(ctx, name)
    if t is None or t.elem_type not in _ON:
        # elem_type 0: a contrib op whose output zero point is computed, so its type is not known here
        have = "unknown" if t is None or not t.elem_type else dtype_name(t.elem_type)
        raise Decline("quantized_dtype_unsupported", f"{role} {name!r} is {have}; int8 and uint8 are supported")
    return t.elem_type


def weight_zero_point_vector(ctx: Context, name: str, k: int) -> np.ndarray | None:
    """The weight's zero point as a ``[K]`` vector (None when absent)."""
    if not name:
        return None
    t = require_constant_tensor(ctx, name, "weight_zero_point")
    v = np.asarray(ctx.scope.value_of(t)).reshape(-1)
    return np.broadcast_to(v, (k,)) if v.size == 1 else v


@lru_cache(maxsize=64)
def provider_runs(op: str, x_type: int, w_type: int, per_channel: bool, providers: tuple[str, ...]) -> str | None:
    """None when the providers run a 1x1 ``op`` (QLinearConv | ConvInteger) of these types, else onnxruntime's reason.

    ``per_channel``: the weight's scale and zero point are ``[K]`` vectors (a uniform zero point is
    still a vector here, as the original has it).
    """
    k, c = 2, 3
    x_np, w_np = helper.tensor_dtype_to_np_dtype(x_type), helper.tensor_dtype_to_np_dtype(w_type)
    wshape = (k,) if per_channel else ()
    consts = {
        "w": np.ones((k, c, 1, 1), w_np),
        "xs": np.array(0.5, np.float32),
        "xz": np.array(1, x_np),
        "ws": np.full(wshape, 0.25, np.float32),
        "wz": np.zeros(wshape, w_np),
        "ys": np.array(1.0, np.float32),
        "yz": np.array(0, x_np),
    }
    if op == "QLinearConv":
        inputs, y_type = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], x_type
    else:
        inputs, y_type = ["x", "w", "xz", "wz"], TensorProto.INT32
    inits = [numpy_helper.from_array(consts[n], n) for n in inputs[1:]]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], kernel_shape=[1, 1])],
        "probe",
        [helper.make_tensor_value_info("x", x_type, [1, c, 2, 3])],
        [helper.make_tensor_value_info("y", y_type, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    try:
        run(make_session(model.SerializeToString(), providers), {"x": np.ones((1, c, 2, 3), x_np)})
    except Exception as e:  # noqa: BLE001 - any failure is onnxruntime's "no" (the ProviderUnavailable case included)
        text = str(e)
        return (
            text[text.find("Status Message:") + 16 :].strip()[-160:] if "Status Message:" in text else text.splitlines()[0][-160:]
        )
    return None


def require_runs(ctx: Context, op: str, x_type: int, w_type: int, per_channel: bool) -> None:
    why = provider_runs(op, x_type, w_type, per_channel, tuple(ctx.options.providers))
    if why is not None:
        mode = "per-channel" if per_channel else "per-tensor"
        raise Decline(
            "runtime_kernel_missing",
            f"onnxruntime {'+'.join(ctx.options.providers)} cannot run {op} on {_ON[x_type]} x {_ON[w_type]} {mode}: {why}",
        )


def weight_types_ok(w_type: int) -> None:
    if w_type not in _ON:
        raise Decline(
            "quantized_dtype_unsupported", f"the weight is {helper.tensor_dtype_to_string(w_type)}; int8 and uint8 are supported"
        )


__all__ = ["QUANTIZED_TYPES", "provider_runs", "require_integer_type", "require_runs", "require_scalar", "weight_zero_point_vector"]
