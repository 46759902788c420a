"""Tensor data kept as numpy arrays outside the ModelProto: big loaded weights, and the weights a rewrite makes.

Why: with upb, every ``bytes`` that goes into a message is copied into the message's arena, and an
arena never gives memory back. A weight that passes through a ModelProto is held at least twice
(the arena, and whatever reads it back out: ``to_array``, an onnxruntime session, the output
file's buffer). Kept outside, one array serves everything: the rules read it, both verification
sessions use it in place (onnxruntime takes it as a pre-allocated initializer), and save writes it
straight into the output file.

In the graph such a tensor is a placeholder initializer: its name, dtype, dims and any other
fields it had (so shapes, sizes, names and every check see it as usual), and a marker instead of
data. Two kinds, both in the main graph only:

- loaded: a large tensor whose external data load.py read straight into an array (``adopt``);
- made: a weight a rule computes (``add`` an array, or ``add_lazy`` a function that makes it when it
  is needed, from a source array that stays here, so the new weights never all exist at once).

A placeholder is written where it sits among the initializers, with exactly the fields it had:
saving detached and ``attach`` then saving give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import GraphProto, TensorProto, numpy_helper

# The placeholder's external-data location: no file can have this name, so should anything try to
# read a placeholder's values, it fails loudly instead of reading an empty tensor.
_MARK = "<dense2conv: detached weight, data not in the model>"
_DATA_FIELDS = frozenset(
    (
        "raw_data",
        "float_data",
        "int32_data",
        "string_data",
        "int64_data",
        "double_data",
        "uint64_data",
        "external_data",
        "data_location",
    )
)
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


class DetachedWeights:
    """The data of the placeholder initializers in one model's main graph: arrays, or how to make them."""

    LOCATION = _MARK  # the external-data location every placeholder names

    def __init__(self) -> None:
        self._values: dict[str, np.ndarray | Callable[[], np.ndarray]] = {}
        self._declared: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._sources: dict[str, str] = {}  # a lazy weight -> the detached weight it is made from

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def add(self, graph: GraphProto, name: str, value: np.ndarray) -> TensorProto:
        """Append a placeholder for ``value`` to ``graph`` (the main graph) and keep the array."""
        value = np.ascontiguousarray(value)
        return self._add(graph, name, value, value.shape, value.dtype)

    def add_lazy(
        self,
        graph: GraphProto,
        name: str,
        make: Callable[[], np.ndarray],
        shape: tuple[int, ...],
        dtype: np.dtype,
        source: str | None = None,
    ) -> TensorProto:
        """A placeholder whose data ``make`` computes each time it is needed (when it is written).

        Nothing of it is held in between: ``make`` reads its ``source`` (a weight the rewrite removed
        from the graph, still alive here or in memory) and the result is dropped once used.
        """
        if source is not None:
            self._sources[name] = source
        return self._add(graph, name, make, tuple(shape), np.dtype(dtype))

    def adopt(self, tensor: TensorProto, value: np.ndarray) -> None:
        """Turn ``tensor`` (an initializer of the main graph) into a placeholder whose data is ``value``.

        Its other fields (doc string, metadata) stay; ``value`` must have its dtype and dims.
        """
        shape, dtype = tuple(tensor.dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        value = np.asarray(value)
        assert value.dtype == dtype and value.shape == shape, f"{tensor.name}: {value.dtype}{value.shape} for {dtype}{shape}"
        assert tensor.name not in self._values, f"{tensor.name} is detached twice"
        for name in _DATA_FIELDS:
            tensor.ClearField(name)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=_MARK)
        self._values[tensor.name] = value
        self._declared[tensor.name] = (shape, dtype)

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

    def value(self, tensor: TensorProto) -> np.ndarray:
        """The values of any tensor: a placeholder's from here, any other's from its own data."""
        if self.is_placeholder(tensor):
            return self.array(tensor.name)
        return numpy_helper.to_array(tensor)

    def nbytes(self, name: str) -> int:
        shape, dtype = self._declared[name]
        return math.prod(shape) * dtype.itemsize

    def data(self, name: str) -> memoryview:
        """The bytes of a detached weight as ONNX raw data stores them (little-endian)."""
        value = self.array(name)
        if value.dtype.byteorder == ">" or (value.dtype.byteorder == "=" and not np.little_endian):
            value = value.astype(value.dtype.newbyteorder("<"))
        return memoryview(value).cast("B") if value.size else memoryview(b"")

    def keep_only(self, names: Iterable[str]) -> None:
        """Keep the data of ``names`` only; the lazy ones among them are made now, and kept.

        Everything else is forgotten as soon as nothing still to be made needs it, so memory holds
        about one copy of the weights throughout (a source and the weight made from it overlap one
        at a time). The caller may no longer read any other placeholder.
        """
        keep = [n for n in dict.fromkeys(names) if n in self._values]
        pending: dict[str, int] = {}
        for name in keep:
            source = self._sources.get(name)
            if callable(self._values[name]) and source is not None:
                pending[source] = pending.get(source, 0) + 1
        wanted = set(keep)
        for name in [n for n in self._values if n not in wanted and n not in pending]:
            self._forget(name)
        for name in keep:
            if not callable(self._values[name]):
                continue
            self._values[name] = self.array(name)
            source = self._sources.pop(name, None)
            if source is not None and source in pending:
                pending[source] -= 1
                if not pending[source] and source not in wanted:
                    self._forget(source)

    def _forget(self, name: str) -> None:
        self._values.pop(name, None)
        self._declared.pop(name, None)
        self._sources.pop(name, None)

    @staticmethod
    def is_placeholder(t: TensorProto) -> bool:
        return t.data_location == TensorProto.EXTERNAL and any(e.value == _MARK for e in t.external_data if e.key == "location")

    @staticmethod
    def around_data(t: TensorProto) -> tuple[bytes, bytes]:
        """A placeholder's own fields as the written tensor has them: those before its data, and those after.

        Protobuf writes fields in number order, so the written tensor is ``before``, the raw_data
        field, then ``after`` (a doc string or metadata, which have higher numbers).
        """
        before, after = TensorProto(), TensorProto()
        for field, value in t.ListFields():
            if field.name in _DATA_FIELDS:
                continue
            into = before if field.number < _RAW_DATA_FIELD else after
            if field.is_repeated:
                getattr(into, field.name).extend(value)
            else:
                setattr(into, field.name, value)
        return before.SerializeToString(), after.SerializeToString()

    def attach(self, model: onnx.ModelProto) -> None:
        """Turn every placeholder into an ordinary tensor where it is (save() writes them at the same place)."""
        for t in model.graph.initializer:
            if self.is_placeholder(t):
                data = self.data(t.name).tobytes()
                del t.external_data[:]
                t.ClearField("data_location")
                t.raw_data = data

    def placeholders(self, graph: GraphProto) -> list[int]:
        """Positions of ``graph``'s placeholders among its initializers; each one must have its data here."""
        at = [i for i, t in enumerate(graph.initializer) if self.is_placeholder(t)]
        unknown = [graph.initializer[i].name for i in at if graph.initializer[i].name not in self._values]
        assert not unknown, f"placeholders without data: {unknown}"
        return at
