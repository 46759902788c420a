"""Realistic rewrite bugs, injected into a correct rewritten model, for proving that verification catches them.

Each injection edits one rewritten layer (its Conv and what is around it) in place and returns
False when it does not apply to that layer (e.g. a wrong ``group`` needs even channel counts).

``patch_rewrite(name)`` makes the pipeline's rewrite inject the bug into every result, so
that the real ``convert`` command's own verification can be run on a broken rewrite:

    python -c "import sys, tests.bugs as b; b.patch_rewrite(sys.argv.pop(1)); import converter.cli as c; \
        rc = c.main(); sys.exit(rc if b.INJECTED else 99)" BUG model.onnx
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converter.graph import iter_graphs
from converter.report import RewrittenLayer


def _find(model: onnx.ModelProto, conv_name: str) -> tuple[onnx.GraphProto, int]:
    for _, g in iter_graphs(model.graph):
        for i, n in enumerate(g.node):
            if n.name == conv_name:
                return g, i
    raise KeyError(conv_name)


def _init(graph: onnx.GraphProto, model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for _, g in [(None, graph), *iter_graphs(model.graph)]:
        for t in g.initializer:
            if t.name == name:
                return t
    raise KeyError(name)


def _set(t: onnx.TensorProto, value: np.ndarray) -> None:
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), t.name))


def _own_copy(graph: onnx.GraphProto, model: onnx.ModelProto, node: onnx.NodeProto, slot: int) -> onnx.TensorProto:
    """A private copy of the initializer ``node`` reads at ``slot`` (a shared one would break other layers too)."""
    src = _init(graph, model, node.input[slot])
    copy = onnx.TensorProto()
    copy.CopyFrom(src)
    copy.name = f"{src.name}_bug"
    graph.initializer.append(copy)  # appending copies the message: edit the one in the graph
    node.input[slot] = copy.name
    return graph.initializer[len(graph.initializer) - 1]


def _weight(model, graph, conv, fn: Callable[[np.ndarray], np.ndarray]) -> bool:  # noqa: ANN001
    t = _own_copy(graph, model, conv, 1)
    _set(t, fn(numpy_helper.to_array(t)))
    return True


def weight_not_transposed(model, graph, conv) -> bool:  # noqa: ANN001
    """The [C, K] weight reshaped to [K, C] instead of transposed."""
    return _weight(model, graph, conv, lambda w: np.ascontiguousarray(w[:, :, 0, 0].T).reshape(w.shape))


def channels_reversed(model, graph, conv) -> bool:  # noqa: ANN001
    return _weight(model, graph, conv, lambda w: np.ascontiguousarray(w[:, ::-1]))


def weight_element(model, graph, conv) -> bool:  # noqa: ANN001
    """One weight element off by a factor 1 + 1e-3."""

    def bump(w: np.ndarray) -> np.ndarray:
        w = w.copy()
        flat = w.reshape(-1)
        i = int(np.argmax(np.abs(flat)))
        flat[i] = flat[i] * flat.dtype.type(1 + 1e-3)
        return w

    return _weight(model, graph, conv, bump)


def weights_scaled(model, graph, conv) -> bool:  # noqa: ANN001
    """Every weight off by a factor 1 + 1e-4."""
    return _weight(model, graph, conv, lambda w: (w * w.dtype.type(1 + 1e-4)).astype(w.dtype))


def _has_bias(conv: onnx.NodeProto) -> bool:
    return len(conv.input) > 2 and bool(conv.input[2])


def bias_dropped(model, graph, conv) -> bool:  # noqa: ANN001
    if not _has_bias(conv):
        return False
    del conv.input[2]
    return True


def bias_scaled(model, graph, conv) -> bool:  # noqa: ANN001
    if not _has_bias(conv):
        return False
    t = _own_copy(graph, model, conv, 2)
    b = numpy_helper.to_array(t)
    _set(t, (b * b.dtype.type(1.001)).astype(b.dtype))
    return True


def bias_twice(model, graph, conv) -> bool:  # noqa: ANN001
    """The bias added again after the Conv."""
    if not _has_bias(conv):
        return False
    b = numpy_helper.to_array(_init(graph, model, conv.input[2]))
    graph.initializer.append(numpy_helper.from_array(b.reshape(1, -1, 1, 1), f"{conv.name}_bias_again"))
    return _after(graph, conv, lambda i, o: helper.make_node("Add", [i, f"{conv.name}_bias_again"], [o], name=f"{conv.name}_bug"))


def extra_activation(model, graph, conv) -> bool:  # noqa: ANN001
    return _after(graph, conv, lambda i, o: helper.make_node("Sigmoid", [i], [o], name=f"{conv.name}_bug"))


def wrong_group(model, graph, conv) -> bool:  # noqa: ANN001
    """group=2 with half the input channels: a Conv that still runs but mixes the wrong channels."""
    t = _init(graph, model, conv.input[1])
    k, c = t.dims[0], t.dims[1]
    if c % 2 or k % 2:
        return False
    _weight(model, graph, conv, lambda w: np.ascontiguousarray(w[:, : c // 2]))
    conv.attribute.append(helper.make_attribute("group", 2))
    return True


def _after(graph: onnx.GraphProto, conv: onnx.NodeProto, make: Callable[[str, str], onnx.NodeProto]) -> bool:
    """Insert a node right after ``conv`` that reads its output and writes under the output's name."""
    out = conv.output[0]
    moved = f"{out}_before_bug"
    conv.output[0] = moved
    i = list(graph.node).index(conv)
    graph.node.insert(i + 1, make(moved, out))
    return True


