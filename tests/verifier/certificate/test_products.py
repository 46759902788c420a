"""The certificate's shapes: dims that are a symbol of the inputs times a number (products.py).

A window partition on a dynamic batch merges the batch with the windows through a Reshape whose target leads
with -1; onnx's shape inference leaves that dim unknown, and a proof that splits the windows back out (a folded
window reverse) needs it. The certificate runs inference twice more with the symbol set to primes.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from converter.verifier.certificate.original import _infer, _inferred_shapes
from converter.verifier.certificate.products import products
from tests.rewriter.layout.test_optimizer import C, dynamic_windows


def _windows(model: onnx.ModelProto) -> str:
    """The windows tensor: the output of the Reshape whose target is [-1, p*p, C]."""
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        target = {**consts, **inits}.get(n.input[1]) if n.op_type == "Reshape" else None
        if target is not None and len(target) == 3:
            return n.output[0]
    raise AssertionError("no windows")


def test_the_batch_times_the_windows_is_a_product() -> None:
    model = dynamic_windows()
    shapes, _ = _inferred_shapes(model)
    assert shapes[_windows(model)] == ("6*N", 4, C)  # H / 2 * W / 2 = 6 windows per image


def test_only_products_are_filled_in() -> None:
    """A dim the same number under both primes proves no constant (min(N, 7)); one that is not a multiple of the
    prime (N + 1) is no product: both stay unknown. A dim inference told is left as it is."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], end=1),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["seven"], value=helper.make_tensor("seven", TensorProto.INT64, [1], [7])),
        helper.make_node("Add", ["s", "one"], ["s1"]),
        helper.make_node("Min", ["s", "seven"], ["m"]),
        helper.make_node("ConstantOfShape", ["s1"], ["plus_one"]),
        helper.make_node("ConstantOfShape", ["m"], ["clamped"]),
        helper.make_node("Concat", ["x", "x"], ["twice"], axis=0),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("plus_one", "clamped", "twice")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outputs), opset_imports=[helper.make_opsetid("", 17)])
    shapes = {"plus_one": (None,), "clamped": (None,), "twice": (None, 3), "x": ("N", 3)}
    found = products(model, shapes, _infer)
    assert found == {"twice": ("2*N", 3)}


def test_a_reshape_rest_is_divided_out_and_read_further_on() -> None:
    """HF's head split ``view(N, S, -1, dh)`` on a dynamic N and S: onnx's inference cannot divide N * S * 64 by
    N * S * 16, the certificate does (a Reshape keeps the element count), and inference then carries the 4 on to
    what reads the split (its Transpose)."""
    from tests.rewriter.layout.test_dynamic_heads import DH, HEADS, C, dynamic_attention

    model = dynamic_attention(layers=1, heads_left=True)
    shapes, _ = _inferred_shapes(model)
    splits = [n for n in model.graph.node if n.op_type == "Reshape" and shapes.get(n.input[0]) == ("N", "S", C)]
    assert len(splits) == 3
    for n in splits:
        assert shapes[n.output[0]] == ("N", "S", HEADS, DH)
        (t,) = [r for r in model.graph.node if n.output[0] in r.input]
        assert shapes[t.output[0]] == ("N", HEADS, "S", DH)


def test_a_rest_is_only_a_whole_quotient() -> None:
    """The rest is the input's count over the other dims only where that divides (symbols and number alike), and
    only where one dim is not told."""
    from converter.verifier.certificate.products import reshape_rests

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "t"], [y]) for y in ("a", "b", "c", "d")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 64])],
        [],
    )
    shapes: dict[str, tuple[int | str | None, ...] | None] = {
        "x": ("N", "S", 64),
        "a": ("N", "S", None, 16),
        "b": ("N", None, None, 16),
        "c": ("N", None, 48),
        "d": ("S", "S", None),
    }
    rests = reshape_rests(graph, shapes)
    assert rests == {"a": ("N", "S", 4, 16)}  # b: two untold; c: 64 * S / 48 is no whole; d: N is not S * S
