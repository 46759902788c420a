"""Weights a rewrite computes, kept as numpy arrays outside the ModelProto until they are written.

Why: with upb, every ``bytes`` that goes into a message is copied into the message's arena, and an
arena never gives memory back. A new Conv weight made the ordinary way was copied four times
(``tobytes``, into the arena, out again by ``SerializeToString``, and into the file buffer); on
an 800 MB model those copies were most of the conversion time. Detached, a weight is computed
once and written from the array straight into the output file.

In the graph a detached weight is a placeholder initializer: its name, dtype and dims (so shapes,
sizes and every name check see it as usual) and a marker instead of data. Only the main graph's
new weights are detached; save.py writes them, ``attach`` turns them into ordinary tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import GraphProto, TensorProto

# The placeholder's external-data location: no file can have this name, so should anything try to
# read a placeholder's values, it fails loudly instead of reading an empty tensor.
_MARK = "<dense2conv: detached weight, data not in the model>"


class DetachedWeights:
    """The data of the placeholder initializers in one model's main graph: arrays, or how to make them."""

    def __init__(self) -> None:
        self._values: dict[str, np.ndarray | Callable[[], np.ndarray]] = {}
        self._declared: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def add(self, graph: GraphProto, name: str, value: np.ndarray) -> TensorProto:
        """Append a placeholder for ``value`` to ``graph`` (the main graph) and keep the array."""
        value = np.ascontiguousarray(value)
        return self._add(graph, name, value, value.shape, value.dtype)

    def add_lazy(
        self, graph: GraphProto, name: str, make: Callable[[], np.ndarray], shape: tuple[int, ...], dtype: np.dtype
    ) -> TensorProto:
        """A placeholder whose data ``make`` computes each time it is needed (when it is written).

        Nothing of it is held in between: ``make`` reads its source (a weight the rewrite removed
        from the graph, still alive in memory) and the result is dropped once written.
        """
        return self._add(graph, name, make, tuple(shape), np.dtype(dtype))

    @staticmethod
    def accepts(dtype: np.dtype) -> bool:
        """Plain numeric dtypes only; others (strings, bfloat16 and friends) go into the graph as usual."""
        return np.dtype(dtype).kind in "biufc"

    def _add(self, graph: GraphProto, name: str, value, shape: tuple[int, ...], dtype: np.dtype) -> TensorProto:
        assert self.accepts(dtype), f"only numeric weights are detached, not {dtype}"
        assert name not in self._values, f"{name} is detached twice"
        tensor = graph.initializer.add(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(dtype))
        tensor.dims.extend(shape)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=_MARK)
        self._values[name] = value
        self._declared[name] = (tuple(shape), dtype)
        return tensor

    def array(self, name: str) -> np.ndarray:
        value = self._values[name]
        if callable(value):
            value = np.ascontiguousarray(value())
        shape, dtype = self._declared[name]
        assert value.shape == shape and value.dtype == dtype, f"{name}: made {value.dtype}{value.shape}, declared {dtype}{shape}"
        return value

    def nbytes(self, name: str) -> int:
        shape, dtype = self._declared[name]
        return math.prod(shape) * dtype.itemsize

    def data(self, name: str) -> memoryview:
        """The bytes of a detached weight as ONNX raw data stores them (little-endian)."""
        value = self.array(name)
        if value.dtype.byteorder == ">" or (value.dtype.byteorder == "=" and not np.little_endian):
            value = value.astype(value.dtype.newbyteorder("<"))
        return memoryview(value).cast("B") if value.size else memoryview(b"")

    @staticmethod
    def is_placeholder(t: TensorProto) -> bool:
        return t.data_location == TensorProto.EXTERNAL and any(e.value == _MARK for e in t.external_data if e.key == "location")

    @staticmethod
    def header(t: TensorProto) -> bytes:
        """A placeholder's own fields as the written tensor has them, everything but the data.

        Serialized alone, this is the start of the tensor's serialization: its fields (dims,
        data_type, name) all have lower numbers than raw_data, which protobuf writes after them.
        """
        return TensorProto(name=t.name, data_type=t.data_type, dims=t.dims).SerializeToString()

    def attach(self, model: onnx.ModelProto) -> None:
        """Turn every placeholder into an ordinary tensor, moved to the end of the initializers.

        save() writes detached weights at the same place, so a model saved detached and one
        attached first and then saved are the same bytes.
        """
        graph = model.graph
        placeholders = self.take_placeholders(graph)
        for t in placeholders:
            real = graph.initializer.add(name=t.name, data_type=t.data_type)
            real.dims.extend(t.dims)
            real.raw_data = self.data(t.name).tobytes()

    def take_placeholders(self, graph: GraphProto) -> list[TensorProto]:
        """Remove the placeholders from ``graph`` and return copies of them, in their order."""
        at = [i for i, t in enumerate(graph.initializer) if self.is_placeholder(t)]
        taken = []
        for i in at:
            copy = TensorProto()
            copy.CopyFrom(graph.initializer[i])
            taken.append(copy)
        for i in reversed(at):
            del graph.initializer[i]
        unknown = [t.name for t in taken if t.name not in self._values]
        assert not unknown, f"placeholders without data: {unknown}"
        return taken
