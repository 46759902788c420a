"""Shared by the handler tests: run the cleanup on a hand-built graph, and prove the result by numbers.

The numbers come from onnxruntime directly (CPU, graph optimizations off, so both graphs run as
written), not from ``converter.verify``: its structural certificate accepts a layout change only
through elementwise ops until it learns the axis ops.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from converter.graph import count_ops
from converter.rewriter.cleanup import CleanupOptions, CleanupReport, PassContext, run_passes
from converter.rewriter.cleanup.cancel_transposes import CancelTransposes
from converter.rewriter.cleanup.handlers import Decline, Plan
from converter.rewriter.cleanup.sink_transposes import SinkTransposes, plan_move

PASSES = (CancelTransposes(), SinkTransposes())
N, H, W = 2, 5, 7  # N > 1, H != W: a swapped axis cannot hide


def transposes(model: onnx.ModelProto) -> int:
    return count_ops(model.graph).get("Transpose", 0)


def nodes_of(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def attr(node: onnx.NodeProto, name: str) -> object:
    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else None


def constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def cleaned(model: onnx.ModelProto, options: CleanupOptions | None = None) -> tuple[onnx.ModelProto, CleanupReport]:
    """The cleanup on a copy of ``model``: checked by onnx, interface unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    report = run_passes(out, PASSES, options=options)
    onnx.checker.check_model(out, full_check=True)
    assert list(out.graph.input) == list(model.graph.input)
    assert list(out.graph.output) == list(model.graph.output)
    return out, report


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def feeds_for(model: onnx.ModelProto, seed: int = 0, low: float | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs of the declared (concrete) shapes: standard normal, or uniform in [low, low + 1.5)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        data = rng.standard_normal(shape) if low is None else rng.uniform(low, low + 1.5, shape)
        feeds[vi.name] = data.astype(dtype)
    return feeds


def same_numbers(
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    low: float | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Every output of ``result`` equals ``original``'s: same count, dtype, shape and values (two seeds)."""
    for seed in (0, 1):
        inputs = feeds if feeds is not None else feeds_for(original, seed, low)
        want, got = run(original, inputs), run(result, inputs)
        assert len(want) == len(got)
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def plan_for(model: onnx.ModelProto, op_type: str, options: CleanupOptions | None = None) -> Plan | Decline:
    """What the handler of the first ``op_type`` node says about the Transpose it reads (nothing is edited)."""
    ctx = PassContext(model, options=options)
    ws = ctx.workspace(model.graph)
    node = nodes_of(model, op_type)[0]
    transpose = next(ws.producer(name) for name in node.input if (p := ws.producer(name)) is not None and p.op_type == "Transpose")
    return plan_move(ctx, ws, transpose, node)


def declines(model: onnx.ModelProto, op_type: str, code: str, options: CleanupOptions | None = None) -> None:
    """The handler declines with ``code``, and the whole cleanup leaves the graph's Transposes as they were."""
    verdict = plan_for(model, op_type, options)
    assert isinstance(verdict, Decline), verdict
    assert verdict.code == code, verdict
    out, _ = cleaned(model, options)
    assert transposes(out) == transposes(model)
    same_numbers(model, out)
