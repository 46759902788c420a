"""Static audit of a SavedModel: which TensorFlow ops can run when it is loaded and called, read without TensorFlow.

A SavedModel is a program. ``tf.saved_model.load`` runs some of its functions (resource creators
and initializers, checkpoint restore functions, the init op) and the signature call runs others; any
of them may hold ``WriteFile``, ``PyFunc`` or ``PrintV2``. Before TensorFlow sees the folder we walk
``saved_model.pb``'s protobuf wire format ourselves and collect every op reachable from what loading
and calling can start:

- every function the object graph names (functions and concrete functions of every object, among
  them resources' ``_create_resource`` / ``_initialize`` / ``_destroy_resource`` and the
  save/restore functions of saveable objects, and functions behind captured tensors): anything the
  loaded object exposes, whether or not this conversion calls it;
- in the graph: the tensors of every signature and asset, the saver's restore op, constants the
  object graph names, and every op collection (the TF1 init ops ``saved_model_main_op`` and
  ``legacy_init_op`` among them), with everything they read, data or control;
- from there, every function a reached node calls: by op name, or through any ``func`` or
  ``list(func)`` attribute, nested attributes included (``PartitionedCall``'s ``f``, ``If`` and
  ``While`` branches, ``Case``'s ``branches``, ...), and those a reached function's own attributes,
  argument attributes and signature defaults name; a reached function contributes all its nodes.

Functions are followed by reachability, never by name (a model's author chooses the names), so the
saver's ``__inference__traced_save_*`` with its ``SaveV2``, which only a save would run, is not
counted while the same op anywhere reachable is. Every meta graph and every signature is audited,
whatever ``--tag`` and ``--signature`` choose. The walk follows protobuf's parsing rules where they
matter (the last value of a singular field wins; repeated occurrences of a singular message merge),
so it sees what TensorFlow will see. Anything it cannot parse is an error, not a pass, and so are
what TensorFlow would refuse too: strings that are not UTF-8, messages nested deeper than protobuf
allows, two graph nodes with one name. Its work is bounded by a budget of fields read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from converter.frontends.allowlist import ALLOWED_OPS
from converter.graph.wire import read_varint

# Field numbers, from tensorflow/core/protobuf/{saved_model,meta_graph,saver,saved_object_graph}.proto
# and tensorflow/core/framework/{graph,function,node_def,attr_value,op_def}.proto.
SAVED_MODEL_META_GRAPHS = 2
META_GRAPH_DEF, META_SAVER, META_COLLECTIONS, META_SIGNATURES, META_ASSETS, META_OBJECT_GRAPH = 2, 3, 4, 5, 6, 7
GRAPH_NODE, GRAPH_LIBRARY = 1, 2
LIBRARY_FUNCTION = 1
FUNCTION_SIGNATURE, FUNCTION_NODE, FUNCTION_ATTR, FUNCTION_ARG_ATTR = 1, 3, 5, 7
OPDEF_NAME, OPDEF_ATTR = 1, 4
ATTRDEF_DEFAULT, ATTRDEF_ALLOWED = 3, 4
ARG_ATTRS_ATTR = 1
NODE_NAME, NODE_OP, NODE_INPUT, NODE_ATTR = 1, 2, 3, 5
MAP_VALUE = 2  # map entries: key 1, value 2
ATTR_LIST, ATTR_FUNC = 1, 10
LIST_FUNC = 9
NAME_ATTR_LIST_NAME, NAME_ATTR_LIST_ATTR = 1, 2
SIGNATURE_INPUTS, SIGNATURE_OUTPUTS = 1, 2
TENSOR_INFO_NAME, TENSOR_INFO_COO, TENSOR_INFO_COMPOSITE = 1, 4, 5
COMPOSITE_COMPONENTS = 2
ASSET_TENSOR_INFO = 1
SAVER_RESTORE_OP = 3
COLLECTION_NODE_LIST, NODE_LIST_VALUE = 1, 1
OBJECT_GRAPH_NODES = 1
OBJECT_FUNCTION, OBJECT_BARE_FUNCTION, OBJECT_CONSTANT, OBJECT_CAPTURED_TENSOR = 6, 8, 9, 12
FUNCTION_CONCRETE_FUNCTIONS = 1
BARE_FUNCTION_NAME = 1
CONSTANT_OPERATION = 1
CAPTURED_TENSOR_FUNCTION = 2

# protobuf's own default recursion limit; TensorFlow refuses deeper messages, so we may too.
MAX_DEPTH = 100
# Fields read, all passes together: the audit's time and memory stay bounded whatever the file holds.
# ConvNeXtTiny's 1.6 MB saved_model.pb takes about 70,000; this many takes two or three seconds.
MAX_FIELDS = 10_000_000
GRAPH = "the graph"  # where a top-level node is, in reports

Span = tuple[int, int]
Message = list[Span]  # a singular message field that occurs more than once is all its occurrences, merged


class CorruptSavedModel(ValueError):
    """saved_model.pb is not a SavedModel this audit can read (TensorFlow would fail on it, or might misread it)."""


@dataclass
class Audit:
    """What loading and calling the SavedModel can run: each op with the places it is in."""

    ops: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # op -> function names or GRAPH
    functions: set[str] = field(default_factory=set)  # the reachable functions

    @property
    def refused(self) -> dict[str, list[str]]:
        """The ops outside the allowlist, each with the sorted places it is in."""
        return {op: sorted(where) for op, where in sorted(self.ops.items()) if op not in ALLOWED_OPS}

    def describe_refused(self, limit: int = 5) -> str:
        """``WriteFile (in f), PrintV2 (in g and 2 more)``: printable whatever names the model chose."""
        parts = []
        for op, where in list(self.refused.items())[:limit]:
            more = f" and {len(where) - 1} more" if len(where) > 1 else ""
            parts.append(f"{printable(op) or '(an op without a name)'} (in {printable(where[0])}{more})")
        extra = len(self.refused) - limit
        return ", ".join(parts) + (f", and {extra} more ops" if extra > 0 else "")


def audit_saved_model(data: bytes) -> Audit:
    """Audit the bytes of a ``saved_model.pb``; raises CorruptSavedModel if they are not one."""
    wire = _Wire(data)
    audit = Audit()
    try:
        meta_graphs = wire.occurrences([(0, len(data))], SAVED_MODEL_META_GRAPHS)
        if not meta_graphs:
            raise CorruptSavedModel("no meta graph")
        for meta_graph in meta_graphs:
            _audit_meta_graph(wire, [meta_graph], audit)
    except CorruptSavedModel:
        raise
    except (ValueError, IndexError) as e:  # bytes that are not protobuf
        raise CorruptSavedModel("malformed protobuf") from e
    return audit


def _audit_meta_graph(wire: _Wire, meta_graph: Message, audit: Audit) -> None:
    meta = wire.parse(meta_graph, (META_GRAPH_DEF, META_SAVER, META_COLLECTIONS, META_SIGNATURES, META_ASSETS, META_OBJECT_GRAPH))
    graph = wire.parse(meta[META_GRAPH_DEF], (GRAPH_NODE, GRAPH_LIBRARY))
    functions: dict[str, list[Span]] = defaultdict(list)  # every definition of a name counts
    for fdef in wire.occurrences(graph[GRAPH_LIBRARY], LIBRARY_FUNCTION):
        name = wire.last_string(wire.occurrences([fdef], FUNCTION_SIGNATURE), OPDEF_NAME)
        if name:  # a function without a name cannot be called
            functions[name].append(fdef)
    nodes: dict[str, Span] = {}
    for node in graph[GRAPH_NODE]:
        name = wire.last_string([node], NODE_NAME) or ""
        if name in nodes:  # TensorFlow refuses to import such a graph
            raise CorruptSavedModel(f"two graph nodes named {printable(name)!r}")
        nodes[name] = node

    pending_nodes = [_node_name(t) for t in _root_tensors(wire, meta)]
    pending_functions = list(_object_graph_functions(wire, meta[META_OBJECT_GRAPH], pending_nodes))
    reached_nodes: set[str] = set()

    def visit(node: Span, where: str) -> Message:
        """Count the node's op (or follow its call) and the functions its attributes name; return its inputs."""
        parts = wire.parse([node], (NODE_OP, NODE_INPUT, NODE_ATTR))
        op = wire.text(parts[NODE_OP][-1]) if parts[NODE_OP] else ""
        if op in functions:
            pending_functions.append(op)
        else:
            audit.ops[op].add(where)
        for attr in wire.map_values(parts[NODE_ATTR]):
            pending_functions.extend(_attr_functions(wire, attr))
        return parts[NODE_INPUT]

    while pending_nodes or pending_functions:
        while pending_nodes:
            name = pending_nodes.pop()
            if name in reached_nodes:
                continue
            reached_nodes.add(name)
            if name in nodes:
                pending_nodes.extend(_node_name(wire.text(i)) for i in visit(nodes[name], GRAPH))
        while pending_functions:
            name = pending_functions.pop()
            if name in audit.functions:
                continue
            audit.functions.add(name)
            for fdef in functions.get(name, ()):
                parts = wire.parse([fdef], (FUNCTION_SIGNATURE, FUNCTION_NODE, FUNCTION_ATTR, FUNCTION_ARG_ATTR))
                for attr in _function_attrs(wire, parts):
                    pending_functions.extend(_attr_functions(wire, attr))
                for node in parts[FUNCTION_NODE]:
                    visit(node, name)


