"""collect_types: shape inference's types for every graph, with what it cannot see filled in.

onnx has no schema for onnxruntime's quantized elementwise ops (com.microsoft QLinearAdd, QLinearMul,
QLinearSigmoid, QLinearLeakyRelu), so inference alone stops at each and every tensor after one loses its shape;
the layout optimizer then cannot tell a QOperator ConvNeXt block's GELU from a fixed op. collect_types infers
on a skeleton where each stands in as default-domain ops of the same output shape and type.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.graph import collect_types

MS = "com.microsoft"


def _chain(op: str) -> onnx.ModelProto:
    """x [N, 5, 7, 4] float -> Q -> the com.microsoft op (with a broadcast [4] operand when binary) -> DQ -> Relu."""
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.int8), "z"),
        numpy_helper.from_array(np.array([1, -2, 3, 4], np.int8), "b"),
        numpy_helper.from_array(np.array(7, np.uint8), "yz"),
    ]
    if op in ("QLinearAdd", "QLinearMul"):
        inputs = ["xq", "s", "z", "b", "s", "z", "s", "yz"]
    else:
        inputs = ["xq", "s", "z", "s", "yz"]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node(op, inputs, ["q"], domain=MS),
        helper.make_node("DequantizeLinear", ["q", "s", "yz"], ["d"]),
        helper.make_node("Relu", ["d"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 7, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu"])
def test_shapes_carry_through_onnxruntimes_quantized_elementwise_ops(op: str) -> None:
    model = _chain(op)
    before = model.SerializeToString()
    types = collect_types(model)[()]
    assert types["q"].elem_type == TensorProto.UINT8  # its output zero point's type
    for name in ("q", "d", "out"):
        assert types[name].shape == ("N", 5, 7, 4), name
    assert model.SerializeToString() == before  # the caller's model is not changed
    assert not any("\x00" in name for name in (n.output[0] for n in model.graph.node))


def test_an_op_without_its_data_inputs_is_left_to_inference() -> None:
    """A QLinearAdd missing its second data input has no stand-in: what follows it stays unknown, as before."""
    model = _chain("QLinearAdd")
    model.graph.node[1].input[3] = ""
    types = collect_types(model)[()]
    assert types.get("out") is None or types["out"].shape is None


def _padded_to_multiple(window: int = 4) -> onnx.ModelProto:
    """TorchScript's window padding on a dynamic batch: pads = (window - H % window) % window, H read out of the
    shape (Shape -> Gather), the batch unknown; then a Reshape target that leads with the batch and holds H / window."""
    one = lambda v, name: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [one(1, "i1"), one(2, "i2"), one(window, "win"), one([0], "ax"), one([0, 0, 0, 0, 0, 0], "zeros4"), one([0], "z1")]
    n = helper.make_node
    nodes = [
        n("Shape", ["x"], ["s"]),
        n("Gather", ["s", "i1"], ["h"], axis=0),
        n("Gather", ["s", "i2"], ["w"], axis=0),
        n("Mod", ["h", "win"], ["hm"]),
        n("Sub", ["win", "hm"], ["hp0"]),
        n("Mod", ["hp0", "win"], ["hp"]),
        n("Unsqueeze", ["hp", "ax"], ["hp1"]),
        n("Concat", ["z1", "z1", "z1", "z1", "z1", "hp1", "z1", "z1"], ["pads"], axis=0),
        n("Pad", ["x", "pads"], ["padded"]),
        n("Div", ["w", "win"], ["nw"]),
        n("Gather", ["s", "z1"], ["batch"], axis=0),
        n("Unsqueeze", ["nw", "ax"], ["nw1"]),
        n("Concat", ["batch", "nw1", "win_v", "c_v"], ["target"], axis=0),
        n("Reshape", ["x", "target"], ["rows"]),
    ]
    inits += [one([window], "win_v"), one([-1], "c_v")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("padded", "rows")],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_known_dims_read_out_of_a_partly_known_shape_are_constants() -> None:
    """H and W of an input with a dynamic batch: Gather(Shape(x), 1) is evaluated (onnxruntime folds it too), the batch
    is not; so the padding's pads are known and inference gives the padded shape and the Reshape's pieces."""
    from converter.graph import Scope

    model = _padded_to_multiple()
    types = collect_types(model)[()]
    scope = Scope(model.graph, (), types, opset=17)
    assert scope.source("h").kind == "evaluated" and scope.source("pads").kind == "evaluated"
    assert scope.source("batch").kind == "computed" and scope.source("target").kind == "computed"
    assert types["padded"].shape == ("N", 8, 8, 3)
    assert types["rows"].shape[1:3] == (2, 4)  # W / window and the window: the pieces data propagation carries in


def _embeddings_and_head_split() -> onnx.ModelProto:
    """What the TorchScript exporter writes for a text encoder with dynamic N and S: positions sliced from a buffer
    of 64 with an end read from the input's shape, their embeddings added to the tokens', a projection, and a head
    split whose target is ``[N, S, -1, 16]`` put together from the projection's own shape."""
    rng = np.random.default_rng(0)
    i64 = lambda v, name: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [
        numpy_helper.from_array(rng.standard_normal((100, 64)).astype(np.float32), "words"),
        numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "places"),
        numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
        i64(np.arange(64).reshape(1, 64), "positions"),
        i64([0], "zero"),
        i64([1], "one"),
        i64([0, 1], "first_two"),
        i64([-1, 16], "heads"),
    ]
    nodes = [
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["length"]),
        helper.make_node("Slice", ["positions", "zero", "length", "one"], ["sliced"]),
        helper.make_node("Gather", ["words", "ids"], ["tokens"]),
        helper.make_node("Gather", ["places", "sliced"], ["places_of"]),
        helper.make_node("Add", ["tokens", "places_of"], ["embedded"]),
        helper.make_node("MatMul", ["embedded", "w"], ["q"]),
        helper.make_node("Shape", ["q"], ["q_shape"]),
        helper.make_node("Gather", ["q_shape", "first_two"], ["n_s"]),
        helper.make_node("Concat", ["n_s", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["q", "target"], ["split"]),
        helper.make_node("Transpose", ["split"], ["heads_first"], perm=[0, 2, 1, 3]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
        [helper.make_tensor_value_info("heads_first", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_symbol_clamped_by_a_table_of_the_model_is_still_found() -> None:
    """At the large primes the position slice is clamped to the buffer's 64 and the sum broadcasts nowhere; the small
    primes stay below it, so the sum (and the projection after it) is ``[N, S, 64]``."""
    types = collect_types(_embeddings_and_head_split())[()]
    assert types["embedded"].shape == ("N", "S", 64)
    assert types["q"].shape == ("N", "S", 64)


def test_a_reshapes_one_unknown_dim_is_the_element_count_divided_out() -> None:
    """The head split's ``-1`` is 64 / 16 = 4 whatever N and S are, and the Transpose after it learns it too."""
    types = collect_types(_embeddings_and_head_split())[()]
    assert types["split"].shape == ("N", "S", 4, 16)
    assert types["heads_first"].shape == ("N", 4, "S", 16)


def _class_token_expanded() -> onnx.ModelProto:
    """TorchScript's ``cls.expand(N, -1, -1)`` before a Concat with the patches: the target ``[N, -1, -1]`` is a
    Concat of a size read with Shape and constants, and ``-1`` is kept through ``Where(Equal(s, -1), ones, s)``."""
    rng = np.random.default_rng(1)
    i64 = [
        numpy_helper.from_array(np.array(v, np.int64), name)
        for v, name in (([0], "zero"), ([-1], "keep"), ([-1], "flat"), (-1, "minus"))
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((1, 1, 8)).astype(np.float32), "cls"), *i64]
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "keep", "keep"], ["parts"], axis=0),
        helper.make_node("Reshape", ["parts", "flat"], ["s"]),
        helper.make_node("Shape", ["s"], ["s_len"]),
        helper.make_node("ConstantOfShape", ["s_len"], ["ones"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Mul", ["ones", "minus"], ["minus_ones"]),
        helper.make_node("Equal", ["s", "minus_ones"], ["kept"]),
        helper.make_node("Where", ["kept", "ones", "s"], ["target"]),
        helper.make_node("Expand", ["cls", "target"], ["tokens"]),
        helper.make_node("Concat", ["tokens", "x"], ["joined"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])],
        [helper.make_tensor_value_info("joined", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_torchscripts_expand_with_kept_dims_keeps_the_token_count() -> None:
    """The class token is ``[N, 1, 8]`` and the tokens after the Concat ``[N, 7, 8]``: a constant -1 of the target
    keeps the input's 1, the size read with Shape is N."""
    model = _class_token_expanded()
    types = collect_types(model)[()]
    assert types["tokens"].shape == ("N", 1, 8)
    assert types["joined"].shape == ("N", 7, 8)
    assert [n.input[1] for n in model.graph.node if n.op_type == "Expand"] == ["target"]  # the caller's model as it was


def test_an_expand_target_with_a_run_time_piece_is_left_to_inference() -> None:
    """A piece of the target that is neither a constant nor a size read with Shape could be -1 at run time: the
    Expand is left as inference sees it."""
    model = _class_token_expanded()
    concat = next(n for n in model.graph.node if n.op_type == "Concat" and n.output[0] == "parts")
    model.graph.node.insert(0, helper.make_node("Neg", ["n_neg_src"], ["n_neg"]))
    model.graph.input.append(helper.make_tensor_value_info("n_neg_src", TensorProto.INT64, [1]))
    concat.input[1] = "n_neg"
    types = collect_types(model)[()]
    assert types["joined"].shape is None or types["joined"].shape[1] != 7
