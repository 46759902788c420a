"""The certificate's proof of folded rearrangements and of shapes read in a layout: each check has a test
that fails without it (a batch written as a constant, pieces cut in the wrong order, a shape read in the
wrong order)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import converter
from converter.verifier.certificate import certify
from models.graphs import Builder
from tests.rewriter.cleanup._harness import N, constant, nodes_of, run
from tests.rewriter.cleanup.test_fold_rearranges import H, S, folded, heads_merge, i64, qkv_split


def set_constant(model: onnx.ModelProto, name: str, value: list[int]) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(onnx.numpy_helper.from_array(np.array(value, dtype=np.int64), name))
            return
    raise KeyError(name)


def test_a_symbolic_batch_written_as_a_constant_is_not_proved() -> None:
    model = qkv_split("B")
    out = folded(model)
    (reshape,) = nodes_of(out, "Reshape")
    target = constant(out, reshape.input[1]).tolist()
    assert target[0] == 0
    set_constant(out, reshape.input[1], [N, *target[1:]])  # right for a batch of N only
    x = np.random.default_rng(0).standard_normal((N, 3 * H * 4, S)).astype(np.float32)
    np.testing.assert_array_equal(run(model, {"x": x})[0], run(out, {"x": x})[0])  # numbers at N cannot tell
    assert not certify(model, out, []).proved  # the second set of sizes does


def test_pieces_put_in_the_wrong_order_are_refused() -> None:
    model = qkv_split()
    out = folded(model)
    (transpose,) = nodes_of(out, "Transpose")
    assert list(transpose.attribute[0].ints) == [1, 0, 2, 4, 3] and H == 3
    transpose.attribute[0].ints[:] = [2, 0, 1, 4, 3]  # heads taken as q/k/v: the same shape, other elements
    x = np.random.default_rng(0).standard_normal((N, 3 * H * 4, S)).astype(np.float32)
    assert not np.array_equal(run(model, {"x": x})[0], run(out, {"x": x})[0])
    assert not certify(model, out, []).proved


def test_a_merge_folded_in_the_wrong_order_is_refused() -> None:
    model = heads_merge()
    out = folded(model)
    (transpose,) = nodes_of(out, "Transpose")
    transpose.attribute[0].ints[:] = [0, 3, 1, 2]  # D before H: [B, D, H, S] merged, the same shape
    assert not certify(model, out, []).proved
    assert certify(model, folded(model), []).proved


def shape_read() -> onnx.ModelProto:
    """``t = Transpose(x, [0, 2, 1])``; ``y = Reshape(Relu(t), Concat(Gather(Shape(t), 0), [-1]))`` (a target
    an exporter computes from the shape of a transposed tensor) and ``Transpose`` back; ``y`` is an output too,
    so that the chain does not fold into one Reshape of its own target (which would leave no Shape to read)."""
    b = Builder(6)
    t = b.op("Transpose", "x", perm=[0, 2, 1])
    first = b.op("Gather", b.op("Shape", t), i64(b, [0]), axis=0)
    target = b.op("Concat", first, i64(b, [S, -1]), axis=0)
    y = b.op("Reshape", b.op("Relu", t), target)
    return b.model([("x", ["B", 12, S])], [b.op("Transpose", y, perm=[0, 2, 1]), y])


def test_a_shape_read_in_a_layout_is_proved_and_a_wrong_order_refused() -> None:
    model = shape_read()
    out = folded(model)
    gathers = [n for n in nodes_of(out, "Gather") if n.input[0] != nodes_of(model, "Gather")[0].input[0]]
    shape = next(n for n in nodes_of(out, "Shape"))
    assert shape.input[0] == "x"  # the Shape reads the untransposed tensor
    moved = next(n for n in nodes_of(out, "Gather") if n.input[0] == shape.output[0])
    assert constant(out, moved.input[1]).tolist() == [0, 2, 1] and gathers
    x = np.random.default_rng(1).standard_normal((N, 12, S)).astype(np.float32)
    np.testing.assert_array_equal(run(model, {"x": x})[0], run(out, {"x": x})[0])
    assert certify(model, out, []).proved
    set_constant(out, moved.input[1], [1, 2, 0])  # reads S where the original reads B
    assert not certify(model, out, []).proved


def test_a_shape_with_start_reads_the_moved_dims() -> None:
    b = Builder(7)
    t = b.op("Transpose", "x", perm=[0, 2, 1])
    dims = b.op("Shape", t, start=1)  # [S, 12]
    total = b.op("Cast", b.op("ReduceProd", dims, keepdims=0), to=onnx.TensorProto.FLOAT)
    y = b.op("Add", b.op("Transpose", b.op("Relu", t), perm=[0, 2, 1]), total)
    model = b.model([("x", ["B", 12, S])], [y])
    out = folded(model)
    shape = next(n for n in nodes_of(out, "Shape"))
    assert shape.input[0] == "x" and not shape.attribute
    moved = next(n for n in nodes_of(out, "Gather") if n.input[0] == shape.output[0])
    assert constant(out, moved.input[1]).tolist() == [2, 1]  # dims 1.. of [B, S, 12] are x's dims 2 and 1
    x = np.random.default_rng(2).standard_normal((N, 12, S)).astype(np.float32)
    np.testing.assert_array_equal(run(model, {"x": x})[0], run(out, {"x": x})[0])
    assert certify(model, out, []).proved
    set_constant(out, moved.input[1], [1, 2])  # the same dims, other order: the same product, a constant of the same value
    assert certify(model, out, []).proved
    set_constant(out, moved.input[1], [0, 1])  # B where the original reads S: another product
    assert not certify(model, out, []).proved


# -- what a bad-input hunt found: correct conversions the certificate could not follow -------------------


def dense(b: Builder, x: str, c: int, k: int) -> str:
    rng = np.random.default_rng(c * 31 + k)
    return b.op("Add", b.op("MatMul", x, b.const(rng.standard_normal((c, k)))), b.const(rng.standard_normal(k)))


def converted_and_proved(model: onnx.ModelProto, tokens: bool = False) -> converter.RewriteResult:
    # keep-all: the form under test is what the certificate must follow, whether or not the optimizer would pay
    # the Transposes it costs (at batch 1, moving a unit axis past the tokens is a real Transpose)
    result = converter.rewrite(model, tokens=tokens, layout="keep-all")
    assert all(d.rewritten for d in result.report.decisions), result.report.decisions
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved, (cert.unproved, {k: v.detail for k, v in cert.layers.items()})
    return result


@pytest.mark.parametrize("batch", [N, 1, "B"])
def test_a_fold_at_batch_one_is_proved(batch: int | str) -> None:
    """Batch 1 puts a unit axis in every tensor of the chain; no element order tells unit axes apart."""
    for model in (qkv_split(batch), heads_merge(batch)):
        out = folded(model)
        assert certify(model, out, []).proved


def test_a_reshape_between_two_layers_is_proved() -> None:
    """x [N, 3, 5, 8] -> dense -> Reshape [-1, 15, 1, 8] -> dense: the second layer's input is a Reshape of the
    first layer's output, which the cleanup folds with the layout Transposes into one Reshape."""
    b = Builder(9)
    r = b.op("Reshape", dense(b, "x", 8, 8), i64(b, [-1, 15, 1, 8]))
    model = b.model([("x", ["N", 3, 5, 8])], [dense(b, r, 8, 4)])
    result = converted_and_proved(model)
    assert nodes_of(result.model, "Transpose") and len(nodes_of(result.model, "Transpose")) == 2  # in and out only


