"""The certificate on token layers (``tokens=True``): a [B, S, C] activation read as [B, C, 1, S].

Layouts with added unit axes (``Unsqueeze``) are facts like Transposes: ``(0, 2, None, 1)`` is a
[B, S, C] tensor shown as [B, C, 1, S]. Every token rewrite is proved; each way of getting the layout
wrong is refuted or left unproved, never proved.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import converter
from converter.verifier.certificate import certify
from converter.verifier.certificate.layouts import compose, relative, squeezed, unsqueezed
from models.graphs import Builder
from tests.conftest import C, K
from tests.rewriter.rules.test_matmul_tokens_to_conv import S, token_mixing, tokens_model, transformer_block


def _proved(model: onnx.ModelProto, **kw) -> tuple[converter.RewriteResult, object]:  # noqa: ANN003
    result = converter.rewrite(model, tokens=True, **kw)
    assert result.report.rewritten >= 1
    return result, certify(model, result.model, result.report.layers)


# -- the layout algebra ----------------------------------------------------------------------------


def test_unit_axes_compose_with_transposes() -> None:
    swap = (0, 2, 1)
    assert unsqueezed(swap, None, [2]) == (0, 2, None, 1)  # [B, S, C] -> [B, C, S] -> [B, C, 1, S]
    assert unsqueezed(None, 3, [-1]) == (0, 1, 2, None)
    assert squeezed((0, 2, None, 1), [2]) == swap
    assert compose((0, 2, None, 1), (0, 2, 3, 1)) == (0, None, 1, 2)  # NCHW back to NHWC-like order
    assert squeezed(compose((0, 2, None, 1), (0, 2, 3, 1)), [1]) is None  # the original itself
    # what one layout is, seen from another of the same root
    assert relative((0, 2, 1), (0, 2, None, 1)) == (0, 1, None, 2)
    assert compose((0, 2, 1), relative((0, 2, 1), (0, 2, None, 1))) == (0, 2, None, 1)


@pytest.mark.parametrize(
    "perm, axes",
    [
        (None, [1]),  # an axis of the root, not an added one
        ((0, 2, None, 1), [1]),
        ((0, 2, None, 1), [2, 2]),
        ((0, 2, None, 1), []),
    ],
)
def test_squeezing_an_axis_of_the_root_is_not_a_layout_change(perm, axes) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        squeezed(perm, axes)


def test_a_layout_that_drops_an_axis_is_not_relative_to_one_that_has_it() -> None:
    with pytest.raises(ValueError):
        relative((0, None, 1), (0, 1))  # the unit axis is gone: not a Transpose of it
    with pytest.raises(ValueError):
        relative((0, 1, 2), (0, 2))


# -- rewrites are proved ---------------------------------------------------------------------------

CORRECT = {
    "dense + bias": lambda: tokens_model(),
    "no bias": lambda: tokens_model(bias=None),
    "pre-LN MLP block": lambda: transformer_block(),
    "token mixing": lambda: token_mixing(),
    "token mixing, no residual": lambda: token_mixing(residual=False, bias=False),
    "token mixing with a side reader": lambda: token_mixing(side_reader=True),
}


@pytest.mark.parametrize("layout", ["keep-all", "nchw"])
@pytest.mark.parametrize("name", list(CORRECT))
def test_every_token_rewrite_is_proved(name: str, layout: str) -> None:
    model = CORRECT[name]()
    result, cert = _proved(model, layout=layout)
    assert cert.proved, cert.to_dict()
    assert set(cert.layers) == {layer.conv for layer in result.report.layers}


def test_a_stack_with_its_layernorms_over_the_channel_axis_is_proved() -> None:
    """--layout nchw writes the LayerNorms out over the Conv's channel axis of [B, C, 1, S]."""
    b = Builder(4)
    x = b.op("Transpose", "x", perm=[0, 2, 1])
    for _ in range(2):
        x = b.op("Add", x, b.dense(b.gelu(b.dense(b.layernorm(x, C), C, 2 * C)), 2 * C, C))
    model = b.model([("x", ["B", C, "S"])], [x])
    result, cert = _proved(model, layout="nchw")
    assert "LayerNormalization" not in {n.op_type for n in result.model.graph.node}
    assert cert.proved, cert.to_dict()


def test_without_the_cleanup_the_unit_axes_are_followed_too() -> None:
    model = transformer_block()
    _, cert = _proved(model, fold_transposes=False)
    assert cert.proved, cert.to_dict()


# -- and broken ones are not -----------------------------------------------------------------------


