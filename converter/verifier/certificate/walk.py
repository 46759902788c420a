"""A structural certificate: proof, from the two graphs alone, that the rewritten model computes what the original does.

This is translation validation: instead of trusting the rules and passes that produced the rewritten
graph, it is checked after the fact, node by node, without sampled inputs. Every tensor of the
rewritten graph gets a *fact* saying what it equals in the original:

- ``Value(root, perm)``: it equals ``Transpose(root, perm)`` of original tensor ``root`` (``perm``
  None: ``root`` itself). An entry of ``perm`` may be None: a unit axis that is not in ``root``
  (``Unsqueeze``), so ``(0, 2, None, 1)`` is a ``[B, S, C]`` tensor laid out as ``[B, C, 1, S]``.
  Original tensors are first put in a canonical form: the output of a Transpose is its input under
  that perm, an Identity's output is its input, an Unsqueeze's output is its input with unit axes,
  and a Squeeze of only such unit axes takes them away again.
- ``Const``: a constant whose value is compared bit for bit wherever it is used.

Facts come from the graph inputs and are carried forward through the rewritten graph:

- a Transpose composes its perm onto its input's fact, an Identity passes it on;
- a Conv that a rule made (named in a ``RewrittenLayer``) must be a plain 1x1 convolution whose
  weight is, bit for bit, the original weight transposed to ``[K, C, 1, 1]`` (Gemm: ``alpha``
  applied, ``transB`` honoured), whose bias is the original per-channel bias (Gemm: times ``beta``),
  and whose input is the layer's original activation in NCHW (a token sequence ``[B, S, C]``: as
  ``[B, C, 1, S]``); its output is then the layer's original output in the same layout. What the
  layer is, is read from the original graph, not from the rule;
- any other node must have a counterpart in the original graph: the same op and attributes, reading
  the same original tensors under one common permutation ``P``, and the same constants laid out by
  ``P`` (broadcast to full rank, then transposed). ``P`` other than the identity is accepted only
  for elementwise ops, which commute with a layout change. Its outputs are then the counterpart's
  outputs under ``P``. An operand of lower rank than ``P`` is read broadcast (unit axes in front, then
  laid out; a rank-0 one as it is). onnxruntime's QLinearAdd/QLinearMul count as elementwise when each
  scale and zero point is one constant value, bit for bit the original's (compared as they are);
  DynamicQuantizeLinear reads ``P`` too: its quantized output is the original's under ``P``, its scale
  and zero point (of the whole tensor) the original's as they are. Subgraphs (If, Loop, Scan) are checked
  the same way, recursively;
- every graph output must end up equal to the original's output of the same name, unpermuted.

The result is exact up to floating-point reassociation inside the Conv (a dot product summed in
another order): layout, weights, biases and every other op are proved, not sampled. Anything the
walk cannot follow leaves the tensors after it unproved, and the certificate says where and why.

This module deliberately shares no code with the rules and cleanup passes it checks (its own
statement of which ops are elementwise, of what a dense layer's Conv weight is, of permutation
algebra), so a bug there cannot hide by being repeated here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, numpy_helper

from converter.report import RewrittenLayer

# Ops whose result at each position depends only on the inputs at that position (after
# broadcasting), so that Op(Transpose(a, P), Transpose(b, P)) == Transpose(Op(a, b), P).
ELEMENTWISE = frozenset(
    (
        "Abs Acos Acosh Asin Asinh Atan Atanh BitwiseNot Cast Ceil Celu Clip Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid "
        "HardSwish IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh Softplus "
        "Softsign Sqrt Tan Tanh ThresholdedRelu "
        "Add And BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual Less LessOrEqual Max Mean Min Mod "
        "Mul Or Pow PRelu Sub Sum Where Xor"
    ).split()
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
# onnxruntime's quantized elementwise ops: the inputs that are scales and zero points (the others, 0 and 3, are
# data). ``y = saturate(round((sa (A - za) op sb (B - zb)) / sy) + zy)`` at each position after broadcasting, so
# the op commutes with a layout change when each of them is one value for the whole tensor.
QLINEAR_ELEMENTWISE: dict[tuple[str, str], tuple[int, ...]] = {
    ("com.microsoft", "QLinearAdd"): (1, 2, 4, 5, 6, 7),
    ("com.microsoft", "QLinearMul"): (1, 2, 4, 5, 6, 7),
    # y = saturate(round(f(sx (X - zx)) / sy) + zy) element by element (f: sigmoid, or leaky relu with its alpha,
    # which the attribute comparison holds); data is input 0, all five inputs present (the handler requires it)
    ("com.microsoft", "QLinearSigmoid"): (1, 2, 3, 4),
    ("com.microsoft", "QLinearLeakyRelu"): (1, 2, 3, 4),
}
# Quantized layers whose proof lives in certify_integer.py (QLinearMatMul -> QLinearConv, MatMulInteger -> ConvInteger).
INTEGER_CONVS = frozenset({"QLinearConv", "ConvInteger"})
_NCHW = (0, 3, 1, 2)  # Transpose(x_nhwc, _NCHW) is x in NCHW
_TOKENS = (0, 2, None, 1)  # a token sequence [B, S, C] as the Conv reads it: [B, C, 1, S]

# A layout: entry i is the axis of the root that axis i shows, or None for an added unit axis.
Perm = tuple[int | None, ...] | None
GraphKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Value:
    root: str
    perm: Perm = None


@dataclass(frozen=True)
class Const:
    key: tuple[int, str]  # (id of the owning graph's index, name): identifies the tensor
    get: Callable[[], np.ndarray] = field(compare=False, hash=False)


@dataclass(frozen=True)
class Unknown:
    reason: str


Fact = Value | Const | Unknown
EMPTY = Value("")


@dataclass
class LayerProof:
    """The certificate's word on one rewritten layer."""

    status: str  # "proved" | "refuted" | "unproved"
    detail: str = ""


@dataclass
class Certificate:
    layers: dict[str, LayerProof] = field(default_factory=dict)  # by the Conv node's name
    problems: list[str] = field(default_factory=list)  # definite disagreements
    unproved: list[str] = field(default_factory=list)  # what the walk could not follow (and where)
    # What each claimed layer is in the original (by Conv name), for the numeric checks to use.
    originals: dict[str, _DenseLayer | str] = field(default_factory=dict)

    def original_dense(self, conv: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The original layer's weight as [K, C] and bias as [K] (or None); ValueError when it is no dense layer."""
        dense = self.originals.get(conv, "the walk never reached this layer's graph")
        if isinstance(dense, str):
            raise ValueError(dense)
        try:
            return dense.weight_kc(), None if dense.bias is None else dense.bias()
        except _Mismatch as e:
            raise ValueError(str(e)) from None

    @property
    def refuted(self) -> bool:
        return bool(self.problems) or any(p.status == "refuted" for p in self.layers.values())

    @property
    def proved(self) -> bool:
        return not self.refuted and not self.unproved and all(p.status == "proved" for p in self.layers.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "proved": self.proved,
            "problems": self.problems,
            "unproved": self.unproved,
            "layers": {k: {"status": v.status, "detail": v.detail} for k, v in self.layers.items()},
        }


# --- permutation algebra (written out here on purpose; see the module docstring) ---------------


def _then(first: Perm, then: Perm) -> Perm:
    """The layout of Transpose(Transpose(x, first), then), None when that is the identity. A None entry
    of ``then`` adds a unit axis; its other entries must be a permutation of ``first``'s axes."""
    if then is None:
        return first
    if first is None:
        combined = tuple(then)
    else:
        if sorted(i for i in then if i is not None) != list(range(len(first))):
            raise ValueError("rank mismatch")
        combined = tuple(None if i is None else first[i] for i in then)
    return _plain(combined)


def _plain(perm: tuple[int | None, ...]) -> Perm:
    return None if perm == tuple(range(len(perm))) else perm


def _relative(o: Perm, r: Perm) -> Perm:
    """The layout P with ``_then(o, P) == r``: what a tensor laid out as ``r`` is, seen from one laid out
    as ``o`` (of the same root). ValueError when ``r`` lacks a unit axis of ``o``'s or an axis of the root."""
    if o is None:
        return r
    units = [j for j, a in enumerate(o) if a is None]
    where = {a: j for j, a in enumerate(o) if a is not None}
    rel: list[int | None] = []
    for a in r if r is not None else range(len(where)):
        if a is None:
            rel.append(units.pop(0) if units else None)
        elif a in where:
            rel.append(where[a])
        else:
            raise ValueError("rank mismatch")
    if sorted(a for a in rel if a is not None) != list(range(len(o))):
        raise ValueError("rank mismatch")
    return _plain(tuple(rel))


def _lifted(perm: Perm) -> bool:
    return perm is not None and None in perm


def _unsqueezed(perm: Perm, rank: int | None, axes: list[int]) -> Perm:
    """The layout after Unsqueeze(axes) of a tensor laid out as ``perm`` (``rank``: its rank when ``perm`` is None)."""
    r = len(perm) if perm is not None else rank
    if r is None:
        raise ValueError("unknown rank")
    out_rank = r + len(axes)
    new = {_norm(a, out_rank) for a in axes}
    if None in new or len(new) != len(axes):
        raise ValueError("bad axes")
    kept = iter(perm if perm is not None else range(r))
    return _plain(tuple(None if i in new else next(kept) for i in range(out_rank)))


def _squeezed(perm: Perm, axes: list[int]) -> Perm:
    """The layout after Squeeze(axes) when every squeezed axis is an added unit axis; ValueError otherwise."""
    if perm is None:
        raise ValueError("squeezes an axis of the root")
    gone = {_norm(a, len(perm)) for a in axes}
    if not axes or None in gone or len(gone) != len(axes) or any(perm[a] is not None for a in gone):  # type: ignore[index]
        raise ValueError("squeezes an axis of the root")
    return _plain(tuple(p for i, p in enumerate(perm) if i not in gone))


def _perm_attr(node: NodeProto) -> Perm | bool:
    """A Transpose's perm; False when it has none (the default reverses an axis order we may not know)."""
    for a in node.attribute:
        if a.name == "perm":
            perm = tuple(a.ints)
            if sorted(perm) != list(range(len(perm))):
                return False
            return None if perm == tuple(range(len(perm))) else perm
    return False


def _is_default(node: NodeProto) -> bool:
    return node.domain in _DEFAULT_DOMAINS


def _graphs_of(node: NodeProto) -> list[tuple[str, GraphProto]]:
    found = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            found.append((a.name, a.g))
        elif a.type == AttributeProto.GRAPHS:
            found.extend((f"{a.name}[{i}]", g) for i, g in enumerate(a.graphs))
    return found


# --- ops with axes, read in another layout ------------------------------------------------------
#
# A node of the rewritten graph reading its data as Transpose(original input, P) computes
# Transpose(original output, Q) when its axes are the original's seen through P: the rewritten
# node's axis a is the original's axis P[a]. For each op: (data input slots, axes/pads input slots);
# ALL means every input not listed as axes is data (Concat).
ALL = (-1,)
AXIS_OPS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "Softmax": ((0,), ()),
    "LogSoftmax": ((0,), ()),
    "Hardmax": ((0,), ()),
    "Concat": (ALL, ()),
    "Split": ((0,), (1,)),
    "Slice": ((0,), (1, 2, 3, 4)),
    "Pad": ((0,), (1, 3)),
    "Squeeze": ((0,), (1,)),
    "Unsqueeze": ((0,), (1,)),
    "Gather": ((0,), ()),
    # Scale and zero point (inputs 1, 2) are neither laid out nor axes: they must be the original's as they are.
    "QuantizeLinear": ((0,), ()),
    "DequantizeLinear": ((0,), ()),
    **{
        op: ((0,), (1,))
        for op in (
            "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare"
        ).split()
    },
}


