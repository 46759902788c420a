"""The verifier has teeth (every classic rewrite bug is caught) and raises no false alarms."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verify import compare
from tests.conftest import W_, C, Dense, H, K, concrete_shapes, dense_model, with_output_shapes


def correct_rewrite() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = dense_model(x_shape=(2, H, W_, C))
    result = converter.rewrite(model)
    assert converter.verify(model, result.model).passed
    return model, result.model


def _node(model: onnx.ModelProto, op: str, index: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op][index]


def weight_not_transposed(model: onnx.ModelProto) -> None:
    init = next(t for t in model.graph.initializer if t.name == _node(model, "Conv").input[1])
    w = numpy_helper.to_array(init)[:, :, 0, 0].T  # back to [C, K]
    init.CopyFrom(numpy_helper.from_array(w.reshape(K, C, 1, 1), init.name))  # reshaped, never transposed


def bias_dropped(model: onnx.ModelProto) -> None:
    del _node(model, "Conv").input[2]


def h_and_w_swapped(model: onnx.ModelProto) -> None:
    perm = _node(model, "Transpose", 1).attribute[0]
    perm.ints[:] = [0, 3, 2, 1]  # N,K,H,W -> N,W,H,K


def wrong_input_perm(model: onnx.ModelProto) -> None:
    perm = _node(model, "Transpose", 0).attribute[0]
    perm.ints[:] = [0, 3, 2, 1]  # N,H,W,C -> N,C,W,H: the Conv then runs on a transposed image


def channels_reversed(model: onnx.ModelProto) -> None:
    init = next(t for t in model.graph.initializer if t.name == _node(model, "Conv").input[1])
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, ::-1]), init.name))  # input channels in wrong order


@pytest.mark.parametrize("bug", [weight_not_transposed, bias_dropped, h_and_w_swapped, wrong_input_perm, channels_reversed])
def test_each_classic_bug_is_reported(bug) -> None:
    original, rewritten = correct_rewrite()
    broken = onnx.ModelProto()
    broken.CopyFrom(rewritten)
    bug(broken)
    check = converter.verify(original, broken)
    assert not check.passed
    (out,) = check.outputs
    assert not out.passed and (out.mismatched > 0 or out.problem)
    assert out.max_abs_error > out.atol


def test_default_atol_scales_with_output_magnitude_but_given_atol_does_not() -> None:
    ref = np.full(10, 100.0, np.float32)
    model, rewritten = correct_rewrite()
    check = converter.verify(model, rewritten)
    assert check.outputs[0].atol >= 1e-5
    assert converter.verify(model, rewritten, atol=1e-5).outputs[0].atol == 1e-5
    from converter.verify import _scale

    assert _scale(ref) == pytest.approx(100.0) and _scale(ref / 1000) == 1.0


@pytest.mark.parametrize("seed", range(24))
def test_no_false_alarm_on_correct_rewrites(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c, k = (int(v) for v in rng.choice([1, 3, 16, 96, 384, 768], size=2))
    h, w = (int(v) for v in rng.integers(1, 17, size=2))
    dtype = TensorProto.FLOAT16 if seed % 4 == 3 else TensorProto.FLOAT
    model = dense_model(Dense(x_shape=("N", h, w, c), weight_shape=(c, k), bias_shape=(k,), dtype=dtype, seed=seed))
    result = converter.rewrite(model)
    assert result.report.rewritten == 1
    check = converter.verify(model, result.model, input_shapes={"x": [2, h, w, c]}, seed=seed)
    assert check.passed, check.to_dict()


def test_symbolic_dims_default_to_one_and_are_reported() -> None:
    model = dense_model(x_shape=("batch", "height", W_, C))
    result = converter.rewrite(model)
    check = converter.verify(model, result.model)
    assert check.passed
    assert check.inputs[0].shape == [1, 1, W_, C]
    assert len(check.assumptions) == 2 and "'batch'" in check.assumptions[0] and "'height'" in check.assumptions[1]


def test_input_shapes_fill_symbolic_dims_consistently() -> None:
    rng = np.random.default_rng(0)
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
    check = converter.verify(model, model, input_shapes={"a": [3, 7, W_, C]}, seed=int(rng.integers(100)))
    assert [i.shape for i in check.inputs] == [[3, 7, W_, C], [3, 7, W_, C]]
    assert check.assumptions == [] and check.passed


def test_dtype_aware_random_inputs() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["ids_f", "mask_f"], ["y"]),
        ],
        "typed",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [64]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [64]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    check = converter.verify(model, model)
    assert check.passed and [(i.name, i.dtype) for i in check.inputs] == [("ids", "int64"), ("mask", "bool")]
    from converter.verify import random_array

    ints = random_array(np.random.default_rng(0), np.dtype(np.int64), [1000])
    assert ints.min() >= 0 and ints.max() <= 3
    bools = random_array(np.random.default_rng(0), np.dtype(bool), [1000])
    assert bools.dtype == bool and 300 < bools.sum() < 700


def test_scalar_inputs_of_every_kind_are_arrays_onnxruntime_accepts() -> None:
    """An If's condition is a 0-d bool: a comparison of 0-d arrays gives a numpy scalar, which onnxruntime refuses."""
    from converter.verify import random_array

    for dtype in (np.float32, np.int64, np.bool_):
        value = random_array(np.random.default_rng(0), np.dtype(dtype), [])
        assert isinstance(value, np.ndarray) and value.shape == () and value.dtype == dtype
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    graph = helper.make_graph(
        [helper.make_node("Not", ["cond"], ["y"])], "g", [cond], [helper.make_tensor_value_info("y", TensorProto.BOOL, [])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert converter.verify(model, model).passed


def test_inputs_are_seeded() -> None:
    model, rewritten = correct_rewrite()
    a = converter.verify(model, rewritten, seed=7)
    b = converter.verify(model, rewritten, seed=7)
    assert a.to_dict()["outputs"] == b.to_dict()["outputs"]


def test_user_inputs_are_used_and_checked() -> None:
    model, rewritten = correct_rewrite()
    x = np.zeros((2, H, W_, C), np.float32)
    check = converter.verify(model, rewritten, inputs={"x": x})
    assert check.passed and check.inputs[0].source == "file"
    with pytest.raises(converter.InputError, match="must be float"):
        converter.verify(model, rewritten, inputs={"x": x.astype(np.float64)})
    with pytest.raises(converter.InputError, match="does not fit"):
        converter.verify(model, rewritten, inputs={"x": np.zeros((2, W_, H, C), np.float32)})
    with pytest.raises(converter.InputError, match="no input named 'z'"):
        converter.verify(model, rewritten, input_shapes={"z": [1]})


def test_fp16_outputs_get_looser_default_tolerances() -> None:
    model = dense_model(dtype=TensorProto.FLOAT16)
    check = converter.verify(model, converter.rewrite(model).model, input_shapes=concrete_shapes(model))
    assert check.outputs[0].atol >= 1e-2 and check.outputs[0].rtol == 1e-2  # atol scaled by the output's rms
    model32 = dense_model()
    check32 = converter.verify(model32, converter.rewrite(model32).model, atol=0.5, input_shapes=concrete_shapes(model32))
    assert (check32.outputs[0].atol, check32.outputs[0].rtol) == (0.5, 1e-4)


def test_interface_change_fails_verification() -> None:
    model, rewritten = correct_rewrite()
    rewritten.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    check = converter.verify(model, rewritten)
    assert not check.passed and check.interface_problems


def test_rewritten_model_that_cannot_run_is_a_failure_not_a_crash() -> None:
    model, rewritten = correct_rewrite()
    _node(rewritten, "Conv").input[1] = "no_such_weight"
    check = converter.verify(model, rewritten)
    assert not check.passed and "cannot run the rewritten model" in check.outputs[0].problem


def test_original_that_cannot_run_is_an_input_error() -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H, W_, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H, W_, K])],
        [numpy_helper.from_array(np.ones((C + 1, K), np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(converter.InputError, match="cannot run the original model"):
        converter.verify(model, model)


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


def test_integer_outputs_must_match_exactly() -> None:
    assert not compare("i", np.array([1, 2]), np.array([1, 3]), 1.0, 1.0).passed
    assert compare("i", np.array([1, 2]), np.array([1, 2]), 0.0, 0.0).passed


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_unavailable_is_a_clear_error() -> None:
    model, rewritten = correct_rewrite()
    with pytest.raises(converter.ProviderUnavailable, match="CUDAExecutionProvider is not available"):
        converter.verify(model, rewritten, providers="cuda")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_verification_runs_on_cuda() -> None:  # pragma: no cover - only where a GPU is present
    model = dense_model(dtype=TensorProto.FLOAT16)
    result = converter.rewrite(model, providers="cuda")
    check = converter.verify(model, result.model, providers="cuda", input_shapes=concrete_shapes(model))
    assert check.passed and check.providers[0] == "CUDAExecutionProvider"


def test_fanout_model_round_trip_counts_all_outputs() -> None:
    model = with_output_shapes(dense_model(fanout=True))
    check = converter.verify(model, converter.rewrite(model).model, input_shapes=concrete_shapes(model))
    assert [o.name for o in check.outputs] == ["y", "side"] and check.passed
