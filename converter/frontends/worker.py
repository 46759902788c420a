"""The TensorFlow side of the front end: a child process that loads, converts and runs SavedModels.

savedmodel.py starts it (after audit.py has passed the SavedModel) and talks to it in JSON lines:
requests on stdin, one reply per request on the file descriptor given as the first argument.
Models and arrays travel as files in the parent's private temporary folder (ONNX bytes; npz without
pickles). This is the only module that imports TensorFlow, Keras or tf2onnx, so a crash, a memory
blow-up or TensorFlow's native logging stays in this process. It runs as a script (by path), and
imports nothing from the converter package: the child needs only numpy, onnx and TensorFlow. Requests:

- ``export``: load a ``.keras`` file (safe mode) or, opted in, a legacy ``.h5`` file, and write it
  as a SavedModel for the parent to audit;
- ``convert``: a SavedModel's signature to ONNX with tf2onnx;
- ``run``: the signature in TensorFlow on arrays from an npz file.

Every failure is a one-line ``{"error": ...}`` reply (the traceback goes to this process's stderr,
which the user sees with ``-v``). Two things tf2onnx 1.17 cannot do alone, both needed for Keras
3's ConvNeXt:

- Keras 3 wraps grouped and depthwise convolutions in functions marked ``_noinline`` and
  ``_XlaMustCompile``; tf2onnx then leaves ``StatefulPartitionedCall`` nodes it cannot convert
  (tensorflow-onnx issues 2347, 2099). We clear those marks and let grappler inline the calls.
- Keras' exact GELU uses ``Erfc``, which tf2onnx has no handler for (issue 2412): we map it to
  ``1 - Erf(x)``.

Anything else tf2onnx leaves unconverted (it logs it, still reports success, and returns a model
that does not load) is an error naming the TensorFlow ops.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

_NO_INLINE_ATTRS = ("_noinline", "_XlaMustCompile")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
INSTALL_HINT = "pip install 'dense2conv[tf]'"


class InputError(Exception):
    """A request that cannot be served: its message is the one line the user sees."""


def main(argv: list[str]) -> int:
    """Serve requests until stdin closes. Ctrl-C is the parent's to handle: it stops us."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handlers: dict[str, Callable[[dict], dict]] = {"export": _export, "convert": _convert, "run": _run}
    with open(int(argv[0]), "w", encoding="utf-8") as replies:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                reply = handlers[request["op"]](request)
            except InputError as e:
                traceback.print_exc()  # seen with -v; in the log file otherwise
                reply = {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - TensorFlow raises anything; the parent shows one line
                traceback.print_exc()
                reply = {"error": f"{request.get('shown_as', 'TensorFlow')}: TensorFlow failed ({_first_line(e)})"}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    return 0


def _tensorflow(shown_as: str):
    """TensorFlow, or the one line that says which extra to install."""
    try:
        import tensorflow as tf
        import tf2onnx  # noqa: F401 - checked here so that a missing tf2onnx gets the same hint
    except ImportError as e:
        raise InputError(
            f"{shown_as}: SavedModel and Keras input need TensorFlow and tf2onnx ({_first_line(e)}): {INSTALL_HINT}"
        ) from e
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # its errors become ours, as one line
    return tf


def _export(request: dict) -> dict:
    _tensorflow(request["shown_as"])
    import keras

    path = Path(request["path"])
    try:
        # .keras: safe mode refuses to deserialize code; .h5 has no safe mode (the caller opted in).
        model = keras.saving.load_model(path, safe_mode=path.suffix == ".keras", compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for unreadable files
        raise InputError(f"{request['shown_as']}: cannot load the Keras model ({_first_line(e)})") from e
    model.export(request["target"], verbose=False)
    return {}


def _convert(request: dict) -> dict:
    tf = _tensorflow(request["shown_as"])
    import tf2onnx
    from tf2onnx import tf_loader

    shown_as, signature = request["shown_as"], request["signature"]
    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            request["saved_model"], None, None, request["tag"], [signature], return_tensors_to_rename=True
        )
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many types for unreadable SavedModels
        raise InputError(f"{shown_as}: cannot load the SavedModel signature {signature!r} ({_first_line(e)})") from e
    if _clear_no_inline(graph_def):
        with tf.Graph().as_default():  # grappler runs on a meta graph, which needs graph mode
            graph_def = tf_loader.tf_optimize(inputs, outputs, graph_def)  # its function inliner
    try:
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=inputs,
            output_names=outputs,
            opset=request["opset"],
            tensors_to_rename=renames,
            custom_op_handlers={"Erfc": (_erfc, [])},
        )
    except Exception as e:  # noqa: BLE001 - tf2onnx raises many types
        raise InputError(f"{shown_as}: tf2onnx could not convert the model ({_first_line(e)})") from e
    unknown = sorted({n.op_type for n in _all_nodes(model.graph) if not _known_op(n, model)})
    if unknown:
        raise InputError(f"{shown_as}: TensorFlow ops that could not be converted to ONNX: {', '.join(unknown)}")
    Path(request["output"]).write_bytes(model.SerializeToString())
    return {}


