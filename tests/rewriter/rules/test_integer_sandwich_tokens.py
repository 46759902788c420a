"""``quantize_dynamic``'s Reshape sandwich back to rank 3 under ``--tokens``: a ConvInteger in ``[B, C, 1, S]``.

``quant_pre_process`` turns a rank-3 Linear into ``Reshape(x, [-1, C]) -> Gemm -> Reshape(-> [B, S, K])`` (timm's
ResMLP), and ``quantize_dynamic`` writes that Gemm as ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` (the
rescale by ``sa * sw``) ``-> Add`` (the Gemm's bias) on the flat rows, before the second Reshape. Its float twin is a
token layer; the quantized one converts the same way: the DynamicQuantizeLinear on ``[B, C, S]`` (the same scale and
zero point: the whole tensor's), the ConvInteger on ``[B, C, 1, S]``, the rescale and the bias after the restored
positions. Proved by ``converter.verify`` (PASSED: the certificate and each layer's integer sums) and by onnxruntime
bit for bit; without ``tokens`` it is no candidate. The bias Add inside the Reshapes also converts on a rank-4
sandwich (the Gemm of a 4D Linear), which the rule declined before.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.graph import count_ops
from tests._onnxruntime import first_output as _run
from tests.conftest import with_output_shapes

RULE = "integer_sandwich_to_conv"
S, C_IN, K_OUT = 7, 12, 10  # S != C != K: a swapped axis shows


def _weight(rng: np.random.Generator, c: int, k: int, per_channel: bool, signed: bool) -> tuple[np.ndarray, ...]:
    """quantize_dynamic's weight: int8 (symmetric, zero point 0) or uint8 (zero point 128), per tensor or per [K]."""
    dtype, middle = (np.int8, 0) if signed else (np.uint8, 128)
    shape = (k,) if per_channel else ()
    ints = rng.integers(-100, 100, size=(c, k)) + middle
    scale = (rng.random(shape) * 0.01 + 0.002).astype(np.float32)
    return ints.astype(dtype), scale, np.full(shape, middle, dtype)


def layer_nodes(prefix: str, x: str, y: str, c: int, k: int, x_rank: int, rng: np.random.Generator, **t: bool) -> tuple:
    """One sandwich ``x -> y`` (node and tensor names start with ``prefix``) and its initializers."""
    inits: list[onnx.TensorProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), f"{prefix}{name}"))
        return f"{prefix}{name}"

    w, ws, wz = _weight(rng, c, k, t.get("per_channel", False), t.get("signed", True))
    p = prefix
    restore = [-1, S, k] if x_rank == 3 else [-1, 3, 5, k]
    nodes = [
        helper.make_node("Reshape", [x, init("rows_shape", np.array([-1, c], np.int64))], [f"{p}rows"], f"{p}flatten"),
        helper.make_node("DynamicQuantizeLinear", [f"{p}rows"], [f"{p}xq", f"{p}xs", f"{p}xz"], f"{p}x_quantize"),
        helper.make_node("Mul", [f"{p}xs", init("ws", ws)], [f"{p}scale"], f"{p}scales"),
        helper.make_node("MatMulInteger", [f"{p}xq", init("w", w), f"{p}xz", init("wz", wz)], [f"{p}acc"], f"{p}matmul"),
        helper.make_node("Cast", [f"{p}acc"], [f"{p}accf"], f"{p}cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}accf", f"{p}scale"], [f"{p}flat"], f"{p}rescale"),
    ]
    flat = f"{p}flat"
    if t.get("bias", True):
        b = (rng.standard_normal(k) * 0.1).astype(np.float32)
        nodes.append(helper.make_node("Add", [flat, init("b", b)], [f"{p}biased"], f"{p}bias"))
        flat = f"{p}biased"
    nodes.append(helper.make_node("Reshape", [flat, init("target", np.array(restore, np.int64))], [y], f"{p}restore"))
    return nodes, inits


