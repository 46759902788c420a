"""Reading nodes: domains, attributes with their types, subgraphs, a Transpose's perm, a plain 1x1 Conv."""

from __future__ import annotations

import functools

import onnx
from onnx import AttributeProto, GraphProto, NodeProto

from converter.verifier.certificate.layouts import Layout

DEFAULT_DOMAINS = ("", "ai.onnx")


def is_default(node: NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


@functools.cache
def _defaults(domain: str, op: str, opset: int) -> dict[str, bytes]:
    """The attributes of ``op`` that have a default in the schema at ``opset``: name -> the default, serialized."""
    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except onnx.defs.SchemaError:
        return {}
    found = {}
    for name, attr in schema.attributes.items():
        default = attr.default_value
        if default.type != AttributeProto.UNDEFINED:
            written = AttributeProto()
            written.CopyFrom(default)
            written.name = name
            found[name] = _canonical(written)
    return found


def _canonical(a: AttributeProto) -> bytes:
    """An attribute serialized so that the same value compares equal however it was written (its type tag and
    value only: a doc string or ref name aside)."""
    value = onnx.helper.make_attribute(a.name, onnx.helper.get_attribute_value(a), attr_type=a.type)
    return value.SerializeToString(deterministic=True)


def written(node: NodeProto, opset: int | None = None) -> list[AttributeProto]:
    """``node``'s attributes, less those written out at the value the op's schema gives when they are absent
    (``opset``: the default domain's version; None: every attribute, as written)."""
    if opset is None or node.domain not in DEFAULT_DOMAINS:
        return list(node.attribute)
    defaults = _defaults("", node.op_type, opset)
    return [a for a in node.attribute if a.name not in defaults or _canonical(a) != defaults[a.name]]


class Attributes:
    """A node's attributes by name, each read as the type the caller needs (``get_int("axis", 1)``).

    A value of another type than asked for raises TypeError (a malformed node: what reads it declines).
    ``opset`` given: an attribute written out at its schema default counts as absent (:func:`written`).
    """

    def __init__(self, node: NodeProto, opset: int | None = None) -> None:
        self._values: dict[str, object] = {a.name: onnx.helper.get_attribute_value(a) for a in written(node, opset)}

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __bool__(self) -> bool:
        return bool(self._values)

    def get_int(self, name: str, default: int) -> int:
        value = self._values.get(name, default)
        if not isinstance(value, int | float):
            raise TypeError(f"attribute {name!r} is not a number")
        return int(value)

    def get_float(self, name: str, default: float) -> float:
        value = self._values.get(name, default)
        if not isinstance(value, int | float):
            raise TypeError(f"attribute {name!r} is not a number")
        return float(value)

    def get_ints(self, name: str) -> list[int] | None:
        """The attribute's integers, or None when the node has no such attribute."""
        value = self._values.get(name)
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise TypeError(f"attribute {name!r} is not a list")
        return [int(v) for v in value]

    def same_except(self, other: Attributes, *names: str) -> bool:
        """Whether both nodes have the same attributes, ``names`` aside."""
        mine = {k: v for k, v in self._values.items() if k not in names}
        return mine == {k: v for k, v in other._values.items() if k not in names}


def plain_attributes(node: NodeProto, opset: int | None = None) -> list[tuple[str, bytes]]:
    """The node's attributes other than subgraphs, serialized: two nodes' compare equal when their attributes do.
    ``opset`` given: one written out at its schema default is left out, as if absent (:func:`written`)."""
    return sorted(
        (a.name, _canonical(a) if opset is not None else a.SerializeToString(deterministic=True))
        for a in written(node, opset)
        if a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    )


def graphs_of(node: NodeProto) -> list[tuple[str, GraphProto]]:
    """The node's subgraphs by attribute name (``name[i]`` for a list of graphs)."""
    found = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            found.append((a.name, a.g))
        elif a.type == AttributeProto.GRAPHS:
            found.extend((f"{a.name}[{i}]", g) for i, g in enumerate(a.graphs))
    return found


def holder_key(node: NodeProto) -> str:
    """The name a subgraph's holder goes by in ``RewrittenLayer.graph``: its first output, else its name."""
    return node.output[0] if node.output and node.output[0] else node.name


def transpose_layout(node: NodeProto) -> Layout | bool:
    """A Transpose's perm (None: the identity); False when it has none (the default reverses an axis order we
    may not know) or it is no permutation."""
    for a in node.attribute:
        if a.name == "perm":
            perm = tuple(a.ints)
            if sorted(perm) != list(range(len(perm))):
                return False
            return None if perm == tuple(range(len(perm))) else perm
    return False


def plain_conv(conv: NodeProto) -> str | None:
    """Why ``conv`` is not a plain 1x1 convolution (stride 1, no padding, one group), or None.

    On a 1x1 kernel (the provers compare the weight as ``[K, C, 1, 1]``) a dilation spans one element whatever
    it is, and ``auto_pad`` SAME_UPPER / SAME_LOWER pads nothing at stride 1 (``(k - 1) * d + 1 - s = 0``): both
    are the same convolution, written another way."""
    for a in conv.attribute:
        v = onnx.helper.get_attribute_value(a)
        ok = {
            "kernel_shape": lambda v: list(v) == [1, 1],
            "strides": lambda v: all(s == 1 for s in v),
            "dilations": lambda v: all(d >= 1 for d in v),
            "pads": lambda v: all(p == 0 for p in v),
            "group": lambda v: v == 1,
            "auto_pad": lambda v: (v.decode() if isinstance(v, bytes) else v) in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"),
        }.get(a.name)
        if ok is None or not ok(v):
            return f"the Conv has {a.name}={v!r}; a dense layer is a plain 1x1 convolution"
    return None
