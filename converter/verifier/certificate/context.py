"""What a proof rule or a layer prover may read and write of the walk over one rewritten graph.

:class:`walk.Walk` implements this; the rules (:mod:`.ops`) and layer provers (:mod:`.layers`) see only this,
so that none of them imports the walk (which dispatches to them).
"""

from __future__ import annotations

from typing import Protocol

from onnx import NodeProto

from converter.report import RewrittenLayer
from converter.verifier.certificate.facts import Const, Fact, SameAs
from converter.verifier.certificate.layouts import Layout
from converter.verifier.certificate.original import Original
from converter.verifier.certificate.proofs import Certificate
from converter.verifier.certificate.views import Views


class Context(Protocol):
    orig: Original  # the original graph's index: canonical facts, producers, shapes, opsets
    cert: Certificate  # where problems and the layers' originals go
    facts: dict[str, Fact]  # the rewritten graph's facts by tensor name: a rule sets its node's outputs here
    views: Views  # the rearrangements seen so far (:mod:`.views`)
    nodes: list[NodeProto]  # the rewritten graph's nodes, in order
    convs: dict[str, RewrittenLayer]  # the layers claimed in this graph, by Conv name

    def fact(self, name: str) -> Fact:
        """What the rewritten tensor ``name`` is known to be (in this graph or an enclosing one)."""
        ...

    def key(self, name: str) -> tuple[int, str]:
        """The key of a constant this walk makes for its tensor ``name``."""
        ...

    def unknown(self, node: NodeProto, reason: str) -> None:
        """Every output of ``node`` is not known, for ``reason`` (where it is said)."""
        ...

    def skip(self, node: NodeProto) -> None:
        """``node`` is accounted for by a proof that covers it: the walk does not visit it."""
        ...

    def same_laid_out(self, r: Const, o: Const, layout: Layout) -> str | None:
        """Why the constant ``r`` is not the original's ``o`` as an op read in ``layout`` reads it, or None."""
        ...

    def broadcast(self, o: SameAs, layout: Layout) -> SameAs:
        """What an elementwise op read in ``layout`` must read where the original reads ``o`` (lower ranks broadcast)."""
        ...

    def producer(self, name: str) -> NodeProto | None:
        """The rewritten graph's node that makes ``name``, or None."""
        ...

    def readers(self) -> dict[str, list[NodeProto]]:
        """The rewritten graph's nodes by the tensors they read."""
        ...

    def outputs(self) -> set[str]:
        """The rewritten graph's output names."""
        ...
