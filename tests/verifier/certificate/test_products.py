"""The certificate's shapes: dims that are a symbol of the inputs times a number (products.py).

A window partition on a dynamic batch merges the batch with the windows through a Reshape whose target leads
with -1; onnx's shape inference leaves that dim unknown, and a proof that splits the windows back out (a folded
window reverse) needs it. The certificate runs inference twice more with the symbol set to primes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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


def test_a_symbol_clamped_by_a_table_of_the_model_is_a_product_at_the_small_primes() -> None:
    """TorchScript's text encoder: positions sliced from a buffer of 64 up to S, embedded and added to the tokens.
    At S = 1019 the slice stops at 64 and the sum broadcasts nowhere; the small primes stay below the buffer."""
    from tests.graph.test_types import _embeddings_and_head_split

    shapes, _ = _inferred_shapes(_embeddings_and_head_split())
    assert shapes["embedded"] == ("N", "S", 64)
    assert shapes["split"] == ("N", "S", 4, 16)


def test_a_rest_told_in_one_round_tells_the_next_reshapes() -> None:
    """A Reshape whose target is read from the shape of an earlier Reshape's output, whose rest only the round
    before told: ``[N, 6, 64] -> [N, -1, 32] -> [N, 12, -1, 8]`` needs two rounds (12, then 4)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"], end=1),
        helper.make_node("Concat", ["xs", "a_rest"], ["a_target"], axis=0),
        helper.make_node("Reshape", ["x", "a_target"], ["a"]),
        helper.make_node("Shape", ["a"], ["as_"], end=2),
        helper.make_node("Concat", ["as_", "b_rest"], ["b_target"], axis=0),
        helper.make_node("Reshape", ["a", "b_target"], ["b"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 64])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(v, np.int64), name) for v, name in (([-1, 32], "a_rest"), ([-1, 8], "b_rest"))],
    )
    shapes, _ = _inferred_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert shapes["a"] == ("N", 12, 32)
    assert shapes["b"] == ("N", 12, 4, 8)


def test_torchscripts_expand_with_kept_dims_keeps_the_token_count() -> None:
    """The certificate reads ``cls.expand(N, -1, -1)`` (TorchScript's Where over the target) as ``[N, 1, C]``, so
    the tokens after the Concat with the patches have their count, and the model it was given is not changed."""
    from tests.graph.test_types import _class_token_expanded

    model = _class_token_expanded()
    shapes, _ = _inferred_shapes(model)
    assert shapes["tokens"] == ("N", 1, 8)
    assert shapes["joined"] == ("N", 7, 8)
    assert [n.input[1] for n in model.graph.node if n.op_type == "Expand"] == ["target"]
