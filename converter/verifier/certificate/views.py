"""Rearrangements seen from one original root: the rewritten graph's and the original's, compared element by element.

A rewritten Reshape, Transpose, Squeeze or Unsqueeze with no counterpart may still only move the elements
of an original tensor ``R`` (the cleanup folds chains of them). Its output is then an original tensor made
from ``R`` by such ops, under a layout; until one is found further on, a root of its own, a *view*: ``R``
and the steps from it (``SameAs(VIEW + ...)``). :class:`Views` keeps those per rewritten graph and finds the
original's rearrangements of a root (:mod:`.elements` compares them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from onnx import NodeProto

from converter.verifier.certificate.elements import (
    MAX_REARRANGEMENTS,
    MAX_STEPS,
    REARRANGE,
    Step,
    elements,
    rearrange_step,
    relate,
    same_elements,
    symbolic,
)
from converter.verifier.certificate.facts import VIEW, SameAs
from converter.verifier.certificate.nodes import is_default
from converter.verifier.certificate.original import Original


class Views:
    """The views of one rewritten graph, against its original graph ``orig``."""

    def __init__(self, orig: Original) -> None:
        self.orig = orig
        self._views: dict[str, tuple[str, tuple[Step, ...]]] = {}  # synthetic roots: (original root, steps from it)
        self._orig_readers: dict[str, list[NodeProto]] | None = None  # the original's rearranging nodes by input
        self._found: dict[str, list[tuple[str, tuple[Step, ...]]]] = {}  # original_rearrangements, by root

    def steps(self, root: str) -> tuple[str, tuple[Step, ...]]:
        """The original root a root stands for and the steps from it (a real root: itself, no steps)."""
        return self._views.get(root, (root, ()))

    def add(self, root: str, steps: tuple[Step, ...]) -> SameAs:
        """A view: the original ``root`` after ``steps``, as a root of its own."""
        synthetic = f"{VIEW}{root}:{steps!r}"
        self._views[synthetic] = (root, steps)
        return SameAs(synthetic)

    def dims(self, root: str) -> list[int | str] | None:
        """The original root's dims, each one shape inference cannot tell a symbol of its own; None: unknown."""
        shape = self.orig.shape(root)
        return None if shape is None else symbolic(root, shape)

    def original_rearrangements(self, root: str) -> list[tuple[str, tuple[Step, ...]]]:
        """Original tensors made from ``root`` by Reshapes, Transposes, Squeezes and Unsqueezes alone, each with
        the steps from ``root`` (breadth first, a few levels)."""
        if root in self._found:
            return list(self._found[root])
        if self._orig_readers is None:
            self._orig_readers = defaultdict(list)
            for n in self.orig.graph.node:
                if n.input and is_default(n) and n.op_type in REARRANGE and len(n.output) == 1:
                    self._orig_readers[n.input[0]].append(n)
        found: list[tuple[str, tuple[Step, ...]]] = [(root, ())]
        i = 0
        while i < len(found) and len(found) < MAX_REARRANGEMENTS:
            name, steps = found[i]
            i += 1
            if len(steps) >= MAX_STEPS:
                continue
            for n in self._orig_readers.get(name, []):
                step = rearrange_step(n, self.orig.canon, self.orig.shape)
                if step is not None:
                    found.append((n.output[0], (*steps, step)))
        self._found[root] = found
        return list(found)

    def same(self, x: SameAs, y: SameAs, tail: Sequence[Step] = ()) -> bool:
        """Whether ``x`` is, element for element, ``y`` followed by the steps ``tail``, when one is made from the
        other's root by Reshapes, Transposes, Squeezes and Unsqueezes alone (a folded chain, a Reshape that only
        moves unit axes, a Reshape and its inverse)."""
        common = self._common(x, y)
        if common is None:
            return False
        dims, ours, theirs = common
        return same_elements(dims, ours, (*theirs, *tail))

    def relation(self, x: SameAs, y: SameAs) -> tuple[int | None, ...] | None:
        """The layout ``m`` with ``x`` equal, element for element, to ``y`` laid out by ``m`` (None entries: unit
        axes ``y`` lacks), when one is made from the other's root by rearrangements alone (see :meth:`same`):
        one tensor of the original described from two roots (TorchScript's ``permute -> view -> transpose`` and
        a Reshape of the same tensor, both an LSTM's input); None when there is none."""
        common = self._common(x, y)
        if common is None:
            return None
        dims, ours, theirs = common
        a = elements(dims, ours)
        m = None if a is None else relate(a, elements(dims, theirs))
        if m is None or not same_elements(dims, ours, (*theirs, ("layout", m))):
            return None
        return m

    def related_roots(self, root: str) -> list[str]:
        """The roots of the original tensors made by rearrangements alone from ``root`` or from a tensor ``root``
        is itself made from that way (``root`` aside): where else a tensor equal to a rearrangement of it may be
        read."""
        roots: dict[str, None] = {}
        for ancestor, _ in self._ancestors(root):
            for name, _ in self.original_rearrangements(ancestor):
                fact = self.orig.canon(name)
                if isinstance(fact, SameAs) and fact.root and fact.root != root:
                    roots[fact.root] = None
        return list(roots)

    def _ancestors(self, root: str) -> list[tuple[str, tuple[Step, ...]]]:
        """The original tensors ``root`` is made from by rearrangements alone, each with the steps from it to
        ``root`` (nearest first, ``root`` itself first of all, a few levels)."""
        found: list[tuple[str, tuple[Step, ...]]] = [(root, ())]
        while len(found) <= MAX_STEPS:
            name, steps = found[-1]
            node = self.orig.producers.get(name)
            if node is None or not node.input or not is_default(node) or node.op_type not in REARRANGE or len(node.output) != 1:
                break
            step = rearrange_step(node, self.orig.canon, self.orig.shape)
            source = self.orig.canon(node.input[0])
            if step is None or not isinstance(source, SameAs) or not source.root or source.root.startswith("\0"):
                break
            before = (("layout", source.layout),) if source.layout is not None else ()
            found.append((source.root, (*before, step, *steps)))
        return found

    def _common(self, x: SameAs, y: SameAs) -> tuple[list[int | str], tuple[Step, ...], tuple[Step, ...]] | None:
        """``x`` and ``y`` as steps from one original root (the dims of that root, then the steps of each), or None."""
        root, steps = self.steps(x.root)
        y_root, y_steps = self.steps(y.root)
        if not root or not y_root or root.startswith("\0") or y_root.startswith("\0"):
            return None
        ours = (*steps, ("layout", x.layout)) if x.layout is not None else steps
        theirs = (*y_steps, ("layout", y.layout)) if y.layout is not None else y_steps
        to_y = next((t for name, t in self.original_rearrangements(root) if name == y_root), None)
        if to_y is not None:
            theirs = (*to_y, *theirs)
        else:  # the other way round (x's root is made from y's), or both made from one tensor before them
            to_x = next((t for name, t in self.original_rearrangements(y_root) if name == root), None)
            if to_x is not None:
                root, ours = y_root, (*to_x, *ours)
            else:
                up_y = dict(self._ancestors(y_root))
                common = next(((a, t) for a, t in self._ancestors(root) if a in up_y), None)
                if common is None:
                    return None
                root, ours, theirs = common[0], (*common[1], *ours), (*up_y[common[0]], *theirs)
        dims = self.dims(root)
        return None if dims is None else (dims, tuple(ours), tuple(theirs))
