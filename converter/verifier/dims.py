"""The relations a graph states between its inputs' symbolic dims, so that verification feeds values it accepts.

A decoder with a KV cache takes ``attention_mask [batch, total_sequence]`` beside ``past_key_values.<i>.key
[batch, heads, past_sequence, dim]`` and ``input_ids [batch, sequence]``, and only runs when ``total_sequence =
past_sequence + sequence``: the graph says so where it concatenates the cache and the new keys (and declares the
result ``present.<i>.key [batch, heads, total_sequence, dim]``), and where it adds the mask to the attention
scores. Distinct small values for the three (3, 5, 7) make onnxruntime refuse the model.

:func:`relations` reads such equalities from the graph: each dim is followed as a sum of symbols and a
constant through the ops whose output dims are simple in their inputs' (Concat adds along its axis;
elementwise ops broadcast, and two dims broadcast against each other, neither 1, are equal; Transpose,
Unsqueeze, Squeeze, MatMul, Gather, Identity-like ops), and a graph output's declared dims are equal to what
its producer makes. An equation that leaves one input symbol alone on one side (``total_sequence =
past_sequence + sequence``) makes that symbol *derived*: the verifier chooses the others and computes it.
Anything not followed is simply not related (the verifier then tries its candidates as before).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import numpy_helper

# A dim: ({symbol: coefficient}, constant), frozen. A known size is ((), n).
Expr = tuple[tuple[tuple[str, int], ...], int]

_SAME_SHAPE = frozenset(
    (
        "Abs Cast Ceil Clip Cos Elu Erf Exp Floor Gelu HardSigmoid HardSwish Identity IsInf IsNaN LayerNormalization "
        "LeakyRelu Log LogSoftmax Mish Neg Not Reciprocal Relu Round Sigmoid Sign Sin Softmax Softplus Softsign Sqrt "
        "Tanh SimplifiedLayerNormalization RMSNormalization Dropout"
    ).split()
)
_BROADCAST = frozenset(
    "Add And BitwiseAnd Div Equal Greater GreaterOrEqual Less LessOrEqual Max Min Mod Mul Or Pow Sub Sum Where Xor".split()
)


def _const(n: int) -> Expr:
    return ((), n)


def _symbol(name: str) -> Expr:
    return (((name, 1),), 0)


def _add(a: Expr, b: Expr) -> Expr:
    coeffs = dict(a[0])
    for s, c in b[0]:
        coeffs[s] = coeffs.get(s, 0) + c
    return (tuple(sorted((s, c) for s, c in coeffs.items() if c)), a[1] + b[1])


def _is_one(a: Expr | None) -> bool:
    return a is not None and not a[0] and a[1] == 1


Shape = list[Expr | None]


def relations(model: onnx.ModelProto, symbols: Sequence[str]) -> dict[str, Expr]:
    """The input symbols the graph determines from the others: ``{derived: expression of the others}``.

    Args:
        model: the model (its main graph is read).
        symbols: the input symbols the verifier is to choose (dim names, or ``input[axis]`` for unnamed dims).
    """
    g = model.graph
    shapes: dict[str, Shape] = {}
    for vi in g.input:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [_dim(d, f"{vi.name}[{i}]") for i, d in enumerate(vi.type.tensor_type.shape.dim)]
    constants = {t.name: numpy_helper.to_array(t) for t in g.initializer if len(t.dims) <= 1 and _small(t)}
    for t in g.initializer:
        shapes.setdefault(t.name, [_const(int(d)) for d in t.dims])
    inferred = _inferred(model, {s for vi in g.input for s in _names(vi)})
    equal: list[tuple[Expr | None, Expr | None]] = []
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or not node.output or not node.output[0]:
            continue
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    shapes[node.output[0]] = [_const(int(d)) for d in a.t.dims]
                    if len(a.t.dims) <= 1:
                        constants[node.output[0]] = numpy_helper.to_array(a.t)
            continue
        ins = [shapes.get(n) if n else None for n in node.input]
        out = _output_shape(node, ins, constants, equal)
        known = inferred.get(node.output[0])
        if out is None:
            out = known
        elif known is not None and len(known) == len(out):
            out = [k if o is None else o for o, k in zip(out, known, strict=True)]
        if out is not None:
            shapes[node.output[0]] = out
    for vi in g.output:
        made = shapes.get(vi.name)
        if made is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        declared = vi.type.tensor_type.shape.dim
        if len(declared) == len(made):
            for d, e in zip(declared, made, strict=True):
                if e is not None and (d.HasField("dim_value") or d.dim_param):
                    equal.append((_dim(d, ""), e))
    return _solve(equal, set(symbols))


def _names(vi: onnx.ValueInfoProto) -> list[str]:
    if not vi.type.HasField("tensor_type"):
        return []
    return [d.dim_param for d in vi.type.tensor_type.shape.dim if d.dim_param]


def _inferred(model: onnx.ModelProto, symbols: set[str]) -> dict[str, Shape]:
    """Each tensor's dims as onnx's shape inference (with data propagation: a Reshape target computed from
    ``Shape``) finds them, on a copy without the weights' data: the input symbols and sizes it can tell."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    declared = {i.name for i in g.input}
    for t in model.graph.initializer:
        if _small(t) and (t.raw_data or t.dims or t.int64_data or t.int32_data or t.float_data):
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        out = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - no inferred shapes: only what the walk follows itself
        return {}
    found: dict[str, Shape] = {}
    for vi in out.graph.value_info:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            found[vi.name] = [
                _const(d.dim_value) if d.HasField("dim_value") else _symbol(d.dim_param) if d.dim_param in symbols else None
                for d in vi.type.tensor_type.shape.dim
            ]
    return found


