"""The structural certificate: it proves every rewrite the converter makes, and refutes or cannot prove a broken one."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.certify import certify
from models import graphs
from models.graphs import Builder
from tests.conftest import W_, C, H, K, dense_model

CORRECT = {
    "dense": lambda: dense_model(),
    "no bias": lambda: dense_model(bias=None),
    "bias first, [1, K]": lambda: dense_model(bias_first=True, bias_shape=(1, K)),
    "scalar bias": lambda: dense_model(bias_shape=()),
    "bias kept (fan-out)": lambda: dense_model(fanout=True),
    "bias kept (not per channel)": lambda: dense_model(bias_shape=(1, 1, W_, 1)),
    "weight [1, 1, C, K]": lambda: dense_model(weight_shape=(1, 1, C, K)),
    "Constant-node weight": lambda: dense_model(weight="constant_node", bias="constant_node"),
    "convnext block": lambda: graphs.convnext_block(),
    "convnext block, relu, no scale": lambda: graphs.convnext_block(layer_scale=False, act="Relu"),
    "convnext stage with LayerNorm": lambda: graphs.convnext_stage(8, 5, 7, layernorm=True),
    "mixer block": lambda: graphs.mixer_block(),
    "tensordot (runtime target)": lambda: graphs.reshape_sandwich(),
    "tensordot (static target)": lambda: graphs.reshape_sandwich(target="static", batch=2),
    "gemm, transB, alpha, beta, own bias": lambda: graphs.reshape_sandwich(
        core="Gemm", bias="gemm", trans_b=1, alpha=0.5, beta=2.0
    ),
    "dense in If branches": lambda: graphs.dense_in_if(),
    "chain": lambda: graphs.dense_chain(12),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_every_rewrite_the_converter_makes_is_proved(name: str) -> None:
    model = CORRECT[name]()
    result = converter.rewrite(model)
    assert result.report.rewritten >= 1
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved, cert.to_dict()
    assert set(cert.layers) == {layer.conv for layer in result.report.layers}


def test_the_unrewritten_layout_is_proved_too() -> None:
    """Without the Transpose cleanup the boundary Transposes stay; the walk composes them the same way."""
    model = graphs.convnext_block()
    result = converter.rewrite(model, fold_transposes=False)
    assert certify(model, result.model, result.report.layers).proved


def test_constants_behind_identity_in_the_original_are_constants() -> None:
    """TorchScript reads deduplicated initializers through Identity nodes."""
    model = dense_model(x_shape=(2, H, W_, C))
    for node in model.graph.node:
        if node.op_type == "Add":
            node.input[1] = "b_id"
    model.graph.node.insert(0, helper.make_node("Identity", ["b"], ["b_id"]))
    result = converter.rewrite(model)
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved, cert.to_dict()


def _broken(model: onnx.ModelProto, edit) -> tuple[converter.RewriteResult, onnx.ModelProto]:  # noqa: ANN001
    result = converter.rewrite(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    edit(broken)
    return result, broken


def _conv(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Conv")


def _set_init(model: onnx.ModelProto, name: str, fn) -> None:  # noqa: ANN001
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)), name))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: _conv(m).attribute.append(helper.make_attribute("strides", [2, 2])), "strides="),
        (lambda m: _conv(m).attribute.append(helper.make_attribute("pads", [0, 1, 0, 1])), "pads="),
        (lambda m: _conv(m).attribute.append(helper.make_attribute("dilations", [1, 2])), "dilations="),
        (lambda m: _set_init(m, _conv(m).input[1], lambda w: w * np.float32(-1)), "weight differs"),
        (lambda m: _set_init(m, _conv(m).input[1], lambda w: w.astype(np.float16)), "weight is float16"),
        (lambda m: _set_init(m, _conv(m).input[2], lambda b: b + np.float32(1e-7)), "bias differs"),
        (lambda m: _conv(m).input.__delitem__(2), "bias is missing"),
    ],
)
def test_a_conv_that_is_not_the_layer_is_refuted_with_the_reason(edit, expected: str) -> None:  # noqa: ANN001
    model = dense_model(x_shape=(2, H, W_, C))
    result, broken = _broken(model, edit)
    cert = certify(model, broken, result.report.layers)
    (proof,) = cert.layers.values()
    assert proof.status == "refuted" and expected in proof.detail.replace("the ", "").replace("'s", ""), proof.detail


def test_a_wrong_input_transpose_is_refuted() -> None:
    model = dense_model(x_shape=(2, H, W_, C))
    result, broken = _broken(
        model,
        lambda m: (
            next(n for n in m.graph.node if n.op_type == "Transpose").attribute[0].ints.__setitem__(slice(None), [0, 3, 2, 1])
        ),
    )
    (proof,) = certify(model, broken, result.report.layers).layers.values()
    assert proof.status == "refuted" and "not 'x' in NCHW" in proof.detail


def test_a_wrong_output_transpose_is_a_definite_problem_at_the_output() -> None:
    model = dense_model(x_shape=(2, H, W_, C))
    result, broken = _broken(
        model,
        lambda m: (
            [n for n in m.graph.node if n.op_type == "Transpose"][-1].attribute[0].ints.__setitem__(slice(None), [0, 3, 2, 1])
        ),
    )
    cert = certify(model, broken, result.report.layers)
    assert cert.refuted and any("output 'y' is Transpose('y', [0, 2, 1, 3])" in p for p in cert.problems), cert.problems


def test_a_tampered_constant_elsewhere_is_refuted() -> None:
    """Not only the layers: the layer scale the cleanup re-laid out must be the original's, transposed."""
    model = graphs.convnext_block()
    result = converter.rewrite(model)
    assert certify(model, result.model, result.report.layers).proved
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    inits = {t.name for t in broken.graph.initializer}
    mul = next(n for n in broken.graph.node if n.op_type == "Mul" and n.input[1] in inits and n.input[1].endswith("_0312"))
    _set_init(broken, mul.input[1], lambda v: v * np.float32(1.0001))
    cert = certify(model, broken, result.report.layers)
    assert not cert.proved and cert.unproved and "constant differs" in cert.unproved[0], cert.to_dict()


