"""The layout optimizer (converter/rewriter/layout): every tensor's layout chosen for the whole graph at once.

What it must do, each by structure and by numbers (every result is verified, N > 1 and H != W): convert every
layer whose conversion costs no Transpose inside the model at the optimum, and only those; never leave more
Transposes inside the model than the original; take a Transpose into a chain of Reshapes (a window partition,
MaxViT's [B, windows, tokens, C]) instead of paying it; write a LayerNorm out over the channel axis only where
that saves Transposes; and end with exactly the Transposes its optimum counted. The layers that must be declined
sit next to an op no handler moves a Transpose through (onnxruntime's com.microsoft Gelu).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper

import converter
from converter.errors import InputError
from converter.graph import count_ops
from converter.rewriter.layout import LAYOUT_COST, activations, census
from models.graphs import F32, Builder, convnext_pointwise, with_output_shapes
from models.quantized import Form

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


def dynamic_windows(p: int = 2) -> onnx.ModelProto:
    """torchvision's Swin block on a dynamic batch: NHWC from a Transpose, LayerNorm, windows [-1, p*p, C] made by
    Reshapes whose targets lead with -1 (so inference cannot tell the batch * windows dim), attention on the
    windows, the windows back, the residual, and an MLP of two rank-4 Linears."""
    b = Builder(11)
    x = b.op("Transpose", "x", perm=[0, 2, 3, 1])
    split = b.op("Reshape", b.layernorm(x, C), b.const(np.array([-1, H // p, p, W // p, p, C]), np.int64))
    win = b.op("Reshape", b.op("Transpose", split, perm=[0, 1, 3, 2, 4, 5]), b.const(np.array([-1, p * p, C]), np.int64))
    att = b.op("MatMul", b.op("Softmax", b.op("MatMul", win, b.op("Transpose", win, perm=[0, 2, 1])), axis=-1), win)
    back = b.op("Reshape", att, b.const(np.array([-1, H // p, W // p, p, p, C]), np.int64))
    back = b.op("Transpose", back, perm=[0, 1, 3, 2, 4, 5])
    y = b.op("Add", x, b.op("Reshape", back, b.const(np.array([-1, H, W, C]), np.int64)))
    z = b.dense(b.gelu(b.dense(b.layernorm(y, C), C, 2 * C)), 2 * C, C)
    return model_of(b, [("x", ["N", C, H, W])], [b.op("Transpose", b.op("Add", y, z), perm=[0, 3, 1, 2])])


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
    """Rewrite, then prove it: the checker, the interface, the numbers in onnxruntime, and that the model ends with
    exactly the Transposes the optimum counted."""
    result = converter.rewrite(model, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    assert list(result.model.graph.input) == list(model.graph.input)
    check = converter.verify(model, result)
    assert check.passed and check.structure["proved"], check.to_dict()
    layout = result.report.layout
    assert layout.attempts == 1  # one solve, one rewrite: no retreat and retry
    assert layout.transposes_optimum + layout.edge_optimum == layout.transposes_final == transposes(result.model)
    return result


def declined(result: converter.RewriteResult) -> list[converter.Decision]:
    return [d for d in result.report.decisions if d.reason == LAYOUT_COST]


@pytest.mark.parametrize("make", [stuck_pair, stuck_in_if])
def test_layers_that_would_cost_transposes_at_the_optimum_are_declined_with_the_number(make) -> None:  # noqa: ANN001
    model = make()
    keep_all = rewritten(model, layout="keep-all")
    assert keep_all.report.rewritten == len(keep_all.report.decisions) > 0
    assert census(keep_all.model).inside > census(model).inside  # what declining is for

    result = rewritten(model)
    assert transposes(result.model) == transposes(model) and result.report.rewritten == 0
    assert len(declined(result)) == keep_all.report.rewritten
    for d in declined(result):
        assert d.rule == "layout policy" and re.search(r"converting it would add [12] Transposes? even with", d.detail), d.detail
    layout = result.report.layout
    assert (layout.mode, layout.declined) == ("optimal", keep_all.report.rewritten)
    if make is stuck_in_if:  # subgraphs have their own optimum: the layers declined are the branches'
        assert all("branch" in d.graph for d in declined(result))


def test_a_window_partition_takes_the_layout_change_in() -> None:
    """MaxViT's partition MLP on grouped tokens: the optimum runs the windows channels-first (the LayerNorm written
    out over the channel axis), the partition's and the reverse's own Transposes take the change in, and every
    layer is converted with no more Transposes than the original (the greedy policy declined both)."""
    model = window_block()
    result = rewritten(model)
    assert result.report.rewritten == 2 and not declined(result)
    assert transposes(result.model) == transposes(model) == 2
    assert "LayerNormalization" not in count_ops(result.model.graph) and result.report.layout.layernorms_written_out == 1
    assert [d.activation for d in result.report.decisions] == ["grouped tokens"] * 2


@pytest.mark.parametrize("layernorm", [False, True])
def test_only_the_layers_that_cost_transposes_are_declined(layernorm: bool) -> None:
    """A ConvNeXt block (whose permutes go: its layers run channels-first from the depthwise Conv on) stays
    converted beside two layers between com.microsoft Gelus, which the optimum declines: 6 Transposes -> 4."""
    model = mixed_blocks(layernorm)
    keep_all = rewritten(model, layout="keep-all")
    assert keep_all.report.rewritten == 4 and transposes(keep_all.model) == 8
    result = rewritten(model)
    assert (transposes(model), transposes(result.model)) == (6, 4)
    assert [d.rewritten for d in result.report.decisions] == [True, True, False, False]
    assert [d.activation for d in result.report.decisions] == ["image", "image", "unknown", "unknown"]
    assert result.report.layout.layernorms_written_out == (1 if layernorm else 0)


def test_a_layernorm_is_written_out_only_where_that_saves_transposes() -> None:
    """LayerNorm read by a Linear and by a com.microsoft Gelu (which needs NHWC): the layer costs a Transpose, so the
    default declines it; converted anyway (keep-all), the LayerNorm stays one op and the layer reads it through one
    Transpose (written out, it would need one back for the Gelu and one more on the input). Without the Gelu,
    writing it out moves the Transpose to the model's input, and the layer is converted by default."""
    for with_gelu in (True, False):
        b = Builder(9)
        norm = b.layernorm("x", C)
        outs = [b.dense(norm, C, 6)] + ([ms_gelu(b, norm, [N, H, W, C])] if with_gelu else [])
        model = model_of(b, [("x", [N, H, W, C])], outs)
        if with_gelu:
            assert [d.reason for d in rewritten(model).report.decisions] == [LAYOUT_COST]
        result = rewritten(model, layout="keep-all" if with_gelu else "optimal")
        layout = result.report.layout
        assert result.report.rewritten == 1
        if with_gelu:
            assert count_ops(result.model.graph)["LayerNormalization"] == 1 and layout.layernorms_written_out == 0
            assert (layout.transposes_optimum, layout.edge_optimum) == (1, 1)
        else:
            assert "LayerNormalization" not in count_ops(result.model.graph) and layout.layernorms_written_out == 1
            assert (layout.transposes_optimum, layout.edge_optimum) == (0, 2)