def model_of(layers: int = 1, x_rank: int = 3, seed: int = 0, **t: bool) -> onnx.ModelProto:
    """``layers`` sandwiches C -> K -> C ... with a Relu between two, on ``x [B, S, C]`` (or ``[B, 3, 5, C]``)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, c = "x", C_IN
    for i in range(layers):
        k = K_OUT if i % 2 == 0 else C_IN
        y = "y" if i == layers - 1 else f"l{i}_out"
        made, made_inits = layer_nodes(f"l{i}_", x, y, c, k, x_rank, rng, **t)
        nodes += made
        inits += made_inits
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [y], [f"l{i}_relu"], f"l{i}_relu"))
            x = f"l{i}_relu"
        c = k
    dims = ["B", S, C_IN] if x_rank == 3 else ["B", 3, 5, C_IN]
    graph = helper.make_graph(
        nodes,
        "dynamic_tokens",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return with_output_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _x(model: onnx.ModelProto, batch: int = 2) -> np.ndarray:
    dims = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    return (np.random.default_rng(3).standard_normal(dims) * 3).astype(np.float32)


CASES = [
    {"per_channel": False, "signed": True, "bias": True},
    {"per_channel": True, "signed": True, "bias": True},
    {"per_channel": True, "signed": False, "bias": False},
    {"per_channel": False, "signed": False, "bias": True},
]


@pytest.mark.parametrize("t", CASES, ids=lambda t: "-".join(k if v else f"no-{k}" for k, v in t.items()))
def test_the_token_sandwich_becomes_a_conv_integer_and_is_proved(t: dict) -> None:
    model = model_of(**t)
    result = converter.rewrite(model, tokens=True, layout="keep-all")
    (d,) = result.report.decisions
    assert d.rewritten and d.rule == RULE, d
    assert d.notes["rescale"] == "after_the_second_reshape" and ("bias" in d.notes) == t["bias"]
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    ops = count_ops(out.graph)
    assert ops["ConvInteger"] == 1 and "MatMulInteger" not in ops and "Reshape" not in ops, ops
    made = {o: n for n in out.graph.node for o in n.output}
    conv = next(n for n in out.graph.node if n.op_type == "ConvInteger")
    # In front: DynamicQuantizeLinear of x as [B, C, S] writing the original's scale and zero point, then the unit axis.
    unsqueeze = made[conv.input[0]]
    dql = made[unsqueeze.input[0]]
    assert unsqueeze.op_type == "Unsqueeze" and dql.op_type == "DynamicQuantizeLinear"
    assert list(dql.output[1:]) == ["l0_xs", "l0_xz"] and conv.input[2] == "l0_xz"
    to_nct = made[dql.input[0]]
    assert to_nct.op_type == "Transpose" and list(to_nct.input) == ["x"]
    assert helper.get_attribute_value(to_nct.attribute[0]) == [0, 2, 1]
    # The weight's integers moved to [K, C, 1, 1] (int8 as uint8 + 128, as the rank-4 rule writes it).
    ints = numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == conv.input[1]))
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "l0_w"))
    shifted = (w.astype(np.int16) + 128).astype(np.uint8) if t["signed"] else w
    assert ints.shape == (K_OUT, C_IN, 1, 1) and ints.reshape(K_OUT, C_IN).T.tobytes() == shifted.tobytes()
    # Behind: the int32 result back to [B, S, K] (Squeeze, Transpose; the cleanup may move the Transpose last), the
    # rescale and the bias, which write the second Reshape's output y.
    path, name = [], "y"
    while name != conv.output[0]:
        path.append(made[name].op_type)
        name = made[name].input[0]
    rescale = ["Cast", "Mul", *(["Add"] if t["bias"] else [])]
    assert [op for op in reversed(path) if op not in ("Squeeze", "Transpose")] == rescale, path
    assert sorted(op for op in path if op in ("Squeeze", "Transpose")) == ["Squeeze", "Transpose"], path

    report = converter.verify(model, result)
    assert report.verdict == "passed", report.to_dict()
    assert [(layer.structure, layer.numbers) for layer in report.layers] == [("proved", "passed")]
    for batch in (1, 3):
        x = _x(model, batch)
        want, got = _run(model, x), _run(out, x)
        assert got.shape == want.shape == (batch, S, K_OUT)
        np.testing.assert_array_equal(got, want)  # the same integers, scales and sums: bit for bit
        # As deployed (onnxruntime's fusions differ: MatMulIntegerToFloat): within float32 rounding.
        want, got = _run(model, x, True), _run(out, x, True)
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())


def test_two_token_layers_convert_under_the_optimizer_and_pass() -> None:
    """fc1 -> Relu -> fc2 as ResMLP's channel MLP: the default layout policy keeps both, their Transposes between
    them cancel (the rescale, the bias Add and the Relu run as [B, K, S]), and the result is PASSED, bit for bit."""
    model = model_of(layers=2, per_channel=True)
    result = converter.rewrite(model, tokens=True)
    assert [(d.rule, d.rewritten) for d in result.report.decisions] == [(RULE, True), (RULE, True)]
    ops = count_ops(result.model.graph)
    assert ops["ConvInteger"] == 2 and ops["Transpose"] == 2, ops  # one at each edge of the [B, S, C] model
    report = converter.verify(model, result)
    assert report.verdict == "passed", report.to_dict()
    x = _x(model)
    np.testing.assert_array_equal(_run(result.model, x), _run(model, x))


def test_without_tokens_the_token_sandwich_is_not_converted() -> None:
    """Rank 3 back to rank 3 is a token layer: declined by default (the rows are rank 2), as its float twin."""
    model = model_of()
    result = converter.rewrite(model, layout="keep-all")
    assert result.report.rewritten == 0
    (d,) = result.report.decisions
    assert d.reason == "rank_not_4"


def test_a_bias_inside_a_rank_4_sandwich_converts() -> None:
    """The Gemm of a 4D Linear (x [B, H, W, C]) written by quantize_dynamic: the bias Add sits inside the Reshapes; it
    moves past the second Reshape with the rescale (without tokens: a rank-4 layer)."""
    model = model_of(x_rank=4, per_channel=True)
    result = converter.rewrite(model, layout="keep-all")
    (d,) = result.report.decisions
    assert (d.rule, d.rewritten, d.notes.get("bias")) == (RULE, True, "after_the_second_reshape"), d
    report = converter.verify(model, result)
    assert report.verdict == "passed", report.to_dict()
    x = _x(model)
    np.testing.assert_array_equal(_run(result.model, x), _run(model, x))


@pytest.mark.parametrize("bias", ["per_row", "computed"])
def test_a_bias_that_is_not_per_channel_is_declined(bias: str) -> None:
    """A bias of one value per row (``[B*S, 1]``) broadcasts otherwise on ``[B, S, K]``; a computed one is no bias."""
    model = model_of(per_channel=True)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    if bias == "per_row":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
        model.graph.initializer.append(numpy_helper.from_array(np.ones((2 * S, 1), np.float32), "per_row"))
        add.input[1] = "per_row"
    else:
        model.graph.node.insert(0, helper.make_node("ReduceMean", ["x"], ["mean"], "mean", keepdims=0))
        add.input[1] = "mean"
    model.graph.ClearField("value_info")
    result = converter.rewrite(with_output_shapes(model), tokens=True, layout="keep-all")
    (d,) = result.report.decisions
    assert not d.rewritten
    assert (d.rule, d.reason) == (RULE, "bias_not_per_channel" if bias == "per_row" else "bias_not_constant"), d