def _edited(model: onnx.ModelProto, edit, **kw) -> tuple[converter.RewriteResult, onnx.ModelProto]:  # noqa: ANN001, ANN003
    result = converter.rewrite(model, tokens=True, layout="keep-all", fold_transposes=False, **kw)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    edit(broken)
    return result, broken


def _node(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


def _set_axes(model: onnx.ModelProto, node: onnx.NodeProto, axes: list[int]) -> None:
    name = f"{node.name}_axes_edit"
    model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
    node.input[1] = name


def _refuted(model: onnx.ModelProto, result: converter.RewriteResult, broken: onnx.ModelProto) -> None:
    cert = certify(model, broken, result.report.layers)
    assert not cert.proved
    assert cert.refuted, cert.to_dict()


def test_a_conv_reading_the_tokens_as_channels_is_refuted() -> None:
    """Without the Transpose [0, 2, 1] the Conv reads [B, S, 1, C]: its channels are the tokens."""
    model = tokens_model(x_shape=(2, C, C))  # S == C, so onnxruntime would even run it

    def edit(m: onnx.ModelProto) -> None:
        t = _node(m, "Transpose")
        _node(m, "Unsqueeze").input[0] = t.input[0]

    _refuted(model, *_edited(model, edit))


def test_the_unit_axis_in_the_wrong_place_is_refuted() -> None:
    """[B, C, S, 1] holds the same numbers for a 1x1 Conv, but it is not the layout the layer claims:
    the Squeeze after it then squeezes an axis of the original (size 1 only by chance), which is no fact."""
    model = tokens_model()

    def edit(m: onnx.ModelProto) -> None:
        _set_axes(m, _node(m, "Unsqueeze"), [3])

    result, broken = _edited(model, edit)
    cert = certify(model, broken, result.report.layers)
    assert not cert.proved
    assert any(p.status == "refuted" for p in cert.layers.values()), cert.to_dict()


def test_a_squeeze_of_another_axis_is_not_followed() -> None:
    """Squeeze(axes=[1]) of [B, K, 1, S] (K == 1 would make it run) is not the layer's way back."""
    model = tokens_model()

    def edit(m: onnx.ModelProto) -> None:
        _set_axes(m, _node(m, "Squeeze"), [1])

    result, broken = _edited(model, edit)
    cert = certify(model, broken, result.report.layers)
    assert not cert.proved


def _reversed_constant(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    t = next(t for t in broken.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[..., ::-1, :].copy(), t.name))
    return broken


def test_a_wrong_constant_between_token_layers_is_refuted() -> None:
    """A per-channel constant the cleanup moved between two token layers ([B, K, S]) must be the original's
    laid out as [1, K, 1]."""
    b = Builder(6)
    scale = b.const(np.linspace(0.5, 2.0, K).astype(np.float32))
    h = b.op("Mul", b.dense("x", C, K), scale)
    model = b.model([("x", ["B", S, C])], [b.op("Relu", b.dense(h, K, C))])
    result = converter.rewrite(model, tokens=True, layout="keep-all")
    mul = _node(result.model, "Mul")
    const = next((t for t in result.model.graph.initializer if t.name in mul.input), None)
    assert const is not None and list(const.dims) == [1, K, 1], "the cleanup moved the Mul into [B, K, S]"
    assert certify(model, result.model, result.report.layers).proved
    cert = certify(model, _reversed_constant(result.model, const.name), result.report.layers)
    assert not cert.proved and "constant differs" in str(cert.to_dict()), cert.to_dict()


def _moved_into_token_layout(op: str, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    """``model`` (a token layer whose output feeds one ``op``) rewritten, then edited by hand: the ``op`` moved
    inside the unit-axis layout [B, K, 1, S], between the Conv and its Squeeze, reading the Conv's output.
    Its other inputs and attributes are the caller's to set. (result, layer claims)."""
    result = converter.rewrite(model, tokens=True, layout="keep-all", fold_transposes=False)
    hand = onnx.ModelProto()
    hand.CopyFrom(result.model)
    squeeze, moved = _node(hand, "Squeeze"), _node(hand, op)
    conv_out, out = squeeze.input[0], moved.output[0]
    moved.input[0], moved.output[0] = conv_out, f"{op.lower()}_nc1s"
    squeeze.input[0] = moved.output[0]
    back = next(n for n in hand.graph.node if n.op_type == "Transpose" and n.input[0] == squeeze.output[0])
    back.output[0] = out
    nodes = [n for n in hand.graph.node if n is not moved]
    at = nodes.index(squeeze)
    hand.graph.ClearField("node")
    hand.graph.node.extend([*nodes[:at], moved, *nodes[at:]])
    return hand, result.report.layers


def _mul_in_token_layout(scale_nc11: np.ndarray) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    """Original ``Mul(MatMul(x, W), s)`` on [B, S, C]; rewritten by hand with the Mul inside the unit-axis layout
    [B, K, 1, S], between the Conv and its Squeeze, reading ``scale_nc11`` (the right value: s as [1, K, 1, 1])."""
    b = Builder(8)
    s = np.linspace(0.5, 2.0, K).astype(np.float32)
    model = b.model([("x", ["B", S, C])], [b.op("Mul", b.dense("x", C, K, bias=False), b.const(s))])
    hand, layers = _moved_into_token_layout("Mul", model)
    hand.graph.initializer.append(numpy_helper.from_array(scale_nc11, "s_nc11"))
    _node(hand, "Mul").input[1] = "s_nc11"
    return model, hand, layers


def test_constants_in_the_unit_axis_layout_are_compared_laid_out() -> None:
    s = np.linspace(0.5, 2.0, K).astype(np.float32).reshape(1, K, 1, 1)
    model, hand, layers = _mul_in_token_layout(s)
    cert = certify(model, hand, layers)
    assert cert.proved, cert.to_dict()
    model, hand, layers = _mul_in_token_layout(s[:, ::-1].copy())
    cert = certify(model, hand, layers)
    assert not cert.proved and "constant differs" in str(cert.to_dict()), cert.to_dict()


def test_a_token_layer_claimed_on_an_image_is_refuted() -> None:
    """An image layer's Conv must read NCHW; a rewritten graph feeding it the token layout is refuted."""
    b = Builder(7)
    model = b.model([("x", [2, 3, 5, C])], [b.dense("x", C, K)])
    result = converter.rewrite(model, layout="keep-all", fold_transposes=False)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    conv = _node(broken, "Conv")
    broken.graph.node.insert(0, helper.make_node("Unsqueeze", ["x", "ax"], ["x5"]))
    broken.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "ax"))
    conv.input[0] = "x5"
    cert = certify(model, broken, result.report.layers)
    assert cert.refuted


