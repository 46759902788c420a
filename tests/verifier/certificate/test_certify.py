"""The structural certificate: it proves every rewrite the converter makes, and refutes or cannot prove a broken one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate import certify
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
    "weights and biases behind Identity, Cast, Transpose": lambda: dense_model(weight="transposed", bias="identity"),
    "fp16 weight behind Cast, bias behind Unsqueeze": lambda: dense_model(weight="cast", bias="unsqueezed", bias_shape=(1, K)),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_every_rewrite_the_converter_makes_is_proved(name: str) -> None:
    model = CORRECT[name]()
    result = converter.rewrite(model, layout="keep-all")  # every layer, so that every rewrite is proved
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
        (lambda m: _conv(m).attribute.append(helper.make_attribute("kernel_shape", [1, 3])), "kernel_shape="),
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


def _back_transpose_moved_below(op_type: str, *extra: np.ndarray, **attrs) -> tuple:  # noqa: ANN003
    """A dense layer followed by ``op_type``, rewritten without cleanup, then broken as a careless cleanup
    would: the back-Transpose moved below the op, whose attributes stay as they were. (model, broken, layers)."""
    b = Builder(2)
    y = b.op(op_type, b.dense("x", C, K), *(b.const(e, e.dtype.type) for e in extra), **attrs)
    model = b.model([("x", [2, H, W_, C])], [y])
    result = converter.rewrite(model, fold_transposes=False)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    nodes = list(broken.graph.node)
    back = next(n for n in nodes if n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 2, 3, 1])
    op = next(n for n in nodes if n.op_type == op_type)
    conv_out, out = back.input[0], op.output[0]
    op.input[0], op.output[0] = conv_out, "op_nchw"
    back.input[0], back.output[0] = "op_nchw", out
    broken.graph.ClearField("node")
    broken.graph.node.extend([n for n in nodes if n is not back] + [back])
    onnx.checker.check_model(broken)
    return model, broken, result.report.layers


def test_an_axis_op_moved_to_another_layout_with_its_axis_unchanged_is_not_proved() -> None:
    """A Softmax read in NCHW where the original had NHWC, still on axis -1, normalizes over the wrong axis."""
    model, broken, layers = _back_transpose_moved_below("Softmax", axis=-1)
    cert = certify(model, broken, layers)
    assert not cert.proved and "the Softmax axis is not the original's under the layout" in cert.unproved[0]
    # With the axis seen through the layout (channels are axis 1 in NCHW), the same move is proved.
    moved = next(n for n in broken.graph.node if n.op_type == "Softmax")
    next(a for a in moved.attribute if a.name == "axis").i = 1
    assert certify(model, broken, layers).proved


def test_a_non_elementwise_op_without_axes_is_not_proved_in_another_layout() -> None:
    """CumSum is neither elementwise nor an axis op the checker knows: read in another layout, it has no counterpart."""
    model, broken, layers = _back_transpose_moved_below("CumSum", np.array(-1, np.int64))
    cert = certify(model, broken, layers)
    assert not cert.proved and "only elementwise and axis ops allow" in cert.unproved[0]


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


# --- ops with axes, read in another layout (what the Transpose cleanup makes of them) ----------------
# The original reads t = Transpose(x, NHWC) of an NCHW input; the rewritten graph runs the op on x itself,
# with the axes seen through the layout, and transposes after. Each pair is checked by onnxruntime first,
# so the test cannot prove a wrong pair; then a wrong axis must not be proved.
NCHW_IN = [2, 6, 5, 7]  # N > 1, H != W, C apart from both


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _axis_pair(op: str, wrong: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(original, rewritten) for one op; ``wrong`` puts the rewritten op on the wrong axis."""
    to_nhwc = helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1])
    inits_o: list[onnx.TensorProto] = []
    inits_r: list[onnx.TensorProto] = []
    back = [0, 2, 3, 1]  # the rewritten result laid out like the original's
    c_axis = 2 if wrong else 1
    if op == "Softmax":
        orig = [helper.make_node("Softmax", ["t"], ["y"], axis=-1)]
        rew = [helper.make_node("Softmax", ["x"], ["r"], axis=c_axis)]
    elif op == "Concat":
        orig = [helper.make_node("Concat", ["t", "t"], ["y"], axis=3)]
        rew = [helper.make_node("Concat", ["x", "x"], ["r"], axis=c_axis)]
    elif op == "Slice":
        inits_o = [_ints("s", [1]), _ints("e", [4]), _ints("a", [3])]
        inits_r = [_ints("s", [1]), _ints("e", [4]), _ints("ar", [c_axis])]
        orig = [helper.make_node("Slice", ["t", "s", "e", "a"], ["y"])]
        rew = [helper.make_node("Slice", ["x", "s", "e", "ar"], ["r"])]
    elif op == "Pad":  # NHWC pads: begins n, h, w, c then ends
        inits_o = [_ints("p", [0, 1, 0, 2, 0, 0, 3, 1])]
        nchw = [0, 2, 1, 0, 0, 1, 0, 3] if not wrong else [0, 1, 2, 0, 0, 0, 1, 3]
        inits_r = [_ints("pr", nchw)]
        orig = [helper.make_node("Pad", ["t", "p"], ["y"])]
        rew = [helper.make_node("Pad", ["x", "pr"], ["r"])]
    elif op == "ReduceMean_keepdims":
        orig = [helper.make_node("ReduceMean", ["t"], ["y"], axes=[1, 2])]
        rew = [helper.make_node("ReduceMean", ["x"], ["r"], axes=[1, 3] if wrong else [2, 3])]
    elif op == "ReduceSum_input_axes":
        inits_o, inits_r = [_ints("a", [-1])], [_ints("ar", [c_axis])]
        orig = [helper.make_node("ReduceSum", ["t", "a"], ["y"])]
        rew = [helper.make_node("ReduceSum", ["x", "ar"], ["r"])]
    elif op == "ReduceMean_dropped":  # [N, C] either way: no Transpose after
        orig = [helper.make_node("ReduceMean", ["t"], ["y"], axes=[1, 2], keepdims=0)]
        rew = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 3] if wrong else [2, 3], keepdims=0)]
        back = []
    elif op == "Split":
        orig = [helper.make_node("Split", ["t", "sp"], ["y", "y2"], axis=3)]
        rew = [helper.make_node("Split", ["x", "sp"], ["r", "r2"], axis=c_axis)]
        inits_o = inits_r = [_ints("sp", [2, 4])]
    elif op == "Unsqueeze":
        inits_o, inits_r = [_ints("a", [1])], [_ints("a", [1])]
        orig = [helper.make_node("Unsqueeze", ["t", "a"], ["y"])]
        rew = [helper.make_node("Unsqueeze", ["x", "a"], ["r"])]
        back = [0, 1, 4, 3, 2] if wrong else [0, 1, 3, 4, 2]
    elif op == "Gather":
        inits_o = inits_r = [numpy_helper.from_array(np.array(2, np.int64), "i")]
        orig = [helper.make_node("Gather", ["t", "i"], ["y"], axis=3)]
        rew = [helper.make_node("Gather", ["x", "i"], ["y"], axis=c_axis)]
        back = []
    else:
        raise ValueError(op)
    outs = [o for n in orig for o in n.output]
    rew_nodes = list(rew)
    if back:
        rew_nodes += [helper.make_node("Transpose", [r], [y], perm=back) for r, y in zip(rew[0].output, outs, strict=True)]
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, NCHW_IN)]
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    opset = [helper.make_opsetid("", 17)]
    original = helper.make_model(helper.make_graph([to_nhwc, *orig], "o", x, ys, inits_o), opset_imports=opset)
    rewritten = helper.make_model(helper.make_graph(rew_nodes, "r", x, ys, inits_r), opset_imports=opset)
    return original, rewritten


