"""Reading ONNX models from disk: every failure becomes one clear InputError line.

External data is read by us, not by onnx.load: model files come from anywhere, and a tensor's
``location`` must not reach outside the model's folder. An absolute path, ``..``, a symlink that
resolves elsewhere, or a hard link (onnxruntime 1.32 still follows hard links to files elsewhere)
is refused, as is data that is missing or too short for its tensor. This covers every tensor that
can carry external data, sparse tensors' values and indices included (onnx.load checks none of those).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto

from . import wire
from .errors import InputError
from .graph import iter_graphs, skeleton, tensor_nbytes


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load and check an ONNX model file (with its external data, if any)."""
    return load_with_sources(path)[0]


def load_with_sources(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, list[Path]]:
    """The model and every file it was read from (the model file, then its external data files)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an ONNX file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    fmt = onnx.serialization.registry.get_format_from_file_extension(p.suffix) or "protobuf"
    try:
        data = p.read_bytes()
        model = onnx.load_model_from_string(data, format=fmt)
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable ONNX model ({_message(e)})") from e
    if not model.HasField("graph") or not model.graph.output:
        raise InputError(f"{p}: not an ONNX model (it has no graph with outputs)")
    raw_sizes = _raw_sizes(data, model) if fmt == "protobuf" else None
    del data
    data_files = _load_external_data(model, p)
    check_model(model, str(p), raw_sizes)
    return model, [p, *data_files]


def check_model(model: onnx.ModelProto, where: str = "model", raw_sizes: list[int | None] | None = None) -> None:
    """Refuse a model onnx's checker refuses, or whose tensors hold less or more data than their dims say.

    ``raw_sizes`` are the main graph's raw_data lengths as the file has them (see ``_raw_sizes``).
    """
    # protobuf parses many byte strings (an empty one included) into a model without a graph.
    if not model.HasField("graph") or not model.graph.output:
        raise InputError(f"{where}: not an ONNX model (it has no graph with outputs)")
    known = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > known:
            raise InputError(f"{where}: opset {opset.version} is newer than this onnx ({onnx.__version__}) knows ({known})")
    try:
        onnx.checker.check_model(skeleton(model))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        raise InputError(f"{where}: invalid ONNX model ({_message(e)})") from e
    _check_tensor_sizes(model, where, raw_sizes)


def _check_tensor_sizes(model: onnx.ModelProto, where: str, raw_sizes: list[int | None] | None) -> None:
    """The checker runs on a skeleton without weight bytes, so check here that raw data fits its dims."""
    for path, graph in iter_graphs(model.graph):
        known = raw_sizes if not path and raw_sizes is not None and len(raw_sizes) == len(graph.initializer) else None
        for i, t in enumerate(graph.initializer):
            if not t.HasField("raw_data") or t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
                continue
            if known is not None and known[i] is None:
                continue  # its data came from an external file, whose length was checked as it was read
            try:
                bits = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
            except (KeyError, TypeError):
                continue
            if t.data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1):
                bits = 4
            expected = (math.prod(t.dims) * bits + 7) // 8
            size = known[i] if known is not None else len(t.raw_data)
            if size != expected:
                raise InputError(
                    f"{where}: invalid ONNX model (tensor {t.name!r} of shape {list(t.dims)} "
                    f"holds {size} bytes, expected {expected})"
                )


def _raw_sizes(data: bytes, model: onnx.ModelProto) -> list[int | None] | None:
    """The main graph's raw_data lengths read from the file's bytes, when a large weight makes that worth it.

    Asking the parsed model would copy each tensor's data (upb copies even for ``len``); walking
    the bytes costs a little per node, so graphs of only small tensors skip it.
    """
    if not any(tensor_nbytes(t) > _WALK_ABOVE for t in model.graph.initializer):
        return None
    try:
        return wire.initializer_raw_sizes(data)
    except (ValueError, IndexError):
        return None


_WALK_ABOVE = 1 << 16


def _tensors_in_attribute(attr: AttributeProto) -> Iterator[TensorProto]:
    if attr.type == AttributeProto.TENSOR:
        yield attr.t
    elif attr.type == AttributeProto.TENSORS:
        yield from attr.tensors
    elif attr.type == AttributeProto.SPARSE_TENSOR:
        yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
    elif attr.type == AttributeProto.SPARSE_TENSORS:
        for s in attr.sparse_tensors:
            yield from (s.values, s.indices)


def all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto that can hold data: initializers, sparse initializers, node attributes, functions."""
    for _, graph in iter_graphs(model.graph):
        yield from graph.initializer
        for s in graph.sparse_initializer:
            yield from (s.values, s.indices)
        for node in graph.node:
            for attr in node.attribute:
                yield from _tensors_in_attribute(attr)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                yield from _tensors_in_attribute(attr)


def _load_external_data(model: onnx.ModelProto, path: Path) -> list[Path]:
    folder = path.parent.resolve()
    files: list[Path] = []
    for t in all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        where = f"{path}: tensor {t.name!r}"
        location = info.get("location", "")
        target = _safe_location(location, folder, where)
        try:
            offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
        except ValueError:
            raise InputError(f"{where}: external data offset/length are not integers") from None
        expected = tensor_nbytes(t)
        if length is not None and length != expected:
            raise InputError(f"{where}: external data length {length} does not match its shape ({expected} bytes)")
        t.raw_data = _read(target, offset, expected, where)
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
        if target not in files:
            files.append(target)
    return files


def _safe_location(location: str, folder: Path, where: str) -> Path:
    if not location:
        raise InputError(f"{where}: external data without a location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise InputError(f"{where}: external data location {location!r} is absolute; it must be inside the model's folder")
    if ".." in Path(location.replace("\\", "/")).parts:
        raise InputError(f"{where}: external data location {location!r} leaves the model's folder")
    target = folder / location
    resolved = target.resolve()
    if not resolved.is_relative_to(folder):
        raise InputError(f"{where}: external data location {location!r} leads outside the model's folder (a symlink)")
    return resolved


def _read(target: Path, offset: int, length: int, where: str) -> bytes:
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise InputError(f"{where}: external data file {target.name!r} is missing") from None
    except OSError as e:
        raise InputError(f"{where}: cannot open external data file {target.name!r} ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: external data {target.name!r} is not a regular file")
        if st.st_nlink > 1:
            raise InputError(f"{where}: external data file {target.name!r} is a hard link; refusing to read through it")
        if offset < 0 or offset + length > st.st_size:
            raise InputError(
                f"{where}: external data file {target.name!r} is too short ({st.st_size} bytes; "
                f"the tensor needs {length} bytes at offset {offset})"
            )
        os.lseek(fd, offset, os.SEEK_SET)
        chunks, left = [], length
        while left:
            chunk = os.read(fd, min(left, 1 << 26))
            if not chunk:
                raise InputError(f"{where}: external data file {target.name!r} ended early")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _message(e: BaseException) -> str:
    """The library's message on one line, trimmed (onnx's checker spreads one error over several lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
