"""Small constant expressions: the shape arithmetic exporters write, evaluated by the certificate itself.

TorchScript computes a Pad's pads, a Slice's bounds and a Reshape's target from constants and from the
shapes of tensors (``Shape -> Gather -> Mod -> Concat ...``). Where every value such an expression reads
is known, it is a constant, on either side: the original's computed value and the rewritten graph's
written constant are then compared by value, like any other constant. Known values are:

- constants (initializers, Constant nodes), at most :data:`SMALL` elements;
- ``Shape(x)`` (``start`` / ``end`` honoured) and ``Size(x)`` of a tensor whose dims are all known, as onnx's
  shape inference finds them on the original (``original.Original.shape``; a rewritten tensor's dims are its
  original root's, seen through its layout); ``Gather`` / ``Slice`` of a shape vector when only the dims they
  pick must be known (a dynamic export's channel count);
- the output of an op of :data:`EXPRESSION_OPS` whose inputs are all known and small, computed by onnx's
  reference evaluator (never by the rewriter's code).

Shape inference itself is helped the same way (:func:`known_values`): a Reshape whose target only such an
expression computes has no inferred shape until the expression's value is written into the graph, so the
original's expressions are evaluated and inference runs again (a few rounds at most).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, numpy_helper

from converter.verifier.certificate.constants import as_the_engine_computes, constant_node_fact
from converter.verifier.certificate.facts import Const
from converter.verifier.certificate.layouts import Layout, norm_axis
from converter.verifier.certificate.nodes import Attributes, graphs_of, is_default

SMALL = 1024  # elements: what an expression reads and makes; weights are no shape arithmetic

# Deterministic ops of the shape arithmetic exporters write (no randomness, no subgraphs).
EXPRESSION_OPS = frozenset(
    (
        "Abs Add And Cast Ceil Clip Concat ConstantOfShape CumSum Div Equal Expand Flatten Floor Gather "
        "Greater GreaterOrEqual Identity Less LessOrEqual Max Min Mod Mul Neg Not Or Range ReduceMax ReduceMin "
        "ReduceProd ReduceSum Reshape Shape Sign Size Slice Sqrt Squeeze Sub Sum Tile Transpose Unsqueeze Where Xor"
    ).split()
)

Dims = tuple[int | str | None, ...]


def evaluate(
    node: NodeProto, values: Sequence[np.ndarray | None], opsets: Sequence[onnx.OperatorSetIdProto]
) -> list[np.ndarray] | None:
    """``node``'s outputs computed as the engine does (:func:`constants.as_the_engine_computes`) from the arrays
    of its inputs (None: an absent optional input), or None when the op is not an expression op, an array is too
    large, or neither engine computes it."""
    if not is_default(node) or node.op_type not in EXPRESSION_OPS or graphs_of(node) or node.op_type in ("Shape", "Size"):
        return None
    if any(v is not None and np.asarray(v).size > SMALL for v in values):
        return None
    try:
        inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(node.input, values, strict=True) if n and v is not None]
        outs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
        graph = onnx.helper.make_graph([node], "expression", [], outs, inits)
        model = onnx.helper.make_model(graph, opset_imports=list(opsets) or [onnx.helper.make_opsetid("", 17)])
    except Exception:  # noqa: BLE001 - whatever cannot be written as a model is simply not known here
        return None
    arrays = as_the_engine_computes(model)
    if arrays is None:
        return None
    if any(a.size > SMALL or a.dtype.kind not in "biuf" for a in arrays):
        return None
    return arrays


def shape_vector(node: NodeProto, dims: Dims | None) -> tuple[int | None, ...] | None:
    """What ``Shape(x)`` (``node``, with its ``start`` / ``end``) holds for a tensor of ``dims``: each entry an
    int, or None where that dim is not known; None when the rank is not known."""
    if dims is None:
        return None
    try:
        attrs = Attributes(node)
        start, end = attrs.get_int("start", 0), attrs.get_int("end", len(dims))
    except TypeError:
        return None
    rank = len(dims)
    lo = min(max(start + rank if start < 0 else start, 0), rank)
    hi = min(max(end + rank if end < 0 else end, 0), rank)
    return tuple(d if isinstance(d, int) else None for d in dims[lo:hi])


def size_value(dims: Dims | None) -> np.ndarray | None:
    """``Size(x)`` for a tensor of ``dims``, when every dim is known."""
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return np.array(int(np.prod([int(d) for d in dims if isinstance(d, int)])), dtype=np.int64)


def full(vector: tuple[int | None, ...] | None) -> np.ndarray | None:
    """A shape vector as an int64 array when every entry is known."""
    if vector is None or any(v is None for v in vector):
        return None
    return np.array(vector, dtype=np.int64)


def picked(node: NodeProto, vector: tuple[int | None, ...], params: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """``Gather`` (axis 0) or ``Slice`` of a shape vector whose picked entries are all known: their value.

    ``params`` are the arrays of the node's inputs after the first (None: not known or absent)."""
    if not is_default(node) or len(vector) > SMALL:
        return None
    index = np.arange(len(vector))
    try:
        if node.op_type == "Gather" and len(params) == 1 and params[0] is not None:
            if Attributes(node).get_int("axis", 0) not in (0, -1):
                return None
            idx = np.asarray(params[0])
            if idx.dtype.kind not in "iu" or idx.ndim > 1 or not all(-len(vector) <= int(i) < len(vector) for i in idx.reshape(-1)):
                return None
            chosen = index[idx]
        elif node.op_type == "Slice" and 2 <= len(params) <= 4 and all(p is not None for p in params) and not node.attribute:
            starts, ends, *rest = (np.asarray(p).reshape(-1) for p in params if p is not None)
            axes = rest[0] if rest else np.zeros(1, np.int64)
            steps = rest[1] if len(rest) > 1 else np.ones(1, np.int64)
            if not (len(starts) == len(ends) == len(axes) == len(steps) == 1) or norm_axis(int(axes[0]), 1) != 0 or steps[0] == 0:
                return None
            chosen = index[slice(int(starts[0]), int(ends[0]), int(steps[0]))]
        else:
            return None
    except (TypeError, ValueError, IndexError):
        return None
    entries = [vector[int(i)] for i in np.asarray(chosen).reshape(-1)]
    if any(e is None for e in entries):
        return None
    return np.array(entries, dtype=np.int64).reshape(np.asarray(chosen).shape)