def _function_attrs(wire: _Wire, fdef: dict[int, Message]) -> Iterator[Message]:
    """Every AttrValue a FunctionDef holds outside its nodes: its attrs, its arguments' attrs, and
    its signature's attr defaults and allowed values (a default can name the function a call gets)."""
    yield from wire.map_values(fdef[FUNCTION_ATTR])
    for arg_attrs in wire.map_values(fdef[FUNCTION_ARG_ATTR]):
        yield from wire.map_values(wire.occurrences(arg_attrs, ARG_ATTRS_ATTR))
    for attr_def in wire.occurrences(fdef[FUNCTION_SIGNATURE], OPDEF_ATTR):
        parts = wire.parse([attr_def], (ATTRDEF_DEFAULT, ATTRDEF_ALLOWED))
        yield from ([span] for span in parts[ATTRDEF_DEFAULT] + parts[ATTRDEF_ALLOWED])


def _root_tensors(wire: _Wire, meta: dict[int, Message]) -> Iterator[str]:
    """Graph tensors and ops that loading or calling starts from (signatures, assets, restore, collections)."""
    for signature in wire.map_values(meta[META_SIGNATURES]):
        for number in (SIGNATURE_INPUTS, SIGNATURE_OUTPUTS):
            for info in wire.map_values(wire.occurrences(signature, number)):
                yield from _tensor_info_names(wire, info)
    for asset in meta[META_ASSETS]:
        yield from _tensor_info_names(wire, wire.occurrences([asset], ASSET_TENSOR_INFO))
    restore = wire.last_string(meta[META_SAVER], SAVER_RESTORE_OP)
    if restore:
        yield restore
    for collection in wire.map_values(meta[META_COLLECTIONS]):
        yield from wire.strings(wire.occurrences(collection, COLLECTION_NODE_LIST), NODE_LIST_VALUE)


