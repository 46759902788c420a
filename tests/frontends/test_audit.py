"""The static SavedModel audit on hand-made protobufs: every op counts, what loading and calling reach (which decides
where the saver's writes may be), what protobuf's rules make of odd bytes, and what the audit does with corrupt or
hostile files. TensorFlow's proto classes build the inputs; nothing runs them. test_audit_program.py has the path ops'
confinement on hand-written bytes, without TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from converter.frontends.allowlist import ALLOWED_OPS, DENIED_OPS, LOADING_OPS, PATH_INPUTS, TF2ONNX_OPS, WRITE_OPS
from converter.frontends.audit import MAX_DEPTH, RUN_BY_LOADING, UNCONFINED_PATH, CorruptSavedModel, audit_saved_model, printable
from converter.graph.wire import tag, varint

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
from tensorflow.core.framework import function_pb2, node_def_pb2  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402


def node(name: str, op: str, inputs: tuple[str, ...] = (), **funcs: str | list[str]) -> node_def_pb2.NodeDef:
    """A NodeDef; each keyword is a func attr (a name) or a list(func) attr (a list of names)."""
    n = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for key, value in funcs.items():
        if isinstance(value, list):
            for f in value:
                n.attr[key].list.func.add(name=f)
        else:
            n.attr[key].func.name = value
    return n


def function(name: str, *nodes: node_def_pb2.NodeDef) -> function_pb2.FunctionDef:
    f = function_pb2.FunctionDef()
    f.signature.name = name
    f.node_def.extend(nodes)
    return f


def saved_model(
    functions: tuple[function_pb2.FunctionDef, ...] = (),
    graph: tuple[node_def_pb2.NodeDef, ...] = (),
    objects: tuple[str, ...] = (),
    signature_outputs: tuple[str, ...] = (),
) -> saved_model_pb2.SavedModel:
    """One meta graph: a function library, top-level nodes, object-graph functions, one signature."""
    sm = saved_model_pb2.SavedModel()
    mg = sm.meta_graphs.add()
    mg.meta_info_def.tags.append("serve")
    mg.graph_def.library.function.extend(functions)
    mg.graph_def.node.extend(graph)
    for name in objects:
        mg.object_graph_def.nodes.add().function.concrete_functions.append(name)
    for i, tensor in enumerate(signature_outputs):
        mg.signature_def["serving_default"].outputs[f"out{i}"].name = tensor
    return sm


def refused(sm: saved_model_pb2.SavedModel | bytes) -> dict[str, list[str]]:
    data = sm if isinstance(sm, bytes) else sm.SerializeToString()
    return audit_saved_model(data).refused


def test_allowlist_is_tf2onnx_registry_plus_loading_ops_minus_denied() -> None:
    pytest.importorskip("tf2onnx")
    import tf2onnx.tfonnx  # noqa: F401 - registers every handler tf2onnx.convert uses
    from tf2onnx.handler import tf_op

    installed = {op for version in tf_op.get_opsets()[""] for op in version if not op.startswith("TFL_")}
    assert installed == TF2ONNX_OPS  # regenerate allowlist.py (its comment says how) when tf2onnx changes
    assert ALLOWED_OPS == (TF2ONNX_OPS | LOADING_OPS | set(PATH_INPUTS)) - DENIED_OPS
    for op in ("WriteFile", "ReadFile", "MatchingFiles", "Save", "Restore", "PyFunc", "EagerPyFunc", "PrintV2", "FIFOQueueV2"):
        assert op not in ALLOWED_OPS
    for op in ("VarHandleOp", "ReadVariableOp", "StatefulPartitionedCall", "Identity", "NoOp", "Const", "StringJoin"):
        assert op in ALLOWED_OPS
    # The saver's path ops are allowed only where the audit confines them.
    assert set(PATH_INPUTS) == {"RestoreV2", "SaveV2", "MergeV2Checkpoints"} and WRITE_OPS < set(PATH_INPUTS) <= ALLOWED_OPS


def test_every_function_is_audited_reachable_or_not_whatever_its_name() -> None:
    sm = saved_model(
        functions=(
            function("__inference__traced_save_1", node("s", "SaveV2")),  # a saver's name, but no saver's path
            function("__inference__traced_save_2", node("w", "WriteFile")),  # a chosen name, and reachable
            function("__inference__initializer_3", node("r", "ReadFile")),  # reachable
            function("never_called", node("p", "PyFunc")),  # nothing calls it: it counts all the same
        ),
        objects=("__inference__traced_save_2", "__inference__initializer_3"),
    )
    audit = audit_saved_model(sm.SerializeToString())
    assert audit.refused == {
        "PyFunc": ["never_called"],
        "ReadFile": ["__inference__initializer_3"],
        f"SaveV2 {UNCONFINED_PATH}": ["__inference__traced_save_1"],
        "WriteFile": ["__inference__traced_save_2"],
    }
    assert audit.functions == {"__inference__traced_save_2", "__inference__initializer_3"}  # what loading can reach


@pytest.mark.parametrize(
    "caller",
    [
        node("c", "StatefulPartitionedCall", f="leaf"),
        node("c", "PartitionedCall", f="leaf"),
        node("c", "If", then_branch="benign", else_branch="leaf"),
        node("c", "StatelessWhile", cond="benign", body="leaf"),
        node("c", "Case", branches=["benign", "leaf"]),
        node("c", "leaf"),  # a call by op name
    ],
    ids=["StatefulPartitionedCall", "PartitionedCall", "If", "While", "Case", "op_name"],
)
def test_calls_are_followed(caller: node_def_pb2.NodeDef) -> None:
    sm = saved_model(
        functions=(function("root", caller), function("benign", node("i", "Identity")), function("leaf", node("w", "WriteFile"))),
        objects=("root",),
    )
    assert refused(sm)["WriteFile"] == ["leaf"]  # (tf2onnx cannot convert Case: it is refused too)


def test_functions_named_in_nested_attributes_and_function_attributes_are_followed() -> None:
    outer = node("c", "StatefulPartitionedCall", f="middle")
    outer.attr["f"].func.attr["inner"].list.func.add(name="leaf")  # a func inside the call's own attrs
    root = function("root", outer)
    root.attr["_extra"].func.name = "leaf2"  # a FunctionDef's own attribute
    sm = saved_model(
        functions=(root, function("middle"), function("leaf", node("w", "WriteFile")), function("leaf2", node("p", "PrintV2"))),
        objects=("root",),
    )
    assert refused(sm) == {"PrintV2": ["leaf2"], "WriteFile": ["leaf"]}


def test_functions_named_by_signature_defaults_and_argument_attributes_are_followed() -> None:
    root = function("root", node("c", "PartitionedCall"))
    root.node_def[0].attr["f"].placeholder = "callee"  # the call takes the function from root's own attr ...
    attr = root.signature.attr.add(name="callee", type="func")
    attr.default_value.func.name = "leaf"  # ... whose default names the leaf
    root.arg_attr[0].attr["_hint"].func.name = "leaf2"
    sm = saved_model(
        functions=(root, function("leaf", node("w", "WriteFile")), function("leaf2", node("r", "ReadFile"))),
        objects=("root",),
    )
    assert refused(sm) == {"ReadFile": ["leaf2"], "WriteFile": ["leaf"]}


def test_recursive_functions_terminate() -> None:
    sm = saved_model(
        functions=(
            function("a", node("c", "PartitionedCall", f="b")),
            function("b", node("c", "PartitionedCall", f="a"), node("s", "a")),
            function("self", node("c", "self")),
        ),
        objects=("a", "self"),
    )
    audit = audit_saved_model(sm.SerializeToString())
    assert audit.functions == {"a", "b", "self"} and audit.refused == {}


@pytest.mark.parametrize("root", ["signature_control_input", "restore_op", "main_op", "constant"])
def test_graph_nodes_are_reached_from_signatures_restore_op_collections_and_constants(root: str) -> None:
    """Reachability decides where the saver's writes may be: a confined SaveV2 that loading or calling reaches is refused."""
    graph = [
        node("x", "Placeholder"),
        node("saver_filename", "Placeholder"),
        node("call", "StatefulPartitionedCall", ("x",), f="sig"),
        node("save", "SaveV2", ("saver_filename",)),  # only a save runs it, unless something below reaches it
        node("after_save", "Identity", ("x", "^save")),
    ]
    sm = saved_model(functions=(function("sig", node("i", "Identity")),), graph=tuple(graph), signature_outputs=("call:0",))
    mg = sm.meta_graphs[0]
    mg.saver_def.filename_tensor_name = "saver_filename:0"
    mg.saver_def.save_tensor_name = "after_save:0"
    assert refused(sm) == {}
    if root == "signature_control_input":
        mg.graph_def.node[2].input.append("^after_save")
    elif root == "restore_op":
        mg.saver_def.restore_op_name = "after_save"
    elif root == "main_op":
        mg.collection_def["saved_model_main_op"].node_list.value.append("after_save")
    else:
        mg.object_graph_def.nodes.add().constant.operation = "after_save"
    assert refused(sm) == {f"SaveV2 {RUN_BY_LOADING}": ["the graph"]}


