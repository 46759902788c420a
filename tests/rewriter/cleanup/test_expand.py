"""An operand ``Expand(constant, shape)`` is re-laid out, so a Transpose moves through the op that reads it.

ViT's class token: ``Concat(Expand(cls [1, 1, C], [B, 1, 1]), Transpose(patches [B, C, S], [0, 2, 1]), axis=1)``.
In the patches' layout the operand is ``Expand(cls as [1, C, 1], Gather(shape, inverse perm))``: the shape's
entries in the new order, whatever they are (a form the certificate proves without knowing them).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter.rewriter.cleanup.handlers import Decline, Plan
from models.graphs import Builder
from tests.rewriter.cleanup._harness import N, attr, cleaned, constant, nodes_of, plan_for, same_numbers, transposes

C, S = 6, 5  # channels, patch tokens
SWAP = [0, 2, 1]


def class_token(shape: str = "batch", extra_reader: bool = False, cls_shape: tuple = (1, 1, C)) -> onnx.ModelProto:
    """``Transpose(Add(Concat(Expand(cls, shape), Transpose(x, [0, 2, 1]), axis=1), pos), [0, 2, 1])`` on x [N, C, S].

    ``shape``: "batch" (dynamo's Concat(Shape(x)[0:1], [1], [1]): [N, 1, 1]), "constant_rows" (the constant
    [N, 2, 1]: two class tokens), "runtime_rows" ([N, k, 1] with k read from the input z at run time),
    "input" (a graph input: its length is unknown).
    """
    b = Builder(41)
    i64 = lambda v: b.const(np.array(v), np.int64)  # noqa: E731
    inputs = [("x", [N, C, S])]
    rows = 1
    if shape == "batch":
        target = b.op("Concat", b.op("Shape", "x", start=0, end=1), i64([1]), i64([1]), axis=0)
    elif shape == "constant_rows":
        target, rows = i64([N, 2, 1]), 2
    elif shape == "runtime_rows":
        inputs.append(("z", [3]))
        k = b.op("Unsqueeze", b.op("Gather", b.op("Shape", "z"), i64(0), axis=0), i64([0]))
        target, rows = b.op("Concat", b.op("Shape", "x", start=0, end=1), k, i64([1]), axis=0), 3
    else:
        target = "s"
    cls = b.const(np.random.default_rng(3).standard_normal(cls_shape))
    e = b.op("Expand", cls, target)
    cat = b.op("Concat", e, b.op("Transpose", "x", perm=SWAP), axis=1)
    y = b.op("Add", cat, b.const(np.random.default_rng(4).standard_normal((1, S + rows, C))))
    outs = [b.op("Transpose", y, perm=SWAP)]
    if extra_reader:
        outs.append(b.op("Relu", e))
    if shape != "input":
        return b.model(inputs, outs)
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        b.nodes,
        "class_token",
        [vi("x", onnx.TensorProto.FLOAT, [N, C, S]), vi("s", onnx.TensorProto.INT64, [3])],
        [vi(outs[0], onnx.TensorProto.FLOAT, [N, C, S + 1])],
        b.inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("shape", ["batch", "constant_rows", "runtime_rows"])
def test_class_token_expand_is_relaid_and_no_transpose_is_left(shape: str) -> None:
    model = class_token(shape)
    assert transposes(model) == 2
    out, _ = cleaned(model)
    assert transposes(out) == 0
    (expand,) = nodes_of(out, "Expand")
    assert list(constant(out, expand.input[0]).shape) == [1, C, 1]  # cls [1, 1, C] in the patches' layout
    concat = nodes_of(out, "Concat")[-1]
    assert attr(concat, "axis") == 2 and concat.input[0] == expand.output[0]
    producer = next((n for n in out.graph.node if expand.input[1] in n.output), None)
    assert producer is not None and producer.op_type == "Gather" and attr(producer, "axis") == 0
    assert producer.input[0] == nodes_of(model, "Expand")[0].input[1]  # the original shape, its entries reordered
    assert constant(out, producer.input[1]).tolist() == SWAP
    feeds = {"x": np.random.default_rng(0).standard_normal((N, C, S)).astype(np.float32)}
    if shape == "runtime_rows":
        feeds["z"] = np.zeros(3, np.float32)
    same_numbers(model, out, feeds=feeds)


def test_expand_read_by_another_node_stays_beside_the_new_one() -> None:
    model = class_token(extra_reader=True)
    out, _ = cleaned(model)
    assert transposes(out) == 0 and len(nodes_of(out, "Expand")) == 2
    same_numbers(model, out)


def test_expand_of_a_lower_rank_constant() -> None:
    model = class_token(cls_shape=(C,))  # cls [C] broadcast up to [N, 1, C]
    out, _ = cleaned(model)
    assert transposes(out) == 0
    (expand,) = nodes_of(out, "Expand")
    assert list(constant(out, expand.input[0]).shape) == [1, C, 1]
    same_numbers(model, out)


def test_expand_with_a_shape_of_unknown_length_stays() -> None:
    model = class_token("input")
    verdict = plan_for(model, "Concat")
    assert isinstance(verdict, Decline) and verdict.code == "operand_in_other_layout"
    out, _ = cleaned(model)
    assert nodes_of(out, "Expand")[0].input[0] == nodes_of(model, "Expand")[0].input[0]
    feeds = {"x": np.random.default_rng(0).standard_normal((N, C, S)).astype(np.float32), "s": np.array([N, 1, 1])}
    same_numbers(model, out, feeds=feeds)


def test_expand_of_a_computed_tensor_is_not_an_operand() -> None:
    b = Builder(42)
    e = b.op("Expand", b.op("Relu", "c"), b.const(np.array([N, 1, 1]), np.int64))
    cat = b.op("Concat", e, b.op("Transpose", "x", perm=SWAP), axis=1)
    model = b.model([("x", [N, C, S]), ("c", [1, 1, C])], [b.op("Transpose", cat, perm=SWAP)])
    verdict = plan_for(model, "Concat")
    assert isinstance(verdict, Decline) and verdict.code == "operand_in_other_layout"


def test_the_plan_edits_nothing_until_applied() -> None:
    model = class_token("constant_rows")  # its only Concat is the one that reads the Transpose
    before = model.SerializeToString()
    assert isinstance(plan_for(model, "Concat"), Plan)
    assert model.SerializeToString() == before


def test_a_class_token_shape_only_shape_inference_can_measure_is_relaid() -> None:
    """TorchScript's ``cls.expand(B, -1, -1)``: ``Expand(cls, Where(Equal(r, -1 * ones), ones, r))`` with
    ``ones = ConstantOfShape(Shape(r))``. The shape's length (3) is not readable from the graph's constants; the
    cleanup takes it from shape inference (the pipeline passes the types)."""
    from converter.graph import collect_types
    from converter.rewriter.cleanup import run_passes
    from tests.rewriter.cleanup._harness import PASSES

    b = Builder(42)
    i64 = lambda v: b.const(np.array(v), np.int64)  # noqa: E731
    batch = b.op("Unsqueeze", b.op("Gather", b.op("Shape", "x"), i64(0), axis=0), i64([0]))
    r = b.op("Reshape", b.op("Concat", batch, i64([-1]), i64([-1]), axis=0), i64([-1]))
    ones = b.op("ConstantOfShape", b.op("Shape", r), value=onnx.numpy_helper.from_array(np.array([1], np.int64)))
    target = b.op("Where", b.op("Equal", r, b.op("Mul", ones, i64(-1))), ones, r)
    e = b.op("Expand", b.const(np.random.default_rng(3).standard_normal((1, 1, C))), target)
    cat = b.op("Concat", e, b.op("Transpose", "x", perm=SWAP), axis=1)
    y = b.op("Add", cat, b.const(np.random.default_rng(4).standard_normal((1, S + 1, C))))
    model = b.model([("x", [N, C, S])], [b.op("Transpose", y, perm=SWAP)])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    run_passes(out, PASSES, types=collect_types(model)[()])
    assert transposes(model) == 2 and transposes(out) == 0
    same_numbers(model, out)
    without = onnx.ModelProto()
    without.CopyFrom(model)
    run_passes(without, PASSES)  # no types: the length is unknown, the Expand stays as it is
    assert transposes(without) == 2
