"""Shared builders for tiny dense-layer graphs and the one helper that proves a rewrite twice."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from hypothesis import settings
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from models.graphs import with_output_shapes

# CI runs the same examples every time (derandomized), so a submission cannot land or fail by luck; the "explore"
# profile draws fresh examples, for hunting (CONVERTER_HYPOTHESIS_PROFILE=explore CONVERTER_HYPOTHESIS_EXAMPLES=2000).
_EXAMPLES = int(os.environ.get("CONVERTER_HYPOTHESIS_EXAMPLES", "200"))
settings.register_profile("ci", max_examples=_EXAMPLES, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=_EXAMPLES, deadline=None)
settings.load_profile(os.environ.get("CONVERTER_HYPOTHESIS_PROFILE", "ci"))

# H != W everywhere, so a swapped spatial axis cannot hide.
N, H, W_, C, K = 2, 3, 5, 4, 6


@dataclass
class Dense:
    """Options for one MatMul(+Add) graph; the defaults give the plain foldable case."""

    x_shape: Sequence[int | str | None] | None = ("N", H, W_, C)  # None: declare no shape at all
    # "declared": x is a graph input; "inferred": x comes out of an Identity (rank by shape inference);
    # "unknowable": x comes out of a Reshape to a runtime shape of unknown length.
    x_source: str = "declared"
    dtype: int = TensorProto.FLOAT
    # initializer | constant_node | graph_input | runtime, or an initializer read through ops exporters leave
    # on constants: identity | identity_chain | cast | transposed | reshaped | unsqueezed
    weight: str = "initializer"
    weight_shape: Sequence[int] = (C, K)
    bias: str | None = "initializer"  # None, or any kind the weight may be
    bias_shape: Sequence[int] = (K,)
    bias_first: bool = False  # Add(b, y) instead of Add(y, b)
    fanout: bool = False  # the MatMul output also feeds a Relu that is a graph output
    matmul_is_output: bool = False  # the MatMul output is also a graph output
    opset: int = 17
    ir_version: int = 8
    seed: int = 0
    extra: dict = field(default_factory=dict)


# Operand kinds that are an initializer behind one op exporters leave on constants (TorchScript's
# deduplicated tensors behind Identity, fp16 weights behind Cast, ...): constants all the same.
FOLDED_KINDS = {
    "identity": "Identity",
    "identity_chain": "Identity",
    "cast": "Cast",
    "transposed": "Transpose",
    "reshaped": "Reshape",
    "unsqueezed": "Unsqueeze",
}


def dense_model(o: Dense | None = None, **kw) -> onnx.ModelProto:
    o = o or Dense(**kw)
    rng = np.random.default_rng(o.seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(o.dtype)
    nodes, inits, inputs = [], [], []
    x_name = "x"
    if o.x_source == "declared":
        inputs.append(helper.make_tensor_value_info("x", o.dtype, o.x_shape))
    elif o.x_source == "inferred":
        inputs.append(helper.make_tensor_value_info("x_in", o.dtype, o.x_shape))
        nodes.append(helper.make_node("Identity", ["x_in"], ["x"], name="pass"))
    else:
        inputs.append(helper.make_tensor_value_info("x_in", o.dtype, o.x_shape))
        inputs.append(helper.make_tensor_value_info("x_shape", TensorProto.INT64, ["rank"]))
        nodes.append(helper.make_node("Reshape", ["x_in", "x_shape"], ["x"], name="reshape"))

    def operand(kind: str, name: str, shape: Sequence[int]) -> None:
        value = (rng.standard_normal(shape) * 0.5).astype(np_dtype)
        if kind == "initializer":
            inits.append(numpy_helper.from_array(value, name))
        elif kind == "graph_input":
            inits.append(numpy_helper.from_array(value, name))
            inputs.append(helper.make_tensor_value_info(name, o.dtype, list(shape)))
        elif kind == "constant_node":
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_v")))
        elif kind == "runtime":
            inputs.append(helper.make_tensor_value_info(name, o.dtype, list(shape)))
        elif kind in FOLDED_KINDS:
            src, op, extra_inputs, attrs = f"{name}_src", FOLDED_KINDS[kind], [], {}
            stored = value
            if kind == "cast":
                stored = value.astype(np.float16)
                attrs["to"] = o.dtype
            elif kind == "transposed":
                stored = np.ascontiguousarray(value.T)
                attrs["perm"] = list(reversed(range(value.ndim)))
            elif kind == "reshaped":
                stored = value.reshape(-1)
                inits.append(numpy_helper.from_array(np.array(value.shape, np.int64), f"{name}_shape"))
                extra_inputs = [f"{name}_shape"]
            elif kind == "unsqueezed":  # stored without its leading 1
                stored = value.reshape(value.shape[1:])
                inits.append(numpy_helper.from_array(np.array([0], np.int64), f"{name}_axes"))
                extra_inputs = [f"{name}_axes"]
            inits.append(numpy_helper.from_array(stored, src))
            if kind == "identity_chain":
                nodes.append(helper.make_node("Identity", [src], [f"{name}_mid"], name=f"{name}_copy1"))
                src = f"{name}_mid"
            nodes.append(helper.make_node(op, [src, *extra_inputs], [name], name=f"{name}_{kind}", **attrs))
        else:
            raise ValueError(kind)

    operand(o.weight, "W", o.weight_shape)
    nodes.append(helper.make_node("MatMul", [x_name, "W"], ["mm"], name="dense"))
    outputs = []
    if o.bias is None:
        outputs.append(helper.make_tensor_value_info("mm", o.dtype, None))
    else:
        operand(o.bias, "b", o.bias_shape)
        pair = ["b", "mm"] if o.bias_first else ["mm", "b"]
        nodes.append(helper.make_node("Add", pair, ["y"], name="bias_add"))
        outputs.append(helper.make_tensor_value_info("y", o.dtype, None))
        if o.matmul_is_output:
            outputs.append(helper.make_tensor_value_info("mm", o.dtype, None))
    if o.x_source == "unknowable":  # graph outputs need a declared rank: flatten the unknowable one
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", [outputs[0].name, "flat"], ["flat_out"], name="flatten"))
        outputs[0] = helper.make_tensor_value_info("flat_out", o.dtype, ["total"])
    if o.fanout:
        nodes.append(helper.make_node("Relu", ["mm"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", o.dtype, None))
    graph = helper.make_graph(nodes, "dense", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", o.opset)], producer_name="tests")
    model.ir_version = o.ir_version
    return with_output_shapes(model)


def concrete_shapes(model: onnx.ModelProto, n: int = N) -> dict[str, list[int]]:
    """Shapes for every symbolic input dim: batch n, the rest from the test constants."""
    shapes = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else n for d in dims]
    return shapes


def assert_rewritten(
    original: onnx.ModelProto,
    result: converter.RewriteResult,
    expected_ops: dict[str, int],
    *,
    input_shapes: dict[str, list[int]] | None = None,
    providers: str = "cpu",
) -> converter.VerifyReport:
    """Structure (exact op counts, valid model, same interface) and numbers (onnxruntime) in one call."""
    onnx.checker.check_model(result.model, full_check=True)
    assert count_ops(result.model.graph) == expected_ops
    for kind in ("input", "output"):
        assert list(getattr(result.model.graph, kind)) == list(getattr(original.graph, kind)), kind
    check = converter.verify(
        original,
        result,  # with its layer claims: every rewritten layer is proved and checked on its own
        providers=providers,
        input_shapes=input_shapes if input_shapes is not None else concrete_shapes(original),
    )
    assert check.passed, check.to_dict()
    assert check.structure["proved"] and all(layer.verified for layer in check.layers)
    for out in check.outputs:
        assert out.max_abs_error <= out.atol + 1e-12 or out.max_rel_error <= out.rtol
    return check


@pytest.fixture
def tmp_model(tmp_path):
    """Save a model under tmp_path and return the path."""

    def save(model: onnx.ModelProto, name: str = "model.onnx"):
        path = tmp_path / name
        onnx.save(model, path)
        return path

    return save
