"""SavedModels that reach outside TensorFlow when loaded or called: each writes, reads or calls something.

Every builder takes the folder to save into and the path of a file the model touches (``target``),
and returns the SavedModel's folder. Building may itself touch ``target`` (TensorFlow initializes
a table when it is created), so callers create it first and delete it afterwards. Run as a script
to build them all:

    python -m tests.frontends.hostile OUT_FOLDER
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

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


HOSTILE: dict[str, Callable[[Path, Path], Path]] = {
    "initializer_writes": initializer_writes,
    "signature_writes": signature_writes,
    "initializer_reads": initializer_reads,
    "signature_prints_to_file": signature_prints_to_file,
    "signature_calls_python": signature_calls_python,
}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name, build in HOSTILE.items():
        target = out / f"{name}.target"
        target.write_text("")
        build(out / name, target)
        target.unlink()
        print(out / name)