def _attrs(node: NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _norm(axis: int, rank: int) -> int | None:
    a = axis + rank if axis < 0 else axis
    return a if 0 <= a < rank else None


def _dropped(perm: tuple[int | None, ...], removed: set[int]) -> Perm:
    """The layout that is left when the rewritten axes ``removed`` (original axes perm[a]) disappear."""
    kept = [perm[a] for a in range(len(perm)) if a not in removed]
    renumbered = {p: i for i, p in enumerate(sorted(p for p in kept if p is not None))}
    return _plain(tuple(None if p is None else renumbered[p] for p in kept)) if kept else None


def _axis_rule(
    node: NodeProto,
    cand: NodeProto,
    perm: tuple[int, ...],
    r_params: dict[int, list[int] | None],
    o_params: dict[int, list[int] | None],
    ins: list[Fact],
    opset: int,
) -> Perm | str:
    """The output layout Q when ``node`` in layout ``perm`` is ``cand`` in the original, else why not."""
    op, rank = node.op_type, len(perm)
    o_rank = sum(p is not None for p in perm)  # the original's rank: added unit axes are not its axes
    ra, oa = _attrs(node), _attrs(cand)
    if o_rank != rank and op in ("Gather", "Pad", "Unsqueeze"):
        return f"{op} read with added unit axes"

    def same_except(*names: str) -> bool:
        return {k: v for k, v in ra.items() if k not in names} == {k: v for k, v in oa.items() if k not in names}

    def maps(r_axes: list[int], o_axes: list[int], in_order: bool) -> bool:
        rn, on = [_norm(a, rank) for a in r_axes], [_norm(a, o_rank) for a in o_axes]
        if None in rn or None in on or len(rn) != len(on) or len(set(rn)) != len(rn):
            return False
        mapped = [perm[a] for a in rn]  # type: ignore[index]
        if None in mapped:
            return False  # an added unit axis is none of the original's
        return mapped == on if in_order else sorted(mapped) == sorted(on)  # type: ignore[type-var]

    def axes(attrs: dict[str, object], params: dict[int, list[int] | None]) -> list[int] | None:
        if "axes" in attrs:
            return list(attrs["axes"])  # type: ignore[call-overload]
        return params.get(1)

    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        if opset < 13:
            # It flattens its input at the axis (default 1) and normalizes each trailing block as one: the
            # same op on the same axis is the same computation when the layout keeps the block's axes.
            a_r, a_o = _norm(int(ra.get("axis", 1)), rank), _norm(int(oa.get("axis", 1)), rank)  # type: ignore[call-overload]
            if o_rank != rank or a_r is None or a_r != a_o or not same_except() or set(perm[a_r:]) != set(range(a_r, rank)):
                return f"{op} before opset 13 flattens its input at the axis: this layout changes what it normalizes"
            return perm
        if not same_except("axis") or not maps([int(ra.get("axis", -1))], [int(oa.get("axis", -1))], True):  # type: ignore[call-overload]
            return f"the {op} axis is not the original's under the layout"
        return perm
    if op in ("Concat", "Split", "Gather"):
        default = 0
        if not same_except("axis") or not maps([int(ra.get("axis", default))], [int(oa.get("axis", default))], True):  # type: ignore[call-overload]
            return f"the {op} axis is not the original's under the layout"
        if op == "Split" and r_params.get(1) != o_params.get(1):
            return "the split sizes differ"
        if op == "Gather":
            indices = ins[1]
            if not isinstance(indices, Const):
                return "Gather indices of unknown rank"
            m = np.asarray(indices.get()).ndim
            a_r = _norm(int(ra.get("axis", 0)), rank)  # type: ignore[call-overload]
            assert a_r is not None  # maps() checked it
            a_o = perm[a_r]
            # The output holds the data's axes before the gathered one, then the indices' m axes, then the
            # rest: each rewritten output axis is found in the original's output through ``perm``.
            q = [0] * (rank - 1 + m)
            for j in range(rank):
                if j != a_r:
                    o = perm[j]
                    q[j if j < a_r else j + m - 1] = o if o < a_o else o + m - 1
            for d in range(m):
                q[a_r + d] = a_o + d
            return _then(None, tuple(q))
        return perm
    if op in ("QuantizeLinear", "DequantizeLinear"):
        # (q - zero_point) * scale and its inverse: per element with a scalar scale; with a 1-D scale, per
        # position along ``axis`` (default 1), so that axis must be the original's seen through the layout.
        scale = ins[1] if len(ins) > 1 else None
        if not isinstance(scale, Const):
            return f"the {op} scale is not a constant"
        if int(ra.get("block_size", 0)) or int(oa.get("block_size", 0)):  # type: ignore[call-overload]
            return f"{op} in blocks in another layout"
        if np.asarray(scale.get()).ndim == 0:
            return perm if same_except() else f"the {op} attributes differ"
        if not same_except("axis") or not maps([int(ra.get("axis", 1))], [int(oa.get("axis", 1))], True):  # type: ignore[call-overload]
            return f"the {op} axis is not the original's under the layout"
        return perm
    if op == "Slice":
        if opset < 10 or ra or oa:
            return "Slice before opset 10 in another layout"
        if r_params.get(1) != o_params.get(1) or r_params.get(2) != o_params.get(2):
            return "the Slice starts or ends differ"
        n = len(r_params.get(1) or [])
        ones = [1] * n
        if (r_params.get(4) or ones) != (o_params.get(4) or ones):
            return "the Slice steps differ"
        default = list(range(n))
        if not maps(r_params.get(3) or default, o_params.get(3) or default, True):
            return "the Slice axes are not the original's under the layout"
        return perm
    if op == "Pad":
        if opset < 11 or not same_except():
            return "Pad with attribute pads, or another mode, in another layout"
        rp, op_ = r_params.get(1), o_params.get(1)
        if rp is None or op_ is None:
            return "Pad without pads"
        if r_params.get(3) is None and o_params.get(3) is None:
            if len(rp) != 2 * rank or len(op_) != 2 * rank:
                return "Pad pads of the wrong length"
            if any(rp[a] != op_[perm[a]] or rp[rank + a] != op_[rank + perm[a]] for a in range(rank)):
                return "the pads are not the original's under the layout"
            return perm
        r_axes, o_axes = r_params.get(3), o_params.get(3)
        if r_axes is None or o_axes is None or rp != op_ or not maps(r_axes, o_axes, True):
            return "the Pad axes are not the original's under the layout"
        return perm
    if op.startswith("Reduce") or op == "Squeeze":
        if not same_except("axes"):
            return f"the {op} attributes differ"
        r_axes, o_axes = axes(ra, r_params), axes(oa, o_params)
        if op == "Squeeze" and (r_axes is None or o_axes is None):
            return "Squeeze without axes in another layout"
        if not r_axes or not o_axes:
            if bool(r_axes) != bool(o_axes):
                return f"the {op} axes differ"
            if int(ra.get("noop_with_empty_axes", 0)):  # type: ignore[call-overload]
                return perm
            return perm if int(ra.get("keepdims", 1)) else None  # type: ignore[call-overload]
        if not maps(r_axes, o_axes, False):
            return f"the {op} axes are not the original's under the layout"
        if op != "Squeeze" and int(ra.get("keepdims", 1)):  # type: ignore[call-overload]
            return perm
        return _dropped(perm, {_norm(a, rank) for a in r_axes})  # type: ignore[misc]
    if op == "Unsqueeze":
        if not same_except("axes"):
            return "the Unsqueeze attributes differ"
        r_axes, o_axes = axes(ra, r_params), axes(oa, o_params)
        if r_axes is None or o_axes is None or len(r_axes) != len(o_axes):
            return "the Unsqueeze axes differ in number"
        out_rank = rank + len(r_axes)
        rn = sorted({_norm(a, out_rank) for a in r_axes})  # type: ignore[type-var]
        on = sorted({_norm(a, out_rank) for a in o_axes})  # type: ignore[type-var]
        if None in rn or None in on or len(rn) != len(r_axes) or len(on) != len(o_axes):
            return "bad Unsqueeze axes"
        r_kept = [p for p in range(out_rank) if p not in rn]
        o_kept = [p for p in range(out_rank) if p not in on]
        q = [0] * out_rank
        for i, p in enumerate(r_kept):
            q[p] = o_kept[perm[i]]
        for p_r, p_o in zip(rn, on, strict=True):  # new axes have size 1: any order of them is the same
            q[p_r] = p_o  # type: ignore[index]
        return _then(None, tuple(q))
    return f"{op} is not an axis op this checker knows"


def _plain_attributes(node: NodeProto) -> list[tuple[str, bytes]]:
    return sorted(
        (a.name, a.SerializeToString(deterministic=True))
        for a in node.attribute
        if a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    )


def _holder_key(node: NodeProto) -> str:
    return node.output[0] if node.output and node.output[0] else node.name


# --- the original side: canonical forms -------------------------------------------------------


class _Original:
    """One original graph: producers, constants, and each tensor's canonical fact."""

    def __init__(
        self,
        graph: GraphProto,
        parent: _Original | None,
        value_of: Callable[[TensorProto], np.ndarray],
        opsets: Sequence[onnx.OperatorSetIdProto] = (),
        model: onnx.ModelProto | None = None,
    ) -> None:
        self.graph = graph
        self.parent = parent
        self.model = model  # the main graph's model: where ranks are inferred from
        self._shapes: dict[str, tuple[int | str | None, ...] | None] | None = None
        self.value_of = value_of
        self.opsets = list(opsets) if parent is None else parent.opsets
        self.inputs = {i.name for i in graph.input}
        self.initializers = {t.name: t for t in graph.initializer if t.name not in self.inputs}
        self.sparse = {s.values.name for s in graph.sparse_initializer}
        self.producers: dict[str, NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producers[out] = node
        self._canon: dict[str, Fact] = {}
        self._by_root: dict[str, list[tuple[NodeProto, int]]] | None = None

    def owner(self, name: str) -> _Original | None:
        scope: _Original | None = self
        while scope is not None:
            if name in scope.producers or name in scope.initializers or name in scope.inputs or name in scope.sparse:
                return scope
            scope = scope.parent
        return None

    def canon(self, name: str) -> Fact:
        if not name:
            return EMPTY
        scope = self.owner(name)
        if scope is None:
            return Unknown(f"{name!r} is not defined in the original")
        if scope is not self:
            return scope.canon(name)
        if name in self._canon:
            return self._canon[name]
        fact = self._compute(name)
        self._canon[name] = fact
        return fact

    def _compute(self, name: str) -> Fact:
        if name in self.initializers:
            t = self.initializers[name]
            return Const((id(self), name), lambda t=t: self.value_of(t))
        node = self.producers.get(name)
        if node is None:
            return Value(name)  # a graph input or a sparse initializer
        if _is_default(node) and node.op_type == "Constant":
            return _constant_node_fact(node, (id(self), name))
        if _is_default(node) and node.op_type == "Identity":
            return self.canon(node.input[0])
        if _is_default(node) and node.op_type in _CONSTANT_OPS and len(node.output) == 1:
            ins = [self.canon(n) for n in node.input]
            if ins and all(isinstance(f, Const) or f is EMPTY for f in ins) and isinstance(ins[0], Const):
                # Evaluated once now to know it is a constant at all (a node the evaluator rejects stays a
                # computed tensor), and again when read, so that no value is held in between.
                if _run_on_constants(node, ins, self.opsets) is not None:
                    return Const((id(self), name), lambda: _run_on_constants(node, ins, self.opsets))
        if _is_default(node) and node.op_type == "Transpose":
            perm = _perm_attr(node)
            inner = self.canon(node.input[0])
            if perm is not False and isinstance(inner, Value):
                try:
                    return Value(inner.root, _then(inner.perm, perm))  # type: ignore[arg-type]
                except ValueError:
                    return Value(name)
        if _is_default(node) and node.op_type in ("Unsqueeze", "Squeeze") and len(node.output) == 1:
            unit = _unit_axes(node, self.canon(node.input[0]), self.canon, self.rank)
            if unit is not None:
                return unit
        if _is_default(node) and node.op_type == "Reshape" and len(node.input) == 2:
            merged = _merge_fact(node, self.canon(node.input[0]), self.canon(node.input[1]))
            if merged is not None:  # the same fact the walk gives the same node (``_Walk._merge``)
                return merged
            moved = self._transposed_ancestor(node)
            if moved is not None:
                return moved
        return Value(name)

    def _transposed_ancestor(self, node: NodeProto) -> Value | None:
        """A Reshape that ends a chain of Reshapes, Transposes, Squeezes and Unsqueezes (a Transpose among them)
        whose result is only a Transpose of a tensor earlier in the chain: that tensor under a layout (the
        earliest such, so that every such tensor of one chain has one root). dynamo computes ``K^T`` as
        ``[B,H,S,D] -> [B*H,S,D] -> [B*H,D,S] -> [B,H,D,S]``: ``Transpose(k, [0, 1, 3, 2])``."""
        chain = [node]
        while len(chain) < _MAX_STEPS:
            prev = self.producers.get(chain[0].input[0]) if chain[0].input else None
            if prev is None or not _is_default(prev) or prev.op_type not in _REARRANGE or len(prev.output) != 1:
                break
            chain.insert(0, prev)
        if not any(n.op_type == "Transpose" for n in chain):
            return None
        for i, first in enumerate(chain):
            start = first.input[0]
            shape = self.shape(start)
            steps = [_rearrange_step(n, self.canon, self.shape) for n in chain[i:]]
            if shape is None or any(st is None for st in steps):
                continue
            dims = _symbolic(start, shape)
            ours = _elements(dims, steps)  # type: ignore[arg-type]
            m = None if ours is None else _relate(ours, _elements(dims, ()))
            if m is None or None in m or not _same_elements(dims, steps, (("layout", m),)):  # type: ignore[arg-type]
                continue
            base = self.canon(start)
            if isinstance(base, Value) and base.root and not _lifted(base.perm):
                try:
                    return Value(base.root, _then(base.perm, _plain(m)))
                except ValueError:
                    return None
        return None

    def rank(self, name: str) -> int | None:
        """The rank onnx's shape inference gives an original tensor (inferred once, on first need), or None."""
        if name.startswith(_MERGED):
            return 3  # two dims kept, the rest merged into one
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def shape(self, name: str) -> tuple[int | str | None, ...] | None:
        """The shape onnx's shape inference gives an original tensor (None entries: dims it cannot tell)."""
        top = self
        while top.parent is not None:
            top = top.parent
        if top._shapes is None:
            top._shapes = _inferred_shapes(top.model) if top.model is not None else {}
        return top._shapes.get(name)

    def consumers_by_root(self, root: str) -> list[tuple[NodeProto, int]]:
        """Nodes of this graph that read a tensor whose canonical root is ``root``, with the input slot."""
        if self._by_root is None:
            index: dict[str, list[tuple[NodeProto, int]]] = defaultdict(list)
            for node in self.graph.node:
                for slot, inp in enumerate(node.input):
                    fact = self.canon(inp)
                    if isinstance(fact, Value) and fact.root:
                        index[fact.root].append((node, slot))
            self._by_root = index
        return self._by_root.get(root, [])


# Ops on constants whose result the rewrite may treat as a constant (exporters leave them on
# initializers). The value is computed here by onnx's reference evaluator, not by the rewrite's code.
# DequantizeLinear of constants is a quantized weight or bias: its value is the float tensor the layer
# uses, so a layer read through it is compared by that value (the integers, scale and zero point at once).
_CONSTANT_OPS = frozenset({"Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "DequantizeLinear"})
# Of those, the ones a rewritten graph may compute anew from constants (a quantized Conv weight laid out
# as [K, C, 1, 1]): the value is computed the same way on both sides and compared wherever it is used.
_NEW_CONSTANT_OPS = frozenset({"DequantizeLinear"})


def _merge_fact(node: NodeProto, x: Fact, target: Fact) -> Value | None:
    """``Reshape(x, [0, 0, c])`` (``allowzero`` 0, ``c`` > 0) of a known tensor: ``x`` with every axis after the
    first two merged, a root of its own (the original's node and the rewritten's get the same fact)."""
    if not isinstance(x, Value) or not x.root or not isinstance(target, Const) or int(_attrs(node).get("allowzero", 0)):  # type: ignore[call-overload]
        return None
    t = np.asarray(target.get())
    if t.dtype.kind not in "iu" or t.shape != (3,) or t[0] != 0 or t[1] != 0 or t[2] <= 0:
        return None
    return Value(_merged(x))


def _merged(x: Value) -> str:
    """The root naming ``x`` (an original tensor under a layout) with every axis after the first two merged
    into one. No graph name holds a NUL, so it cannot meet a real tensor's name."""
    return f"{_MERGED}{x.root}:{x.perm}"


_MERGED = "\0merged:"
_FLAT = "\0flat:"  # an original flat [N*H*W, C] tensor inside a quantized sandwich, seen as [N, H, W, C]


def _unit_axes(node: NodeProto, inner: Fact, fact_of: Callable[[str], Fact], rank: Callable[[str], int | None]) -> Value | None:
    """An Unsqueeze's output as its input with unit axes added, a Squeeze's of only added unit axes as its
    input without them; None when the node is not that (axes not constant, a squeezed axis of the root)."""
    if not isinstance(inner, Value) or not inner.root:
        return None
    axes: list[int] | None = None
    for a in node.attribute:
        if a.name == "axes":
            axes = list(a.ints)
    if axes is None and len(node.input) > 1 and node.input[1]:
        f = fact_of(node.input[1])
        if isinstance(f, Const):
            v = np.asarray(f.get())
            if v.dtype.kind in "iu" and v.ndim <= 1:
                axes = [int(x) for x in v.reshape(-1)]
    if not axes:
        return None
    try:
        if node.op_type == "Unsqueeze":
            return Value(inner.root, _unsqueezed(inner.perm, rank(inner.root) if inner.perm is None else None, axes))
        return Value(inner.root, _squeezed(inner.perm, axes))
    except ValueError:
        return None


_SMALL = 1024  # elements: constants kept for shape inference (shapes, axes); larger ones become typed inputs


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str | None, ...] | None]:
    """Each tensor's shape as onnx's shape inference (with data propagation, so that a Reshape target an
    exporter computes from ``Shape`` is followed) finds it, on a copy without the large weights' data.
    A dim it cannot tell is None; a tensor it finds no shape for, or two graphs give two ranks, is None."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.sparse_initializer.extend(model.graph.sparse_initializer)
    declared = {i.name for i in g.input}
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL and int(np.prod(t.dims)) <= _SMALL and (t.raw_data or t.dims):
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    inferred = None
    for data_prop in (True, False):  # data propagation fails on some graphs that plain inference takes
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=data_prop)
            break
        except Exception:  # noqa: BLE001, PERF203 - no shapes: what needed one stays unfollowed
            continue
    if inferred is None:
        return {}
    shapes: dict[str, tuple[int | str | None, ...] | None] = {}

    def put(name: str, shape: tuple[int | str | None, ...] | None) -> None:
        if name in shapes and (shapes[name] is None or shape is None or len(shapes[name]) != len(shape)):  # type: ignore[arg-type]
            shapes[name] = None
        else:
            shapes[name] = shape

    stack = [inferred.graph]
    while stack:
        graph = stack.pop()
        for vi in (*graph.input, *graph.value_info, *graph.output):
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            dims = None
            if tt is not None and tt.HasField("shape"):
                dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
            put(vi.name, dims)
        for t in graph.initializer:
            put(t.name, tuple(int(d) for d in t.dims))
        for node in graph.node:
            stack.extend(sub for _, sub in _graphs_of(node))
    return shapes


def _run_on_constants(node: NodeProto, ins: Sequence[Fact], opsets: Sequence[onnx.OperatorSetIdProto]) -> np.ndarray | None:
    """The node's output computed by onnx's reference evaluator, or None when it rejects the node."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type == "DequantizeLinear":
        return _dequantize(node, ins)

    try:
        inits = [numpy_helper.from_array(np.asarray(f.get()), n) for n, f in zip(node.input, ins, strict=True) if n]
        out = onnx.helper.make_tensor_value_info(node.output[0], TensorProto.UNDEFINED, None)
        graph = onnx.helper.make_graph([node], "constant", [], [out], inits)
        model = onnx.helper.make_model(graph, opset_imports=list(opsets) or [onnx.helper.make_opsetid("", 17)])
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # noqa: BLE001 - whatever the evaluator rejects is simply not a constant here
        return None


def _dequantize(node: NodeProto, ins: Sequence[Fact]) -> np.ndarray | None:
    """DequantizeLinear of integer constants: ``float(int64(q) - int64(zero_point)) * scale`` in the scale's
    dtype, the scale and zero point scalar or 1-D along ``axis`` (default 1). Written out here because onnx's
    reference evaluator has no DequantizeLinear before opset 19 (the op is the same from opset 13 on for
    these types); None for what it does not cover (blocks, an output_dtype other than the scale's, float8 or
    packed 4-bit data). A one-element 1-D scale is one value for the whole tensor, as onnxruntime reads it."""
    try:
        attrs = _attrs(node)
        if int(attrs.get("block_size", 0)):  # type: ignore[call-overload]
            return None
        q = np.asarray(ins[0].get())  # type: ignore[union-attr]
        scale = np.asarray(ins[1].get())  # type: ignore[union-attr]
        zero = np.asarray(ins[2].get()) if len(ins) > 2 and isinstance(ins[2], Const) else np.zeros_like(scale, dtype=np.int64)
        if q.dtype.kind not in "iu" or q.dtype.itemsize > 4 or scale.dtype.kind != "f" or zero.dtype.kind not in "iu":
            return None
        out_type = int(attrs.get("output_dtype", 0))  # type: ignore[call-overload]
        if out_type and onnx.helper.tensor_dtype_to_np_dtype(out_type) != scale.dtype:
            return None  # (opset 23: the output type may differ from the scale's; not covered)
        if scale.ndim == 1 and scale.size == 1 and zero.size == 1:
            scale, zero = scale.reshape(()), zero.reshape(())  # one value for the whole tensor, as onnxruntime reads it
        if zero.shape != scale.shape or scale.ndim > 1:
            return None
        if scale.ndim == 1:
            axis = _norm(int(attrs.get("axis", 1)), q.ndim)  # type: ignore[call-overload]
            if axis is None or q.shape[axis] != scale.shape[0]:
                return None
            shape = [1] * q.ndim
            shape[axis] = scale.shape[0]
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        diff = q.astype(np.int64) - zero.astype(np.int64)
        return np.asarray(diff.astype(scale.dtype) * scale, dtype=scale.dtype)
    except (TypeError, ValueError, AttributeError, IndexError):
        return None


def _constant_node_fact(node: NodeProto, key: tuple[int, str]) -> Fact:
    for a in node.attribute:
        if a.name == "value" and a.type == AttributeProto.TENSOR:
            return Const(key, lambda t=a.t: numpy_helper.to_array(t))
        if a.name in ("value_float", "value_int"):
            v = a.f if a.name == "value_float" else a.i
            return Const(key, lambda v=v, f=a.name == "value_float": np.array(v, np.float32 if f else np.int64))
        if a.name in ("value_floats", "value_ints"):
            vs = list(a.floats) if a.name == "value_floats" else list(a.ints)
            return Const(key, lambda vs=vs, f=a.name == "value_floats": np.array(vs, np.float32 if f else np.int64))
    return Value(node.output[0])  # string or sparse constants: compared like any computed tensor


# --- the layer a rule claims to have replaced, read from the original graph ------------------


def _reshaped_pair(orig: _Original, name: str) -> bool:
    """Whether ``name`` is ``DequantizeLinear(QuantizeLinear(Reshape(x)))``: a quantized sandwich's activation."""
    pair = _qdq_pair(orig, name)
    first = orig.producers.get(pair[0].input[0]) if pair else None
    return first is not None and first.op_type == "Reshape" and _is_default(first)


@dataclass
class _DenseLayer:
    x: str
    weight_kc: Callable[[], np.ndarray]  # the expected Conv weight as [K, C]
    bias: Callable[[], np.ndarray] | None  # the expected Conv bias as [K], or None
    # A quantized sandwich: the original (QuantizeLinear, DequantizeLinear) pairs on the flat activation and
    # on the flat output, inside the Reshapes, and the MatMul's flat output.
    in_pair: tuple[NodeProto, NodeProto] | None = None
    out_pair: tuple[NodeProto, NodeProto] | None = None
    flat: str = ""
    end: str = ""  # the original tensor the layer ends in (the second Reshape's output), when not ``output``


def _qdq_pair(orig: _Original, name: str) -> tuple[NodeProto, NodeProto] | None:
    """(QuantizeLinear, DequantizeLinear) when ``name`` is ``DequantizeLinear(QuantizeLinear(t))`` in the original."""
    dq = orig.producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or not _is_default(dq):
        return None
    q = orig.producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or not _is_default(q):
        return None
    return q, dq


def _original_layer(orig: _Original, layer: RewrittenLayer) -> _DenseLayer | str:
    """What the original graph computes from ``layer.input`` to ``layer.output``, or why it is not a dense layer."""
    node = orig.producers.get(layer.output)
    if node is None:
        return f"the original has no node producing {layer.output!r}"
    add_bias: Const | None = None
    if _is_default(node) and node.op_type == "Add" and layer.output != layer.anchor:
        a, b = (orig.canon(n) for n in node.input)
        if isinstance(b, Const) and not isinstance(a, Const):
            add_bias, inner = b, node.input[0]
        elif isinstance(a, Const) and not isinstance(b, Const):
            add_bias, inner = a, node.input[1]
        else:
            return f"{layer.output!r} is an Add without exactly one constant operand"
        node = orig.producers.get(inner)
        if node is None:
            return f"nothing produces {inner!r}"
    sandwich = False
    in_pair = out_pair = None
    end = layer.output
    if (
        _is_default(node)
        and node.op_type in ("MatMul", "Gemm")
        and node.output[0] == layer.anchor
        and _reshaped_pair(orig, node.input[0])
    ):
        # A quantized sandwich claimed up to its MatMul's flat output (what the Conv computes before its
        # output pair): the layer ends at the second Reshape, after the output's pair if there is one.
        readers = [n for n in orig.graph.node if layer.anchor in n.input]
        after = [n for n in orig.graph.node if readers and readers[0].output[0] in n.input]
        pair = None
        if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and len(after) == 1:
            pair = _qdq_pair(orig, after[0].output[0])
        flat = pair[1].output[0] if pair else layer.anchor
        last = [n for n in orig.graph.node if flat in n.input]
        if len(last) != 1 or last[0].op_type != "Reshape" or not _is_default(last[0]):
            return f"the quantized layer {layer.anchor!r} does not end in a Reshape"
        node, end = last[0], last[0].output[0]
    if _is_default(node) and node.op_type == "Reshape" and node.output[0] != layer.anchor:
        sandwich = True
        out_pair = _qdq_pair(orig, node.input[0])  # a quantized sandwich: the output's pair inside the Reshapes
        node = orig.producers.get(node.input[0] if out_pair is None else out_pair[0].input[0])
        if node is None:
            return "the Reshape's input has no producer"
    if node.output[0] != layer.anchor or not _is_default(node) or node.op_type not in ("MatMul", "Gemm"):
        return f"the chain from {layer.output!r} does not lead back to the MatMul/Gemm {layer.anchor!r}"
    act = node.input[0]
    if sandwich:
        in_pair = _qdq_pair(orig, act)
        first = orig.producers.get(act if in_pair is None else in_pair[0].input[0])
        if first is None or first.op_type != "Reshape" or not _is_default(first):
            return "the sandwich's first Reshape is missing"
        act = first.input[0]
    if act != layer.input:
        return f"the layer reads {act!r}, not {layer.input!r}"
    weight = orig.canon(node.input[1])
    if not isinstance(weight, Const):
        return "the weight is not a constant in the original"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        if attrs:
            return "MatMul with attributes"

        def weight_kc(w: Const = weight) -> np.ndarray:
            v = w.get()
            if v.ndim < 2 or any(d != 1 for d in v.shape[:-2]):
                raise _Mismatch(f"the original weight has shape {list(v.shape)}, not [C, K]")
            return np.ascontiguousarray(v.reshape(v.shape[-2:]).T)

        bias = None if add_bias is None else _bias_vector(add_bias, weight, 1.0)
        if (in_pair or out_pair) and bias is not None:
            return "a quantized sandwich with a bias folded from outside its quantization pairs"
        return _DenseLayer(act, weight_kc, bias, in_pair, out_pair, node.output[0], end)
    # Gemm
    if attrs.get("transA", 0):
        return "Gemm with transA"
    trans_b, alpha, beta = bool(attrs.get("transB", 0)), float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))

    def gemm_kc(w: Const = weight) -> np.ndarray:
        v = w.get()
        if v.ndim != 2:
            raise _Mismatch(f"the original Gemm weight has rank {v.ndim}")
        kc = np.ascontiguousarray(v if trans_b else v.T)
        return kc if alpha == 1.0 else (kc * np.asarray(alpha, dtype=kc.dtype)).astype(kc.dtype)

    gemm_c = orig.canon(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if (in_pair or out_pair) and add_bias is not None:
        return "a quantized sandwich with a bias folded from outside its quantization pairs"
    if gemm_c is not None and not isinstance(gemm_c, Const):
        return "the Gemm's bias is not a constant"
    if gemm_c is not None and add_bias is not None:
        return "both the Gemm's bias and an Add after it"
    if gemm_c is not None:
        bias = _bias_vector(gemm_c, weight, beta, trans_b)
    else:
        bias = None if add_bias is None else _bias_vector(add_bias, weight, 1.0, trans_b)
    return _DenseLayer(act, gemm_kc, bias, in_pair, out_pair, node.output[0], end)


class _Mismatch(Exception):
    """A definite disagreement found while computing an expected value."""


def _bias_vector(bias: Const, weight: Const, scale: float, k_first: bool = False) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        b = bias.get()
        w = weight.get()
        k = w.shape[-2] if k_first else w.shape[-1]
        if b.dtype != w.dtype:
            raise _Mismatch(f"the original bias is {b.dtype}, the weight {w.dtype}")
        if b.ndim > 4 or any(d != 1 for d in b.shape[:-1]) or (b.ndim and b.shape[-1] not in (1, k)):
            raise _Mismatch(f"the original bias of shape {list(b.shape)} is not per output channel")
        vec = np.broadcast_to(b.reshape(-1), (k,))
        return vec if scale == 1.0 else (vec * np.asarray(scale, dtype=b.dtype)).astype(b.dtype)

    return make


# --- rearrangements: chains of Reshape, Transpose, Squeeze and Unsqueeze ------------------------
#
# Such a chain only moves the elements of its root. Both chains (the rewritten graph's and the original's)
# are applied with numpy to the root's element indices, each symbolic size set to a prime of its own, and
# compared: at two sets of sizes, so that a size written as a constant where the root's is symbolic cannot
# pass. (The cleanup that writes these chains reasons with ``rearrange.py``; none of it is used here.)

_VIEW = "\0view:"
_SHAPE = "\0shape:"  # the shape vector of a tensor, read in a layout: only a Gather of it is followed
_REARRANGE = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})
_MAX_REARRANGEMENTS = 96  # original tensors looked at from one root
_MAX_STEPS = 12
_CHECK_ELEMENTS = 1 << 24  # a root larger than this (with symbolic sizes set) is not followed (64 MB of int32 indices)
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)
# ("layout", perm with None entries) | ("transpose", perm) | ("squeeze"/"unsqueeze", axes)
# | ("reshape", target with None for "what is left", allowzero)
_Step = tuple[object, ...]


