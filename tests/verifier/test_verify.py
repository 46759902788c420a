"""Verification: every bug class is caught, correct rewrites raise no false alarm, inputs expose layout bugs,
degenerate outputs are not taken as evidence, and every rewritten layer is reached."""

from __future__ import annotations

import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.inputs import random_array
from converter.verifier.numbers.outputs import compare, end_to_end_atol, rms
from converter.verifier.sessions import VerificationTimeout
from models import graphs
from models.graphs import Builder
from tests.bugs import BUGS, EQUIVALENT, WRONG, inject
from tests.conftest import W_, C, Dense, H, K, concrete_shapes, dense_model, with_output_shapes

FALSE_ALARM_CASES = int(os.environ.get("CONVERTER_FALSE_ALARM_CASES", "60"))


def head_model(kind: str, symbolic: bool = False) -> onnx.ModelProto:
    """Two dense layers whose effect the outputs hide: a zero head, NaN everywhere, saturation."""
    b = Builder(3)
    x = "x"
    if kind == "nan":  # log of a negative number: every value is NaN whatever the input
        x = b.op("Log", b.op("Sub", b.op("Neg", b.op("Abs", x)), b.const(np.float32(1.0))))
    if kind == "log":  # NaN for negative inputs only: positive inputs exercise the layers
        x = b.op("Log", x)
    y = b.op("Relu", b.dense(x, 8, 12))
    y = b.dense(y, 12, 8)
    if kind == "zero_head":
        # Pooled over W only: pooled over H and W, an H/W swap before the pool would change nothing at all
        # (the certificate proves such a model equal, and rightly so).
        y = b.op("MatMul", b.op("ReduceMean", y, axes=[2], keepdims=0), b.const(np.zeros((8, 5), np.float32)))
    if kind == "saturated":
        y = b.op("Softmax", b.op("Mul", y, b.const(np.float32(1e4))), axis=-1)
    if kind == "argmax":
        y = b.op("ArgMax", y, axis=-1, keepdims=0)
    model = b.model([("x", ["N", "H", "W", 8] if symbolic else [2, 3, 5, 8])], [y])
    if kind == "argmax":
        model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    return model


BUG_MODELS = {
    "static": lambda: dense_model(x_shape=(2, H, W_, C)),
    "static_c_eq_k": lambda: dense_model(x_shape=(2, H, W_, K), weight_shape=(K, K)),
    "symbolic": lambda: dense_model(x_shape=("N", "H", "W", C)),
    "convnext_block": lambda: graphs.convnext_block(c=8),
    "zero_head": lambda: head_model("zero_head", symbolic=True),
    "saturated": lambda: head_model("saturated"),
    "argmax": lambda: head_model("argmax", symbolic=True),
    "nan": lambda: head_model("nan"),
    "if": graphs.dense_in_if,
}


def rewritten(make) -> tuple[onnx.ModelProto, converter.RewriteResult]:  # noqa: ANN001
    model = make()
    return model, converter.rewrite(model, layout="keep-all")  # every layer: these test verification, not the policy


@pytest.mark.parametrize("claims", ["given", "found"])
@pytest.mark.parametrize("model_name", list(BUG_MODELS))
def test_every_bug_class_in_every_layer_is_caught(model_name: str, claims: str) -> None:
    """Each bug, in each layer: never passed; the structural certificate alone never proves it either. With the
    claims found from the two graphs (``convert --check``), a broken Conv may stand for no layer at all: it is
    then unexplained, which is never passed either."""
    model, result = rewritten(BUG_MODELS[model_name])
    assert converter.verify(model, result).verdict == ("incomplete" if model_name == "nan" else "passed")
    tried = set()
    for bug in BUGS:
        for which in range(len(result.report.layers)):
            broken = onnx.ModelProto()
            broken.CopyFrom(result.model)
            if not inject(broken, result.report.layers, bug, which):
                continue
            tried.add(bug)
            check = converter.verify(model, broken, layers=result.report.layers if claims == "given" else None)
            assert check.verdict != "passed", (bug, which)
            layer = next((c for c in check.layers if c.conv == result.report.layers[which].conv), None)
            assert not check.structure["proved"] or (layer is not None and layer.structure != "proved"), (bug, which)
    assert len(tried) >= len(BUGS) - 1  # a wrong group needs even channel counts


