"""Per-channel ops on flattened token rows (cleanup/channel_groups.py): run channels-first as one op, no Reshape.

timm's LeViT applies BatchNorm1d to tokens through a flatten: ``Reshape [B, S, C] -> [B*S, C]`` (or ``Flatten``),
``BatchNormalization``, ``Reshape`` back (to constants, or to ``Shape(x)`` in a dynamic TorchScript export). Before
the group was known, the BN forced channels-last on every token Linear around it. Each case here is a small
LeViT-like block between channels-first ends (as LeViT's stem hands its tokens over, ``[N, C, S]``): both Linears
must become Convs with no Transpose left, the group one op on the channels-first tensor, the result equal in
onnxruntime and proved by the certificate (``converter.verify``). Variants that are no group (a way back to
another shape, a flatten that cuts the channel axis) must keep the layers as they are, still proved.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import converter
from converter.rewriter.cleanup.cancel_transposes import CancelTransposes
from converter.rewriter.cleanup.channel_groups import MoveChannelGroups, match
from converter.rewriter.cleanup.sink_transposes import SinkTransposes
from converter.rewriter.layout import LAYOUT_COST
from converter.rewriter.layout import problem as layout_problem
from converter.verifier.certificate import certify
from models.graphs import Builder
from tests.rewriter.cleanup._harness import nodes_of, run, transposes

N, C0, S, C = 2, 6, 10, 8  # S != C: the channel axis cannot pass for the sequence


def _per_channel(b: Builder, rows: str, kind: str, c: int) -> str:
    """The per-channel op(s) on ``rows`` ([N*S, c])."""
    rng = b.rng
    if kind == "bn":
        params = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c) * 0.1, rng.standard_normal(c) * 0.1, rng.uniform(0.5, 2, c)]
        return b.op("BatchNormalization", rows, *(b.const(p) for p in params), epsilon=1e-5)
    if kind == "affine":  # x * scale + shift, the scale as [1, C] and the shift as [C]
        y = b.op("Mul", rows, b.const(rng.uniform(0.5, 1.5, (1, c))))
        return b.op("Add", b.const(rng.standard_normal(c) * 0.1), y)
    raise AssertionError(kind)


def _normed(b: Builder, x: str, c: int, flatten: str, kind: str, back: str = "restore") -> str:
    """``x`` ([N, S, c]) flattened to rows, the per-channel op(s), and reshaped back."""
    if flatten == "reshape":
        rows = b.op("Reshape", x, b.const(np.array([-1, c]), np.int64))
    else:
        rows = b.op("Flatten", x, axis=2)
    y = _per_channel(b, rows, kind, c)
    if back == "restore" and flatten == "reshape":
        target = b.const(np.array([-1, S, c]), np.int64)
    elif back == "restore":
        target = b.op("Shape", x)
    else:  # another shape with as many elements: no way back to x
        target = b.const(np.array([-1, c, S]), np.int64)
    return b.op("Reshape", y, target)


def levit_block(flatten: str = "reshape", kind: str = "bn", back: str = "restore", batch: int | str = N) -> onnx.ModelProto:
    """Tokens from a channels-first [N, C0, S]: Linear, per-channel op on rows, HardSwish, Linear, per-channel op on
    rows, back to channels-first. Two Transposes in the original."""
    b = Builder(11)
    t = b.op("Transpose", "x", perm=[0, 2, 1])
    h = _normed(b, b.op("MatMul", t, b.const(b.rng.standard_normal((C0, C)) / np.sqrt(C0))), C, flatten, kind, back)
    if back != "restore":
        h = b.op("Reshape", h, b.const(np.array([-1, S, C]), np.int64))
    h = b.op("HardSwish", h)
    y = _normed(b, b.op("MatMul", h, b.const(b.rng.standard_normal((C, C0)) / np.sqrt(C))), C0, flatten, kind)
    out = b.op("Transpose", b.op("Add", t, y), perm=[0, 2, 1])
    return b.model([("x", [batch, C0, S])], [out])


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(3).standard_normal((N, C0, S)).astype(np.float32)}


def _converted(model: onnx.ModelProto) -> converter.RewriteResult:
    result = converter.rewrite(model, tokens=True)
    verdict = converter.verify(model, result)
    assert verdict.verdict == "passed", verdict.structure
    np.testing.assert_allclose(run(result.model, _feeds())[0], run(model, _feeds())[0], rtol=1e-4, atol=1e-5)
    return result


@pytest.mark.parametrize("batch", [N, "batch"])
@pytest.mark.parametrize("kind", ["bn", "affine"])
@pytest.mark.parametrize("flatten", ["reshape", "flatten"])
def test_a_per_channel_op_on_token_rows_runs_channels_first(flatten: str, kind: str, batch: int | str) -> None:
    model = levit_block(flatten, kind, batch=batch)
    assert transposes(model) == 2
    result = _converted(model)
    assert result.report.rewritten == 2, [(d.anchor, d.reason, d.detail) for d in result.report.decisions]
    out = result.model
    assert transposes(out) == 0  # the ends are channels-first: nothing is left to transpose
    assert not nodes_of(out, "Flatten") and not nodes_of(out, "Shape")
    assert len(nodes_of(out, "Reshape")) == 0
    ops = {"bn": ["BatchNormalization"], "affine": ["Mul", "Add"]}[kind]
    for op in ops:  # each op of a group once per group, on the Conv's [N, C, S] (rank 3, channel axis 1)
        assert len(nodes_of(out, op)) == 2 + (op == "Add")  # (+ the residual Add)


def test_without_the_group_the_layers_are_declined(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer's knowing the group is what converts the layers: without it, the rows force channels-last."""
    monkeypatch.setattr(layout_problem, "match_group", lambda *args: None)
    result = converter.rewrite(levit_block(), tokens=True)
    assert result.report.rewritten == 0
    assert {d.reason for d in result.report.decisions if d.layer is not None or d.reason == LAYOUT_COST} == {LAYOUT_COST}