def test_every_meta_graph_is_audited() -> None:
    sm = saved_model(objects=("f",), functions=(function("f", node("i", "Identity")),))
    other = sm.meta_graphs.add()
    other.meta_info_def.tags.append("train")
    other.graph_def.library.function.append(function("g", node("w", "WriteFile")))
    other.object_graph_def.nodes.add().bare_concrete_function.concrete_function_name = "g"
    assert refused(sm) == {"WriteFile": ["g"]}


def test_protobuf_rules_the_last_op_wins_and_repeated_messages_merge() -> None:
    # Two `op` fields in one NodeDef: protobuf keeps the last, and so must the audit.
    twice = (
        node_def_pb2.NodeDef(name="n", op="Identity").SerializeToString() + node_def_pb2.NodeDef(op="WriteFile").SerializeToString()
    )
    assert node_def_pb2.NodeDef.FromString(twice).op == "WriteFile"
    f = function_pb2.FunctionDef()
    f.signature.name = "decoy"
    # A second `signature` message merges into the first: the function is really called "f".
    f_bytes = f.SerializeToString() + tag(1) + varint(3) + tag(1) + varint(1) + b"f" + tag(3) + varint(len(twice)) + twice
    assert function_pb2.FunctionDef.FromString(f_bytes).signature.name == "f"
    sm = saved_model(objects=("f",))
    sm.meta_graphs[0].graph_def.library.function.add().ParseFromString(f_bytes)
    assert refused(sm) == {"WriteFile": ["f"]}


