"""The few pieces of protobuf's wire format that let us avoid copying weight data.

upb copies a bytes field on every read (even ``len(t.raw_data)``) and every write. Reading
sizes straight from the file's bytes, and writing new weights straight into the output, skips
those copies, which on a model with hundreds of MB of weights were most of the run time.
"""

from __future__ import annotations

from collections.abc import Iterator

# Field numbers in onnx.proto.
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9
_LENGTH_DELIMITED = 2


def tag(number: int) -> bytes:
    """The tag of a length-delimited field."""
    return varint(number << 3 | _LENGTH_DELIMITED)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes | memoryview, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the position after it."""
    value = shift = 0
    while True:
        byte = buf[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(number, start, end) of each length-delimited field of the message in ``buf[start:end]``."""
    for number, _, value_start, value_end in spans(buf, start, end):
        yield number, value_start, value_end


def spans(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(number, field start, value start, value end) of each length-delimited field in ``buf[start:end]``.

    The field start is where its tag begins: ``buf[field start:value end]`` is the whole field.
    """
    at = start
    while at < end:
        first = at
        key, at = read_varint(buf, at)
        wire = key & 7
        if wire == _LENGTH_DELIMITED:
            size, at = read_varint(buf, at)
            if at + size > end:
                raise ValueError("field runs past its message")
            yield key >> 3, first, at, at + size
            at += size
        elif wire == 0:
            _, at = read_varint(buf, at)
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire} is not used by onnx.proto")


def initializer_raw_sizes(model: bytes | memoryview) -> list[int | None]:
    """For each initializer of the main graph, in order, the length of its raw_data (None: it has none)."""
    sizes: list[int | None] = []
    for number, start, end in fields(model, 0, len(model)):
        if number != MODEL_GRAPH:
            continue
        for g_number, g_start, g_end in fields(model, start, end):
            if g_number == GRAPH_INITIALIZER:
                raw = [e - s for n, s, e in fields(model, g_start, g_end) if n == TENSOR_RAW_DATA]
                sizes.append(raw[-1] if raw else None)
    return sizes
