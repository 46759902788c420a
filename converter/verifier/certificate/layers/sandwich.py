"""A quantized sandwich's pairs: the Q/DQ nodes directly around a claimed Conv.

The original quantizes the flat activation ``Reshape(x, [-1, C])`` and the flat output inside the Reshapes;
the rewritten graph quantizes the 4D tensors around the Conv. Inside one claimed layer the flat tensors get
facts of their own, ``SameAs(FLAT + name, P)``: the original flat tensor ``name`` seen as ``[N, H, W, C]``
(what the Reshapes of the layer make of it) and laid out by ``P``. They never leave the layer: its last
pair's output is the layer's original output.

A pair node around the Conv is its original pair's node on the 4D tensor in layout ``P`` when it has the
same op, attributes (``axis`` aside), scale and zero point bit for bit, and a per-channel scale's axis is
where ``P`` puts the channels (axis 3 of ``[N, H, W, C]``, the flat tensor's axis 1). A
DynamicQuantizeLinear's scale and zero point come from the minimum and maximum of all the values, which the
Reshape and any layout keep: the original's, as they are.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from onnx import NodeProto

from converter.report import RewrittenLayer
from converter.verifier.certificate.constants import differs
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.facts import FLAT, Const, SameAs, Unknown, describe
from converter.verifier.certificate.layers.dense import original_layer
from converter.verifier.certificate.layers.integer import INTEGER_CONVS, sandwich_entry
from converter.verifier.certificate.layouts import TOKENS, Layout, compose, norm_axis, relative
from converter.verifier.certificate.nodes import Attributes, is_default, plain_attributes
from converter.verifier.certificate.proofs import DenseLayer

Pair = tuple[str, NodeProto, RewrittenLayer]  # role ("in_q", "in_dq", "out_q", "out_dq"), the original node, the layer


def find_pairs(ctx: Context) -> dict[int, Pair]:
    """The rewritten Q/DQ nodes directly around each claimed Conv whose original is a quantized sandwich, by id."""
    pairs: dict[int, Pair] = {}
    made = {o: n for n in ctx.nodes for o in n.output if o}
    readers: dict[str, list[NodeProto]] = defaultdict(list)
    for n in ctx.nodes:
        for i in n.input:
            readers[i].append(n)
    for conv in ctx.nodes:
        layer = ctx.convs.get(conv.name)
        if layer is None or not conv.input:
            continue
        if conv.op_type in INTEGER_CONVS:  # an integer Tensordot: the entry that quantizes its flat rows
            original = ctx.orig.producers.get(layer.output)
            entry = sandwich_entry(ctx.orig, original) if original is not None and original.input else None
            q = made.get(conv.input[0])
            if q is not None and q.op_type == "Unsqueeze" and is_default(q) and q.input:
                q = made.get(q.input[0])  # a token layer's: quantized as [B, C, S], then unsqueezed to [B, C, 1, S]
            if entry is not None and q is not None and q.op_type == entry.op_type:
                pairs[id(q)] = ("in_q", entry, layer)
            continue
        if conv.op_type != "Conv":
            continue
        before = made.get(conv.input[0])
        after = readers.get(conv.output[0], []) if conv.output else []
        if (before is None or before.op_type != "DequantizeLinear") and not (
            len(after) == 1 and after[0].op_type == "QuantizeLinear"
        ):
            continue  # no pair around it: not a quantized sandwich's Conv (its layer is read once, by its prover)
        dense = original_layer(ctx.orig, layer)
        if isinstance(dense, str):
            continue
        if dense.in_pair is not None:
            dq = made.get(conv.input[0])
            q = made.get(dq.input[0]) if dq is not None and dq.input else None
            if dq is not None and q is not None and (q.op_type, dq.op_type) == ("QuantizeLinear", "DequantizeLinear"):
                pairs[id(q)], pairs[id(dq)] = ("in_q", dense.in_pair[0], layer), ("in_dq", dense.in_pair[1], layer)
        if dense.out_pair is not None and conv.output:
            after = readers.get(conv.output[0], [])
            q = after[0] if len(after) == 1 and after[0].op_type == "QuantizeLinear" else None
            after = readers.get(q.output[0], []) if q is not None else []
            dq = after[0] if len(after) == 1 and after[0].op_type == "DequantizeLinear" else None
            if q is not None and dq is not None:
                pairs[id(q)], pairs[id(dq)] = ("out_q", dense.out_pair[0], layer), ("out_dq", dense.out_pair[1], layer)
    return pairs


def prove_pair(ctx: Context, node: NodeProto, pair: Pair) -> None:
    """A Q/DQ node around a quantized sandwich's Conv: the original pair's node on the 4D tensor, in layout P
    (its outputs' facts set, or unknown with the reason; a definite disagreement is a problem too)."""
    role, original, layer = pair
    fact = ctx.fact(node.input[0]) if node.input else Unknown("no input")
    if isinstance(fact, Unknown):
        ctx.unknown(node, f"its input is not known: {fact.reason}")
        return
    perm: Layout
    if role == "in_q":  # reads the layer's activation x (what the original's first Reshape flattens), in any layout
        first = ctx.orig.producers.get(original.input[0])
        want = ctx.orig.canon(first.input[0]) if first is not None else Unknown("no Reshape")
        if not isinstance(fact, SameAs) or not isinstance(want, SameAs) or fact.root != want.root:
            ctx.unknown(node, f"it reads {describe(fact)}, not the layer's activation {layer.input!r}")
            return
        try:
            perm = relative(want.layout, fact.layout)
        except ValueError:
            ctx.unknown(node, "it reads the layer's activation at another rank")
            return
    else:
        source = original.input[0] if role != "out_q" else ctx.orig.producers[original.input[0]].output[0]
        if not isinstance(fact, SameAs) or fact.root != FLAT + source:
            ctx.unknown(node, f"it reads {describe(fact)}, not the original {source!r} of this layer")
            return
        perm = fact.layout
    if perm is not None and len(perm) != 4 and not (len(perm) == 3 and role == "in_q" and _per_tensor(ctx, original)):
        # A token layer's activation may be quantized as [B, S, C] in any order before the Conv's unit axis when one
        # scale and zero point serve the whole tensor; other pairs sit on the Conv's rank-4 tensors.
        ctx.unknown(node, "it reads the layer's tensor at another rank")
        return
    if perm is not None and None in perm and perm != TOKENS:
        ctx.unknown(node, "it reads the layer's tensor with unit axes")
        return
    problem = _same_pair_node(ctx, node, original, perm)
    if problem:
        ctx.cert.problems.append(f"{node.op_type} {node.name or node.output[0]!r}: {problem}")
        ctx.unknown(node, problem)
        return
    if role == "out_dq":
        dense = ctx.cert.originals.get(layer.conv)
        out = ctx.orig.canon(dense.end if isinstance(dense, DenseLayer) and dense.end else layer.output)
        if not isinstance(out, SameAs):
            ctx.unknown(node, f"the original output {layer.output!r} is not a computed tensor")
            return
        ctx.facts[node.output[0]] = SameAs(out.root, compose(out.layout, perm))
    else:
        ctx.facts[node.output[0]] = SameAs(FLAT + original.output[0], perm)
        # DynamicQuantizeLinear's scale and zero point come from the minimum and maximum of all the values,
        # which the first Reshape and any layout keep: the original's, as they are.
        for j in range(1, min(len(node.output), len(original.output))):
            if node.output[j]:
                ctx.facts[node.output[j]] = ctx.orig.canon(original.output[j])


def _per_tensor(ctx: Context, original: NodeProto) -> bool:
    """Whether the original quantizes its whole tensor with one scale: a DynamicQuantizeLinear, or a QuantizeLinear
    with a one-element constant scale."""
    if original.op_type == "DynamicQuantizeLinear":
        return True
    scale = ctx.orig.canon(original.input[1]) if original.op_type == "QuantizeLinear" and len(original.input) > 1 else None
    return isinstance(scale, Const) and np.asarray(scale.get()).size == 1


def _same_pair_node(ctx: Context, node: NodeProto, original: NodeProto, perm: Layout) -> str | None:
    """Why ``node`` on the 4D tensor laid out by ``perm`` is not ``original`` on the flat one, or None."""
    if node.op_type != original.op_type or not is_default(node) or len(node.input) != len(original.input):
        return f"not the original's {original.op_type} {original.name!r}"
    scale: np.ndarray | None = None
    for slot, role in ((1, "scale"), (2, "zero point")):
        if slot >= len(node.input):
            continue
        mine, theirs = ctx.fact(node.input[slot]), ctx.orig.canon(original.input[slot])
        if not isinstance(mine, Const) or not isinstance(theirs, Const):
            return f"its {role} is not the original's constant"
        problem = differs(mine.get(), theirs.get(), role)
        if problem:
            return problem
        if slot == 1:
            scale = np.asarray(mine.get())
    if [a for a in plain_attributes(node) if a[0] != "axis"] != [a for a in plain_attributes(original) if a[0] != "axis"]:
        return "its attributes differ from the original's"
    if scale is None:
        return None  # DynamicQuantizeLinear: its scale and zero point are outputs (prove_pair)
    if scale.size > 1:  # per channel: the flat tensor's axis 1 is C, axis 3 of [N, H, W, C], where P puts it
        flat_axis = norm_axis(Attributes(original).get_int("axis", 1), 2)
        axis = norm_axis(Attributes(node).get_int("axis", 1), 4)
        last = 2 if perm is not None and None in perm else 3  # [B, S, C] as [B, C, 1, S]: C is its axis 2
        channel = last if perm is None else list(perm).index(last)
        if flat_axis != 1 or axis != channel:
            return f"its axis {axis} is not the channels' ({channel}), or the original's is not per channel"
    return None