def _rearrange_step(
    node: NodeProto, fact_of: Callable[[str], Fact], out_shape: Callable[[str], tuple[int | str | None, ...] | None]
) -> _Step | None:
    """What ``node`` does to the elements, from its attributes and constant inputs (a Reshape whose target
    is computed: the output shape inference found, with one dim it cannot tell as "what is left")."""
    attrs = _attrs(node)
    if node.op_type == "Transpose":
        perm = attrs.get("perm")
        return ("transpose", tuple(perm)) if perm is not None else None  # type: ignore[arg-type]
    if node.op_type == "Reshape":
        if len(node.input) != 2:
            return None
        f = fact_of(node.input[1])
        allowzero = bool(attrs.get("allowzero", 0))
        if isinstance(f, Const):
            t = np.asarray(f.get())
            if t.dtype.kind not in "iu" or t.ndim != 1:
                return None
            return ("reshape", tuple(int(v) for v in t), allowzero)
        shape = out_shape(node.output[0])
        if shape is None:
            return None
        return ("reshape", tuple(d if isinstance(d, int) else None for d in shape), True)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1:
        f = fact_of(node.input[1])
        if isinstance(f, Const):
            t = np.asarray(f.get())
            axes = [int(v) for v in t.reshape(-1)] if t.dtype.kind in "iu" and t.ndim <= 1 else None
    return (node.op_type.lower(), tuple(axes)) if axes else None  # type: ignore[arg-type]


