"""Reading ONNX models (and --inputs arrays) from disk: every failure becomes one clear InputError line.

External data is read by us, not by onnx.load: model files come from anywhere, and a tensor's
``location`` must not reach outside the model's folder. An absolute path, ``..``, a symlink that
resolves elsewhere, or a hard link (onnxruntime 1.32 still follows hard links to files elsewhere)
is refused, as is data that is missing or too short for its tensor. This covers every tensor that
can carry external data, sparse tensors' values and indices included (onnx.load checks none of those).

Nothing is read before it is known to be sane: files are opened without blocking and must be
regular files (a FIFO would hang ``open``, a device would never end), a protobuf model file of
2 GiB or more is refused (protobuf cannot encode one), its top-level framing is checked before the
rest is read, and external data is read only after every tensor's location and size was checked
and their sum fits in this machine's memory. Every tensor's data must agree with its dims and
dtype, and a constant may only feed an operator input that accepts its type.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import io
import math
import mmap
import os
import stat
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, TensorProto

from converter.errors import InputError
from converter.files.paths import file_kind
from converter.graph import iter_graphs, skeleton, subgraphs, tensor_nbytes, wire
from converter.graph.detached import DetachedWeights

# protobuf cannot encode a message of 2 GiB or more, so no protobuf model file is that large.
PROTOBUF_MAX = 2**31 - 1
# The text formats (.json, .textproto, .onnxtxt) are for small models; anything this large is not one.
TEXT_MAX = 1 << 30
_INT64_MAX = 2**63 - 1

_KNOWN_TYPES = frozenset(TensorProto.DataType.values())
_KINDS = {
    stat.S_IFIFO: "named pipe (FIFO)",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load and check an ONNX model file (with its external data, if any)."""
    return load_with_sources(path)[0]


def load_with_sources(path: str | os.PathLike[str], detached: DetachedWeights | None = None) -> tuple[onnx.ModelProto, list[Path]]:
    """The model and every file it was read from (the model file, then its external data files).

    With ``detached``, the main graph's large external tensors are read straight into arrays kept
    there and left in the model as placeholders (detached.py says why): their data never enters
    the protobuf model. Without it, every tensor holds its data as usual.
    """
    p = Path(path)
    fmt = onnx.serialization.registry.get_format_from_file_extension(p.suffix) or "protobuf"
    model, raw_sizes = _read_model(p, fmt)
    if not model.HasField("graph") or not model.graph.output:
        raise InputError(f"{p}: not an ONNX model (it has no graph with outputs)")
    _check_tensor_headers(model, str(p))
    data_files = _load_external_data(model, p, detached)
    check_model(model, str(p), raw_sizes, headers_checked=True)
    return model, [p, *data_files]


def _read_model(p: Path, fmt: str) -> tuple[onnx.ModelProto, list[int | None] | None]:
    with _open_regular(p, "an ONNX file") as (fd, size):
        if size == 0:
            raise InputError(f"{p}: file is empty")
        limit = PROTOBUF_MAX if fmt == "protobuf" else TEXT_MAX
        if size > limit:
            why = (
                "a protobuf ONNX file cannot be 2 GiB or more (larger models keep their weights in external data)"
                if fmt == "protobuf"
                else f"far larger than any {fmt} ONNX model"
            )
            raise InputError(f"{p}: is {_size(size)}; {why}")
        problem = _framing_problem(fd, size) if fmt == "protobuf" else _text_problem(fd, fmt)
        if problem:
            raise InputError(f"{p}: not a readable ONNX model ({problem})")
        try:
            data = _read_all(fd, size)
        except OSError as e:
            raise InputError(f"{p}: cannot read ({e.strerror})") from None
    model = onnx.ModelProto()
    if fmt == "protobuf":
        try:
            model.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise InputError(f"{p}: not a readable ONNX model ({_message(e)})") from e
        raw_sizes = _raw_sizes(data, model)
        return model, raw_sizes
    try:
        # The text parsers warn (onnxtxt is "experimental"); the user asked for a conversion, not that.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx.load_model_from_string(bytes(data), format=fmt)
    except Exception as e:  # noqa: BLE001 - parsers of untrusted text raise many types (json, text_format, onnx.parser)
        raise InputError(f"{p}: not a readable ONNX model ({_message(e)})") from e
    return model, None


