"""Dims read out of run-time shapes in two forms (ops/shape_entries.py): the same dims of the same tensors are equal.

onnxruntime's transpose optimizer (in ``quant_pre_process``) writes a head split's size read as
``Gather(Gather(Shape(x), perm), i)``; the rewrite's ``compose_shape_reads`` makes it ``Gather(Shape(x), perm[i])``.
Neither is a constant on a dynamic export, so the certificate follows which dims they pick: the conversion is
proved with the rule and only with it, and a Gather that picks another dim is not proved.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate import PROOF_RULES, certify
from converter.verifier.certificate.ops import shape
from tests.rewriter.cleanup._harness import run

C, K = 4, 6
GATHER = ("", "Gather")


def _without_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gather's fallback as it was before the rule: a Gather of a Shape read in a layout only."""
    monkeypatch.setitem(PROOF_RULES, GATHER, dataclasses.replace(PROOF_RULES[GATHER], fallback=shape.gathered_shape))


def _ints(name: str, values: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _size_read(index: int, composed: bool) -> onnx.ModelProto:
    """``x`` [N, S, H, D] (all symbolic) -> a second output ``[x.shape[1], -1]`` as onnxruntime's transpose optimizer
    writes it (``Gather(Gather(Shape(x), [0, 2, 1, 3]), 2)``), or composed into one Gather that picks ``index``; the
    first output is ``x`` itself."""
    inits = [_ints("minus_one", [-1]), _ints("axis0", [0])]
    if composed:
        inits.append(_ints("dims", index))
        nodes = [helper.make_node("Gather", ["s", "dims"], ["n"], "pick", axis=0)]
    else:
        inits += [_ints("perm", [0, 2, 1, 3]), _ints("two", 2)]
        nodes = [
            helper.make_node("Gather", ["s", "perm"], ["sp"], "permuted", axis=0),
            helper.make_node("Gather", ["sp", "two"], ["n"], "pick", axis=0),
        ]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], "shape"),
        *nodes,
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"], "unsqueeze"),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], "concat", axis=0),
        helper.make_node("Identity", ["x"], ["y"], "same"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", "H", "D"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", "H", "D"]),
            helper.make_tensor_value_info("target", TensorProto.INT64, [2]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("index", [1, -3])
def test_a_composed_gather_of_a_shape_is_the_two_gathers_it_replaces(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    original, rewritten = _size_read(1, composed=False), _size_read(index, composed=True)
    feeds = {"x": np.zeros((2, 3, 5, 7), np.float32)}
    assert run(original, feeds)[1].tolist() == run(rewritten, feeds)[1].tolist() == [3, -1]
    cert = certify(original, rewritten, [])
    assert cert.proved, cert.to_dict()
    _without_the_rule(monkeypatch)
    cert = certify(original, rewritten, [])
    assert not cert.proved and not cert.problems and cert.unproved, cert.to_dict()  # unproved: a limit, no disagreement
    assert any("Gather 'pick'" in u for u in cert.unproved), cert.unproved


@pytest.mark.parametrize("index", [0, 2, 3, -1])
def test_a_gather_that_picks_another_dim_is_not_proved(index: int) -> None:
    original, rewritten = _size_read(1, composed=False), _size_read(index, composed=True)
    assert not certify(original, rewritten, []).proved


def test_a_gather_that_picks_a_dim_of_another_tensor_is_not_proved() -> None:
    """The same axis of another tensor of the same rank (``x`` and its Neg) is another size as far as the proof knows."""
    original, rewritten = _size_read(1, composed=False), _size_read(1, composed=True)
    neg = helper.make_node("Neg", ["x"], ["x_neg"], "neg")
    rewritten.graph.node.insert(0, neg)
    rewritten.graph.node[1].input[0] = "x_neg"
    assert not certify(original, rewritten, []).proved


def _token_layer_with_a_size_read() -> onnx.ModelProto:
    """A dense layer on [N, S, C] tokens (S symbolic) whose input's sequence length is read as onnxruntime's
    transpose optimizer writes it, ``Gather(Gather(Shape(x), [0, 2, 1]), 2)``, into a second output."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array((rng.standard_normal((C, K)) * 0.5).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal(K) * 0.1 + 0.05).astype(np.float32), "b"),
        _ints("perm", [0, 2, 1]),
        _ints("two", 2),
        _ints("axis0", [0]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], "fc"),
        helper.make_node("Add", ["mm", "b"], ["y"], "bias"),
        helper.make_node("Shape", ["x"], ["s"], "shape"),
        helper.make_node("Gather", ["s", "perm"], ["sp"], "permuted", axis=0),
        helper.make_node("Gather", ["sp", "two"], ["n"], "pick", axis=0),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["length"], "unsqueeze"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", C])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", K]),
            helper.make_tensor_value_info("length", TensorProto.INT64, [1]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _composed(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its ``Gather(Gather(Shape(x), perm), 2)`` composed into ``Gather(Shape(x), perm[2])``, as another
    tool (or this one's cleanup, on reads it made itself) writes it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.name: n for n in out.graph.node}
    permuted, pick = nodes["permuted"], nodes["pick"]
    out.graph.initializer.append(_ints("picked", 1))  # [0, 2, 1][2]
    pick.input[:] = [permuted.input[0], "picked"]
    out.graph.node.remove(permuted)
    return out


def test_a_conversion_with_the_size_read_composed_is_proved_only_with_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _token_layer_with_a_size_read()
    result = converter.rewrite(model, tokens=True)
    assert result.report.rewritten == 1
    # The cleanup composes only the reads it made itself: the exporter's stay as they are.
    assert not result.report.cleanup["changes"].get("compose_shape_reads")
    check = converter.verify(model, result)
    assert check.passed and check.structure["proved"], check.to_dict()
    composed = _composed(result.model)
    cert = certify(model, composed, result.report.layers)
    assert cert.proved, cert.to_dict()
    _without_the_rule(monkeypatch)
    cert = certify(model, composed, result.report.layers)
    assert not cert.proved and not cert.problems, cert.to_dict()