AXIS_CASES = [
    "Softmax",
    "Concat",
    "Slice",
    "Pad",
    "ReduceMean_keepdims",
    "ReduceSum_input_axes",
    "ReduceMean_dropped",
    "Split",
    "Unsqueeze",
    "Gather",
]


@pytest.mark.parametrize("op", AXIS_CASES)
def test_axis_ops_read_in_another_layout_are_proved(op: str) -> None:
    import onnxruntime as ort

    original, rewritten = _axis_pair(op)
    x = np.random.default_rng(0).standard_normal(NCHW_IN).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (original, rewritten)]
    for a, b in zip(run[0].run(None, {"x": x}), run[1].run(None, {"x": x}), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    cert = certify(original, rewritten, [])
    assert cert.proved, (cert.problems, cert.unproved)


@pytest.mark.parametrize("op", AXIS_CASES)
def test_axis_ops_on_the_wrong_axis_are_not_proved(op: str) -> None:
    original, rewritten = _axis_pair(op, wrong=True)
    assert not certify(original, rewritten, []).proved


def test_softmax_before_opset_13_is_not_proved_in_another_layout() -> None:
    """Softmax-11 flattens at its axis: the same axis in another layout is another computation."""
    original, rewritten = _axis_pair("Softmax")
    for m in (original, rewritten):
        m.opset_import[0].version = 11
    assert not certify(original, rewritten, []).proved


@pytest.mark.parametrize("axis, proved", [(1, True), (2, False)])
def test_softmax_before_opset_13_is_proved_where_the_layout_keeps_its_block(axis: int, proved: bool) -> None:
    """Softmax-11 on axis 1 normalizes each [H, W, C] block of an NHWC view: the same op on axis 1 of the NCHW
    tensor normalizes the same elements ([C, H, W]), so it is proved; on axis 2 the blocks differ."""
    import onnxruntime as ort

    to_nhwc = helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1])
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, NCHW_IN)]
    y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    opset = [helper.make_opsetid("", 11)]
    original = helper.make_model(
        helper.make_graph([to_nhwc, helper.make_node("Softmax", ["t"], ["y"], axis=axis)], "o", x, y), opset_imports=opset
    )
    moved = [
        helper.make_node("Softmax", ["x"], ["r"], axis=axis),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1]),
    ]
    rewritten = helper.make_model(helper.make_graph(moved, "r", x, y), opset_imports=opset)
    feed = {"x": np.random.default_rng(0).standard_normal(NCHW_IN).astype(np.float32)}
    a, b = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for m in (original, rewritten)
    )
    assert np.allclose(a, b, rtol=1e-5, atol=1e-6) == proved  # onnxruntime agrees with the certificate
    assert certify(original, rewritten, []).proved == proved