@contextlib.contextmanager
def _open_regular(p: Path, what: str, problem: str = "{}") -> Iterator[tuple[int, int]]:
    """``(fd, size)`` of a regular file, opened without blocking: a FIFO's open would wait for a writer.

    ``problem`` frames the reason in the message (``"cannot read input arrays ({})"``).
    """
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{p}: {problem.format('no such file')}") from None
    except ValueError:
        raise InputError(f"{p!r}: {problem.format('the path contains a NUL byte')}") from None
    except OSError as e:
        raise InputError(f"{p}: {problem.format(f'cannot open: {e.strerror}')}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{p}: {problem.format(f'is a folder, not {what}')}")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: {problem.format(f'is a {file_kind(st.st_mode)}, not a regular file')}")
        yield fd, st.st_size
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytearray:
    """Up to ``size`` bytes from the start, read into one buffer (a file that grows meanwhile is read as it was)."""
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size:
            n = os.readv(fd, [view[got : got + (1 << 28)]])
            if not n:
                break
            got += n
    del buf[got:]
    return buf


def _framing_problem(fd: int, size: int) -> str | None:
    """Walk the framing of the file's top-level fields, and of the graph's first fields, before reading all of it.

    A few small reads: a file of zeros or random bytes fails here at once, whatever its size. A
    real model's top level is a handful of fields (ir_version, producer, graph, opset_import, ...).
    """
    return _fields_problem(fd, 0, size, descend=wire.MODEL_GRAPH, limit=100_000)


def _fields_problem(fd: int, start: int, end: int, descend: int | None, limit: int) -> str | None:
    at, fields = start, 0
    while at < end and fields < limit:
        head = os.pread(fd, 20, at)
        try:
            key, pos = wire.read_varint(head, 0)
            number, kind = key >> 3, key & 7
            if number == 0:
                return f"invalid field number 0 at byte {at}"
            if kind == 0:
                _, pos = wire.read_varint(head, pos)
            elif kind in (1, 5):
                pos += 8 if kind == 1 else 4
            elif kind == 2:
                length, pos = wire.read_varint(head, pos)
                if number == descend and at + pos + length <= end:
                    inner = _fields_problem(fd, at + pos, at + pos + length, None, 1000)
                    if inner:
                        return f"in the graph: {inner}"
                pos += length
            else:
                return None  # groups: leave the judgement to the parser
        except (IndexError, ValueError):
            return f"truncated or corrupt field at byte {at}"
        at += pos
        fields += 1
    if at > end:
        return f"a field at byte {at - pos} runs past the end of its message"
    return None


def _text_problem(fd: int, fmt: str) -> str | None:
    start = os.pread(fd, 4096, 0)
    if b"\0" in start:
        return f"a {fmt} model is text, and this file holds NUL bytes"
    if fmt == "json" and not start.lstrip().startswith(b"{"):
        return "a JSON model starts with '{'"
    return None


def check_model(
    model: onnx.ModelProto, where: str = "model", raw_sizes: list[int | None] | None = None, headers_checked: bool = False
) -> None:
    """Refuse a model onnx's checker refuses, or whose tensors hold less or more data than their dims say.

    Args:
        model: the model (not changed).
        where: how messages name it (its path).
        raw_sizes: the main graph's raw_data lengths as the file has them (see ``_raw_sizes``).
        headers_checked: every tensor's dims and data type were checked already (the loader checks them before
            it reads external data); they are not walked again.
    """
    # protobuf parses many byte strings (an empty one included) into a model without a graph.
    if not model.HasField("graph") or not model.graph.output:
        raise InputError(f"{where}: not an ONNX model (it has no graph with outputs)")
    known = onnx.defs.onnx_opset_version()
    imported: dict[str, int] = {}
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > known:
            raise InputError(f"{where}: opset {opset.version} is newer than this onnx ({onnx.__version__}) knows ({known})")
        # One domain imported twice: which version its ops mean is not defined (onnxruntime takes the last,
        # others the first), and an op's meaning changes with it.
        domain = "ai.onnx" if opset.domain in ("", "ai.onnx") else opset.domain
        if domain in imported:
            raise InputError(
                f"{where}: invalid ONNX model (it imports the operators of domain {domain!r} twice, "
                f"versions {imported[domain]} and {opset.version})"
            )
        imported[domain] = opset.version
    if not headers_checked:
        _check_tensor_headers(model, where)
    _check_declared_types(model, where)
    check_acyclic(model, where)
    try:
        onnx.checker.check_model(skeleton(model))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        raise InputError(f"{where}: invalid ONNX model ({_message(e)})") from e
    _check_tensor_data(model, where, raw_sizes)
    _check_constant_types(model, where)