@pytest.mark.parametrize("model_name", [m for m in BUG_MODELS if m != "nan"])
def test_equivalent_edits_pass_and_wrong_ones_never_do(model_name: str) -> None:
    """tests/bugs.py's edits of a whole converted model, at a few random places each, verified with the layers
    found (as ``convert --check`` does): every equivalent one passes, no wrong one does."""
    model, result = rewritten(BUG_MODELS[model_name])
    for table, want in ((EQUIVALENT, True), (WRONG, False)):
        for edit, apply in table.items():
            for seed in range(2):
                edited = onnx.ModelProto()
                edited.CopyFrom(result.model)
                if not apply(edited, result.report.layers, np.random.default_rng(seed)):
                    continue
                check = converter.verify(model, edited)
                assert check.passed == want, (edit, seed, check.verdict, check.structure)


@pytest.mark.parametrize("model_name", ["static", "symbolic", "static_c_eq_k", "convnext_block", "saturated", "if"])
def test_numbers_alone_catch_every_bug_where_the_outputs_can_show_it(model_name: str) -> None:
    """Independent of the certificate: the layer checks or the outputs fail for every bug."""
    model, result = rewritten(BUG_MODELS[model_name])
    for bug in BUGS:
        for which in range(len(result.report.layers)):
            broken = onnx.ModelProto()
            broken.CopyFrom(result.model)
            if not inject(broken, result.report.layers, bug, which):
                continue
            check = converter.verify(model, broken, layers=result.report.layers)
            numbers_failed = any(c.numbers == "failed" for c in check.layers) or any(not o.passed for o in check.outputs)
            assert numbers_failed, (bug, which, [(c.numbers, c.numbers_detail) for c in check.layers])


def test_the_layer_check_catches_a_one_in_a_thousand_weight_error() -> None:
    model, result = rewritten(lambda: dense_model(x_shape=(2, H, W_, C)))
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    assert inject(broken, result.report.layers, "weight_element")
    check = converter.verify(model, broken, layers=result.report.layers)
    (layer,) = check.layers
    assert layer.numbers == "failed" and "rounding bound" in layer.numbers_detail
    assert layer.structure == "refuted" and "differs from the original's in 1 of" in layer.structure_detail