_loaded: dict[tuple[str, str], object] = {}  # SavedModels already loaded by `run`, by (folder, tag)


def _run(request: dict) -> dict:
    tf = _tensorflow(request["shown_as"])
    key = (request["saved_model"], request["tag"])
    if key not in _loaded:
        _loaded[key] = tf.saved_model.load(request["saved_model"], tags=[request["tag"]])
    fn = _loaded[key].signatures[request["signature"]]  # type: ignore[attr-defined]
    with np.load(request["feeds"], allow_pickle=False) as data:
        feeds = {name: tf.constant(data[f"arr_{i}"]) for i, name in enumerate(request["names"])}
    try:
        outputs = {k: _plain_array(v.numpy()) for k, v in fn(**feeds).items()}
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many types for inputs a model cannot take
        raise InputError(
            f"{request['shown_as']}: TensorFlow could not run the signature {request['signature']!r} ({_first_line(e)})"
        ) from e
    names = list(outputs)
    np.savez(request["outputs"], *(outputs[n] for n in names))
    return {"names": names}


def _plain_array(value: np.ndarray) -> np.ndarray:
    """TensorFlow's string tensors come back as object arrays of bytes: make them str arrays (npz without pickles)."""
    if value.dtype != object:
        return value
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.ravel()]
    return np.array(flat, dtype=np.str_).reshape(value.shape)


def _clear_no_inline(graph_def: object) -> bool:
    """Drop the marks that stop grappler from inlining Keras 3's XLA-wrapped convolutions."""
    changed = False
    for fn in graph_def.library.function:  # type: ignore[attr-defined]
        for key in _NO_INLINE_ATTRS:
            if key in fn.attr:
                del fn.attr[key]
                changed = True
        for node in fn.node_def:
            changed |= _clear_node(node)
    for node in graph_def.node:  # type: ignore[attr-defined]
        changed |= _clear_node(node)
    return changed


def _clear_node(node: object) -> bool:
    changed = False
    if node.op in _CALL_OPS:  # type: ignore[attr-defined]
        for key in _NO_INLINE_ATTRS:
            if key in node.attr:  # type: ignore[attr-defined]
                del node.attr[key]  # type: ignore[attr-defined]
                changed = True
    return changed


def _erfc(ctx: object, node: object, name: str, args: list) -> None:
    """tf2onnx custom handler: Erfc(x) = 1 - Erf(x)."""
    from tf2onnx import utils

    node.type = "Erf"  # type: ignore[attr-defined]
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))  # type: ignore[attr-defined]
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))  # type: ignore[attr-defined]
    ctx.insert_new_node_on_output(
        "Sub",
        node.output[0],
        name=utils.make_name(f"{name}_erfc"),  # type: ignore[attr-defined]
        inputs=[one.output[0], node.output[0]],
    )


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, those of If/Loop/Scan bodies included."""
    graphs = [graph]
    while graphs:
        for node in graphs.pop().node:
            yield node
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)


def _known_op(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    domain = node.domain if node.domain not in ("ai.onnx",) else ""
    version = next((o.version for o in model.opset_import if o.domain == domain), None)
    if version is None:
        return False
    try:
        onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return domain not in ("", "ai.onnx.ml")  # custom domains (tf2onnx's contrib ops) are not ours to judge
    return True


_NOISE = ("Traceback", "File ", "<stack traces unavailable>")


def _first_line(e: BaseException) -> str:
    """The line of an error message that says what went wrong.

    TensorFlow's runtime errors open with "Graph execution error:" and "Detected at node X
    defined at ...", then give the status (``NOT_FOUND: ...``); we say "node X: NOT_FOUND: ...".
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    node = ""
    for line in lines:
        if line.startswith("Detected at node "):
            node = line.split()[3] + ": "
        elif not line.endswith(":") and not line.startswith(_NOISE):
            return (node + line)[:300]
    return lines[0][:300] if lines else type(e).__name__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