# ---------------------------------------------------------------------------------------------
# Node order: a graph is acyclic (every walk that follows producers relies on it)


class GraphCycle(InputError):
    """The nodes of a graph form a cycle: no order runs them, and a walk that follows producers never ends."""


def check_acyclic(model: onnx.ModelProto, where: str = "model") -> None:
    """Refuse a model whose nodes form a cycle, in any graph: main, subgraphs or function bodies.

    A node holding subgraphs depends on the outer names they read, so a body that reads a value
    computed from its own node's output is a cycle too. Raises GraphCycle naming the nodes.
    """
    for label, nodes in _node_lists(model):
        _, cycle = node_order(nodes)
        if cycle:
            raise GraphCycle(
                f"{where}: invalid ONNX model (nodes form a cycle{label}: {_cycle_text(nodes, cycle)}; "
                "a graph's nodes must be topologically sorted)"
            )


def sort_nodes(model: onnx.ModelProto, where: str = "model") -> None:
    """Put the nodes of every graph of ``model`` (and of its functions) in a topological order, in place.

    Graphs already in order are left as they are; others get the stable order ``node_order`` gives.
    Raises GraphCycle when some graph's nodes form a cycle.
    """
    for label, nodes in _node_lists(model):
        order, cycle = node_order(nodes)
        if cycle:
            raise GraphCycle(f"{where}: nodes form a cycle{label}: {_cycle_text(nodes, cycle)} (an ONNX graph must be acyclic)")
        if order != list(range(len(nodes))):
            ordered = [nodes[i] for i in order]  # each kept alive by this list while the field is rebuilt
            copies = [onnx.NodeProto() for _ in ordered]
            for c, n in zip(copies, ordered, strict=True):
                c.CopyFrom(n)
            del nodes[:]
            nodes.extend(copies)


def _node_lists(model: onnx.ModelProto) -> Iterator[tuple[str, Any]]:
    """Each node list of the model, with where it is (for messages); a graph is yielded before the graphs inside it,
    and those are read after the caller is done with it (so a caller that reorders a list sees the new nodes)."""
    for path, graph in iter_graphs(model.graph):
        yield (f" in graph {graph.name!r}" if path else ""), graph.node
    for f in model.functions:
        yield f" in function {f.domain}.{f.name}", f.node
        for node in f.node:
            for _, sub in subgraphs(node):
                for _, g in iter_graphs(sub):
                    yield f" in graph {g.name!r} of function {f.domain}.{f.name}", g.node


def node_order(nodes) -> tuple[list[int], list[int]]:  # noqa: ANN001 - a repeated NodeProto field
    """``(order, [])``: the nodes' indices in a topological order, each node as early as its inputs allow and ties by
    position (so a sorted list keeps its order); or ``([], cycle)``: the indices of the nodes of one cycle, in order.

    A node depends on the nodes of this list that produce its inputs or the outer names its subgraphs read.
    Names produced nowhere in the list (graph inputs, initializers, outer names) are no dependency. Iterative:
    no recursion over the graph's depth.
    """
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer.setdefault(out, i)
    needs: list[set[int]] = []
    for node in nodes:
        names = {n for n in node.input if n}
        for _, sub in subgraphs(node):
            names |= _free_names(sub)
        needs.append({producer[n] for n in names if n in producer})
    if all(j < i for i, deps in enumerate(needs) for j in deps):
        return list(range(len(needs))), []  # already in order: the common case
    users: list[list[int]] = [[] for _ in needs]
    waiting = [len(deps) for deps in needs]
    for i, deps in enumerate(needs):
        for j in deps:
            users[j].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) == len(needs):
        return order, []
    # Every node left waits on another node left: walking back along such waits must repeat a node.
    left = {i for i, w in enumerate(waiting) if w > 0}
    at, seen = min(left), {}
    walk: list[int] = []
    while at not in seen:
        seen[at] = len(walk)
        walk.append(at)
        at = min(j for j in needs[at] if j in left)
    cycle = walk[seen[at] :]
    cycle.reverse()  # producers first: a -> b means b reads what a makes
    first = cycle.index(min(cycle))  # told from the node that comes first in the list
    return [], cycle[first:] + cycle[:first]