def test_a_layout_change_that_a_pool_over_h_and_w_absorbs_is_proved() -> None:
    """Swapping H and W before a mean over both changes nothing: the certificate proves it, onnxruntime agrees."""
    import onnxruntime as ort

    b = Builder(4)
    y = b.op("ReduceMean", b.dense("x", C, K), axes=[1, 2], keepdims=0)
    model = b.model([("x", [2, H, W_, C])], [y])
    result = converter.rewrite(model, fold_transposes=False)
    swapped = onnx.ModelProto()
    swapped.CopyFrom(result.model)
    back = next(n for n in swapped.graph.node if n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 2, 3, 1])
    back.attribute[0].ints[:] = [0, 3, 2, 1]
    x = np.random.default_rng(0).standard_normal((2, H, W_, C)).astype(np.float32)
    a, b_ = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, swapped))
    np.testing.assert_allclose(a.run(None, {"x": x})[0], b_.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert certify(model, swapped, result.report.layers).proved


def _layernorm_pair(opset: int = 17, axes: list[int] | None = None, eps: float = 1e-6, fp16: bool = False):  # noqa: ANN202
    """The original: LayerNormalization over channels of an NHWC view of an NCHW input; the rewritten graph:
    its ONNX function body written out over axis 1 of the NCHW input (the cleanup's opt-in form)."""
    rng = np.random.default_rng(3)
    c = NCHW_IN[1]
    dt = np.float16 if fp16 else np.float32
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    scale, bias = rng.standard_normal(c).astype(dt), rng.standard_normal(c).astype(dt)
    orig_nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "s", "b"], ["ln"], axis=-1, epsilon=1e-6),
        helper.make_node("Transpose", ["ln"], ["y"], perm=[0, 3, 1, 2]),
    ]
    axes = axes or [1]
    if opset >= 18:
        ax_in, ax_attr, extra = ["ax"], {}, [_ints("ax", axes)]
    else:
        ax_in, ax_attr, extra = [], {"axes": axes}, []
    x = "x"
    rew = []
    if fp16:
        rew.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    rew += [
        helper.make_node("ReduceMean", [x, *ax_in], ["mean"], keepdims=1, **ax_attr),
        helper.make_node("Sub", [x, "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", *ax_in], ["var"], keepdims=1, **ax_attr),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
    ]
    n = "n"
    if fp16:
        rew.append(helper.make_node("Cast", ["n"], ["nh"], to=TensorProto.FLOAT16))
        n = "nh"
    rew += [helper.make_node("Mul", [n, "s4"], ["sc"]), helper.make_node("Add", ["sc", "b4"], ["y"])]
    io_in = [helper.make_tensor_value_info("x", elem, NCHW_IN)]
    io_out = [helper.make_tensor_value_info("y", elem, NCHW_IN)]
    opsets = [helper.make_opsetid("", opset)]
    o_inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(bias, "b")]
    r_inits = [
        numpy_helper.from_array(scale.reshape(1, c, 1, 1), "s4"),
        numpy_helper.from_array(bias.reshape(1, c, 1, 1), "b4"),
        numpy_helper.from_array(np.array(eps, np.float32), "eps"),
        *extra,
    ]
    original = helper.make_model(helper.make_graph(orig_nodes, "o", io_in, io_out, o_inits), opset_imports=opsets)
    rewritten = helper.make_model(helper.make_graph(rew, "r", io_in, io_out, r_inits), opset_imports=opsets)
    return original, rewritten


