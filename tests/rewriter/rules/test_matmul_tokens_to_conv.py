"""Dense layers on token sequences [B, S, C] -> Unsqueeze, 1x1 Conv, Squeeze in the [B, C, 1, S] layout (``tokens=True``).

Every rewrite is proved by structure (exact op counts, perms, axes, the Conv weight) and by numbers: both
models run in onnxruntime (graph optimizations off) at several batch and sequence lengths, N > 1 and
S != C, symbolic B and S fed different values. (The certificate's side of these layers, and their
numbers in converter.verifier.run, are tested in tests/test_certify_tokens.py.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from converter.rewriter.rules._engine import PROVENANCE_KEY
from models.graphs import Builder
from tests.conftest import C, Dense, K, dense_model

S = 7  # tokens: S != C != K, so a swapped axis shows in shapes and numbers
LAYER = {"Transpose": 2, "Unsqueeze": 1, "Conv": 1, "Squeeze": 1}
# (B, S) fed to the symbolic dims: B > 1 everywhere, S never equal to C or K.
SHAPES = ((2, S), (3, 5), (1, 9))


def tokens_model(o: Dense | None = None, **kw) -> onnx.ModelProto:
    """conftest's dense_model on a token sequence: x [B, S, C] unless a test gives another shape."""
    o = o or Dense(**kw)
    if o.x_shape == Dense().x_shape:
        o = dataclasses.replace(o, x_shape=("B", "S", C))
    return dense_model(o)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_same_numbers(original: onnx.ModelProto, rewritten: onnx.ModelProto, shapes=SHAPES, rtol: float = 1e-5) -> None:
    """Both models on random inputs at each (B, S): every output has the same shape, dtype and values."""
    onnx.checker.check_model(rewritten, full_check=True)
    for inp in ("input", "output"):
        assert list(getattr(rewritten.graph, inp)) == list(getattr(original.graph, inp))
    rng = np.random.default_rng(0)
    for b, s in shapes:
        feeds = {}
        for vi in original.graph.input:
            if vi.name in {t.name for t in original.graph.initializer}:
                continue
            dims = [
                d.dim_value if d.HasField("dim_value") else {"B": b, "N": b, "S": s}[d.dim_param]
                for d in vi.type.tensor_type.shape.dim
            ]
            dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        want, got = run(original, feeds), run(rewritten, feeds)
        assert len(want) == len(got)
        for w, g in zip(want, got, strict=True):
            assert (g.shape, g.dtype) == (w.shape, w.dtype)
            tol = 1e-2 if w.dtype == np.float16 else rtol
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def only_decision(result: converter.RewriteResult) -> converter.Decision:
    assert len(result.report.decisions) == 1
    return result.report.decisions[0]


def perms(model: onnx.ModelProto) -> list[list[int]]:
    return [list(helper.get_attribute_value(n.attribute[0])) for n in model.graph.node if n.op_type == "Transpose"]


@pytest.mark.parametrize(
    "options",
    [
        Dense(),
        Dense(bias_shape=(1, K)),
        Dense(bias_shape=(1, 1, K)),
        Dense(bias_shape=()),
        Dense(bias_first=True),
        Dense(weight="constant_node", bias="constant_node"),
        Dense(weight="identity", bias="identity"),
        Dense(weight_shape=(1, C, K)),
        Dense(x_shape=(2, S, C)),
        Dense(x_source="inferred"),
        Dense(dtype=TensorProto.FLOAT16),
        Dense(ir_version=10, opset=21),
        Dense(opset=11),  # Squeeze/Unsqueeze axes as an attribute
    ],
    ids=lambda o: repr(o).replace("Dense", "")[:80],
)
def test_bias_folds_into_conv(options: Dense) -> None:
    model = tokens_model(options)
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    extra = {"Identity": 1} if options.x_source == "inferred" else {}
    assert count_ops(result.model.graph) == {**LAYER, **extra}
    assert_same_numbers(model, result.model)
    d = only_decision(result)
    assert (d.rule, d.rewritten, d.notes) == ("matmul_tokens_to_conv", True, {"bias_folded": True})
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    inits = {t.name: t for t in result.model.graph.initializer}
    weight = inits[conv.input[1]]
    assert list(weight.dims) == [K, C, 1, 1] and weight.data_type == options.dtype
    assert len(conv.input) == 3 and list(inits[conv.input[2]].dims) == [K]
    assert perms(result.model) == [[0, 2, 1], [0, 2, 1]]
    for op in ("Unsqueeze", "Squeeze"):
        node = next(n for n in result.model.graph.node if n.op_type == op)
        if options.opset >= 13:
            assert numpy_helper.to_array(inits[node.input[1]]).tolist() == [2]
        else:
            assert helper.get_attribute_value(node.attribute[0]) == [2]
    (layer,) = result.report.layers
    assert (layer.input, layer.output, layer.conv) == ("x", "y", conv.name)


