"""Constants: comparing them bit for bit, laying them out, and computing the small constant subgraphs exporters leave.

Ops on constants whose result the rewrite may treat as a constant (exporters leave them on initializers)
are computed here, not by the rewrite's code: integer arithmetic by onnx's reference evaluator, float and string
values by onnxruntime (what both models run on, where the two differ). DequantizeLinear of constants is
a quantized weight or bias: its value is the float tensor the layer uses, so a layer read through it is
compared by that value (the integers, scale and zero point at once); it is written out here
(:func:`dequantize`), the evaluator lacking it before opset 19.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import onnx
from onnx import AttributeProto, NodeProto, TensorProto, numpy_helper

from converter.verifier.certificate import blocks
from converter.verifier.certificate.facts import Const, Fact, SameAs
from converter.verifier.certificate.layouts import Layout, norm_axis
from converter.verifier.certificate.nodes import Attributes

# Ops on constants whose result is a constant of the original (and of the rewritten graph).
CONSTANT_OPS = frozenset({"Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "DequantizeLinear"})


def differs(actual: np.ndarray, expected: np.ndarray, role: str) -> str | None:
    """Why ``actual`` is not bit for bit ``expected``, or None."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.dtype != expected.dtype:
        return f"the {role} is {actual.dtype}, expected {expected.dtype}"
    if actual.shape != expected.shape:
        return f"the {role} has shape {list(actual.shape)}, expected {list(expected.shape)}"
    if actual.dtype.kind == "O":
        same = actual.tolist() == expected.tolist()
    else:
        same = np.array_equal(np.ascontiguousarray(actual).view(np.uint8), np.ascontiguousarray(expected).view(np.uint8))
    if same:
        return None
    if actual.dtype.kind in "fc" and actual.size:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        n = int(np.count_nonzero(actual != expected))
        most = float(np.max(diff, where=~np.isnan(diff), initial=0.0)) if not np.isnan(diff).all() else float("nan")
        return f"the {role} differs from the original's in {n} of {actual.size} elements (max difference {most:.3g})"
    return f"the {role} differs from the original's"


def laid_out(value: np.ndarray, layout: Layout) -> np.ndarray | str:
    """An original constant operand as an op read in ``layout`` must read it: broadcast to the layout's rank
    (unit axes in front), transposed, with the layout's added unit axes; a one-element constant of rank <= 1
    stays as it is. A string when it cannot be (a constant of higher rank than the layout)."""
    if layout is None or (value.size == 1 and value.ndim <= 1):
        return value
    axes = [p for p in layout if p is not None]  # the original's axes, in the order shown
    if value.ndim > len(axes):
        return "a constant of higher rank than the layout"
    value = np.transpose(value.reshape((1,) * (len(axes) - value.ndim) + value.shape), axes)
    if len(axes) != len(layout):  # and the added unit axes where the layout has them
        shape = iter(value.shape)
        value = value.reshape([1 if p is None else next(shape) for p in layout])
    return value


def run_on_constants(node: NodeProto, ins: Sequence[Fact], opsets: Sequence[onnx.OperatorSetIdProto]) -> np.ndarray | None:
    """The node's output computed by onnx's reference evaluator, or None when it rejects the node."""
    if node.op_type == "DequantizeLinear":
        return dequantize(node, ins)

    try:
        inits = []
        for n, f in zip(node.input, ins, strict=True):
            if not n:
                continue
            if not isinstance(f, Const):
                return None
            inits.append(numpy_helper.from_array(np.asarray(f.get()), n))
        out = onnx.helper.make_tensor_value_info(node.output[0], TensorProto.UNDEFINED, None)
        graph = onnx.helper.make_graph([node], "constant", [], [out], inits)
        model = onnx.helper.make_model(graph, opset_imports=list(opsets) or [onnx.helper.make_opsetid("", 17)])
    except Exception:  # noqa: BLE001 - whatever cannot be written as a model is simply not a constant here
        return None
    results = as_the_engine_computes(model)
    return None if results is None else results[0]


# Ops onnx's reference evaluator computes as onnxruntime does on integers and booleans (fuzzed against each other:
# Div, Mod, Range, Tile, Expand, CumSum, Clip, reductions, Gather, Concat, Where ... agree). Slice does not: for a
# negative step its clamped end of -1 is "before the first element" to onnxruntime and "the last one" to numpy
# (``Slice([0, 1, 2], -10, -9, -3)`` is ``[0]`` in onnxruntime, ``[]`` in the evaluator); nor does Pad with negative
# pads. Any op not listed here is computed by onnxruntime alone.
_SAME_IN_BOTH = frozenset(
    (
        "Abs Add And Cast Ceil Clip Concat ConstantOfShape CumSum Div Equal Expand Flatten Floor Gather Greater "
        "GreaterOrEqual Identity Less LessOrEqual Max Min Mod Mul Neg Not Or Range ReduceMax ReduceMin ReduceProd "
        "ReduceSum Reshape Sign Sqrt Squeeze Sub Sum Tile Transpose Unsqueeze Where Xor"
    ).split()
)


