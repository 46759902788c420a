"""The proof of a layer computed by an integer convolution (QLinearConv, ConvInteger).

A rule claims that a ``QLinearConv`` (or ``ConvInteger``) in the rewritten graph computes, in NCHW, what
a ``QLinearMatMul`` (or ``MatMulInteger``) of the original computes in NHWC. Read from the original
graph alone, that holds when:

- the original node producing the layer's output is that op, reading the layer's input as its activation;
- the convolution is a plain 1x1 one (stride 1, no padding or dilation, one group) and reads the
  original activation in NCHW (``SameAs(root, layout then [0, 3, 1, 2])``);
- its integer weight is, bit for bit, the original's ``[C, K]`` weight transposed to ``[K, C, 1, 1]``
  (same dtype) with the original's weight zero point; or a weight shifted with its zero point: for every
  element, ``w' - zw'[k] = w - zw[k]`` (computed in int32, an absent zero point is 0, a one-element one stands
  for every channel), with the zero point a constant of the weight's own dtype. Both ops read the weight only
  through that difference (the sums are ``sum_c (x - zx) * (w - zw)``), so every integer sum is the original's:
  an int8 weight written as uint8 ``w + 128`` with its zero point ``zw + 128`` (this tool's ConvInteger, whose
  onnxruntime kernel refuses uint8 x int8, and other tools' QLinearConv), or any other shift that keeps it;
- every scale and zero point (the weight's zero point aside: above) is the original's: the activation's
  and output's one-element parameters bit for bit (or the same computed tensor, as DynamicQuantizeLinear's),
  the weight's compared as ``[K]`` vectors (a one-element parameter stands for every channel, so a uniform
  ``[K]`` zero point and its one-element form are the same numbers), each with the original's dtype;
- QLinearConv has no bias input (the original's bias is a separate op, kept).

The original may also be onnxruntime's QGemm (com.microsoft; ``quant_pre_process``'s Gemm quantized in the QOperator
format) with ``transA=0``, ``alpha=1`` and an output scale: its weight is ``[C, K]``, or ``[K, C]`` with ``transB=1``
(then compared as it is), its per-column parameters are per K either way, and its int32 bias ``C`` (scale
``a_scale * b_scale``, zero point 0) must be, bit for bit, the QLinearConv's bias ``B`` (the same scale, by ONNX's
definition), both added to the sums before the same requantization; the numeric checks add it too.

Then ``conv[n, k, h, w] = orig[n, h, w, k]`` exactly: both ops are defined by the same integer sums
and the same requantization per output element. A Reshape to rank 3 in front of the original op is a head merge
(``[B, S, h, d] -> [B, S, C]``), not a Tensordot's rows: the layer reads that tensor as a token sequence.

A Tensordot's layer (the integer op on the flat rows ``Reshape(x, [-1, C])``) ends in the flat output seen
as ``[N, H, W, K]`` (``SameAs(FLAT + flat, P)``). A dynamic one is rescaled on that flat output
(``Mul(Cast(Y), sa * sw)``) before its second Reshape, and the rewritten graph rescales in 4D after it:
:func:`flat_elementwise` proves each such op against the original's on the flat tensor, and the tensor the
second Reshape alone reads is that Reshape's output. What the numeric checks need (``IntegerLayer``) is
the original's weight and parameters, never the rewritten ones.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import NodeProto

from converter.report import RewrittenLayer
from converter.verifier.certificate.constants import differs
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.facts import EMPTY, FLAT, Const, Fact, SameAs, Unknown, describe
from converter.verifier.certificate.layouts import NCHW, TOKENS, Layout, compose
from converter.verifier.certificate.nodes import Attributes, is_default, plain_attributes, plain_conv
from converter.verifier.certificate.ops.elementwise import ELEMENTWISE
from converter.verifier.certificate.original import Original
from converter.verifier.certificate.proofs import IntegerLayer, LayerProof


def sandwich_entry(orig: Original, node: NodeProto) -> NodeProto | None:
    """The node that quantizes a Tensordot's flat rows for the original integer op ``node``: a QuantizeLinear
    (QOperator) or DynamicQuantizeLinear of a Reshape's output, or None when ``node`` reads no such rows."""
    entry = orig.producers.get(node.input[0])
    if entry is None or not is_default(entry) or entry.op_type not in ("QuantizeLinear", "DynamicQuantizeLinear"):
        return None
    first = orig.producers.get(entry.input[0])
    if first is None or not is_default(first) or first.op_type != "Reshape":
        return None
    # Rows are rank 2; a Reshape to rank 3 is no Tensordot's (a token layer's head merge to [B, S, C]).
    return entry if orig.rank(first.output[0]) in (None, 2) else None


