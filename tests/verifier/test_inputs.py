"""Verification inputs: symbolic dims get values that let layout bugs show; data is seeded per trial."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from converter.errors import InputError
from converter.verifier.inputs import Declared, candidates, declared_inputs, fixed_symbols, make_feeds, shapes_for, total_stride
from models.graphs import Builder


def strided(strides: list[int], channels_first: bool = True):  # noqa: ANN201
    b = Builder(0)
    x = "x"
    for s in strides:
        x = b.op("Conv", x, b.const(np.ones((3, 3, 3, 3))), kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[s, s])
    shape = ["N", 3, "H", "W"] if channels_first else ["N", "H", "W", 3]
    return b.model([("x", shape)], [x])


def test_total_stride_multiplies_along_a_path() -> None:
    assert total_stride(strided([4, 2, 2, 2])) == 32
    assert total_stride(strided([1, 1])) == 1


def test_first_candidate_gives_distinct_values_greater_than_one_in_stride_multiples() -> None:
    model = strided([4, 2, 2, 2])
    inputs = declared_inputs(model)
    symbols, why = next(candidates(model, inputs, {}))
    assert symbols["N"] == 2
    assert symbols["H"] % 32 == 0 and symbols["W"] % 32 == 0 and symbols["H"] != symbols["W"]
    assert min(symbols["H"], symbols["W"]) // 32 >= 3  # the deepest stage is still more than 2 x 2
    assert {c.name: c.why for c in why}["H"].startswith("spatial: 3 and 4 times")


def test_channels_last_inputs_get_their_spatial_axes_recognised() -> None:
    model = strided([2], channels_first=False)
    symbols, _ = next(candidates(model, declared_inputs(model), {}))
    assert symbols["N"] == 2 and symbols["H"] != symbols["W"] and 3 not in (symbols["H"], symbols["W"])


def test_the_last_candidate_is_all_ones_and_candidates_are_distinct() -> None:
    model = strided([2, 2])
    found = [s for s, _ in candidates(model, declared_inputs(model), {})]
    assert found[-1] == {"N": 1, "H": 1, "W": 1}
    assert len({tuple(sorted(s.items())) for s in found}) == len(found) >= 4


def test_unnamed_and_other_symbolic_dims_get_distinct_values() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["t"], ["y"])],
        "g",
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["B", "S", None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph)
    inputs = declared_inputs(model)
    symbols, _ = next(candidates(model, inputs, {}))
    assert symbols["B"] == 2 and symbols["S"] not in (1, 2) and symbols["t[2]"] not in (1, 2, symbols["S"])
    assert shapes_for(inputs, symbols, {})["t"] == [2, symbols["S"], symbols["t[2]"]]


def test_user_shapes_fix_symbols_for_every_input_sharing_them() -> None:
    inputs = [Declared("a", TensorProto.FLOAT, ["N", 3]), Declared("b", TensorProto.FLOAT, ["N", 5])]
    fixed = fixed_symbols(inputs, {"a": [7, 3]})
    assert fixed == {"N": 7} and shapes_for(inputs, fixed, {"a": [7, 3]})["b"] == [7, 5]
    with pytest.raises(InputError, match="does not fit"):
        fixed_symbols(inputs, {"a": [7, 4]})


def test_feeds_depend_on_seed_trial_and_distribution_only() -> None:
    inputs = [Declared("x", TensorProto.FLOAT, [4, 5])]
    a = make_feeds(inputs, {"x": [4, 5]}, 3, 1)["x"]
    assert np.array_equal(a, make_feeds(inputs, {"x": [4, 5]}, 3, 1)["x"])
    assert not np.array_equal(a, make_feeds(inputs, {"x": [4, 5]}, 3, 0)["x"])
    assert make_feeds(inputs, {"x": [4, 5]}, 3, 1, "positive")["x"].min() > 0


def test_inputs_that_cannot_be_fed_are_one_clear_error() -> None:
    for elem_type in (0, 999):
        graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
        graph.input[0].type.tensor_type.elem_type = elem_type
        with pytest.raises(InputError, match="element type"):
            declared_inputs(helper.make_model(graph))
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-3])], [])
    with pytest.raises(InputError, match="negative dim"):
        declared_inputs(helper.make_model(graph))