def _perm_before(perm: list[int]) -> Callable[..., bool]:
    def inject(model, graph, conv) -> bool:  # noqa: ANN001
        src = conv.input[0]
        moved = f"{src}_{conv.name}_bug"
        i = list(graph.node).index(conv)
        graph.node.insert(i, helper.make_node("Transpose", [src], [moved], perm=perm, name=f"{conv.name}_perm_bug"))
        conv.input[0] = moved
        return True

    return inject


def _perm_after(perm: list[int]) -> Callable[..., bool]:
    def inject(model, graph, conv) -> bool:  # noqa: ANN001
        return _after(graph, conv, lambda i, o: helper.make_node("Transpose", [i], [o], perm=perm, name=f"{conv.name}_bug"))

    return inject


# In NCHW: the channel axis stays where the Conv needs it, so the broken model still runs.
BUGS: dict[str, Callable[..., bool]] = {
    "weight_not_transposed": weight_not_transposed,
    "bias_dropped": bias_dropped,
    "bias_scaled": bias_scaled,
    "bias_twice": bias_twice,
    "weight_element": weight_element,
    "weights_scaled": weights_scaled,
    "channels_reversed": channels_reversed,
    "extra_activation": extra_activation,
    "wrong_group": wrong_group,
    "hw_swap_in": _perm_before([0, 1, 3, 2]),
    "nh_swap_in": _perm_before([2, 1, 0, 3]),
    "nw_swap_in": _perm_before([3, 1, 2, 0]),
    "hw_swap_out": _perm_after([0, 1, 3, 2]),
    "nh_swap_out": _perm_after([2, 1, 0, 3]),
    "rotate_out": _perm_after([3, 1, 0, 2]),
}


def inject(model: onnx.ModelProto, layers: list[RewrittenLayer], bug: str, which: int = 0) -> bool:
    """Inject ``bug`` into layer ``which`` of the rewritten ``model`` (in place); False if it does not apply."""
    layer = layers[which]
    graph, i = _find(model, layer.conv)
    return BUGS[bug](model, graph, graph.node[i])


INJECTED: list[str] = []  # filled as bugs go in: a harness checks it, so a stale patch point cannot pass silently


