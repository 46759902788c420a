"""SavedModels that reach outside TensorFlow when loaded or called: each writes, reads or calls something.

Every builder takes the folder to save into and the path of a file the model touches (``target``),
and returns the SavedModel's folder. Building may itself touch ``target`` (TensorFlow initializes
a table when it is created), so callers create it first and delete it afterwards. The second group
(``HIDDEN``) hides what it does where a walk from what looks reachable does not go: a TensorFlow 1
local variable's initializer, a function only ``api_implements`` names, a checkpoint read from a
path a constant gives. Run as a script to build them all:

    python -m tests.frontends.hostile OUT_FOLDER
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

SPEC = [tf.TensorSpec([1, 2, 2, 1], tf.float32)]


def _save(module: tf.Module, folder: Path) -> Path:
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.__call__})
    return folder


def dense(folder: Path) -> Path:
    """A harmless tf.Module to compare with: a dense layer (variable weights) on a 4D tensor."""

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            self.w = tf.Variable(rng.standard_normal((1, 6)).astype(np.float32))
            self.b = tf.Variable(rng.standard_normal(6).astype(np.float32))

        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            return {"y": tf.matmul(x, self.w) + self.b}

    return _save(Module(), folder)


def initializer_writes(folder: Path, target: Path) -> Path:
    """A lookup table whose initializer also writes ``target``: tf.saved_model.load runs it."""

    class Initializer(tf.lookup.KeyValueTensorInitializer):
        def initialize(self, table):
            with tf.control_dependencies([tf.io.write_file(str(target), "written on load")]):
                return super().initialize(table)

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.lookup.StaticHashTable(Initializer(tf.constant([1]), tf.constant([2.0])), -1.0)

        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            return {"y": x * 2.0}

    return _save(Module(), folder)


def signature_writes(folder: Path, target: Path) -> Path:
    """The signature writes ``target`` whenever it is called."""

    class Module(tf.Module):
        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            tf.io.write_file(str(target), "written by the signature")
            return {"y": x * 2.0}

    return _save(Module(), folder)


def initializer_reads(folder: Path, target: Path) -> Path:
    """A lookup table filled on load from ``target`` (outside the model's folder); a missing file stops the load."""

    class Initializer(tf.lookup.KeyValueTensorInitializer):
        def initialize(self, table):
            size = tf.cast(tf.strings.length(tf.io.read_file(str(target))), tf.float32)
            return tf.raw_ops.LookupTableImportV2(table_handle=table.resource_handle, keys=[0], values=[size])

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.lookup.StaticHashTable(Initializer(tf.constant([0]), tf.constant([0.0])), -1.0)

        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            return {"y": x * 2.0}

    return _save(Module(), folder)


def signature_prints_to_file(folder: Path, target: Path) -> Path:
    """tf.print to a file: PrintV2 appends to ``target`` whenever the signature runs."""

    class Module(tf.Module):
        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            tf.print("printed by the signature", output_stream=f"file://{target}")
            return {"y": x * 2.0}

    return _save(Module(), folder)


def signature_calls_python(folder: Path, target: Path) -> Path:
    """tf.py_function: the SavedModel keeps an EagerPyFunc op whose Python body is not saved."""

    def touch(x):
        Path(target).write_text("written by Python")
        return x

    class Module(tf.Module):
        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            with tf.control_dependencies([tf.py_function(touch, [x], tf.float32)]):
                return {"y": x * 2.0}

    return _save(Module(), folder)


def tf1_dense(folder: Path, side_effect: Callable[[], tf.Tensor] | None = None) -> Path:
    """A TensorFlow 1 SavedModel (Builder, no init op, its saver): ``y = x @ w``; with ``side_effect``, also a local
    variable whose initial value depends on it. The loader runs local variables' initializers when a model has no
    init op."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 2, 2, 1], name="x")
        w = v1.get_variable("w", initializer=np.arange(6, dtype=np.float32).reshape(1, 6), use_resource=True)
        y = tf.identity(tf.matmul(x, w), name="y")
        if side_effect is not None:
            local = [v1.GraphKeys.LOCAL_VARIABLES]
            v1.get_variable("counter", initializer=side_effect(), trainable=False, collections=local, use_resource=True)
        with v1.Session(graph=graph) as session:
            session.run(w.initializer)
            builder = v1.saved_model.Builder(str(folder))
            signature = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
            builder.save()
    return folder


def tf1_local_variable_writes(folder: Path, target: Path) -> Path:
    """TensorFlow 1: a local variable whose initializer writes ``target`` (nothing in the signature depends on it)."""

    def write() -> tf.Tensor:
        with tf.control_dependencies([tf.io.write_file(str(target), "written by a local variable's initializer")]):
            return tf.zeros([])

    return tf1_dense(folder, write)


def tf1_local_variable_reads(folder: Path, target: Path) -> Path:
    """TensorFlow 1: a local variable initialized to the length of ``target``'s contents."""
    return tf1_dense(folder, lambda: tf.cast(tf.strings.length(tf.io.read_file(str(target))), tf.float32))


def _add_to_library(folder: Path, function: tf.types.experimental.PolymorphicFunction) -> None:
    """Put a function into the SavedModel's library that nothing calls or names (only its attributes describe it)."""
    path = folder / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    saved.meta_graphs[0].graph_def.library.function.append(function.get_concrete_function().function_def)
    path.write_bytes(saved.SerializeToString())


def _implementations(name: str, side_effect: Callable[[tf.Tensor], tf.Tensor], spec: tf.TensorSpec):
    """Two functions implementing ``name``: the one to call (preferred on a GPU), and one with ``side_effect``
    (preferred on a CPU) that grappler's implementation selector puts in its place on a machine without a GPU."""
    called = tf.function(
        lambda v: v * 2.0, input_signature=[spec], experimental_attributes={"api_implements": name, "api_preferred_device": "GPU"}
    )
    swapped = tf.function(
        side_effect, input_signature=[spec], experimental_attributes={"api_implements": name, "api_preferred_device": "CPU"}
    )
    return called, swapped  # traced only once the model is saved: building does not run it


def implements_swap_writes(folder: Path, target: Path) -> Path:
    """The signature calls a function; an uncalled one with the same api_implements writes ``target``."""

    def write(v: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies([tf.io.write_file(str(target), "swapped in by grappler")]):
            return tf.identity(v * 2.0)

    called, swapped = _implementations("double", write, SPEC[0])

    class Module(tf.Module):
        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            return {"y": called(x) + 1.0}

    _add_to_library(_save(Module(), folder), swapped)
    return folder


def implements_swap_reads_on_load(folder: Path, target: Path) -> Path:
    """A lookup table's initializer (run on load) calls a function; an uncalled one with the same
    api_implements reads ``target``."""
    spec = tf.TensorSpec([1], tf.float32)
    called, swapped = _implementations(
        "scale", lambda v: v * 2.0 + tf.cast(tf.strings.length(tf.io.read_file(str(target))), tf.float32), spec
    )

    class Initializer(tf.lookup.KeyValueTensorInitializer):
        def initialize(self, table):
            keys = tf.constant([1], tf.int64)
            return tf.raw_ops.LookupTableImportV2(table_handle=table.resource_handle, keys=keys, values=called(tf.constant([3.0])))

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.lookup.StaticHashTable(Initializer(tf.constant([1], tf.int64), tf.constant([0.0])), -1.0)

        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            return {"y": x * 2.0}

    _add_to_library(_save(Module(), folder), swapped)
    return folder


def write_checkpoint(prefix: Path | str, values: np.ndarray) -> None:
    """A checkpoint at ``prefix`` (``prefix.index`` and its data file) holding one tensor named ``w``."""
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=["w"], shape_and_slices=[""], tensors=[tf.constant(values)])


def restore_from_constant(folder: Path, prefix: str) -> Path:
    """The signature multiplies by a tensor that RestoreV2 reads from ``prefix``, a constant (a path anywhere, a URL)."""

    class Module(tf.Module):
        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            (w,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=["w"], shape_and_slices=[""], dtypes=[tf.float32])
            return {"y": x * w}

    return _save(Module(), folder)


def restore_through_argument(folder: Path, prefix: str) -> Path:
    """As restore_from_constant, but the prefix reaches RestoreV2 as a function's argument, which the signature
    feeds with the constant."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def restore(path):
        (w,) = tf.raw_ops.RestoreV2(prefix=path, tensor_names=["w"], shape_and_slices=[""], dtypes=[tf.float32])
        return w

    class Module(tf.Module):
        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            return {"y": x * restore(tf.constant(prefix))}

    return _save(Module(), folder)


def merge_at(folder: Path, prefix: str) -> Path:
    """The signature merges checkpoints at ``prefix`` (MergeV2Checkpoints reads, writes and deletes there) whenever it runs."""

    class Module(tf.Module):
        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[prefix], destination_prefix=prefix + "_merged")
            return {"y": x * 2.0}

    return _save(Module(), folder)


def endless_on_load(folder: Path) -> Path:
    """A lookup table whose initializer counts to a limit restored from the checkpoint: 0 while building, infinity
    once loaded, so loading the model (to convert it, too) never ends."""

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.limit = tf.Variable(0.0)
            limit = self.limit

            class Initializer(tf.lookup.KeyValueTensorInitializer):
                def initialize(self, table):
                    n = tf.while_loop(lambda i: i < limit, lambda i: i + 1.0, [tf.constant(0.0)])
                    keys = tf.constant([1], tf.int64)
                    return tf.raw_ops.LookupTableImportV2(table_handle=table.resource_handle, keys=keys, values=tf.reshape(n, [1]))

            self.table = tf.lookup.StaticHashTable(Initializer(tf.constant([1], tf.int64), tf.constant([0.0])), -1.0)

        @tf.function(input_signature=SPEC)
        def __call__(self, x):
            return {"y": x * 2.0}

    module = Module()
    module.limit.assign(float("inf"))
    return _save(module, folder)


HOSTILE: dict[str, Callable[[Path, Path], Path]] = {
    "initializer_writes": initializer_writes,
    "signature_writes": signature_writes,
    "initializer_reads": initializer_reads,
    "signature_prints_to_file": signature_prints_to_file,
    "signature_calls_python": signature_calls_python,
}


# Hidden where a walk from what looks reachable does not go: each builder takes (folder, target).
HIDDEN: dict[str, Callable[[Path, Path], Path]] = {
    "tf1_local_variable_writes": tf1_local_variable_writes,
    "tf1_local_variable_reads": tf1_local_variable_reads,
    "implements_swap_writes": implements_swap_writes,
    "implements_swap_reads_on_load": implements_swap_reads_on_load,
}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name, build in {**HOSTILE, **HIDDEN}.items():
        target = out / f"{name}.target"
        target.write_text("")
        build(out / name, target)
        target.unlink()
        print(out / name)