def _symbolic(name: str, shape: Sequence[int | str | None]) -> list[int | str]:
    """``name``'s dims with each one shape inference could not tell made a symbol of its own."""
    return [d if isinstance(d, int | str) and d != "" else f"?{name}:{i}" for i, d in enumerate(shape)]


def _sizes(dims: Sequence[int | str], first: int) -> list[int] | None:
    """``dims`` with each symbolic size set to a prime of its own, starting from ``_PRIMES[first]``."""
    symbols: dict[str, int] = {}
    out = []
    for d in dims:
        if isinstance(d, str):
            if d not in symbols:
                if first + len(symbols) >= len(_PRIMES):
                    return None
                symbols[d] = _PRIMES[first + len(symbols)]
            out.append(symbols[d])
        else:
            out.append(int(d))
    return out if int(np.prod(out)) <= _CHECK_ELEMENTS else None


def _elements(dims: Sequence[int | str], steps: Sequence[_Step], first: int = 0) -> np.ndarray | None:
    """The root's flat element index at each position of the tensor ``steps`` make of it (symbolic sizes set
    by ``_sizes``), or None when a step does not apply."""
    sizes = _sizes(dims, first)
    if sizes is None:
        return None
    try:
        return _apply_steps(np.arange(int(np.prod(sizes)), dtype=np.int32).reshape(sizes), steps)
    except (ValueError, TypeError, IndexError):
        return None


def _same_elements(dims: Sequence[int | str], ours: Sequence[_Step], theirs: Sequence[_Step]) -> bool:
    """Whether both chains of steps pick the same root element at every position, at two sets of sizes
    (a size a chain wrote as a constant where the root's is symbolic holds at one of them at most)."""
    for first in (0, 1):
        a, b = _elements(dims, ours, first), _elements(dims, theirs, first)
        if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
            return False
    return True


def _axis_step(a: np.ndarray, axis: int) -> int:
    """How far, in root elements, one step along ``axis`` goes from the first element."""
    at = [0] * a.ndim
    at[axis] = 1
    return int(a[tuple(at)]) - int(a.flat[0])


def _relate(ours: np.ndarray, theirs: np.ndarray | None) -> tuple[int | None, ...] | None:
    """The layout ``m`` with ``ours`` = ``theirs`` laid out by ``m`` (None entries: unit axes ``theirs`` lacks),
    read from the element each axis steps to (the caller checks every element); None when there is none.
    Unit axes hold no element order: ours go to theirs in order, the ones left over are added ones (None)."""
    if theirs is None or ours.size != theirs.size or ours.size < 2:
        return None
    units = [j for j, n in enumerate(theirs.shape) if n == 1]
    if sum(n == 1 for n in ours.shape) < len(units):
        return None  # theirs has a unit axis ours lacks: no layout says that
    axes = {(_axis_step(theirs, j), theirs.shape[j]): j for j in range(theirs.ndim) if theirs.shape[j] != 1}
    m: list[int | None] = []
    for i, n in enumerate(ours.shape):
        j = (units.pop(0) if units else None) if n == 1 else axes.pop((_axis_step(ours, i), n), -1)
        if j == -1:
            return None
        m.append(j)
    return tuple(m) if not axes else None


def _apply_steps(x: np.ndarray, steps: Sequence[_Step]) -> np.ndarray:
    for step in steps:
        kind, args = step[0], step[1]
        if kind in ("layout", "transpose"):
            x = x.transpose([p for p in args if p is not None])  # type: ignore[union-attr]
            x = np.expand_dims(x, tuple(i for i, p in enumerate(args) if p is None))  # type: ignore[arg-type]
        elif kind == "squeeze":
            x = np.squeeze(x, tuple(args))  # type: ignore[arg-type]
        elif kind == "unsqueeze":
            x = np.expand_dims(x, tuple(args))  # type: ignore[arg-type]
        else:
            target = [-1 if t is None else (x.shape[i] if t == 0 and not step[2] else t) for i, t in enumerate(args)]  # type: ignore[union-attr]
            x = x.reshape(target)
    return x


# --- the rewritten side: the walk -------------------------------------------------------------


