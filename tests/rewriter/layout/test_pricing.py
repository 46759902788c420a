"""The layout problem prices what the cleanup realizes: each form below was once priced otherwise, and the policy
declined layers whose conversion ends with no more Transposes than the original (issue 21).

- The original's count is the graph as it is: with nothing converted the cleanup does not run, so a chain of
  Reshapes and Transposes keeps every Transpose it has (Hiera's unroll: three Transposes the fold makes one).
- A Transpose that reads a chain's end beside another reader (DeBERTa's ``K^T`` of the keys its relative positions
  also read) goes with the chain: the fold makes the end a Transpose of its pieces, and ``K^T`` cancels against it.
- A chain whose targets the fold cannot write (two symbolic sizes no 0 copies) is not priced as folded.

Every result is verified (structure and numbers), and ends with exactly the Transposes the optimum counted.
"""

from __future__ import annotations

import numpy as np
import onnx

import converter
from converter.graph import count_ops
from converter.rewriter.layout import LAYOUT_COST
from models.graphs import Builder
from tests.rewriter.layout.test_optimizer import model_of, ms_gelu, rewritten

N, H, W, C = 2, 4, 6, 8  # H != W
B, S, HEADS, D = 1, 5, 2, 4  # a token sequence: C = HEADS * D (batch 1, as a static export: see keys_read_twice)


def transposes(model: onnx.ModelProto) -> int:
    return count_ops(model.graph).get("Transpose", 0)


def declined(result: converter.RewriteResult) -> list[converter.Decision]:
    return [d for d in result.report.decisions if d.reason == LAYOUT_COST]


def windows_there_and_back(b: Builder, x: str, p: int = 2) -> str:
    """NHWC into p x p windows and straight back: two Transposes the fold pass makes none."""
    split = b.op("Reshape", x, b.const(np.array([N, H // p, p, W // p, p, C]), np.int64))
    win = b.op("Reshape", b.op("Transpose", split, perm=[0, 1, 3, 2, 4, 5]), b.const(np.array([-1, p * p, C]), np.int64))
    back = b.op("Reshape", win, b.const(np.array([N, H // p, W // p, p, p, C]), np.int64))
    back = b.op("Transpose", back, perm=[0, 1, 3, 2, 4, 5])
    return b.op("Reshape", back, b.const(np.array([N, H, W, C]), np.int64))


def test_the_original_is_counted_as_it_is_not_as_the_cleanup_would_fold_it() -> None:
    """NHWC in, Relu, windows there and back, dense, com.microsoft Gelu, dense, out. Converting both layers costs
    the two Transposes around the Gelu (the windows fold to nothing either way); the original has the chain's two.
    Counted as folded (none), the original looked cheaper and both layers were declined."""
    b = Builder(21)
    y = b.dense(windows_there_and_back(b, b.op("Relu", "x")), C, C)
    y = b.dense(ms_gelu(b, y, [N, H, W, C]), C, C)
    model = model_of(b, [("x", [N, H, W, C])], [y])
    result = rewritten(model)
    assert result.report.rewritten == 2 and declined(result) == []
    layout = result.report.layout
    assert layout.transposes_original - layout.edge_original == 2
    assert layout.transposes_final - layout.edge_final == layout.transposes_optimum == 2


def keys_read_twice() -> onnx.ModelProto:
    """A token attention block (input [B, S, C]) whose head-split keys are read twice, as DeBERTa's: by ``K^T``
    for the scores and by a MatMul with the relative positions (a second input); the output passes a com.microsoft Gelu (which
    costs a converted output projection one Transpose). Batch 1: the fold then merges the batch and the heads
    into one axis and makes the keys a Transpose of its pieces, against which ``K^T`` cancels (with a batch of
    2 a Reshape follows that Transpose, and ``K^T`` stays: the problem prices that too)."""
    b = Builder(22)

    def heads(t: str) -> str:
        t = b.op("Reshape", t, b.const(np.array([B, S, HEADS, D]), np.int64))
        t = b.op("Transpose", t, perm=[0, 2, 1, 3])
        return b.op("Reshape", t, b.const(np.array([B * HEADS, S, D]), np.int64))

    q, k, v = (heads(b.dense("x", C, C)) for _ in range(3))
    kt = b.op("Transpose", k, perm=[0, 2, 1])
    positions = b.op("MatMul", k, "r")  # the relative positions' keys: computed at run time
    scores = b.op("Add", b.op("MatMul", q, kt), positions)
    att = b.op("MatMul", b.op("Softmax", scores, axis=-1), v)
    merged = b.op("Reshape", att, b.const(np.array([B, HEADS, S, D]), np.int64))
    merged = b.op("Transpose", merged, perm=[0, 2, 1, 3])
    merged = b.op("Reshape", merged, b.const(np.array([B, S, C]), np.int64))
    y = ms_gelu(b, b.dense(merged, C, C), [B, S, C])
    return model_of(b, [("x", [B, S, C]), ("r", [D, S])], [y])


def test_a_transpose_of_a_chain_end_read_twice_cancels_against_the_fold() -> None:
    """Converted, the keys' chain makes ``K^T`` as its pieces (the fold's Transpose goes to the other reader), so
    the four layers cost the original's five Transposes inside (the Gelu's one included); priced apart, ``K^T``
    looked one more and the output projection was declined."""
    model = keys_read_twice()
    assert transposes(model) == 5
    result = rewritten(model, tokens=True)
    assert result.report.rewritten == 4 and declined(result) == []
    layout = result.report.layout
    assert layout.transposes_final - layout.edge_final == layout.transposes_optimum == 5


def dynamic_keys() -> onnx.ModelProto:
    """One token layer on a dynamic batch and sequence whose head split's target is read from ``Shape`` (as a
    dynamic TorchScript export writes it): the merged ``[N*heads, S, d]`` the fold would write needs two -1s."""
    b = Builder(23)
    x = b.dense("x", C, C)
    shape = b.op("Shape", "x")
    n = b.op("Gather", shape, b.const(np.array([0]), np.int64), axis=0)
    s = b.op("Gather", shape, b.const(np.array([1]), np.int64), axis=0)
    target = b.op("Concat", n, s, b.const(np.array([HEADS, D]), np.int64), axis=0)
    t = b.op("Transpose", b.op("Reshape", x, target), perm=[0, 2, 1, 3])
    merged = b.op("Reshape", t, b.op("Concat", b.const(np.array([-1]), np.int64), s, b.const(np.array([D]), np.int64), axis=0))
    y = b.op("Softmax", b.op("MatMul", merged, b.op("Transpose", merged, perm=[0, 2, 1])), axis=-1)
    return model_of(b, [("x", ["N", "S", C])], [y])


def test_a_chain_the_fold_cannot_write_is_priced_as_it_stays() -> None:
    """Under keep-all, the optimum counts exactly the Transposes the cleanup leaves (the fold cannot write the
    chain, so a Transpose taken into it stays apart)."""
    model = dynamic_keys()
    result = rewritten(model, tokens=True, layout="keep-all")
    assert result.report.rewritten == 1
    layout = result.report.layout
    assert layout.transposes_optimum + layout.edge_optimum == layout.transposes_final == transposes(result.model)