def patch_rewrite(bug: str) -> None:
    """Make the pipeline's rewrite inject ``bug`` into the first rewritten layer of every result.

    The rewrite's new weights are attached first (the injections edit tensor data); everything
    after the rewrite, verification and saving included, runs as in the real command.
    """
    import converter.pipeline as pipeline

    real = pipeline.rewrite_in_place

    def broken(out, options, detached=None, progress=None):  # noqa: ANN001, ANN202
        report = real(out, options, detached, progress)
        if detached is not None:
            detached.attach(out)
        if report.layers and not inject(out, report.layers, bug):
            raise SystemExit(f"bug {bug} does not apply to this model")
        INJECTED.append(bug)
        return report

    pipeline.rewrite_in_place = broken


# -- edits of a whole converted model: equivalent ones a check must accept, and wrong ones it must refuse ---------
#
# Each takes the converted model, the rewrite's claims and a random generator, edits the model in place at a place
# the generator picks, and returns False when the model has no such place. ``EQUIVALENT`` edits leave what the
# model computes exactly as it was (another tool, or a hand, may write a model so): ``convert --check`` must pass
# them. ``WRONG`` edits change it: nothing may pass them, whether the claims are given or found.

COMMUTATIVE_OPS = ("Add", "Mul")
NON_COMMUTATIVE_OPS = ("Sub", "Div", "Pow")


def _pick(rng: np.random.Generator, items: list) -> object | None:  # noqa: ANN401
    return items[int(rng.integers(len(items)))] if items else None


def _main_nodes(model: onnx.ModelProto, ops: tuple[str, ...]) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ops and n.domain in ("", "ai.onnx")]


def _swap(model: onnx.ModelProto, rng: np.random.Generator, ops: tuple[str, ...]) -> bool:
    node = _pick(rng, [n for n in _main_nodes(model, ops) if len(n.input) == 2 and n.input[0] != n.input[1]])
    if node is None:
        return False
    node.input[0], node.input[1] = node.input[1], node.input[0]
    return True


def commutative_swapped(model, layers, rng) -> bool:  # noqa: ANN001
    """``Add(a, b)`` written ``Add(b, a)`` (or a Mul): the same, bit for bit."""
    return _swap(model, rng, COMMUTATIVE_OPS)


def non_commutative_swapped(model, layers, rng) -> bool:  # noqa: ANN001
    """``Sub(a, b)`` written ``Sub(b, a)`` (or a Div, a Pow): another value."""
    return _swap(model, rng, NON_COMMUTATIVE_OPS)


def _layer_conv(model: onnx.ModelProto, layers: list[RewrittenLayer], rng: np.random.Generator, with_bias: bool = False):  # noqa: ANN202
    convs = []
    for layer in layers:
        try:
            graph, i = _find(model, layer.conv)
        except KeyError:
            continue
        if graph is model.graph and graph.node[i].op_type == "Conv" and (not with_bias or _has_bias(graph.node[i])):
            convs.append(graph.node[i])
    return _pick(rng, convs)


def bias_as_add(model, layers, rng) -> bool:  # noqa: ANN001
    """A Conv's bias taken out of it and added after it, as ``[1, K, 1, 1]``."""
    conv = _layer_conv(model, layers, rng, with_bias=True)
    if conv is None:
        return False
    graph = model.graph
    b = numpy_helper.to_array(_init(graph, model, conv.input[2]))
    graph.initializer.append(numpy_helper.from_array(b.reshape(1, -1, 1, 1), f"{conv.name}_bias_4d"))
    del conv.input[2]
    return _after(graph, conv, lambda i, o: helper.make_node("Add", [i, f"{conv.name}_bias_4d"], [o], name=f"{conv.name}_bias_add"))


def bias_as_add_rank3(model, layers, rng) -> bool:  # noqa: ANN001
    """As ``bias_as_add``, the bias as ``[K, 1, 1]``: broadcasting puts the missing unit axis in front."""
    conv = _layer_conv(model, layers, rng, with_bias=True)
    if conv is None:
        return False
    graph = model.graph
    b = numpy_helper.to_array(_init(graph, model, conv.input[2]))
    graph.initializer.append(numpy_helper.from_array(b.reshape(-1, 1, 1), f"{conv.name}_bias_3d"))
    del conv.input[2]
    return _after(graph, conv, lambda i, o: helper.make_node("Add", [i, f"{conv.name}_bias_3d"], [o], name=f"{conv.name}_bias_add"))


