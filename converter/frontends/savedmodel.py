"""TensorFlow input: SavedModel folders and Keras ``.keras`` files, converted in-process by tf2onnx.

The only module that imports TensorFlow, Keras or tf2onnx, and only when a TensorFlow input
arrives (``convert model.onnx`` never pays for it). Two things tf2onnx 1.17 cannot do alone,
both needed for Keras 3's ConvNeXt:

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
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from converter.errors import InputError

_NO_INLINE_ATTRS = ("_noinline", "_XlaMustCompile")
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


@dataclass
class TensorFlowSource:
    """Where a converted model came from, for running TensorFlow itself during verification."""

    saved_model: Path
    signature: str
    tag: str
    model: onnx.ModelProto
    native_logs: bool = False
    warnings: list[str] = field(default_factory=list)


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ logging reads this once, at import; only set it when the user has not.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the duration.

    TensorFlow 2.21 logs from C++ (absl) at import and on first use, whatever TF_CPP_MIN_LOG_LEVEL
    says; a user asked for one clear line. Python's own stderr object is flushed around it.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def open_tensorflow(
    path: str | os.PathLike[str],
    *,
    signature: str = "serving_default",
    tag: str = "serve",
    opset: int = 17,
    native_logs: bool = False,
    allow_h5: bool = False,
    trust_model: bool = False,
) -> Iterator[TensorFlowSource]:
    """Convert a SavedModel folder or ``.keras`` file; the SavedModel stays available inside the block.

    TensorFlow's native logging is silenced unless ``native_logs``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    warnings = []
    if p.suffix == ".h5":
        if not allow_h5:
            raise InputError(
                f"{p}: legacy .h5 Keras files run their Lambda layers' code when loaded; "
                "pass --allow-h5 if you trust it, or export a .keras file or a SavedModel"
            )
        warnings.append(f"{p}: loaded a legacy .h5 file with --allow-h5: any Lambda layer code in it has run")
    if p.is_dir() and not (p / "saved_model.pb").is_file() and not (p / "saved_model.pbtxt").is_file():
        raise InputError(f"{p}: not a SavedModel folder (no saved_model.pb)")
    _quiet_tensorflow()
    with tempfile.TemporaryDirectory(prefix="converter-keras-") as tmp:
        with native_stderr_silenced(not native_logs):
            saved = _export_keras(p, Path(tmp)) if p.suffix in (".keras", ".h5") else p
            model = _convert(saved, signature, tag, opset, shown_as=p)
        yield TensorFlowSource(saved, signature, tag, model, native_logs, warnings)


def load_tensorflow(path: str | os.PathLike[str], **options: object) -> onnx.ModelProto:
    """The tf2onnx ONNX model of a SavedModel folder or ``.keras`` file (before any rewrite)."""
    with open_tensorflow(path, **options) as source:  # type: ignore[arg-type]
        return source.model


def _export_keras(path: Path, folder: Path) -> Path:
    import keras

    try:
        # .keras: safe mode refuses to deserialize code; .h5 has no safe mode (the caller opted in).
        model = keras.saving.load_model(path, safe_mode=path.suffix == ".keras", compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for unreadable files
        raise InputError(f"{path}: cannot load the Keras model ({_first_line(e)})") from e
    target = folder / "saved_model"
    model.export(str(target), verbose=False)
    return target


def _convert(saved: Path, signature: str, tag: str, opset: int, shown_as: Path) -> onnx.ModelProto:
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import tf_loader

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # its errors become ours, as one line
    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(saved), None, None, tag, [signature], return_tensors_to_rename=True
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
            opset=opset,
            tensors_to_rename=renames,
            custom_op_handlers={"Erfc": (_erfc, [])},
        )
    except Exception as e:  # noqa: BLE001 - tf2onnx raises many types
        raise InputError(f"{shown_as}: tf2onnx could not convert the model ({_first_line(e)})") from e
    unknown = sorted({n.op_type for n in _all_nodes(model.graph) if not _known_op(n, model)})
    if unknown:
        raise InputError(f"{shown_as}: TensorFlow ops that could not be converted to ONNX: {', '.join(unknown)}")
    return model


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
    from converter.graph import iter_graphs

    for _, g in iter_graphs(graph):
        yield from g.node


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


def run_tensorflow(source: TensorFlowSource, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the SavedModel's signature on ``feeds`` (keyed by ONNX input names, the signature's names)."""
    import tensorflow as tf

    with native_stderr_silenced(not source.native_logs):
        loaded = tf.saved_model.load(str(source.saved_model), tags=[source.tag])
        fn = loaded.signatures[source.signature]
        outputs = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        return {k: v.numpy() for k, v in outputs.items()}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
