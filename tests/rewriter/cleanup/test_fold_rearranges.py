"""Chains of Reshape/Transpose/Squeeze/Unsqueeze holding two Transposes or more fold into one Transpose
(or none), the result is proved by the certificate, and the numbers are the original's.

The chains are attention's, as ``--tokens`` leaves them: the qkv split after the token layout, the heads'
merge before the output projection, and ``K^T`` computed through a 3D Transpose. Sizes: N = 2 (symbolic
where the test says so), 3 heads of 4, 5 tokens, so no two axes have the same size.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter.graph import collect_types
from converter.rewriter.cleanup import run_passes
from converter.rewriter.cleanup.cancel_transposes import CancelTransposes
from converter.rewriter.cleanup.fold_rearranges import FoldRearranges
from converter.rewriter.cleanup.sink_transposes import SinkTransposes
from converter.verifier.certificate.walk import certify
from models.graphs import Builder
from tests.rewriter.cleanup._harness import N, constant, nodes_of, run, transposes

H, D, S = 3, 4, 5
C = H * D
PASSES = (CancelTransposes(), FoldRearranges(), SinkTransposes())


def folded(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    run_passes(out, PASSES, types=collect_types(model)[()])
    onnx.checker.check_model(out, full_check=True)
    assert list(out.graph.input) == list(model.graph.input) and list(out.graph.output) == list(model.graph.output)
    return out


def numbers_and_proof(model: onnx.ModelProto, out: onnx.ModelProto, batch: int = N) -> None:
    x = model.graph.input[0]
    shape = [d.dim_value or batch for d in x.type.tensor_type.shape.dim]
    feeds = {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for a, b in zip(run(model, feeds), run(out, feeds), strict=True):
        np.testing.assert_array_equal(a, b)  # only elements move: exactly equal
    cert = certify(model, out, [])
    assert cert.proved, cert.unproved


def i64(b: Builder, v: list[int]) -> str:
    return b.const(np.array(v), np.int64)


def qkv_split(batch: int | str = N) -> onnx.ModelProto:
    """``[B, 3C, S] -> Transpose -> [B, S, 3C] -> Reshape [B, S, 3, H, D] -> Transpose [3, B, H, S, D]``."""
    b = Builder(1)
    t = b.op("Transpose", "x", perm=[0, 2, 1])
    r = b.op("Reshape", t, i64(b, [-1, S, 3, H, D]))
    y = b.op("Transpose", r, perm=[2, 0, 3, 1, 4])
    return b.model([("x", [batch, 3 * C, S])], [b.op("Relu", y)])


def heads_merge(batch: int | str = N, target: list[int] | None = None) -> onnx.ModelProto:
    """``[B, H, S, D] -> Transpose [B, S, H, D] -> Reshape [B, S, C] -> Unsqueeze [B, S, 1, C] -> Transpose [B, C, 1, S]``
    (the heads merged before the output projection, read in the token layout)."""
    b = Builder(2)
    t = b.op("Transpose", "x", perm=[0, 2, 1, 3])
    r = b.op("Reshape", t, i64(b, target or [0, S, C]))
    u = b.op("Unsqueeze", r, i64(b, [2]))
    y = b.op("Transpose", u, perm=[0, 3, 2, 1])
    return b.model([("x", [batch, H, S, D])], [b.op("Relu", y)])


def k_transposed(batch: int | str = N) -> onnx.ModelProto:
    """``K`` laid out as [B, H, D, S], back to [B, H, S, D], then dynamo's ``K^T``: [B*H, S, D] -> [B*H, D, S] -> [B, H, D, S]."""
    b = Builder(3)
    k = b.op("Transpose", "x", perm=[0, 1, 3, 2])
    r = b.op("Reshape", k, i64(b, [-1, S, D]))
    t = b.op("Transpose", r, perm=[0, 2, 1])
    y = b.op("Reshape", t, i64(b, [-1, H, D, S]))
    return b.model([("x", [batch, H, D, S])], [b.op("Relu", y)])


@pytest.mark.parametrize("batch", [N, "B"])
def test_qkv_split_is_one_transpose(batch: int | str) -> None:
    model = qkv_split(batch)
    out = folded(model)
    assert transposes(model) == 2 and transposes(out) == 1
    (reshape,) = nodes_of(out, "Reshape")
    assert reshape.input[0] == "x"  # the pieces are cut from the input itself
    first = 0 if batch == "B" else N  # a symbolic B is copied (0), a known one written
    assert constant(out, reshape.input[1]).tolist() == [first, 3, H, D, S]
    (transpose,) = nodes_of(out, "Transpose")
    assert [list(a.ints) for a in transpose.attribute] == [[1, 0, 2, 4, 3]]
    numbers_and_proof(model, out)
    if batch == "B":
        numbers_and_proof(model, out, batch=3)


@pytest.mark.parametrize("batch", [N, "B"])
@pytest.mark.parametrize("target", [[0, S, C], [-1, S, C]])
def test_heads_merge_is_one_transpose(batch: int | str, target: list[int]) -> None:
    model = heads_merge(batch, target)
    out = folded(model)
    assert transposes(model) == 2 and transposes(out) == 1
    (transpose,) = nodes_of(out, "Transpose")
    assert [list(a.ints) for a in transpose.attribute] == [[0, 1, 3, 2]]  # [B, H, D, S]: the heads next to each other
    (reshape,) = nodes_of(out, "Reshape")
    assert constant(out, reshape.input[1]).tolist() == [0 if batch == "B" else N, C, 1, S]
    numbers_and_proof(model, out)