def bias_as_wrong_add(model, layers, rng) -> bool:  # noqa: ANN001
    """As ``bias_as_add``, the bias added in another layout ([1, 1, 1, K]: broadcast along W, not the channels)."""
    conv = _layer_conv(model, layers, rng, with_bias=True)
    if conv is None:
        return False
    graph = model.graph
    b = numpy_helper.to_array(_init(graph, model, conv.input[2]))
    if b.size < 2:
        return False
    graph.initializer.append(numpy_helper.from_array(b.reshape(1, 1, 1, -1), f"{conv.name}_bias_w"))
    del conv.input[2]
    return _after(graph, conv, lambda i, o: helper.make_node("Add", [i, f"{conv.name}_bias_w"], [o], name=f"{conv.name}_bias_add"))


def dilations_on_1x1(model, layers, rng) -> bool:  # noqa: ANN001
    """``dilations`` written on a 1x1 Conv: a 1x1 kernel spans one element whatever its dilation."""
    conv = _layer_conv(model, layers, rng)
    if conv is None or any(a.name == "dilations" for a in conv.attribute):
        return False
    conv.attribute.append(helper.make_attribute("dilations", [int(v) for v in rng.integers(1, 4, size=2)]))
    return True


def _schema_defaults(node: onnx.NodeProto, opset: int) -> dict[str, onnx.AttributeProto]:
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return {}
    have = {a.name for a in node.attribute}
    found = {}
    for name, attr in schema.attributes.items():
        if name not in have and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            written = onnx.AttributeProto()
            written.CopyFrom(attr.default_value)
            written.name = name
            found[name] = written
    return found


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def default_written(model, layers, rng) -> bool:  # noqa: ANN001
    """An attribute written out at the value its op's schema gives when it is absent."""
    opset = _opset(model)
    nodes = [n for n in model.graph.node if n.domain in ("", "ai.onnx") and _schema_defaults(n, opset)]
    node = _pick(rng, nodes)
    if node is None:
        return False
    defaults = _schema_defaults(node, opset)
    node.attribute.append(defaults[_pick(rng, sorted(defaults))])
    return True


def default_changed(model, layers, rng) -> bool:  # noqa: ANN001
    """A float attribute (an epsilon, an alpha), written or at its default, set to another value. (Integer ones are
    left alone: ``allowzero`` on a target without zeros, say, changes nothing.)"""
    opset = _opset(model)
    floats = onnx.AttributeProto.FLOAT
    choices = [(n, a) for n in model.graph.node for a in n.attribute if a.type == floats]
    choices += [(n, a) for n in model.graph.node for a in _schema_defaults(n, opset).values() if a.type == floats]
    picked = _pick(rng, choices)
    if picked is None:
        return False
    node, attr = picked
    changed = onnx.AttributeProto()
    changed.CopyFrom(attr)
    changed.f = attr.f * 1.5 + 0.25
    kept = [a for a in node.attribute if a.name != attr.name]
    node.ClearField("attribute")
    node.attribute.extend([*kept, changed])
    return True


def _edges(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, int]]:
    """(reader, input slot) for every main-graph input read that another node produces."""
    made = {o for n in model.graph.node for o in n.output}
    return [(n, i) for n in model.graph.node for i, name in enumerate(n.input) if name in made]


def _insert_on_edge(model: onnx.ModelProto, rng: np.random.Generator, op: str) -> bool:
    picked = _pick(rng, _edges(model))
    if picked is None:
        return False
    reader, slot = picked
    src = reader.input[slot]
    moved = f"{src}_{op.lower()}_{len(model.graph.node)}"
    node = helper.make_node(op, [src], [moved], name=f"{moved}_node")
    model.graph.node.insert(list(model.graph.node).index(reader), node)
    reader.input[slot] = moved
    return True


