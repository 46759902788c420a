"""Scope's constant expressions: the one-pass sweep of the node list answers as the name-by-name walk does.

The sweep decides every name a graph's nodes make in list order (what the rules, the census and the cleanup ask
first on a big graph); the walk is what answers a name the sweep left undecided, and what answers after an edit.
Both must agree on every name, on real exports (TorchScript's computed pads and targets are constant expressions)
and on the hand-built cases each branch of the sweep handles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.graph import Scope, collect_types

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"


def _answers(model: onnx.ModelProto, sweep: bool) -> dict[str, bool]:
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    scope = Scope(graph, (), collect_types(model).get((), {}), opset=opset)
    scope._swept = not sweep  # already swept: every question goes to the walk
    names = [o for n in graph.node for o in n.output if o]
    found = {name: scope.is_constant_expression(name) for name in names}
    if sweep:
        assert scope._swept
    return found


@pytest.mark.parametrize("name", ["torch_swin_small_static_ts.onnx", "torch_convnext_small_dynamic_ts.onnx"])
def test_sweep_answers_as_the_walk_on_real_exports(name: str) -> None:
    model = onnx.load(str(FIXTURES / name))
    swept, walked = _answers(model, True), _answers(model, False)
    assert swept == walked
    assert any(swept.values()) and not all(swept.values())  # both kinds occur: the comparison says something


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sweep_branches_agree_with_the_walk() -> None:
    c = numpy_helper.from_array(np.ones((2, 3), np.float32), "c")
    idx = numpy_helper.from_array(np.array(1, np.int64), "i")
    nodes = [
        helper.make_node("Add", ["c", "c"], ["cc"]),  # constants alone
        helper.make_node("Add", ["x", "c"], ["xc"]),  # a graph input
        helper.make_node("Shape", ["x"], ["sx"]),  # the shape of a tensor whose every dim is known
        helper.make_node("Gather", ["sx", "i"], ["dim"], axis=0),
        helper.make_node("RandomNormal", [], ["noise"], shape=[2, 3]),  # random: never a constant
        helper.make_node("Add", ["noise", "c"], ["nc"]),
        # Out of order: "late" is read before the node that makes it (the sweep leaves it to the walk).
        helper.make_node("Mul", ["late", "c"], ["early"]),
        helper.make_node("Neg", ["cc"], ["late"]),
        helper.make_node("Mul", ["late_x", "c"], ["early_x"]),
        helper.make_node("Neg", ["xc"], ["late_x"]),
    ]
    model = _model(nodes, [c, idx], ["xc", "nc", "early", "early_x", "dim"])
    swept, walked = _answers(model, True), _answers(model, False)
    assert swept == walked
    assert swept == {
        "cc": True,
        "xc": False,
        "sx": True,
        "dim": True,
        "noise": False,
        "nc": False,
        "early": True,
        "late": True,
        "early_x": False,
        "late_x": False,
    }
