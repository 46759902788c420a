"""What a proof rule is, what it receives, and the two ways an op read in another layout is checked.

A rewritten node either has a proof of its own (a Transpose composes its perm onto its input's fact) or a
*counterpart*: a node of the original with the same op that it equals, reading the same original tensors.
When it reads them as they are, the walk checks that alone (same attributes, same inputs). When it reads
its first known input (the *anchor*) as the original's under a layout ``P`` other than the identity (a
Transpose the cleanup moved through it), only the op's proof rule can say whether it is still its
counterpart, and in what layout ``Q`` its outputs then are. A :class:`ProofRule` has up to three phases:

- ``prove(ctx, node) -> bool``: a proof needing no counterpart, tried first; True when it set the
  facts of the node's outputs (``ctx.facts``), False to let the walk look for a counterpart;
- ``relaid(Relaid) -> str | None``: the node read in layout ``P`` against one candidate counterpart; None when
  it is that candidate (the outputs' facts set), else why not (the walk tries the next candidate);
- ``fallback(ctx, node, ins) -> bool``: tried when no candidate explains the node; True when it set the facts.

A fourth, ``attributes``, says when a node read as its counterpart reads its inputs has its attributes, for an
op whose attributes can be written in several ways that compute the same (a Conv's ``dilations`` on a 1x1
kernel).

Two builders give ``relaid`` for the two op families that can be read in another layout:

- :func:`per_element`: the op is a function of each position alone (after broadcasting), so
  ``Op(Transpose(a, P), Transpose(b, P)) == Transpose(Op(a, b), P)``: the same attributes, every operand the
  original's laid out by ``P`` (a lower-rank one broadcast first, a rank-0 one as it is), the outputs in ``P``.
  ``per_tensor`` inputs (scales, zero points) must be one value each, bit for bit the original's;
  ``unpermuted`` outputs (a whole tensor's scale) are the original's as they are.
- :func:`axis_op`: the op's axes are numbers: the ``data`` inputs are the original's in exactly ``P``, the
  ``params`` inputs (axes, pads, sizes) integer constants handed to the rule's ``layout`` function with the
  attributes, every other input the original's as it is; ``layout(AxisArgs)`` says ``Q`` or why not. A
  ``computed`` param (a Slice's starts, ends and steps, which no layout changes) may also be a tensor computed at
  run time, when it is the very tensor the original reads there: the function then sees :data:`SAME` on both
  sides (TorchScript's ``chunk`` bounds from a dynamic export's ``Shape``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.constants import differs
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.facts import EMPTY, Const, Fact, SameAs, Unknown, describe
from converter.verifier.certificate.layouts import Layout, compose, norm_axis
from converter.verifier.certificate.nodes import Attributes, graphs_of, plain_attributes

Prove = Callable[[Context, NodeProto], bool]
Fallback = Callable[[Context, NodeProto, list[Fact]], bool]
SameAttributes = Callable[[Context, NodeProto, NodeProto], bool]


@dataclass(frozen=True)
class Relaid:
    """A rewritten ``node`` that reads its anchor input as the original's under ``layout`` (``P``, not the
    identity), and ``cand``, an original node of the same op and arity reading the same root there."""

    ctx: Context
    node: NodeProto
    cand: NodeProto
    layout: tuple[int | None, ...]
    ins: list[Fact]  # the facts of ``node``'s inputs (none Unknown)
    orig_ins: list[Fact]  # the canonical facts of ``cand``'s inputs


Check = Callable[[Relaid], str | None]


@dataclass(frozen=True)
class ProofRule:
    """What the certificate accepts for one op, in up to three phases (see the module docstring).

    ``starts``: the rewritten ops whose nodes ``prove`` is tried on, when those are not the op itself (an op
    the cleanup writes out as others: LayerNormalization's body starts at a Cast or a ReduceMean).
    ``attributes(ctx, node, cand)``: whether a node read as its counterpart reads its inputs has the counterpart's
    attributes, where the op has laws for that (a dilation on a 1x1 kernel); None: the same attributes, schema
    defaults aside.
    """

    relaid: Check | None = None
    prove: Prove | None = None
    fallback: Fallback | None = None
    starts: tuple[str, ...] = ()
    attributes: SameAttributes | None = None


def either(*fallbacks: Fallback) -> Fallback:
    """A fallback that tries ``fallbacks`` in turn (an op with two ways to be proved without a counterpart).

    Args:
        fallbacks: the fallbacks, first tried first; the first that sets the node's facts ends it.
    """

    def fallback(ctx: Context, node: NodeProto, ins: list[Fact]) -> bool:
        return any(f(ctx, node, ins) for f in fallbacks)

    return fallback


# --- what every counterpart check shares -------------------------------------------------------


def same_operands(
    ctx: Context, ins: Sequence[Fact], orig_ins: Sequence[Fact], layout: Layout, skip: Sequence[int] = ()
) -> str | None:
    """Why the operands ``ins`` are not the original's ``orig_ins`` read per element in ``layout``, or None:
    a constant the original's laid out (``ctx.same_laid_out``), a tensor the original's broadcast and laid out
    (``ctx.broadcast``). ``skip``: inputs compared elsewhere."""
    for i, (r, o) in enumerate(zip(ins, orig_ins, strict=True)):
        if i in skip:
            continue
        if isinstance(o, Unknown):
            return o.reason
        if isinstance(r, Const):
            if not isinstance(o, Const):
                return f"input {i} is a constant here but computed in the original"
            problem = ctx.same_laid_out(r, o, layout)
            if problem and layout is not None and np.ndim(r.get()) < len(layout):
                # Broadcasting puts unit axes in front: a [K, 1, 1] bias on [N, K, H, W] is [1, K, 1, 1].
                full = _in_front(r, len(layout))
                problem = problem if ctx.same_laid_out(full, o, layout) else None
            if problem:
                return problem
            continue
        if isinstance(o, Const) or not isinstance(r, SameAs):
            return f"input {i} is computed here but a constant in the original"
        try:
            expected = ctx.broadcast(o, layout)
        except ValueError:
            return f"input {i} has another rank"
        if r != expected and not (r.root != expected.root and ctx.views.same(r, expected)):
            return f"input {i} is {describe(r)}, the original reads {describe(o)} (layout {layout})"
    return None


def set_outputs(ctx: Context, node: NodeProto, cand: NodeProto, layout: Layout, unpermuted: Sequence[int] = ()) -> None:
    """Each output of ``node`` is the original's output of ``cand`` in ``layout`` (``unpermuted`` ones: as they
    are). A constant output read in another layout is not followed."""
    for j, out in enumerate(node.output):
        if out:
            o = ctx.orig.canon(cand.output[j])
            if isinstance(o, SameAs):
                here = None if j in unpermuted else layout
                ctx.facts[out] = SameAs(o.root, compose(o.layout, here)) if o.root else EMPTY
            else:
                ctx.facts[out] = o if layout is None else Unknown("a constant output read in another layout")


# --- ops that work per element ------------------------------------------------------------------


def per_element(per_tensor: tuple[int, ...] = (), unpermuted: tuple[int, ...] = ()) -> Check:
    """The check of an op that is a function of each position alone (see the module docstring)."""

    def check(a: Relaid) -> str | None:
        if plain_attributes(a.cand, a.ctx.orig.opset) != plain_attributes(a.node, a.ctx.orig.opset):
            return "different attributes"
        problem = _one_value_each(a, per_tensor) or same_operands(a.ctx, a.ins, a.orig_ins, a.layout, per_tensor)
        if problem:
            return problem
        if graphs_of(a.node):
            return "a subgraph read in another layout"
        set_outputs(a.ctx, a.node, a.cand, a.layout, unpermuted)
        return None

    return check


def _one_value_each(a: Relaid, slots: Sequence[int]) -> str | None:
    """Why the scale and zero point inputs ``slots`` are not each one constant value, bit for bit the original's."""
    op = a.node.op_type
    for i in slots:
        r = a.ins[i] if i < len(a.ins) else EMPTY  # a trailing optional input left off
        o = a.orig_ins[i] if i < len(a.orig_ins) else EMPTY
        if r == EMPTY and o == EMPTY:
            continue  # an absent zero point on both sides
        if not isinstance(r, Const) or not isinstance(o, Const):
            return f"the {op}'s input {i} (a scale or zero point) is not a constant on both sides"
        got, want = np.asarray(r.get()), np.asarray(o.get())
        if got.size != 1 or want.size != 1:
            return f"the {op}'s input {i} has {want.size} values: a parameter along an axis in another layout"
        problem = differs(got, want, f"{op}'s input {i}")
        if problem:
            return problem
    return None


