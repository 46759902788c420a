"""Graphs whose nodes form a cycle: refused in one line, by the API (a gs.Graph) and by the command (a file).

An onnx-graphsurgeon graph can hold a cycle (a node fed, through others, by its own output), and
``converter.rewrite`` on one never returned: the rule checks follow producers (is this weight a
constant expression?) round the cycle, and the walk's stack grew without bound. A gs.Graph also keeps
its nodes in the order they were added; such a graph is sorted, not refused. An ONNX file with a cycle
is refused by the loader, with the nodes that form it named, in the main graph, in a subgraph (a
branch that reads a value computed from its own If's output) and in a function body.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
from converter.errors import InputError
from converter.files.load import GraphCycle, check_acyclic, node_order
from tests.conftest import run_command

gs = pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is the [gs] extra: pip install -e '.[gs]'")

SHAPE = (2, 3, 5, 4)


class _TooSlow(Exception):
    pass


@contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Fail instead of hanging (the bug this guards against looped forever, growing memory)."""

    def stop(_signum: int, _frame: object) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TooSlow:
        pytest.fail(f"did not return within {seconds} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _var(name: str) -> object:
    return gs.Variable(name, dtype=np.float32, shape=SHAPE)


def _weights() -> tuple[object, object]:
    rng = np.random.default_rng(0)
    w = gs.Constant("W", rng.standard_normal((4, 4)).astype(np.float32))
    b = gs.Constant("B", rng.standard_normal(4).astype(np.float32))
    return w, b


def cyclic_graph(kind: str) -> object:
    """A gs.Graph with a cycle through a dense layer: ``dense`` (Add -> MatMul -> Add -> back),
    ``self`` (a MatMul fed by its own output), ``transposes`` (the cycle runs through two Transposes)."""
    x, t, m, y = gs.Variable("x", dtype=np.float32, shape=SHAPE), _var("t"), _var("m"), _var("y")
    w, b = _weights()
    if kind == "dense":
        nodes = [
            gs.Node("Add", inputs=[x, y], outputs=[t], name="mix"),
            gs.Node("MatMul", inputs=[t, w], outputs=[m], name="mm"),
            gs.Node("Add", inputs=[m, b], outputs=[y], name="bias"),
        ]
    elif kind == "self":
        nodes = [gs.Node("MatMul", inputs=[y, w], outputs=[y], name="mm")]
    else:
        u, v = gs.Variable("u", dtype=np.float32, shape=(2, 4, 3, 5)), _var("v")
        nodes = [
            gs.Node("Add", inputs=[x, y], outputs=[t], name="mix"),
            gs.Node("Transpose", inputs=[t], outputs=[u], attrs={"perm": [0, 3, 1, 2]}, name="to_nchw"),
            gs.Node("Transpose", inputs=[u], outputs=[v], attrs={"perm": [0, 2, 3, 1]}, name="to_nhwc"),
            gs.Node("MatMul", inputs=[v, w], outputs=[y], name="mm"),
        ]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)


@pytest.mark.parametrize(
    ("kind", "cycle"),
    [("dense", "mix -> mm -> bias -> mix"), ("self", "mm -> mm"), ("transposes", "mix -> to_nchw -> to_nhwc -> mm -> mix")],
)
def test_rewrite_refuses_a_cyclic_gs_graph_in_one_line(kind: str, cycle: str) -> None:
    graph = cyclic_graph(kind)
    before = [n.name for n in graph.nodes]
    with _within(30), pytest.raises(InputError) as e:
        converter.rewrite(graph)
    assert isinstance(e.value, GraphCycle)
    assert str(e.value) == f"the gs.Graph: nodes form a cycle: {cycle} (an ONNX graph must be acyclic)"
    assert [n.name for n in graph.nodes] == before  # the user's graph is as it was


