"""The layout policy (converter/layout.py): never more Transposes than the original, by structure and by numbers.

The layers that must be declined sit where no cleanup handler will ever move a Transpose: next to an op of
another domain (onnxruntime's com.microsoft Gelu, which it runs) or inside a window partition (MaxViT's
[B, windows, tokens, C]). Inputs have N > 1 and H != W, so a swapped axis cannot hide.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import converter
from converter.errors import InputError
from converter.graph import count_ops
from converter.rewriter.layout import LAYOUT_COST, activations, census
from models.graphs import F32, Builder, convnext_pointwise, with_output_shapes

N, C, H, W = 2, 8, 4, 6  # H != W, both split into 2x2 windows
MS = "com.microsoft"


def ms_gelu(b: Builder, x: str, shape: list[int]) -> str:
    """An op no Transpose handler moves through: another domain's (onnxruntime runs it). Shape inference
    cannot see through it, so its output's type is declared (``b.declared``)."""
    out = b._name("msgelu")
    b.nodes.append(helper.make_node("Gelu", [x], [out], name=out + "_node", domain=MS))
    b.__dict__.setdefault("declared", []).append(helper.make_tensor_value_info(out, F32, shape))
    return out


def model_of(b: Builder, inputs: list, outputs: list[str], name: str = "g") -> onnx.ModelProto:
    graph = helper.make_graph(
        b.nodes,
        name,
        [helper.make_tensor_value_info(n, F32, s) for n, s in inputs],
        [helper.make_tensor_value_info(o, F32, None) for o in outputs],
        b.inits,
        value_info=b.__dict__.get("declared", []),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    return with_output_shapes(model)


def stuck_pair() -> onnx.ModelProto:
    """NHWC in, dense -> com.microsoft Gelu -> dense, out: the two Transposes around the Gelu never go."""
    b = Builder(5)
    y = b.dense(ms_gelu(b, b.dense("x", C, 12), [N, H, W, 12]), 12, C)
    return model_of(b, [("x", [N, H, W, C])], [y])


def mixed_blocks(layernorm: bool = False) -> onnx.ModelProto:
    """NCHW in (a depthwise Conv first, as in ConvNeXt): a ConvNeXt block whose permutes absorb its two layers'
    Transposes (the rewrite removes 2; with a LayerNorm after the first permute, the first Conv still reads a
    Transpose, and the block breaks even), then two blocks with a dense between com.microsoft Gelus (each adds
    2). Rewriting every layer leaves more Transposes than the original."""
    b = Builder(6)
    x = b.depthwise("x", C, 3)
    if layernorm:
        t = b.layernorm(b.op("Transpose", x, perm=[0, 2, 3, 1]), C)
        y = b.dense(b.gelu(b.dense(t, C, 4 * C)), 4 * C, C)
        x = b.op("Add", x, b.op("Transpose", b.op("Mul", y, b.const(b.rng.standard_normal(C) * 0.1)), perm=[0, 3, 1, 2]))
    else:
        x = b.op("Add", x, convnext_pointwise(b, x, C))
    for _ in range(2):
        t = ms_gelu(b, b.op("Transpose", x, perm=[0, 2, 3, 1]), [N, H, W, C])
        x = b.op("Transpose", ms_gelu(b, b.dense(t, C, C), [N, H, W, C]), perm=[0, 3, 1, 2])
        x = b.depthwise(x, C, 3)
    return model_of(b, [("x", [N, C, H, W])], [x])


def window_block(p: int = 2) -> onnx.ModelProto:
    """MaxViT's partition attention MLP: NCHW -> windows [N, windows, tokens, C] -> LayerNorm, dense, GELU, dense,
    residual -> back to NCHW. The dense layers work on grouped tokens: their Transposes can never be shed."""
    b = Builder(7)
    split = b.op("Reshape", "x", b.const(np.array([N, C, H // p, p, W // p, p]), np.int64))
    parts = b.op("Transpose", split, perm=[0, 2, 4, 3, 5, 1])
    tokens = b.op("Reshape", parts, b.const(np.array([N, (H // p) * (W // p), p * p, C]), np.int64))
    y = b.dense(b.gelu(b.dense(b.layernorm(tokens, C), C, 2 * C)), 2 * C, C)
    y = b.op("Add", tokens, y)
    back = b.op("Reshape", y, b.const(np.array([N, H // p, W // p, p, p, C]), np.int64))
    back = b.op("Transpose", back, perm=[0, 5, 1, 3, 2, 4])
    out = b.op("Reshape", back, b.const(np.array([N, C, H, W]), np.int64))
    return model_of(b, [("x", [N, C, H, W])], [out])


def stuck_in_if() -> onnx.ModelProto:
    """The stuck pair inside both branches of an If: subgraphs count like the main graph."""

    def branch(tag: str, seed: int) -> onnx.GraphProto:
        b = Builder(seed, prefix=f"{tag}_")
        y = b.dense(ms_gelu(b, b.dense("x", C, 12), [N, H, W, 12]), 12, C)
        outputs = [helper.make_tensor_value_info(y, F32, None)]
        return helper.make_graph(b.nodes, tag, [], outputs, b.inits, value_info=b.__dict__["declared"])

    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch("then", 1), else_branch=branch("else", 2))
    graph = helper.make_graph(
        [node],
        "stuck_in_if",
        [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []), helper.make_tensor_value_info("x", F32, [N, H, W, C])],
        [helper.make_tensor_value_info("y", F32, [N, H, W, C])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def transposes(model: onnx.ModelProto) -> int:
    return count_ops(model.graph).get("Transpose", 0)  # every graph, subgraphs included


def rewritten(model: onnx.ModelProto, **kw) -> converter.RewriteResult:
    """Rewrite, then prove it: the checker, the interface, and the numbers in onnxruntime."""
    result = converter.rewrite(model, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    assert list(result.model.graph.input) == list(model.graph.input)
    check = converter.verify(model, result)
    assert check.passed, check.to_dict()
    return result


def declined(result: converter.RewriteResult) -> list[converter.Decision]:
    return [d for d in result.report.decisions if d.reason == LAYOUT_COST]


@pytest.mark.parametrize("make", [stuck_pair, window_block, stuck_in_if])
def test_layers_whose_transposes_stay_are_declined_by_default(make) -> None:  # noqa: ANN001
    model = make()
    keep_all = rewritten(model, layout="keep-all")
    assert keep_all.report.rewritten == len(keep_all.report.decisions) > 0
    assert transposes(keep_all.model) > transposes(model)  # what the policy is for

    result = rewritten(model, layout="never-worse")
    assert transposes(result.model) <= transposes(model)
    assert result.report.rewritten == 0 and len(declined(result)) == keep_all.report.rewritten
    assert all(d.rule == "layout policy" and "could not absorb" in d.detail for d in declined(result))
    layout = result.report.layout
    assert (layout.mode, layout.declined, layout.attempts) == ("never-worse", keep_all.report.rewritten, 2)
    assert layout.transposes_keep_all == transposes(keep_all.model) and layout.transposes_final == transposes(result.model)
    if make is stuck_in_if:  # subgraphs count: the layers declined are the branches'
        assert all("branch" in d.graph for d in declined(result))


@pytest.mark.parametrize("layernorm", [False, True])
def test_only_the_layers_that_cost_transposes_are_declined(layernorm: bool) -> None:
    """A ConvNeXt block that absorbs (or breaks even on) its Transposes stays rewritten when two other layers
    push the model over the original's count. With the LayerNorm, its first Conv still reads a Transpose: the
    policy weighs what a group of layers costs, not whether a Transpose touches it."""
    model = mixed_blocks(layernorm)
    keep_all = rewritten(model, layout="keep-all")
    assert keep_all.report.rewritten == 4 and transposes(keep_all.model) > transposes(model)
    result = rewritten(model, layout="never-worse")
    assert transposes(result.model) <= transposes(model) and transposes(result.model) < transposes(keep_all.model)
    assert [d.rewritten for d in result.report.decisions] == [True, True, False, False]
    assert [d.reason for d in declined(result)] == [LAYOUT_COST, LAYOUT_COST]
    assert [d.activation for d in result.report.decisions] == ["image", "image", "unknown", "unknown"]
    convs = [n for n in result.model.graph.node if n.op_type == "Conv" and n.name.endswith("_conv")]
    producers = {o: n for n in result.model.graph.node for o in n.output}
    reads_transpose = producers[convs[0].input[0]].op_type == "Transpose"
    assert reads_transpose == layernorm


def test_nothing_worse_means_one_rewrite_and_the_same_result() -> None:
    from models.graphs import convnext_block

    model = convnext_block()
    result = rewritten(model, layout="never-worse")
    assert result.report.layout.attempts == 1 and result.report.rewritten == 2 and transposes(result.model) == 0
    assert result.model.SerializeToString() == converter.rewrite(model, layout="keep-all").model.SerializeToString()


def test_a_lone_dense_on_an_nhwc_input_is_still_rewritten() -> None:
    """Its two Transposes sit between the model's input/output and the Conv: feeding the model NCHW removes
    them, so they are reported but not held against the layer."""
    from tests.conftest import dense_model

    model = dense_model(x_shape=(N, H, W, C), weight_shape=(C, 6))
    result = rewritten(model, layout="never-worse")
    layout = result.report.layout
    assert result.report.rewritten == 1 and (layout.transposes_final, layout.edge_final, layout.declined) == (2, 2, 0)
    assert census(result.model).inside == 0


def test_what_each_activation_is() -> None:
    """Read from the graph: an NHWC image (a permute from NCHW, or a residual of one), grouped tokens (out of
    a window partition, also after MaxViT's grid swap), unknown (a graph input)."""
    b = Builder(8)
    image = b.op("Transpose", "x", perm=[0, 2, 3, 1])  # [N, H, W, C]
    split = b.op("Reshape", image, b.const(np.array([N, H // 2, 2, W // 2, 2, C]), np.int64))
    windows = b.op("Transpose", split, perm=[0, 1, 3, 2, 4, 5])
    grouped = b.op("Reshape", windows, b.const(np.array([N, (H // 2) * (W // 2), 4, C]), np.int64))
    swapped = b.op("Transpose", grouped, perm=[0, 2, 1, 3])  # MaxViT's grid attention swaps the middle axes
    unwindowed = b.op("Reshape", grouped, b.const(np.array([N, H, W, C]), np.int64))  # a window reverse, alone
    residual = b.op("Add", image, unwindowed)  # Swin: the image stream plus the window-reversed branch
    outs = [b.dense(t, C, C) for t in (image, grouped, swapped, residual, "y")]
    model = model_of(b, [("x", [N, C, H, W]), ("y", [N, H, W, C])], outs)
    kinds = activations(model)
    assert [kinds[((), t)] for t in (image, grouped, swapped, residual, "y")] == [
        "image",
        "grouped tokens",
        "grouped tokens",
        "image",
        "unknown",
    ]
    result = converter.rewrite(model, layout="keep-all")
    assert [d.activation for d in result.report.decisions] == ["image", "grouped tokens", "grouped tokens", "image", "unknown"]


def test_nchw_carries_layernorm_into_nchw() -> None:
    from models.graphs import convnext_stage

    pytest.importorskip("converter.rewriter.cleanup", reason="needs the cleanup").CleanupOptions  # noqa: B018
    model = convnext_stage(C, H, W, blocks=2, layernorm=True)
    keep_all = rewritten(model, layout="keep-all")
    result = converter.rewrite(model, layout="nchw")
    assert result.report.layout.mode == "nchw" and result.report.rewritten == keep_all.report.rewritten == 4
    assert transposes(result.model) < transposes(keep_all.model)
    assert "LayerNormalization" not in count_ops(result.model.graph)
    check = converter.verify(model, result)
    # The numbers agree; the structural certificate does not yet follow a LayerNorm written out (certify.py).
    assert check.outputs and all(o.passed for o in check.outputs) and all(layer.numbers == "passed" for layer in check.layers)


def test_layout_choices_and_their_limits() -> None:
    from tests.conftest import dense_model

    model = dense_model()
    with pytest.raises(InputError, match="unknown layout 'tidy'"):
        converter.rewrite(model, layout="tidy")
    with pytest.raises(InputError, match="needs the Transpose cleanup"):
        converter.rewrite(model, layout="never-worse", fold_transposes=False)
    assert converter.rewrite(model, fold_transposes=False).report.layout.mode == "keep-all"
    # The library and the command share one default: the policy.
    assert converter.rewrite(model).report.layout.mode == converter.DEFAULT_LAYOUT == "never-worse"
    report = converter.rewrite(window_block(), layout="never-worse").report.to_dict()
    assert report["layout"]["declined"] == 2 and report["skipped_by_reason"] == {LAYOUT_COST: 2}
    assert {d["activation"] for d in report["decisions"]} == {"grouped tokens"}


def test_convert_dry_run_shows_what_the_policy_declines(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "w.onnx"
    onnx.save(window_block(), path)
    report = converter.convert(path, dry_run=True, layout="never-worse")
    assert not report.written and not (tmp_path / "w_conv.onnx").exists()
    assert report.rewrite.layout.declined == 2 and report.rewrite.skipped_by_reason == {LAYOUT_COST: 2}
    kept = converter.convert(path, tmp_path / "k.onnx", verify_outputs=False, layout="keep-all")
    assert kept.written and transposes(onnx.load(tmp_path / "k.onnx")) == 4
    default = converter.convert(path, tmp_path / "d.onnx", verify_outputs=False)  # the default is the policy
    assert default.rewrite.layout.declined == 2 and transposes(onnx.load(tmp_path / "d.onnx")) == transposes(window_block())