def test_the_same_model_whatever_the_policy_when_nothing_costs() -> None:
    from models.graphs import convnext_block

    model = convnext_block()
    result = rewritten(model)
    assert result.report.rewritten == 2 and transposes(result.model) == 0
    assert result.model.SerializeToString() == converter.rewrite(model, layout="keep-all").model.SerializeToString()


def test_a_lone_dense_on_an_nhwc_input_is_still_rewritten() -> None:
    """Its two Transposes sit on the model's input and output: feeding the model NCHW removes them, so they are
    reported but not held against the layer."""
    from tests.conftest import dense_model

    model = dense_model(x_shape=(N, H, W, C), weight_shape=(C, 6))
    result = rewritten(model)
    layout = result.report.layout
    assert result.report.rewritten == 1 and (layout.transposes_final, layout.edge_final, layout.declined) == (2, 2, 0)
    assert (layout.transposes_optimum, layout.edge_optimum) == (0, 2)
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
    result = rewritten(model, layout="keep-all")
    assert [d.activation for d in result.report.decisions] == ["image", "grouped tokens", "grouped tokens", "image", "unknown"]


def test_a_convnext_stage_loses_every_permute() -> None:
    from models.graphs import convnext_stage

    model = convnext_stage(C, H, W, blocks=2, layernorm=True)
    result = rewritten(model)
    assert result.report.rewritten == 4 and transposes(model) == 4 and transposes(result.model) == 0
    assert "LayerNormalization" not in count_ops(result.model.graph) and result.report.layout.layernorms_written_out == 2
    check = converter.verify(model, result)
    assert len(check.layers) == 4 and all((layer.structure, layer.numbers) == ("proved", "passed") for layer in check.layers)


def test_a_layout_the_cleanup_cannot_carry_in_leaves_the_original(monkeypatch) -> None:  # noqa: ANN001
    """The safety net under the optimizer: were the cleanup to leave the placed Transposes where they are (here it
    does not run at all), the graph would have more Transposes than the original, so the original is kept and
    every layer is declined with layout_cost and a sentence saying why."""
    import converter.rewriter.run as run
    from models.graphs import convnext_stage

    model = convnext_stage(C, H, W, blocks=2, layernorm=True)
    monkeypatch.setattr(run, "CLEANUP", ())
    result = converter.rewrite(model)
    assert result.report.rewritten == 0 and len(declined(result)) == 4
    assert all("could not be carried into the graph" in d.detail for d in declined(result))
    assert result.model.graph == model.graph
    layout = result.report.layout
    assert layout.transposes_final == layout.transposes_original == transposes(model) == 4
    # keep-all promises nothing about Transposes: the same missing cleanup leaves them in.
    kept = converter.rewrite(model, layout="keep-all")
    assert kept.report.rewritten == 4 and transposes(kept.model) > 4


