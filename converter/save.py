"""Writing models: atomically, so a crash never leaves a partial file or loses the previous one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx

from .errors import InputError

# protobuf cannot serialize a message of 2 GiB or more.
_PROTOBUF_LIMIT = 2**31 - 1


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    target = Path(path)
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        raise InputError(f"{target}: the result is over 2 GB; saving with external data is not supported yet")
    data = model.SerializeToString()
    write_atomic(target, data)
    return target


def write_atomic(target: Path, data: bytes) -> None:
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{target}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
