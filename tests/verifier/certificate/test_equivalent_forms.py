"""A rewrite written another way is the same rewrite (issue 22, item 4): the certificate accepts the forms another
tool may write, each with a wrong neighbour it must still refuse or leave unproved.

- an attribute written out at its schema default (``noop_with_empty_axes=0``) is the attribute left out; another
  value is not;
- the operands of a commutative Add or Mul swapped (also inside a written-out LayerNormalization); a Sub's are not
  commutative;
- ``dilations`` on a 1x1 Conv, ``auto_pad`` SAME at stride 1: the same convolution; a stride is not.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import converter
from converter.verifier.certificate import certify
from models import graphs
from models.graphs import Builder


def _converted(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    result = converter.rewrite(model, layout="keep-all")
    assert certify(model, result.model, result.report.layers).proved
    return model, result.model, list(result.report.layers)


def _reduced() -> onnx.ModelProto:
    b = Builder(3)
    y = b.op("ReduceSum", b.dense("x", 6, 8), b.const(np.array([2]), np.int64), keepdims=0)
    return b.model([("x", [2, 3, 5, 6])], [y])


def test_a_default_attribute_written_out_is_the_attribute_left_out() -> None:
    model, rewritten, layers = _converted(_reduced())
    reduce = next(n for n in rewritten.graph.node if n.op_type == "ReduceSum")
    reduce.attribute.append(helper.make_attribute("noop_with_empty_axes", 0))
    assert certify(model, rewritten, layers).proved
    assert converter.verify(model, rewritten).passed
    reduce.attribute[-1].i = 1  # not the default (here the same numbers, but not proved so: conservative)
    assert not certify(model, rewritten, layers).proved


def test_swapped_operands_of_a_commutative_op_are_the_same_op() -> None:
    """ConvNeXt's block: its LayerNormalization written out in NCHW, GELU's Mul and Add, the residual Add."""
    model, rewritten, layers = _converted(graphs.convnext_block(c=8))
    swapped = 0
    for node in rewritten.graph.node:
        if node.op_type in ("Add", "Mul") and len(node.input) == 2 and node.input[0] != node.input[1]:
            node.input[0], node.input[1] = node.input[1], node.input[0]
            swapped += 1
    assert swapped >= 5
    cert = certify(model, rewritten, layers)
    assert cert.proved, cert.to_dict()


def test_swapped_operands_of_a_sub_are_another_op() -> None:
    b = Builder(5)
    y = b.dense("x", 6, 8)
    model = b.model([("x", [2, 3, 5, 6])], [b.dense(b.op("Sub", y, b.op("Sigmoid", y)), 8, 4)])
    model, rewritten, layers = _converted(model)
    sub = next(n for n in rewritten.graph.node if n.op_type == "Sub")
    sub.input[0], sub.input[1] = sub.input[1], sub.input[0]
    assert not certify(model, rewritten, layers).proved


@pytest.mark.parametrize(
    ("attribute", "value", "same"),
    [
        ("dilations", [2, 3], True),
        ("auto_pad", "SAME_UPPER", True),
        ("auto_pad", "SAME_LOWER", True),
        ("strides", [1, 2], False),
    ],
)
def test_a_1x1_conv_written_another_way(attribute: str, value: object, same: bool) -> None:
    model, rewritten, layers = _converted(graphs.convnext_block(c=8))
    conv = next(n for n in rewritten.graph.node if n.name == layers[0].conv)
    conv.attribute.append(helper.make_attribute(attribute, value))
    proof = certify(model, rewritten, layers).layers[conv.name]
    assert (proof.status == "proved") == same, proof
    if same:
        assert converter.verify(model, rewritten, layers=layers).passed
