"""The audit covers the whole program, and confines the saver's path ops: hand-written protobuf bytes, no TensorFlow.

Each SavedModel here is built field by field (the field numbers are TensorFlow's, as audit.py
lists them), starting from the saver every real export carries, in TensorFlow 2's shape (a
``saver_filename`` placeholder the loader feeds, a save and a restore function called with it)
and in TensorFlow 1's (``save/Const``, a placeholder whose default is ``"model"``). Then one thing
changes, and the audit must say exactly what it refuses.
"""

from __future__ import annotations

import pytest

from converter.frontends.audit import ASSET_OUTSIDE, RUN_BY_LOADING, UNCONFINED_PATH, audit_saved_model
from converter.graph.wire import tag, varint

DT_STRING = 7


def ld(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field."""
    data = payload.encode() if isinstance(payload, str) else payload
    return tag(number) + varint(len(data)) + data


def entry(key: str, value: bytes) -> bytes:
    """One map entry's payload (key 1, value 2)."""
    return ld(1, key) + ld(2, value)


def func(name: str) -> bytes:
    """AttrValue{func: NameAttrList{name}}."""
    return ld(10, ld(1, name))


def strings(*values: bytes | str) -> bytes:
    """AttrValue{tensor: TensorProto{dtype: DT_STRING, string_val: values}}."""
    return ld(8, b"\x08" + varint(DT_STRING) + b"".join(ld(8, v) for v in values))


def text(value: bytes | str) -> bytes:
    """AttrValue{s: value}."""
    return ld(2, value)


def node(name: str, op: str, *inputs: str, **attrs: bytes) -> bytes:
    """NodeDef{name, op, input, attr}."""
    return ld(1, name) + ld(2, op) + b"".join(ld(3, i) for i in inputs) + b"".join(ld(5, entry(k, v)) for k, v in attrs.items())


def function(name: str, args: tuple[str, ...], *nodes: bytes, **attrs: bytes) -> bytes:
    """FunctionDef{signature: OpDef{name, input_arg}, node_def, attr}."""
    signature = ld(1, name) + b"".join(ld(2, ld(1, a)) for a in args)
    return ld(1, signature) + b"".join(ld(3, n) for n in nodes) + b"".join(ld(5, entry(k, v)) for k, v in attrs.items())


def call(name: str, callee: str, *inputs: str) -> bytes:
    return node(name, "StatefulPartitionedCall", *inputs, f=func(callee))


def meta_graph(
    nodes: list[bytes],
    functions: list[bytes],
    saver: tuple[str, str, str] | None = None,
    collections: dict[str, bytes] | None = None,
    signature_inputs: tuple[str, ...] = (),
    signature_outputs: tuple[str, ...] = (),
    objects: tuple[str, ...] = (),
    assets: tuple[str, ...] = (),
) -> bytes:
    """MetaGraphDef: the graph (nodes and library), saver, collections, one signature, object functions, assets."""
    library = b"".join(ld(1, f) for f in functions)
    out = ld(2, b"".join(ld(1, n) for n in nodes) + ld(2, library))
    if saver is not None:
        out += ld(3, ld(1, saver[0]) + ld(2, saver[1]) + ld(3, saver[2]))
    for key, collection in (collections or {}).items():
        out += ld(4, entry(key, collection))
    signature = b"".join(ld(1, entry(f"in{i}", ld(1, t))) for i, t in enumerate(signature_inputs))
    signature += b"".join(ld(2, entry(f"out{i}", ld(1, t))) for i, t in enumerate(signature_outputs))
    out += ld(5, entry("serving_default", signature))
    out += b"".join(ld(6, ld(2, a)) for a in assets)
    if objects:
        out += ld(7, b"".join(ld(1, ld(6, ld(1, name))) for name in objects))
    return out


def saved_model(meta: bytes) -> bytes:
    return ld(2, meta)


def refused(meta: bytes) -> dict[str, list[str]]:
    return audit_saved_model(saved_model(meta)).refused


def save_function(
    name: str = "save",
    suffix: bytes = b"_temp/part",
    separator: bytes | None = None,
    destination: str = "file_prefix",
    **attrs: bytes,
) -> bytes:
    """TensorFlow 2's ``__inference__traced_save_N``: shards named from its argument, then merged at it."""
    join = {"separator": text(separator)} if separator is not None else {}
    return function(
        name,
        ("file_prefix", "v"),
        node("match", "StaticRegexFullMatch", "file_prefix"),
        node("part", "Const", value=strings(".part")),
        node("temp", "Const", value=strings(suffix)),
        node("select", "Select", "match:output:0", "part:output:0", "temp:output:0"),
        node("join", "StringJoin", "file_prefix", "select:output:0", **join),
        node("shard", "Const"),
        node("shards", "ShardedFilename", "join:output:0", "shard:output:0", "shard:output:0"),
        node("save", "SaveV2", "shards:filename:0", "shard:output:0", "shard:output:0", "v"),
        node("prefixes", "Pack", "shards:filename:0", "^save"),
        node("merge", "MergeV2Checkpoints", "prefixes:output:0", destination),
        node("out", "Identity", "file_prefix", "^merge"),
        **attrs,
    )


def restore_function(name: str = "restore", prefix: str = "file_prefix", **attrs: bytes) -> bytes:
    return function(
        name, ("file_prefix", "v"), node("restore", "RestoreV2", prefix, "n:output:0", "n:output:0"), node("n", "Const"), **attrs
    )


def signature_function(*nodes: bytes) -> bytes:
    return function("serve", ("x",), node("y", "Identity", "x"), *nodes)


def tf2(
    functions: list[bytes] | None = None,
    extra_nodes: tuple[bytes, ...] = (),
    filename: bytes | None = None,
    **options: object,
) -> bytes:
    """A TensorFlow 2 export: a signature calling ``serve``, the saver's placeholder and its two calls."""
    nodes = [
        node("x", "Placeholder"),
        call("serving", "serve", "x"),
        filename if filename is not None else node("saver_filename", "Placeholder"),
        call("saving", "save", "saver_filename", "x"),
        call("restoring", "restore", "saver_filename", "x"),
        *extra_nodes,
    ]
    library = functions if functions is not None else [signature_function(), save_function(), restore_function()]
    options.setdefault("saver", ("saver_filename:0", "saving:0", "restoring"))
    options.setdefault("signature_outputs", ("serving:0",))
    options.setdefault("objects", ("serve",))
    return meta_graph(nodes, library, **options)  # type: ignore[arg-type]


def tf1(default: str = "model", *extra: bytes, **options: object) -> bytes:
    """A TensorFlow 1 Builder export's saver, as tf.compat.v1.train.Saver writes it."""
    nodes = [
        node("x", "Placeholder"),
        node("y", "Identity", "x"),
        node("save/filename/input", "Const", value=strings(default)),
        node("save/filename", "PlaceholderWithDefault", "save/filename/input"),
        node("save/Const", "PlaceholderWithDefault", "save/filename"),
        node("save/StaticRegexFullMatch", "StaticRegexFullMatch", "save/Const"),
        node("save/Const_1", "Const", value=strings(".part")),
        node("save/Const_2", "Const", value=strings("_temp/part")),
        node("save/Select", "Select", "save/StaticRegexFullMatch", "save/Const_1", "save/Const_2"),
        node("save/StringJoin", "StringJoin", "save/Const", "save/Select"),
        node("save/num_shards", "Const"),
        node("save/ShardedFilename", "ShardedFilename", "save/StringJoin", "save/num_shards", "save/num_shards"),
        node("save/SaveV2", "SaveV2", "save/ShardedFilename", "save/num_shards", "save/num_shards", "x"),
        node("save/control_dependency", "Identity", "save/ShardedFilename", "^save/SaveV2"),
        node("save/MergeV2Checkpoints/checkpoint_prefixes", "Pack", "save/ShardedFilename", "^save/control_dependency"),
        node("save/MergeV2Checkpoints", "MergeV2Checkpoints", "save/MergeV2Checkpoints/checkpoint_prefixes", "save/Const"),
        node("save/Identity", "Identity", "save/Const", "^save/MergeV2Checkpoints"),
        node("save/RestoreV2", "RestoreV2", "save/Const", "save/num_shards", "save/num_shards"),
        node("save/restore_all", "NoOp", "^save/RestoreV2"),
        *extra,
    ]
    options.setdefault("saver", ("save/Const:0", "save/Identity:0", "save/restore_all"))
    options.setdefault("signature_inputs", ("x:0",))
    options.setdefault("signature_outputs", ("y:0",))
    return meta_graph(nodes, [], **options)  # type: ignore[arg-type]


def variable_def(initializer: str) -> bytes:
    """A serialized VariableDef, as bytes_list collections hold them (variable, initializer, snapshot names)."""
    return ld(1, "v") + ld(2, initializer) + ld(3, "v/read:0")


def bytes_list(*values: bytes) -> bytes:
    """CollectionDef{bytes_list: BytesList{value}}."""
    return ld(2, b"".join(ld(1, v) for v in values))


UNCONFINED = {op: f"{op} {UNCONFINED_PATH}" for op in ("RestoreV2", "SaveV2", "MergeV2Checkpoints")}
RUNNABLE = {op: f"{op} {RUN_BY_LOADING}" for op in ("SaveV2", "MergeV2Checkpoints")}


# The whole program ------------------------------------------------------------------------------


def test_real_savers_in_both_shapes_pass() -> None:
    assert refused(tf2()) == {}
    assert refused(tf1()) == {}


def test_every_function_and_node_is_audited_called_or_not() -> None:
    meta = tf2(
        [
            signature_function(),
            save_function(),
            restore_function(),
            function("never_called", ("a",), node("w", "WriteFile", "a", "a")),
            function("", (), node("p", "PyFunc")),  # a function without a name cannot be called; it still counts
        ],
        extra_nodes=(node("orphan", "PrintV2"),),
    )
    assert refused(meta) == {"PrintV2": ["the graph"], "PyFunc": ["(a function without a name)"], "WriteFile": ["never_called"]}


def test_a_function_only_api_implements_names_is_audited() -> None:
    called = function("gpu", ("x",), node("d", "Identity", "x"), api_implements=text("double"))
    swapped = function("cpu", ("x",), node("w", "WriteFile", "x", "x"), api_implements=text("double"))
    serve = signature_function(call("c", "gpu", "x"))
    assert refused(tf2([serve, called, swapped, save_function(), restore_function()])) == {"WriteFile": ["cpu"]}


def test_tf1_local_variable_initializers_are_audited() -> None:
    local = (node("counter/Assign", "AssignVariableOp", "counter", "zeros"), node("zeros", "Const", "^w"), node("w", "WriteFile"))
    meta = tf1("model", *local, collections={"local_variables": bytes_list(variable_def("counter/Assign"))})
    assert refused(meta) == {"WriteFile": ["the graph"]}


# What the saver's path ops may read and write ----------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["/elsewhere/secret", "gs://bucket/ckpt", "../secret", "model"],
    ids=["absolute", "url", "dotdot", "relative"],
)
def test_restore_from_a_constant_is_refused_whatever_the_path(prefix: str) -> None:
    serve = signature_function(
        node("p", "Const", value=strings(prefix)), node("r", "RestoreV2", "p:output:0", "p:output:0", "p:output:0")
    )
    assert refused(tf2([serve, save_function(), restore_function()])) == {UNCONFINED["RestoreV2"]: ["serve"]}