@pytest.mark.parametrize("batch", [1, "B"])
def test_a_token_reshape_that_moves_a_unit_axis_is_proved(batch: int | str) -> None:
    """x [B, 6, 12] -> dense -> Reshape [-1, 1, 12] -> dense under --tokens (at batch 1 the Reshape only moves
    a unit axis, so the layer's input is a layout of the first layer's output)."""
    b = Builder(10)
    r = b.op("Reshape", dense(b, "x", 12, 12), i64(b, [-1, 1, 12]))
    model = b.model([("x", [batch, 6, 12])], [dense(b, r, 12, 5)])
    converted_and_proved(model, tokens=True)


def test_a_shape_with_an_added_unit_axis_is_proved() -> None:
    """The Shape of an Unsqueeze output on the moved path: its dims hold the added 1."""
    b = Builder(11)
    u = b.op("Unsqueeze", dense(b, "x", 12, 12), i64(b, [-3]))  # [B, 1, 6, 12]
    total = b.op("Cast", b.op("ReduceSum", b.op("Shape", u, start=-3), keepdims=0), to=onnx.TensorProto.FLOAT)
    r = b.op("Reshape", b.op("Squeeze", u, i64(b, [1])), i64(b, [-1, 3, 2, 12]))
    y = dense(b, b.op("Reshape", r, i64(b, [-1, 36, 2])), 2, 5)
    model = b.model([("x", ["B", 6, 12])], [b.op("Add", y, total)], opset=18)
    converted_and_proved(model, tokens=True)


