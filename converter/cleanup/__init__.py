"""Cleanup passes that run after the rules, and the bounded manager that repeats them.

A pass edits one graph in place and says whether it changed anything. The manager runs the
passes over every graph (inner graphs first) in rounds until a round changes nothing, at most
``max_rounds`` times, and keeps a graph's result only if it has no more Transposes than before:
the cleanup may never make a graph worse than the rewrite alone left it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from onnx import GraphProto, NodeProto

from converter.graph import NameAllocator, Scope, drop_unused, postorder_graphs

PASS_KEY = "converter.pass"


@dataclass
class PassResult:
    modified: bool
    changes: int = 0


class PassContext:
    """What passes share over a whole run: unique names, provenance tags, constants they made dead."""

    def __init__(self, model: onnx.ModelProto, value_of: Callable[[onnx.TensorProto], np.ndarray] | None = None) -> None:
        self.names = NameAllocator(model)
        self.value_of = value_of  # reads constants, detached ones too
        self.ir_version = model.ir_version
        self.released: set[str] = set()
        self.vanished: set[str] = set()
        # Constants a pass re-laid out, per graph: (source name, perm) -> new name, and the new tensors
        # that the pass appends to the graph it is editing.
        self.derived: dict[tuple[object, ...], str] = {}
        self.pending_initializers: list[onnx.TensorProto] = []
        self._scope: Scope | None = None

    def scope(self, graph: GraphProto) -> Scope:
        """The graph's index, built again only after a pass changed the graph (building it is most of a pass's cost)."""
        if self._scope is None or self._scope.graph is not graph:
            self._scope = Scope(graph, (), {}, value_of=self.value_of)
        return self._scope

    def graph_changed(self) -> None:
        self._scope = None

    def tag(self, node: NodeProto, pass_name: str) -> NodeProto:
        if self.ir_version >= 10:
            node.metadata_props.add(key=PASS_KEY, value=pass_name)
        else:
            node.doc_string = f"{PASS_KEY}: {pass_name}"
        return node


class Pass(Protocol):
    name: str

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult: ...


@dataclass
class CleanupReport:
    transposes_before: int = 0
    transposes_after: int = 0
    rounds: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    reverted_graphs: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _transposes(graph: GraphProto) -> int:
    return sum(n.op_type == "Transpose" for n in graph.node)


def run_passes(
    model: onnx.ModelProto,
    passes: Sequence[Pass],
    max_rounds: int = 64,
    value_of: Callable[[onnx.TensorProto], np.ndarray] | None = None,
) -> CleanupReport:
    """Run ``passes`` to a fixed point on every graph of ``model``, in place (``value_of`` reads constants)."""
    ctx = PassContext(model, value_of)
    report = CleanupReport()
    changes: dict[str, int] = defaultdict(int)
    for graph in list(postorder_graphs(model.graph)):
        before = _transposes(graph)
        report.transposes_before += before
        report.transposes_after += before
        if not before:
            continue  # every pass starts from a Transpose
        saved_nodes = [n.SerializeToString() for n in graph.node]
        saved_value_info = [v.SerializeToString() for v in graph.value_info]
        saved_inits = len(graph.initializer)
        ctx.released, ctx.vanished, ctx.derived = set(), set(), {}
        local: dict[str, int] = defaultdict(int)
        for round_no in range(1, max_rounds + 1):
            modified = False
            for p in passes:
                result = p.run(graph, ctx)
                if result.modified:
                    ctx.graph_changed()
                local[p.name] += result.changes
                modified |= result.modified
            report.rounds = max(report.rounds, round_no)
            if not modified:
                break
        ctx.graph_changed()
        if _transposes(graph) > before:
            # Worse than the rewrite alone: put the graph back exactly as it was.
            graph.ClearField("node")
            graph.node.extend(NodeProto.FromString(b) for b in saved_nodes)
            del graph.initializer[saved_inits:]
            graph.ClearField("value_info")
            graph.value_info.extend(onnx.ValueInfoProto.FromString(b) for b in saved_value_info)
            report.reverted_graphs += 1
        else:
            drop_unused(graph, ctx.released, ctx.vanished)
            for k, v in local.items():
                changes[k] += v
        report.transposes_after += _transposes(graph) - before
    report.changes = dict(changes)
    return report
