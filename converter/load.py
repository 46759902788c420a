"""Reading ONNX models from disk: every failure becomes one clear InputError line."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from .errors import InputError
from .graph import iter_graphs, skeleton


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
        onnx.checker.check_model(skeleton(model))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        raise InputError(f"{where}: invalid ONNX model ({_first_line(e)})") from e
    _check_tensor_sizes(model, where)


def _check_tensor_sizes(model: onnx.ModelProto, where: str) -> None:
    """The checker runs on a skeleton without weight bytes, so check here that raw data fits its dims."""
    for _, graph in iter_graphs(model.graph):
        for t in graph.initializer:
            if not t.HasField("raw_data") or t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
                continue
            try:
                bits = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
            except (KeyError, TypeError):
                continue
            if t.data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1):
                bits = 4
            expected = (math.prod(t.dims) * bits + 7) // 8
            if len(t.raw_data) != expected:
                raise InputError(
                    f"{where}: invalid ONNX model (tensor {t.name!r} of shape {list(t.dims)} holds "
                    f"{len(t.raw_data)} bytes, expected {expected})"
                )


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