def _free_names(graph: GraphProto) -> set[str]:
    """Names a graph (with the graphs inside it) reads but does not define: what it takes from outer scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer}
    read: set[str] = {o.name for o in graph.output}
    for node in graph.node:
        read.update(n for n in node.input if n)
        for _, sub in subgraphs(node):
            read |= _free_names(sub)
        defined.update(n for n in node.output if n)
    return read - defined


def _cycle_text(nodes, cycle: list[int]) -> str:  # noqa: ANN001 - a repeated NodeProto field
    names = [nodes[i].name or f"{nodes[i].op_type} #{i}" for i in cycle]
    shown = names if len(names) <= 8 else [*names[:4], f"... {len(names) - 6} more ...", *names[-2:]]
    return " -> ".join([*shown, names[0]])


# ---------------------------------------------------------------------------------------------
# Tensors: dims and dtype first (before anything sizes or reads them), then their data


def _check_tensor_headers(model: onnx.ModelProto, where: str) -> None:
    for t in all_tensors(model):
        problem = _header_problem(t)
        if problem:
            raise InputError(f"{where}: invalid ONNX model (tensor {t.name!r} {problem})")


def _header_problem(t: TensorProto) -> str | None:
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        return f"has a negative dim {dims}"
    if t.data_type not in _KNOWN_TYPES:
        return f"has an unknown data type {t.data_type}"
    if t.data_type == TensorProto.UNDEFINED:
        return "has no data type (UNDEFINED)"
    if _elements(dims) * max(1, _bits(t.data_type) // 8) > _INT64_MAX:
        return f"of shape {dims} is too large to exist"
    return None


def _elements(dims: list[int]) -> int:
    """Elements of a shape for size checks: an empty dim counts as 1, so ``[0, 2**40, 2**40]`` is as large as numpy
    sees it (it refuses such an array) rather than 0."""
    return math.prod(max(1, d) for d in dims)


def _bits(data_type: int) -> int:
    if data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1):
        return 4
    if data_type in (TensorProto.INT2, TensorProto.UINT2):
        return 2
    if data_type in (TensorProto.FLOAT6E2M3, TensorProto.FLOAT6E3M2):
        return 6
    if data_type == TensorProto.STRING:
        return 8
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, TypeError, ValueError):
        return 8


# Values per element in the typed field (raw_data aside): complex numbers take two entries,
# packed sub-byte types share an int32 entry (onnx.numpy_helper reads them that way).
def _entries(data_type: int, n: int) -> int:
    if data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        return 2 * n
    if data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1):
        return (n + 1) // 2
    if data_type in (TensorProto.INT2, TensorProto.UINT2):
        return (n + 3) // 4
    return n


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _check_tensor_data(model: onnx.ModelProto, where: str, raw_sizes: list[int | None] | None) -> None:
    """The checker runs on a skeleton without weight bytes, so check here that every tensor's data fits its dims."""
    known = raw_sizes if raw_sizes is not None and len(raw_sizes) == len(model.graph.initializer) else None
    for i, t in enumerate(model.graph.initializer):
        if known is not None and t.HasField("raw_data"):
            if known[i] is None:
                continue  # its data came from an external file, whose length was checked as it was read
            _refuse_data_problem(t, known[i], where)
        else:
            _refuse_data_problem(t, None, where)
    for t in _tensors_in_graph(model.graph, initializers=False):
        _refuse_data_problem(t, None, where)
    for t in _tensors_beyond_the_graph(model):
        _refuse_data_problem(t, None, where)


def _refuse_data_problem(t: TensorProto, raw_size: int | None, where: str) -> None:
    if t.data_location == TensorProto.EXTERNAL:
        return  # not loaded: its length is checked when it is read
    if raw_size is None and t.HasField("raw_data"):
        raw_size = len(t.raw_data)
    problem = _data_problem(t, raw_size)
    if problem:
        raise InputError(f"{where}: invalid ONNX model (tensor {t.name!r} of shape {list(t.dims)} {problem})")


def _data_problem(t: TensorProto, raw_size: int | None) -> str | None:
    n = math.prod(t.dims)
    name = TensorProto.DataType.Name(t.data_type)
    if raw_size is not None:
        if t.data_type == TensorProto.STRING:
            return "is a STRING tensor with raw_data (strings go in string_data)"
        expected = (n * _bits(t.data_type) + 7) // 8
        return None if raw_size == expected else f"holds {raw_size} bytes, expected {expected}"
    try:
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
    except (KeyError, TypeError, ValueError):
        return None
    for other in _TYPED_FIELDS:
        if other != field and len(getattr(t, other)):
            return f"holds {other}, but a {name} tensor keeps its values in {field}"
    count, expected = len(getattr(t, field)), _entries(t.data_type, n)
    if count != expected:
        return f"holds {count} values in {field}, expected {expected}"
    return None


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