# --- ops with axes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Computed:
    """A param computed at run time that is the same tensor on both sides (all instances compare equal)."""


SAME = Computed()
Param = list[int] | Computed | None


@dataclass(frozen=True)
class AxisArgs:
    """What an axis op's ``layout`` function reads: the rewritten ``node`` in layout ``perm`` (axis ``a`` of the
    node is the original's axis ``perm[a]``; a None entry is an added unit axis), its candidate ``cand``, the
    integer ``params`` inputs of both (None: absent), the facts of ``node``'s inputs and the original's opset."""

    node: NodeProto
    cand: NodeProto
    perm: tuple[int | None, ...]
    ins: list[Fact]
    params: dict[int, Param]
    orig_params: dict[int, Param]
    opset: int

    @cached_property
    def attrs(self) -> Attributes:
        return Attributes(self.node, self.opset)

    @cached_property
    def orig_attrs(self) -> Attributes:
        return Attributes(self.cand, self.opset)

    @property
    def rank(self) -> int:
        """The node's rank (the layout's length)."""
        return len(self.perm)

    @property
    def orig_rank(self) -> int:
        """The original's rank: added unit axes are not its axes."""
        return sum(p is not None for p in self.perm)

    @property
    def transpose(self) -> tuple[int, ...]:
        """The layout as a plain permutation; ValueError when it adds unit axes."""
        perm = tuple(p for p in self.perm if p is not None)
        if len(perm) != len(self.perm):
            raise ValueError("the layout adds unit axes")
        return perm

    def same_attributes(self, *names: str) -> bool:
        """Whether the node's attributes are the candidate's, ``names`` aside."""
        return self.attrs.same_except(self.orig_attrs, *names)

    def maps(self, axes: list[int], orig_axes: list[int], in_order: bool) -> bool:
        """Whether the node's ``axes`` are the original's ``orig_axes`` seen through the layout (in that order,
        or as a set); False when one is out of range, repeated, or an added unit axis."""
        rn = [norm_axis(a, self.rank) for a in axes]
        on = [norm_axis(a, self.orig_rank) for a in orig_axes]
        if len(rn) != len(on) or len(set(rn)) != len(rn):
            return False
        mapped = []
        for a in rn:
            p = None if a is None else self.perm[a]
            if p is None:
                return False  # out of range, or an added unit axis, which is none of the original's
            mapped.append(p)
        if None in on:
            return False
        return mapped == on if in_order else sorted(mapped) == sorted(o for o in on if o is not None)

    def axes(self) -> tuple[list[int] | None, list[int] | None]:
        """The node's and the candidate's ``axes``: the attribute, else the input 1 (a constant: axes are never computed)."""
        mine, theirs = self.attrs.get_ints("axes"), self.orig_attrs.get_ints("axes")
        return (self.ints(1) if mine is None else mine), (self.orig_ints(1) if theirs is None else theirs)

    def ints(self, i: int) -> list[int] | None:
        """The node's constant param ``i``; ValueError when it is computed at run time."""
        return _constant(self.params.get(i))

    def orig_ints(self, i: int) -> list[int] | None:
        """The candidate's constant param ``i``; ValueError when it is computed at run time."""
        return _constant(self.orig_params.get(i))


