"""MatMul(+Add) -> Transpose, 1x1 Conv, Transpose: every rule of the issue, by structure and by numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.rewriter.rules._engine import PROVENANCE_KEY
from tests.conftest import W_, C, Dense, H, K, N, assert_rewritten, dense_model, with_output_shapes

FOLDED = {"Conv": 1, "Transpose": 2}
KEPT_ADD = {"Add": 1, "Conv": 1, "Transpose": 2}


def only_decision(result: converter.RewriteResult) -> converter.Decision:
    assert len(result.report.decisions) == 1
    return result.report.decisions[0]


@pytest.mark.parametrize(
    "options",
    [
        Dense(),
        Dense(bias_shape=(1, K)),
        Dense(bias_shape=(1, 1, 1, K)),
        Dense(bias_shape=()),
        Dense(bias_shape=(1,)),
        Dense(bias_first=True),
        Dense(weight="constant_node", bias="constant_node"),
        Dense(weight_shape=(1, 1, C, K)),
        Dense(weight_shape=(1, C, K)),
        Dense(x_shape=("batch", "height", "width", C)),
        Dense(x_shape=(N, H, W_, C)),
        Dense(x_source="inferred"),  # rank known only through shape inference (Identity output)
        Dense(dtype=TensorProto.FLOAT16),
        Dense(ir_version=10, opset=21),
    ],
    ids=lambda o: repr(o).replace("Dense", "")[:80],
)
def test_bias_folds_into_conv(options: Dense) -> None:
    model = dense_model(options)
    result = converter.rewrite(model, fold_transposes=False)
    extra = {"Identity": 1} if options.x_source == "inferred" else {}
    assert_rewritten(model, result, {**FOLDED, **extra})
    d = only_decision(result)
    assert d.rewritten and d.notes == {"bias_folded": True}
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    weight = next(t for t in result.model.graph.initializer if t.name == conv.input[1])
    assert list(weight.dims) == [K, C, 1, 1]
    assert weight.data_type == options.dtype
    assert len(conv.input) == 3
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "kernel_shape")) == [1, 1]
    perms = [helper.get_attribute_value(n.attribute[0]) for n in result.model.graph.node if n.op_type == "Transpose"]
    assert perms == [[0, 3, 1, 2], [0, 2, 3, 1]]


def test_weight_is_transposed_into_conv_layout() -> None:
    model = dense_model(bias=None)
    w = numpy_helper.to_array(model.graph.initializer[0])
    result = converter.rewrite(model, fold_transposes=False)
    conv_w = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "W_conv_weight"))
    np.testing.assert_array_equal(conv_w[:, :, 0, 0], w.T)
    assert [t.name for t in result.model.graph.initializer] == ["W_conv_weight"]  # the old W is dead and gone


@pytest.mark.parametrize(
    ("options", "reason", "extra_ops"),
    [
        (Dense(bias="runtime"), "bias_not_constant", {}),
        (Dense(bias="graph_input"), "bias_is_graph_input", {}),
        (Dense(bias_shape=(1, H, 1, K)), "bias_not_per_channel", {}),
        (Dense(bias_shape=(W_, K)), "bias_not_per_channel", {}),
        (Dense(bias_shape=(2, 1, 1, 1, K)), "bias_not_per_channel", {}),
        (Dense(fanout=True), "matmul_output_fanout", {"Relu": 1}),
        (Dense(matmul_is_output=True), "matmul_output_is_graph_output", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_add_stays_when_not_a_per_channel_bias(options: Dense, reason: str, extra_ops: dict[str, int]) -> None:
    model = dense_model(options)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {**KEPT_ADD, **extra_ops})
    d = only_decision(result)
    assert d.rewritten and d.notes == {"bias_folded": False, "bias_reason": reason}
    add = next(n for n in result.model.graph.node if n.op_type == "Add")
    assert "mm" in add.input  # the Add still reads the MatMul's tensor, now made by the last Transpose


def test_without_add_only_matmul_is_rewritten() -> None:
    model = dense_model(bias=None)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)
    assert only_decision(result).notes == {"bias_folded": False}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (Dense(weight="runtime"), "weight_not_constant"),
        (Dense(weight="graph_input"), "weight_is_graph_input"),
        (Dense(x_shape=("N", H * W_, C)), "rank_not_4"),
        (Dense(x_shape=(1, 2, H, W_, C)), "rank_not_4"),
        (Dense(x_source="unknowable", bias=None), "rank_unknown"),
        (Dense(weight_shape=(2, 1, C, K), x_shape=(2, H, W_, C)), "weight_batched"),
        (Dense(weight_shape=(C,), bias=None), "weight_rank"),
        (Dense(dtype=TensorProto.DOUBLE), "dtype_unsupported"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_declines_with_reason(options: Dense, reason: str) -> None:
    model = dense_model(options)
    result = converter.rewrite(model, fold_transposes=False)
    d = only_decision(result)
    assert (d.rewritten, d.reason) == (False, reason)
    assert d.detail  # a sentence for the user, not only the code
    assert result.model.SerializeToString() == model.SerializeToString()  # nothing changed at all
    if reason != "rank_unknown":  # an input of unknown rank cannot be fed random data
        shapes = {"x": [2, H, W_, C]} if reason == "weight_batched" else None
        assert_rewritten(
            model,
            result,
            dict(sorted(converter.rewrite(model, fold_transposes=False).report.ops_before.items())),
            input_shapes=shapes,
        )


def test_float64_reason_names_the_provider() -> None:
    d = only_decision(converter.rewrite(dense_model(dtype=TensorProto.DOUBLE), fold_transposes=False))
    assert "CPUExecutionProvider" in d.detail and "double" in d.detail


def test_channel_mismatch_declines() -> None:
    model = dense_model(x_shape=("N", H, W_, C + 1))
    assert only_decision(converter.rewrite(model, fold_transposes=False)).reason == "shape_mismatch"


def test_input_model_is_not_modified() -> None:
    model = dense_model()
    before = model.SerializeToString()
    converter.rewrite(model, fold_transposes=False)
    assert model.SerializeToString() == before


def test_shared_weight_becomes_one_conv_weight() -> None:
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((C, K)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"], name="a"), helper.make_node("MatMul", ["x2", "W"], ["b"], name="b")],
        "shared",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H, W_, C]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, W_, H, C]),
        ],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, None), helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
        [w],
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {"Conv": 2, "Transpose": 4})
    assert [t.name for t in result.model.graph.initializer] == ["W_conv_weight"]


def test_weight_kept_while_a_skipped_node_still_reads_it() -> None:
    w = numpy_helper.from_array(np.ones((C, K), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"], name="a"), helper.make_node("MatMul", ["v", "W"], ["b"], name="b")],
        "partial",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H, W_, C]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [H, C]),
        ],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, None), helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
        [w],
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {"Conv": 1, "MatMul": 1, "Transpose": 2})
    assert [t.name for t in result.model.graph.initializer] == ["W", "W_conv_weight"]
    assert result.report.skipped_by_reason == {"rank_not_4": 1}


def test_new_names_are_unique_and_derived_from_originals() -> None:
    model = dense_model()
    # Occupy the names the rule would pick first.
    model.graph.node.append(helper.make_node("Relu", ["x"], ["dense_nchw"], name="dense_conv"))
    model.graph.output.append(helper.make_tensor_value_info("dense_nchw", TensorProto.FLOAT, ["N", H, W_, C]))
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, {**FOLDED, "Relu": 1})
    names = [n.name for n in result.model.graph.node]
    assert len(set(names)) == len(names)
    assert {"dense_to_nchw", "dense_conv_1", "dense_to_nhwc"} <= set(names)
    tensors = [o for n in result.model.graph.node for o in n.output]
    assert len(set(tensors)) == len(tensors) and "dense_nchw_1" in tensors


@pytest.mark.parametrize("ir_version", [8, 10])
def test_new_nodes_carry_provenance(ir_version: int) -> None:
    model = dense_model(ir_version=ir_version, opset=21 if ir_version >= 10 else 17)
    result = converter.rewrite(model, fold_transposes=False)
    for node in result.model.graph.node:
        if ir_version >= 10:
            assert {p.key: p.value for p in node.metadata_props} == {PROVENANCE_KEY: "matmul_add_to_conv from dense"}
        else:
            assert node.doc_string == f"{PROVENANCE_KEY}: matmul_add_to_conv from dense"


def _if_model() -> onnx.ModelProto:
    """Dense layers inside both If branches, reading an outer-scope input and outer-scope weights."""
    rng = np.random.default_rng(3)
    outer = [numpy_helper.from_array(rng.standard_normal((C, K)).astype(np.float32), "W_outer")]

    def branch(tag: str, bias: bool) -> onnx.GraphProto:
        inits = [numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), f"b_{tag}")]
        nodes = [helper.make_node("MatMul", ["x", "W_outer"], [f"mm_{tag}"], name=f"dense_{tag}")]
        out = f"mm_{tag}"
        if bias:
            nodes.append(helper.make_node("Add", [f"mm_{tag}", f"b_{tag}"], [f"y_{tag}"], name=f"add_{tag}"))
            out = f"y_{tag}"
        else:
            nodes.append(helper.make_node("Relu", [f"mm_{tag}"], [f"y_{tag}"], name=f"relu_{tag}"))
            out = f"y_{tag}"
        return helper.make_graph(
            nodes, tag, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits if bias else []
        )

    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["cond"], ["y"], name="branch", then_branch=branch("then", True), else_branch=branch("else", False)
            )
        ],
        "with_if",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", H, W_, C]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        outer,
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_rewrites_inside_if_branches() -> None:
    model = _if_model()
    result = converter.rewrite(model, fold_transposes=False)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report.rewritten == 2
    assert {d.graph for d in result.report.decisions} == {"main/branch.then_branch", "main/branch.else_branch"}
    assert result.report.ops_after == {"Conv": 2, "If": 1, "Relu": 1, "Transpose": 4}
    # The outer weight is read by nobody now; each branch holds its own Conv weight.
    assert [t.name for t in result.model.graph.initializer] == []
    x = np.random.default_rng(0).standard_normal((2, H, W_, C)).astype(np.float32)
    for cond in (True, False):
        check = converter.verify(model, result, inputs={"cond": np.array(cond), "x": x})
        assert check.passed, check.to_dict()


def test_rewrites_inside_loop_body() -> None:
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.standard_normal((C, C)).astype(np.float32), "W_loop")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "W_loop"], ["state_out"], name="loop_dense"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1, H, W_, C]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, H, W_, C]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)],
        "with_loop",
        [
            helper.make_tensor_value_info("trips", TensorProto.INT64, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H, W_, C]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H, W_, C])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = converter.rewrite(model, fold_transposes=False)
    assert result.report.rewritten == 1
    onnx.checker.check_model(result.model, full_check=True)
    x = rng.standard_normal((1, H, W_, C)).astype(np.float32)
    check = converter.verify(model, result, inputs={"trips": np.array(3, np.int64), "x": x})
    assert check.passed, check.to_dict()
    assert result.report.ops_after == {"Conv": 1, "Identity": 1, "Loop": 1, "Transpose": 2}


def test_dead_weight_removal_stays_in_its_own_graph() -> None:
    """A sibling branch's unused initializer of the same name was unused before: it stays."""
    rng = np.random.default_rng(6)

    def branch(tag: str, dense: bool) -> onnx.GraphProto:
        weight = numpy_helper.from_array(rng.standard_normal((C, K)).astype(np.float32), "W_local")
        node = (
            helper.make_node("MatMul", ["x", "W_local"], [f"y_{tag}"], name=f"dense_{tag}")
            if dense
            else helper.make_node("Slice", ["x", "starts", "ends", "axes"], [f"y_{tag}"], name=f"slice_{tag}")
        )
        inits = (
            [weight]
            if dense
            else [weight]
            + [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("starts", 0), ("ends", K), ("axes", 3))]
        )
        return helper.make_graph([node], tag, [], [helper.make_tensor_value_info(f"y_{tag}", TensorProto.FLOAT, None)], inits)

    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["cond"], ["y"], name="branch", then_branch=branch("then", True), else_branch=branch("else", False)
            )
        ],
        "siblings",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H, W_, C]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model = onnx.ModelProto.FromString(model.SerializeToString())
    result = converter.rewrite(model, fold_transposes=False)
    assert result.report.rewritten == 1
    branches = {a.name: a.g for a in result.model.graph.node[0].attribute}
    then_b, else_b = branches["then_branch"], branches["else_branch"]
    assert [t.name for t in then_b.initializer] == ["W_local_conv_weight"]
    assert [t.name for t in else_b.initializer] == ["W_local", "starts", "ends", "axes"]


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:  # noqa: ANN001
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _loads(model: onnx.ModelProto) -> None:
    import onnxruntime as ort

    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_scalar_bias_shared_by_layers_of_different_widths_gets_one_vector_per_width() -> None:
    """The derived bias's cache key must hold its length: [6] and [7] from one scalar."""
    vi = helper.make_tensor_value_info
    rng = np.random.default_rng(0)
    model = _model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["m1"]),
            helper.make_node("Add", ["m1", "b"], ["y1"]),
            helper.make_node("MatMul", ["x", "W2"], ["m2"]),
            helper.make_node("Add", ["m2", "b"], ["y2"]),
        ],
        [vi("x", TensorProto.FLOAT, [2, H, W_, C])],
        [vi("y1", TensorProto.FLOAT, [2, H, W_, 6]), vi("y2", TensorProto.FLOAT, [2, H, W_, 7])],
        [
            numpy_helper.from_array(rng.standard_normal((C, 6)).astype(np.float32), "W1"),
            numpy_helper.from_array(rng.standard_normal((C, 7)).astype(np.float32), "W2"),
            numpy_helper.from_array(np.array(0.5, np.float32), "b"),
        ],
    )
    result = converter.rewrite(model)
    biases = sorted(list(t.dims) for t in result.model.graph.initializer if t.name.startswith("b_conv_bias"))
    assert biases == [[6], [7]]
    _loads(result.model)
    assert_rewritten(model, result, {"Conv": 2, "Transpose": 3})  # both layers read one Transpose of x


