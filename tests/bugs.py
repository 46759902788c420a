"""Realistic rewrite bugs, injected into a correct rewritten model, for proving that verification catches them.

Each injection edits one rewritten layer (its Conv and what is around it) in place and returns
False when it does not apply to that layer (e.g. a wrong ``group`` needs even channel counts).

``patch_rewrite(name)`` makes the pipeline's rewrite inject the bug into every result, so
that the real ``convert`` command's own verification can be run on a broken rewrite:

    python -c "import sys, tests.bugs as b; b.patch_rewrite(sys.argv.pop(1)); import converter.cli as c; \
        rc = c.main(); sys.exit(rc if b.INJECTED else 99)" BUG model.onnx
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.graph import iter_graphs
from converter.report import RewrittenLayer


def _find(model: onnx.ModelProto, conv_name: str) -> tuple[onnx.GraphProto, int]:
    for _, g in iter_graphs(model.graph):
        for i, n in enumerate(g.node):
            if n.name == conv_name:
                return g, i
    raise KeyError(conv_name)


def _init(graph: onnx.GraphProto, model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for _, g in [(None, graph), *iter_graphs(model.graph)]:
        for t in g.initializer:
            if t.name == name:
                return t
    raise KeyError(name)


def _set(t: onnx.TensorProto, value: np.ndarray) -> None:
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), t.name))


def _own_copy(graph: onnx.GraphProto, model: onnx.ModelProto, node: onnx.NodeProto, slot: int) -> onnx.TensorProto:
    """A private copy of the initializer ``node`` reads at ``slot`` (a shared one would break other layers too)."""
    src = _init(graph, model, node.input[slot])
    copy = onnx.TensorProto()
    copy.CopyFrom(src)
    copy.name = f"{src.name}_bug"
    graph.initializer.append(copy)  # appending copies the message: edit the one in the graph
    node.input[slot] = copy.name
    return graph.initializer[len(graph.initializer) - 1]


def _weight(model, graph, conv, fn: Callable[[np.ndarray], np.ndarray]) -> bool:  # noqa: ANN001
    t = _own_copy(graph, model, conv, 1)
    _set(t, fn(numpy_helper.to_array(t)))
    return True


def weight_not_transposed(model, graph, conv) -> bool:  # noqa: ANN001
    """The [C, K] weight reshaped to [K, C] instead of transposed."""
    return _weight(model, graph, conv, lambda w: np.ascontiguousarray(w[:, :, 0, 0].T).reshape(w.shape))


def channels_reversed(model, graph, conv) -> bool:  # noqa: ANN001
    return _weight(model, graph, conv, lambda w: np.ascontiguousarray(w[:, ::-1]))


def weight_element(model, graph, conv) -> bool:  # noqa: ANN001
    """One weight element off by a factor 1 + 1e-3."""

    def bump(w: np.ndarray) -> np.ndarray:
        w = w.copy()
        flat = w.reshape(-1)
        i = int(np.argmax(np.abs(flat)))
        flat[i] = flat[i] * flat.dtype.type(1 + 1e-3)
        return w

    return _weight(model, graph, conv, bump)


def weights_scaled(model, graph, conv) -> bool:  # noqa: ANN001
    """Every weight off by a factor 1 + 1e-4."""
    return _weight(model, graph, conv, lambda w: (w * w.dtype.type(1 + 1e-4)).astype(w.dtype))


def _has_bias(conv: onnx.NodeProto) -> bool:
    return len(conv.input) > 2 and bool(conv.input[2])


def bias_dropped(model, graph, conv) -> bool:  # noqa: ANN001
    if not _has_bias(conv):
        return False
    del conv.input[2]
    return True


def bias_scaled(model, graph, conv) -> bool:  # noqa: ANN001
    if not _has_bias(conv):
        return False
    t = _own_copy(graph, model, conv, 2)
    b = numpy_helper.to_array(t)
    _set(t, (b * b.dtype.type(1.001)).astype(b.dtype))
    return True


def bias_twice(model, graph, conv) -> bool:  # noqa: ANN001
    """The bias added again after the Conv."""
    if not _has_bias(conv):
        return False
    b = numpy_helper.to_array(_init(graph, model, conv.input[2]))
    graph.initializer.append(numpy_helper.from_array(b.reshape(1, -1, 1, 1), f"{conv.name}_bias_again"))
    return _after(graph, conv, lambda i, o: helper.make_node("Add", [i, f"{conv.name}_bias_again"], [o], name=f"{conv.name}_bug"))


def extra_activation(model, graph, conv) -> bool:  # noqa: ANN001
    return _after(graph, conv, lambda i, o: helper.make_node("Sigmoid", [i], [o], name=f"{conv.name}_bug"))


def wrong_group(model, graph, conv) -> bool:  # noqa: ANN001
    """group=2 with half the input channels: a Conv that still runs but mixes the wrong channels."""
    t = _init(graph, model, conv.input[1])
    k, c = t.dims[0], t.dims[1]
    if c % 2 or k % 2:
        return False
    _weight(model, graph, conv, lambda w: np.ascontiguousarray(w[:, : c // 2]))
    conv.attribute.append(helper.make_attribute("group", 2))
    return True


def _after(graph: onnx.GraphProto, conv: onnx.NodeProto, make: Callable[[str, str], onnx.NodeProto]) -> bool:
    """Insert a node right after ``conv`` that reads its output and writes under the output's name."""
    out = conv.output[0]
    moved = f"{out}_before_bug"
    conv.output[0] = moved
    i = list(graph.node).index(conv)
    graph.node.insert(i + 1, make(moved, out))
    return True