class ComputedParam(ValueError):
    """A rule asked for a constant param that is computed at run time."""


def _constant(p: Param) -> list[int] | None:
    if isinstance(p, Computed):
        raise ComputedParam("a param computed at run time")
    return p


AxisLayout = Callable[[AxisArgs], Layout | str]
ALL: Literal["all"] = "all"


def axis_op(
    layout: AxisLayout,
    data: tuple[int, ...] | Literal["all"] = (0,),
    params: tuple[int, ...] = (),
    computed: tuple[int, ...] = (),
) -> Check:
    """The check of an op whose axes are numbers (see the module docstring). ``data``: the inputs laid out like
    the anchor (ALL: every input not in ``params``); ``params``: the integer inputs ``layout`` reads; ``computed``:
    those of them that may be a run-time tensor, the very one the original reads (``layout`` sees :data:`SAME`)."""

    def check(a: Relaid) -> str | None:
        node, cand, ins, orig_ins, perm = a.node, a.cand, a.ins, a.orig_ins, a.layout
        slots = range(len(node.input))
        data_slots = [i for i in slots if (i not in params if data == ALL else i in data)]
        for i in data_slots:
            r, o = ins[i], orig_ins[i]
            if isinstance(o, Unknown):
                return o.reason
            if isinstance(r, Const) and isinstance(o, Const):
                problem = a.ctx.same_laid_out(r, o, perm)
                if problem:
                    return problem
            elif not isinstance(r, SameAs) or not isinstance(o, SameAs):
                return f"input {i} is a constant on one side only"
            else:
                try:
                    expected = SameAs(o.root, compose(o.layout, perm))
                except ValueError:
                    return f"input {i} has another rank"
                if r != expected and not (r.root != expected.root and a.ctx.views.same(r, expected)):
                    return f"input {i} is {describe(r)}, the original reads {describe(o)} (layout {perm})"
        r_params: dict[int, Param] = {}
        o_params: dict[int, Param] = {}
        for i in params:
            if i in computed and i < len(node.input) and i < len(cand.input) and node.input[i] and cand.input[i]:
                r, o = ins[i], orig_ins[i]
                if isinstance(r, SameAs) and r.root and r == o:
                    r_params[i] = o_params[i] = SAME
                    continue
            for facts, into, n in ((ins, r_params, node), (orig_ins, o_params, cand)):
                if i >= len(n.input) or not n.input[i]:
                    into[i] = None
                    continue
                f = facts[i]
                if not isinstance(f, Const):
                    return f"input {i} of the {node.op_type} is not a constant"
                v = np.asarray(f.get())
                if v.dtype.kind not in "iu":
                    return f"input {i} of the {node.op_type} is not integer"
                into[i] = [int(x) for x in v.reshape(-1)]
        for i in slots:  # inputs neither laid out nor axes (Pad's value, Gather's indices) must be the same
            if i in data_slots or i in params:
                continue
            r, o = ins[i], orig_ins[i]
            if isinstance(r, Const) and isinstance(o, Const):
                if differs(r.get(), o.get(), "operand"):
                    return f"input {i} differs"
            elif r != o:
                return f"input {i} differs"
        args = AxisArgs(node, cand, perm, ins, r_params, o_params, a.ctx.orig.opset)
        try:
            found = layout(args)
        except ComputedParam:
            found = f"the {node.op_type} reads a param computed at run time where its rule needs a constant"
        except (TypeError, ValueError):  # an added unit axis where the rule needs one of the original's
            found = f"the {node.op_type} is read in a layout with added unit axes this checker does not follow"
        if isinstance(found, str):
            return found
        for j, out in enumerate(node.output):
            if not out:
                continue
            o = a.ctx.orig.canon(cand.output[j])
            if not isinstance(o, SameAs) or not o.root:
                return "its original output is not a tensor"
            try:
                a.ctx.facts[out] = SameAs(o.root, compose(o.layout, found))
            except ValueError:
                return "output rank mismatch"
        return None

    return check


def _in_front(c: Const, rank: int) -> Const:
    """The constant ``c`` with unit axes in front up to ``rank``: what an elementwise op broadcasts it to."""
    value = c.get

    def padded() -> np.ndarray:
        v = np.asarray(value())
        return v.reshape((1,) * (rank - v.ndim) + v.shape)

    return Const((c.key[0], f"{c.key[1]}\0rank{rank}"), padded)