def correct_chain(seed: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray] | None]:
    """1-3 dense layers (C, K up to 2048; fp32 or fp16), at various input and weight scales."""
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 4))
    dims = [int(v) for v in rng.choice([1, 3, 16, 96, 384, 768, 1024, 2048], size=layers + 1)]
    h, w = (int(v) for v in rng.integers(1, 6, size=2))
    dt = TensorProto.FLOAT16 if seed % 4 == 3 else TensorProto.FLOAT
    np_dt = np.float16 if dt == TensorProto.FLOAT16 else np.float32
    w_scale = 1e-3 if seed % 5 == 1 else 1.0
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        c, k = dims[i], dims[i + 1]
        weight = (rng.standard_normal((c, k)) / np.sqrt(c) * w_scale).astype(np_dt)
        bias = (rng.standard_normal(k) * (0.1 if seed % 3 else 100.0)).astype(np_dt)
        inits += [numpy_helper.from_array(weight, f"W{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"y{i}"])]
        x = f"y{i}"
        if i < layers - 1 and seed % 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", dt, ["N", h, w, dims[0]])],
        [helper.make_tensor_value_info(x, dt, None)],
        inits,
    )
    model = with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    inputs = None
    if seed % 6 in (1, 2, 3):  # through `inputs`: x1e3, a large mean offset, both
        x_in = rng.standard_normal((2, h, w, dims[0]))
        x_in = {1: x_in * 1e3, 2: x_in + 1e3, 3: x_in * 30 + 50}[seed % 6]
        inputs = {"x": x_in.astype(np_dt)}
    return model, inputs


@pytest.mark.parametrize("seed", range(FALSE_ALARM_CASES))
def test_no_false_alarm_on_correct_rewrites(seed: int) -> None:
    model, inputs = correct_chain(seed)
    result = converter.rewrite(model)
    check = converter.verify(model, result, inputs=inputs)
    assert not any(c.failed for c in check.layers) and all(o.passed for o in check.outputs), check.to_dict()
    for layer in check.layers:
        assert layer.output_bound_ratio < 1.0
        # "not exercised" only when the data never reached the layer (a ReLU zeroed everything)
        assert layer.numbers == "passed" or "one repeated value" in layer.numbers_detail


def test_layer_scale_does_not_inflate_the_tolerance_of_other_channels() -> None:
    """A bias of 1e5 on one channel: a 5% error on another channel is still caught (per-element bounds)."""
    model = dense_model(x_shape=(2, H, W_, C), bias=None)
    b = numpy_helper.from_array(np.array([1e5] + [0.0] * (K - 1), np.float32), "b_big")
    model.graph.initializer.append(b)
    add = helper.make_node("Add", ["mm", "b_big"], ["y"])
    model.graph.node.append(add)
    model.graph.output[0].name = "y"
    model = with_output_shapes(model)
    result = converter.rewrite(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    w = next(t for t in broken.graph.initializer if t.name == conv.input[1])
    value = numpy_helper.to_array(w).copy()
    value[1] *= np.float32(1.05)  # output channel 1 only
    w.CopyFrom(numpy_helper.from_array(value, w.name))
    check = converter.verify(model, broken, layers=result.report.layers)
    assert check.verdict == "failed" and check.layers[0].numbers == "failed"


def test_symbolic_dims_get_distinct_values_greater_than_one_and_are_reported() -> None:
    model = dense_model(x_shape=("batch", "height", "width", C))
    check = converter.verify(model, converter.rewrite(model))
    assert check.passed
    (x,) = check.inputs
    n, h, w, c = x.shape
    assert n == 2 and h > 1 and w > 1 and h != w and c == C and C not in (h, w)
    assert [d.name for d in check.dims] == ["batch", "height", "width"] and all(d.why for d in check.dims)
    assert not check.layers[0].weak_shape


def test_a_stride_32_model_with_dynamic_shapes_verifies_without_input_shape() -> None:
    """The torchvision ConvNeXt export (stride-4 stem, three stride-2 downsamples): 1x1 would not run."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "models", "fixtures", "torch_convnext_small_dynamic_ts.onnx")
    model = onnx.load(path)
    check = converter.verify(model, converter.rewrite(model))
    assert check.passed, check.to_dict()
    dims = {d.name: d.value for d in check.dims}
    assert dims["N"] == 2 and dims["H"] != dims["W"] and dims["H"] % 8 == 0 and dims["W"] % 8 == 0
    assert all(not layer.weak_shape for layer in check.layers)


def test_an_original_that_runs_at_no_tried_shape_says_how_to_fix_it() -> None:
    b = Builder(0)
    y = b.op("Reshape", "x", b.const(np.array([1, 7, 7, 4]), np.int64))  # only runs when N*H*W == 49
    model = b.model([("x", ["N", "H", "W", 4])], [b.dense(y, 4, 6)])
    with pytest.raises(converter.InputError, match="give --input-shape"):
        converter.verify(model, converter.rewrite(model, layout="keep-all"))
    check = converter.verify(model, converter.rewrite(model, layout="keep-all"), input_shapes={"x": [1, 7, 7, 4]})
    assert check.passed and check.layers[0].weak_shape


def test_layout_bug_is_caught_even_when_the_model_fixes_h_equal_w() -> None:
    model = dense_model(x_shape=(1, 4, 4, C))  # static N=1, H=W: the numbers alone cannot see every swap
    result = converter.rewrite(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    inject(broken, result.report.layers, "nh_swap_in")
    check = converter.verify(model, broken, layers=result.report.layers)
    assert check.verdict != "passed" and check.layers[0].structure == "refuted"
    assert converter.verify(model, result).layers[0].weak_shape


def test_zero_head_output_is_reported_as_no_evidence_and_layers_carry_the_verdict() -> None:
    model, result = rewritten(lambda: head_model("zero_head"))
    check = converter.verify(model, result)
    assert check.passed
    assert check.outputs[0].degenerate.startswith("constant")
    assert any("proves nothing" in n for n in check.notes)
    assert all(layer.numbers == "passed" and layer.trials == 2 for layer in check.layers)


def test_argmax_output_the_same_for_every_input_is_flagged() -> None:
    b = Builder(5)
    # The maximum over the last axis, kept as an axis of size 1: its ArgMax is 0 whatever the input.
    y = b.op("ArgMax", b.op("ReduceMax", b.dense("x", 4, 3), axes=[-1], keepdims=1), axis=-1, keepdims=0)
    model = b.model([("x", ["N", 3, 5, 4])], [y])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    check = converter.verify(model, converter.rewrite(model))
    assert check.outputs[0].degenerate and check.passed


def test_nan_everywhere_leaves_the_verdict_incomplete_not_passed() -> None:
    model, result = rewritten(lambda: head_model("nan"))
    check = converter.verify(model, result)
    assert check.verdict == "incomplete" and not check.passed
    assert all(layer.numbers == "not exercised" and "no finite values" in layer.numbers_detail for layer in check.layers)
    assert check.outputs[0].degenerate == "all NaN/Inf"


def test_log_before_the_layer_gets_a_trial_with_positive_inputs() -> None:
    model, result = rewritten(lambda: head_model("log", symbolic=True))
    check = converter.verify(model, result)
    assert check.passed and check.trials == 3 and any("positive inputs" in n for n in check.notes)


def test_both_branches_of_an_if_are_checked_and_a_broken_else_branch_fails() -> None:
    model, result = rewritten(graphs.dense_in_if)
    check = converter.verify(model, result)
    assert check.passed and {c.where for c in check.layers} == {"subgraph model"}
    else_layer = next(i for i, c in enumerate(result.report.layers) if "else" in c.conv)
    for bug in ("weights_scaled", "hw_swap_in"):
        broken = onnx.ModelProto()
        broken.CopyFrom(result.model)
        inject(broken, result.report.layers, bug, else_layer)
        # Feeding cond=True only: the full model never takes the else branch.
        check = converter.verify(model, broken, layers=result.report.layers, trials=1)
        assert check.verdict == "failed"
        layer = next(c for c in check.layers if "else" in c.conv)
        assert layer.numbers == "failed" and layer.where == "subgraph model", (bug, layer)


def test_trials_vary_scalar_booleans_and_seed_changes_the_inputs() -> None:
    model, result = rewritten(graphs.dense_in_if)
    one = converter.verify(model, result, trials=1)
    assert one.trials == 1
    a = converter.verify(model, result, seed=1)
    b = converter.verify(model, result, seed=2)
    assert a.seed == 1 and b.seed == 2 and a.trials == 2
    assert a.outputs[0].max_abs_error != b.outputs[0].max_abs_error or a.to_dict()["layers"] != b.to_dict()["layers"]
    from converter.verifier.inputs import Declared, make_feeds

    d = [Declared("x", TensorProto.FLOAT, [2, 3]), Declared("c", TensorProto.BOOL, [])]
    assert not np.array_equal(make_feeds(d, {"x": [2, 3], "c": []}, 1, 0)["x"], make_feeds(d, {"x": [2, 3], "c": []}, 2, 0)["x"])
    assert [bool(make_feeds(d, {"x": [2, 3], "c": []}, 0, t)["c"]) for t in range(2)] == [True, False]


def test_endless_loop_is_stopped_by_the_timeout() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Add", ["v", "one"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["", "go", "v0"], ["v_final"], body=body)],
        "endless",
        [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("v_final", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(True), "go")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    started = time.monotonic()
    with pytest.raises(VerificationTimeout, match="did not finish in time"):
        converter.verify(model, model, timeout=1.5)
    # Liveness, not speed: without the timeout the loop never ends; the bound is 80x the timeout, for a loaded machine.
    assert time.monotonic() - started < 120


def test_inputs_past_the_memory_budget_are_refused_before_allocating() -> None:
    model = dense_model(x_shape=("N", "H", "W", C))
    with pytest.raises(converter.InputError, match="over the .* budget"):
        converter.verify(model, converter.rewrite(model), input_shapes={"x": [100000, 100000, 64, C]})
    with pytest.raises(converter.InputError, match="over the 1.0 KiB budget"):
        converter.verify(model, converter.rewrite(model), max_memory=1024)


def test_end_to_end_atol_scales_with_output_depth_and_noise_but_a_given_atol_does_not() -> None:
    ref = np.full(10, 100.0, np.float32)
    assert end_to_end_atol(1e-5, ref, 0.0) == pytest.approx(1e-3)
    assert end_to_end_atol(1e-5, ref / 1000, 0.0) == 1e-5
    assert end_to_end_atol(1e-5, ref / 1000, 2.0) == 2e-5
    assert end_to_end_atol(1e-5, ref / 1000, 0.0, noise=1e-3) == 4e-3
    assert rms(np.array([3.0, 4.0, np.nan])) == pytest.approx(np.sqrt(12.5))
    model, result = rewritten(lambda: dense_model(x_shape=(2, H, W_, C)))
    assert converter.verify(model, result, atol=1e-5).outputs[0].atol == 1e-5


def test_input_shapes_fill_symbolic_dims_consistently() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "H", W_, C]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "H", W_, C]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", "H", W_, C])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    check = converter.verify(model, model, input_shapes={"a": [3, 7, W_, C]})
    assert [i.shape for i in check.inputs] == [[3, 7, W_, C], [3, 7, W_, C]]
    assert check.dims == [] and check.passed


def test_dtype_aware_random_inputs() -> None:
    ints = random_array(np.random.default_rng(0), np.dtype(np.int64), [1000])
    assert ints.min() >= 0 and ints.max() <= 3
    bools = random_array(np.random.default_rng(0), np.dtype(bool), [1000])
    assert bools.dtype == bool and 300 < bools.sum() < 700
    for dtype in (np.float32, np.int64, np.bool_):
        value = random_array(np.random.default_rng(0), np.dtype(dtype), [])
        assert isinstance(value, np.ndarray) and value.shape == () and value.dtype == dtype
    positive = random_array(np.random.default_rng(0), np.dtype(np.float32), [1000], distribution="positive")
    assert positive.min() > 0


def test_user_inputs_are_used_and_checked() -> None:
    model, result = rewritten(lambda: dense_model(x_shape=(2, H, W_, C)))
    x = np.random.default_rng(0).standard_normal((2, H, W_, C)).astype(np.float32)
    check = converter.verify(model, result, inputs={"x": x})
    assert check.passed and check.inputs[0].source == "file" and check.trials == 1
    with pytest.raises(converter.InputError, match="must be float"):
        converter.verify(model, result, inputs={"x": x.astype(np.float64)})
    with pytest.raises(converter.InputError, match="does not fit"):
        converter.verify(model, result, inputs={"x": np.zeros((2, W_, H, C), np.float32)})
    with pytest.raises(converter.InputError, match="no input named 'z'"):
        converter.verify(model, result, input_shapes={"z": [1]})


def test_fp16_outputs_get_looser_default_tolerances() -> None:
    model = dense_model(dtype=TensorProto.FLOAT16)
    check = converter.verify(model, converter.rewrite(model), input_shapes=concrete_shapes(model))
    assert check.passed and check.outputs[0].atol >= 1e-2 and check.outputs[0].rtol == 1e-2


def test_interface_change_fails_verification() -> None:
    model, result = rewritten(lambda: dense_model(x_shape=(2, H, W_, C)))
    result.model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    check = converter.verify(model, result)
    assert check.verdict == "failed" and check.interface_problems


def test_rewritten_model_that_cannot_run_is_a_failure_not_a_crash() -> None:
    model, result = rewritten(lambda: dense_model(x_shape=(2, H, W_, C)))
    next(n for n in result.model.graph.node if n.op_type == "Conv").input[1] = "no_such_weight"
    check = converter.verify(model, result)
    assert check.verdict == "failed" and "cannot load the rewritten model" in check.outputs[0].problem
    assert check.layers[0].numbers == "failed"


def test_original_that_cannot_run_is_an_input_error() -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H, W_, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H, W_, K])],
        [numpy_helper.from_array(np.ones((C + 1, K), np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(converter.InputError, match="cannot load the original model"):
        converter.verify(model, model)


@pytest.mark.parametrize("make", ["static", "convnext_block", "if"])
def test_verify_without_layer_claims_finds_the_layers(make: str) -> None:
    """A bare model pair: the layers are found from the two graphs, proved and checked as a rewrite's own claims."""
    model, result = rewritten(BUG_MODELS[make])
    check = converter.verify(model, result.model)
    assert check.passed, check.to_dict()
    assert sorted(c.conv for c in check.layers) == sorted(layer.conv for layer in result.report.layers)
    assert all(c.verified for c in check.layers) and any("found from the two graphs" in n for n in check.notes)


def test_a_found_layer_is_still_refuted_when_it_is_wrong() -> None:
    """Found, not trusted: a weight element off after discovery is refuted and caught by the numbers."""
    model, result = rewritten(lambda: dense_model(x_shape=(2, H, W_, C)))
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    inject(broken, result.report.layers, "hw_swap_in")
    check = converter.verify(model, broken)
    assert check.verdict == "failed" and check.layers[0].structure == "refuted" and check.layers[0].numbers == "failed"


@pytest.mark.parametrize(
    ("actual", "ref", "passed"),
    [
        ([1.0, np.nan, np.inf], [1.0, np.nan, np.inf], True),
        ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0], False),
        ([1.0, np.inf], [1.0, -np.inf], False),
        ([1.0 + 1e-6, 1000.0 + 0.05], [1.0, 1000.0], True),
        ([1.0 + 1e-3], [1.0], False),
    ],
)
def test_compare_rule(actual, ref, passed) -> None:
    out = compare("y", np.array(actual, np.float32), np.array(ref, np.float32), 1e-5, 1e-4)
    assert out.passed is passed
    if not passed:
        assert out.worst_index is not None