def identity_inserted(model, layers, rng) -> bool:  # noqa: ANN001
    """An Identity inserted on an edge."""
    return _insert_on_edge(model, rng, "Identity")


def _float_edge(
    model: onnx.ModelProto, rng: np.random.Generator, made_by: tuple[str, ...] = (), readers_not: tuple[str, ...] = ()
) -> tuple[onnx.NodeProto, int] | None:
    """A random (reader, slot) whose tensor carries floats (``made_by``: one made by one of those ops; ``readers_not``:
    read by none of those), or None."""
    declared = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    floats = {vi.name for vi in declared if vi.type.tensor_type.elem_type in (1, 10)}
    # Declared as another type (an int64 shape computed by Mul): not a float edge, whatever makes it.
    others = {vi.name for vi in declared if vi.type.tensor_type.elem_type not in (0, 1, 10)}
    made = {o: n for n in model.graph.node for o in n.output}
    edges = [
        (r, i)
        for r, i in _edges(model)
        if r.input[i] in floats or (r.input[i] not in others and made[r.input[i]].op_type in ("Conv", "Add", "Mul", "Relu"))
    ]
    if made_by:
        edges = [(r, i) for r, i in edges if made[r.input[i]].op_type in made_by]
    return _pick(rng, [(r, i) for r, i in edges if r.op_type not in readers_not])


def _chain_on_edge(model: onnx.ModelProto, picked: tuple[onnx.NodeProto, int] | None, ops: list[str]) -> bool:
    """``ops`` inserted one after the other on the edge ``picked`` (its reader reads the last one's output)."""
    if picked is None:
        return False
    reader, slot = picked
    src = reader.input[slot]
    at = list(model.graph.node).index(reader)
    for op in ops:
        moved = f"{src}_{op.lower()}_{len(model.graph.node)}"
        model.graph.node.insert(at, helper.make_node(op, [src], [moved], name=f"{moved}_node"))
        at, src = at + 1, moved
    reader.input[slot] = src
    return True


def neg_inserted(model, layers, rng) -> bool:  # noqa: ANN001
    """A Neg inserted on an edge that carries floats (anything else it would not run on: skipped)."""
    return _chain_on_edge(model, _float_edge(model, rng), ["Neg"])


def double_neg_inserted(model, layers, rng) -> bool:  # noqa: ANN001
    """Two Negs inserted on an edge that carries floats: ``Neg(Neg(x))`` is ``x``, bit for bit."""
    return _chain_on_edge(model, _float_edge(model, rng), ["Neg", "Neg"])


def neg_abs_inserted(model, layers, rng) -> bool:  # noqa: ANN001
    """A Neg and an Abs inserted on an edge that carries floats: ``Abs(Neg(x))`` is ``|x|``, not ``x``."""
    return _chain_on_edge(model, _float_edge(model, rng), ["Neg", "Abs"])


def relu_repeated(model, layers, rng) -> bool:  # noqa: ANN001
    """A Relu inserted after a Relu: ``Relu(Relu(x))`` is ``Relu(x)``, bit for bit (skipped without a Relu)."""
    return _chain_on_edge(model, _float_edge(model, rng, ("Relu",)), ["Relu"])


def relu_inserted(model, layers, rng) -> bool:  # noqa: ANN001
    """A Relu inserted after a Conv, an Add or a Mul (no Relu before it, nor after it: ``Relu(Relu(x))`` would be the
    same): the negatives become 0."""
    picked = _float_edge(model, rng, ("Conv", "Add", "Mul"), readers_not=("Relu",))
    return _chain_on_edge(model, picked, ["Relu"])


def conv_renamed(model, layers, rng) -> bool:  # noqa: ANN001
    """A layer's Conv renamed, node and output tensor (another tool's names)."""
    conv = _layer_conv(model, layers, rng)
    if conv is None or conv.output[0] in {o.name for o in model.graph.output}:
        return False
    old, new = conv.output[0], f"renamed_{int(rng.integers(1 << 30))}"
    conv.name, conv.output[0] = f"{new}_conv", new
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
    return True


