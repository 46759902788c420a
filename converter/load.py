"""Reading ONNX models from disk: every failure becomes one clear InputError line."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import InputError


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load and check an ONNX model file (with its external data, if any)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; this version reads ONNX files only")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    try:
        model = onnx.load(str(p))
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable ONNX model ({_first_line(e)})") from e
    check_model(model, str(p))
    return model


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    # protobuf parses many byte strings (an empty one included) into a model without a graph.
    if not model.HasField("graph") or not model.graph.output:
        raise InputError(f"{where}: not an ONNX model (it has no graph with outputs)")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        raise InputError(f"{where}: invalid ONNX model ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