def test_a_gs_graph_out_of_order_is_sorted_and_rewritten() -> None:
    """Nodes added consumer first: the rewrite sees them in a topological order, the user's graph is not reordered."""
    x = gs.Variable("x", dtype=np.float32, shape=SHAPE)
    m, y, z = _var("m"), _var("y"), _var("z")
    w, b = _weights()
    nodes = [
        gs.Node("Relu", inputs=[y], outputs=[z], name="relu"),
        gs.Node("Add", inputs=[m, b], outputs=[y], name="bias"),
        gs.Node("MatMul", inputs=[x, w], outputs=[m], name="mm"),
    ]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[z], opset=17)
    with _within(60):
        result = converter.rewrite(graph)
    assert [n.name for n in graph.nodes] == ["relu", "bias", "mm"]
    assert result.report.rewritten == 1
    exported = gs.export_onnx(result.model)
    onnx.checker.check_model(exported)  # in order: the checker refuses a graph that is not
    assert [n.op_type for n in exported.graph.node] == ["Transpose", "Conv", "Relu", "Transpose"]
    original = converter.gs.to_model(graph)
    assert [n.name for n in original.graph.node] == ["mm", "bias", "relu"]
    assert converter.verify(original, exported, layers=result.report.layers).verdict == "passed"


# ---------------------------------------------------------------------------------------------
# Files: the loader refuses a cycle wherever it is


def _dense_nodes(first_input: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Add", ["x", first_input], ["t"], name="mix"),
        helper.make_node("MatMul", ["t", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["y"], name="bias"),
    ]


def _file_model(where: str) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))]
    functions = []
    if where == "main":
        nodes = _dense_nodes("y")
    elif where == "subgraph":
        # The branch reads "r", computed from the If's own output: If -> relu -> If.
        inputs.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
        then = helper.make_graph(
            [helper.make_node("Identity", ["r"], ["a"])],
            "then",
            [],
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(SHAPE))],
        )
        other = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["c"])],
            "else",
            [],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, list(SHAPE))],
        )
        nodes = [
            helper.make_node("If", ["flag"], ["f"], then_branch=then, else_branch=other, name="choose"),
            helper.make_node("Relu", ["f"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w"], ["m"], name="mm"),
            helper.make_node("Add", ["m", "b"], ["y"], name="bias"),
        ]
    else:  # a function whose body is a cycle
        body = [helper.make_node("Relu", ["q"], ["p"], name="first"), helper.make_node("Neg", ["p"], ["q"], name="second")]
        functions.append(helper.make_function("local", "Loopy", ["i"], ["q"], body, [helper.make_opsetid("", 17)]))
        nodes = [*_dense_nodes("x")[1:], helper.make_node("Loopy", ["y"], ["unused"], domain="local", name="call")]
        nodes[0].input[0] = "x"
    graph = helper.make_graph(nodes, f"cyclic_{where}", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local", 1)] if functions else [])
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("main", "nodes form a cycle: mix -> mm -> bias -> mix"),
        ("subgraph", "nodes form a cycle: choose -> relu -> choose"),
        ("function", "nodes form a cycle in function local.Loopy: first -> second -> first"),
    ],
)
def test_the_command_refuses_a_cyclic_file_in_one_line(tmp_path: Path, where: str, message: str) -> None:
    onnx.save(_file_model(where), tmp_path / "m.onnx")
    r = run_command(tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error:") and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_node_order_is_stable_and_names_one_cycle() -> None:
    sorted_model = _file_model("function")  # its main graph is in order: kept as it is
    assert node_order(sorted_model.graph.node) == (list(range(len(sorted_model.graph.node))), [])
    cyclic = _file_model("main")
    assert node_order(cyclic.graph.node) == ([], [0, 1, 2])
    expected = r"^m.onnx: invalid ONNX model \(nodes form a cycle: mix -> mm -> bias -> mix; a graph's nodes must be"
    with pytest.raises(GraphCycle, match=expected):
        check_acyclic(cyclic, "m.onnx")
    # A long cycle is named by its ends.
    long = [helper.make_node("Relu", [f"v{(i - 1) % 20}"], [f"v{i}"], name=f"n{i}") for i in range(20)]
    _, cycle = node_order(long)
    assert sorted(cycle) == list(range(20))
    graph = helper.make_graph(long, "ring", [], [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])])
    with pytest.raises(GraphCycle, match=r"n0 -> n1 -> n2 -> n3 -> \.\.\. 14 more \.\.\. -> n18 -> n19 -> n0"):
        check_acyclic(helper.make_model(graph))