def _perm_before(perm: list[int]) -> Callable[..., bool]:
    def inject(model, graph, conv) -> bool:  # noqa: ANN001
        src = conv.input[0]
        moved = f"{src}_{conv.name}_bug"
        i = list(graph.node).index(conv)
        graph.node.insert(i, helper.make_node("Transpose", [src], [moved], perm=perm, name=f"{conv.name}_perm_bug"))
        conv.input[0] = moved
        return True

    return inject


def _perm_after(perm: list[int]) -> Callable[..., bool]:
    def inject(model, graph, conv) -> bool:  # noqa: ANN001
        return _after(graph, conv, lambda i, o: helper.make_node("Transpose", [i], [o], perm=perm, name=f"{conv.name}_bug"))

    return inject


# In NCHW: the channel axis stays where the Conv needs it, so the broken model still runs.
BUGS: dict[str, Callable[..., bool]] = {
    "weight_not_transposed": weight_not_transposed,
    "bias_dropped": bias_dropped,
    "bias_scaled": bias_scaled,
    "bias_twice": bias_twice,
    "weight_element": weight_element,
    "weights_scaled": weights_scaled,
    "channels_reversed": channels_reversed,
    "extra_activation": extra_activation,
    "wrong_group": wrong_group,
    "hw_swap_in": _perm_before([0, 1, 3, 2]),
    "nh_swap_in": _perm_before([2, 1, 0, 3]),
    "nw_swap_in": _perm_before([3, 1, 2, 0]),
    "hw_swap_out": _perm_after([0, 1, 3, 2]),
    "nh_swap_out": _perm_after([2, 1, 0, 3]),
    "rotate_out": _perm_after([3, 1, 0, 2]),
}


def inject(model: onnx.ModelProto, layers: list[RewrittenLayer], bug: str, which: int = 0) -> bool:
    """Inject ``bug`` into layer ``which`` of the rewritten ``model`` (in place); False if it does not apply."""
    layer = layers[which]
    graph, i = _find(model, layer.conv)
    return BUGS[bug](model, graph, graph.node[i])


INJECTED: list[str] = []  # filled as bugs go in: a harness checks it, so a stale patch point cannot pass silently


def patch_rewrite(bug: str) -> None:
    """Make the pipeline's rewrite inject ``bug`` into the first rewritten layer of every result.

    The rewrite's new weights are attached first (the injections edit tensor data); everything
    after the rewrite, verification and saving included, runs as in the real command.
    """
    import converter.pipeline as pipeline

    real = pipeline.rewrite_in_place

    def broken(out, options, detached=None, progress=None):  # noqa: ANN001, ANN202
        report = real(out, options, detached, progress)
        if detached is not None:
            detached.attach(out)
        if report.layers and not inject(out, report.layers, bug):
            raise SystemExit(f"bug {bug} does not apply to this model")
        INJECTED.append(bug)
        return report

    pipeline.rewrite_in_place = broken
