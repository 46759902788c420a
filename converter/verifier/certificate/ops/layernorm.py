"""A LayerNormalization written out over other axes (what the cleanup makes of one to keep a block in NCHW).

The body is the op's definition in the ONNX spec: ``[Cast to the stash type]``, ``mean = ReduceMean(x, A)``,
``d = Sub(x, mean)``, ``var = ReduceMean(Mul(d, d), A)``, ``n = Div(d, Sqrt(Add(var, eps)))``, ``[Cast back]``,
``Mul(n, scale)``, ``[Add(., bias)]`` (the Adds and the last Mul with their operands in either order), every
intermediate read only inside it. Read from ``x`` = the original's input ``X`` in layout ``P``, it is
``LayerNormalization(X, scale, bias, axis=k)`` in ``P`` when

- ``A`` is the axes ``a`` with ``P[a] >= k`` (the normalized axes, wherever ``P`` shows them), keepdims 1;
- ``eps`` is the original's epsilon in the stash type, the Casts (both or neither) go to the stash type and
  back to the scale's type (without them, the scale's type is the stash type);
- ``scale`` and ``bias`` are the original's laid out by ``P`` (broadcast from the trailing axes);
- the original's other outputs (mean, inverse deviation) are read by nothing.

The proof starts at the body's first node (a Cast or a ReduceMean) and accounts for the whole body: the
walk skips the rest, whose tensors are inside the op (not followed further). The body is read with each pair of
involutions another tool may have put on one of its edges seen through (``Neg(Neg(t))`` is ``t`` bit for bit,
:func:`canonical.repeated`; the inner one read by the outer alone): its readers read ``t`` (:class:`_Pairs`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import NodeProto, TensorProto

from converter.verifier.certificate.canonical import INVOLUTIONS, repeated
from converter.verifier.certificate.constants import differs
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.facts import EMPTY, Const, SameAs, Unknown
from converter.verifier.certificate.layouts import compose, norm_axis, relative
from converter.verifier.certificate.nodes import Attributes, is_default


@dataclass(frozen=True)
class _Body:
    """The nodes of one written-out body, in order; ``cast`` and ``back`` both or neither."""

    cast: NodeProto | None
    mean: NodeProto
    sub: NodeProto
    square: NodeProto
    var: NodeProto
    add_eps: NodeProto
    sqrt: NodeProto
    div: NodeProto
    back: NodeProto | None
    mul: NodeProto

    @property
    def nodes(self) -> list[NodeProto]:
        found = [self.cast, self.mean, self.sub, self.square, self.var, self.add_eps, self.sqrt, self.div, self.back, self.mul]
        return [n for n in found if n is not None]


def written_out(ctx: Context, first: NodeProto) -> bool:
    """Whether ``first`` starts the body of an original LayerNormalization read in another layout (the facts
    of the body's tensors set, the rest of it skipped)."""
    if first.op_type not in ("Cast", "ReduceMean") or not is_default(first):
        return False
    found = _body(ctx, first)
    if found is None:
        return False
    data, body = found
    r = ctx.fact(data)
    if not isinstance(r, SameAs) or not r.root:
        return False
    for cand, slot in ctx.orig.consumers_by_root(r.root):
        if slot != 0 or cand.op_type != "LayerNormalization" or not is_default(cand):
            continue
        proved = _counterpart(ctx, cand, r, body)
        if proved is not None:
            for node in proved[1:]:
                ctx.skip(node)
            return True
    return False


class _Pairs:
    """The rewritten graph read with every pair of involutions ``f(f(t))`` seen through (the inner ``f`` read by the
    outer alone, the outer's output no graph output): ``resolve`` names ``t`` for the outer's output, ``readers``
    lists each tensor's readers with the pairs' readers reading ``t`` and the pairs themselves left out."""

    def __init__(self, ctx: Context) -> None:
        direct = ctx.readers()
        outputs = ctx.outputs()
        self.source: dict[str, str] = {}
        pairs: set[int] = set()
        for node in ctx.nodes:
            same = repeated(node, ctx.producer) if node.op_type in INVOLUTIONS else None
            inner = ctx.producer(node.input[0]) if same is not None else None
            if same is None or inner is None or node.output[0] in outputs or inner.output[0] in outputs:
                continue
            if [id(r) for r in direct.get(inner.output[0], [])] != [id(node)]:
                continue
            self.source[node.output[0]] = same
            pairs.update((id(node), id(inner)))
        self.readers: dict[str, list[NodeProto]] = dict(direct) if not pairs else {}
        seen: dict[str, set[int]] = {}
        for name, found in direct.items() if pairs else ():
            at = self.resolve(name)
            into, ids = self.readers.setdefault(at, []), seen.setdefault(at, set())
            for n in found:
                if id(n) not in pairs and id(n) not in ids:  # each reader once (it may read t and the pair's output)
                    into.append(n)
                    ids.add(id(n))

    def resolve(self, name: str) -> str:
        """The tensor ``name`` is, pairs seen through."""
        for _ in range(len(self.source) + 1):
            if name not in self.source:
                break
            name = self.source[name]
        return name

    def inputs(self, node: NodeProto) -> list[str]:
        """``node``'s inputs, pairs seen through."""
        return [self.resolve(i) for i in node.input]


_PAIRS: weakref.WeakKeyDictionary[Context, _Pairs] = weakref.WeakKeyDictionary()


def _pairs(ctx: Context) -> _Pairs:
    """The walk's :class:`_Pairs`, made once per walk (the rewritten graph does not change while it is walked)."""
    found = _PAIRS.get(ctx)
    if found is None:
        found = _PAIRS[ctx] = _Pairs(ctx)
    return found


def _body(ctx: Context, first: NodeProto) -> tuple[str, _Body] | None:
    """The tensor the body normalizes and the body's nodes, when ``first`` starts one; else None."""
    pairs = _pairs(ctx)
    readers, ins = pairs.readers, pairs.inputs
    outputs = ctx.outputs()

    def sole(name: str, op: str) -> NodeProto | None:
        found = readers.get(name, [])
        if len(found) != 1 or name in outputs or not is_default(found[0]) or found[0].op_type != op:
            return None
        return found[0]

    cast: NodeProto | None = None
    if first.op_type == "Cast":
        cast, data, x_in = first, pairs.resolve(first.input[0]), first.output[0]
        found = readers.get(x_in, [])
        mean = next((n for n in found if n.op_type == "ReduceMean" and is_default(n)), None)
        if mean is None or len(found) != 2 or x_in in outputs:
            return None
    else:
        data = x_in = pairs.resolve(first.input[0])
        mean = first
    sub = sole(mean.output[0], "Sub")
    if sub is None or ins(sub) != [x_in, mean.output[0]] or (cast is not None and sub not in readers.get(x_in, [])):
        return None
    d = sub.output[0]
    d_readers = readers.get(d, [])
    square = next((n for n in d_readers if n.op_type == "Mul" and ins(n) == [d, d]), None)
    div = next((n for n in d_readers if n.op_type == "Div" and ins(n)[0] == d), None)
    if square is None or div is None or len(d_readers) != 2 or d in outputs:
        return None
    var = sole(square.output[0], "ReduceMean")
    add_eps = sole(var.output[0], "Add") if var is not None else None
    sqrt = sole(add_eps.output[0], "Sqrt") if add_eps is not None else None
    if (
        var is None
        or add_eps is None
        or sqrt is None
        or sole(sqrt.output[0], "Div") is not div
        or _other(add_eps, var.output[0], pairs) is None
    ):
        return None
    n = div.output[0]
    back = None
    if cast is not None:
        back = sole(n, "Cast")
        if back is None:
            return None
        n = back.output[0]
    mul = sole(n, "Mul")
    if mul is None or _other(mul, n, pairs) is None:
        return None
    return data, _Body(cast, mean, sub, square, var, add_eps, sqrt, div, back, mul)


def _other(node: NodeProto, name: str, pairs: _Pairs) -> str | None:
    """The other operand of a binary Add or Mul that reads ``name`` in either slot (they commute), or None."""
    found = pairs.inputs(node)
    if len(found) != 2 or name not in found or found[0] == found[1]:
        return None
    return found[1] if found[0] == name else found[0]


def _reduced_axes(ctx: Context, reduce: NodeProto, rank: int) -> list[int] | None:
    """A ReduceMean's axes normalized and sorted, when it keeps the dims; else None."""
    attrs = Attributes(reduce)
    got = attrs.get_ints("axes")
    if got is None and len(reduce.input) > 1:
        f = ctx.fact(reduce.input[1])
        if isinstance(f, Const):
            got = [int(a) for a in np.asarray(f.get()).reshape(-1)]
    if got is None or attrs.get_int("keepdims", 1) != 1:
        return None
    axes = [norm_axis(a, rank) for a in got]
    return sorted(a for a in axes if a is not None) if None not in axes else None


def _counterpart(ctx: Context, cand: NodeProto, r: SameAs, body: _Body) -> list[NodeProto] | None:
    """The body's nodes (its bias Add included) when it is ``cand`` read in layout ``P``, its output's fact set."""
    o = ctx.orig.canon(cand.input[0])
    if not isinstance(o, SameAs) or o.root != r.root or any(out and ctx.orig.reads(out) for out in cand.output[1:]):
        return None
    try:
        perm = relative(o.layout, r.layout)
    except ValueError:
        return None
    if perm is None:
        return None
    rank, attrs = len(perm), Attributes(cand)
    k = norm_axis(attrs.get_int("axis", -1), sum(p is not None for p in perm))
    if k is None:
        return None
    axes = sorted(a for a, p in enumerate(perm) if p is not None and p >= k)
    if any(_reduced_axes(ctx, reduce, rank) != axes for reduce in (body.mean, body.var)):
        return None
    stash = attrs.get_int("stash_type", TensorProto.FLOAT)
    stash_np = onnx.helper.tensor_dtype_to_np_dtype(stash)
    scale_o = ctx.orig.canon(cand.input[1]) if len(cand.input) > 1 else EMPTY
    pairs = _pairs(ctx)
    scale_r = ctx.fact(_other(body.mul, body.div.output[0] if body.back is None else body.back.output[0], pairs) or "")
    if not isinstance(scale_o, Const) or not isinstance(scale_r, Const):
        return None
    dtype = np.asarray(scale_o.get()).dtype
    if body.cast is not None and body.back is not None:
        cast_to, back_to = Attributes(body.cast).get_int("to", 0), Attributes(body.back).get_int("to", 0)
        if cast_to != stash or back_to != onnx.helper.np_dtype_to_tensor_dtype(dtype):
            return None
    elif dtype != stash_np:
        return None
    eps = ctx.fact(_other(body.add_eps, body.var.output[0], pairs) or "")
    epsilon = np.array(attrs.get_float("epsilon", 1e-5), dtype=stash_np)
    if not isinstance(eps, Const) or differs(np.asarray(eps.get()).reshape(()), epsilon, "epsilon"):
        return None
    if ctx.same_laid_out(scale_r, scale_o, perm):
        return None
    group = body.nodes
    out = body.mul.output[0]
    if len(cand.input) > 2 and cand.input[2]:
        readers = pairs.readers.get(out, [])
        add = readers[0] if readers else None
        if add is None or len(readers) != 1 or out in ctx.outputs() or add.op_type != "Add" or _other(add, out, pairs) is None:
            return None
        bias_o, bias_r = ctx.orig.canon(cand.input[2]), ctx.fact(_other(add, out, pairs) or "")
        if not isinstance(bias_o, Const) or not isinstance(bias_r, Const) or ctx.same_laid_out(bias_r, bias_o, perm):
            return None
        group = [*group, add]
        out = add.output[0]
    result = ctx.orig.canon(cand.output[0])
    if not isinstance(result, SameAs) or not result.root:
        return None
    inside = Unknown(f"a tensor inside the written-out LayerNormalization {cand.name or cand.output[0]!r}")
    for node in group:
        for name in node.output:
            ctx.facts[name] = inside
    ctx.facts[out] = SameAs(result.root, compose(result.layout, perm))
    return group
