"""Writing models atomically, with external data once they outgrow protobuf's 2 GB limit.

Every file is written to a temporary name in the target folder and renamed into place, so a crash
or Ctrl-C never leaves a partial file and never damages a previous output. The data file of a
large model is always written whole and fresh (never appended to, unlike onnx's own saver), sits
beside the model file, and is referenced by a plain relative name.

What decides "large" is every tensor the file would hold, wherever it sits: initializers, sparse
initializers, a Constant's value and any other tensor attribute, in subgraphs and function bodies
(``inline_bytes``); counting initializers alone let a large Constant make a 2.4 GiB protobuf that
nothing can read. With external data, initializers and tensor attributes over the threshold go to
the data file (ONNX allows external data on any tensor; onnx.load, onnxruntime and our loader read
it), so a Constant stays a Constant. What must stay inline (sparse tensors, training graphs) and
would still pass protobuf's limit is refused in one line rather than written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import onnx
from google.protobuf.message import EncodeError
from onnx import AttributeProto, TensorProto

from converter.errors import InputError
from converter.files.load import PROTOBUF_MAX, all_tensors
from converter.files.paths import TEMP_SUFFIX, check_target, temporary_prefix
from converter.graph import copy_field, tensor_nbytes, wire
from converter.graph.detached import DetachedWeights

# protobuf cannot serialize a message of 2 GiB or more; leave room for everything but the tensors.
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

    Args:
        model: the model to write (not modified).
        path: the model file; a data file goes beside it as ``<name>.data`` when there is one.
        external_data: None decides by size: a model whose tensors (``inline_bytes``: every tensor at
            any depth, Constant values included) approach 2 GiB gets the data file. True always
            writes one; False never does.
        size_threshold: with a data file, every initializer and tensor attribute over this many
            bytes goes there.
        detached: the data of the model's placeholder weights (see detached.py); they are written
            from their arrays, where they sit, never copied into the model.

    Raises:
        InputError: the target cannot be written, or the model file would pass protobuf's 2 GiB
            limit (``external_data=False`` on a model that large, or tensors that must stay inline).
    """
    target = check_target(path)
    if external_data is None:
        external_data = external_data_needed(model)
    if not external_data:
        held = inline_bytes(model)
        if held > PROTOBUF_MAX:
            raise InputError(
                f"{target}: cannot be written as one protobuf file: its tensors hold {_size(held)}, over protobuf's "
                "2 GiB limit (write it with external data)"
            )
        write_atomic(target, _at_most(_serialized(model, detached), target))
        return [target]
    data_path = check_target(target.with_name(target.name + ".data"), "output's data file")
    with _write_errors(data_path), _temporary(data_path) as (data_file, data_tmp):
        offset = 0

        def write_data(into: TensorProto, data: bytes | memoryview) -> None:
            nonlocal offset
            pad = -offset % _ALIGN
            data_file.write(b"\0" * pad)
            offset += pad
            data_file.write(data)
            into.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                into.external_data.add(key=key, value=value)
            offset += len(data)

        def to_file(tensor: TensorProto, into: TensorProto) -> None:
            data = onnx.numpy_helper.to_array(tensor).tobytes() if not tensor.HasField("raw_data") else tensor.raw_data
            write_data(into, data)

        small = _split_copy(model, to_file, size_threshold)
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
        left = inline_bytes(small)
        if left > PROTOBUF_MAX:
            raise InputError(
                f"{target}: cannot be written: with every tensor over {size_threshold} bytes in external data, "
                f"{_size(left)} of tensors would still be in the model file (sparse tensors, training graphs or "
                "many small tensors stay inline), over protobuf's 2 GiB limit"
            )
        data_file.flush()
        os.fsync(data_file.fileno())
        write_atomic(target, _at_most(_whole(small), target), then_replace=(data_tmp, data_path))
    return [target, data_path]


def external_data_needed(model: onnx.ModelProto, *, placeholders: bool = True) -> bool:
    """Whether ``model`` must be written with external data: its tensors approach protobuf's 2 GiB limit.

    Args:
        model: the model, possibly with detached placeholders.
        placeholders: count them at their data's size (as written); False: as the few bytes they are.
    """
    return inline_bytes(model, placeholders=placeholders) >= EXTERNAL_DATA_ABOVE