def test_a_way_back_to_another_shape_is_no_group() -> None:
    """Rows reshaped to [N, C, S] (the same elements, another tensor): not x's shape, so the op stays on the rows."""
    model = levit_block(back="other")
    first = next(n for n in model.graph.node if n.op_type == "Reshape")
    from converter.rewriter.cleanup._workspace import Workspace

    ws = Workspace(model.graph, None, 17, None)
    assert match(ws, first, lambda name: [N, S, C] if name == first.input[0] else None) is None
    result = converter.rewrite(model, tokens=True)
    assert converter.verify(model, result).verdict == "passed"
    assert transposes(result.model) <= transposes(model)


def test_a_flatten_that_cuts_the_channel_axis_is_no_group() -> None:
    b = Builder(2)
    rows = b.op("Reshape", "x", b.const(np.array([-1, C // 2]), np.int64))
    y = b.op("Reshape", _per_channel(b, rows, "bn", C // 2), b.const(np.array([-1, S, C]), np.int64))
    model = b.model([("x", [N, S, C])], [y])
    from converter.rewriter.cleanup._workspace import Workspace

    ws = Workspace(model.graph, None, 17, None)
    head = model.graph.node[0]
    assert match(ws, head, lambda name: [N, S, C] if name == "x" else None) is None


@pytest.mark.parametrize("flatten", ["reshape", "flatten"])
def test_the_pass_moves_a_transpose_through_a_group_and_the_certificate_proves_it(flatten: str) -> None:
    """No layer: a channels-first [N, C, S] read as tokens, a group, and back. The cleanup alone (no chosen layout)
    moves the Transpose below the group, where it meets its inverse: the group is one BatchNormalization on the input."""
    b = Builder(4)
    t = b.op("Transpose", "x", perm=[0, 2, 1])
    y = b.op("Transpose", _normed(b, t, C, flatten, "bn"), perm=[0, 2, 1])
    model = b.model([("x", [N, C, S])], [y])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    from converter.graph import collect_types
    from converter.rewriter.cleanup import run_passes

    report = run_passes(out, (CancelTransposes(), SinkTransposes(), MoveChannelGroups()), types=collect_types(out).get(()))
    onnx.checker.check_model(out, full_check=True)
    assert report.changes.get("move_channel_groups") == 1
    assert transposes(out) == 0
    (bn,) = nodes_of(out, "BatchNormalization")
    assert bn.input[0] == "x" and not nodes_of(out, "Reshape") and not nodes_of(out, "Flatten")
    feeds = {"x": np.random.default_rng(5).standard_normal((N, C, S)).astype(np.float32)}
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-6)
    cert = certify(model, out, [])
    assert cert.proved, cert.to_dict()
