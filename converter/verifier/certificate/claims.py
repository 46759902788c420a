"""Claims discovered: which Convs of a rewritten model stand for which dense layers of the original.

A rewrite says what each Conv it made computes (a ``RewrittenLayer``); a model this tool did not write, or a
plain ``verify(original, rewritten)``, says nothing. The claims are then read from the two graphs: a Conv (or
QLinearConv / ConvInteger) that no original node of the same op and output explains, whose weight is, bit for
bit, an original MatMul's or Gemm's weight transposed to ``[K, C, 1, 1]`` (``transB`` and ``alpha`` applied, a
quantized weight by its dequantized value, an integer weight by its differences from its zero point), stands for
that layer. Its input is the layer's activation (the MatMul's, or a Tensordot's before its first Reshape to rows
and quantization pair); its output the layer's end: the MatMul's output, or the Add of a constant bias after it
(when the Conv has a bias: a Conv without one leaves the bias to an Add of its own, which the walk then matches as
any Add), or a Tensordot's second Reshape.

A claim found here is only a hypothesis: the walk proves or refutes it exactly as it does a rewrite's own
claim (``layers.LAYER_PROVERS``), and the numbers check it the same way. Several original layers may share a
weight; each Conv then takes the one whose MatMul its name extends (``<matmul>_conv``, this tool's names), else
the first not taken by another Conv.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, TensorProto

from converter.report import RewrittenLayer
from converter.verifier.certificate.facts import Const
from converter.verifier.certificate.layers import LAYER_PROVERS
from converter.verifier.certificate.layers.dense import original_layer
from converter.verifier.certificate.nodes import Attributes, graphs_of, holder_key, is_default
from converter.verifier.certificate.original import Original

GraphKey = tuple[tuple[str, str], ...]
_FLOAT_LAYERS = ("MatMul", "Gemm")
_INTEGER_LAYERS = {"QLinearConv": "QLinearMatMul", "ConvInteger": "MatMulInteger"}
_WEIGHT_SLOT = {"Conv": 1, "QLinearConv": 3, "ConvInteger": 1, "MatMul": 1, "Gemm": 1, "QLinearMatMul": 3, "MatMulInteger": 1}


def discover(
    original: onnx.ModelProto, rewritten: onnx.ModelProto, value_of: Callable[[TensorProto], np.ndarray]
) -> list[RewrittenLayer]:
    """The claims that the rewritten model's Convs stand for original dense layers (see the module docstring).

    Args:
        original: the model before the rewrite.
        rewritten: the model to check against it.
        value_of: reads a tensor's data.
    """
    found: list[RewrittenLayer] = []
    for key, r_chain, o_chain in _graph_pairs(original.graph, rewritten.graph, ()):
        orig = rew = None
        for g in o_chain:
            orig = Original(g, orig, value_of, original.opset_import, original if orig is None else None)
        for g in r_chain:
            rew = Original(g, rew, value_of, rewritten.opset_import, None)
        assert orig is not None and rew is not None
        found.extend(_in_graph(key, orig, rew))
    return found


def _graph_pairs(
    original: GraphProto, rewritten: GraphProto, key: GraphKey
) -> Iterator[tuple[GraphKey, list[GraphProto], list[GraphProto]]]:
    """Each graph of ``rewritten`` with its key and the chain of graphs to it, beside the original's chain."""
    stack = [(key, [rewritten], [original])]
    while stack:
        k, r_chain, o_chain = stack.pop()
        yield k, r_chain, o_chain
        o_holders = {holder_key(n): n for n in o_chain[-1].node if graphs_of(n)}
        for node in r_chain[-1].node:
            holder = o_holders.get(holder_key(node))
            if holder is None:
                continue
            o_subs = dict(graphs_of(holder))
            for name, sub in graphs_of(node):
                if name in o_subs:
                    stack.append(((*k, (holder_key(node), name)), [*r_chain, sub], [*o_chain, o_subs[name]]))


