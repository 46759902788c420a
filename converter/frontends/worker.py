"""The TensorFlow side of the front end: a child process that loads, converts and runs SavedModels.

savedmodel.py starts it (after audit.py has passed the SavedModel) and talks to it in JSON lines:
requests on stdin, one reply per request on the file descriptor given as the first argument.
Models and arrays travel as files in the parent's private temporary folder (the second argument;
ONNX bytes, npz without pickles). This is the only module that imports TensorFlow, Keras or
tf2onnx, so a crash, a memory blow-up or TensorFlow's native logging stays in this process. It runs
as a script (by path), and imports nothing from the converter package: the child needs only
numpy, onnx and TensorFlow (and the ``landlock`` package on Linux, to confine itself).

Before it reads any request it confines itself, for whatever the audit did not catch (or
``--trust-model`` let through): on Linux with Landlock (kernel 5.13 and later), it may from then on
create, change, rename or delete files only below the private folder (and write ``/dev/null`` and
GPU devices); its first line says what held (``{"writes": ...}``). The parent has already put it
in its own network namespace where it could (the third argument says what holds). Two of
TensorFlow's ways of running code that nothing calls are turned off: grappler's implementation
selector (which swaps a called function for one with the same ``api_implements``), and TensorFlow
1's default local init op (the initializers of ``local_variables``, which its loader runs when the
model has no init op of its own; lookup tables are still initialized). Requests:

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

import contextlib
import glob
import json
import logging
import os
import signal
import stat
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

_NO_INLINE_ATTRS = ("_noinline", "_XlaMustCompile")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
INSTALL_HINT = "pip install 'dense2conv[tf]'"


class RequestError(Exception):
    """A request that cannot be served: its message is the one line the user sees."""


def main(argv: list[str]) -> int:
    """Confine ourselves, say how, then serve requests until stdin closes. Ctrl-C is the parent's to handle: it stops us.

    Args:
        argv: the reply file descriptor, the private folder we may write in, and what the parent
            says of our network ("its own network namespace ..." or why not).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handlers: dict[str, Callable[[dict], dict]] = {"export": _export, "convert": _convert, "run": _run}
    writes = confine_writes(Path(argv[1]))
    sys.stderr.write(f"dense2conv's TensorFlow worker: network {argv[2]}; writes {writes}\n")  # seen with -v
    sys.stderr.flush()
    with open(int(argv[0]), "w", encoding="utf-8") as replies:
        replies.write(json.dumps({"writes": writes}) + "\n")
        replies.flush()
        for line in sys.stdin:
            request = json.loads(line)
            try:
                reply = handlers[request["op"]](request)
            except RequestError as e:
                traceback.print_exc()  # seen with -v; in the log file otherwise
                reply = {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - TensorFlow raises anything; the parent shows one line
                traceback.print_exc()
                reply = {"error": f"{request.get('shown_as', 'TensorFlow')}: TensorFlow failed ({_first_line(e)})"}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    return 0


# Landlock's rights that create, change, rename or remove files (ABI 1), and those later ABIs add.
_WRITE_RIGHTS_V1 = tuple(
    "WRITE_FILE REMOVE_DIR REMOVE_FILE MAKE_CHAR MAKE_DIR MAKE_REG MAKE_SOCK MAKE_FIFO MAKE_BLOCK MAKE_SYM".split()
)
_WRITE_RIGHTS_LATER = {2: ("REFER",), 3: ("TRUNCATE",)}
_FILE_WRITE_RIGHTS = ("WRITE_FILE", "TRUNCATE")  # what a single file (not a folder) can be granted
# Devices opened for writing that are not files: the null device, and NVIDIA's GPU devices (CUDA opens them read-write).
_WRITABLE_DEVICES = ("/dev/null", "/dev/nvidia*")


def confine_writes(folder: Path) -> str:
    """From now on, let this process (and any child) create, change or delete files only below ``folder``.

    Linux's Landlock does it, through the ``landlock`` package: a ruleset that handles every right
    that writes, and grants them below ``folder`` only (plus writing ``/dev/null`` and GPU device
    files). Reading, executing and the network are not restricted by it. Returns what holds, in
    words: where Landlock is missing (another OS, an older kernel, a kernel built or booted without
    it, the package not installed), nothing is confined and the phrase says why.

    Args:
        folder: the only folder we may write in.
    """
    if not sys.platform.startswith("linux"):
        return f"not confined: Landlock is Linux's, this is {sys.platform}"
    try:
        import landlock
    except ImportError:
        return "not confined: the landlock package is not installed"
    try:
        abi = landlock.landlock_abi_version()
        names = list(_WRITE_RIGHTS_V1) + [n for version, more in _WRITE_RIGHTS_LATER.items() if abi >= version for n in more]
        rights = _flags(landlock.FSAccess, names)
        ruleset = landlock.Ruleset(restrict_rules=rights)
        ruleset.allow(str(folder), rules=rights)
        file_rights = _flags(landlock.FSAccess, [n for n in _FILE_WRITE_RIGHTS if n in names])
        for pattern in _WRITABLE_DEVICES:
            for device in glob.glob(pattern):
                if stat.S_ISCHR(os.stat(device).st_mode):
                    ruleset.allow(device, rules=file_rights)
        ruleset.apply()
    except (OSError, landlock.LandlockError) as e:
        return f"not confined: Landlock is not available here ({_first_line(e)})"
    return f"confined to its temporary folder (Landlock ABI {abi})"


def _flags(kind: type, names: list[str]):
    """The union of the named flags of an IntFlag type."""
    value = kind(0)
    for name in names:
        value |= getattr(kind, name)
    return value


def _tensorflow(shown_as: str):
    """TensorFlow, or the one line that says which extra to install."""
    try:
        import tensorflow as tf
        import tf2onnx  # noqa: F401 - checked here so that a missing tf2onnx gets the same hint
    except ImportError as e:
        raise RequestError(
            f"{shown_as}: SavedModel and Keras input need TensorFlow and tf2onnx ({_first_line(e)}): {INSTALL_HINT}"
        ) from e
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # its errors become ours, as one line
    # Grappler's implementation selector would run a function nothing calls in place of one that is
    # called (same api_implements, another preferred device). The audit has checked every function;
    # this keeps what runs what was called (a call's own config_proto attribute can still turn it on).
    tf.config.optimizer.set_experimental_options({"implementation_selector": False})
    return tf


@contextlib.contextmanager
def _without_local_init(tf) -> Iterator[None]:
    """Load TensorFlow 1 SavedModels without running the initializers of ``local_variables``.

    TensorFlow's loader (load_v1_in_v2) runs the model's init op or, when it has none,
    ``Scaffold.default_local_init_op()``: the local variables' initializers, lookup table
    initializers and local resources. Inside this block that default initializes lookup tables
    only. A model whose signature reads a local variable then fails in one line, as a model whose
    initializers the audit refused would. If TensorFlow ever moves that function, nothing changes
    here (the audit has checked those initializers anyway).
    """
    try:
        from tensorflow.python.training import monitored_session
    except ImportError:
        yield
        return
    scaffold = monitored_session.Scaffold
    original = scaffold.__dict__.get("default_local_init_op")
    if original is None:
        yield
        return
    scaffold.default_local_init_op = staticmethod(lambda: tf.group(tf.compat.v1.tables_initializer()))
    try:
        yield
    finally:
        scaffold.default_local_init_op = original


def _export(request: dict) -> dict:
    _tensorflow(request["shown_as"])
    import keras

    path = Path(request["path"])
    try:
        # .keras: safe mode refuses to deserialize code; .h5 has no safe mode (the caller opted in).
        model = keras.saving.load_model(path, safe_mode=path.suffix == ".keras", compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for unreadable files
        raise RequestError(f"{request['shown_as']}: cannot load the Keras model ({_first_line(e)})") from e
    model.export(request["target"], verbose=False)
    return {}


def _convert(request: dict) -> dict:
    tf = _tensorflow(request["shown_as"])
    import tf2onnx
    from tf2onnx import tf_loader

    shown_as, signature = request["shown_as"], request["signature"]
    try:
        with _without_local_init(tf):
            graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
                request["saved_model"], None, None, request["tag"], [signature], return_tensors_to_rename=True
            )
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many types for unreadable SavedModels
        raise RequestError(f"{shown_as}: cannot load the SavedModel signature {signature!r} ({_first_line(e)})") from e
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
        raise RequestError(f"{shown_as}: tf2onnx could not convert the model ({_first_line(e)})") from e
    unknown = sorted({n.op_type for n in _all_nodes(model.graph) if not _known_op(n, model)})
    if unknown:
        raise RequestError(f"{shown_as}: TensorFlow ops that could not be converted to ONNX: {', '.join(unknown)}")
    Path(request["output"]).write_bytes(model.SerializeToString())
    return {}


_loaded: dict[tuple[str, str], object] = {}  # SavedModels already loaded by `run`, by (folder, tag)


def _run(request: dict) -> dict:
    tf = _tensorflow(request["shown_as"])
    key = (request["saved_model"], request["tag"])
    if key not in _loaded:
        with _without_local_init(tf):
            _loaded[key] = tf.saved_model.load(request["saved_model"], tags=[request["tag"]])
    fn = _loaded[key].signatures[request["signature"]]  # type: ignore[attr-defined]
    with np.load(request["feeds"], allow_pickle=False) as data:
        feeds = {name: tf.constant(data[f"arr_{i}"]) for i, name in enumerate(request["names"])}
    try:
        outputs = {k: _plain_array(v.numpy()) for k, v in fn(**feeds).items()}
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many types for inputs a model cannot take
        raise RequestError(
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


def _erfc(ctx: Any, node: Any, name: str, args: list) -> None:
    """tf2onnx custom handler: Erfc(x) = 1 - Erf(x) (``ctx`` is tf2onnx's Graph, ``node`` its Node)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    sub = utils.make_name(f"{name}_erfc")
    ctx.insert_new_node_on_output("Sub", node.output[0], name=sub, inputs=[one.output[0], node.output[0]])


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