def test_integer_outputs_must_match_exactly() -> None:
    assert not compare("i", np.array([1, 2]), np.array([1, 3]), 1.0, 1.0).passed
    assert compare("i", np.array([1, 2]), np.array([1, 2]), 0.0, 0.0).passed


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_unavailable_is_a_clear_error() -> None:
    model, result = rewritten(lambda: dense_model(x_shape=(2, H, W_, C)))
    with pytest.raises(converter.ProviderUnavailable, match="CUDAExecutionProvider is not available"):
        converter.verify(model, result, providers="cuda")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_verification_runs_on_cuda() -> None:  # pragma: no cover - only where a GPU is present
    model = dense_model(dtype=TensorProto.FLOAT16)
    result = converter.rewrite(model, providers="cuda")
    check = converter.verify(model, result, providers="cuda", input_shapes=concrete_shapes(model))
    assert check.passed and check.providers[0] == "CUDAExecutionProvider"


def test_fanout_model_round_trip_counts_all_outputs() -> None:
    model = with_output_shapes(dense_model(Dense(fanout=True)))
    check = converter.verify(model, converter.rewrite(model), input_shapes=concrete_shapes(model))
    assert [o.name for o in check.outputs] == ["y", "side"] and check.passed


def test_past_the_sampling_threshold_numbers_check_each_class_and_a_sample_and_the_certificate_every_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More layers than ``SAMPLE_ABOVE`` (lowered here): the numbers check the first layer of each class and a seeded
    sample, the report says so, the others pass by their class; a bug in a layer no number looked at is still
    caught, by the certificate that proves every layer."""
    import converter.verifier.run as run

    monkeypatch.setattr(run, "SAMPLE_ABOVE", 4)
    monkeypatch.setattr(run, "SAMPLE_EXTRA", 1)
    model = graphs.dense_chain(8, c=6, h=3, w=5)
    result = converter.rewrite(model, layout="keep-all")
    check = converter.verify(model, result)
    assert check.passed, check.to_dict()
    note = next(n for n in check.notes if n.startswith("numbers checked on 2 of 8 rewritten layers"))
    assert "the first layer of each of the 1 classes" in note and "1 more chosen at random (seed 0)" in note
    ran = [c for c in check.layers if c.trials]
    assert len(ran) == 2 and all("by its class" in c.numbers_detail for c in check.layers if not c.trials)
    skipped = next(i for i, layer in enumerate(result.report.layers) if layer.conv not in {c.conv for c in ran})
    for bug in ("weights_scaled", "hw_swap_in"):
        broken = onnx.ModelProto()
        broken.CopyFrom(result.model)
        assert inject(broken, result.report.layers, bug, skipped)
        check = converter.verify(model, broken, layers=result.report.layers)
        assert check.verdict == "failed", bug
        assert next(c for c in check.layers if c.conv == result.report.layers[skipped].conv).structure == "refuted"


def test_float16_products_below_the_smallest_normal_are_no_false_alarm() -> None:
    """A float16 layer whose products are subnormal (a weight of 1e-4 on inputs near 1): rounding there loses up to
    half of a fixed step (6e-8), which no relative bound covers; a correct rewrite still passes (a hypothesis
    example once failed it, 7.5x over the bound)."""
    o = Dense(
        x_shape=(2, 2, 3, 1),
        x_source="declared",
        dtype=TensorProto.FLOAT16,
        weight_shape=(1, 1),
        matmul_is_output=True,
        seed=117,
        extra={"h": 2, "w": 3},
    )
    model = dense_model(o)
    result = converter.rewrite(model, layout="keep-all")
    w = next(t for t in model.graph.initializer if t.name == "W")
    assert abs(float(numpy_helper.to_array(w).ravel()[0])) < 6.1e-5 * 4  # products below float16's smallest normal
    check = converter.verify(model, result, seed=117)
    assert check.passed, check.to_dict()
