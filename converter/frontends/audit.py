"""Static audit of a SavedModel: every TensorFlow op it holds, read without TensorFlow, checked against the allowlist.

A SavedModel is a program, and more of it can run than what looks reachable: loading runs resource
initializers, restore functions and init ops, TensorFlow 1's loader runs the initializers of the
variables in the ``local_variables`` collection (serialized VariableDefs, not node lists), and
grappler's implementation selector swaps a called function for another one that carries the same
``api_implements`` attribute and nothing calls. So the audit does not decide what can run: it reads
``saved_model.pb``'s protobuf wire format itself and checks **every node of every graph and every
function in every library** against the allowlist (allowlist.py), called or not, whatever its name.

Three ops read or write by path and stay allowed, because every SavedModel's saver holds them:
``RestoreV2``, ``SaveV2`` and ``MergeV2Checkpoints``. tf2onnx constant-folds a ``RestoreV2`` by
running it, so a prefix from a constant is a read anywhere on disk (or a connection, for
``gs://...``). They pass only when their path is confined:

- the path is the loader's own variables prefix: the saver's filename tensor
  (``saver_def.filename_tensor_name``, a placeholder the loader feeds with the model's variables
  path; unfed, its default must be a plain relative name), or a function argument that every call
  of the function feeds with such a prefix, in a function nothing else names (no object, attribute,
  gradient or ``api_implements`` can run it with another value); through ``Identity``,
  ``ShardedFilename``, ``Pack``, and ``StringJoin`` that appends constants without ``..``, ``\\``,
  NUL or a URL scheme;
- ``SaveV2`` and ``MergeV2Checkpoints`` moreover sit where only a save runs them: nothing loading
  or calling starts from reaches them. Reachability is followed as before: from the object graph's
  functions, the signatures' and assets' tensors, the saver's restore op, and every collection (node
  lists, and the names in serialized VariableDefs and SaverDefs), through calls by op name and
  every ``func`` / ``list(func)`` attribute, nested ones included, the functions' own attributes,
  and from one function to every function sharing its ``api_implements``.

Asset file names must stay inside the model's assets folder. Every meta graph and every signature
is audited, whatever ``--tag`` and ``--signature`` choose. The walk follows protobuf's parsing rules
where they matter (the last value of a singular field wins; repeated occurrences of a singular
message merge), so it sees what TensorFlow will see. Anything it cannot parse is an error, not a
pass, and so are what TensorFlow would refuse too: strings that are not UTF-8, messages nested
deeper than protobuf allows, two nodes with one name. Its work is bounded by a budget of fields read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from converter.frontends.allowlist import ALLOWED_OPS, PATH_INPUTS, WRITE_OPS
from converter.graph.wire import read_varint

# Field numbers, from tensorflow/core/protobuf/{saved_model,meta_graph,saver,saved_object_graph}.proto
# and tensorflow/core/framework/{graph,function,node_def,attr_value,op_def,tensor,variable}.proto.
SAVED_MODEL_META_GRAPHS = 2
META_GRAPH_DEF, META_SAVER, META_COLLECTIONS, META_SIGNATURES, META_ASSETS, META_OBJECT_GRAPH = 2, 3, 4, 5, 6, 7
GRAPH_NODE, GRAPH_LIBRARY = 1, 2
LIBRARY_FUNCTION, LIBRARY_GRADIENT, LIBRARY_REGISTERED_GRADIENT = 1, 2, 3
GRADIENT_FUNCTION, GRADIENT_GRADIENT = 1, 2
REGISTERED_GRADIENT_FUNCTION = 1
FUNCTION_SIGNATURE, FUNCTION_NODE, FUNCTION_ATTR, FUNCTION_ARG_ATTR = 1, 3, 5, 7
OPDEF_NAME, OPDEF_INPUT_ARG, OPDEF_ATTR = 1, 2, 4
ARGDEF_NAME, ARGDEF_NUMBER_ATTR, ARGDEF_TYPE_LIST_ATTR = 1, 5, 6
ATTRDEF_DEFAULT, ATTRDEF_ALLOWED = 3, 4
ARG_ATTRS_ATTR = 1
NODE_NAME, NODE_OP, NODE_INPUT, NODE_ATTR = 1, 2, 3, 5
MAP_KEY, MAP_VALUE = 1, 2
ATTR_LIST, ATTR_S, ATTR_TENSOR, ATTR_FUNC = 1, 2, 8, 10
LIST_FUNC = 9
NAME_ATTR_LIST_NAME, NAME_ATTR_LIST_ATTR = 1, 2
TENSOR_CONTENT, TENSOR_STRING_VAL = 4, 8
SIGNATURE_INPUTS, SIGNATURE_OUTPUTS = 1, 2
TENSOR_INFO_NAME, TENSOR_INFO_COO, TENSOR_INFO_COMPOSITE = 1, 4, 5
COMPOSITE_COMPONENTS = 2
ASSET_TENSOR_INFO, ASSET_FILENAME = 1, 2
SAVER_FILENAME_TENSOR, SAVER_SAVE_TENSOR, SAVER_RESTORE_OP = 1, 2, 3
COLLECTION_NODE_LIST, COLLECTION_BYTES_LIST, COLLECTION_ANY_LIST = 1, 2, 5
LIST_VALUE, ANY_VALUE = 1, 2
# VariableDef's variable_name, initializer_name, snapshot_name and initial_value_name: the ops
# TensorFlow 1's loader runs to initialize a local variable.
VARIABLE_DEF_NAMES = (1, 2, 3, 6)
OBJECT_GRAPH_NODES = 1
OBJECT_FUNCTION, OBJECT_BARE_FUNCTION, OBJECT_CONSTANT, OBJECT_CAPTURED_TENSOR = 6, 8, 9, 12
FUNCTION_CONCRETE_FUNCTIONS = 1
BARE_FUNCTION_NAME = 1
CONSTANT_OPERATION = 1
CAPTURED_TENSOR_FUNCTION = 2

CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
SAVERS_COLLECTION = "savers"  # SaverDefs: their save tensor is what only a save runs
API_IMPLEMENTS = "api_implements"

# protobuf's own default recursion limit; TensorFlow refuses deeper messages, so we may too.
MAX_DEPTH = 100
# Fields read, all passes together: the audit's time and memory stay bounded whatever the file holds.
# ConvNeXtTiny's 1.6 MB saved_model.pb takes about 200,000; this many takes a few seconds.
MAX_FIELDS = 10_000_000
GRAPH = "the graph"  # where a top-level node is, in reports

# What the refusal says for a path op that is not confined (the op's name is put in front).
UNCONFINED_PATH = "on a path other than the model's own variables"
RUN_BY_LOADING = "that loading or calling can run"
ASSET_OUTSIDE = "an asset file outside the model's assets folder"

Span = tuple[int, int]
Message = list[Span]  # a singular message field that occurs more than once is all its occurrences, merged


class CorruptSavedModel(ValueError):
    """saved_model.pb is not a SavedModel this audit can read (TensorFlow would fail on it, or might misread it)."""


@dataclass
class Audit:
    """What the SavedModel holds: every op with the places it is in, and the path ops that are not confined."""

    ops: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # op -> function names or GRAPH
    functions: set[str] = field(default_factory=set)  # the functions loading or calling can reach
    unconfined: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # "RestoreV2 on a path ..." -> places

    @property
    def refused(self) -> dict[str, list[str]]:
        """The ops outside the allowlist and the unconfined path ops, each with the sorted places it is in."""
        out = {op: sorted(where) for op, where in self.ops.items() if op not in ALLOWED_OPS}
        out.update((what, sorted(where)) for what, where in self.unconfined.items())
        return dict(sorted(out.items()))

    def describe_refused(self, limit: int = 5) -> str:
        """``WriteFile (in f), PrintV2 (in g and 2 more)``: printable whatever names the model chose."""
        parts = []
        for op, where in list(self.refused.items())[:limit]:
            more = f" and {len(where) - 1} more" if len(where) > 1 else ""
            parts.append(f"{printable(op) or '(an op without a name)'} (in {printable(where[0])}{more})")
        extra = len(self.refused) - limit
        return ", ".join(parts) + (f", and {extra} more ops" if extra > 0 else "")


def audit_saved_model(data: bytes) -> Audit:
    """Audit the bytes of a ``saved_model.pb``; raises CorruptSavedModel if they are not one.

    Args:
        data: the file's bytes, exactly as TensorFlow will read them.
    """
    wire = _Wire(data)
    audit = Audit()
    try:
        meta_graphs = wire.occurrences([(0, len(data))], SAVED_MODEL_META_GRAPHS)
        if not meta_graphs:
            raise CorruptSavedModel("no meta graph")
        for meta_graph in meta_graphs:
            _Program(wire, [meta_graph]).audit(audit)
    except CorruptSavedModel:
        raise
    except (ValueError, IndexError) as e:  # bytes that are not protobuf
        raise CorruptSavedModel("malformed protobuf") from e
    return audit


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]  # data inputs, in order
    controls: list[str]  # control inputs (``^x``)
    attrs: dict[str, list[Message]]  # every entry of the attr map: a repeated key keeps all its values


@dataclass
class _Scope:
    """A graph or one function definition: its nodes by name, and for a function its argument names."""

    name: str  # GRAPH or the function's name
    nodes: dict[str, _Node]
    args: list[str] | None = None  # None: the graph, or a function with list arguments (calls do not map positions)
    implements: str | None = None  # the function's api_implements
    attr_values: list[Message] = field(default_factory=list)  # AttrValues outside its nodes


class _Program:
    """One meta graph, parsed: its graph, its function library, and what names what."""

    def __init__(self, wire: _Wire, meta_graph: Message) -> None:
        self.wire = wire
        self.meta = wire.parse(
            meta_graph, (META_GRAPH_DEF, META_SAVER, META_COLLECTIONS, META_SIGNATURES, META_ASSETS, META_OBJECT_GRAPH)
        )
        graph = wire.parse(self.meta[META_GRAPH_DEF], (GRAPH_NODE, GRAPH_LIBRARY))
        self.graph = _Scope(GRAPH, self._nodes(graph[GRAPH_NODE], "graph"))
        library = wire.parse(graph[GRAPH_LIBRARY], (LIBRARY_FUNCTION, LIBRARY_GRADIENT, LIBRARY_REGISTERED_GRADIENT))
        self.functions: dict[str, list[_Scope]] = defaultdict(list)  # every definition of a name counts
        for fdef in library[LIBRARY_FUNCTION]:
            function = self._function(fdef)
            self.functions[function.name].append(function)
        self.scopes = [self.graph, *(f for defs in self.functions.values() for f in defs)]
        # Functions named anywhere but as the target of a plain call: these may run with any argument.
        self.named: set[str] = set()
        self.callsites: dict[str, list[tuple[_Scope, _Node]]] = defaultdict(list)
        self._index_references(library)
        self.implementers: dict[str, set[str]] = defaultdict(set)
        for scope in self.scopes[1:]:
            if scope.implements is not None:
                self.implementers[scope.implements].add(scope.name)
        self._arg_memo: dict[tuple[int, int], bool] = {}
        self._arg_visiting: set[tuple[int, int]] = set()
        # The saver's filename tensor: the placeholder the loader feeds with the variables prefix.
        filename = wire.last_string(self.meta[META_SAVER], SAVER_FILENAME_TENSOR)
        self.filename_node = _node_name(filename) if filename else None
        self.filename_ok = self._filename_ok(filename)

    # Parsing ---------------------------------------------------------------------------------

    def _nodes(self, spans: Message, where: str) -> dict[str, _Node]:
        nodes: dict[str, _Node] = {}
        for span in spans:
            node = self._node(span)
            if node.name in nodes:  # TensorFlow refuses to import such a graph or function
                raise CorruptSavedModel(f"two nodes named {printable(node.name)!r} in {printable(where)}")
            nodes[node.name] = node
        return nodes

    def _node(self, span: Span) -> _Node:
        wire = self.wire
        parts = wire.parse([span], (NODE_NAME, NODE_OP, NODE_INPUT, NODE_ATTR))
        name = wire.text(parts[NODE_NAME][-1]) if parts[NODE_NAME] else ""
        op = wire.text(parts[NODE_OP][-1]) if parts[NODE_OP] else ""
        inputs = [wire.text(span) for span in parts[NODE_INPUT]]
        data = [i for i in inputs if not i.startswith("^")]
        return _Node(name, op, data, [i for i in inputs if i.startswith("^")], wire.map_items(parts[NODE_ATTR]))

    def _function(self, fdef: Span) -> _Scope:
        wire = self.wire
        parts = wire.parse([fdef], (FUNCTION_SIGNATURE, FUNCTION_NODE, FUNCTION_ATTR, FUNCTION_ARG_ATTR))
        signature = wire.parse(parts[FUNCTION_SIGNATURE], (OPDEF_NAME, OPDEF_INPUT_ARG, OPDEF_ATTR))
        name = wire.text(signature[OPDEF_NAME][-1]) if signature[OPDEF_NAME] else ""
        if not name:  # a function without a name cannot be called: its ops still count
            name = "(a function without a name)"
        args: list[str] | None = []
        for arg in signature[OPDEF_INPUT_ARG]:
            arg_parts = wire.parse([arg], (ARGDEF_NAME, ARGDEF_NUMBER_ATTR, ARGDEF_TYPE_LIST_ATTR))
            if arg_parts[ARGDEF_NUMBER_ATTR] or arg_parts[ARGDEF_TYPE_LIST_ATTR] or args is None:
                args = None  # a list argument takes several inputs: positions no longer say which
            else:
                args.append(wire.text(arg_parts[ARGDEF_NAME][-1]) if arg_parts[ARGDEF_NAME] else "")
        attrs = wire.map_items(parts[FUNCTION_ATTR])
        attr_values = [value for values in attrs.values() for value in values]
        for arg_attrs in wire.map_values(parts[FUNCTION_ARG_ATTR]):
            attr_values.extend(wire.map_values(wire.occurrences(arg_attrs, ARG_ATTRS_ATTR)))
        for attr_def in signature[OPDEF_ATTR]:  # a default can name the function a call gets
            defaults = wire.parse([attr_def], (ATTRDEF_DEFAULT, ATTRDEF_ALLOWED))
            attr_values.extend([span] for span in defaults[ATTRDEF_DEFAULT] + defaults[ATTRDEF_ALLOWED])
        implements = None
        if API_IMPLEMENTS in attrs:  # any value at all, even an empty one, puts it in a group
            implements = wire.raw(wire.occurrences(attrs[API_IMPLEMENTS][-1], ATTR_S)).decode("utf-8", "replace")
        nodes = self._nodes(parts[FUNCTION_NODE], name)
        return _Scope(name, nodes, args, implements, attr_values)

    def _index_references(self, library: dict[int, Message]) -> None:
        """Who names which function: plain calls (``callsites``) and everything else (``named``)."""
        wire = self.wire
        for scope in self.scopes:
            for node in scope.nodes.values():
                callee = self._callee(node)
                if callee is not None:
                    self.callsites[callee].append((scope, node))
                for key, values in node.attrs.items():
                    for i, value in enumerate(values):
                        names = list(_attr_functions(wire, value))
                        if key == "f" and i == len(values) - 1 and node.op in CALL_OPS and callee in names:
                            names.remove(callee)  # the call's own target; a nested name is still "named"
                        self.named.update(names)
            for value in scope.attr_values:
                self.named.update(_attr_functions(wire, value))
            if scope.implements is not None:
                self.named.add(scope.name)  # the implementation selector may put it in place of another
        for name, defs in self.functions.items():
            if len(defs) > 1:
                self.named.add(name)
        self.named.update(_object_graph_functions(wire, self.meta[META_OBJECT_GRAPH], []))
        for gradient in library[LIBRARY_GRADIENT]:
            self.named.update(wire.strings([gradient], GRADIENT_FUNCTION))
            self.named.update(wire.strings([gradient], GRADIENT_GRADIENT))
        for registered in library[LIBRARY_REGISTERED_GRADIENT]:
            self.named.update(wire.strings([registered], REGISTERED_GRADIENT_FUNCTION))

    def _callee(self, node: _Node) -> str | None:
        """The function a node calls: by op name, or the ``f`` of a PartitionedCall (the last value wins)."""
        if node.op in self.functions:
            return node.op
        if node.op in CALL_OPS and "f" in node.attrs:
            return self.wire.last_string(self.wire.occurrences(node.attrs["f"][-1], ATTR_FUNC), NAME_ATTR_LIST_NAME) or None
        return None

    # The audit ---------------------------------------------------------------------------------

    def audit(self, audit: Audit) -> None:
        """Add every op of this meta graph to ``audit``, with the reachable functions and the unconfined path ops."""
        for scope in self.scopes:
            for node in scope.nodes.values():
                if node.op not in self.functions:
                    audit.ops[node.op].add(scope.name)
        reached_functions: set[str] = set()
        reached_nodes = self._reach(reached_functions)
        audit.functions |= reached_functions
        for scope in self.scopes:
            for node in scope.nodes.values():
                if node.op not in PATH_INPUTS or node.op in self.functions:
                    continue
                positions = PATH_INPUTS[node.op]
                if any(i >= len(node.inputs) or not self._is_prefix(scope, node.inputs[i], 0) for i in positions):
                    audit.unconfined[f"{node.op} {UNCONFINED_PATH}"].add(scope.name)
                reached = node.name in reached_nodes if scope is self.graph else scope.name in reached_functions
                if node.op in WRITE_OPS and reached:
                    audit.unconfined[f"{node.op} {RUN_BY_LOADING}"].add(scope.name)
        for asset in self.meta[META_ASSETS]:
            for name in self.wire.occurrences([asset], ASSET_FILENAME):
                if not _plain_relative(self.wire.raw([name])):
                    audit.unconfined[ASSET_OUTSIDE].add(GRAPH)

    def _reach(self, functions: set[str]) -> set[str]:
        """Add to ``functions`` those loading or calling can reach; return the graph nodes they can reach."""
        wire, nodes = self.wire, self.graph.nodes
        pending_nodes = [_node_name(t) for t in self._root_tensors()]
        pending_functions = list(_object_graph_functions(wire, self.meta[META_OBJECT_GRAPH], pending_nodes))
        reached_nodes: set[str] = set()

        def visit(node: _Node) -> None:
            callee = self._callee(node)
            if callee is not None:
                pending_functions.append(callee)
            for values in node.attrs.values():
                for value in values:
                    pending_functions.extend(_attr_functions(wire, value))

        while pending_nodes or pending_functions:
            while pending_nodes:
                name = pending_nodes.pop()
                if name in reached_nodes or name not in nodes:
                    continue
                reached_nodes.add(name)
                visit(nodes[name])
                pending_nodes.extend(_node_name(i) for i in nodes[name].inputs + nodes[name].controls)
            while pending_functions:
                name = pending_functions.pop()
                if name in functions:
                    continue
                functions.add(name)
                for scope in self.functions.get(name, ()):
                    for value in scope.attr_values:
                        pending_functions.extend(_attr_functions(wire, value))
                    if scope.implements is not None:  # grappler may swap in any function of the same group
                        pending_functions.extend(self.implementers[scope.implements])
                    for node in scope.nodes.values():
                        visit(node)
        return reached_nodes

    def _root_tensors(self) -> Iterator[str]:
        """Graph tensors and ops that loading or calling starts from (signatures, assets, restore, collections)."""
        wire, meta = self.wire, self.meta
        for signature in wire.map_values(meta[META_SIGNATURES]):
            for number in (SIGNATURE_INPUTS, SIGNATURE_OUTPUTS):
                for info in wire.map_values(wire.occurrences(signature, number)):
                    yield from _tensor_info_names(wire, info)
        for asset in meta[META_ASSETS]:
            yield from _tensor_info_names(wire, wire.occurrences([asset], ASSET_TENSOR_INFO))
        restore = wire.last_string(meta[META_SAVER], SAVER_RESTORE_OP)
        if restore:
            yield restore
        for key, collections in wire.map_items(meta[META_COLLECTIONS]).items():
            for collection in collections:
                parts = wire.parse(collection, (COLLECTION_NODE_LIST, COLLECTION_BYTES_LIST, COLLECTION_ANY_LIST))
                yield from wire.strings(parts[COLLECTION_NODE_LIST], LIST_VALUE)
                values = wire.occurrences(parts[COLLECTION_BYTES_LIST], LIST_VALUE)
                values += wire.occurrences(wire.occurrences(parts[COLLECTION_ANY_LIST], LIST_VALUE), ANY_VALUE)
                numbers = (SAVER_FILENAME_TENSOR, SAVER_RESTORE_OP) if key == SAVERS_COLLECTION else VARIABLE_DEF_NAMES
                for value in values:
                    yield from wire.names_in(value, numbers)

    # Path confinement ---------------------------------------------------------------------------

    def _filename_ok(self, tensor: str | None) -> bool:
        """Whether the saver's filename tensor is a placeholder the loader feeds, harmless when it is not fed."""
        if not tensor or _output_index(tensor) != 0:
            return False
        signature_inputs: set[str] = set()
        for signature in self.wire.map_values(self.meta[META_SIGNATURES]):
            for info in self.wire.map_values(self.wire.occurrences(signature, SIGNATURE_INPUTS)):
                signature_inputs.update(_node_name(t) for t in _tensor_info_names(self.wire, info))
        name = _node_name(tensor)
        if name in signature_inputs:  # whoever calls the signature would choose the path
            return False
        for _ in range(MAX_DEPTH):
            node = self.graph.nodes.get(name)
            if node is None:
                return False
            if node.op == "Placeholder":
                return True
            if node.op == "Const":
                strings = self._strings(node)
                return strings is not None and all(_plain_relative(s) for s in strings)
            if node.op != "PlaceholderWithDefault" or not node.inputs or _output_index(node.inputs[0]) != 0:
                return False
            name = _node_name(node.inputs[0])  # its default, used when the loader does not feed it
        return False

    def _is_prefix(self, scope: _Scope, tensor: str, depth: int) -> bool:
        """Whether ``tensor`` in ``scope`` can only hold the loader's variables prefix (extended by safe suffixes)."""
        if depth > MAX_DEPTH:
            return False
        if scope is not self.graph and ":" not in tensor:  # a function argument
            if scope.args is None or tensor not in scope.args:
                return False
            return self._arg_is_prefix(scope, scope.args.index(tensor))
        name = _node_name(tensor)
        if scope is self.graph and name == self.filename_node:
            return self.filename_ok and _output_index(tensor) == 0
        node = scope.nodes.get(name)
        if node is None or not node.inputs:
            return False
        if node.op in ("Identity", "ShardedFilename"):
            return self._is_prefix(scope, node.inputs[0], depth + 1)
        if node.op == "Pack":
            return all(self._is_prefix(scope, i, depth + 1) for i in node.inputs)
        if node.op == "StringJoin":
            separator = (
                self.wire.raw(self.wire.occurrences(node.attrs["separator"][-1], ATTR_S)) if "separator" in node.attrs else b""
            )
            return (
                _safe_suffix(separator)
                and self._is_prefix(scope, node.inputs[0], depth + 1)
                and all(self._is_prefix(scope, i, depth + 1) or self._is_suffix(scope, i, depth + 1) for i in node.inputs[1:])
            )
        return False

    def _is_suffix(self, scope: _Scope, tensor: str, depth: int) -> bool:
        """Whether ``tensor`` is a string constant (or a choice between some) that cannot lead out of a folder."""
        is_argument = scope is not self.graph and ":" not in tensor
        node = None if is_argument else scope.nodes.get(_node_name(tensor))
        if node is None or depth > MAX_DEPTH:
            return False
        if node.op == "Const":
            strings = self._strings(node)
            return strings is not None and all(_safe_suffix(s) for s in strings)
        if node.op == "Identity" and node.inputs:
            return self._is_suffix(scope, node.inputs[0], depth + 1)
        if node.op in ("Select", "SelectV2") and len(node.inputs) == 3:
            return all(self._is_suffix(scope, i, depth + 1) for i in node.inputs[1:])
        return False

    def _arg_is_prefix(self, function: _Scope, index: int) -> bool:
        """Whether every call feeds argument ``index`` with the loader's prefix, and nothing else can call it."""
        key = (id(function), index)
        if key in self._arg_memo:
            return self._arg_memo[key]
        if key in self._arg_visiting:  # a call cycle brings no value from outside it
            return False
        callsites = self.callsites.get(function.name, [])
        if function.name in self.named or not callsites:
            self._arg_memo[key] = False
            return False
        self._arg_visiting.add(key)
        try:
            ok = all(index < len(node.inputs) and self._is_prefix(scope, node.inputs[index], 0) for scope, node in callsites)
        finally:
            self._arg_visiting.discard(key)
        self._arg_memo[key] = ok
        return ok

    def _strings(self, const: _Node) -> list[bytes] | None:
        """A string Const's values (None when they are packed some other way, which strings never are)."""
        if "value" not in const.attrs:
            return None
        tensor = self.wire.occurrences(const.attrs["value"][-1], ATTR_TENSOR)
        parts = self.wire.parse(tensor, (TENSOR_CONTENT, TENSOR_STRING_VAL))
        if parts[TENSOR_CONTENT]:
            return None
        return [self.wire.raw([span]) for span in parts[TENSOR_STRING_VAL]]


