"""The engine's own safety checks, each with a rule that would break the graph without it.

A toy rule fuses ``Relu(Neg(x))`` into one node. It removes the Neg, so the engine must refuse the
match when the Neg's output is read elsewhere or is a graph output, and must not let two matches
claim one Neg. Each test fails if its check is taken out of ``rules/_engine.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from converter.report import Decision
from converter.rewriter.rules import RuleOptions
from converter.rewriter.rules._engine import Context, Plan, Replacement, Rule, apply_rules


class FuseNegRelu(Rule):
    """Relu(Neg(x)) -> Relu(Neg(x)) rebuilt as one new pair of nodes (enough to remove the originals)."""

    name = "fuse_neg_relu"
    op_type = "Relu"

    def check(self, node: onnx.NodeProto, ctx: Context) -> Plan:
        from converter.rewriter.rules._engine import Decline

        neg = ctx.scope.producers.get(node.input[0])
        if neg is None or neg.op_type != "Neg":
            raise Decline(Decline.NO_PATTERN, "not after a Neg")
        return Plan([node, neg], [node.output[0]])

    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        relu, neg = plan.removed
        mid = ctx.names.fresh(f"{relu.output[0]}_neg")
        return Replacement(
            [
                ctx.node(self.name, relu.name, "Neg", [neg.input[0]], [mid], "fused_neg"),
                ctx.node(self.name, relu.name, "Relu", [mid], [relu.output[0]], "fused_relu"),
            ],
            vanished=[neg.output[0]],
        )


def model(nodes: list[onnx.NodeProto], outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 3]) for o in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(m: onnx.ModelProto) -> list[Decision]:
    decisions = apply_rules(m, [FuseNegRelu()], RuleOptions())
    onnx.checker.check_model(m)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((2, 3), np.float32)})  # the graph is still whole
    return decisions


def test_plain_match_is_rewritten() -> None:
    m = model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"])], ["y"])
    (d,) = run(m)
    assert d.rewritten and [n.name for n in m.graph.node] == ["fused_neg", "fused_relu"]


def test_removed_output_read_elsewhere_is_refused() -> None:
    m = model(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"]), helper.make_node("Abs", ["n"], ["z"])],
        ["y", "z"],
    )
    (d,) = run(m)
    assert not d.rewritten and d.reason == "matched_nodes_have_other_uses" and "used by a node outside the match" in d.detail


def test_removed_output_that_is_a_graph_output_is_refused() -> None:
    m = model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"])], ["y", "n"])
    (d,) = run(m)
    assert not d.rewritten and d.reason == "matched_nodes_have_other_uses" and "graph output" in d.detail


def test_a_producer_read_by_two_matches_is_refused_to_both() -> None:
    """Two Relus read one Neg: removing the Neg for either would leave the other without its input."""
    m = model(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"]), helper.make_node("Relu", ["n"], ["z"])],
        ["y", "z"],
    )
    decisions = run(m)
    assert [d.reason for d in decisions] == ["matched_nodes_have_other_uses"] * 2


class ClaimProducer(FuseNegRelu):
    """Keeps the Neg's output alive (it is produced again), so only the claimed-twice check stands in the way."""

    name = "claim_producer"

    def check(self, node: onnx.NodeProto, ctx: Context) -> Plan:
        plan = super().check(node, ctx)
        return Plan(plan.removed, [node.output[0], plan.removed[1].output[0]])

    def rewrite(self, plan: Plan, ctx: Context) -> Replacement:
        relu, neg = plan.removed
        return Replacement(
            [
                ctx.node(self.name, relu.name, "Neg", [neg.input[0]], [neg.output[0]], "again_neg"),
                ctx.node(self.name, relu.name, "Relu", [neg.output[0]], [relu.output[0]], "again_relu"),
            ]
        )


def test_overlapping_matches_are_refused() -> None:
    m = model(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"]), helper.make_node("Relu", ["n"], ["z"])],
        ["y", "z"],
    )
    decisions = apply_rules(m, [ClaimProducer()], RuleOptions())
    assert [d.rewritten for d in decisions] == [True, False]
    assert decisions[1].reason == "overlapping_match"
    onnx.checker.check_model(m)  # one Neg producing "n", not two
    assert [n.op_type for n in m.graph.node].count("Neg") == 1


@pytest.mark.parametrize("ir_version", [8, 10])
def test_every_new_node_is_tagged_with_its_rule(ir_version: int) -> None:
    m = model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"])], ["y"])
    m.ir_version = ir_version
    run(m)
    for node in m.graph.node:
        tag = {p.key: p.value for p in node.metadata_props}.get("converter.rule") if ir_version >= 10 else node.doc_string
        assert tag and "fuse_neg_relu" in tag


def test_refused_candidates_are_declined_with_the_callers_reason() -> None:
    nodes = [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"])]
    nodes += [helper.make_node("Neg", ["x"], ["n2"]), helper.make_node("Relu", ["n2"], ["z"])]
    m = model(nodes, ["y", "z"])
    refuse = {((), "z"): ("layout_cost", "its Transposes would stay")}
    decisions = apply_rules(m, [FuseNegRelu()], RuleOptions(refuse=refuse))
    assert [(d.rewritten, d.reason) for d in decisions] == [(True, None), (False, "layout_cost")]
    assert decisions[1].detail == "its Transposes would stay"
    assert sum(n.name == "fused_relu" for n in m.graph.node) == 1