def laid_out_dims(dims: Dims | None, layout: Layout) -> Dims | None:
    """The dims of a tensor of ``dims`` seen through ``layout`` (an added unit axis: 1)."""
    if dims is None or layout is None:
        return dims
    if len([p for p in layout if p is not None]) != len(dims):
        return None
    return tuple(1 if p is None else dims[p] for p in layout)


def known_values(
    nodes: Iterable[NodeProto],
    constants: Mapping[str, np.ndarray],
    dims_of: Callable[[str], Dims | None],
    opsets: Sequence[onnx.OperatorSetIdProto],
) -> dict[str, np.ndarray]:
    """The outputs of ``nodes`` (in graph order) that small constant expressions compute from ``constants`` and
    the dims ``dims_of`` knows; used to help shape inference along (see the module docstring)."""
    values: dict[str, np.ndarray] = dict(constants)
    vectors: dict[str, tuple[int | None, ...]] = {}  # shape vectors with some entries unknown
    found: dict[str, np.ndarray] = {}
    for node in nodes:
        if not is_default(node) or not node.output:
            continue
        out = node.output[0]
        if node.op_type == "Constant":
            fact = constant_node_fact(node, (0, out))
            value = np.asarray(fact.get()) if isinstance(fact, Const) else None
            if value is not None and value.size <= SMALL:
                values[out] = value
            continue
        if node.op_type == "Shape" and node.input:
            vector = shape_vector(node, dims_of(node.input[0]))
            value = full(vector)
            if value is not None:
                values[out] = found[out] = value
            elif vector is not None:
                vectors[out] = vector
            continue
        if node.op_type == "Size" and node.input:
            value = size_value(dims_of(node.input[0]))
            if value is not None:
                values[out] = found[out] = value
            continue
        if node.op_type in ("Gather", "Slice") and node.input and node.input[0] in vectors:
            value = picked(node, vectors[node.input[0]], [values.get(n) for n in node.input[1:]])
            if value is not None:
                values[out] = found[out] = value
            continue
        ins = [values.get(n) if n else None for n in node.input]
        if any(v is None for n, v in zip(node.input, ins, strict=True) if n):
            continue
        results = evaluate(node, ins, opsets)
        if results is None:
            continue
        for name, value in zip([o for o in node.output if o], results, strict=False):
            values[name] = found[name] = value
    return found


def small_constant(t: TensorProto) -> bool:
    """Whether an initializer is small enough to be shape arithmetic (and stored in the model)."""
    return t.data_location != TensorProto.EXTERNAL and int(np.prod(t.dims)) <= SMALL
