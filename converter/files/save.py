"""Writing models atomically, with external data once they outgrow protobuf's 2 GB limit.

Every file is written to a temporary name in the target folder and renamed into place, so a crash
or Ctrl-C never leaves a partial file and never damages a previous output. The data file of a
large model is always written whole and fresh (never appended to, unlike onnx's own saver), sits
beside the model file, and is referenced by a plain relative name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from converter.errors import InputError
from converter.files.paths import TEMP_SUFFIX, check_target, temporary_prefix
from converter.graph import copy_model, weight_bytes, wire
from converter.graph.detached import DetachedWeights

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
    detached: DetachedWeights | None = None,
) -> list[Path]:
    """Write ``model`` to ``path``; returns the files written (the model, then its data file if any).

    ``external_data`` None decides by size: models whose weights approach 2 GB get a
    ``<name>.data`` file beside them, holding every tensor over ``size_threshold`` bytes.
    ``detached`` holds the data of the model's placeholder weights (see detached.py); they are
    written from their arrays, where they sit, never copied into the model. The model passed in
    is not modified.
    """
    target = check_target(path)
    if external_data is None:
        external_data = weight_bytes(model) >= EXTERNAL_DATA_ABOVE
    if not external_data:
        write_atomic(target, _serialized(model, detached))
        return [target]
    data_path = check_target(target.with_name(target.name + ".data"), "output's data file")
    with _write_errors(data_path), _temporary(data_path) as (data_file, data_tmp):
        offset = 0

        def write_data(into: onnx.TensorProto, data: bytes | memoryview) -> None:
            nonlocal offset
            pad = -offset % _ALIGN
            data_file.write(b"\0" * pad)
            offset += pad
            data_file.write(data)
            into.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                into.external_data.add(key=key, value=value)
            offset += len(data)

        def to_file(tensor: onnx.TensorProto, graph: onnx.GraphProto) -> None:
            into = graph.initializer.add()
            for field, value in tensor.ListFields():
                if field.name in _DATA_FIELDS:
                    continue
                if field.is_repeated:
                    getattr(into, field.name).extend(value)
                else:
                    setattr(into, field.name, value)
            data = onnx.numpy_helper.to_array(tensor).tobytes() if not tensor.HasField("raw_data") else tensor.raw_data
            write_data(into, data)

        small = copy_model(model, to_file, size_threshold)
        # Placeholders were copied as they are; their data goes from the arrays to the file.
        for t in small.graph.initializer if detached else ():
            if detached.is_placeholder(t):  # type: ignore[union-attr]
                data = detached.data(t.name)  # type: ignore[union-attr]
                del t.external_data[:]
                t.ClearField("data_location")
                if len(data) > size_threshold:
                    write_data(t, data)
                else:
                    t.raw_data = data.tobytes()
        data_file.flush()
        os.fsync(data_file.fileno())
        write_atomic(target, small.SerializeToString(), then_replace=(data_tmp, data_path))
    return [target, data_path]


_MODEL_GRAPH = wire.tag(wire.MODEL_GRAPH)
_GRAPH_INITIALIZER = wire.tag(wire.GRAPH_INITIALIZER)
_TENSOR_RAW_DATA = wire.tag(wire.TENSOR_RAW_DATA)


def _serialized(model: onnx.ModelProto, detached: DetachedWeights | None) -> Iterator[bytes | memoryview]:
    """The model's serialization as pieces, detached weights written from their arrays where they sit.

    The model is serialized with its placeholders (a few bytes each); then, walking the main graph's
    fields, the k-th initializer field is the k-th initializer, and each placeholder's field is
    replaced by the real tensor (its own fields around its data), the graph's length prefix
    rewritten. The result is byte for byte what serializing the attached model gives.
    """
    at = detached.placeholders(model.graph) if detached else []
    if not at:
        yield model.SerializeToString()
        return
    body = model.SerializeToString()
    graphs = [(first, start, end) for number, first, start, end in wire.spans(body, 0, len(body)) if number == wire.MODEL_GRAPH]
    if len(graphs) != 1:  # a graph written in pieces (merged when parsed): take the slow way
        yield from _attached(model, detached)  # type: ignore[arg-type]
        return
    g_first, g_start, g_end = graphs[0]
    wanted = set(at)
    replaced: list[tuple[int, int, bytes, bytes, str, int]] = []  # (field start, end, head, tail, name, size)
    index = 0
    for number, first, _, end in wire.spans(body, g_start, g_end):
        if number != wire.GRAPH_INITIALIZER:
            continue
        if index in wanted:
            t = model.graph.initializer[index]
            size = detached.nbytes(t.name)  # type: ignore[union-attr]
            before, after = DetachedWeights.around_data(t)
            entry_len = len(before) + len(_TENSOR_RAW_DATA) + len(wire.varint(size)) + size + len(after)
            head = _GRAPH_INITIALIZER + wire.varint(entry_len) + before + _TENSOR_RAW_DATA + wire.varint(size)
            replaced.append((first, end, head, after, t.name, size))
        index += 1
    if index != len(model.graph.initializer):
        yield from _attached(model, detached)  # type: ignore[arg-type]
        return
    graph_len = (
        g_end
        - g_start
        - sum(end - first for first, end, *_ in replaced)
        + sum(len(h) + n + len(a) for _, _, h, a, _, n in replaced)
    )
    view = memoryview(body)
    yield view[:g_first]
    yield _MODEL_GRAPH + wire.varint(graph_len)
    at_byte = g_start
    for first, end, head, after, name, size in replaced:  # each weight is made (if lazy) just before it is written
        yield view[at_byte:first]
        data = detached.data(name)  # type: ignore[union-attr]
        assert len(data) == size
        yield head
        yield data
        yield after
        del data
        at_byte = end
    yield view[at_byte:]


def _attached(model: onnx.ModelProto, detached: DetachedWeights) -> list[bytes | memoryview]:
    detached.attach(model)
    return [model.SerializeToString()]


def write_atomic(
    target: str | os.PathLike[str],
    data: bytes | Iterable[bytes | memoryview],
    then_replace: tuple[Path, Path] | None = None,
    what: str = "output",
) -> None:
    """Write ``data`` (bytes, or pieces of it) to ``target`` via a temporary file; ``then_replace`` renames a finished companion
    file (the model's data) into place just before the model itself.

    The target is checked first (paths.check_target); a failing write (disk full, file size limit, ...)
    is an InputError naming the target and the system's reason, and leaves no temporary file.
    """
    target = check_target(target, what)
    with _write_errors(target), _temporary(target) as (f, tmp):
        for piece in [data] if isinstance(data, bytes) else data:
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        # A signal between the two renames would pair the old model with the new data file.
        with _signals_held():
            if then_replace is not None:
                os.replace(*then_replace)
            os.replace(tmp, target)


@contextlib.contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise InputError(f"{target}: cannot write ({reason})") from e


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temporary file beside ``target``; removed again unless the caller renamed it.

    Signals are held while it is created, so that a Ctrl-C or SIGTERM arrives only once the
    ``finally`` below is sure to remove the file (cli.py turns both into exceptions).
    """
    tmp = None
    try:
        with _signals_held():
            fd, name = tempfile.mkstemp(prefix=temporary_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
            tmp = Path(name)
        # mkstemp makes the file private (0600); a model file gets the permissions any new file would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


_HELD = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Delay SIGINT, SIGTERM and SIGHUP across a few system calls that must not be split.

    Their handlers are swapped for one that only takes note, and a signal that came meanwhile is
    raised again once the real handlers are back. (Blocking with pthread_sigmask is not enough:
    it holds the signal for this thread only, and numpy's or onnxruntime's threads take it.)
    Python runs signal handlers in the main thread only, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    try:
        for s in _HELD:
            previous[s] = signal.signal(s, lambda signum, _frame: pending.append(signum))
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if pending:
            signal.raise_signal(pending[0])  # now its own handler runs (cli.py's raises, and cleanup follows)