# -- and by the whole verification -----------------------------------------------------------------


def test_token_layers_pass_verification_with_both_proofs() -> None:
    """Structure proved and numbers checked in the [B, 1, S, C] view of the original [B, S, C] tensors."""
    model = transformer_block()
    check = converter.verify(model, converter.rewrite(model, tokens=True))
    assert check.passed, check.to_dict()
    assert [(layer.structure, layer.numbers) for layer in check.layers] == [("proved", "passed")] * 2
    (x,) = check.inputs
    b, s, c = x.shape
    assert b == 2 and s not in (1, c)
    assert all(layer.shape == [b, 1, s, layer.shape[3]] and not layer.weak_shape for layer in check.layers)


def test_a_token_layer_with_as_many_tokens_as_channels_is_weak() -> None:
    """S == C: a swapped token and channel axis keeps every shape; the numbers alone could miss it."""
    model = tokens_model(x_shape=(2, C, C))
    check = converter.verify(model, converter.rewrite(model, tokens=True))
    assert check.passed and check.layers[0].weak_shape


# -- ViT's class token: Expand(cls, shape) moved into the patches' layout ---------------------------


@pytest.mark.parametrize("shape", ["batch", "constant_rows", "runtime_rows"])
def test_a_relaid_class_token_expand_is_proved(shape: str) -> None:
    from tests.rewriter.cleanup._harness import cleaned, transposes
    from tests.rewriter.cleanup.test_expand import class_token

    model = class_token(shape)
    out, _ = cleaned(model)
    assert transposes(out) == 0
    cert = certify(model, out, [])
    assert cert.proved, cert.to_dict()


@pytest.mark.parametrize("edit", ["identity_order", "repeated_entry", "constant_not_laid_out", "other_shape"])
def test_a_wrongly_relaid_expand_is_not_proved(edit: str) -> None:
    from tests.rewriter.cleanup._harness import cleaned
    from tests.rewriter.cleanup.test_expand import class_token

    model = class_token("runtime_rows")
    out, _ = cleaned(model)
    expand = next(n for n in out.graph.node if n.op_type == "Expand")
    gather = next(n for n in out.graph.node if expand.input[1] in n.output)
    if edit == "identity_order":  # the shape's entries left in the original order
        out.graph.initializer.append(numpy_helper.from_array(np.array([0, 1, 2], np.int64), "order_edit"))
        gather.input[1] = "order_edit"
    elif edit == "repeated_entry":  # not a reordering: [N, 1, 1] from [N, k, 1] whatever k is
        out.graph.initializer.append(numpy_helper.from_array(np.array([0, 2, 2], np.int64), "order_edit"))
        gather.input[1] = "order_edit"
    elif edit == "constant_not_laid_out":
        original = next(n for n in model.graph.node if n.op_type == "Expand")
        out.graph.initializer.extend(t for t in model.graph.initializer if t.name == original.input[0])
        expand.input[0] = original.input[0]
    else:  # the Gather reads another shape tensor than the original Expand did (one of other values: [N, 3, 1]
        # would be the same constant, proved by value)
        out.graph.initializer.append(numpy_helper.from_array(np.array([2, 4, 1], np.int64), "shape_edit"))
        gather.input[0] = "shape_edit"
    assert not certify(model, out, []).proved