def _small(t: onnx.TensorProto) -> bool:
    return t.data_location != onnx.TensorProto.EXTERNAL and (not t.dims or t.dims[0] <= 16)


def _dim(d: onnx.TensorShapeProto.Dimension, unnamed: str) -> Expr:
    if d.HasField("dim_value"):
        return _const(d.dim_value)
    return _symbol(d.dim_param or unnamed)


def _ints(name: str, constants: Mapping[str, object]) -> list[int] | None:
    value = constants.get(name)
    if value is None:
        return None
    try:
        return [int(v) for v in value.reshape(-1)]  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return None


def _attr_ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else [a.i]
    return None


def _output_shape(node: onnx.NodeProto, ins: list[Shape | None], constants: Mapping[str, object], equal: list) -> Shape | None:
    """The first output's dims of ``node`` from its inputs' (None: not followed); equalities go to ``equal``."""
    op = node.op_type
    x = ins[0] if ins else None
    try:
        if op in _SAME_SHAPE:
            return None if x is None else list(x)
        if op in _BROADCAST:
            return _broadcast([s for s in ins if s is not None] if all(s is not None for s in ins) else [], equal)
        if op == "Concat" and all(s is not None for s in ins) and ins:
            shapes = [s for s in ins if s is not None]
            rank = len(shapes[0])
            axis = (_attr_ints(node, "axis") or [0])[0] % rank
            total: Expr | None = _const(0)
            for s in shapes:
                d = s[axis]
                total = None if total is None or d is None else _add(total, d)
            out = list(shapes[0])
            out[axis] = total
            return out
        if op == "Transpose" and x is not None:
            perm = _attr_ints(node, "perm") or list(reversed(range(len(x))))
            return [x[p] for p in perm]
        if op in ("Unsqueeze", "Squeeze") and x is not None:
            axes = _attr_ints(node, "axes") or (_ints(node.input[1], constants) if len(node.input) > 1 else None)
            if axes is None:
                return None
            if op == "Unsqueeze":
                grown = len(x) + len(axes)
                out = list(x)
                for at in sorted(ax % grown for ax in axes):
                    out.insert(at, _const(1))
                return out
            gone = {ax % len(x) for ax in axes}
            return [d for i, d in enumerate(x) if i not in gone]
        if op == "MatMul" and len(ins) == 2 and ins[0] is not None and ins[1] is not None:
            a: Shape = ins[0]
            b: Shape = ins[1]
            if len(a) < 2 or len(b) < 2:
                return None
            if a[-1] is not None and b[-2] is not None:
                equal.append((a[-1], b[-2]))
            batch = _broadcast([a[:-2], b[:-2]], equal)
            return None if batch is None else [*batch, a[-2], b[-1]]
        if op == "Gather" and len(ins) == 2 and x is not None and ins[1] is not None:
            axis = (_attr_ints(node, "axis") or [0])[0] % len(x)
            return [*x[:axis], *ins[1], *x[axis + 1 :]]
    except (IndexError, ZeroDivisionError):
        return None
    return None


def _broadcast(shapes: list[Shape], equal: list) -> Shape | None:
    """Numpy broadcasting of ``shapes``; two dims neither of which is 1 must be equal (recorded)."""
    if not shapes:
        return None
    rank = max(len(s) for s in shapes)
    out: Shape = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = [d for d in dims if not _is_one(d)]
        if any(d is None for d in known):
            out.append(None)
            continue
        first = known[0] if known else _const(1)
        for d in known[1:]:
            if d != first:
                equal.append((first, d))
        out.append(first)
    return out


def _solve(equal: list[tuple[Expr | None, Expr | None]], symbols: set[str]) -> dict[str, Expr]:
    """From equations, input symbols each alone on one side with the other side's symbols all chosen freely:
    ``{symbol: expression}`` (the first such equation for each; none that would make a cycle)."""
    derived: dict[str, Expr] = {}
    for a, b in equal:
        if a is None or b is None or a == b:
            continue
        for lone, other in ((a, b), (b, a)):
            if len(lone[0]) != 1 or lone[0][0][1] != 1 or lone[1] != 0:
                continue
            name = lone[0][0][0]
            used = {s for s, _ in other[0]}
            if name not in symbols or name in derived or name in used or not used <= symbols:
                continue
            if used & set(derived) or any(name in {s for s, _ in e[0]} for e in derived.values()):
                continue  # keep it one level deep: derived from chosen symbols only
            derived[name] = other
            break
    return derived


def value_of(expr: Expr, values: Mapping[str, int]) -> int | None:
    """``expr`` at ``values`` (None when it reads a symbol without one)."""
    total = expr[1]
    for s, c in expr[0]:
        if s not in values:
            return None
        total += c * values[s]
    return total


def describe(expr: Expr) -> str:
    """``expr`` in words: ``past_sequence + sequence``."""
    parts = [(s if c == 1 else f"{c} * {s}") for s, c in expr[0]]
    if expr[1] or not parts:
        parts.append(str(expr[1]))
    return " + ".join(parts).replace("+ -", "- ")


__all__ = ["Expr", "describe", "relations", "value_of"]