def sandwich_end(ctx: Context, flat: str) -> str:
    """The second Reshape's output when it alone reads the original's flat ``flat``, else ""."""
    readers = [n for n in ctx.orig.graph.node if flat in n.input]
    if len(readers) == 1 and is_default(readers[0]) and readers[0].op_type == "Reshape" and readers[0].input[0] == flat:
        return readers[0].output[0]
    return ""


def flat_elementwise(ctx: Context, node: NodeProto, ins: list[Fact], anchor: int) -> str | None:
    """An elementwise ``node`` whose input ``anchor`` is a Tensordot's flat tensor ``t`` seen as ``[N, H, W, K]`` in
    layout ``P`` (``SameAs(FLAT + t, P)``): a dynamic Tensordot's rescale, moved past the second Reshape.

    A token layer's flat tensor (its activation ``x`` has rank 3, ``[B, S, C]``) is seen as ``[B, S, K]`` the same way:
    its Conv writes it as ``[B, K, 1, S]`` (``TOKENS``), which its Squeeze makes rank 3 (:func:`_seen_rank`).

    Its counterpart is an original op of the same kind and attributes reading ``t`` in the same slot, whose other
    operands broadcast alike on ``[N*H*W, K]`` and on ``[N, H, W, K]``: a constant with one value per row or less
    (every dim but the last 1), or a computed tensor of rank 0 or 1 (the rescale's ``sa * sw``); read here in
    layout ``P`` as any elementwise operand is (``Context.broadcast``). Each output is then the original's, seen the
    same way, and the one the layer's second Reshape alone reads (rank 4) is that Reshape's output, in ``P``.
    None when proved (its outputs' facts set), else why not.
    """
    r = ins[anchor]
    assert isinstance(r, SameAs) and r.root.startswith(FLAT)
    flat = r.root[len(FLAT) :]
    if not is_default(node) or node.op_type not in ELEMENTWISE:
        return f"{node.op_type} reads a quantized layer's flat output in 4D, which only elementwise ops may"
    rank = _seen_rank(ctx, flat)
    if r.layout is not None and (len(r.layout) != rank or None in r.layout):
        return "it reads a quantized layer's flat output with unit axes"
    reasons = []
    for cand, slot in ctx.orig.consumers_by_root(flat):
        if slot != anchor or cand.op_type != node.op_type or not is_default(cand):
            continue
        if len(cand.input) != len(node.input) or len(cand.output) != len(node.output):
            reasons.append("a different number of inputs or outputs")
            continue
        if plain_attributes(cand, ctx.orig.opset) != plain_attributes(node, ctx.orig.opset):
            reasons.append("different attributes")
            continue
        problem = _flat_operands(ctx, ins, [ctx.orig.canon(n) for n in cand.input], SameAs(flat), r)
        if problem:
            reasons.append(problem)
            continue
        for j, out in enumerate(node.output):
            if not out:
                continue
            end = sandwich_end(ctx, cand.output[j])
            restored = ctx.orig.canon(end) if end and ctx.orig.rank(end) == rank else None
            if isinstance(restored, SameAs) and restored.root:
                try:
                    ctx.facts[out] = SameAs(restored.root, compose(restored.layout, r.layout))
                except ValueError:
                    ctx.unknown(node, f"the original {end!r} has another rank than the layer's flat output seen restored")
            else:
                ctx.facts[out] = SameAs(FLAT + cand.output[j], r.layout)
        return None
    return reasons[0] if reasons else f"no {node.op_type} of the original reads the flat {flat!r}"


def _seen_rank(ctx: Context, flat: str) -> int:
    """The rank a dynamic layer's flat tensor ``flat`` is seen at: 3 when the layer's activation (what its first
    Reshape flattens) has rank 3, a token layer's ``[B, S, C]``, else 4. The layer is found up the original's rescale
    from ``flat`` (a few elementwise ops to the integer op)."""
    todo, seen = [(flat, 0)], set()
    while todo:
        name, depth = todo.pop()
        node = ctx.orig.producers.get(name)
        if node is None or not is_default(node) or name in seen or depth > 4:
            continue
        seen.add(name)
        if node.op_type in ("MatMulInteger", "QLinearMatMul"):
            entry = sandwich_entry(ctx.orig, node)
            first = ctx.orig.producers.get(entry.input[0]) if entry is not None else None
            return 3 if first is not None and ctx.orig.rank(first.input[0]) == 3 else 4
        if node.op_type in ELEMENTWISE:
            todo += [(i, depth + 1) for i in node.input if i]
    return 4


