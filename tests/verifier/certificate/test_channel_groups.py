"""The certificate's proof of a per-channel op on flattened rows read channels-first (ops/channel_groups.py).

Original: tokens ``x`` [N, S, C] flattened to rows (``Flatten`` or ``Reshape [-1, C]``), a per-channel op
(BatchNormalization, or Mul/Add by a [C] constant), reshaped back to ``x``'s shape. Rewritten by hand: the same op
on ``Transpose(x, [0, 2, 1])`` ([N, C, S], the channel on axis 1) and a Transpose back. The right form is proved,
and only with the rule; each wrong variant (a parameter permuted, the op on the wrong axis, a constant along the
wrong axis, an original that reshapes back to another order) is not, and onnxruntime agrees that they differ.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.verifier.certificate import PROOF_RULES, certify

N, S, C = 2, 5, 4
F32 = TensorProto.FLOAT
RNG = np.random.default_rng(7)
SCALE, BIAS = RNG.uniform(0.5, 1.5, C).astype(np.float32), (RNG.standard_normal(C) * 0.1).astype(np.float32)
MEAN, VAR = (RNG.standard_normal(C) * 0.1).astype(np.float32), RNG.uniform(0.5, 2.0, C).astype(np.float32)


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x: list[int], y: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F32, x)],
        [helper.make_tensor_value_info("y", F32, y)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _bn(x: str, out: str, scale: str = "scale") -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, scale, "bias", "mean", "var"], [out], epsilon=1e-5)


PARAMS = {"scale": SCALE, "bias": BIAS, "mean": MEAN, "var": VAR}


def original(flatten: str = "flatten", back: str = "shape", op: str = "bn", s: int = S) -> onnx.ModelProto:
    """x [N, s, C] -> rows -> per-channel op -> back (``Shape(x)``, ``x``'s dims, or ``[N, C, s]``)."""
    inits: dict[str, np.ndarray] = {}
    if flatten == "flatten":
        nodes = [helper.make_node("Flatten", ["x"], ["rows"], axis=2)]
    else:
        inits["rows_shape"] = np.array([-1, C], np.int64)
        nodes = [helper.make_node("Reshape", ["x", "rows_shape"], ["rows"])]
    if op == "bn":
        nodes.append(_bn("rows", "n"))
        inits.update(PARAMS)
    else:
        nodes.append(helper.make_node("Mul", ["rows", "scale"], ["n"]))
        inits["scale"] = SCALE
    if back == "shape":
        nodes.append(helper.make_node("Shape", ["x"], ["x_shape"]))
        nodes.append(helper.make_node("Reshape", ["n", "x_shape"], ["y"]))
        y = [N, s, C]
    else:
        inits["back"] = np.array([-1, s, C] if back == "dims" else [-1, C, s], np.int64)
        nodes.append(helper.make_node("Reshape", ["n", "back"], ["y"]))
        y = [N, s, C] if back == "dims" else [N, C, s]
    return _model(nodes, inits, [N, s, C], y)


def rewritten(
    scale: np.ndarray = SCALE,
    op: str = "bn",
    transposed: bool = True,
    back: bool = True,
    laid: tuple[int, ...] = (C, 1),
    s: int = S,
) -> onnx.ModelProto:
    """The op on [N, C, s] (``transposed``) and back to [N, s, C] (``back``)."""
    nodes = [helper.make_node("Transpose", ["x"], ["x_cf"], perm=[0, 2, 1])] if transposed else []
    data = "x_cf" if transposed else "x"
    out = "y_cf" if back else "y"
    if op == "bn":
        nodes.append(_bn(data, out))
        inits = {**PARAMS, "scale": scale}
    else:
        nodes.append(helper.make_node("Mul", [data, "scale"], [out]))
        inits = {"scale": scale.reshape(laid)}
    if back:
        nodes.append(helper.make_node("Transpose", ["y_cf"], ["y"], perm=[0, 2, 1]))
    y = [N, s, C] if back else [N, C, s]
    return _model(nodes, inits, [N, s, C], y)


def _same_numbers(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    x = RNG.standard_normal([d.dim_value for d in a.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    runs = []
    for m in (a, b):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        runs.append(ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
    return runs[0].shape == runs[1].shape and bool(np.allclose(runs[0], runs[1], rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("op", ["bn", "mul"])
@pytest.mark.parametrize(("flatten", "back"), [("flatten", "shape"), ("reshape", "dims"), ("flatten", "dims")])
def test_the_op_read_channels_first_is_proved_only_with_the_rule(
    flatten: str, back: str, op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    o, r = original(flatten, back, op), rewritten(op=op)
    assert _same_numbers(o, r)
    cert = certify(o, r, [])
    assert cert.proved, cert.to_dict()
    key = ("", "BatchNormalization" if op == "bn" else "Mul")
    monkeypatch.setitem(PROOF_RULES, key, dataclasses.replace(PROOF_RULES[key], fallback=None))
    cert = certify(o, r, [])
    assert not cert.proved and cert.unproved


def test_a_permuted_scale_is_not_proved() -> None:
    o, r = original(), rewritten(scale=SCALE[::-1].copy())
    assert not _same_numbers(o, r)
    assert not certify(o, r, []).proved


def test_the_op_on_the_wrong_axis_is_not_proved() -> None:
    """BatchNormalization on the tokens as they are ([N, S, C] with S == C: it normalizes the sequence axis)."""
    o, r = original(s=C), rewritten(transposed=False, back=False, s=C)
    r.graph.output[0].type.tensor_type.shape.dim[1].dim_value = C
    assert not _same_numbers(o, r)
    assert not certify(o, r, []).proved


def test_a_constant_along_the_wrong_axis_is_not_proved() -> None:
    """Mul of [N, C, S] by the scale as [1, C]: along the last axis (S == C so that it broadcasts at all)."""
    o, r = original(op="mul", s=C), rewritten(op="mul", laid=(1, C), s=C)
    assert not _same_numbers(o, r)
    assert not certify(o, r, []).proved


def test_an_original_that_reshapes_back_to_another_order_is_not_proved() -> None:
    """The original's rows go back as [N, C, S] (the same elements, not x's shape, S != C): neither the rewritten BN
    on [N, C, S] (the same shape, other values) nor that BN transposed back is the original's output."""
    o = original(back="other")
    for r in (rewritten(back=False), rewritten()):
        assert not _same_numbers(o, r)
        assert not certify(o, r, []).proved