def _safe_suffix(text: bytes) -> bool:
    """Appended to a path, it stays below it: no ``..``, no backslash, no NUL, no URL scheme."""
    return b".." not in text and b"\\" not in text and b"\0" not in text and b"://" not in text


def _plain_relative(text: bytes) -> bool:
    """A relative path that stays below the folder it is read in (no absolute path, drive, scheme or ``..``)."""
    return _safe_suffix(text) and not text.startswith((b"/", b"~")) and b":" not in text


def _output_index(tensor: str) -> int:
    """``op:1`` is output 1 of ``op``; ``op`` is output 0 (a graph's tensor names)."""
    _, _, index = tensor.lstrip("^").partition(":")
    return int(index) if index.isdigit() else (0 if not index else -1)


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

        converter.graph.wire.fields with a fast path for one-byte varints, strict about the message's
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

    def map_items(self, entries: Message) -> dict[str, list[Message]]:
        """A map field with string keys: each key with the values of all its entries, in order (the last is protobuf's)."""
        out: dict[str, list[Message]] = defaultdict(list)
        for entry in entries:
            parts = self.parse([entry], (MAP_KEY, MAP_VALUE))
            out[self.text(parts[MAP_KEY][-1]) if parts[MAP_KEY] else ""].append(parts[MAP_VALUE])
        return out

    def names_in(self, value: Span, numbers: tuple[int, ...]) -> Iterator[str]:
        """The graph names a serialized message in a collection holds in fields ``numbers`` (VariableDef's, SaverDef's).

        A value that is not such a message (a collection of something else) names nothing we follow.
        """
        try:
            parts = self.parse([value], numbers)
        except CorruptSavedModel:
            raise
        except (ValueError, IndexError):
            return
        for number in numbers:
            for span in parts[number]:
                try:
                    yield self.buf[span[0] : span[1]].decode("utf-8")
                except UnicodeDecodeError:
                    continue

    def raw(self, message: Message) -> bytes:
        """A bytes field's last value (empty when absent)."""
        return self.buf[message[-1][0] : message[-1][1]] if message else b""

    def text(self, span: Span) -> str:
        """A string field. TensorFlow's protos are proto3: a string that is not UTF-8 fails their parse."""
        try:
            return self.buf[span[0] : span[1]].decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptSavedModel("a string field that is not UTF-8") from None


def printable(name: str, limit: int = 80) -> str:
    """A model-chosen name made safe for one terminal line: no control characters, bounded length.

    Args:
        name: the text the model chose.
        limit: the most characters the result may have.
    """
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in name)
    return out if len(out) <= limit else out[: limit - 3] + "..."