def _on_constants(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph nodes (no Constant, no subgraph, no graph output) computed from constants alone."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    known = {t.name for t in graph.initializer if t.name not in inputs}
    outputs = {o.name for o in graph.output}
    found = []
    for n in graph.node:
        if n.domain not in ("", "ai.onnx") or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute
        ):
            continue
        if n.op_type == "Constant":
            known.update(n.output)
        elif n.input and all(not i or i in known for i in n.input) and not n.op_type.startswith("Random"):
            known.update(n.output)
            if not any(o in outputs for o in n.output):
                found.append(n)
    return found


def _rename_outputs(model: onnx.ModelProto, node: onnx.NodeProto, rng: np.random.Generator) -> None:
    new = f"renamed_{int(rng.integers(1 << 30))}"
    renamed = {o: f"{new}_{i}" for i, o in enumerate(node.output) if o}
    node.name = f"{new}_node"
    for i, o in enumerate(node.output):
        if o:
            node.output[i] = renamed[o]
    for _, g in iter_graphs(model.graph):
        for n in g.node:
            for i, name in enumerate(n.input):
                if name in renamed:
                    n.input[i] = renamed[name]


def constant_renamed(model, layers, rng) -> bool:  # noqa: ANN001
    """A node computed from constants alone (a folded weight's Transpose, an expression on constants) renamed, node
    and outputs (another tool's names): the same function of the same values."""
    node = _pick(rng, _on_constants(model))
    if node is None:
        return False
    _rename_outputs(model, node, rng)
    return True


def constant_renamed_changed(model, layers, rng) -> bool:  # noqa: ANN001
    """As ``constant_renamed``, and one of its float constant inputs off by a factor 1 + 1e-3 (a copy of it)."""
    inits = {t.name: t for t in model.graph.initializer}
    picked = _pick(
        rng,
        [
            (n, i)
            for n in _on_constants(model)
            for i, name in enumerate(n.input)
            if name in inits and inits[name].data_type in (1, 10, 11, 16) and np.prod(inits[name].dims) > 0
        ],
    )
    if picked is None:
        return False
    node, slot = picked
    t = _own_copy(model.graph, model, node, slot)
    value = numpy_helper.to_array(t)
    _set(t, (value.astype(np.float64) * (1 + 1e-3) + 1e-3).astype(value.dtype))
    _rename_outputs(model, node, rng)
    return True


def _kept_convs(model: onnx.ModelProto, layers: list[RewrittenLayer]) -> list[tuple[onnx.NodeProto, tuple[int, ...]]]:
    """Main-graph Convs that are no rewritten layer (the original's own), each with its weight's spatial dims."""
    claimed = {layer.conv for layer in layers}
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for n in _main_nodes(model, ("Conv",)):
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        if n.name not in claimed and w is not None and len(w.dims) > 2:
            found.append((n, tuple(int(d) for d in w.dims[2:])))
    return found


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == name), None)


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    kept = [a for a in node.attribute if a.name != name]
    node.ClearField("attribute")
    node.attribute.extend([*kept, helper.make_attribute(name, values)])


def dilations_on_kept_1x1(model, layers, rng) -> bool:  # noqa: ANN001
    """``dilations`` written on a 1x1 Conv the original model has (no layer): the same convolution."""
    picked = _pick(rng, [(n, k) for n, k in _kept_convs(model, layers) if all(d == 1 for d in k)])
    if picked is None:
        return False
    node, kernel = picked
    _set_ints(node, "dilations", [int(v) for v in rng.integers(2, 4, size=len(kernel))])
    return True


