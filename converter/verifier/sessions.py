"""One model in onnxruntime for verification: built once, run on several inputs, with inner tensors exposed.

Verification compares tensors inside the graph (each rewritten layer's input and output), not only
the graph outputs; onnxruntime only returns graph outputs, so the session is built from the model's
serialization with those tensors added as extra outputs. The shapes of other tensors (those the structural
proof read from shape inference, checked against onnxruntime's: numbers/shapes.py) come back the same way,
from ``Shape`` nodes added for them, a few integers each. Building a session never changes the
model it is given (sessions are built in background threads while other code reads the models).
Every run has a deadline: a watchdog sets onnxruntime's terminate flag when it passes (a model
can loop forever), and the run then ends with ``VerificationTimeout``.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from converter.errors import ConverterError, InputError
from converter.files.save import external_data_needed, save
from converter.graph import wire
from converter.graph.detached import DetachedWeights
from converter.providers import make_session
from converter.verifier.numbers.shapes import shape_nodes

_GRAPH_NODE = 1  # GraphProto.node
_GRAPH_OUTPUT = 12  # GraphProto.output


class VerificationTimeout(InputError):
    """Verification ran past its time limit."""


class Runner:
    """``model`` in onnxruntime, returning its graph outputs, the ``expose``d tensors and the ``shapes`` of
    others (``name + shapes.SUFFIX``: ``Shape(name)``) by name.

    Args:
        model: the model (not changed: the session is built from a serialized copy with the extra outputs).
        providers: onnxruntime's execution providers, in order.
        expose: tensors to return besides the graph outputs.
        which: "original" or "rewritten", for messages.
        values: the data of the model's placeholder weights, used in place (graph/detached.py).
        shapes: tensors whose shapes (not values) to return, as ``name + shapes.SUFFIX``.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        providers: Sequence[str],
        expose: Sequence[str] = (),
        which: str = "original",
        values: DetachedWeights | None = None,
        shapes: Sequence[str] = (),
    ) -> None:
        self.which = which
        declared = [o.name for o in model.graph.output]
        inputs = {i.name for i in model.graph.input}
        extra = [n for n in dict.fromkeys(expose) if n and n not in declared and n not in inputs]
        nodes = _latest_first(model.graph, shape_nodes([n for n in dict.fromkeys(shapes) if n]))
        extra += [n.output[0] for n in nodes]
        self.names = declared + extra
        # The arrays onnxruntime computes with in place, held for as long as the session lives.
        self._held: dict[str, tuple[np.ndarray, ort.OrtValue]] = {}
        self.session = _session(model, extra, providers, which, values, self._held, nodes)

    def run(self, feeds: dict[str, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
        options = ort.RunOptions()
        options.log_severity_level = 4  # failures are reported by us, in one line
        timer = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VerificationTimeout(f"verification ran out of time before running the {self.which} model")
            timer = threading.Timer(left, lambda: setattr(options, "terminate", True))
            timer.daemon = True
            timer.start()
        try:
            outputs = self.session.run(None, feeds, options)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many unrelated types
            if options.terminate:
                raise VerificationTimeout(
                    f"verification did not finish in time: the {self.which} model was still running "
                    "(an endless Loop?); give --timeout SECONDS, or --no-verify"
                ) from None
            raise InputError(f"onnxruntime cannot run the {self.which} model: {_first_line(e)}") from e
        finally:
            if timer is not None:
                timer.cancel()
        return dict(zip(self.names, outputs, strict=True))


def with_outputs(model: onnx.ModelProto, extra: Sequence[str], nodes: Sequence[onnx.NodeProto] = ()) -> bytes:
    """``model`` serialized with ``extra`` tensors listed as graph outputs after its own, and ``nodes`` after its
    nodes (the model is not changed).

    A repeated field's entries are read in the order they appear, so outputs appended at the end
    of the graph's bytes come after the declared ones (and nodes after the graph's own).
    """
    body = model.SerializeToString()
    if not extra and not nodes:
        return body
    graphs = [(first, start, end) for number, first, start, end in wire.spans(body, 0, len(body)) if number == wire.MODEL_GRAPH]
    first, start, end = graphs[-1]
    added = b"".join(wire.tag(_GRAPH_NODE) + wire.varint(len(b)) + b for b in (n.SerializeToString() for n in nodes))
    added += b"".join(
        wire.tag(_GRAPH_OUTPUT) + wire.varint(len(b)) + b for b in (onnx.ValueInfoProto(name=n).SerializeToString() for n in extra)
    )
    return b"".join(
        (body[:first], wire.tag(wire.MODEL_GRAPH), wire.varint(end - start + len(added)), body[start:end], added, body[end:])
    )


def _latest_first(graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` (each reading one tensor of ``graph``), the one whose tensor ``graph`` makes last first.

    Added after the graph's own nodes in this order, each runs right after what makes its tensor, which is then
    freed as it would be without it: onnxruntime orders a graph by a depth-first walk from its leaves (nodes nothing
    reads, as these), the last leaf first, each placed after what it reads. In the graph's order, every such node
    would run after the last of the tensors they read, each kept until then (measured: +25% of the peak of a
    SegFormer export's run, against none in this order)."""
    if not nodes:
        return []
    made = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    return sorted(nodes, key=lambda n: -made.get(n.input[0], len(graph.node)) if n.input else 0)


def _session(
    model: onnx.ModelProto,
    extra: Sequence[str],
    providers: Sequence[str],
    which: str,
    values: DetachedWeights | None,
    held: dict[str, tuple[np.ndarray, ort.OrtValue]],
    nodes: Sequence[onnx.NodeProto] = (),
) -> ort.InferenceSession:
    at = values.placeholders(model.graph) if values is not None else []
    # Every tensor counts (save.inline_bytes): a large Constant makes a message too large just as weights do.
    large = external_data_needed(model)
    try:
        if at and shares_buffers() and not external_data_needed(model, placeholders=False):
            return _shared_session(model, extra, providers, which, values, at, held, nodes)  # type: ignore[arg-type]
        if at or large:
            # The data goes in the ordinary way: attached to a copy (onnxruntime does not take our
            # buffers), or, past protobuf's 2 GB, in external data that onnxruntime reads from disk.
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            if at:
                values.attach(copy)  # type: ignore[union-attr]
            copy.graph.node.extend(nodes)
            copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
            if not large:
                return make_session(copy.SerializeToString(), providers)
            with tempfile.TemporaryDirectory(prefix="converter-verify-") as folder:
                path = Path(folder) / f"{which}.onnx"
                save(copy, path, external_data=True)
                del copy
                return make_session(str(path), providers)
        return make_session(with_outputs(model, extra, nodes), providers)
    except ConverterError:
        raise
    except OSError as e:  # our own temporary files (a full disk, ulimit -f): the machine's problem, not the model's
        raise ConverterError(
            f"cannot write verification's temporary files in {tempfile.gettempdir()} ({e.strerror or _first_line(e)})"
        ) from e
    except Exception as e:  # noqa: BLE001 - onnxruntime raises many unrelated types (none of them an OSError)
        raise InputError(f"onnxruntime cannot load the {which} model: {_first_line(e)}") from e


def _shared_session(
    model: onnx.ModelProto,
    extra: Sequence[str],
    providers: Sequence[str],
    which: str,
    values: DetachedWeights,
    at: list[int],
    held: dict[str, tuple[np.ndarray, ort.OrtValue]],
    nodes: Sequence[onnx.NodeProto] = (),
) -> ort.InferenceSession:
    """A session over ``model`` whose placeholders onnxruntime reads from ``values``' arrays, in place.

    The arrays of unchanged weights are the same ones the other model's session uses: verifying
    costs no copy of them. onnxruntime wants an initializer it replaces to be in the model, as
    external data in an existing file: the placeholders' own location names an empty sparse file
    written beside the model for the purpose (onnxruntime never reads it).
    """
    graph = model.graph
    largest = max(values.nbytes(graph.initializer[i].name) for i in at)
    with tempfile.TemporaryDirectory(prefix="converter-verify-") as folder:
        with open(Path(folder) / DetachedWeights.LOCATION, "wb") as f:
            f.truncate(max(largest, 1))  # sparse: it takes no space
        path = Path(folder) / f"{which}.onnx"
        path.write_bytes(with_outputs(model, extra, nodes))
        for i in at:
            name = graph.initializer[i].name
            array = np.ascontiguousarray(values.array(name))
            held[name] = (array, ort.OrtValue.ortvalue_from_numpy(array))
        return make_session(str(path), providers, {name: v for name, (_, v) in held.items()})


@functools.lru_cache(maxsize=1)
def shares_buffers() -> bool:
    """Whether onnxruntime really computes with initializers given as buffers (checked once, on a tiny model).

    If a release ever read the (empty) file instead, both models would run on zeros and agree;
    this check makes verification fall back to handing over the data the ordinary way instead.
    """
    values = DetachedWeights()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
        "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64])],
    )
    weight = np.arange(64, dtype=np.float32) + 1
    values.add(graph, "w", weight)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    held: dict[str, tuple[np.ndarray, ort.OrtValue]] = {}
    try:
        session = _shared_session(model, [], ["CPUExecutionProvider"], "probe", values, [0], held)
        (out,) = session.run(None, {"x": np.zeros(64, np.float32)})
    except Exception:  # noqa: BLE001 - any failure means "do it the ordinary way"
        return False
    return bool(np.array_equal(out, weight))


def _first_line(e: BaseException) -> str:
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return text if len(text) <= 300 else text[:297] + "..."