def as_the_engine_computes(model: onnx.ModelProto) -> list[np.ndarray] | None:
    """The outputs of a model of constants (one node), as onnxruntime computes them; None when it cannot.

    Integer and boolean arithmetic (shape arithmetic, nearly all of it) is exact in any engine: onnx's
    reference evaluator computes it without building a session, for the ops it is known to compute as
    onnxruntime does (``_SAME_IN_BOTH``). A float or string value, or any other op, is what onnxruntime
    computes, since both models run there and the reference evaluator differs from it (a reduction over a NaN,
    a string cast, a float sum added in another order, a Slice with a negative step)."""
    from onnx.reference import ReferenceEvaluator

    if all(n.op_type in _SAME_IN_BOTH and n.domain in ("", "ai.onnx") for n in model.graph.node):
        try:
            found = ReferenceEvaluator(model).run(None, {})  # a list (a dict only with intermediate=True)
            arrays = [np.asarray(r) for r in (found if isinstance(found, list) else found.values())]
        except Exception:  # noqa: BLE001 - whatever the evaluator rejects is simply not a constant here
            return None
        exact = "biu"
        if all(a.dtype.kind in exact for a in arrays) and all(
            numpy_helper.to_array(t).dtype.kind in exact for t in model.graph.initializer
        ):
            return arrays
    return in_the_engine(model)


def in_the_engine(model: onnx.ModelProto) -> list[np.ndarray] | None:
    """The outputs of a model that reads no inputs, as onnxruntime's CPU provider computes them; None when it cannot."""
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [np.asarray(v) for v in session.run(None, {})]
    except Exception:  # noqa: BLE001 - what the engine cannot compute alone is not a constant the proof may use
        return None


def evaluated(node: NodeProto, ins: Sequence[Fact], opsets: Sequence[onnx.OperatorSetIdProto]) -> np.ndarray:
    """A constant node's value that :func:`run_on_constants` computed once already (to know it is one), again."""
    value = run_on_constants(node, ins, opsets)
    if value is None:
        raise ValueError(f"the constant {node.output[0]!r} could not be computed again")
    return value


def dequantize(node: NodeProto, ins: Sequence[Fact]) -> np.ndarray | None:
    """DequantizeLinear of integer constants: ``float(int64(q) - int64(zero_point)) * scale`` in the scale's
    dtype, the scale and zero point scalar or 1-D along ``axis`` (default 1). Written out here because onnx's
    reference evaluator has no DequantizeLinear before opset 19 (the op is the same from opset 13 on for
    these types); None for what it does not cover (an output_dtype other than the scale's, float8 data). Blocks
    and 4-bit data are read by :mod:`.blocks`. A one-element 1-D scale is one value for the whole tensor, as
    onnxruntime reads it."""
    if len(ins) < 2 or not isinstance(ins[0], Const) or not isinstance(ins[1], Const):
        return None
    try:
        attrs = Attributes(node)
        if attrs.get_int("block_size", 0):
            return blocks.dequantize(node, ins)  # in blocks (certificate/blocks.py)
        q = np.asarray(ins[0].get())
        if q.dtype in blocks.FOUR_BIT:
            return blocks.dequantize(node, ins, q)  # 4-bit data (certificate/blocks.py)
        scale = np.asarray(ins[1].get())
        zero = np.asarray(ins[2].get()) if len(ins) > 2 and isinstance(ins[2], Const) else np.zeros_like(scale, dtype=np.int64)
        if q.dtype.kind not in "iu" or q.dtype.itemsize > 4 or scale.dtype.kind != "f" or zero.dtype.kind not in "iu":
            return None
        out_type = attrs.get_int("output_dtype", 0)
        if out_type and onnx.helper.tensor_dtype_to_np_dtype(out_type) != scale.dtype:
            return None  # (opset 23: the output type may differ from the scale's; not covered)
        if scale.ndim == 1 and scale.size == 1 and zero.size == 1:
            scale, zero = scale.reshape(()), zero.reshape(())  # one value for the whole tensor, as onnxruntime reads it
        if zero.shape != scale.shape or scale.ndim > 1:
            return None
        if scale.ndim == 1:
            axis = norm_axis(attrs.get_int("axis", 1), q.ndim)
            if axis is None or q.shape[axis] != scale.shape[0]:
                return None
            shape = [1] * q.ndim
            shape[axis] = scale.shape[0]
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        diff = q.astype(np.int64) - zero.astype(np.int64)
        return np.asarray(blocks.wide(diff) * blocks.wide(scale), dtype=np.float32).astype(scale.dtype)
    except (TypeError, ValueError, AttributeError, IndexError):
        return None


def constant_node_fact(node: NodeProto, key: tuple[int, str]) -> Fact:
    """A Constant node's value as a fact (a sparse one densified; string constants: a computed tensor of their own)."""
    for a in node.attribute:
        if a.name == "value" and a.type == AttributeProto.TENSOR:
            return Const(key, partial(numpy_helper.to_array, a.t))
        if a.name in ("value_float", "value_int"):
            v = a.f if a.name == "value_float" else a.i
            return Const(key, partial(np.array, v, np.float32 if a.name == "value_float" else np.int64))
        if a.name in ("value_floats", "value_ints"):
            vs = list(a.floats) if a.name == "value_floats" else list(a.ints)
            return Const(key, partial(np.array, vs, np.float32 if a.name == "value_floats" else np.int64))
        if a.name == "sparse_value" and a.type == AttributeProto.SPARSE_TENSOR:
            return Const(key, partial(dense, a.sparse_tensor))
    return SameAs(node.output[0])  # string constants: compared like any computed tensor


def dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A sparse tensor's value as a dense array: zeros but at its indices (linear ``[NNZ]`` or ``[NNZ, rank]``)."""
    values = numpy_helper.to_array(sparse.values)
    shape = tuple(int(d) for d in sparse.dims)
    out = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    indices = numpy_helper.to_array(sparse.indices) if sparse.HasField("indices") else np.arange(values.size)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), shape) if indices.size else np.zeros(0, np.int64)
    out[np.asarray(indices, dtype=np.int64).reshape(-1)] = values.reshape(-1)
    return out.reshape(shape)
