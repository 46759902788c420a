"""TorchScript's ``expand(N, -1, -1)`` written so that shape inference follows it (for the certificate's shapes).

TorchScript writes an Expand whose target keeps some of the input's dims as ``Where(Equal(s, -1), ones, s)``,
``s`` a Concat of constants and sizes read with ``Shape``. onnx's data propagation stops at ``Where``, so a class
token expanded to ``[N, 1, C]`` comes out ``[N, ?, C]``, and so does every token tensor after its Concat with the
patches: the proof of a head split folded into a Conv's layout has no token count to follow. The target ``Where``
computes is ``s`` with each constant ``-1`` written as 1 (a size read with ``Shape`` is never -1, and a 1
broadcasts to the input's dim just as ``-1`` keeps it); the light model's Expand is given that target.

Written for the certificate alone (the rewriter's types have their own reading): only the exact form above is
taken, and only on the light copy that shape inference runs on; the graphs compared are not changed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, numpy_helper

_SIZE_PATH = frozenset({"Unsqueeze", "Squeeze", "Cast", "Reshape", "Gather", "Slice"})


def give_kept_dims(light: onnx.ModelProto) -> int:
    """Rewrite, in ``light``'s main graph, each Expand of the form above to read the target ``Where`` computes (a
    Concat added before it). How many were rewritten."""
    g = light.graph
    made_by = {out: node for node in g.node for out in node.output if out}
    ints = _int_constants(g)
    count = 0
    new_nodes: list[NodeProto] = []
    for node in g.node:
        if node.op_type == "Expand" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
            pieces = _target_pieces(node.input[1], made_by, ints)
            if pieces is not None:
                fixed: list[str] = []
                for i, piece in enumerate(pieces):
                    if piece in ints:
                        kept = ints[piece].reshape(-1)
                        name = f"{node.input[1]}/kept_{count}_{i}"
                        g.initializer.append(numpy_helper.from_array(np.where(kept == -1, 1, kept).astype(np.int64), name))
                        fixed.append(name)
                    else:
                        fixed.append(piece)
                target = f"{node.input[1]}/kept_{count}"
                new_nodes.append(onnx.helper.make_node("Concat", fixed, [target], axis=0))
                node.input[1] = target
                count += 1
        new_nodes.append(node)
    if count:
        del g.node[:]
        g.node.extend(new_nodes)  # each Concat right before its Expand; its pieces are made earlier still
    return count


def _int_constants(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in g.initializer if t.data_type == TensorProto.INT64}
    for node in g.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if t.data_type == TensorProto.INT64:
                out[node.output[0]] = numpy_helper.to_array(t)
    return out


def _filled(name: str, made_by: dict[str, NodeProto], ints: dict[str, np.ndarray]) -> int | None:
    """The one int64 value of ``name``: a constant, a ConstantOfShape's fill, or a Mul of two such."""
    if name in ints:
        v = ints[name].reshape(-1)
        return int(v[0]) if v.size == 1 else None
    node = made_by.get(name)
    if node is None:
        return None
    if node.op_type == "ConstantOfShape":
        for a in node.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.INT64:
                v = numpy_helper.to_array(a.t).reshape(-1)
                return int(v[0]) if v.size == 1 else None
        return None
    if node.op_type == "Mul" and len(node.input) == 2:
        a, b = (_filled(x, made_by, ints) for x in node.input)
        return None if a is None or b is None else a * b
    return None


def _read_with_shape(name: str, made_by: dict[str, NodeProto]) -> bool:
    """Whether ``name`` is a size: a Shape's output, through Gather/Slice and Unsqueeze/Squeeze/Cast/Reshape."""
    node = made_by.get(name)
    while node is not None and node.op_type in _SIZE_PATH:
        node = made_by.get(node.input[0]) if node.input else None
    return node is not None and node.op_type == "Shape"


def _target_pieces(name: str, made_by: dict[str, NodeProto], ints: dict[str, np.ndarray]) -> list[str] | None:
    """The Concat's inputs behind ``Where(Equal(s, -1), 1, s)`` named ``name``, where each is a constant or a size;
    None for anything else."""
    where = made_by.get(name)
    if where is None or where.op_type != "Where" or len(where.input) != 3:
        return None
    cond, one, s = where.input
    equal = made_by.get(cond)
    if equal is None or equal.op_type != "Equal" or len(equal.input) != 2 or s not in equal.input:
        return None
    other = equal.input[1] if equal.input[0] == s else equal.input[0]
    if _filled(one, made_by, ints) != 1 or _filled(other, made_by, ints) != -1:
        return None
    concat = made_by.get(s)
    if concat is not None and concat.op_type == "Reshape" and concat.input:
        concat = made_by.get(concat.input[0])
    if concat is None or concat.op_type != "Concat":
        return None
    pieces = list(concat.input)
    if all((p in ints and ints[p].ndim <= 1) or _read_with_shape(p, made_by) for p in pieces):
        return pieces
    return None