def _flat_operands(ctx: Context, ins: list[Fact], orig_ins: list[Fact], flat: SameAs, seen: SameAs) -> str | None:
    """Why the operands ``ins`` are not the original's ``orig_ins`` with ``flat`` seen as ``seen``, or None."""
    for i, (mine, o) in enumerate(zip(ins, orig_ins, strict=True)):
        if o == flat:
            if mine != seen:
                return f"input {i} is {describe(mine)}, the original reads the flat output ({describe(seen)})"
            continue
        if isinstance(o, Unknown):
            return o.reason
        if isinstance(o, Const):
            value = np.asarray(o.get())
            if value.size != (value.shape[-1] if value.ndim else 1):
                return f"input {i} is a constant of shape {list(value.shape)}: not one value per row or less"
            if not isinstance(mine, Const):
                return f"input {i} is computed here but a constant in the original"
            problem = ctx.same_laid_out(mine, o, seen.layout)
            if problem:
                return problem
            continue
        if not isinstance(o, SameAs) or not o.root:
            return f"input {i} is {describe(o)} in the original"
        rank = len(o.layout) if o.layout is not None else ctx.orig.rank(o.root)
        if rank is None or rank > 1:
            return f"input {i} ({describe(o)}) is not known to have rank 0 or 1"
        if mine != ctx.broadcast(o, seen.layout):
            return f"input {i} is {describe(mine)}, the original reads {describe(o)} (layout {seen.layout})"
    return None


INTEGER_CONVS = frozenset({"QLinearConv", "ConvInteger"})


def prove(ctx: Context, conv: NodeProto, layer: RewrittenLayer) -> tuple[LayerProof, Layout]:
    """The proof of an integer layer's Conv (it reads the activation in NCHW, or a token sequence ``[B, S, C]`` as
    ``[B, C, 1, S]``: a unit axis in its input's layout); records what the numeric checks need in ``ctx.cert.originals``."""
    x = ctx.fact(conv.input[0])
    layout = TOKENS if isinstance(x, SameAs) and x.layout is not None and None in x.layout else NCHW
    return _prove(ctx, conv, layer, layout), layout


# Conv op -> (original op, the original's input slot for each conv slot except the weight, weight slot in each,
# the conv slots of the weight's scale and zero point)
_SHAPES: dict[str, tuple[str, dict[int, int], tuple[int, int], tuple[int, ...]]] = {
    # QLinearConv(x, xs, xz, w, ws, wz, ys, yz[, B]) <- QLinearMatMul(a, as, az, b, bs, bz, ys, yz)
    "QLinearConv": ("QLinearMatMul", {0: 0, 1: 1, 2: 2, 4: 4, 5: 5, 6: 6, 7: 7}, (3, 3), (4, 5)),
    # ConvInteger(x, w, xz, wz) <- MatMulInteger(a, b, az, bz)
    "ConvInteger": ("MatMulInteger", {0: 0, 2: 2, 3: 3}, (1, 1), (3,)),
}
# QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B) <- com.microsoft QGemm(a, as, az, b, bs, bz, C, ys, yz) with transA 0
# and alpha 1: the same sums, C the same int32 bias of scale as * bs added before the same requantization (QGemm's
# definition, and ONNX's of QLinearConv's B); transB=1 stores the weight [K, C]. The conv's B is compared with C.
_QGEMM = ({0: 0, 1: 1, 2: 2, 4: 4, 5: 5, 6: 7, 7: 8}, (3, 3), (4, 5))
_QGEMM_BIAS = (8, 6)  # (conv slot, QGemm slot)


