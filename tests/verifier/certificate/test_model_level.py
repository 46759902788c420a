"""What a model computes with outside its graph's nodes is proved too (issue 22, item 1).

Each class once let a changed model pass: the opset its ops are read in, the default of an input a caller may
override, a sparse initializer's values, a model-local function's body. Each test makes a correct conversion,
checks that it is proved, then changes that one thing in the result: the certificate must say what differs.
Where the numbers cannot see the change (a branch no input takes), only the certificate stands between the
change and a PASSED, so the tests put it there.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.verifier.certificate import certify
from models.graphs import Builder
from tests.conftest import Dense, dense_model, run_command


def _converted(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    result = converter.rewrite(model, layout="keep-all")
    assert result.report.rewritten >= 1
    cert = certify(model, result.model, result.report.layers)
    assert cert.proved, cert.to_dict()
    return model, result.model, list(result.report.layers)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _softmax_in_a_branch(opset: int) -> onnx.ModelProto:
    """A dense layer, then an If whose else branch (which a True condition never takes) holds a Softmax over
    axis 1 of [N, H, W, K]: before opset 13 it normalizes the flattened H x W x K block, from 13 on one axis."""
    b = Builder(4)
    y = b.dense("x", 4, 6)
    then = helper.make_graph(
        [helper.make_node("Identity", [y], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)]
    )
    other = helper.make_graph(
        [helper.make_node("Softmax", [y], ["e"], axis=1)], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)]
    )
    b.nodes.append(helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other))
    graph = helper.make_graph(
        b.nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        b.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_another_opset_is_a_difference_even_where_no_number_can_show_it() -> None:
    model, rewritten, layers = _converted(_softmax_in_a_branch(12))
    changed = _copy(rewritten)
    changed.opset_import[0].version = 13  # Softmax(axis=1) now normalizes one axis, not the block
    cert = certify(model, changed, layers)
    assert not cert.proved and any("opset of domain 'ai.onnx' is 13, the original's 12" in p for p in cert.problems)
    check = converter.verify(model, changed, layers=layers, trials=1)  # cond=True: the Softmax never runs
    assert all(o.passed for o in check.outputs)  # the numbers alone see nothing...
    assert check.verdict == "failed"  # ...the certificate does


def test_another_opset_of_another_domain_and_another_ir_version_are_differences() -> None:
    model, rewritten, layers = _converted(dense_model())
    changed = _copy(rewritten)
    changed.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    changed.ir_version = model.ir_version - 1
    problems = certify(model, changed, layers).problems
    assert any("'com.microsoft' is 1, the original's not imported" in p for p in problems)
    assert any("IR version" in p for p in problems)


def test_a_domain_imported_twice_is_a_difference_and_refused_by_the_command(tmp_path) -> None:  # noqa: ANN001
    """opset_import [11, 13] of one domain: onnxruntime reads the ops at 13, a reader of the first entry at 11
    (the Softmax in the branch would then be proved in another layout)."""
    model, rewritten, layers = _converted(_softmax_in_a_branch(13))
    both = [_copy(model), _copy(rewritten)]
    for m in both:
        m.opset_import.insert(0, helper.make_opsetid("", 11))
    problems = certify(both[0], both[1], layers).problems
    assert any("imports the operators of domain 'ai.onnx' twice" in p for p in problems), problems
    onnx.save(both[0], tmp_path / "twice.onnx")
    r = run_command(tmp_path / "twice.onnx", "--dry-run")
    assert r.returncode == 2 and "imports the operators of domain 'ai.onnx' twice, versions 11 and 13" in r.stderr


def _overridable_bias() -> onnx.ModelProto:
    """A dense layer whose bias is a graph input with a default (an initializer a caller may override)."""
    return dense_model(Dense(bias="graph_input", x_shape=(2, 3, 5, 4), weight_shape=(4, 6), bias_shape=(6,)))


def test_the_default_of_an_overridable_input_is_compared() -> None:
    model, rewritten, layers = _converted(_overridable_bias())
    assert any(i.name == "b" for i in rewritten.graph.input)
    changed = _copy(rewritten)
    default = next(t for t in changed.graph.initializer if t.name == "b")
    default.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(default) + np.float32(1), "b"))
    assert any("default of input 'b'" in p for p in certify(model, changed, layers).problems)
    dropped = _copy(rewritten)
    dropped.graph.initializer.remove(next(t for t in dropped.graph.initializer if t.name == "b"))
    assert any("has a default value in the original only" in p for p in certify(model, dropped, layers).problems)


def _sparse_offset() -> onnx.ModelProto:
    """A dense layer followed by an Add of a sparse initializer."""
    b = Builder(5)
    y = b.op("Add", b.dense("x", 4, 6), "offset")
    values = numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "offset")
    indices = numpy_helper.from_array(np.array([1, 4], np.int64), "offset_indices")
    graph = helper.make_graph(
        b.nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 4])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 3, 5, 6])],
        b.inits,
        sparse_initializer=[helper.make_sparse_tensor(values, indices, [6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_sparse_initializer_is_compared_by_its_values() -> None:
    model, rewritten, layers = _converted(_sparse_offset())
    changed = _copy(rewritten)
    sparse = changed.graph.sparse_initializer[0]
    sparse.values.CopyFrom(numpy_helper.from_array(np.array([1.5, -2.5], np.float32), "offset"))
    cert = certify(model, changed, layers)
    assert not cert.proved and cert.unproved + cert.problems
    moved = _copy(rewritten)  # the same values at another index
    moved.graph.sparse_initializer[0].indices.CopyFrom(numpy_helper.from_array(np.array([2, 4], np.int64), "offset_indices"))
    assert not certify(model, moved, layers).proved


def test_a_sparse_initializer_written_dense_is_the_same_constant() -> None:
    """Compared by value, not by form: the same values as a dense initializer are the same constant."""
    model, rewritten, layers = _converted(_sparse_offset())
    dense = _copy(rewritten)
    dense.graph.ClearField("sparse_initializer")
    dense.graph.initializer.append(numpy_helper.from_array(np.array([0, 1.5, 0, 0, -2.0, 0], np.float32), "offset"))
    assert certify(model, dense, layers).proved


def _with_function(scale: float) -> onnx.ModelProto:
    """A dense layer followed by a call of a model-local function ``local.Scale`` (``y * scale``)."""
    b = Builder(6)
    y = b.dense("x", 4, 6)
    b.nodes.append(helper.make_node("Scale", [y], ["out"], domain="local"))
    graph = helper.make_graph(
        b.nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3, 5, 6])],
        b.inits,
    )
    body = [
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(scale, np.float32))),
        helper.make_node("Mul", ["v", "s"], ["w"]),
    ]
    function = helper.make_function("local", "Scale", ["v"], ["w"], body, [helper.make_opsetid("", 17)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[function])


def test_a_model_local_function_body_is_compared() -> None:
    model, rewritten, layers = _converted(_with_function(2.0))
    changed = _copy(rewritten)
    changed.ClearField("functions")
    changed.functions.extend(_with_function(3.0).functions)
    cert = certify(model, changed, layers)
    assert any("function 'local.Scale' differs" in p for p in cert.problems)
    check = converter.verify(model, changed, layers=layers)
    assert check.verdict == "failed"


@pytest.mark.parametrize("what", ["functions", "opset"])
def test_the_command_refuses_a_rewrite_that_changes_what_the_model_computes_with(what: str, tmp_path) -> None:  # noqa: ANN001
    """Through the real command: a rewrite that changed the model's opset or a function's body is not written."""
    import subprocess
    import sys

    model = _with_function(2.0)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    patch = (
        "import sys, converter.pipeline as p\n"
        "real = p.rewrite_in_place\n"
        "def broken(out, options, detached=None, progress=None):\n"
        "    report = real(out, options, detached, progress)\n"
        + (
            "    out.functions[0].node[0].attribute[0].t.raw_data = bytes(4)\n"
            if what == "functions"
            else "    out.opset_import[0].version = 16\n"
        )
        + "    return report\n"
        "p.rewrite_in_place = broken\n"
        "import converter.cli as c\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", patch, str(path), "-o", str(tmp_path / "out.onnx")], capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout and not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("op", ["Softmax", "Hardmax"])
def test_an_opset_11_hardmax_read_in_another_order_is_not_proved(op: str) -> None:
    """Before opset 13 both flatten the axes from 1 on; Softmax is the same whatever their order, Hardmax marks
    the first maximum, so reading it with those axes reordered changes which of equal values wins."""
    vi = helper.make_tensor_value_info
    x = [vi("x", TensorProto.FLOAT, [2, 4, 3, 5])]
    y = [vi("y", TensorProto.FLOAT, [2, 3, 5, 4])]
    original = helper.make_model(
        helper.make_graph(
            [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), helper.make_node(op, ["t"], ["y"], axis=1)], "o", x, y
        ),
        opset_imports=[helper.make_opsetid("", 11)],
    )
    moved = helper.make_model(
        helper.make_graph(
            [helper.make_node(op, ["x"], ["h"], axis=1), helper.make_node("Transpose", ["h"], ["y"], perm=[0, 2, 3, 1])], "m", x, y
        ),
        opset_imports=[helper.make_opsetid("", 11)],
    )
    original.ir_version = moved.ir_version = 7
    cert = certify(original, moved, [])
    assert cert.proved == (op == "Softmax"), cert.to_dict()