def test_restore_through_an_argument_the_signature_feeds_is_refused() -> None:
    serve = signature_function(
        node("a", "Const", value=strings("gs://bucket/")),
        node("b", "Const", value=strings("ckpt")),
        node("p", "StringJoin", "a:output:0", "b:output:0"),
        call("c", "helper", "p:output:0"),
    )
    helper = restore_function("helper")
    assert refused(tf2([serve, helper, save_function(), restore_function()])) == {UNCONFINED["RestoreV2"]: ["helper"]}


@pytest.mark.parametrize(
    ("suffix", "separator"),
    [(b"/../../../etc/secret", None), (b"\\..\\x", None), (b"://host/x", None), (b"_temp/part", b"/../..")],
    ids=["dotdot_suffix", "backslash", "scheme", "separator"],
)
def test_a_suffix_that_leads_out_of_the_variables_folder_is_refused(suffix: bytes, separator: bytes | None) -> None:
    meta = tf2([signature_function(), save_function(suffix=suffix, separator=separator), restore_function()])
    assert refused(meta) == {UNCONFINED["SaveV2"]: ["save"], UNCONFINED["MergeV2Checkpoints"]: ["save"]}  # it merges those shards


@pytest.mark.parametrize(
    "named_by",
    ["object", "api_implements", "if_branch", "second_definition"],
)
def test_a_path_function_that_can_run_with_other_arguments_is_refused(named_by: str) -> None:
    functions = [signature_function(), save_function()]
    extra: list[bytes] = []
    objects: tuple[str, ...] = ("serve",)
    if named_by == "object":
        functions.append(restore_function())
        objects = ("serve", "restore")  # the loaded object exposes it: anyone may call it with any path
    elif named_by == "api_implements":
        functions.append(restore_function(api_implements=text("restore")))
    elif named_by == "if_branch":
        functions.append(restore_function())
        extra.append(node("branch", "If", "x", "x", then_branch=func("restore"), else_branch=func("restore")))
    else:
        functions += [restore_function(), restore_function()]
    assert refused(tf2(functions, extra_nodes=tuple(extra), objects=objects))[UNCONFINED["RestoreV2"]] == ["restore"]


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        (node("saver_filename", "Const", value=strings("/elsewhere/ckpt")), "a constant"),
        (node("saver_filename", "PlaceholderWithDefault", "d"), "an absolute default"),
        (node("saver_filename", "Identity", "x"), "the signature's input"),
    ],
    ids=["const", "absolute_default", "from_input"],
)
def test_the_loader_filename_must_be_a_placeholder_with_a_plain_default(filename: bytes, reason: str) -> None:
    del reason
    meta = tf2(filename=filename, extra_nodes=(node("d", "Const", value=strings("/etc/ckpt")),))
    assert set(refused(meta)) == {UNCONFINED["RestoreV2"], UNCONFINED["SaveV2"], UNCONFINED["MergeV2Checkpoints"]}