class _Walk:
    def __init__(
        self,
        orig: _Original,
        graph: GraphProto,
        key: GraphKey,
        layers: dict[GraphKey, list[RewrittenLayer]],
        value_of: Callable[[TensorProto], np.ndarray],
        cert: Certificate,
        parent: _Walk | None = None,
    ) -> None:
        self.orig = orig
        self.graph = graph
        self.key = key
        self.layers = layers
        self.value_of = value_of
        self.cert = cert
        self.parent = parent
        self.facts: dict[str, Fact] = {}
        self.convs = {layer.conv: layer for layer in layers.get(key, [])}
        inputs = {i.name for i in graph.input}
        for t in graph.initializer:
            if t.name not in inputs:
                self.facts[t.name] = Const((id(self), t.name), lambda t=t: value_of(t))
        for s in graph.sparse_initializer:
            self.facts[s.values.name] = Value(s.values.name)
        self._compared: dict[tuple[object, ...], str | None] = {}
        self._layouts: dict[str, tuple[int | None, ...]] = {}  # each proved layer's Conv: how it reads its activation
        self._views: dict[str, tuple[str, tuple[_Step, ...]]] = {}  # synthetic roots: (original root, steps from it)

    def fact(self, name: str) -> Fact:
        if not name:
            return EMPTY
        walk: _Walk | None = self
        while walk is not None:
            if name in walk.facts:
                return walk.facts[name]
            walk = walk.parent
        return Unknown(f"{name!r} is not defined in the rewritten graph")

    def run(self, formal_inputs: Sequence[Fact] | None = None) -> None:
        """Walk the graph; ``formal_inputs`` are the facts of a subgraph's own inputs (None: the main graph)."""
        for i, vi in enumerate(self.graph.input):
            if vi.name in self.facts:
                continue  # an initializer listed as an input (older IR versions): overridable, so a plain value
            self.facts[vi.name] = formal_inputs[i] if formal_inputs is not None and i < len(formal_inputs) else Value(vi.name)
        self._nodes = list(self.graph.node)  # held, so that id() names a node for the whole walk
        self._pairs = self._quantized_sandwich_pairs()
        self._skip: set[int] = set()  # nodes a written-out LayerNormalization already accounted for
        self._readers: dict[str, list[NodeProto]] | None = None
        self._made_by: dict[str, NodeProto] | None = None  # the rewritten graph's producers, when first needed
        self._orig_readers: dict[str, list[NodeProto]] | None = None  # the original's rearranging nodes by input
        for node in self._nodes:
            if id(node) not in self._skip:
                self._visit(node)

    def _visit(self, node: NodeProto) -> None:
        default = _is_default(node)
        if default and node.op_type == "Transpose" and len(node.input) == 1:
            perm = _perm_attr(node)
            inner = self.fact(node.input[0])
            if perm is False:
                self._match(node)
            elif isinstance(inner, Value):
                try:
                    self.facts[node.output[0]] = Value(inner.root, _then(inner.perm, perm))  # type: ignore[arg-type]
                except ValueError:
                    self._unknown(node, "a Transpose of the wrong rank")
            elif isinstance(inner, Const):
                self._match(node)  # a transposed constant: only an identical node in the original explains it
            else:
                self.facts[node.output[0]] = inner
            return
        if default and node.op_type == "Identity" and len(node.input) == 1:
            self.facts[node.output[0]] = self.fact(node.input[0])
            return
        if default and node.op_type in ("Unsqueeze", "Squeeze") and len(node.output) == 1 and node.input:
            unit = _unit_axes(node, self.fact(node.input[0]), self.fact, self.orig.rank)
            if unit is not None:
                self.facts[node.output[0]] = unit
                return
        if default and node.op_type == "Constant":
            fact = _constant_node_fact(node, (id(self), node.output[0]))
            if isinstance(fact, Const):
                self.facts[node.output[0]] = fact
                return
        if node.name in self.convs:
            self._layer(node, self.convs[node.name])
            return
        if id(node) in self._pairs:
            self._pair_node(node, *self._pairs[id(node)])
            return
        if default and node.op_type in _NEW_CONSTANT_OPS and len(node.output) == 1 and self._constant(node):
            return
        if default and node.op_type in ("Cast", "ReduceMean") and self._written_out_layernorm(node):
            return
        if default and node.op_type == "Expand" and len(node.input) == 2 and self._relaid_expand(node):
            return
        if default and node.op_type == "Reshape" and len(node.input) == 2 and self._merge(node):
            return
        self._match(node)

    def _constant(self, node: NodeProto) -> bool:
        """A node of ``_NEW_CONSTANT_OPS`` on constants alone is the constant the evaluator computes (its fact set)."""
        ins = [self.fact(n) for n in node.input]
        if not ins or not isinstance(ins[0], Const) or not all(isinstance(f, Const) or f is EMPTY for f in ins):
            return False
        opsets = self.orig.opsets
        if _run_on_constants(node, ins, opsets) is None:
            return False
        self.facts[node.output[0]] = Const((id(self), node.output[0]), lambda: _run_on_constants(node, ins, opsets))
        return True

    # A LayerNormalization written out over other axes (the cleanup's opt-in NCHW form) -------------

    def _merge(self, node: NodeProto) -> bool:
        """``Reshape(x, [0, 0, c])`` (copy the first two dims, merge the rest; ``allowzero`` 0) of a known
        tensor: its fact is a root of its own, that tensor with its trailing axes merged (``_merged``), which
        a token layer whose activation is rank 4 reads (``nn.MultiheadAttention``'s heads ``[S, B, H, D]``
        before ``out_proj``). Onnxruntime refuses the Reshape unless ``c`` is the product of the merged dims."""
        merged = _merge_fact(node, self.fact(node.input[0]), self.fact(node.input[1]))
        if merged is None:
            return False
        self.facts[node.output[0]] = merged
        return True

    def _relaid_expand(self, node: NodeProto) -> bool:
        """``Expand(c', Gather(shape, idx))`` is an original ``Expand(c, shape)`` read in layout ``idx`` when
        ``c'`` is ``c`` (padded with leading 1s to the rank) transposed by ``idx``, ``idx`` is a permutation
        of that rank and ``shape`` has that many entries: Expand broadcasts dim by dim, so reordering the
        constant's dims and the shape's entries alike reorders the result (ViT's class token moved into the
        patches' layout). The facts set, True; else False (and the node is matched as any other)."""
        data = self.fact(node.input[0])
        if not isinstance(data, Const):
            return False
        if self._made_by is None:
            self._made_by = {o: n for n in self._nodes for o in n.output if o}
        g = self._made_by.get(node.input[1])
        if g is None or not _is_default(g) or g.op_type != "Gather" or len(g.input) != 2 or int(_attrs(g).get("axis", 0)):  # type: ignore[call-overload]
            return False
        idx, shape = self.fact(g.input[1]), self.fact(g.input[0])
        if not isinstance(idx, Const) or isinstance(shape, Unknown):
            return False
        order = np.asarray(idx.get())
        if order.dtype.kind not in "iu" or order.ndim != 1 or sorted(order.tolist()) != list(range(order.size)):
            return False
        perm = tuple(int(i) for i in order)
        for cand in self.orig.graph.node:
            if not (_is_default(cand) and cand.op_type == "Expand" and len(cand.input) == 2 and len(cand.output) == 1):
                continue
            o_shape, o_data, o_out = (self.orig.canon(n) for n in (cand.input[1], cand.input[0], cand.output[0]))
            same_shape = o_shape == shape or (
                isinstance(o_shape, Const) and isinstance(shape, Const) and _differs(shape.get(), o_shape.get(), "shape") is None
            )
            if not same_shape or not isinstance(o_data, Const) or not isinstance(o_out, Value) or not o_out.root:
                continue
            if self.orig.rank(cand.output[0]) != len(perm) or self._same_laid_out(data, o_data, perm) is not None:
                continue
            self.facts[node.output[0]] = Value(o_out.root, _then(o_out.perm, perm))
            return True
        return False

    def _reader_index(self) -> dict[str, list[NodeProto]]:
        if self._readers is None:
            self._readers = defaultdict(list)
            for n in self._nodes:
                for i in dict.fromkeys(n.input):
                    if i:
                        self._readers[i].append(n)
        return self._readers

    def _written_out_layernorm(self, first: NodeProto) -> bool:
        """Whether ``first`` starts the ONNX function body of an original LayerNormalization, read in another layout.

        The body (LayerNormalization's definition in the ONNX spec): [Cast to the stash type], mean =
        ReduceMean(x, A), d = Sub(x, mean), var = ReduceMean(Mul(d, d), A), n = Div(d, Sqrt(Add(var, eps))),
        [Cast back], Mul(n, scale), [Add(., bias)]. Every intermediate must be read only inside it. Then the
        axes A, epsilon, the stash type, scale and bias are compared with the original node; the result is
        the original's output in the layout of the input.
        """
        readers = self._reader_index()
        outputs = {o.name for o in self.graph.output}

        def sole(name: str, op: str) -> NodeProto | None:
            found = readers.get(name, [])
            if len(found) != 1 or name in outputs or not _is_default(found[0]) or found[0].op_type != op:
                return None
            return found[0]

        group: list[NodeProto] = []
        cast_to: int | None = None
        if first.op_type == "Cast":
            cast_to = int(_attrs(first).get("to", 0))  # type: ignore[call-overload]
            data, x_in = first.input[0], first.output[0]
            found = readers.get(x_in, [])
            mean = next((n for n in found if n.op_type == "ReduceMean" and _is_default(n)), None)
            if mean is None or len(found) != 2 or x_in in outputs:
                return False
            group.append(first)
        else:
            data = x_in = first.input[0]
            mean = first
        sub = sole(mean.output[0], "Sub")
        if sub is None or list(sub.input) != [x_in, mean.output[0]] or (cast_to is not None and sub not in readers[x_in]):
            return False
        d = sub.output[0]
        d_readers = readers.get(d, [])
        square = next((n for n in d_readers if n.op_type == "Mul" and list(n.input) == [d, d]), None)
        div = next((n for n in d_readers if n.op_type == "Div" and n.input[0] == d), None)
        if square is None or div is None or len(d_readers) != 2 or d in outputs:
            return False
        var = sole(square.output[0], "ReduceMean")
        add_eps = sole(var.output[0], "Add") if var is not None else None
        sqrt = sole(add_eps.output[0], "Sqrt") if add_eps is not None else None
        if sqrt is None or sole(sqrt.output[0], "Div") is not div or add_eps.input[0] != var.output[0]:  # type: ignore[union-attr]
            return False
        group += [mean, sub, square, var, add_eps, sqrt, div]  # type: ignore[list-item]
        n = div.output[0]
        if cast_to is not None:
            back = sole(n, "Cast")
            if back is None:
                return False
            group.append(back)
            n = back.output[0]
        mul = sole(n, "Mul")
        if mul is None or mul.input[0] != n:
            return False
        group.append(mul)
        r = self.fact(data)
        if not isinstance(r, Value) or not r.root:
            return False
        for cand, slot in self.orig.consumers_by_root(r.root):
            if slot != 0 or cand.op_type != "LayerNormalization" or not _is_default(cand):
                continue
            proved = self._layernorm_counterpart(cand, r, group, cast_to, add_eps, mul, readers, outputs)  # type: ignore[arg-type]
            if proved is not None:
                for node in proved[1:]:
                    self._skip.add(id(node))
                return True
        return False

    def _layernorm_counterpart(
        self,
        cand: NodeProto,
        r: Value,
        group: list[NodeProto],
        cast_to: int | None,
        add_eps: NodeProto,
        mul: NodeProto,
        readers: dict[str, list[NodeProto]],
        outputs: set[str],
    ) -> list[NodeProto] | None:
        o = self.orig.canon(cand.input[0])
        if not isinstance(o, Value) or o.root != r.root or any(out and self.orig_reads(out) for out in cand.output[1:]):
            return None
        try:
            perm = _relative(o.perm, r.perm)
        except ValueError:
            return None
        if perm is None:
            return None
        rank, attrs = len(perm), _attrs(cand)
        k = _norm(int(attrs.get("axis", -1)), sum(p is not None for p in perm))  # type: ignore[call-overload]
        if k is None:
            return None
        axes = sorted(a for a in range(rank) if perm[a] is not None and perm[a] >= k)  # type: ignore[operator]
        for reduce in (group[1] if cast_to is not None else group[0], group[4 if cast_to is not None else 3]):
            ra = _attrs(reduce)
            got = ra.get("axes")
            if got is None and len(reduce.input) > 1 and isinstance(self.fact(reduce.input[1]), Const):
                got = list(np.asarray(self.fact(reduce.input[1]).get()).reshape(-1))  # type: ignore[union-attr]
            if got is None or sorted(_norm(int(a), rank) for a in got) != axes or int(ra.get("keepdims", 1)) != 1:  # type: ignore[call-overload,type-var]
                return None
        stash = int(attrs.get("stash_type", TensorProto.FLOAT))  # type: ignore[call-overload]
        stash_np = onnx.helper.tensor_dtype_to_np_dtype(stash)
        scale_o = self.orig.canon(cand.input[1]) if len(cand.input) > 1 else EMPTY
        scale_r = self.fact(mul.input[1])
        if not isinstance(scale_o, Const) or not isinstance(scale_r, Const):
            return None
        dtype = np.asarray(scale_o.get()).dtype
        if cast_to is not None:
            back = group[-2]
            if cast_to != stash or int(_attrs(back).get("to", 0)) != onnx.helper.np_dtype_to_tensor_dtype(dtype):  # type: ignore[call-overload]
                return None
        elif dtype != stash_np:
            return None
        eps = self.fact(add_eps.input[1])
        epsilon = np.array(float(attrs.get("epsilon", 1e-5)), dtype=stash_np)  # type: ignore[arg-type]
        if not isinstance(eps, Const) or _differs(np.asarray(eps.get()).reshape(()), epsilon, "epsilon"):
            return None
        if self._same_laid_out(scale_r, scale_o, perm):
            return None
        out = mul.output[0]
        has_bias = len(cand.input) > 2 and cand.input[2]
        if has_bias:
            add = next(iter(readers.get(out, [])), None)
            if add is None or len(readers[out]) != 1 or out in outputs or add.op_type != "Add" or add.input[0] != out:
                return None
            bias_o, bias_r = self.orig.canon(cand.input[2]), self.fact(add.input[1])
            if not isinstance(bias_o, Const) or not isinstance(bias_r, Const) or self._same_laid_out(bias_r, bias_o, perm):
                return None
            group = [*group, add]
            out = add.output[0]
        result = self.orig.canon(cand.output[0])
        if not isinstance(result, Value) or not result.root:
            return None
        inside = Unknown(f"a tensor inside the written-out LayerNormalization {cand.name or cand.output[0]!r}")
        for node in group:
            for name in node.output:
                self.facts[name] = inside
        self.facts[out] = Value(result.root, _then(result.perm, perm))
        return group

    def orig_reads(self, name: str) -> bool:
        """Whether anything in the original graph reads ``name`` (a LayerNormalization's statistics)."""
        return any(name in n.input for n in self.orig.graph.node) or name in {o.name for o in self.orig.graph.output}

    def _unknown(self, node: NodeProto, reason: str) -> None:
        where = f"{node.op_type} {node.name or node.output[0]!r}: {reason}"
        for out in node.output:
            if out:
                self.facts[out] = Unknown(where)

    # A quantized sandwich's pairs ------------------------------------------------------------------
    #
    # The original quantizes the flat activation ``Reshape(x, [-1, C])`` and the flat output inside the
    # Reshapes; the rewritten graph quantizes the 4D tensors around the Conv. Inside one claimed layer
    # the flat tensors get facts of their own, ``Value(_FLAT + name, P)``: the original flat tensor
    # ``name`` seen as ``[N, H, W, C]`` (what the Reshapes of the layer make of it) and laid out by P.
    # They never leave the layer: its last pair's output is the layer's original output.

    def _quantized_sandwich_pairs(self) -> dict[int, tuple[str, NodeProto, RewrittenLayer]]:
        """The rewritten Q/DQ nodes directly around each claimed Conv whose original is a quantized sandwich."""
        pairs: dict[int, tuple[str, NodeProto, RewrittenLayer]] = {}
        made = {o: n for n in self._nodes for o in n.output if o}
        readers: dict[str, list[NodeProto]] = defaultdict(list)
        for n in self._nodes:
            for i in n.input:
                readers[i].append(n)
        for conv in self._nodes:
            layer = self.convs.get(conv.name)
            if layer is None or not conv.input:
                continue
            if conv.op_type in INTEGER_CONVS:  # an integer Tensordot: the entry that quantizes its flat rows
                from converter.verifier.certificate.integer import sandwich_entry

                original = self.orig.producers.get(layer.output)
                entry = sandwich_entry(self.orig, original) if original is not None and original.input else None
                q = made.get(conv.input[0])
                if entry is not None and q is not None and q.op_type == entry.op_type:
                    pairs[id(q)] = ("in_q", entry, layer)
                continue
            if conv.op_type != "Conv":
                continue
            dense = _original_layer(self.orig, layer)
            if isinstance(dense, str):
                continue
            if dense.in_pair is not None:
                dq = made.get(conv.input[0])
                q = made.get(dq.input[0]) if dq is not None and dq.input else None
                if dq is not None and q is not None and (q.op_type, dq.op_type) == ("QuantizeLinear", "DequantizeLinear"):
                    pairs[id(q)], pairs[id(dq)] = ("in_q", dense.in_pair[0], layer), ("in_dq", dense.in_pair[1], layer)
            if dense.out_pair is not None and conv.output:
                after = readers.get(conv.output[0], [])
                q = after[0] if len(after) == 1 and after[0].op_type == "QuantizeLinear" else None
                after = readers.get(q.output[0], []) if q is not None else []
                dq = after[0] if len(after) == 1 and after[0].op_type == "DequantizeLinear" else None
                if q is not None and dq is not None:
                    pairs[id(q)], pairs[id(dq)] = ("out_q", dense.out_pair[0], layer), ("out_dq", dense.out_pair[1], layer)
        return pairs

    def _pair_node(self, node: NodeProto, role: str, original: NodeProto, layer: RewrittenLayer) -> None:
        """A Q/DQ node around a quantized sandwich's Conv: the original pair's node on the 4D tensor, in layout P."""
        fact = self.fact(node.input[0]) if node.input else Unknown("no input")
        if isinstance(fact, Unknown):
            self._unknown(node, f"its input is not known: {fact.reason}")
            return
        if role == "in_q":  # reads the layer's activation x (what the original's first Reshape flattens), in any layout
            first = self.orig.producers.get(original.input[0])
            want = self.orig.canon(first.input[0]) if first is not None else Unknown("no Reshape")
            if not isinstance(fact, Value) or not isinstance(want, Value) or fact.root != want.root:
                self._unknown(node, f"it reads {_show(fact)}, not the layer's activation {layer.input!r}")
                return
            try:
                perm = _relative(want.perm, fact.perm)
            except ValueError:
                self._unknown(node, "it reads the layer's activation at another rank")
                return
        else:
            source = original.input[0] if role != "out_q" else self.orig.producers[original.input[0]].output[0]
            if not isinstance(fact, Value) or fact.root != _FLAT + source:
                self._unknown(node, f"it reads {_show(fact)}, not the original {source!r} of this layer")
                return
            perm = fact.perm
        if perm is not None and (len(perm) != 4 or None in perm):
            self._unknown(node, "it reads the layer's tensor with unit axes")
            return
        problem = self._same_pair_node(node, original, perm)
        if problem:
            self.cert.problems.append(f"{node.op_type} {node.name or node.output[0]!r}: {problem}")
            self._unknown(node, problem)
            return
        if role == "out_dq":
            dense = self.cert.originals.get(layer.conv)
            out = self.orig.canon(dense.end if isinstance(dense, _DenseLayer) and dense.end else layer.output)
            if not isinstance(out, Value):
                self._unknown(node, f"the original output {layer.output!r} is not a computed tensor")
                return
            self.facts[node.output[0]] = Value(out.root, _then(out.perm, perm))
        else:
            self.facts[node.output[0]] = Value(_FLAT + original.output[0], perm)
            # DynamicQuantizeLinear's scale and zero point come from the minimum and maximum of all the values,
            # which the first Reshape and any layout keep: the original's, as they are.
            for j in range(1, min(len(node.output), len(original.output))):
                if node.output[j]:
                    self.facts[node.output[j]] = self.orig.canon(original.output[j])

    def _same_pair_node(self, node: NodeProto, original: NodeProto, perm: Perm) -> str | None:
        """Why ``node`` on the 4D tensor laid out by ``perm`` is not ``original`` on the flat one, or None."""
        if node.op_type != original.op_type or not _is_default(node) or len(node.input) != len(original.input):
            return f"not the original's {original.op_type} {original.name!r}"
        for slot, role in ((1, "scale"), (2, "zero point")):
            if slot >= len(node.input):
                continue
            mine, theirs = self.fact(node.input[slot]), self.orig.canon(original.input[slot])
            if not isinstance(mine, Const) or not isinstance(theirs, Const):
                return f"its {role} is not the original's constant"
            problem = _differs(mine.get(), theirs.get(), role)
            if problem:
                return problem
        plain = lambda n: [a for a in _plain_attributes(n) if a[0] != "axis"]  # noqa: E731
        if plain(node) != plain(original):
            return "its attributes differ from the original's"
        if len(node.input) < 2:
            return None  # DynamicQuantizeLinear: its scale and zero point are outputs (below)
        scale = np.asarray(self.fact(node.input[1]).get())  # type: ignore[union-attr]
        if scale.size > 1:  # per channel: the flat tensor's axis 1 is C, axis 3 of [N, H, W, C], where P puts it
            flat_axis = _norm(int(_attrs(original).get("axis", 1)), 2)  # type: ignore[call-overload]
            axis = _norm(int(_attrs(node).get("axis", 1)), 4)  # type: ignore[call-overload]
            channel = 3 if perm is None else list(perm).index(3)
            if flat_axis != 1 or axis != channel:
                return f"its axis {axis} is not the channels' ({channel}), or the original's is not per channel"
        return None

    # A layer's Conv ---------------------------------------------------------------------------

    def _layer(self, conv: NodeProto, layer: RewrittenLayer) -> None:
        proof = self._prove_layer(conv, layer)
        self.cert.layers[conv.name] = proof
        dense = self.cert.originals.get(conv.name)
        if proof.status == "proved" and isinstance(dense, _DenseLayer) and dense.out_pair is not None:
            self.facts[conv.output[0]] = Value(_FLAT + dense.flat, _NCHW)  # its output pair ends the layer
        elif proof.status == "proved" and getattr(dense, "end", "").startswith(_FLAT):
            self.facts[conv.output[0]] = Value(dense.end, _NCHW)  # type: ignore[union-attr]  # an integer Tensordot's flat output
        elif proof.status == "proved":
            end = getattr(dense, "end", "")  # a Tensordot's (_DenseLayer, IntegerLayer): the second Reshape's output
            out = self.orig.canon(end or layer.output)
            assert isinstance(out, Value)
            try:
                self.facts[conv.output[0]] = Value(out.root, _then(out.perm, self._layouts.get(conv.name, _NCHW)))
            except ValueError:
                self._unknown(conv, f"the original output {layer.output!r} has another rank than its input")
        else:
            self._unknown(conv, f"layer {layer.anchor!r} is {proof.status}: {proof.detail}")

    def _prove_layer(self, conv: NodeProto, layer: RewrittenLayer) -> LayerProof:
        if conv.op_type in INTEGER_CONVS and _is_default(conv):
            from converter.verifier.certificate.integer import (
                prove_integer_layer,  # the integer layers' proofs (QLinearConv, ConvInteger)
            )

            return prove_integer_layer(self, conv, layer)
        if conv.op_type != "Conv" or not _is_default(conv) or len(conv.output) != 1:
            return LayerProof("refuted", f"{conv.name!r} is a {conv.op_type}, not a Conv")
        dense = _original_layer(self.orig, layer)
        self.cert.originals[conv.name] = dense
        if isinstance(dense, str):
            return LayerProof("refuted", dense)
        problem = _plain_conv(conv)
        if problem:
            return LayerProof("refuted", problem)
        x = self.fact(conv.input[0])
        want = self.orig.canon(layer.input)
        if isinstance(x, Unknown):
            return LayerProof("unproved", f"its input is not known: {x.reason}")
        if not isinstance(want, Value) or not isinstance(x, Value):
            return LayerProof("refuted", "its input is a constant")
        # An image [N, H, W, C] is read in NCHW, a token sequence [B, S, C] as [B, C, 1, S].
        expected: list[tuple[tuple[int | None, ...], Value]] = []
        if dense.in_pair is not None:  # a quantized sandwich: the Conv reads its activation's pair (in NCHW)
            want = Value(_FLAT + dense.in_pair[1].output[0])
        for layout in (_NCHW, _TOKENS):
            try:
                expected.append((layout, Value(want.root, _then(want.perm, layout))))
            except ValueError:
                continue
        # A token layer on an activation of higher rank, its trailing dims merged (nn.MultiheadAttention's
        # heads [S, B, H, D] before out_proj): the rewritten graph merges them with Reshape [0, 0, C].
        expected.append((_TOKENS, Value(_merged(want), _TOKENS)))
        layout = next((k for k, v in expected if v == x), None)
        if layout is None and x.root:  # the cleanup folded the way there into a rearrangement
            layout = self._folded_input(x, want)
        if layout is None:
            want_in, form = expected[0][1], "in NCHW" if expected[0][0] == _NCHW else "as [B, C, 1, S]"
            # A rearrangement the walk could not match is a limit of the proof, not a disagreement.
            status = "unproved" if x.root.startswith(_VIEW) else "refuted"
            return LayerProof(status, f"its input is {_show(x)}, not {layer.input!r} {form} ({_show(want_in)})")
        self._layouts[conv.name] = layout
        try:
            kc = dense.weight_kc()
            problem = self._same_const(conv.input[1], kc.reshape(*kc.shape, 1, 1), "weight")
            if problem:
                return LayerProof("refuted", problem)
            has_bias = len(conv.input) > 2 and conv.input[2]
            if dense.bias is None and has_bias:
                return LayerProof("refuted", "the Conv has a bias the original layer does not")
            if dense.bias is not None:
                if not has_bias:
                    return LayerProof("refuted", "the original layer's bias is missing from the Conv")
                problem = self._same_const(conv.input[2], dense.bias(), "bias")
                if problem:
                    return LayerProof("refuted", problem)
        except _Mismatch as e:
            return LayerProof("refuted", str(e))
        return LayerProof("proved")

    def _same_const(self, name: str, expected: np.ndarray, role: str) -> str | None:
        fact = self.fact(name)
        if not isinstance(fact, Const):
            return f"the Conv's {role} {name!r} is not a constant"
        return _differs(fact.get(), expected, role)

    # Any other node ---------------------------------------------------------------------------

    def _match(self, node: NodeProto) -> None:
        ins = [self.fact(n) for n in node.input]
        unknown = next((f for f in ins if isinstance(f, Unknown)), None)
        if unknown is not None:
            for out in node.output:
                if out:
                    self.facts[out] = unknown
            return
        anchor = next((i for i, f in enumerate(ins) if isinstance(f, Value) and f.root), None)
        if anchor is not None and ins[anchor].root.startswith(_FLAT):  # type: ignore[union-attr]
            from converter.verifier.certificate.integer import (
                flat_elementwise,  # a dynamic Tensordot's rescale, moved past its second Reshape
            )

            why = flat_elementwise(self, node, ins, anchor)
            if why is not None:
                self._unknown(node, f"no counterpart in the original ({why})")
            return
        if anchor is None:
            candidates = self._same_output(node)
        else:
            root = ins[anchor].root  # type: ignore[union-attr]
            scope = self.orig
            candidates = []
            while scope is not None:  # the counterpart may read it from an outer scope
                candidates.extend(n for n, slot in scope.consumers_by_root(root) if slot == anchor)
                if scope is self.orig and candidates:
                    break
                scope = scope.parent
            # Try the node with the same first output first: unchanged nodes keep their names.
            same = self._same_output(node)
            candidates = same + [c for c in candidates if all(c is not s for s in same)]
        reasons = []
        for cand in candidates:
            verdict = self._counterpart(node, ins, anchor, cand)
            if verdict is None:
                return
            reasons.append((cand.op_type != node.op_type, verdict))  # the same op's reason says more: first
        if _is_default(node) and node.op_type in _REARRANGE and len(node.output) == 1 and self._rearranged(node, ins):
            return
        if _is_default(node) and node.op_type in ("Shape", "Gather") and self._shape_read(node, ins):
            return
        why = min(reasons, key=lambda r: r[0])[1] if reasons else "no node of the original reads the same tensors"
        self._unknown(node, f"no counterpart in the original ({why})")

    def _rearranged(self, node: NodeProto, ins: list[Fact]) -> bool:
        """A Reshape, Transpose, Squeeze or Unsqueeze with no counterpart that only moves the elements of an
        original tensor ``R``: its output is an original tensor made from ``R`` by such ops, under a layout
        (or, until one is found further on, a root of its own: ``R`` and the steps from it)."""
        x = ins[0] if ins else None
        step = _rearrange_step(node, self.fact, lambda name: None)
        if not isinstance(x, Value) or not x.root or step is None:
            return False
        root, steps = self._views.get(x.root, (x.root, ()))
        if root.startswith("\0"):
            return False  # a merged or flat root: no sizes to follow
        if x.perm is not None:
            steps = (*steps, ("layout", x.perm))
        steps = (*steps, step)
        dims = self._dims(root)
        ours = None if dims is None else _elements(dims, steps)
        if dims is None or ours is None:
            return False
        found = self._original_rearrangements(root)
        # The same tensor may be several original tensors under layouts; the one of the same name first
        # (a folded chain keeps its last tensor's name), so that what reads it finds its counterpart.
        found.sort(key=lambda f: f[0] != node.output[0])
        for name, theirs in found:
            m = _relate(ours, _elements(dims, theirs))
            canon = self.orig.canon(name) if m is not None else None
            if m is None or not isinstance(canon, Value) or not canon.root or _lifted(canon.perm):
                continue
            if not _same_elements(dims, steps, (*theirs, ("layout", m))):
                continue  # the same at one set of sizes only
            try:
                self.facts[node.output[0]] = Value(canon.root, _then(canon.perm, _plain(m)))
            except ValueError:
                continue
            return True
        synthetic = f"{_VIEW}{root}:{steps!r}"
        self._views[synthetic] = (root, steps)
        self.facts[node.output[0]] = Value(synthetic)
        return True

    def _shape_read(self, node: NodeProto, ins: list[Fact]) -> bool:
        """``Gather(Shape(x'), idx)`` where ``x'`` is an original tensor ``R`` laid out by ``P``: the dims
        ``P[idx]`` of ``R``. That is the output of an original ``Shape(y, start, end)`` with ``y`` = ``R`` laid
        out by ``Q`` when ``Q[start:end] == P[idx]``. (The Shape alone gets a fact of its own, which only
        this Gather reads.)"""
        attrs = _attrs(node)
        if node.op_type == "Shape":
            x = ins[0] if ins else None
            if len(node.output) != 1 or "start" in attrs or "end" in attrs or not isinstance(x, Value) or not x.root:
                return False
            if x.root.startswith("\0"):
                return False
            self.facts[node.output[0]] = Value(f"{_SHAPE}{x.root}", x.perm)
            return True
        if len(ins) != 2 or not isinstance(ins[0], Value) or not ins[0].root.startswith(_SHAPE) or int(attrs.get("axis", 0)):  # type: ignore[call-overload]
            return False
        if not isinstance(ins[1], Const):
            return False
        root, perm = ins[0].root[len(_SHAPE) :], ins[0].perm
        rank = len(perm) if perm is not None else self.orig.rank(root)
        idx = np.asarray(ins[1].get())
        if rank is None or idx.dtype.kind not in "iu" or idx.ndim != 1 or not all(-rank <= i < rank for i in idx):
            return False
        axes = tuple(perm if perm is not None else range(rank))
        picked = tuple(axes[int(i) % rank] for i in idx)  # None: an added unit axis, a dim of 1
        # Equal shapes may be several original tensors: the one of the same name first (see _rearranged).
        cands = sorted(self.orig.consumers_by_root(root), key=lambda c: c[0].output[0] != node.output[0])
        for cand, slot in cands:
            if cand.op_type != "Shape" or not _is_default(cand) or slot != 0:
                continue
            q = self.orig.canon(cand.input[0])
            if not isinstance(q, Value):
                continue
            c_attrs = _attrs(cand)
            q_rank = len(q.perm) if q.perm is not None else self.orig.rank(root)
            if q_rank is None:
                continue
            theirs = tuple(q.perm if q.perm is not None else range(q_rank))
            start, end = int(c_attrs.get("start", 0)), int(c_attrs.get("end", q_rank))  # type: ignore[call-overload]
            if theirs[slice(start, end)] == picked:
                self.facts[node.output[0]] = self.orig.canon(cand.output[0])
                return True
        return False

    def _folded_input(self, x: Value, want: Value) -> tuple[int | None, ...] | None:
        """The layout in which ``x`` is the layer's activation ``want`` (in NCHW, as [B, C, 1, S], or with its
        trailing dims merged as [B, C, 1, S]; see ``_prove_layer``), by ``_same_rearranged``."""
        forms = [
            (_NCHW, (("layout", _NCHW),)),
            (_TOKENS, (("layout", _TOKENS),)),
            (_TOKENS, (("reshape", (0, 0, None), False), ("layout", _TOKENS))),
        ]
        return next((layout for layout, tail in forms if self._same_rearranged(x, want, tail)), None)

    def _same_rearranged(self, x: Value, y: Value, tail: Sequence[_Step] = ()) -> bool:
        """Whether ``x`` is, element for element, ``y`` followed by the steps ``tail``, when one is made from the
        other's root by Reshapes, Transposes, Squeezes and Unsqueezes alone (a folded chain, a Reshape that only
        moves unit axes, a Reshape and its inverse)."""
        root, steps = self._views.get(x.root, (x.root, ()))
        y_root, y_steps = self._views.get(y.root, (y.root, ()))
        if not root or not y_root or root.startswith("\0") or y_root.startswith("\0"):
            return False
        ours = (*steps, ("layout", x.perm)) if x.perm is not None else steps
        theirs = (*y_steps, ("layout", y.perm)) if y.perm is not None else y_steps
        to_y = next((t for name, t in self._original_rearrangements(root) if name == y_root), None)
        if to_y is not None:
            theirs = (*to_y, *theirs)
        else:  # the other way round: x's root is made from y's
            to_x = next((t for name, t in self._original_rearrangements(y_root) if name == root), None)
            if to_x is None:
                return False
            root, ours = y_root, (*to_x, *ours)
        dims = self._dims(root)
        return dims is not None and _same_elements(dims, ours, (*theirs, *tail))

    def _dims(self, root: str) -> list[int | str] | None:
        shape = self.orig.shape(root)
        return None if shape is None else _symbolic(root, shape)

    def _original_rearrangements(self, root: str) -> list[tuple[str, tuple[_Step, ...]]]:
        """Original tensors made from ``root`` by Reshapes, Transposes, Squeezes and Unsqueezes alone, each with
        the steps from ``root`` (breadth first, a few levels)."""
        if self._orig_readers is None:
            self._orig_readers = defaultdict(list)
            for n in self.orig.graph.node:
                if n.input and _is_default(n) and n.op_type in _REARRANGE and len(n.output) == 1:
                    self._orig_readers[n.input[0]].append(n)
        found: list[tuple[str, tuple[_Step, ...]]] = [(root, ())]
        i = 0
        while i < len(found) and len(found) < _MAX_REARRANGEMENTS:
            name, steps = found[i]
            i += 1
            if len(steps) >= _MAX_STEPS:
                continue
            for n in self._orig_readers.get(name, []):
                step = _rearrange_step(n, self.orig.canon, self.orig.shape)
                if step is not None:
                    found.append((n.output[0], (*steps, step)))
        return found

    def _same_output(self, node: NodeProto) -> list[NodeProto]:
        if not node.output or not node.output[0]:
            return []
        cand = self.orig.producers.get(node.output[0])
        return [cand] if cand is not None else []

    def _counterpart(self, node: NodeProto, ins: list[Fact], anchor: int | None, cand: NodeProto) -> str | None:
        """None when ``cand`` explains ``node`` (and its outputs' facts are set), else why not."""
        same_domain = cand.domain == node.domain or (_is_default(cand) and _is_default(node))
        if cand.op_type != node.op_type or not same_domain:
            return f"the original's {cand.op_type} differs"
        if len(cand.input) != len(node.input) or len(cand.output) != len(node.output):
            return "a different number of inputs or outputs"
        orig_ins = [self.orig.canon(n) for n in cand.input]
        perm: Perm = None
        if anchor is not None:
            o = orig_ins[anchor]
            r = ins[anchor]
            if not isinstance(o, Value) or not isinstance(r, Value) or o.root != r.root:
                return "it reads other tensors"
            try:
                perm = _relative(o.perm, r.perm)
            except ValueError:
                return "rank mismatch"
        if perm is not None and _is_default(node) and node.op_type in AXIS_OPS:
            return self._axis_counterpart(node, ins, cand, orig_ins, perm)
        if _plain_attributes(cand) != _plain_attributes(node):
            return "different attributes"
        per_tensor: tuple[int, ...] = ()  # inputs compared as they are, whatever the layout
        unpermuted: tuple[int, ...] = ()  # outputs that are the original's as they are, whatever the layout
        if perm is not None and (node.domain, node.op_type) in QLINEAR_ELEMENTWISE:
            per_tensor = QLINEAR_ELEMENTWISE[(node.domain, node.op_type)]
            problem = self._one_value_each(node, ins, orig_ins, per_tensor)
            if problem:
                return problem
        elif perm is not None and _is_default(node) and node.op_type == "DynamicQuantizeLinear":
            unpermuted = (1, 2)  # the scale and zero point: of the whole tensor, which no layout changes
        elif perm is not None and not (_is_default(node) and node.op_type in ELEMENTWISE):
            return f"{node.op_type} is read in another layout, which only elementwise and axis ops allow"
        for i, (r, o) in enumerate(zip(ins, orig_ins, strict=True)):
            if i in per_tensor:
                continue
            if isinstance(o, Unknown):
                return o.reason
            if isinstance(r, Const):
                if not isinstance(o, Const):
                    return f"input {i} is a constant here but computed in the original"
                problem = self._same_laid_out(r, o, perm)
                if problem:
                    return problem
                continue
            if isinstance(o, Const) or not isinstance(r, Value):
                return f"input {i} is computed here but a constant in the original"
            try:
                if r != self._broadcast(o, perm):
                    return f"input {i} is {_show(r)}, the original reads {_show(o)} (layout {perm})"
            except ValueError:
                return f"input {i} has another rank"
        for name, sub in _graphs_of(node):
            if perm is not None:
                return "a subgraph read in another layout"
            orig_sub = dict(_graphs_of(cand)).get(name)
            if orig_sub is None:
                return f"the original has no subgraph {name!r}"
            problem = self._subgraph(cand, name, sub, orig_sub)
            if problem:
                return problem
        for j, out in enumerate(node.output):
            if out:
                o = self.orig.canon(cand.output[j])
                if isinstance(o, Value):
                    here = None if j in unpermuted else perm
                    self.facts[out] = Value(o.root, _then(o.perm, here)) if o.root else EMPTY
                else:
                    self.facts[out] = o if perm is None else Unknown("a constant output read in another layout")
        return None

    def _broadcast(self, o: Value, perm: Perm) -> Value:
        """What an elementwise op read in layout ``perm`` must read where the original reads ``o``: ``o`` laid
        out by ``perm`` (its own layout first). An operand of lower rank is broadcast first: unit axes in front up
        to the layout's rank (``[K]`` under ``(0, 3, 1, 2)``: ``[1, K, 1, 1]``); a rank-0 one is the same in every
        layout. Its rank is read from the original (shape inference); unknown, it must have the full rank."""
        if perm is None:
            return o
        rank = len(o.perm) if o.perm is not None else self.orig.rank(o.root)
        full = sum(p is not None for p in perm)  # the original op's rank (the layout may add unit axes)
        if rank is None or rank >= full:
            return Value(o.root, _then(o.perm, perm))
        if rank == 0:
            return o
        padded = (None,) * (full - rank) + (o.perm if o.perm is not None else tuple(range(rank)))
        return Value(o.root, _then(padded, perm))

    def _one_value_each(self, node: NodeProto, ins: list[Fact], orig_ins: list[Fact], slots: Sequence[int]) -> str | None:
        """Why the scale and zero point inputs ``slots`` are not each one constant value, bit for bit the original's."""
        for i in slots:
            r = ins[i] if i < len(ins) else EMPTY  # a trailing optional input left off
            o = orig_ins[i] if i < len(orig_ins) else EMPTY
            if r == EMPTY and o == EMPTY:
                continue  # an absent zero point on both sides
            if not isinstance(r, Const) or not isinstance(o, Const):
                return f"the {node.op_type}'s input {i} (a scale or zero point) is not a constant on both sides"
            got, want = np.asarray(r.get()), np.asarray(o.get())
            if got.size != 1 or want.size != 1:
                return f"the {node.op_type}'s input {i} has {want.size} values: a parameter along an axis in another layout"
            problem = _differs(got, want, f"{node.op_type}'s input {i}")
            if problem:
                return problem
        return None

    def _axis_counterpart(self, node: NodeProto, ins: list[Fact], cand: NodeProto, orig_ins: list[Fact], perm: Perm) -> str | None:
        """An op with axes, read in layout ``perm``: its axes must be the original's seen through ``perm``."""
        assert perm is not None
        data, params = AXIS_OPS[node.op_type]
        slots = range(len(node.input))
        data_slots = [i for i in slots if i in data or (data == ALL and i not in params)]
        for i in data_slots:
            r, o = ins[i], orig_ins[i]
            if isinstance(o, Unknown):
                return o.reason
            if isinstance(r, Const) and isinstance(o, Const):
                problem = self._same_laid_out(r, o, perm)
                if problem:
                    return problem
            elif not isinstance(r, Value) or not isinstance(o, Value):
                return f"input {i} is a constant on one side only"
            else:
                try:
                    if r != Value(o.root, _then(o.perm, perm)):
                        return f"input {i} is {_show(r)}, the original reads {_show(o)} (layout {perm})"
                except ValueError:
                    return f"input {i} has another rank"
        r_params: dict[int, list[int] | None] = {}
        o_params: dict[int, list[int] | None] = {}
        for i in params:
            for facts, into, n in ((ins, r_params, node), (orig_ins, o_params, cand)):
                if i >= len(n.input) or not n.input[i]:
                    into[i] = None
                    continue
                f = facts[i]
                if not isinstance(f, Const):
                    return f"input {i} of the {node.op_type} is not a constant"
                v = np.asarray(f.get())
                if v.dtype.kind not in "iu":
                    return f"input {i} of the {node.op_type} is not integer"
                into[i] = [int(x) for x in v.reshape(-1)]
        for i in slots:  # inputs neither permuted nor axes (Pad's value, Gather's indices) must be the same
            if i in data_slots or i in params:
                continue
            r, o = ins[i], orig_ins[i]
            if isinstance(r, Const) and isinstance(o, Const):
                if _differs(r.get(), o.get(), "operand"):
                    return f"input {i} differs"
            elif r != o:
                return f"input {i} differs"
        opset = next((o.version for o in self.orig.opsets if o.domain in _DEFAULT_DOMAINS), 1)
        try:
            found = _axis_rule(node, cand, perm, r_params, o_params, ins, opset)
        except (TypeError, ValueError):  # an added unit axis where the rule needs one of the original's
            found = f"the {node.op_type} is read in a layout with added unit axes this checker does not follow"
        if isinstance(found, str):
            return found
        for j, out in enumerate(node.output):
            if not out:
                continue
            o = self.orig.canon(cand.output[j])
            if not isinstance(o, Value) or not o.root:
                return "its original output is not a tensor"
            try:
                self.facts[out] = Value(o.root, _then(o.perm, found))
            except ValueError:
                return "output rank mismatch"
        return None

    def _same_laid_out(self, r: Const, o: Const, perm: Perm) -> str | None:
        key = (r.key, o.key, perm)
        if key not in self._compared:
            expected = o.get()
            if perm is not None and not (expected.size == 1 and expected.ndim <= 1):
                axes = [p for p in perm if p is not None]  # the original's axes, in the order shown
                if expected.ndim > len(axes):
                    self._compared[key] = "a constant of higher rank than the layout"
                    return self._compared[key]
                expected = np.transpose(expected.reshape((1,) * (len(axes) - expected.ndim) + expected.shape), axes)
                if len(axes) != len(perm):  # and the added unit axes where the layout has them
                    shape = iter(expected.shape)
                    expected = expected.reshape([1 if p is None else next(shape) for p in perm])
            self._compared[key] = _differs(r.get(), expected, "constant")
        return self._compared[key]

    def _subgraph(self, holder: NodeProto, name: str, sub: GraphProto, orig_sub: GraphProto) -> str | None:
        """Walk a subgraph of the rewritten node whose counterpart is ``holder`` (layers are keyed by the original's node)."""
        if len(sub.input) != len(orig_sub.input) or len(sub.output) != len(orig_sub.output):
            return f"subgraph {name!r} has another interface"
        inner_orig = _Original(orig_sub, self.orig, self.value_of)
        inner = _Walk(inner_orig, sub, (*self.key, (_holder_key(holder), name)), self.layers, self.value_of, self.cert, self)
        inner.run([Value(i.name) for i in orig_sub.input])
        problems = inner.finish(orig_sub)
        definite = [p for p in problems if not p.endswith("is not proved")]
        self.cert.problems.extend(f"in subgraph {name!r} of {_holder_key(holder)!r}: {p}" for p in definite)
        return f"in subgraph {name!r}: {problems[0]}" if problems else None

    def finish(self, orig_graph: GraphProto) -> list[str]:
        """Each output must be the original's output of the same position, unpermuted."""
        problems = []
        for r_out, o_out in zip(self.graph.output, orig_graph.output, strict=False):
            got, want = self.fact(r_out.name), self.orig.canon(o_out.name)
            if got == want:
                continue
            if isinstance(got, Const) and isinstance(want, Const) and _differs(got.get(), want.get(), "output") is None:
                continue
            if isinstance(got, Value) and isinstance(want, Value) and self._same_rearranged(got, want):
                continue  # one tensor, two descriptions (a Reshape and its inverse are not a Transpose)
            if isinstance(got, Unknown):
                self.cert.unproved.append(f"output {r_out.name!r} depends on {got.reason}")
                problems.append(f"output {r_out.name!r} is not proved")
            else:
                problems.append(f"output {r_out.name!r} is {_show(got)}, the original's is {_show(want)}")
        return problems


