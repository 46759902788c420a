"""The shapes the certificate took from onnx's shape inference, checked against the shapes onnxruntime computes.

onnx's shape inference and onnxruntime disagree on some ops (a ConvTranspose with ``auto_pad`` SAME_LOWER and
``output_padding``: inference says 11x15 where onnxruntime makes 10x14; pooling with ``ceil_mode``, Resize's
rounding). A proof that folded ``Shape(t)`` into a constant, or read a Reshape chain's dims, on the strength
of an inferred shape proves nothing if onnxruntime computes another one. The certificate takes the shapes of
constants and of initializers from onnxruntime itself, declines the shapes of tensors computed inside
subgraphs, and lists the main graph's tensors whose inferred shapes it used (``Certificate.assumed_shapes``).
Those are checked here, on the first trial's run of the original, with ``Shape(t)`` of each as an extra output
(a few integers each, whatever the tensors' sizes). The original's own verification session computes them: the
session is built while the proof is made (before anyone knows which shapes it will read), so it adds a Shape node
for each tensor a proof may read the shape of (:func:`readable`: what Shape and Size nodes read, and the inputs
and outputs of Reshape, Flatten, Transpose, Squeeze and Unsqueeze); a tensor the session already returns is read
from its run; only a shape neither gives is computed by a second session, the original's main graph cut down to
what computes those tensors (:func:`probe_model`). Every dim the proof read must be what onnxruntime computed:

- a number: that number;
- a symbol of the model's inputs (``N``), or a product of such and numbers (``"4*N"``): its value in this run;
- any other symbol (one inference made up, ``unk__3``, or a product with one): one value wherever it appears
  (the proof took two dims of one symbol to be equal).

A dim inference did not tell (None) was read by no proof. One run at one set of sizes cannot exclude a shape
function that is right there and wrong elsewhere; the certificate uses such shapes only as onnx states them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

Dims = tuple[int | str | None, ...]

SUFFIX = "::engine_shape"  # the probe output of tensor ``t`` is ``t + SUFFIX``


# Ops whose input (and, for the rearrangements, output) shapes a proof reads: a Shape or Size folded into a constant,
# a chain of rearrangements whose sizes relate two tensors (certificate/original.py, views.py, ops/channel_groups.py).
_SHAPE_READERS = frozenset({"Shape", "Size"})
_REARRANGE = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})
_READ = _SHAPE_READERS | _REARRANGE
_RANDOM = frozenset("RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli Dropout".split())
_SUBGRAPH = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def readable(model: onnx.ModelProto) -> list[str]:
    """The main graph's tensors whose shapes a proof may take from shape inference: those a Shape or Size node
    reads, and the input and outputs of each rearrangement (graph inputs aside: their shapes are declared; and
    tensors computed from constants alone, whose shapes the proof takes from onnxruntime itself). Read from the
    graph alone, before the proof is made, so that the original's session can return their shapes from its first
    run.

    Args:
        model: the original model (only its main graph's nodes are read).
    """
    graph = model.graph
    if not any(n.op_type in _READ for n in graph.node):
        return []  # (a long chain of layers: nothing to read, and no pass over its nodes' attributes)
    inputs = {i.name for i in graph.input}
    # Tensors computed from constants alone: the proof takes their shapes from onnxruntime itself.
    constant = {t.name for t in graph.initializer if t.name not in inputs} | {s.values.name for s in graph.sparse_initializer}
    names: list[str] = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or not node.input:
            if node.domain in ("", "ai.onnx") and node.op_type == "Constant":
                constant.update(o for o in node.output if o)
            continue
        if all(not i or i in constant for i in node.input) and not any(a.type in _SUBGRAPH for a in node.attribute):
            if node.op_type not in _RANDOM:
                constant.update(o for o in node.output if o)
            continue
        if node.op_type in _SHAPE_READERS:
            names.append(node.input[0])
        elif node.op_type in _REARRANGE:
            names.append(node.input[0])
            names.extend(node.output)
    return [n for n in dict.fromkeys(names) if n and n not in inputs and n not in constant]


def shape_nodes(names: Sequence[str]) -> list[onnx.NodeProto]:
    """``Shape(name)`` for each of ``names``, its output named ``name + SUFFIX``."""
    return [onnx.helper.make_node("Shape", [n], [n + SUFFIX], name=n + SUFFIX) for n in names]


def probe_model(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """``model``'s main graph cut down to the nodes ``names`` are computed from, with ``Shape(name)`` of each as
    its outputs (named ``name + SUFFIX``); every graph input stays, so the model's feeds fit it.

    Args:
        model: the original model (its weights may be placeholders: only the protos are copied).
        names: tensors of the main graph whose shapes are wanted.
    """
    graph = model.graph
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    keep: set[int] = set()
    stack = list(names)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        i = producer.get(name)
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(_reads(graph.node[i]))
    out = onnx.GraphProto(name=f"{graph.name}_shapes")
    out.input.extend(graph.input)
    out.node.extend(graph.node[i] for i in sorted(keep))
    out.node.extend(shape_nodes(names))
    out.output.extend(onnx.ValueInfoProto(name=n + SUFFIX) for n in names)
    inputs = {i.name for i in graph.input}  # an overridable initializer keeps its default
    out.initializer.extend(t for t in graph.initializer if t.name in seen or t.name in inputs)
    out.sparse_initializer.extend(s for s in graph.sparse_initializer if s.values.name in seen)
    probe = onnx.ModelProto(ir_version=model.ir_version, graph=out)
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    return probe


def _reads(node: onnx.NodeProto) -> list[str]:
    """The names ``node`` reads, its subgraphs' reads of the outer scope included (a superset of them)."""
    names = [n for n in node.input if n]
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for g in subs:
            for inner in g.node:
                names.extend(_reads(inner))
            names.extend(o.name for o in g.output)
    return names


def disagreements(assumed: Mapping[str, Dims], actual: Mapping[str, Sequence[int]], symbols: Mapping[str, int]) -> dict[str, str]:
    """Where onnxruntime's shapes are not the ones the proof took from shape inference: a sentence by tensor.

    Args:
        assumed: the shapes the certificate used, by tensor (``Certificate.assumed_shapes``).
        actual: onnxruntime's shapes of those tensors, by tensor (a missing one is reported as unchecked).
        symbols: the value of each symbolic dim of the model's inputs in the run.
    """
    problems: dict[str, str] = {}
    bound: dict[str, int] = {}
    for name, dims in assumed.items():
        got = actual.get(name)
        if got is None:
            problems[name] = f"the shape of {name!r} was taken from onnx's shape inference and onnxruntime did not compute it"
            continue
        got = tuple(int(d) for d in got)
        if len(got) != len(dims) or not all(_holds(d, g, symbols, bound) for d, g in zip(dims, got, strict=False)):
            told = ", ".join("?" if d is None else str(d) for d in dims)
            problems[name] = f"onnx's shape inference gives {name!r} the shape [{told}], onnxruntime computes {list(got)}"
    return problems


def _holds(dim: int | str | None, got: int, symbols: Mapping[str, int], bound: dict[str, int]) -> bool:
    """Whether onnxruntime's ``got`` is the dim inference stated (see the module docstring)."""
    if dim is None or dim == "":
        return True
    if isinstance(dim, int):
        return dim == got
    value = 1
    for factor in (f.strip() for f in dim.split("*")):
        if factor.lstrip("-").isdigit():
            value *= int(factor)
        elif factor in symbols:
            value *= int(symbols[factor])
        else:  # a symbol this run gives no value: the same value wherever it stands
            return bound.setdefault(dim, got) == got
    return value == got