# ---------------------------------------------------------------------------------------------
# Declared types: graph inputs, outputs and value_info


def _check_declared_types(model: onnx.ModelProto, where: str) -> None:
    backed = {t.name for t in model.graph.initializer}
    for path, graph in iter_graphs(model.graph):
        for kind in ("input", "output", "value_info"):
            for vi in getattr(graph, kind):
                if vi.type.WhichOneof("value") != "tensor_type":
                    continue
                tt = vi.type.tensor_type
                label = f"{kind} {vi.name!r}" if kind != "value_info" else f"value_info {vi.name!r}"
                if tt.elem_type not in _KNOWN_TYPES:
                    raise InputError(f"{where}: invalid ONNX model ({label} has an unknown element type {tt.elem_type})")
                if not path and kind != "value_info" and tt.elem_type == TensorProto.UNDEFINED:
                    raise InputError(f"{where}: invalid ONNX model ({label} declares no element type (elem_type 0))")
                fixed = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
                if any(d < 0 for d in fixed):
                    raise InputError(f"{where}: invalid ONNX model ({label} has a negative dim {fixed})")
                if not path and kind == "input" and vi.name not in backed:
                    if _elements(fixed) * max(1, _bits(tt.elem_type) // 8) > _INT64_MAX:
                        raise InputError(f"{where}: invalid ONNX model ({label} of shape {fixed} is too large to exist)")


# ---------------------------------------------------------------------------------------------
# Constants feed only operator inputs that accept their type (a STRING weight into MatMul)


def _check_constant_types(model: onnx.ModelProto, where: str) -> None:
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}

    def walk(graph: GraphProto, outer: dict[str, int], versions: dict[str, int]) -> None:
        consts = dict(outer)
        consts.update((t.name, t.data_type) for t in graph.initializer)
        consts.update((s.values.name, s.values.data_type) for s in graph.sparse_initializer)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                value = next((a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR), None)
                if value is not None:
                    consts[node.output[0]] = value.data_type
        for node in graph.node:
            _check_node_inputs(node, consts, versions, where)
            for _, sub in subgraphs(node):
                walk(sub, consts, versions)

    walk(model.graph, {}, opsets)
    for f in model.functions:
        versions = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in f.opset_import} or opsets
        g = GraphProto(node=f.node)
        walk(g, {}, versions)


def _check_node_inputs(node: onnx.NodeProto, consts: dict[str, int], versions: dict[str, int], where: str) -> None:
    if not any(name in consts for name in node.input):
        return
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in versions:
        return
    accepts = _accepted_types(node.op_type, domain, versions[domain])
    if accepts is None:
        return
    for i, name in enumerate(node.input):
        if not name or name not in consts:
            continue
        allowed = accepts[i] if i < len(accepts) else accepts[-1] if accepts and accepts[-1][1] else None
        if allowed is None:
            continue
        types, _ = allowed
        given = f"tensor({TensorProto.DataType.Name(consts[name]).lower()})"
        if given not in types:
            wanted = ", ".join(sorted(t[7:-1] for t in types if t.startswith("tensor(")))
            raise InputError(
                f"{where}: invalid ONNX model (the {given[7:-1]} constant {name!r} feeds input {i} of "
                f"{node.op_type} node {node.name!r}, which takes {wanted or 'no tensor'})"
            )


@functools.lru_cache(maxsize=1024)
def _accepted_types(op_type: str, domain: str, version: int) -> tuple[tuple[frozenset[str], bool], ...] | None:
    """For each formal input of the operator: the types it accepts and whether it is variadic."""
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None
    constraints = {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints}
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return tuple((constraints.get(p.type_str, frozenset({p.type_str})), p.option == variadic) for p in schema.inputs)


# ---------------------------------------------------------------------------------------------
# External data


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