def test_names_in_the_refusal_are_printable() -> None:
    name = "evil\x1b[2J\nname" + "x" * 200
    sm = saved_model(functions=(function(name, node("w", "Write\rFile")),), objects=(name,))
    text = audit_saved_model(sm.SerializeToString()).describe_refused()
    assert text.isprintable() and len(text) < 200 and "\\x1b" in text and "Write\\x0dFile" in text
    assert printable("ok_name") == "ok_name"


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(number) + varint(len(payload)) + payload


def nested_attrs_saved_model(depth: int) -> bytes:
    """A SavedModel whose one function calls through a func attr nesting ``depth`` NameAttrLists deep."""
    value = b""
    for _ in range(depth):  # AttrValue{func: NameAttrList{name: "f", attr: {"k": value}}}
        value = ld(10, ld(1, b"f") + ld(2, ld(1, b"k") + ld(2, value)))
    call = ld(1, b"n") + ld(2, b"PartitionedCall") + ld(5, ld(1, b"f") + ld(2, value))
    library = ld(1, ld(1, ld(1, b"f")) + ld(3, call))  # FunctionDef{signature{name: "f"}, node_def: [call]}
    objects = ld(1, ld(6, ld(1, b"f")))  # an object whose function is "f"
    return ld(2, ld(2, ld(2, library)) + ld(7, objects))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no meta graph"),
        (b"\x12\x05abc", "malformed protobuf"),  # a field running past the end
        (b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "malformed protobuf"),  # an absurd length
        (b"\x12\x02\x0b\x0c", "malformed protobuf"),  # a group, which no TensorFlow proto has
        (b"\x12" + b"\xff" * 20, "malformed protobuf"),  # a varint that never ends
        (ld(2, ld(7, ld(1, ld(6, ld(1, b"\x80"))))), "not UTF-8"),  # a function name: proto3 strings are UTF-8
    ],
    ids=["empty", "truncated", "absurd_length", "group", "endless_varint", "not_utf8"],
)
def test_corrupt_bytes_are_one_error(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptSavedModel, match=reason):
        audit_saved_model(data)