def _in_graph(key: GraphKey, orig: Original, rew: Original) -> list[RewrittenLayer]:
    convs = [n for n in rew.graph.node if _is_layer_conv(n, orig)]
    if not convs:
        return []
    weights = {id(c): _centered(rew, c, _value(rew, c.input[_WEIGHT_SLOT[c.op_type]])) for c in convs}
    wanted = {_conv_key(c.op_type, w) for c in convs if (w := weights[id(c)]) is not None}
    candidates: dict[tuple, list[NodeProto]] = defaultdict(list)
    for node in orig.graph.node:
        if not is_default(node) or node.op_type not in (*_FLOAT_LAYERS, *_INTEGER_LAYERS.values()) or len(node.input) < 2:
            continue
        for fingerprint in _original_keys(orig, node, wanted):
            candidates[fingerprint].append(node)
    claims, taken = [], set()
    for conv in convs:
        w = weights[id(conv)]
        if w is None:
            continue
        matches = sorted(
            candidates.get(_conv_key(conv.op_type, w), []),
            key=lambda n: (id(n) in taken, not conv.name.startswith(n.name or "\0")),
        )
        for node in matches:
            claim = _claim(key, orig, rew, conv, node)
            if claim is not None:
                claims.append(claim)
                taken.add(id(node))
                break
    return claims


def _is_layer_conv(node: NodeProto, orig: Original) -> bool:
    """A named Conv-like node that no original node of the same op and output explains."""
    if not node.name or not is_default(node) or node.op_type not in LAYER_PROVERS or len(node.input) <= _WEIGHT_SLOT[node.op_type]:
        return False
    same = orig.producers.get(node.output[0]) if node.output else None
    return same is None or same.op_type != node.op_type


def _value(scope: Original, name: str) -> np.ndarray | None:
    fact = scope.canon(name)
    if not isinstance(fact, Const):
        return None
    try:
        return np.asarray(fact.get())
    except ValueError:
        return None


_ZERO_SLOT = {"QLinearConv": 5, "ConvInteger": 3, "QLinearMatMul": 5, "MatMulInteger": 3}


def _centered(scope: Original, node: NodeProto, w: np.ndarray | None) -> np.ndarray | None:
    """An integer layer's weight ``[K, C, 1, 1]`` less its zero point per output channel, in int32 (what its sums
    read); a float layer's weight as it is; None when the zero point is not a constant of one or K values."""
    slot = _ZERO_SLOT.get(node.op_type)
    if w is None or slot is None:
        return w
    if w.dtype.kind not in "iu" or w.ndim != 4:
        return None
    k = w.shape[0]
    zero = _value(scope, node.input[slot]) if len(node.input) > slot and node.input[slot] else np.zeros(1, np.int32)
    if zero is None or zero.size not in (1, k):
        return None
    return w.astype(np.int32) - np.broadcast_to(zero.reshape(-1).astype(np.int32), (k,)).reshape(k, 1, 1, 1)


def _digest(kc: np.ndarray) -> tuple:
    """A weight as [K, C] by dtype, shape and a hash of its bytes."""
    data = np.ascontiguousarray(kc)
    return (data.dtype.str, data.shape, hashlib.blake2b(data.view(np.uint8).tobytes(), digest_size=16).digest())


def _conv_key(op: str, w: np.ndarray) -> tuple:
    """The fingerprint of a Conv's weight ``[K, C, 1, 1]`` as [K, C] (other shapes: one no original has)."""
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        return ("not a 1x1 weight",)
    return (_INTEGER_LAYERS.get(op, "float"), *_digest(w.reshape(w.shape[0], w.shape[1])))