def _original_core(ctx: Context, conv: NodeProto, layer: RewrittenLayer) -> tuple[NodeProto, tuple, bool] | str:
    """The original integer op producing the layer's output, its slots (as ``_SHAPES``) and whether its weight is
    stored ``[K, C]``; or why there is none."""
    orig_op, slots, weight, per_k = _SHAPES[conv.op_type]
    node = ctx.orig.producers.get(layer.output)
    if node is None or not node.output or node.output[0] != layer.anchor:
        return f"the original's {layer.output!r} is not the output of a {orig_op}"
    if conv.op_type == "QLinearConv" and node.op_type == "QGemm" and node.domain == "com.microsoft":
        a = Attributes(node)
        if a.get_int("transA", 0) or a.get_float("alpha", 1.0) != 1.0:
            return "the original QGemm transposes its activation or scales its sums (transA, alpha)"
        if len(node.input) < 9 or not node.input[7] or not node.input[8]:
            return "the original QGemm writes float (no output scale and zero point), the QLinearConv integers"
        return node, _QGEMM, bool(a.get_int("transB", 0))
    if not is_default(node) or node.op_type != orig_op:
        return f"the original's {layer.output!r} is not the output of a {orig_op}"
    return node, (slots, weight, per_k), False


def _prove(ctx: Context, conv: NodeProto, layer: RewrittenLayer, layout: Layout = NCHW) -> LayerProof:
    """The proof of one integer layer; records what the numeric checks need in ``ctx.cert.originals``."""
    found = _original_core(ctx, conv, layer)
    if isinstance(found, str):
        ctx.cert.originals[conv.name] = found
        return LayerProof("refuted", found)
    node, (slots, (w_conv, w_orig), per_k), stored_kc = found
    orig_op = node.op_type
    w_zero_slot = per_k[-1]
    if node.input[0] != layer.input:
        why = ctx.cert.originals[conv.name] = f"the {orig_op} reads {node.input[0]!r}, not {layer.input!r}"
        return LayerProof("refuted", why)
    if len(conv.output) != 1:
        return LayerProof("refuted", f"the {conv.op_type} has {len(conv.output)} outputs")
    problem = plain_conv(conv)
    if problem:
        return LayerProof("refuted", problem)
    limit = 8 if conv.op_type == "QLinearConv" else 4
    if orig_op != "QGemm" and len([i for i in conv.input]) > limit and any(conv.input[limit:]):
        return LayerProof("refuted", "the QLinearConv has a bias the original layer does not")

    weight = ctx.orig.canon(node.input[w_orig])
    if not isinstance(weight, Const):
        ctx.cert.originals[conv.name] = "the original weight is not a constant"
        return LayerProof("refuted", "the original weight is not a constant")
    w = np.asarray(weight.get())
    if w.ndim != 2 or w.dtype.kind not in "iu":
        return LayerProof("refuted", f"the original weight is {w.dtype} of shape {list(w.shape)}, not an integer [C, K]")
    c, k = w.shape[::-1] if stored_kc else w.shape
    expected_w = np.ascontiguousarray(w if stored_kc else w.T).reshape(k, c, 1, 1)

    x = ctx.fact(conv.input[0])
    want = ctx.orig.canon(layer.input)
    if isinstance(x, Unknown):
        return LayerProof("unproved", f"its input is not known: {x.reason}")
    if not isinstance(want, SameAs) or not isinstance(x, SameAs):
        return LayerProof("refuted", "its input is a constant")
    # A Tensordot's flat rows [N*H*W, C], read by the Conv as [N, H, W, C] in NCHW (its entry's fact, layers.sandwich).
    flat = sandwich_entry(ctx.orig, node) is not None
    first = ctx.orig.producers.get(node.input[0])
    if flat:
        want = SameAs(FLAT + layer.input)
    elif first is not None and is_default(first) and first.op_type == "Reshape" and ctx.orig.rank(first.output[0]) in (None, 2):
        want, flat = ctx.orig.canon(first.input[0]), True  # the quantized x's rows (a head merge to [B, S, C] is not)
    if not isinstance(want, SameAs):
        return LayerProof("refuted", f"the original activation {layer.input!r} is a constant")
    try:
        expected_in = SameAs(want.root, compose(want.layout, layout))
    except ValueError:
        return LayerProof("refuted", f"the original activation {layer.input!r} is not rank {4 if layout == NCHW else 3}")
    if x != expected_in and not _same_quantized(ctx, x, expected_in):
        form = "in NCHW" if layout == NCHW else "as [B, C, 1, S]"
        return LayerProof("refuted", f"its input is {describe(x)}, not {layer.input!r} {form} ({describe(expected_in)})")

    got_w = ctx.fact(conv.input[w_conv]) if len(conv.input) > w_conv else Unknown("no weight")
    if not isinstance(got_w, Const):
        return LayerProof("refuted", "the integer weight is not a constant")
    got_w_value = np.asarray(got_w.get())
    # A weight not bit for bit the original's may be shifted with its zero point (below).
    shifted = differs(got_w_value, expected_w, "integer weight") is not None

    params: dict[int, np.ndarray | None] = {}
    for conv_slot, orig_slot in slots.items():
        if conv_slot == 0:
            continue
        got = ctx.fact(conv.input[conv_slot]) if len(conv.input) > conv_slot else ctx.fact("")
        expected = ctx.orig.canon(node.input[orig_slot]) if len(node.input) > orig_slot else ctx.fact("")
        role = _ROLES[conv.op_type][conv_slot]
        if shifted and conv_slot == w_zero_slot:
            problem = _same_differences(got_w_value, got, expected_w, expected, k)
        else:
            problem = _same_param(got, expected, k if conv_slot in per_k else 0, role)
        if problem:
            return LayerProof("refuted" if not problem.startswith("unknown:") else "unproved", problem.removeprefix("unknown: "))
        params[conv_slot] = np.asarray(expected.get()) if isinstance(expected, Const) else None

    numbers = _numbers(conv.op_type, expected_w.reshape(k, c), params, k)
    if orig_op == "QGemm":
        bias = _same_bias(ctx, conv, node, k)
        if isinstance(bias, str):
            return LayerProof("refuted" if not bias.startswith("unknown:") else "unproved", bias.removeprefix("unknown: "))
        numbers = replace(numbers, bias=bias)
    if flat:
        numbers = replace(numbers, end=sandwich_end(ctx, layer.output) or FLAT + layer.output)
    ctx.cert.originals[conv.name] = numbers
    return LayerProof("proved")