@pytest.mark.parametrize("batch", [N, "B"])
def test_k_transposed_needs_no_transpose(batch: int | str) -> None:
    model = k_transposed(batch)
    out = folded(model)
    assert transposes(model) == 2 and transposes(out) == 0
    numbers_and_proof(model, out)


def test_a_chain_read_elsewhere_stays() -> None:
    b = Builder(4)
    t = b.op("Transpose", "x", perm=[0, 2, 1])
    r = b.op("Reshape", t, i64(b, [-1, S, 3, H, D]))
    y = b.op("Transpose", r, perm=[2, 0, 3, 1, 4])
    model = b.model([("x", [N, 3 * C, S])], [b.op("Relu", y), b.op("Sigmoid", r)])
    out = folded(model)
    assert transposes(out) == 2  # the Reshape's output is read by the Sigmoid too: nothing may vanish


def test_a_reshape_that_cuts_a_symbolic_dim_stays() -> None:
    # [B, S, C] -> [S, B, C] -> [S, 2, B*C/2]: the 2 would be cut from B, whose size is not known
    b = Builder(5)
    t = b.op("Transpose", "x", perm=[1, 0, 2])
    r = b.op("Reshape", t, i64(b, [S, 2, -1]))
    y = b.op("Transpose", r, perm=[1, 0, 2])
    model = b.model([("x", ["B", S, C])], [b.op("Relu", y)])
    out = folded(model)
    assert transposes(out) == transposes(model)
    numbers_and_proof(model, out)


def test_without_sizes_nothing_folds() -> None:
    model = qkv_split()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    run_passes(out, PASSES)  # no types: the pass leaves every chain
    assert transposes(out) == 2


def test_two_sizes_no_target_can_write_leave_the_chain() -> None:
    from converter.rewriter.cleanup.fold_rearranges import _target

    # [B*A, D*C] from [B, A, D, C] (all symbolic): neither is at its own index, and a target has one -1
    assert _target([(1, ("A", "B")), (1, ("C", "D"))], [(1, ("B",)), (1, ("A",)), (1, ("D",)), (1, ("C",))]) is None
    assert _target([(1, ("A", "B")), (12, ())], [(1, ("B",)), (1, ("A",)), (12, ())]) == [-1, 12]


def test_a_shared_transpose_is_copied_into_gathers_whose_chains_fold() -> None:
    """``nn.TransformerEncoder``'s q/k/v: one Transpose read by three Gathers, each followed by a Reshape and a
    Transpose. The copies the Gathers take fold with those (one Transpose per branch instead of two); the cost
    check lets them be made because each copy reaches a Transpose through Reshapes alone."""
    b = Builder(8)
    t = b.op("Transpose", "x", perm=[1, 0, 3, 2])  # [N, 3, 5, 4] -> [3, N, 4, 5]
    outs = []
    for i in range(3):
        g = b.op("Gather", t, i64(b, i), axis=0)  # [N, 4, 5]
        r = b.op("Reshape", g, i64(b, [N, 20]))
        outs.append(b.op("Transpose", r, perm=[1, 0]))
    model = b.model([("x", [N, 3, 5, 4])], outs)
    out = folded(model)
    assert transposes(model) == 4 and transposes(out) == 3
    numbers_and_proof(model, out)


def test_what_computed_a_folded_target_goes_with_it() -> None:
    """x [N, 3, 5, 8] -> dense -> Reshape to a target computed from Shape (Concat(Shape[0:1], [1], H*W, [8]))
    -> dense: the fold writes a constant target, and the Shape/Slice/Mul/Concat that made the old one go."""
    import converter

    b = Builder(13)
    rng = np.random.default_rng(13)
    a = b.op("Add", b.op("MatMul", "x", b.const(rng.standard_normal((8, 8)))), b.const(rng.standard_normal(8)))
    shape = b.op("Shape", a)
    part = lambda lo, hi: b.op("Slice", shape, i64(b, [lo]), i64(b, [hi]))  # noqa: E731
    target = b.op("Concat", part(0, 1), i64(b, [1]), b.op("Mul", part(1, 2), part(2, 3)), i64(b, [8]), axis=0)
    r = b.op("Reshape", a, target)
    y = b.op("Add", b.op("MatMul", r, b.const(rng.standard_normal((8, 4)))), b.const(rng.standard_normal(4)))
    model = b.model([("x", ["N", 3, 5, 8])], [y])
    result = converter.rewrite(model)
    graph = result.model.graph
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    assert [n.op_type for n in graph.node if not any(o in read for o in n.output)] == []
    assert not nodes_of(result.model, "Shape") and not nodes_of(result.model, "Concat")
    assert certify(model, result.model, result.report.layers).proved
    x = np.random.default_rng(0).standard_normal((3, 3, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(run(model, {"x": x})[0], run(result.model, {"x": x})[0], rtol=1e-5, atol=1e-5)