def _original_keys(orig: Original, node: NodeProto, wanted: set[tuple]) -> list[tuple]:
    """The fingerprints an original dense layer's weight would have in a Conv, as [K, C] (only for shapes wanted)."""
    w = _value(orig, node.input[_WEIGHT_SLOT[node.op_type]])
    if w is None or w.ndim < 2 or any(d != 1 for d in w.shape[:-2]):
        return []
    w = w.reshape(w.shape[-2:])
    family = "float" if node.op_type in _FLOAT_LAYERS else node.op_type
    shapes = {k[2] for k in wanted if len(k) > 2 and k[0] == family}
    forms: list[np.ndarray] = []
    try:
        attrs = Attributes(node)
        if node.op_type == "Gemm":
            if attrs.get_int("transA", 0):
                return []
            kc = w if attrs.get_int("transB", 0) else w.T
            alpha = attrs.get_float("alpha", 1.0)
            forms.append(kc if alpha == 1.0 else (kc * np.asarray(alpha, dtype=kc.dtype)).astype(kc.dtype))
        elif node.op_type in _INTEGER_LAYERS.values():
            # by its differences from its zero point: a weight shifted with it is the same layer (layers.integer)
            centered = _centered(orig, node, w.T.reshape(*w.T.shape, 1, 1))
            if centered is not None:
                forms.append(centered.reshape(centered.shape[:2]))
        else:
            forms.append(w.T)
    except TypeError:
        return []
    return [(family, *_digest(kc)) for kc in forms if kc.shape in shapes]


def _claim(key: GraphKey, orig: Original, rew: Original, conv: NodeProto, node: NodeProto) -> RewrittenLayer | None:
    """The claim that ``conv`` stands for the original layer whose MatMul/Gemm is ``node``, or None."""
    anchor = node.output[0]
    if conv.op_type in _INTEGER_LAYERS:
        return RewrittenLayer(key, anchor, node.input[0], anchor, conv.name)
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    for x in _inputs(orig, node):
        for end in _ends(orig, anchor):
            layer = RewrittenLayer(key, anchor, x, end, conv.name)
            dense = original_layer(orig, layer)
            if not isinstance(dense, str) and (dense.bias is not None) == has_bias:
                return layer
    return None


def _inputs(orig: Original, node: NodeProto) -> list[str]:
    """Where the layer's activation may be, outermost first: before a Tensordot's Reshape (and Q/DQ pair), or the
    MatMul's input."""
    found = [node.input[0]]
    first = orig.producers.get(node.input[0])
    if first is not None and is_default(first) and first.op_type == "DequantizeLinear":
        q = orig.producers.get(first.input[0])
        first = orig.producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
    if first is not None and is_default(first) and first.op_type == "Reshape" and _flattens_rows(orig, first):
        found.insert(0, first.input[0])
    return found


def _flattens_rows(orig: Original, reshape: NodeProto) -> bool:
    """Whether ``reshape`` may be a Tensordot's first Reshape: rows ``[-1, C]`` of an activation a Conv can read (rank
    3 or 4); ranks inference cannot tell count as may. A window partition (Swin's ``[B, nH, ws, nW, ws, C]`` to
    ``[B * nW, ws * ws, C]``) is not one: the layer there starts at the Reshape's output."""
    before, after = orig.rank(reshape.input[0]), orig.rank(reshape.output[0])
    return (before is None or before in (3, 4)) and (after is None or after == 2)


def _ends(orig: Original, anchor: str) -> list[str]:
    """Where the layer may end, longest first: after a bias Add, a Q/DQ pair, a Tensordot's second Reshape."""
    readers: dict[str, list[NodeProto]] = defaultdict(list)
    for n in orig.graph.node:
        for i in dict.fromkeys(n.input):
            readers[i].append(n)
    ends = [anchor]
    frontier = [anchor]
    for _ in range(4):  # a few ops at most: Q, DQ, Reshape, Add
        nxt = []
        for name in frontier:
            for r in readers.get(name, []):
                if is_default(r) and r.op_type in ("Add", "Reshape", "QuantizeLinear", "DequantizeLinear") and r.output:
                    nxt.append(r.output[0])
        ends.extend(nxt)
        frontier = nxt
    return list(reversed(ends))


__all__ = ["discover"]