def _tensor_info_names(wire: _Wire, info: Message) -> Iterator[str]:
    stack = [(info, 0)]
    while stack:
        info, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CorruptSavedModel("tensor info nested too deeply")
        parts = wire.parse(info, (TENSOR_INFO_NAME, TENSOR_INFO_COO, TENSOR_INFO_COMPOSITE))
        if parts[TENSOR_INFO_NAME]:
            yield wire.text(parts[TENSOR_INFO_NAME][-1])
        for number in (1, 2, 3):  # CooSparse: values, indices and dense shape tensor names
            name = wire.last_string(parts[TENSOR_INFO_COO], number)
            if name:
                yield name
        stack.extend(([c], depth + 1) for c in wire.occurrences(parts[TENSOR_INFO_COMPOSITE], COMPOSITE_COMPONENTS))


def _object_graph_functions(wire: _Wire, objects: Message, root_nodes: list[str]) -> Iterator[str]:
    """Every function any object names; the graph ops of saved constants go to ``root_nodes``."""
    kinds = (OBJECT_FUNCTION, OBJECT_BARE_FUNCTION, OBJECT_CONSTANT, OBJECT_CAPTURED_TENSOR)
    for obj in wire.occurrences(objects, OBJECT_GRAPH_NODES):
        parts = wire.parse([obj], kinds)
        yield from wire.strings(parts[OBJECT_FUNCTION], FUNCTION_CONCRETE_FUNCTIONS)
        for number, name_field in ((OBJECT_BARE_FUNCTION, BARE_FUNCTION_NAME), (OBJECT_CAPTURED_TENSOR, CAPTURED_TENSOR_FUNCTION)):
            name = wire.last_string(parts[number], name_field)
            if name:
                yield name
        constant = wire.last_string(parts[OBJECT_CONSTANT], CONSTANT_OPERATION)
        if constant:
            root_nodes.append(_node_name(constant))


