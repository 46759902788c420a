"""What a model computes with besides its graph's nodes: proved equal to the original's, or said why not.

The walk compares nodes; what they mean and some of what they read lives in the model around the graph:

- ``opset_import``: an op's meaning depends on its domain's version (Softmax before opset 13 normalizes a
  flattened block; in an If branch no input takes, no number shows it). Every domain either model imports
  must have the same version in both, imported once (onnxruntime takes the last of two imports, others the
  first);
- ``ir_version``: the rules of the format itself (which initializers a caller may override, among others);
- model-local functions (``ModelProto.functions``): a node calling one is matched by op, domain and
  attributes, so the function's body must be the original's, bit for bit (serialized);
- an initializer that is also a graph input is a default the caller may override: the walk gives it no
  value (it is an input), so its default is compared here, bit for bit, and must be present on both sides
  or on neither.

Sparse initializers are values like any other: the walk reads them densified (:func:`constants.dense`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from converter.verifier.certificate.constants import differs


def differences(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    value_of: Callable[[onnx.TensorProto], np.ndarray] = numpy_helper.to_array,
) -> list[str]:
    """Why ``rewritten`` does not compute with what ``original`` does, outside its graph's nodes (empty: nothing).

    Args:
        original: the model before the rewrite.
        rewritten: the model to check against it.
        value_of: reads a tensor's data (detached weights: see ``certify``).
    """
    problems = [
        f"{who} imports the operators of domain {domain or 'ai.onnx'!r} twice: which version its ops mean is not defined"
        for who, model in (("the original", original), ("the rewritten model", rewritten))
        for domain in _twice(model)
    ]
    theirs, ours = _opsets(original), _opsets(rewritten)
    for domain in sorted(set(theirs) | set(ours)):
        if theirs.get(domain) != ours.get(domain):
            name = domain or "ai.onnx"
            problems.append(
                f"the opset of domain {name!r} is {_version(ours.get(domain))}, the original's {_version(theirs.get(domain))}: "
                "an op's meaning depends on it"
            )
    if original.ir_version != rewritten.ir_version:
        problems.append(f"the IR version is {rewritten.ir_version}, the original's {original.ir_version}")
    problems.extend(_function_differences(original, rewritten))
    problems.extend(_default_differences(original.graph, rewritten.graph, value_of))
    return problems


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def _twice(model: onnx.ModelProto) -> list[str]:
    seen: list[str] = []
    twice = []
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if domain in seen and domain not in twice:
            twice.append(domain)
        seen.append(domain)
    return twice


def _version(v: int | None) -> str:
    return "not imported" if v is None else str(v)


def _function_differences(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> list[str]:
    def key(f: onnx.FunctionProto) -> tuple[str, str, str]:
        return (f.domain, f.name, getattr(f, "overload", ""))

    theirs = {key(f): f.SerializeToString(deterministic=True) for f in original.functions}
    problems = []
    for f in rewritten.functions:
        k = key(f)
        where = f"{k[0]}.{k[1]}" if k[0] else k[1]
        if k not in theirs:
            problems.append(f"the model-local function {where!r} is not the original's (the original has none of that name)")
        elif f.SerializeToString(deterministic=True) != theirs[k]:
            problems.append(f"the model-local function {where!r} differs from the original's (its body, attributes or opsets)")
    missing = set(theirs) - {key(f) for f in rewritten.functions}
    problems.extend(f"the original's model-local function {k[1]!r} is missing" for k in sorted(missing))
    return problems


def _default_differences(
    original: onnx.GraphProto, rewritten: onnx.GraphProto, value_of: Callable[[onnx.TensorProto], np.ndarray]
) -> list[str]:
    """The defaults of overridable inputs (initializers that are also graph inputs), compared bit for bit."""
    theirs = _defaults(original)
    ours = _defaults(rewritten)
    problems = []
    for name in sorted(set(theirs) | set(ours)):
        if name not in ours:
            problems.append(f"input {name!r} has a default value in the original only")
        elif name not in theirs:
            problems.append(f"input {name!r} has a default value the original's does not have")
        else:
            problem = differs(value_of(ours[name]), value_of(theirs[name]), f"default of input {name!r}")
            if problem:
                problems.append(problem)
    return problems


def _defaults(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    inputs = {i.name for i in graph.input}
    return {t.name: t for t in graph.initializer if t.name in inputs}