def test_a_zero_size_dim_is_declined() -> None:
    model = dense_model(x_shape=(2, 0, W_, C))
    result = converter.rewrite(model)
    assert only_decision(result).reason == "zero_size"
    _loads(result.model)


def test_a_declared_rank_that_inference_contradicts_is_not_trusted() -> None:
    """value_info says t is [2, 3, 5, 4]; the Reshape makes it rank 3. Trusting the declaration would rewrite it."""
    vi = helper.make_tensor_value_info
    model = _model(
        [helper.make_node("Reshape", ["x", "s"], ["t"]), helper.make_node("MatMul", ["t", "W"], ["y"])],
        [vi("x", TensorProto.FLOAT, [2, 3, 5, 4])],
        [vi("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([6, 5, 4], np.int64), "s"),
            numpy_helper.from_array(np.ones((4, 6), np.float32), "W"),
        ],
    )
    model.graph.value_info.append(vi("t", TensorProto.FLOAT, [2, 3, 5, 4]))
    result = converter.rewrite(model)
    assert only_decision(result).reason == "rank_conflict"
    _loads(result.model)


@pytest.mark.parametrize("kind", ["identity", "identity_chain", "cast", "transposed", "reshaped", "unsqueezed"])
@pytest.mark.parametrize("role", ["weight", "bias", "both"])
def test_constants_behind_ops_exporters_leave_are_constants(kind: str, role: str) -> None:
    """TorchScript reads deduplicated initializers through Identity; Cast/Transpose/Reshape/Unsqueeze of an
    initializer are constants too: the layer is rewritten, the bias folded, and the chain goes away."""
    bias_shape = (1, K) if kind == "unsqueezed" else (K,)
    options = Dense(
        weight=kind if role in ("weight", "both") else "initializer",
        bias=kind if role in ("bias", "both") else "initializer",
        weight_shape=(1, C, K) if kind == "unsqueezed" and role != "bias" else (C, K),
        bias_shape=bias_shape if role != "weight" else (K,),
    )
    model = dense_model(options)
    result = converter.rewrite(model, fold_transposes=False)
    assert_rewritten(model, result, FOLDED)  # no Identity/Cast/... left: what read the constants is gone
    d = only_decision(result)
    assert d.rewritten and d.notes == {"bias_folded": True}
    read = {name for n in result.model.graph.node for name in n.input}
    assert {t.name for t in result.model.graph.initializer} <= read  # and what they read, unless still used


def test_a_bias_behind_identity_is_the_initializer_it_reads() -> None:
    model = dense_model(Dense(bias="identity_chain"))
    result = converter.rewrite(model, fold_transposes=False)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert conv.input[2] == "b_src"  # no copy of the bias


def test_layers_reading_one_weight_through_identities_share_one_conv_weight() -> None:
    """The TorchScript exporter's deduplication: equal weights become one initializer read through Identity."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((C, C)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Identity", ["w"], ["w1"]),
        helper.make_node("Identity", ["w"], ["w2"]),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", H, W_, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H, W_, C])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = converter.rewrite(model)
    assert_rewritten(model, result, {"Conv": 2, "Transpose": 2})
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] == convs[1].input[1]
    assert [t.name for t in result.model.graph.initializer] == [convs[0].input[1]]


def test_an_identity_of_an_overridable_initializer_is_not_a_constant() -> None:
    """An initializer that is also a graph input can be replaced by the caller: an Identity of it is not constant."""
    model = dense_model(Dense(weight="identity"))
    model.graph.input.append(helper.make_tensor_value_info("W_src", TensorProto.FLOAT, [C, K]))
    d = only_decision(converter.rewrite(model))
    assert not d.rewritten and d.reason == "weight_not_constant"


def test_a_cast_the_runtime_defines_is_not_folded() -> None:
    """Float -> int Cast truncates by the runtime's own rules: not folded, so the layer is declined."""
    model = dense_model(Dense(weight="cast"))
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    cast.attribute[0].i = TensorProto.INT32
    d = only_decision(converter.rewrite(model))
    assert not d.rewritten and d.reason == "weight_not_constant"


def test_a_very_long_identity_chain_is_declined_not_a_crash() -> None:
    model = dense_model(Dense(weight="identity"))
    ident = next(n for n in model.graph.node if n.op_type == "Identity")
    chain = []
    prev = "W_src"
    for i in range(5000):
        chain.append(helper.make_node("Identity", [prev], [f"W_{i}"]))
        prev = f"W_{i}"
    ident.input[0] = prev
    nodes = chain + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    d = only_decision(converter.rewrite(model))
    assert not d.rewritten and d.reason == "weight_not_constant"


def test_a_reshape_the_runtime_would_reject_is_not_a_constant() -> None:
    model = dense_model(Dense(weight="reshaped"))
    shape = next(t for t in model.graph.initializer if t.name == "W_shape")
    shape.CopyFrom(numpy_helper.from_array(np.array([C + 1, K], np.int64), "W_shape"))
    d = only_decision(converter.rewrite(model))
    assert not d.rewritten and d.reason in ("weight_not_constant", "rank_unknown")


def cpb_mlp_model() -> onnx.ModelProto:
    """SwinV2's continuous position bias: an MLP on a fixed [1, 15, 15, 2] coordinate table, added to a real input."""
    rng = np.random.default_rng(2)
    table = numpy_helper.from_array(rng.standard_normal((1, 15, 15, 2)).astype(np.float32), "table")
    w1 = numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w2")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1")
    nodes = [
        helper.make_node("Identity", ["table"], ["coords"]),
        helper.make_node("MatMul", ["coords", "w1"], ["h"], name="cpb_fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["bias_table"], name="cpb_fc2"),
        helper.make_node("Add", ["x", "bias_table"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cpb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 15, 15, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 15, 15, 3])],
        [table, w1, w2, b1],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layers_that_only_see_constants_are_declined() -> None:
    model = cpb_mlp_model()
    result = converter.rewrite(model)
    assert [(d.node, d.reason) for d in result.report.decisions] == [
        ("cpb_fc1", "constant_input"),
        ("cpb_fc2", "constant_input"),
    ]
    assert result.model.SerializeToString() == model.SerializeToString()


def test_a_layer_on_a_graph_input_or_a_random_op_is_not_constant() -> None:
    model = cpb_mlp_model()
    model.graph.node[0].CopyFrom(helper.make_node("RandomNormalLike", ["table"], ["coords"], seed=1.0))
    decisions = converter.rewrite(model, layout="keep-all").report.decisions
    assert [d.rewritten for d in decisions] == [True, True]