def _attr_functions(wire: _Wire, attr: Message) -> Iterator[str]:
    """Names of the functions an AttrValue refers to: ``func``, ``list(func)``, and those nested in their attrs."""
    stack = [(attr, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CorruptSavedModel("attributes nested too deeply")
        parts = wire.parse(value, (ATTR_FUNC, ATTR_LIST))
        for call in parts[ATTR_FUNC] + wire.occurrences(parts[ATTR_LIST], LIST_FUNC):
            name = wire.last_string([call], NAME_ATTR_LIST_NAME)
            if name:
                yield name
            stack.extend((nested, depth + 1) for nested in wire.map_values(wire.occurrences([call], NAME_ATTR_LIST_ATTR)))


def _node_name(tensor: str) -> str:
    """``^op``, ``op:1`` and ``op`` all name the op ``op``."""
    return tensor.lstrip("^").split(":", 1)[0]


class _Wire:
    """Reads length-delimited fields out of one protobuf buffer, within a budget of fields.

    Where protobuf's parsing rules matter it follows them: a singular field that occurs more than
    once keeps its last value, a singular message field that occurs more than once is the merge of
    all its occurrences (a Message is the list of them). Map entries with the same key are all
    kept, which is stricter than protobuf (the last wins), never looser.
    """

    def __init__(self, data: bytes) -> None:
        self.buf = data
        self.budget = MAX_FIELDS

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(number, start, end) of each length-delimited field of the message in ``buf[start:end]``.

        converter.wire.fields with a fast path for one-byte varints, strict about the message's
        end (a value running past it is an error, as in protobuf) and refusing groups, which no
        TensorFlow proto uses.
        """
        buf, at = self.buf, start
        while at < end:
            self.budget -= 1
            if self.budget < 0:
                raise CorruptSavedModel(f"more than {MAX_FIELDS} protobuf fields to read")
            key = buf[at]
            if key < 0x80:
                at += 1
            else:
                key, at = read_varint(buf, at)
            wire_type = key & 7
            if wire_type == 2:
                size = buf[at]
                if size < 0x80:
                    at += 1
                else:
                    size, at = read_varint(buf, at)
                if at + size > end:
                    raise ValueError("field runs past its message")
                yield key >> 3, at, at + size
                at += size
            elif wire_type == 0:
                while buf[at] & 0x80:
                    at += 1
                at += 1
            elif wire_type in (1, 5):
                at += 8 if wire_type == 1 else 4
            else:
                raise ValueError(f"wire type {wire_type}")
        if at != end:
            raise ValueError("value runs past its message")

    def parse(self, message: Iterable[Span], numbers: tuple[int, ...]) -> dict[int, Message]:
        """The occurrences of several fields, in one pass over the message."""
        out: dict[int, Message] = {n: [] for n in numbers}
        for start, end in message:
            for n, s, e in self.fields(start, end):
                if n in out:
                    out[n].append((s, e))
        return out

    def occurrences(self, message: Iterable[Span], number: int) -> Message:
        return self.parse(message, (number,))[number]

    def strings(self, message: Iterable[Span], number: int) -> Iterator[str]:
        return (self.text(span) for span in self.occurrences(message, number))

    def last_string(self, message: Iterable[Span], number: int) -> str | None:
        spans = self.occurrences(message, number)
        return self.text(spans[-1]) if spans else None

    def map_values(self, entries: Message) -> Iterator[Message]:
        """The value of every entry of a map field, given the field's occurrences."""
        return (self.occurrences([entry], MAP_VALUE) for entry in entries)

    def text(self, span: Span) -> str:
        """A string field. TensorFlow's protos are proto3: a string that is not UTF-8 fails their parse."""
        try:
            return self.buf[span[0] : span[1]].decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptSavedModel("a string field that is not UTF-8") from None


def printable(name: str, limit: int = 80) -> str:
    """A model-chosen name made safe for one terminal line: no control characters, bounded length."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in name)
    return out if len(out) <= limit else out[: limit - 3] + "..."
