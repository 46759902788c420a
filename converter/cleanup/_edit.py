"""Helpers the Transpose passes share: permutation algebra and in-place graph edits."""

from __future__ import annotations

from onnx import GraphProto, NodeProto

from converter.graph import Scope, new_node


def inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def compose(first: list[int], then: list[int]) -> list[int]:
    """The single perm equal to Transpose(Transpose(x, first), then)."""
    return [first[i] for i in then]


def is_identity(perm: list[int]) -> bool:
    return perm == list(range(len(perm)))


def bypass(node: NodeProto, scope: Scope, removed: set[int], vanished: set[str]) -> bool:
    """Make every reader of ``node``'s output read its input instead, and mark the node removed.

    When the output is a graph output (its name must stay), the producer of the input is renamed
    to it if nothing else reads the input; failing that the node becomes an Identity. Returns
    whether a node went away.
    """
    out, inp = node.output[0], node.input[0]
    readers = scope.consumers(out)
    reads_in_subgraph = any(out not in r.input for r in readers)
    if out in scope.output_names or reads_in_subgraph:
        producer = scope.producers.get(inp)
        # Readers already removed this round no longer count (the Transpose merged into this one).
        sole_reader = all(r is node or id(r) in removed for r in scope.consumers(inp))
        if not reads_in_subgraph and producer is not None and sole_reader and inp not in scope.output_names:
            producer.output[list(producer.output).index(inp)] = out
            for r in readers:
                _rename_input(r, out, out)
            removed.add(id(node))
            vanished.add(inp)
            return True
        node.op_type = "Identity"
        node.ClearField("attribute")
        return False
    for r in readers:
        _rename_input(r, out, inp)
    removed.add(id(node))
    vanished.add(out)
    return True


def _rename_input(node: NodeProto, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new


def rebuild(graph: GraphProto, scope: Scope, removed: set[int], after: dict[int, list[NodeProto]]) -> None:
    """Write the node list back: drop removed nodes, put new nodes right after their anchor."""
    nodes: list[NodeProto] = []
    for node in scope.nodes:
        if id(node) not in removed:
            nodes.append(node)
        nodes.extend(after.get(id(node), []))
    graph.ClearField("node")
    graph.node.extend(nodes)


def make_transpose(inp: str, out: str, perm: list[int], name: str) -> NodeProto:
    return new_node("Transpose", [inp], [out], name, perm=perm)