def test_deep_nesting_is_an_error_not_a_recursion() -> None:
    assert audit_saved_model(nested_attrs_saved_model(MAX_DEPTH)).functions == {"f"}
    for depth in (MAX_DEPTH + 2, 2_000):  # protobuf itself refuses more than 100 levels
        with pytest.raises(CorruptSavedModel, match="nested too deeply"):
            audit_saved_model(nested_attrs_saved_model(depth))


def test_huge_repeated_fields_are_bounded() -> None:
    inner = b"\x18\x01" * 11_000_000  # GraphDef.version, repeated: 11 million tiny fields in 22 MB
    graph = tag(2) + varint(len(inner)) + inner
    with pytest.raises(CorruptSavedModel, match="protobuf fields to read"):  # the limit bounded the read
        audit_saved_model(tag(2) + varint(len(graph)) + graph)


def test_duplicate_node_names_are_refused() -> None:
    sm = saved_model(graph=(node("n", "Identity"), node("n", "WriteFile")), signature_outputs=("n:0",))
    with pytest.raises(CorruptSavedModel, match="two nodes named 'n' in graph"):
        audit_saved_model(sm.SerializeToString())
    sm = saved_model(functions=(function("f", node("n", "Identity"), node("n", "Identity")),))
    with pytest.raises(CorruptSavedModel, match="two nodes named 'n' in f"):
        audit_saved_model(sm.SerializeToString())


def test_a_real_savedmodel_saver_passes_because_its_paths_are_confined(tmp_path: Path) -> None:
    from tests.frontends.hostile import dense

    data = (dense(tmp_path / "dense") / "saved_model.pb").read_bytes()
    library = saved_model_pb2.SavedModel.FromString(data).meta_graphs[0].graph_def.library
    assert "SaveV2" in {n.op for f in library.function for n in f.node_def}  # every SavedModel carries its saver ...
    audit = audit_saved_model(data)
    assert {"SaveV2", "MergeV2Checkpoints", "RestoreV2"} <= set(audit.ops)  # ... which is audited ...
    assert audit.refused == {}  # ... and passes: its paths are the loader's prefix, and only a save runs its writes
    assert not any("traced_save" in f for f in audit.functions)
    assert {"VarHandleOp", "ReadVariableOp", "AddV2"} <= set(audit.ops)


FUZZ_CASES = int(os.environ.get("CONVERTER_FUZZ_CASES", "150"))


def test_mutated_saved_model_pb_gives_an_audit_or_one_error(tmp_path: Path) -> None:
    from tests.frontends.hostile import dense
    from tests.test_fuzz import mutate

    data = (dense(tmp_path / "dense") / "saved_model.pb").read_bytes()
    rng = np.random.default_rng(7)
    outcomes = {"audited": 0, "corrupt": 0}
    for _ in range(FUZZ_CASES * 4):  # in-process and cheap: many more cases than the command-line fuzz
        try:
            audit_saved_model(mutate(data, rng))
            outcomes["audited"] += 1
        except CorruptSavedModel:
            outcomes["corrupt"] += 1
    assert outcomes["audited"] and outcomes["corrupt"], outcomes
