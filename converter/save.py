"""Writing models atomically, with external data once they outgrow protobuf's 2 GB limit.

Every file is written to a temporary name in the target folder and renamed into place, so a crash
or Ctrl-C never leaves a partial file and never damages a previous output. The data file of a
large model is always written whole and fresh (never appended to, unlike onnx's own saver), sits
beside the model file, and is referenced by a plain relative name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from .errors import InputError
from .graph import copy_model, weight_bytes

# protobuf cannot serialize a message of 2 GiB or more; leave room for everything but the weights.
EXTERNAL_DATA_ABOVE = 2**31 - 2**27
_ALIGN = 4096  # data offsets are page-aligned so runtimes can memory-map them
_DATA_FIELDS = frozenset(
    {
        "raw_data",
        "float_data",
        "int32_data",
        "int64_data",
        "double_data",
        "uint64_data",
        "string_data",
        "data_location",
        "external_data",
    }
)


def save(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    size_threshold: int = 1024,
) -> list[Path]:
    """Write ``model`` to ``path``; returns the files written (the model, then its data file if any).

    ``external_data`` None decides by size: models whose weights approach 2 GB get a
    ``<name>.data`` file beside them, holding every tensor over ``size_threshold`` bytes.
    The model passed in is not modified.
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"{target}: folder {folder} does not exist")
    if external_data is None:
        external_data = weight_bytes(model) >= EXTERNAL_DATA_ABOVE
    if not external_data:
        write_atomic(target, model.SerializeToString())
        return [target]
    data_path = target.with_name(target.name + ".data")
    with _temporary(data_path) as (data_file, data_tmp):
        offset = 0

        def to_file(tensor: onnx.TensorProto, graph: onnx.GraphProto) -> None:
            nonlocal offset
            into = graph.initializer.add()
            for field, value in tensor.ListFields():
                if field.name in _DATA_FIELDS:
                    continue
                if field.is_repeated:
                    getattr(into, field.name).extend(value)
                else:
                    setattr(into, field.name, value)
            data = onnx.numpy_helper.to_array(tensor).tobytes() if not tensor.HasField("raw_data") else tensor.raw_data
            pad = -offset % _ALIGN
            data_file.write(b"\0" * pad)
            offset += pad
            data_file.write(data)
            into.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                into.external_data.add(key=key, value=value)
            offset += len(data)

        small = copy_model(model, to_file, size_threshold)
        data_file.flush()
        os.fsync(data_file.fileno())
        write_atomic(target, small.SerializeToString(), then_replace=(data_tmp, data_path))
    return [target, data_path]


def write_atomic(target: Path, data: bytes, then_replace: tuple[Path, Path] | None = None) -> None:
    """Write ``data`` to ``target`` via a temporary file; ``then_replace`` renames a finished companion
    file (the model's data) into place just before the model itself."""
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{target}: folder {folder} does not exist")
    with _temporary(target) as (f, tmp):
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        if then_replace is not None:
            os.replace(*then_replace)
        os.replace(tmp, target)


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temporary file beside ``target``; removed again unless the caller renamed it."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    # mkstemp makes the file private (0600); a model file gets the permissions any new file would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
