"""The facts of nodes that only re-lay a tensor, computed by one function for both graphs.

The original's canonical forms (:mod:`.original`) and the rewritten graph's layout rules
(:mod:`.ops.layout_ops`) call the same functions here, so that an original node and the rewritten node
that stands for it get the same fact:

- ``Unsqueeze(x, axes)`` is ``x`` with unit axes added (``layouts.unsqueezed``); ``Squeeze(x, axes)`` of only
  such added axes is ``x`` without them (``layouts.squeezed``); axes an attribute or a constant input;
- ``Reshape(x, [0, 0, c])`` (``allowzero`` 0, ``c`` > 0) is ``x`` with every axis after the first two merged
  into one: a root of its own (``facts.merged``); of a rank-3 ``x``, ``x`` itself. Onnxruntime refuses the
  Reshape unless ``c`` is the product of the merged dims;
- an op applied to its own output (:func:`repeated`): an involution twice (``Neg(Neg(x))``, ``Not(Not(x))``) is
  ``x``, an idempotent op twice (``Relu(Relu(x))``) is its first application. Exact, element by element, for
  every value: negation flips the sign bit (integers wrap, so ``-(-INT_MIN)`` is ``INT_MIN`` again), and the
  idempotent ops map every value to one they leave as it is (Relu's, Abs's, Floor's ... outputs included NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.facts import Const, Fact, SameAs, const_ints, merged
from converter.verifier.certificate.layouts import squeezed, unsqueezed
from converter.verifier.certificate.nodes import Attributes


def merge_fact(node: NodeProto, x: Fact, target: Fact, rank: Callable[[str], int | None]) -> SameAs | None:
    """``Reshape(x, [0, 0, c])`` of a known tensor ``x``: ``x`` with its trailing axes merged (``x`` itself when
    it has rank 3: nothing to merge), else None. ``rank``: an original root's rank (None: not known)."""
    if not isinstance(x, SameAs) or not x.root or not isinstance(target, Const) or Attributes(node).get_int("allowzero", 0):
        return None
    t = np.asarray(target.get())
    if t.dtype.kind not in "iu" or t.shape != (3,) or t[0] != 0 or t[1] != 0 or t[2] <= 0:
        return None
    if (len(x.layout) if x.layout is not None else rank(x.root)) == 3:
        return x  # onnxruntime refuses the Reshape unless c is x's last dim: x, unchanged
    return SameAs(merged(x))


def unit_axes(node: NodeProto, inner: Fact, fact_of: Callable[[str], Fact], rank: Callable[[str], int | None]) -> SameAs | None:
    """An Unsqueeze's output as its input with unit axes added, a Squeeze's of only added unit axes as its
    input without them; None when the node is not that (axes not constant, a squeezed axis of the root)."""
    if not isinstance(inner, SameAs) or not inner.root:
        return None
    try:
        axes = Attributes(node).get_ints("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = const_ints(fact_of(node.input[1]))
        if not axes:
            return None
        if node.op_type == "Unsqueeze":
            return SameAs(inner.root, unsqueezed(inner.layout, rank(inner.root) if inner.layout is None else None, axes))
        return SameAs(inner.root, squeezed(inner.layout, axes))
    except (TypeError, ValueError):  # axes of another type (a malformed node), or not unit axes
        return None


# Ops with no attributes that undo themselves (f(f(x)) == x), and that are done once applied (f(f(x)) == f(x)).
INVOLUTIONS = frozenset({"Neg", "Not", "BitwiseNot"})
IDEMPOTENT = frozenset({"Relu", "Abs", "Ceil", "Floor", "Round", "Sign"})


def repeated(node: NodeProto, producer: Callable[[str], NodeProto | None]) -> str | None:
    """The tensor ``node``'s output equals when it applies its op to that op's own output: an involution's
    input's input, an idempotent op's input; else None. ``producer``: the node that makes a tensor, in the
    same graph (None: not made there)."""
    if node.op_type not in INVOLUTIONS | IDEMPOTENT or node.domain not in ("", "ai.onnx") or node.attribute:
        return None
    if len(node.input) != 1 or len(node.output) != 1 or not node.input[0]:
        return None
    inner = producer(node.input[0])
    if inner is None or inner.op_type != node.op_type or inner.domain not in ("", "ai.onnx") or inner.attribute:
        return None
    if len(inner.input) != 1 or len(inner.output) != 1 or not inner.input[0]:
        return None
    return inner.input[0] if node.op_type in INVOLUTIONS else node.input[0]