# -- nn.MultiheadAttention's out_proj: heads [S, B, H, D] merged by Reshape [0, 0, C] ----------------

SANDWICHES = [("runtime", "Gemm", "gemm"), ("static", "MatMul", "add"), ("mha_ts", "Gemm", "gemm"), ("mha_dynamo", "Gemm", "gemm")]


@pytest.mark.parametrize(("form", "core", "bias"), SANDWICHES)
@pytest.mark.parametrize("fold", [False, True])
def test_token_sandwiches_are_proved(form: str, core: str, bias: str, fold: bool) -> None:
    from tests.rewriter.rules.test_tensordot_to_conv import ST, E, token_sandwich

    model = token_sandwich(form, core, bias, (3, ST, E) if form == "static" else ("B", ST, E))
    result = converter.rewrite(model, tokens=True, layout="keep-all", fold_transposes=fold)
    assert result.report.rewritten == 1
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved, cert.to_dict()


@pytest.mark.parametrize("edit", ["merge_from_axis_1", "allowzero", "not_the_heads"])
def test_a_wrong_merge_of_the_heads_is_not_proved(edit: str) -> None:
    from tests.rewriter.rules.test_tensordot_to_conv import ST, E, token_sandwich

    model = token_sandwich("mha_ts", "Gemm", "gemm", ("B", ST, E))
    result = converter.rewrite(model, tokens=True, layout="keep-all", fold_transposes=False)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    merge = next(n for n in broken.graph.node if n.name.endswith("_merge_channels"))
    if edit == "merge_from_axis_1":  # [S, B*H*D]: every position's channels mixed with the batch
        _set_axes(broken, merge, [0, -1])
    elif edit == "allowzero":  # 0 is then a zero, not "copy this dim"
        merge.attribute.append(helper.make_attribute("allowzero", 1))
    else:  # the heads before the attention (Relu) made them
        relu = next(n for n in broken.graph.node if n.op_type == "Relu")
        merge.input[0] = relu.input[0]
    cert = certify(model, broken, result.report.layers)
    assert not cert.proved


def _softmax_in_token_layout(axis: int) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    """Original ``Softmax(MatMul(x, W), axis=-1)`` on [B, S, C]; rewritten by hand with the Softmax inside the
    unit-axis layout [B, K, 1, S] (between the Conv and its Squeeze) at ``axis``: 1 is the original's."""
    b = Builder(9)
    model = b.model([("x", ["B", S, C])], [b.op("Softmax", b.dense("x", C, K, bias=False), axis=-1)])
    hand, layers = _moved_into_token_layout("Softmax", model)
    softmax = _node(hand, "Softmax")
    del softmax.attribute[:]
    softmax.attribute.append(helper.make_attribute("axis", axis))
    return model, hand, layers


@pytest.mark.parametrize(("axis", "proved"), [(1, True), (-3, True), (2, False), (3, False), (0, False)])
def test_an_axis_op_in_the_unit_axis_layout_needs_the_original_axis(axis: int, proved: bool) -> None:
    """Axis 1 of [B, K, 1, S] is the original's last axis (K); the added unit axis (2) is none of the original's."""
    model, hand, layers = _softmax_in_token_layout(axis)
    assert certify(model, hand, layers).proved is proved


def test_a_no_op_merge_reshape_in_the_original_is_the_same_fact_on_both_sides() -> None:
    """``Reshape(x [B, S, C], [0, 0, C]) -> MatMul -> Reshape [0, 0, K]``: the token rule takes the inner MatMul;
    the original's Reshape and its unchanged copy in the result must get one fact (they got two: refuted)."""
    b = Builder(12)
    xf = b.op("Reshape", "x", b.const(np.array([0, 0, C]), np.int64))
    y = b.op("Reshape", b.dense(xf, C, K, bias=False), b.const(np.array([0, 0, K]), np.int64))
    model = b.model([("x", [2, S, C])], [y])
    result = converter.rewrite(model, tokens=True, layout="keep-all")  # the certificate's case, whatever the optimizer's cost
    assert result.report.rewritten == 1
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved, cert.to_dict()