def test_a_tf1_saver_whose_default_leads_elsewhere_is_refused() -> None:
    for default in ("/elsewhere/model", "gs://bucket/model", "../model", "C:model"):
        assert set(refused(tf1(default))) == {UNCONFINED["RestoreV2"], UNCONFINED["SaveV2"], UNCONFINED["MergeV2Checkpoints"]}


def test_the_loader_filename_as_a_signature_input_is_refused() -> None:
    meta = tf1("model", signature_inputs=("save/Const:0",))
    assert set(refused(meta)) == {UNCONFINED["RestoreV2"], UNCONFINED["SaveV2"], UNCONFINED["MergeV2Checkpoints"]}


def test_merge_into_a_destination_from_a_constant_is_refused() -> None:
    save = save_function(destination="temp:output:0")  # a constant
    assert refused(tf2([signature_function(), save, restore_function()])) == {UNCONFINED["MergeV2Checkpoints"]: ["save"]}


@pytest.mark.parametrize("root", ["restore_op", "signature", "local_variables", "main_op", "api_implements", "savers_restore"])
def test_save_ops_that_loading_or_calling_reaches_are_refused(root: str) -> None:
    options: dict[str, object] = {}
    functions = [signature_function(), save_function(), restore_function()]
    if root == "restore_op":
        options["saver"] = ("saver_filename:0", "saving:0", "saving")  # the loader runs the save
    elif root == "signature":
        options["signature_outputs"] = ("serving:0", "saving:0")
    elif root == "local_variables":
        options["collections"] = {"local_variables": bytes_list(variable_def("saving"))}
    elif root == "main_op":
        options["collections"] = {"saved_model_main_op": ld(1, ld(1, "saving"))}
    elif root == "savers_restore":
        options["collections"] = {"savers": bytes_list(ld(1, "saver_filename:0") + ld(2, "x:0") + ld(3, "saving"))}
    else:  # the signature calls a function in the save function's api_implements group
        functions = [
            signature_function(call("c", "other", "x")),
            save_function(api_implements=text("g")),
            function("other", ("x",), api_implements=text("g")),
            restore_function(),
        ]
    meta = tf2(functions, **options)
    assert set(refused(meta)) >= {RUNNABLE["SaveV2"], RUNNABLE["MergeV2Checkpoints"]}


def test_a_savers_collection_does_not_make_the_save_reachable() -> None:
    saver = ld(1, "saver_filename:0") + ld(2, "saving:0") + ld(3, "restoring")
    assert refused(tf2(collections={"savers": bytes_list(saver)})) == {}


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "gs://bucket/vocab.txt"])
def test_asset_files_stay_in_the_assets_folder(name: str) -> None:
    assert refused(tf2(assets=(name,))) == {ASSET_OUTSIDE: ["the graph"]}
    assert refused(tf2(assets=("vocab.txt",))) == {}