def _nhwc_pair(c: int = 16, h: int = 6, w: int = 10) -> onnx.ModelProto:
    """Two Linears fed straight from an NHWC model input, a Sigmoid between, NHWC out (N symbolic)."""
    b = Builder(3)
    y = b.op("Sigmoid", b.dense("x", c, 24))
    return b.model([("x", ["N", h, w, c])], [b.dense(y, 24, c)])


@pytest.mark.parametrize(
    "form",
    [None, *(Form(fmt, signed, fmt == "qdq") for fmt in ("qdq", "qoperator", "dynamic") for signed in (True, False))],
    ids=lambda f: "float" if f is None else f.name,
)
def test_a_quantized_layer_fed_from_the_model_input_is_converted_like_its_float_twin(form, tmp_path) -> None:  # noqa: ANN001
    """Issue 21: Q/DQ, QLinear and dynamic quantization are elementwise up to the model's edge, so the Transposes a
    layer needs there are the model input's and output's (edge), and every form converts as the float model does.
    A QDQ layer takes in its activation's QuantizeLinear/DequantizeLinear: the layout sees the float tensor before them."""
    from models.quantized import quantize

    source = tmp_path / "float.onnx"
    onnx.save(_nhwc_pair(), source)
    path = source if form is None else quantize(source, tmp_path / "q.onnx", form, {"x": [2, 6, 10, 16]})
    model = onnx.load(path)
    result = rewritten(model)
    assert result.report.rewritten == 2 and declined(result) == []
    layout = result.report.layout
    assert (layout.transposes_final, layout.edge_final) == (2, 2)  # one at the input, one at the output


def test_every_layer_is_converted_when_that_is_no_worse_than_the_original(tmp_path) -> None:  # noqa: ANN001
    """A dynamically quantized ConvNeXt stage with native LayerNorms (a quantized graph keeps them): the fewest
    Transposes (3: the optimizer saves one whatever it converts) leave every layer out, but converting all four ends
    with the original's 4, so all four are converted (issue 21: every layer when the optimum is no worse)."""
    from models.graphs import convnext_stage
    from models.quantized import quantize

    source = tmp_path / "float.onnx"
    float_model = convnext_stage(C, H, W, blocks=2, layernorm=True)
    float_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(float_model, source)
    model = onnx.load(quantize(source, tmp_path / "q.onnx", Form("dynamic", True, False), {"x": [N, C, H, W]}))
    result = rewritten(model)
    assert result.report.rewritten == 4 and declined(result) == []
    assert transposes(model) == transposes(result.model) == 4
    assert result.report.layout.layernorms_written_out == 0


def test_a_window_partition_on_a_dynamic_batch_takes_the_layout_in() -> None:
    """The windows' first dim is the batch times the windows, which shape inference leaves unknown; collect_types
    finds it as "6*N" (two more runs with N set to primes), so the window reverse can make channels-first and the
    MLP converts: 5 Transposes -> 3 (without that: both layers declined)."""
    model = dynamic_windows()
    result = rewritten(model)
    assert result.report.rewritten == 2 and declined(result) == []
    assert (transposes(model), transposes(result.model)) == (5, 3)


def test_layout_choices_and_their_limits() -> None:
    from tests.conftest import dense_model

    model = dense_model()
    with pytest.raises(InputError, match="unknown layout 'tidy'"):
        converter.rewrite(model, layout="tidy")
    with pytest.raises(InputError, match="needs the Transpose cleanup"):
        converter.rewrite(model, layout="optimal", fold_transposes=False)
    assert converter.rewrite(model, fold_transposes=False).report.layout.mode == "keep-all"
    # The library and the command share one default; the older names are what it replaced.
    assert converter.rewrite(model).report.layout.mode == converter.DEFAULT_LAYOUT == "optimal"
    for old in ("never-worse", "nchw"):
        assert converter.rewrite(model, layout=old).report.layout.mode == "optimal"
    report = converter.rewrite(stuck_pair()).report.to_dict()
    assert report["layout"]["declined"] == 2 and report["skipped_by_reason"] == {LAYOUT_COST: 2}


def test_convert_dry_run_shows_what_the_optimizer_declines(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "s.onnx"
    onnx.save(stuck_pair(), path)
    report = converter.convert(path, dry_run=True)
    assert not report.written and not (tmp_path / "s_conv.onnx").exists()
    assert report.rewrite.layout.declined == 2 and report.rewrite.skipped_by_reason == {LAYOUT_COST: 2}
    kept = converter.convert(path, tmp_path / "k.onnx", verify_outputs=False, layout="keep-all")
    assert kept.written and transposes(onnx.load(tmp_path / "k.onnx")) == 4
    default = converter.convert(path, tmp_path / "d.onnx", verify_outputs=False)
    assert default.rewrite.layout.declined == 2 and transposes(onnx.load(tmp_path / "d.onnx")) == 0