def test_an_output_that_a_reshape_round_trip_leaves_equal_is_proved() -> None:
    """A graph output ``Transpose(Reshape(Reshape(a, [-1, 6, 2, 6]), [-1, 6, 12]))``: after the fold it is a
    Transpose of ``a`` itself, the same tensor as the original's under another description."""
    b = Builder(12)
    a = dense(b, "x", 12, 12)
    r = b.op("Reshape", b.op("Reshape", a, i64(b, [-1, 6, 2, 6])), i64(b, [-1, 6, 12]))
    t = b.op("Transpose", r, perm=[1, 0, 2])
    u = b.op("Unsqueeze", b.op("Reshape", t, i64(b, [6, -1])), i64(b, [2]))
    y = dense(b, b.op("Reshape", u, i64(b, [-1, 3, 2])), 2, 5)
    model = b.model([("x", ["B", 6, 12])], [y, t])
    converted_and_proved(model, tokens=True)


# -- the same classes through the real command: exit 0, PASSED, the file written, the input unchanged -------


def _attention_at_batch_one() -> onnx.ModelProto:
    """A ViT attention block at batch 1: qkv Linear, heads split and permuted, q @ k^T, softmax, @ v, merged, proj."""
    b = Builder(14)
    c, h, d, s = 8, 2, 4, 6
    qkv = dense(b, "x", c, 3 * c)
    heads = b.op("Transpose", b.op("Reshape", qkv, i64(b, [1, s, 3, h, d])), perm=[2, 0, 3, 1, 4])
    q, k, v = (b.op("Gather", heads, i64(b, i), axis=0) for i in range(3))
    scores = b.op("Softmax", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), axis=-1)
    merged = b.op("Reshape", b.op("Transpose", b.op("MatMul", scores, v), perm=[0, 2, 1, 3]), i64(b, [1, s, c]))
    return b.model([("x", [1, s, c])], [dense(b, merged, c, c)])


def _reshape_between_layers() -> onnx.ModelProto:
    b = Builder(9)
    r = b.op("Reshape", dense(b, "x", 8, 8), i64(b, [-1, 15, 1, 8]))
    return b.model([("x", ["N", 3, 5, 8])], [dense(b, r, 8, 4)])


@pytest.mark.parametrize(
    ("make", "flags"), [(_attention_at_batch_one, ["--tokens"]), (_reshape_between_layers, [])], ids=["batch1-attention", "rank4"]
)
def test_the_command_passes_what_the_certificate_once_could_not_follow(make, flags: list[str], tmp_path) -> None:  # noqa: ANN001
    from tests.cli.test_cli import run as run_cli

    source = tmp_path / "m.onnx"
    onnx.save(make(), source)
    before = source.read_bytes()
    r = run_cli(source, "-o", tmp_path / "out.onnx", *flags)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and "Traceback" not in r.stderr
    assert (tmp_path / "out.onnx").exists() and source.read_bytes() == before


def test_a_computed_target_follows_the_roots_symbols() -> None:
    """A Reshape whose target is computed from ``Shape`` is read with the symbols inference found for its output:
    ``[N, S, 4, 16]`` of an ``[N, S, 64]`` root is ``[0, 0, 4, 16]`` at both sets of sizes; naming the symbols in
    another order, or writing a symbolic size as a number, is not (the folded chains of a dynamic sequence)."""
    from converter.verifier.certificate.elements import same_elements

    dims: list[int | str] = ["N", "S", 64]
    copied = (("reshape", (0, 0, 4, 16), False),)
    assert same_elements(dims, (("reshape", ("N", "S", 4, 16), True),), copied)
    assert same_elements(dims, (("reshape", ("N", "S", None, 16), True),), copied)  # one not told: what is left
    assert not same_elements(dims, (("reshape", ("S", "N", 4, 16), True),), copied)
    assert not same_elements(dims, (("reshape", ("N", 3, 4, 16), True),), copied)
    # the CF view of the root split into heads ([N, 64, S] -> [N, 4, 16, S]) is the split's, transposed
    ours = (("layout", (0, 2, 1)), ("reshape", (0, 4, 16, -1), False), ("transpose", (0, 1, 3, 2)))
    theirs = (("reshape", ("N", "S", 4, 16), True), ("transpose", (0, 2, 1, 3)))
    assert same_elements(dims, ours, theirs)