def dilations_on_kept_kxk(model, layers, rng) -> bool:  # noqa: ANN001
    """A Conv of the original with a kernel larger than 1 at stride 1, dilated by 2 with its pads doubled: the same
    output shape, other values."""
    convs = [
        (n, k)
        for n, k in _kept_convs(model, layers)
        if any(d > 1 for d in k) and all(s == 1 for s in _ints(n, "strides") or [1]) and not _ints(n, "dilations")
        if not any(a.name == "auto_pad" for a in n.attribute)
    ]
    picked = _pick(rng, convs)
    if picked is None:
        return False
    node, kernel = picked
    pads = _ints(node, "pads") or [0] * (2 * len(kernel))
    _set_ints(node, "dilations", [2] * len(kernel))
    _set_ints(node, "pads", [p + (k - 1) // 2 for p, k in zip(pads, kernel * 2, strict=True)])
    return True


def _integer_convs(model: onnx.ModelProto, layers: list[RewrittenLayer]) -> list[tuple[onnx.NodeProto, int, int]]:
    """Layer QLinearConvs (uint8 activation) and ConvIntegers whose weight and its zero point are int8 initializers:
    (node, weight slot, zero point slot)."""
    claimed = {layer.conv for layer in layers}
    inits = {t.name: t for t in model.graph.initializer}
    int8 = onnx.TensorProto.INT8
    found = []
    for n in _main_nodes(model, ("QLinearConv", "ConvInteger")):
        w, z = (3, 5) if n.op_type == "QLinearConv" else (1, 3)
        if n.name not in claimed or len(n.input) <= z or inits.get(n.input[w]) is None or inits.get(n.input[z]) is None:
            continue
        if inits[n.input[w]].data_type != int8 or inits[n.input[z]].data_type != int8:
            continue
        if n.op_type == "QLinearConv" and (n.input[2] not in inits or inits[n.input[2]].data_type != onnx.TensorProto.UINT8):
            continue  # onnxruntime runs a uint8 weight only with a uint8 activation
        found.append((n, w, z))
    return found


def _shift_integer(model: onnx.ModelProto, layers: list[RewrittenLayer], rng: np.random.Generator, zero_point: bool) -> bool:
    picked = _pick(rng, _integer_convs(model, layers))
    if picked is None:
        return False
    node, w_slot, z_slot = picked
    for slot in (w_slot, z_slot):
        t = _own_copy(model.graph, model, node, slot)
        value = numpy_helper.to_array(t)
        _set(t, (value.astype(np.int16) + 128).astype(np.uint8) if zero_point or slot == w_slot else value.view(np.uint8))
    return True


def integer_weight_shifted(model, layers, rng) -> bool:  # noqa: ANN001
    """An integer layer's int8 weight written as uint8 ``w + 128`` with its zero point ``zw + 128``: every
    ``w - zw`` is the same, so every integer sum is."""
    return _shift_integer(model, layers, rng, zero_point=True)


def integer_weight_shifted_alone(model, layers, rng) -> bool:  # noqa: ANN001
    """As ``integer_weight_shifted``, the zero point's bits kept (read as uint8): ``w - zw`` changes."""
    return _shift_integer(model, layers, rng, zero_point=False)


EQUIVALENT: dict[str, Callable[..., bool]] = {
    "commutative_swapped": commutative_swapped,
    "bias_as_add": bias_as_add,
    "bias_as_add_rank3": bias_as_add_rank3,
    "dilations_on_1x1": dilations_on_1x1,
    "default_written": default_written,
    "identity_inserted": identity_inserted,
    "conv_renamed": conv_renamed,
    "double_neg_inserted": double_neg_inserted,
    "relu_repeated": relu_repeated,
    "constant_renamed": constant_renamed,
    "dilations_on_kept_1x1": dilations_on_kept_1x1,
    "integer_weight_shifted": integer_weight_shifted,
}

WRONG: dict[str, Callable[..., bool]] = {
    "non_commutative_swapped": non_commutative_swapped,
    "bias_as_wrong_add": bias_as_wrong_add,
    "default_changed": default_changed,
    "neg_inserted": neg_inserted,
    "neg_abs_inserted": neg_abs_inserted,
    "relu_inserted": relu_inserted,
    "constant_renamed_changed": constant_renamed_changed,
    "dilations_on_kept_kxk": dilations_on_kept_kxk,
    "integer_weight_shifted_alone": integer_weight_shifted_alone,
}