def test_an_inserted_node_leaves_the_output_unproved() -> None:
    model = dense_model(x_shape=(2, H, W_, C))

    def insert(m: onnx.ModelProto) -> None:
        conv = _conv(m)
        out = conv.output[0]
        conv.output[0] = "moved"
        m.graph.node.insert(list(m.graph.node).index(conv) + 1, helper.make_node("Relu", ["moved"], [out], name="extra"))

    result, broken = _broken(model, insert)
    cert = certify(model, broken, result.report.layers)
    assert not cert.proved and cert.unproved and "Relu 'extra'" in cert.unproved[0]


def test_a_layer_claim_that_is_not_a_dense_layer_in_the_original_is_refuted() -> None:
    model = dense_model(x_shape=(2, H, W_, C))
    result = converter.rewrite(model)
    (layer,) = result.report.layers
    wrong = type(layer)(layer.graph, layer.anchor, "W", layer.output, layer.conv)  # claims to read the weight
    cert = certify(model, result.model, [wrong])
    assert cert.layers[layer.conv].status == "refuted" and "reads 'x', not 'W'" in cert.layers[layer.conv].detail


def test_a_graph_output_of_another_tensor_is_refuted() -> None:
    b = Builder(1)
    a = b.op("Relu", b.dense("x", C, K))
    c = b.op("Sigmoid", a)
    model = b.model([("x", [2, H, W_, C])], [a, c])
    result = converter.rewrite(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    broken.graph.output[0].name, broken.graph.output[1].name = broken.graph.output[1].name, broken.graph.output[0].name
    cert = certify(model, broken, result.report.layers)
    assert cert.refuted


def test_subgraph_layers_are_proved_and_a_broken_branch_is_found() -> None:
    model = graphs.dense_in_if()
    result = converter.rewrite(model)
    assert certify(model, result.model, result.report.layers).proved
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    else_branch = next(a.g for a in broken.graph.node[0].attribute if a.name == "else_branch")
    conv = next(n for n in else_branch.node if n.op_type == "Conv")
    t = next(t for t in else_branch.initializer if t.name == conv.input[1])
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, ::-1].copy(), t.name))
    cert = certify(model, broken, result.report.layers)
    assert cert.layers[conv.name].status == "refuted" and not cert.proved


def test_an_unchanged_model_is_proved_without_layers() -> None:
    model = graphs.resnet_style()
    assert certify(model, model, []).proved


def test_the_certificate_shares_no_code_with_what_it_checks() -> None:
    """A bug in a rule or a pass must not be able to hide by being repeated in the checker."""
    source = Path(converter.__file__).with_name("certify.py").read_text()
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
        and node.level > 0
        or isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("converter")
    }
    assert imported <= {"report"}, imported


def test_elementwise_ops_in_another_layout_are_proved_only_for_elementwise_ops() -> None:
    """A Softmax read in NCHW where the original had NHWC would normalize over the wrong axis."""
    b = Builder(2)
    y = b.op("Softmax", b.dense("x", C, K), axis=-1)
    model = b.model([("x", [2, H, W_, C])], [y])
    result = converter.rewrite(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    # Move the back-Transpose below the Softmax, as a careless cleanup would.
    nodes = list(broken.graph.node)
    back = next(n for n in nodes if n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 2, 3, 1])
    softmax = next(n for n in nodes if n.op_type == "Softmax")
    conv_out, out = back.input[0], softmax.output[0]
    softmax.input[0], softmax.output[0] = conv_out, "sm_nchw"
    back.input[0], back.output[0] = "sm_nchw", out
    broken.graph.ClearField("node")
    broken.graph.node.extend([n for n in nodes if n is not back] + [back])
    onnx.checker.check_model(broken)
    cert = certify(model, broken, result.report.layers)
    assert not cert.proved and "only elementwise ops allow" in cert.unproved[0]


def test_float_and_int_constant_nodes_compare_by_value() -> None:
    model = dense_model(x_shape=(2, H, W_, C), weight="constant_node", bias="constant_node")
    result = converter.rewrite(model)
    assert certify(model, result.model, result.report.layers).proved
    g = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value_float=2.0), helper.make_node("Mul", ["x", "k"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    a = helper.make_model(g)
    b = onnx.ModelProto()
    b.CopyFrom(a)
    b.graph.node[0].attribute[0].f = 3.0
    assert certify(a, a, []).proved and not certify(a, b, []).proved