def _tensors_in_nodes(nodes) -> Iterator[TensorProto]:  # noqa: ANN001 - a repeated NodeProto field
    for node in nodes:
        for attr in node.attribute:
            yield from _tensors_in_attribute(attr)
            graphs = [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs if attr.type == AttributeProto.GRAPHS else []
            for g in graphs:
                yield from _tensors_in_graph(g)


def _tensors_in_graph(graph: GraphProto, initializers: bool = True) -> Iterator[TensorProto]:
    if initializers:
        yield from graph.initializer
    for s in graph.sparse_initializer:
        yield from (s.values, s.indices)
    yield from _tensors_in_nodes(graph.node)


def all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto that can hold data, at any depth: initializers, sparse initializers, node attributes,
    functions (and their attributes' defaults), and training_info's graphs."""
    yield from _tensors_in_graph(model.graph)
    yield from _tensors_beyond_the_graph(model)


def _tensors_beyond_the_graph(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for function in model.functions:
        yield from _tensors_in_nodes(function.node)
        for attr in function.attribute_proto:
            yield from _tensors_in_attribute(attr)
    for info in model.training_info:
        yield from _tensors_in_graph(info.initialization)
        yield from _tensors_in_graph(info.algorithm)


def _load_external_data(model: onnx.ModelProto, path: Path, detached: DetachedWeights | None = None) -> list[Path]:
    """Check every external tensor (location, length, the file) before reading any, then read them.

    With ``detached``, the main graph's large numeric ones go into arrays there (see load_with_sources).
    """
    folder = path.parent.resolve()
    files: dict[Path, int] = {}
    pending: list[tuple[TensorProto, Path, int, int, str]] = []
    main = len(model.graph.initializer)  # all_tensors yields the main graph's initializers first
    unique: set[str] = set()
    if detached is not None and any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        counts = collections.Counter(t.name for t in model.graph.initializer)
        unique = {n for n, c in counts.items() if c == 1}
    to_arrays: set[int] = set()
    try:
        for position, t in enumerate(all_tensors(model)):
            if t.data_location != TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            where = f"{path}: tensor {t.name!r}"
            target = _safe_location(info.get("location", ""), folder, where)
            try:
                offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
            except ValueError:
                raise InputError(f"{where}: external data offset/length are not integers") from None
            expected = tensor_nbytes(t)
            if length is not None and length != expected:
                raise InputError(f"{where}: external data length {length} does not match its shape ({expected} bytes)")
            if target not in files:
                files[target] = _open_external(target, where)
            size = os.fstat(files[target]).st_size
            if offset < 0 or offset + expected > size:
                raise InputError(
                    f"{where}: external data file {target.name!r} is too short ({size} bytes; "
                    f"the tensor needs {expected} bytes at offset {offset})"
                )
            if position < main and t.name in unique and expected > DETACH_ABOVE and _numeric(t.data_type):
                to_arrays.add(len(pending))
            pending.append((t, target, offset, expected, where))
        total, memory = sum(p[3] for p in pending), _memory_size()
        if memory and total > memory:
            raise InputError(f"{path}: its external data holds {_size(total)}, more than this machine's memory ({_size(memory)})")
        for i, (t, target, offset, expected, where) in enumerate(pending):
            if i in to_arrays:
                buffer = np.empty(expected, np.uint8)
                _read_into(files[target], target, offset, buffer, where)
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
                value = buffer.view(dtype.newbyteorder("<")).reshape(tuple(t.dims))
                detached.adopt(t, value if value.dtype == dtype else value.astype(dtype))  # type: ignore[union-attr]
                continue
            t.raw_data = _read(files[target], target, offset, expected, where)
            t.ClearField("data_location")  # as if the data had always been inline
            del t.external_data[:]
    finally:
        for fd in files.values():
            os.close(fd)
    return list(files)


# External tensors above this size are kept as arrays when the caller detaches (smaller ones, which
# shape inference may read, stay in the model).
DETACH_ABOVE = 1 << 16


def _numeric(data_type: int) -> bool:
    try:
        return DetachedWeights.accepts(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)))
    except (KeyError, TypeError, ValueError):
        return False


def _read_into(fd: int, target: Path, offset: int, buffer: np.ndarray, where: str) -> None:
    """Fill ``buffer`` from the file at ``offset``, without another copy of the data."""
    view, at = memoryview(buffer).cast("B"), 0
    try:
        while at < len(view):
            got = os.preadv(fd, [view[at : at + (1 << 26)]], offset + at)
            if not got:
                raise InputError(f"{where}: external data file {target.name!r} ended early")
            at += got
    except OSError as e:
        raise InputError(f"{where}: cannot read external data file {target.name!r} ({e.strerror})") from None


def _safe_location(location: str, folder: Path, where: str) -> Path:
    if not location:
        raise InputError(f"{where}: external data without a location")
    if "\0" in location:
        raise InputError(f"{where}: external data location {location!r} contains a NUL byte")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise InputError(f"{where}: external data location {location!r} is absolute; it must be inside the model's folder")
    if ".." in Path(location.replace("\\", "/")).parts:
        raise InputError(f"{where}: external data location {location!r} leaves the model's folder")
    target = folder / location
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError) as e:
        raise InputError(f"{where}: external data location {location!r} cannot be resolved ({e})") from None
    if not resolved.is_relative_to(folder):
        raise InputError(f"{where}: external data location {location!r} leads outside the model's folder (a symlink)")
    return resolved


def _open_external(target: Path, where: str) -> int:
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
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
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(fd: int, target: Path, offset: int, length: int, where: str) -> bytes:
    chunks, left, at = [], length, offset
    try:
        while left:
            chunk = os.pread(fd, min(left, 1 << 26), at)
            if not chunk:
                raise InputError(f"{where}: external data file {target.name!r} ended early")
            chunks.append(chunk)
            left -= len(chunk)
            at += len(chunk)
    except OSError as e:
        raise InputError(f"{where}: cannot read external data file {target.name!r} ({e.strerror})") from None
    return b"".join(chunks)


def _memory_size() -> int | None:
    """This machine's memory, or the container's limit when that is lower (None when unknown)."""
    sizes = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(ValueError, OSError):
            sizes.append(int(Path(limit).read_text().strip()))
    sizes = [s for s in sizes if 0 < s < 1 << 60]
    return min(sizes) if sizes else None


def external_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a model's tensors name as external data, without reading the model's weights.

    For checks made before any work (the report may not replace one of them). A model that cannot
    be read gives no names; loading it later says why.
    """
    p = Path(path)
    fmt = onnx.serialization.registry.get_format_from_file_extension(p.suffix) or "protobuf"
    try:
        if fmt == "protobuf":
            with _open_regular(p, "an ONNX file") as (fd, size):
                if not 0 < size <= PROTOBUF_MAX or _framing_problem(fd, size) or not _contains(fd, size, b"location"):
                    return []  # most models have no external data: found out in bounded memory
                data = _read_all(fd, size)
            locations = _external_locations(data)
        else:
            model = _read_model(p, fmt)[0]
            locations = [e.value for t in all_tensors(model) for e in t.external_data if e.key == "location"]
    except (InputError, OSError, ValueError, IndexError, RecursionError):
        return []
    folder = p.parent.resolve()
    found = []
    for location in locations:
        with contextlib.suppress(InputError):
            found.append(_safe_location(location, folder, str(p)))
    return found


def _contains(fd: int, size: int, needle: bytes, chunk: int = 1 << 26) -> bool:
    at, tail = 0, b""
    while at < size:
        block = tail + os.pread(fd, chunk, at)
        if needle in block:
            return True
        tail, at = block[-len(needle) + 1 :], at + chunk
    return False


def _external_locations(buf: bytes) -> list[str]:
    """Every external_data ``location`` in a serialized ModelProto, found by walking its wire format."""
    found: list[str] = []

    def tensor(start: int, end: int) -> None:
        for number, s, e in wire.fields(buf, start, end):
            if number == 13:  # TensorProto.external_data: StringStringEntryProto {key = 1, value = 2}
                entry = {n: bytes(buf[a:b]) for n, a, b in wire.fields(buf, s, e)}
                if entry.get(1) == b"location" and 2 in entry:
                    found.append(entry[2].decode("utf-8", "surrogateescape"))

    def sparse(start: int, end: int) -> None:
        for number, s, e in wire.fields(buf, start, end):
            if number in (1, 2):  # values, indices
                tensor(s, e)

    def nodes(start: int, end: int, field: int, depth: int) -> None:
        for number, s, e in wire.fields(buf, start, end):
            if number != field:
                continue
            for n, a, b in wire.fields(buf, s, e):
                if n == 5:  # NodeProto.attribute
                    attribute(a, b, depth)

    def attribute(start: int, end: int, depth: int) -> None:
        for number, s, e in wire.fields(buf, start, end):
            if number in (5, 10):  # t, tensors
                tensor(s, e)
            elif number in (6, 11):  # g, graphs
                graph(s, e, depth + 1)
            elif number in (22, 23):  # sparse_tensor, sparse_tensors
                sparse(s, e)

    def graph(start: int, end: int, depth: int) -> None:
        if depth > 64:
            raise ValueError("graphs nested too deeply")
        nodes(start, end, 1, depth)  # GraphProto.node
        for number, s, e in wire.fields(buf, start, end):
            if number == 5:  # initializer
                tensor(s, e)
            elif number == 15:  # sparse_initializer
                sparse(s, e)

    for number, s, e in wire.fields(buf, 0, len(buf)):
        if number == wire.MODEL_GRAPH:
            graph(s, e, 0)
        elif number == 25:  # ModelProto.functions: FunctionProto.node = 7
            nodes(s, e, 7, 0)
    return found


# ---------------------------------------------------------------------------------------------
# --inputs: arrays from an .npz archive, checked from its directory and headers before loading


def load_arrays(path: str | os.PathLike[str], max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, keyed by name; at most ``max_bytes`` of them.

    Sizes come from the zip directory and each ``.npy`` header, checked before anything is
    decompressed: a header that declares more data than its member holds (a header bomb) or
    members that together exceed ``max_bytes`` (a zip bomb) are refused.
    """
    p = Path(path)
    with _open_regular(p, "an .npz file", "cannot read input arrays ({})") as (fd, size), open(fd, "rb", closefd=False) as f:
        if size == 0:
            raise InputError(f"{p}: cannot read input arrays (the file is empty)")
        if os.pread(fd, 6, 0) == b"\x93NUMPY":
            raise InputError(
                f"{p}: is a single .npy array; --inputs takes an .npz archive keyed by input name (numpy.savez(path, x=array))"
            )
        return _load_npz(f, p, max_bytes)


def _load_npz(f: io.BufferedReader, p: Path, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(f) as archive:
            members = archive.infolist()
            if len(members) > 10_000:
                raise InputError(f"{p}: holds {len(members)} arrays; the model cannot have that many inputs")
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:
                raise InputError(
                    f"{p}: its arrays hold {_size(declared)}, more than the memory budget ({_size(max_bytes)}; see --max-memory)"
                )
            for m in members:
                _check_npy_member(archive, m, p)
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, KeyError) as e:
        raise InputError(f"{p}: cannot read input arrays ({_message(e)})") from e


def _check_npy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, p: Path) -> None:
    name = member.filename
    with archive.open(member) as f:
        head = f.read(min(member.file_size, 1 << 16))
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read_header(stream)
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises many types on hostile bytes (tokenize.TokenError too)
        raise InputError(f"{p}: member {name!r} is not a .npy array ({_message(e)})") from e
    if any(d < 0 for d in shape):
        raise InputError(f"{p}: array {name!r} declares a negative dim {list(shape)}")
    if dtype.hasobject:
        raise InputError(f"{p}: array {name!r} holds Python objects, which are not loaded (they would run code)")
    nbytes = math.prod(shape) * dtype.itemsize
    held = member.file_size - stream.tell()
    if nbytes != held:
        raise InputError(f"{p}: array {name!r} declares shape {list(shape)} ({_size(nbytes)}) but holds {_size(max(held, 0))}")


# ---------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _message(e: BaseException) -> str:
    """The library's message on one line, trimmed (onnx's checker spreads one error over several lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# GraphProto's fields in onnx.proto read by model_interface.
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _TENSOR_NAME = 5, 11, 12, 8


def model_interface(path: Path) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]] | None:
    """The declared inputs (those without an initializer behind them) and outputs of the ONNX file at
    ``path``, read from its wire format: its weights are neither parsed nor copied. None if unreadable."""
    fmt = onnx.serialization.registry.get_format_from_file_extension(path.suffix) or "protobuf"
    if fmt != "protobuf":
        return None
    inputs: list[onnx.ValueInfoProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    weights: set[bytes] = set()
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, start, end in wire.fields(buf, 0, len(buf)):
                if number != wire.MODEL_GRAPH:
                    continue
                for field, a, b in wire.fields(buf, start, end):
                    if field in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                        (inputs if field == _GRAPH_INPUT else outputs).append(onnx.ValueInfoProto.FromString(buf[a:b]))
                    elif field == _GRAPH_INITIALIZER:
                        weights.update(bytes(buf[x:y]) for n, x, y in wire.fields(buf, a, b) if n == _TENSOR_NAME)
    except (OSError, ValueError, IndexError, DecodeError):
        return None
    return [v for v in inputs if v.name.encode() not in weights], outputs


def model_bytes(path: Path) -> tuple[int, bool] | None:
    """The bytes of a model file and its external data files, and whether it has any."""
    try:
        data = {p.resolve() for p in external_data_files(path)}
        return sum(p.stat().st_size for p in {path.resolve(), *data}), bool(data)
    except OSError:
        return None