def test_weight_is_transposed_into_conv_layout() -> None:
    model = tokens_model(bias=None)
    w = numpy_helper.to_array(model.graph.initializer[0])
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    conv_w = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == conv.input[1]))
    np.testing.assert_array_equal(conv_w[:, :, 0, 0], w.T)
    assert "W" not in {t.name for t in result.model.graph.initializer}  # the old weight is dead and gone
    assert only_decision(result).notes == {"bias_folded": False}
    assert_same_numbers(model, result.model)


@pytest.mark.parametrize(
    ("options", "reason", "extra_ops"),
    [
        (Dense(bias="runtime"), "bias_not_constant", {}),
        (Dense(bias="graph_input"), "bias_is_graph_input", {}),
        (Dense(bias_shape=(S, K), x_shape=("B", S, C)), "bias_not_per_channel", {}),
        (Dense(bias_shape=(1, 1, 1, K)), "bias_not_per_channel", {}),  # folding it would drop the broadcast to rank 4
        (Dense(fanout=True), "matmul_output_fanout", {"Relu": 1}),
        (Dense(matmul_is_output=True), "matmul_output_is_graph_output", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_add_stays_when_not_a_per_channel_bias(options: Dense, reason: str, extra_ops: dict[str, int]) -> None:
    model = tokens_model(options)
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    assert count_ops(result.model.graph) == {**LAYER, "Add": 1, **extra_ops}
    d = only_decision(result)
    assert d.rewritten and d.notes == {"bias_folded": False, "bias_reason": reason}
    assert "mm" in next(n for n in result.model.graph.node if n.op_type == "Add").input
    assert_same_numbers(model, result.model)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (Dense(weight="runtime"), "weight_not_constant"),
        (Dense(weight="graph_input"), "weight_is_graph_input"),
        (Dense(weight_shape=(2, C, K), x_shape=(2, S, C)), "weight_batched"),
        (Dense(weight_shape=(1, 1, C, K), bias=None), "weight_rank"),  # the product would be rank 4
        (Dense(dtype=TensorProto.DOUBLE), "dtype_unsupported"),
        (Dense(x_shape=("B", "S", C + 1)), "shape_mismatch"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_declines_with_reason(options: Dense, reason: str) -> None:
    model = tokens_model(options) if reason != "shape_mismatch" else _mismatched()
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    d = only_decision(result)
    assert (d.rule, d.rewritten, d.reason) == ("matmul_tokens_to_conv", False, reason)
    assert d.detail
    assert result.model.SerializeToString() == model.SerializeToString()


def _mismatched() -> onnx.ModelProto:
    """A declared channel count the weight contradicts (the model is invalid; the rule must still say why)."""
    w = numpy_helper.from_array(np.ones((C, K), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="dense")],
        "mismatch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", S, C + 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", S, K])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_constant_activation_declines() -> None:
    b = Builder(2)
    table = b.const(np.random.default_rng(0).standard_normal((1, S, C)))
    y = b.op("Add", "x", b.dense(table, C, K))
    model = b.model([("x", ["B", S, K])], [y])
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    assert [(d.reason, d.rewritten) for d in result.report.decisions] == [("constant_input", False)]


# -- off by default: nothing changes ---------------------------------------------------------------


def test_without_tokens_rank3_layers_stay_rank_not_4_and_bytes_unchanged() -> None:
    model = transformer_block()
    default = converter.rewrite(model, layout="keep-all")
    explicit = converter.rewrite(model, layout="keep-all", tokens=False)
    assert default.model.SerializeToString() == model.SerializeToString()
    assert explicit.model.SerializeToString() == model.SerializeToString()
    assert {(d.rule, d.reason) for d in default.report.decisions} == {("matmul_add_to_conv", "rank_not_4")}
    assert len(default.report.decisions) == 2
    assert converter.rewrite(model, layout="keep-all", tokens=True).report.layers  # the same model, with the option


def test_tokens_leaves_rank4_layers_to_their_rule() -> None:
    model = dense_model(Dense())
    plain, tokens = converter.rewrite(model, layout="keep-all"), converter.rewrite(model, layout="keep-all", tokens=True)
    assert tokens.model.SerializeToString() == plain.model.SerializeToString()
    assert [d.rule for d in tokens.report.decisions] == ["matmul_add_to_conv"]
    rank2 = tokens_model(x_shape=("B", C), bias=None)
    assert only_decision(converter.rewrite(rank2, fold_transposes=False, tokens=True)).reason == "rank_not_4"


@pytest.mark.parametrize("ir_version", [8, 10])
def test_new_nodes_carry_provenance(ir_version: int) -> None:
    model = tokens_model(ir_version=ir_version, opset=17 if ir_version == 8 else 21)
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    for node in result.model.graph.node:
        tag = {p.key: p.value for p in node.metadata_props}.get(PROVENANCE_KEY) if ir_version >= 10 else node.doc_string
        assert tag is not None and "matmul_tokens_to_conv from dense" in tag


# -- consecutive layers: the Transposes between them cancel ---------------------------------------


def transformer_block(c: int = C, hidden: int = 3 * C, seed: int = 1) -> onnx.ModelProto:
    """A pre-LN MLP block on [B, S, C]: x + fc2(GELU(fc1(LayerNorm(x))))."""
    b = Builder(seed)
    h = b.dense(b.gelu(b.dense(b.layernorm("x", c), c, hidden)), hidden, c)
    return b.model([("x", ["B", "S", c])], [b.op("Add", "x", h)], name="block")


def test_mlp_block_keeps_one_transpose_in_and_one_out() -> None:
    model = transformer_block()
    result = converter.rewrite(model, layout="keep-all", tokens=True)
    ops = count_ops(result.model.graph)
    assert (ops["Conv"], ops["Transpose"], ops.get("MatMul", 0)) == (2, 2, 0)
    assert [d.rule for d in result.report.decisions if d.rewritten] == ["matmul_tokens_to_conv"] * 2
    assert_same_numbers(model, result.model)


def test_layernorm_carried_to_channels_leaves_no_transpose_inside_a_stack() -> None:
    """A stream that starts channel-first (a patch embedding's [B, C, S] -> [B, S, C]) and three pre-LN MLP
    blocks: the optimum writes the LayerNorms out over the channel axis, the stream's own Transpose goes,
    every layer's pair cancels, and only the one at the output is left, whether or not layers may be declined."""
    b = Builder(4)
    x = b.op("Transpose", "x", perm=[0, 2, 1])
    for _ in range(3):
        x = b.op("Add", x, b.dense(b.gelu(b.dense(b.layernorm(x, C), C, 2 * C)), 2 * C, C))
    model = b.model([("x", ["B", C, "S"])], [x])
    counts = {}
    for layout in ("optimal", "keep-all"):
        result = converter.rewrite(model, layout=layout, tokens=True)
        ops = count_ops(result.model.graph)
        counts[layout] = (ops["Conv"], ops["Transpose"], ops.get("LayerNormalization", 0))
        assert_same_numbers(model, result.model, rtol=1e-4)
    assert counts == {"optimal": (6, 1, 0), "keep-all": (6, 1, 0)}


# -- the input or output Transpose [0, 2, 1] folded in (MLP-Mixer's token mixing) ------------------


def token_mixing(bias: bool = True, side_reader: bool = False, residual: bool = True) -> onnx.ModelProto:
    """``x + Transpose(Linear_S(Transpose(x)))``: a Linear over the S tokens of x [B, S, C]."""
    b = Builder(5)
    t = b.op("Transpose", "x", perm=[0, 2, 1])  # [B, C, S]
    y = b.op("Transpose", b.dense(t, S, S + 2 if not residual else S, bias=bias), perm=[0, 2, 1])
    outs = [b.op("Add", "x", y) if residual else y]
    if side_reader:
        outs.append(b.op("Relu", t))
    return b.model([("x", ["B", S, C])], outs, name="token_mixing")


@pytest.mark.parametrize("bias", [True, False])
def test_token_mixing_folds_both_transposes(bias: bool) -> None:
    model = token_mixing(bias)
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    assert count_ops(result.model.graph) == {"Unsqueeze": 1, "Conv": 1, "Squeeze": 1, "Add": 1}
    d = only_decision(result)
    assert d.notes == {"bias_folded": bias, "folded_transposes": ["input", "output"]}
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    unsqueeze = next(n for n in result.model.graph.node if n.op_type == "Unsqueeze")
    assert unsqueeze.input[0] == "x" and conv.input[0] == unsqueeze.output[0]  # the tokens are the Conv's channels
    w = next(t for t in result.model.graph.initializer if t.name == conv.input[1])
    assert list(w.dims) == [S, S, 1, 1]
    (layer,) = result.report.layers  # the claim names the original tensors around the MatMul (+Add)
    original = {n.output[0]: n for n in model.graph.node}
    assert original[layer.input].op_type == "Transpose" and original[layer.output].op_type == ("Add" if bias else "MatMul")
    assert_same_numbers(model, result.model, shapes=((2, S), (4, S)))  # S is the weight's: only B varies


def test_token_mixing_to_another_width() -> None:
    model = token_mixing(residual=False)  # S -> S + 2 tokens: the output is [B, S + 2, C]
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    assert count_ops(result.model.graph) == {"Unsqueeze": 1, "Conv": 1, "Squeeze": 1}
    assert_same_numbers(model, result.model, shapes=((3, S),))


def test_input_transpose_read_by_others_stays() -> None:
    model = token_mixing(side_reader=True)
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    assert count_ops(result.model.graph) == {"Transpose": 1, "Relu": 1, "Unsqueeze": 1, "Conv": 1, "Squeeze": 1, "Add": 1}
    assert next(n for n in result.model.graph.node if n.op_type == "Unsqueeze").input[0] == "x"
    assert_same_numbers(model, result.model, shapes=((2, S),))


def test_mixer_mlp_over_tokens_has_no_transpose_left() -> None:
    """Mixer's token MLP, ``x + T(fc2(GELU(fc1(T(LN(x))))))``: fc1 folds the Transpose in front, fc2 the
    one behind, and the cleanup cancels the pair between them."""
    b = Builder(6)
    t = b.op("Transpose", b.layernorm("x", C), perm=[0, 2, 1])
    h = b.dense(b.gelu(b.dense(t, S, 2 * S)), 2 * S, S)
    model = b.model([("x", ["B", S, C])], [b.op("Add", "x", b.op("Transpose", h, perm=[0, 2, 1]))], name="mixer_tokens")
    bare = converter.rewrite(model, fold_transposes=False, tokens=True)
    assert count_ops(bare.model.graph)["Transpose"] == 2  # fc1's way out and fc2's way in, before the cleanup
    assert [d.notes.get("folded_transposes") for d in bare.report.decisions] == [["input"], ["output"]]
    result = converter.rewrite(model, layout="keep-all", tokens=True)
    ops = count_ops(result.model.graph)
    assert (ops["Conv"], ops.get("Transpose", 0), ops.get("MatMul", 0)) == (2, 0, 0)
    assert_same_numbers(model, result.model, shapes=((2, S), (3, S)))


def test_two_token_layers_around_one_transpose() -> None:
    """``fc_b(T(fc_a(x)))``: fc_a leaves the Transpose to fc_b, which folds it on its input side."""
    b = Builder(7)
    y = b.dense(b.op("Transpose", b.dense("x", C, C + 1), perm=[0, 2, 1]), S, S + 1)
    model = b.model([("x", ["B", S, C])], [y])
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    assert [d.notes.get("folded_transposes") for d in result.report.decisions] == [None, ["input"]]
    # fc_a's own pair, and fc_b's way back (its output is [B, C+1, S+1]); the Transpose between them is gone.
    assert count_ops(result.model.graph) == {"Transpose": 3, "Unsqueeze": 2, "Conv": 2, "Squeeze": 2}
    assert result.model.graph.node[-1].op_type == "Transpose"
    assert_same_numbers(model, result.model, shapes=((2, S), (3, S)))


def test_transpose_that_is_a_graph_output_is_not_folded() -> None:
    b = Builder(8)
    t = b.op("Transpose", "x", perm=[0, 2, 1])
    y = b.dense(t, S, S)
    back = b.op("Transpose", y, perm=[0, 2, 1])
    model = b.model([("x", ["B", S, C])], [back, t], name="outputs")
    result = converter.rewrite(model, fold_transposes=False, tokens=True)
    ops = count_ops(result.model.graph)
    # t stays (a graph output); the one behind the layer is folded: the Squeeze writes the graph output.
    assert ops["Conv"] == 1 and ops["Transpose"] == 1
    assert next(n for n in result.model.graph.node if n.op_type == "Squeeze").output[0] == back
    assert_same_numbers(model, result.model, shapes=((2, S),))


def test_symbolic_batch_and_tokens_through_convert(tmp_path) -> None:
    model = transformer_block()
    src = tmp_path / "block.onnx"
    onnx.save(model, src)
    # Verified as `convert` does it, with the new weights detached until save: the Squeeze/Unsqueeze axes must
    # stay in the graph, where onnxruntime reads them when it loads the model.
    report = converter.convert(src, tmp_path / "out.onnx", tokens=True, layout="keep-all")
    assert report.written and report.verify is not None and report.verify.passed, report.to_dict()
    out = onnx.load(tmp_path / "out.onnx")
    assert count_ops(out.graph)["Conv"] == 2
    assert_same_numbers(model, out)