@pytest.mark.parametrize("opset, fp16", [(17, False), (18, False), (17, True)])
def test_a_layernorm_written_out_over_the_channel_axis_is_proved(opset: int, fp16: bool) -> None:
    import onnxruntime as ort

    original, rewritten = _layernorm_pair(opset, fp16=fp16)
    x = np.random.default_rng(1).standard_normal(NCHW_IN).astype(np.float16 if fp16 else np.float32)
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (original, rewritten))
    tol = 2e-2 if fp16 else 1e-5
    np.testing.assert_allclose(a.run(None, {"x": x})[0], b.run(None, {"x": x})[0], rtol=tol, atol=tol)
    cert = certify(original, rewritten, [])
    assert cert.proved, (cert.problems, cert.unproved)


@pytest.mark.parametrize("wrong", [{"axes": [2]}, {"axes": [1, 2]}, {"eps": 1e-5}])
def test_a_written_out_layernorm_on_other_axes_or_epsilon_is_not_proved(wrong: dict) -> None:
    original, rewritten = _layernorm_pair(**wrong)
    assert not certify(original, rewritten, []).proved


def test_a_written_out_layernorm_with_a_wrong_scale_is_not_proved() -> None:
    original, rewritten = _layernorm_pair()
    s4 = next(t for t in rewritten.graph.initializer if t.name == "s4")
    value = numpy_helper.to_array(s4).copy()
    value[0, 0] += 1
    s4.CopyFrom(numpy_helper.from_array(value, "s4"))
    assert not certify(original, rewritten, []).proved


@pytest.mark.parametrize("indices", [np.array(2), np.array([0, 2]), np.array([[0, 2], [1, 1], [3, 0]])], ids=["m0", "m1", "m2"])
def test_gather_in_another_layout_is_proved_for_indices_of_any_rank(indices: np.ndarray) -> None:
    """Gather on the channel axis of an NHWC view equals Gather on axis 1 of the NCHW tensor, then the Transpose
    that puts the indices' axes where the original has them; onnxruntime checks the pair first."""
    import onnxruntime as ort

    m = indices.ndim
    back = [0, *range(1 + m, 3 + m), *range(1, 1 + m)]  # [N, idx..., H, W] -> [N, H, W, idx...]
    to_nhwc = helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1])
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, NCHW_IN)]
    y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    opset = [helper.make_opsetid("", 17)]
    idx = [numpy_helper.from_array(indices.astype(np.int64), "i")]
    original = helper.make_model(
        helper.make_graph([to_nhwc, helper.make_node("Gather", ["t", "i"], ["y"], axis=3)], "o", x, y, idx), opset_imports=opset
    )
    moved = [helper.make_node("Gather", ["x", "i"], ["r"], axis=1)]
    moved += [helper.make_node("Transpose", ["r"], ["y"], perm=back)] if back != list(range(len(back))) else []
    if not moved[1:]:
        moved[0].output[0] = "y"
    rewritten = helper.make_model(helper.make_graph(moved, "r", x, y, idx), opset_imports=opset)
    feed = {"x": np.random.default_rng(0).standard_normal(NCHW_IN).astype(np.float32)}
    a, b = (
        ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for mm in (original, rewritten)
    )
    np.testing.assert_array_equal(a, b)
    assert certify(original, rewritten, []).proved
    wrong = onnx.ModelProto()
    wrong.CopyFrom(rewritten)
    for node in wrong.graph.node:
        if node.op_type == "Gather":
            node.attribute[0].i = 2  # the H axis instead of C
    assert not certify(original, wrong, []).proved
