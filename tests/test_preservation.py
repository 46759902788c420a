"""The output keeps everything of the original except the rewritten part.

These are exactly the details onnx-graphsurgeon's import/export loses (measured with gs 0.6.1):
initializers listed as graph inputs, unused initializers, model doc_string / model_version /
domain / metadata_props, node doc strings and metadata.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from tests.conftest import W_, C, H, K, assert_rewritten, dense_model

NOT_REWRITTEN = [
    "ir_version",
    "opset_import",
    "producer_name",
    "producer_version",
    "domain",
    "model_version",
    "doc_string",
    "metadata_props",
    "functions",
]


def rich_model() -> onnx.ModelProto:
    """A dense layer plus every detail a careless round trip drops."""
    rng = np.random.default_rng(5)
    scale = onnx.helper.make_function(
        "local",
        "Scale",
        ["a"],
        ["b"],
        [
            helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
            helper.make_node("Mul", ["a", "two"], ["b"]),
        ],
        [helper.make_opsetid("", 21)],
    )
    dense = helper.make_node("MatMul", ["x", "W"], ["mm"], name="dense", doc_string="the dense layer")
    add = helper.make_node("Add", ["mm", "b"], ["pre"], name="bias", doc_string="its bias")
    act = helper.make_node("Scale", ["pre"], ["y"], name="scale", domain="local", doc_string="a local function")
    act.metadata_props.add(key="origin", value="keras")
    dead = helper.make_node("Relu", ["x"], ["unused_relu"], name="dead_already", doc_string="was dead before")
    graph = helper.make_graph(
        [dense, add, act, dead],
        "rich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", H, W_, C], doc_string="images, NHWC")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", H, W_, K], doc_string="features")],
        [
            numpy_helper.from_array(rng.standard_normal((C, K)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "b"),
            numpy_helper.from_array(np.arange(3, dtype=np.float32), "never_used"),
        ],
        doc_string="graph documentation",
        value_info=[
            helper.make_tensor_value_info("mm", TensorProto.FLOAT, ["batch", H, W_, K]),
            helper.make_tensor_value_info("pre", TensorProto.FLOAT, ["batch", H, W_, K]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)],
        producer_name="keras2onnx-like",
        producer_version="9.9",
        domain="com.example",
        model_version=42,
        doc_string="model documentation",
        functions=[scale],
    )
    model.ir_version = 10
    helper.set_model_props(model, {"author": "tests", "license": "MIT"})
    onnx.checker.check_model(model, full_check=True)
    return model


def test_everything_but_the_rewritten_part_survives() -> None:
    model = rich_model()
    result = converter.rewrite(model, layout="keep-all")  # every layer, whatever its Transposes
    assert_rewritten(model, result, {"Conv": 1, "Relu": 1, "Scale": 1, "Transpose": 2})
    out = result.model
    for name in NOT_REWRITTEN:
        assert getattr(out, name) == getattr(model, name), name
    assert out.graph.name == model.graph.name and out.graph.doc_string == model.graph.doc_string
    kept = {n.name: n for n in out.graph.node}
    for node in model.graph.node:
        if node.name in ("dense", "bias"):
            assert node.name not in kept
        else:
            assert kept[node.name] == node  # doc_string and metadata_props included
    inits = [t.name for t in out.graph.initializer]
    assert inits[:2] == ["b", "never_used"] and inits[2:] == ["W_conv_weight"]  # W is dead, b now feeds Conv
    # "mm" no longer exists, so its value_info goes; "pre" is still produced (by the last Transpose).
    assert [v.name for v in out.graph.value_info] == ["pre"]
    assert out.graph.value_info[0] == model.graph.value_info[1]


def test_nothing_to_rewrite_comes_out_identical() -> None:
    model = dense_model(weight="runtime")
    result = converter.rewrite(model)
    assert result.report.rewritten == 0
    assert result.model.SerializeToString() == model.SerializeToString()


def old_ir_model() -> onnx.ModelProto:
    """IR 3 required every initializer to be listed as a graph input too."""
    model = dense_model(ir_version=3, opset=8, weight="graph_input", bias="graph_input")
    assert {i.name for i in model.graph.input} >= {t.name for t in model.graph.initializer}
    return model


def test_old_ir_initializers_as_inputs_are_kept_and_not_rewritten() -> None:
    model = old_ir_model()
    result = converter.rewrite(model)
    assert result.report.skipped_by_reason == {"weight_is_graph_input": 1}
    assert result.model.SerializeToString() == model.SerializeToString()
    check = converter.verify(model, result, input_shapes={"x": [2, H, W_, C]})
    assert check.passed
    assert {i.name: i.source for i in check.inputs} == {"x": "random", "W": "initializer default", "b": "initializer default"}


def test_initializer_inputs_stay_in_the_interface_next_to_rewritten_layers() -> None:
    """A model where only the bias is overridable: the MatMul is rewritten, the input list is untouched."""
    model = dense_model(bias="graph_input", ir_version=8)
    result = converter.rewrite(model, layout="keep-all")  # every layer, whatever its Transposes
    assert [i.name for i in result.model.graph.input] == ["x", "b"]
    assert "b" in {t.name for t in result.model.graph.initializer}
    # The bias Add runs channels-first, its overridable bias read through an Unsqueeze: the way back is the graph output.
    assert_rewritten(model, result, {"Add": 1, "Conv": 1, "Transpose": 2, "Unsqueeze": 1})


@pytest.mark.parametrize("maker", [rich_model, old_ir_model], ids=["rich", "old_ir"])
def test_convert_through_files_keeps_the_interface(tmp_path, maker) -> None:
    model = maker()
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    before = src.read_bytes()
    report = converter.convert(src, tmp_path / "out.onnx", input_shapes={"x": [1, H, W_, C]})
    assert report.ok and report.written
    assert src.read_bytes() == before  # the input is never changed
    saved = onnx.load(tmp_path / "out.onnx")
    assert list(saved.graph.input) == list(model.graph.input)
    assert list(saved.graph.output) == list(model.graph.output)
    assert saved.metadata_props == model.metadata_props
    onnx.checker.check_model(saved, full_check=True)
