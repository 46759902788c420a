"""A LayerNormalization written out in NCHW (ops/layernorm.py) with ``Neg(Neg(t))`` put on one of its edges.

``Neg(Neg(t))`` is ``t`` bit for bit, and ``convert --check`` accepts it anywhere else (ops/repeated.py); inside
the written-out body the pattern was read edge by edge, so the pair broke it and the whole block was left unproved.
The body is now read with such pairs seen through: every edge of it, with the pair, is proved; with one Neg, or a
Neg and an Abs, it is not.
"""

from __future__ import annotations

import functools

import onnx
import pytest
from onnx import helper

import converter
from converter.verifier.certificate import certify
from models import graphs

BODY = ("ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div")


@functools.cache
def _converted() -> tuple[onnx.ModelProto, onnx.ModelProto, tuple]:
    model = graphs.convnext_stage(8, 5, 7, blocks=1, layernorm=True)
    result = converter.rewrite(model, layout="nchw")
    assert result.report.layout.layernorms_written_out == 1
    return model, result.model, tuple(result.report.layers)


def _body_edges() -> list[tuple[int, int]]:
    """(node index, input slot) of every computed tensor the written-out body's nodes read."""
    _, rewritten, _ = _converted()
    constants = {t.name for t in rewritten.graph.initializer}
    return [
        (i, slot)
        for i, node in enumerate(rewritten.graph.node)
        if node.op_type in BODY and node.name.startswith("layernormalization")
        for slot, name in enumerate(node.input)
        if name and name not in constants
    ]


def _with_chain(at: int, slot: int, ops: list[str]) -> onnx.ModelProto:
    """The rewritten model with ``ops`` put one after the other on input ``slot`` of node ``at``."""
    _, rewritten, _ = _converted()
    edited = onnx.ModelProto()
    edited.CopyFrom(rewritten)
    reader = edited.graph.node[at]
    src = reader.input[slot]
    for k, op in enumerate(ops):
        out = f"{src}_{op.lower()}{k}"
        edited.graph.node.insert(at + k, helper.make_node(op, [src], [out], name=f"{out}_node"))
        src = out
    reader.input[slot] = src
    return edited


def test_the_body_has_the_edges_this_test_edits() -> None:
    edges = _body_edges()
    assert len(edges) >= 11, edges  # x twice, mean, d three times, its square, var, var + eps, its root, the norm


@pytest.mark.parametrize(("at", "slot"), _body_edges())
def test_neg_neg_on_an_edge_of_the_body_is_proved(at: int, slot: int) -> None:
    model, _, layers = _converted()
    cert = certify(model, _with_chain(at, slot, ["Neg", "Neg"]), list(layers))
    assert cert.proved, cert.to_dict()


@pytest.mark.parametrize("ops", [["Neg"], ["Neg", "Abs"], ["Abs", "Neg"], ["Neg", "Neg", "Neg"]])
@pytest.mark.parametrize(("at", "slot"), _body_edges())
def test_a_chain_that_is_not_the_identity_on_an_edge_of_the_body_is_not_proved(at: int, slot: int, ops: list[str]) -> None:
    model, _, layers = _converted()
    assert not certify(model, _with_chain(at, slot, ops), list(layers)).proved