def _same_bias(ctx: Context, conv: NodeProto, node: NodeProto, k: int) -> np.ndarray | None | str:
    """The QGemm's int32 bias as ``[K]`` (None when it has none) when the QLinearConv adds the same, else why not."""
    conv_slot, orig_slot = _QGEMM_BIAS
    mine = ctx.fact(conv.input[conv_slot]) if len(conv.input) > conv_slot and conv.input[conv_slot] else EMPTY
    theirs = ctx.orig.canon(node.input[orig_slot]) if len(node.input) > orig_slot and node.input[orig_slot] else EMPTY
    if mine == EMPTY and theirs == EMPTY:
        return None
    if isinstance(mine, Unknown):
        return f"unknown: its bias is not known: {mine.reason}"
    if not isinstance(mine, Const) or not isinstance(theirs, Const):
        return f"its bias is {describe(mine)}, the original QGemm's {describe(theirs)}; both must be the same constant"
    a, b = np.asarray(mine.get()), np.asarray(theirs.get())
    if a.dtype != np.int32 or b.dtype != np.int32 or a.size != k or b.size != k:
        return f"its bias is {a.dtype} of {a.size} elements, the original's {b.dtype} of {b.size}; expected int32 [{k}]"
    problem = differs(a.reshape(k), b.reshape(k), "bias")
    return problem if problem else b.reshape(k).astype(np.int64)


def _same_quantized(ctx: Context, a: SameAs, b: SameAs) -> bool:
    """Whether ``a`` and ``b`` are provably equal as two per-tensor QuantizeLinear of the original on the same
    values in two layouts: ``Transpose(Q(u), p) = Q(Transpose(u, p))`` when the scale and zero point are one
    element each, so two such Q with bit-identical parameters and attributes, on inputs equal after their
    perms, give equal tensors. (The QOperator quantizer writes ``Q(x)`` and ``Q(Transpose(x))`` with one
    scale; once the layout cleanup moves the Transpose, the Conv reads the first where the layer read the second.)
    """
    qa, qb = ctx.orig.producers.get(a.root), ctx.orig.producers.get(b.root)
    if qa is None or qb is None or any(q.op_type != "QuantizeLinear" or not is_default(q) for q in (qa, qb)):
        return False
    if sorted(_attr_bytes(qa)) != sorted(_attr_bytes(qb)) or len(qa.input) != len(qb.input):
        return False
    for slot in range(1, len(qa.input)):
        fa, fb = ctx.orig.canon(qa.input[slot]), ctx.orig.canon(qb.input[slot])
        if not isinstance(fa, Const) or not isinstance(fb, Const):
            if fa != fb:
                return False
            continue
        va, vb = np.asarray(fa.get()), np.asarray(fb.get())
        if va.size != 1 or differs(va, vb, "parameter"):
            return False
    ua, ub = ctx.orig.canon(qa.input[0]), ctx.orig.canon(qb.input[0])
    if not isinstance(ua, SameAs) or not isinstance(ub, SameAs) or ua.root != ub.root:
        return False
    try:
        return compose(ua.layout, a.layout) == compose(ub.layout, b.layout)
    except ValueError:
        return False