def inline_bytes(model: onnx.ModelProto, *, placeholders: bool = True) -> int:
    """At least the bytes of tensor data that serializing ``model`` writes into its own message.

    Every tensor at any depth counts (load.all_tensors: initializers, sparse initializers, tensor
    attributes such as a Constant's value, in subgraphs, function bodies and training graphs), except
    those already in external data. Detached placeholders count at their data's size, as they are
    written, unless ``placeholders`` is False (then they are the few bytes they are in the message).
    A tensor whose values sit in a typed field counts at the most its varints can take.
    """
    total = 0
    for t in all_tensors(model):
        if t.data_location == TensorProto.EXTERNAL:
            if placeholders and DetachedWeights.is_placeholder(t):
                total += tensor_nbytes(t)
        elif t.HasField("raw_data") or t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
            total += tensor_nbytes(t)  # STRING and UNDEFINED: their serialized size
        else:
            total += sum(len(getattr(t, name)) * most for name, most in _TYPED_FIELD_BYTES.items())
    return total


# The most bytes one entry of a typed field takes on the wire (a negative int32 is a 10-byte varint).
_TYPED_FIELD_BYTES = {"float_data": 4, "double_data": 8, "int32_data": 10, "int64_data": 10, "uint64_data": 10}


def _whole(model: onnx.ModelProto) -> Iterator[bytes]:
    try:
        yield model.SerializeToString()
    except (EncodeError, ValueError) as e:  # upb refuses messages past 2 GiB
        raise InputError(f"cannot serialize the model ({e}): over protobuf's 2 GiB limit") from e


def _at_most(pieces: Iterable[bytes | memoryview], target: Path) -> Iterator[bytes | memoryview]:
    """``pieces``, stopped with an InputError (before the file is renamed into place) once they pass protobuf's limit.

    ``inline_bytes`` leaves the rest of the model (nodes, names, shapes) 128 MiB; a model whose rest is larger
    ends here, in one line, instead of as a file no protobuf reader can parse.
    """
    written = 0
    for piece in pieces:
        written += memoryview(piece).nbytes
        if written > PROTOBUF_MAX:
            raise InputError(f"{target}: the model file would pass protobuf's 2 GiB limit (not written)")
        yield piece


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# The messages whose fields can hold tensors that go to the data file; any other field is copied as it is.
_WALKED = frozenset(d.DESCRIPTOR.full_name for d in (onnx.GraphProto, onnx.NodeProto, onnx.AttributeProto, onnx.FunctionProto))
_HOLDS_TENSORS = frozenset({AttributeProto.TENSOR, AttributeProto.TENSORS, AttributeProto.GRAPH, AttributeProto.GRAPHS})


def _split_copy(model: onnx.ModelProto, put: Callable[[TensorProto, TensorProto], None], above: int) -> onnx.ModelProto:
    """A copy of ``model`` where ``put(tensor, into)`` writes the data of each tensor over ``above`` bytes.

    Those are the initializers and tensor attributes (a Constant's value, ...) of every graph,
    subgraph and function body that hold their data inline; ``into`` is the copy's tensor, with every
    field but the data. Everything else is copied field by field as it is (fields this code does not
    know survive), and a large tensor's data is never copied into the new model.
    """

    def copy(src: Any, dst: Any) -> None:
        for field, value in src.ListFields():
            kind = field.message_type.full_name if field.message_type is not None else None
            if kind == _TENSOR:
                for t in value if field.is_repeated else [value]:
                    tensor(t, getattr(dst, field.name).add() if field.is_repeated else getattr(dst, field.name))
            elif kind == _NODE:
                for node in value:
                    into = dst.node.add()
                    if any(a.type in _HOLDS_TENSORS for a in node.attribute):
                        copy(node, into)
                    else:
                        into.CopyFrom(node)
            elif kind in _WALKED:
                for v in value if field.is_repeated else [value]:
                    copy(v, getattr(dst, field.name).add() if field.is_repeated else getattr(dst, field.name))
            else:
                copy_field(dst, field, value)

    def tensor(t: TensorProto, into: TensorProto) -> None:
        # Strings have no external form (their data is not a flat array of bytes).
        if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING or tensor_nbytes(t) <= above:
            into.CopyFrom(t)
            return
        for field, value in t.ListFields():
            if field.name not in _DATA_FIELDS:
                copy_field(into, field, value)
        put(t, into)

    out = onnx.ModelProto()
    copy(model, out)
    return out


_TENSOR = TensorProto.DESCRIPTOR.full_name
_NODE = onnx.NodeProto.DESCRIPTOR.full_name


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
        yield from _whole(model)
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