def _plain_conv(conv: NodeProto) -> str | None:
    """Why ``conv`` is not a plain 1x1 convolution (stride 1, no padding or dilation, one group), or None."""
    for a in conv.attribute:
        v = onnx.helper.get_attribute_value(a)
        ok = {
            "kernel_shape": lambda v: list(v) == [1, 1],
            "strides": lambda v: all(s == 1 for s in v),
            "dilations": lambda v: all(d == 1 for d in v),
            "pads": lambda v: all(p == 0 for p in v),
            "group": lambda v: v == 1,
            "auto_pad": lambda v: v in (b"NOTSET", b"VALID", "NOTSET", "VALID"),
        }.get(a.name)
        if ok is None or not ok(v):
            return f"the Conv has {a.name}={v!r}; a dense layer is a plain 1x1 convolution"
    return None


def _differs(actual: np.ndarray, expected: np.ndarray, role: str) -> str | None:
    """Why ``actual`` is not bit for bit ``expected``, or None."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.dtype != expected.dtype:
        return f"the {role} is {actual.dtype}, expected {expected.dtype}"
    if actual.shape != expected.shape:
        return f"the {role} has shape {list(actual.shape)}, expected {list(expected.shape)}"
    if actual.dtype.kind == "O":
        same = actual.tolist() == expected.tolist()
    else:
        same = np.array_equal(np.ascontiguousarray(actual).view(np.uint8), np.ascontiguousarray(expected).view(np.uint8))
    if same:
        return None
    if actual.dtype.kind in "fc" and actual.size:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        n = int(np.count_nonzero(actual != expected))
        return (
            f"the {role} differs from the original's in {n} of {actual.size} elements (max difference {float(np.nanmax(diff)):.3g})"
        )
    return f"the {role} differs from the original's"


def _show(f: Fact) -> str:
    if isinstance(f, Value) and f.root.startswith(_VIEW):
        root = f.root[len(_VIEW) :].split(":(", 1)[0]
        return f"a rearrangement of {root!r} that no original tensor is"
    if isinstance(f, Value):
        if f.perm is None:
            return repr(f.root)
        if _lifted(f.perm):
            return f"{f.root!r} laid out as {['1' if p is None else p for p in f.perm]}"
        return f"Transpose({f.root!r}, {list(f.perm)})"
    if isinstance(f, Const):
        return "a constant"
    return f"unknown ({f.reason})"


def find_graphs(model: onnx.ModelProto, key: Sequence[Sequence[str]]) -> list[GraphProto] | None:
    """The chain of graphs from the main graph to the one ``key`` names (see RewrittenLayer.graph), or None."""
    chain = [model.graph]
    for holder, attr in key:
        node = next((n for n in chain[-1].node if _holder_key(n) == holder), None)
        sub = None if node is None else dict(_graphs_of(node)).get(attr)
        if sub is None:
            return None
        chain.append(sub)
    return chain


def certify(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    layers: Iterable[RewrittenLayer],
    value_of: Callable[[TensorProto], np.ndarray] = numpy_helper.to_array,
) -> Certificate:
    """Check that ``rewritten`` computes what ``original`` does, layer claims included (see the module docstring).

    ``value_of`` reads a tensor's data (the default copies it out of the protobuf).
    """
    by_graph: dict[GraphKey, list[RewrittenLayer]] = defaultdict(list)
    for layer in layers:
        by_graph[tuple(tuple(step) for step in layer.graph)].append(layer)  # type: ignore[misc]
    cert = Certificate()
    orig = _Original(original.graph, None, value_of, original.opset_import, original)
    walk = _Walk(orig, rewritten.graph, (), by_graph, value_of, cert)
    walk.run()
    if [i.name for i in rewritten.graph.input] != [i.name for i in original.graph.input]:
        cert.problems.append("the graph inputs differ")
    if len(rewritten.graph.output) != len(original.graph.output):
        cert.problems.append("the number of graph outputs differs")
    cert.problems.extend(p for p in walk.finish(original.graph) if not p.endswith("is not proved"))
    for layers_here in by_graph.values():
        for layer in layers_here:
            cert.layers.setdefault(layer.conv, LayerProof("unproved", "the walk never reached its Conv"))
    return cert