def _attr_bytes(node: NodeProto) -> list[bytes]:
    return [a.SerializeToString() for a in node.attribute]


_ROLES = {
    "QLinearConv": {1: "activation scale", 2: "activation zero point", 4: "weight scale", 5: "weight zero point",
                    6: "output scale", 7: "output zero point"},
    "ConvInteger": {2: "activation zero point", 3: "weight zero point"},
}  # fmt: skip


def _same_param(got: Fact, expected: Fact, k: int, role: str) -> str | None:
    """Why the conv's parameter is not the original's (``k`` > 0: compared as [K] vectors), or None."""
    if isinstance(got, Unknown):
        return f"unknown: its {role} is not known: {got.reason}"
    if isinstance(expected, Const) and isinstance(got, Const):
        a, b = np.asarray(got.get()), np.asarray(expected.get())
        if k:
            if a.size not in (1, k) or b.size not in (1, k):
                return f"the {role} has {a.size} elements, the original's {b.size}; expected one or {k}"
            a, b = np.broadcast_to(a.reshape(-1), (k,)), np.broadcast_to(b.reshape(-1), (k,))
        return differs(a, b, role)
    if got == expected:  # the same computed tensor (DynamicQuantizeLinear's zero point), or both absent
        return None
    return f"its {role} is {describe(got)}, the original's is {describe(expected)}"


def _zero_points(f: Fact, dtype: np.dtype, k: int, whose: str) -> np.ndarray | str:
    """A weight zero point as [K] int32 values (absent: 0), or why it cannot be read so (``unknown:`` first when
    it is not known)."""
    if isinstance(f, Unknown):
        return f"unknown: {whose} weight zero point is not known: {f.reason}"
    if f == EMPTY:
        return np.zeros(k, np.int32)
    if not isinstance(f, Const):
        return f"{whose} weight zero point is {describe(f)}, not a constant; a shifted weight needs one"
    value = np.asarray(f.get())
    if value.dtype != dtype:
        return f"{whose} weight zero point is {value.dtype}, the weight {dtype}"
    if value.size not in (1, k):
        return f"{whose} weight zero point has {value.size} elements; expected one or {k}"
    return np.broadcast_to(value.reshape(-1).astype(np.int32), (k,))


def _same_differences(got_w: np.ndarray, got: Fact, expected_w: np.ndarray, expected: Fact, k: int) -> str | None:
    """Why the conv's weight and zero point do not have, element for element, the original's differences
    ``w - zw[k]`` (computed in int32), or None (see the module docstring)."""
    if got_w.dtype.kind not in "iu" or got_w.shape != expected_w.shape:
        return differs(got_w, expected_w, "integer weight")
    mine = _zero_points(got, got_w.dtype, k, "its")
    theirs = _zero_points(expected, expected_w.dtype, k, "the original's")
    for found in (mine, theirs):
        if isinstance(found, str):
            return found
    assert isinstance(mine, np.ndarray) and isinstance(theirs, np.ndarray)
    a = got_w.astype(np.int32) - mine.reshape(k, 1, 1, 1)
    b = expected_w.astype(np.int32) - theirs.reshape(k, 1, 1, 1)
    n = int(np.count_nonzero(a != b))
    if n:
        return (
            f"the integer weight is not the original's (a {got_w.dtype} weight with its zero point): w - zw differs "
            f"from the original's in {n} of {a.size} elements"
        )
    return None


def _numbers(op: str, w_kc: np.ndarray, params: dict[int, np.ndarray | None], k: int) -> IntegerLayer:
    def vec(v: np.ndarray | None) -> np.ndarray:
        return np.zeros(k, np.int64) if v is None else np.broadcast_to(np.asarray(v).reshape(-1), (k,)).astype(np.int64)

    if op == "QLinearConv":
        out_zero = params[7]
        return IntegerLayer(
            w_kc,
            vec(params[5]),
            x_zero=params[2],
            x_scale=params[1],
            w_scale=np.broadcast_to(np.asarray(params[4]).reshape(-1), (k,)),
            y_scale=params[6],
            y_zero=out_zero,
        )
    return IntegerLayer(w_kc, vec(params[3]), x_zero=params[2])
