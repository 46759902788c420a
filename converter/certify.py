"""A structural certificate: proof, from the two graphs alone, that the rewritten model computes what the original does.

This is translation validation: instead of trusting the rules and passes that produced the rewritten
graph, it is checked after the fact, node by node, without sampled inputs. Every tensor of the
rewritten graph gets a *fact* saying what it equals in the original:

- ``Value(root, perm)``: it equals ``Transpose(root, perm)`` of original tensor ``root`` (``perm``
  None: ``root`` itself). Original tensors are first put in a canonical form: the output of a
  Transpose is its input under that perm, an Identity's output is its input.
- ``Const``: a constant whose value is compared bit for bit wherever it is used.

Facts come from the graph inputs and are carried forward through the rewritten graph:

- a Transpose composes its perm onto its input's fact, an Identity passes it on;
- a Conv that a rule made (named in a ``RewrittenLayer``) must be a plain 1x1 convolution whose
  weight is, bit for bit, the original weight transposed to ``[K, C, 1, 1]`` (Gemm: ``alpha``
  applied, ``transB`` honoured), whose bias is the original per-channel bias (Gemm: times ``beta``),
  and whose input is the layer's original activation in NCHW; its output is then the layer's
  original output in NCHW. What the layer is, is read from the original graph, not from the rule;
- any other node must have a counterpart in the original graph: the same op and attributes, reading
  the same original tensors under one common permutation ``P``, and the same constants laid out by
  ``P`` (broadcast to full rank, then transposed). ``P`` other than the identity is accepted only
  for elementwise ops, which commute with a layout change. Its outputs are then the counterpart's
  outputs under ``P``. Subgraphs (If, Loop, Scan) are checked the same way, recursively;
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

from .report import RewrittenLayer

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
_NCHW = (0, 3, 1, 2)  # Transpose(x_nhwc, _NCHW) is x in NCHW

Perm = tuple[int, ...] | None
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
    """The perm of Transpose(Transpose(x, first), then), None when that is the identity."""
    if then is None:
        return first
    if first is None:
        combined = tuple(then)
    else:
        if len(first) != len(then):
            raise ValueError("rank mismatch")
        combined = tuple(first[i] for i in then)
    return None if combined == tuple(range(len(combined))) else combined


def _inverse(perm: Perm) -> Perm:
    if perm is None:
        return None
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


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


def _dropped(perm: tuple[int, ...], removed: set[int]) -> Perm:
    """The layout that is left when the rewritten axes ``removed`` (original axes perm[a]) disappear."""
    kept = [a for a in range(len(perm)) if a not in removed]
    orig_kept = sorted(perm[a] for a in kept)
    return _then(None, tuple(orig_kept.index(perm[a]) for a in kept)) if kept else None


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
    ra, oa = _attrs(node), _attrs(cand)

    def same_except(*names: str) -> bool:
        return {k: v for k, v in ra.items() if k not in names} == {k: v for k, v in oa.items() if k not in names}

    def maps(r_axes: list[int], o_axes: list[int], in_order: bool) -> bool:
        rn, on = [_norm(a, rank) for a in r_axes], [_norm(a, rank) for a in o_axes]
        if None in rn or None in on or len(rn) != len(on) or len(set(rn)) != len(rn):
            return False
        mapped = [perm[a] for a in rn]  # type: ignore[index]
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
            if a_r is None or a_r != a_o or not same_except() or set(perm[a_r:]) != set(range(a_r, rank)):
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
    ) -> None:
        self.graph = graph
        self.parent = parent
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
        return Value(name)

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
_CONSTANT_OPS = frozenset({"Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})


def _run_on_constants(node: NodeProto, ins: Sequence[Fact], opsets: Sequence[onnx.OperatorSetIdProto]) -> np.ndarray | None:
    """The node's output computed by onnx's reference evaluator, or None when it rejects the node."""
    from onnx.reference import ReferenceEvaluator

    try:
        inits = [numpy_helper.from_array(np.asarray(f.get()), n) for n, f in zip(node.input, ins, strict=True) if n]
        out = onnx.helper.make_tensor_value_info(node.output[0], TensorProto.UNDEFINED, None)
        graph = onnx.helper.make_graph([node], "constant", [], [out], inits)
        model = onnx.helper.make_model(graph, opset_imports=list(opsets) or [onnx.helper.make_opsetid("", 17)])
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # noqa: BLE001 - whatever the evaluator rejects is simply not a constant here
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


@dataclass
class _DenseLayer:
    x: str
    weight_kc: Callable[[], np.ndarray]  # the expected Conv weight as [K, C]
    bias: Callable[[], np.ndarray] | None  # the expected Conv bias as [K], or None


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
    if _is_default(node) and node.op_type == "Reshape" and node.output[0] != layer.anchor:
        sandwich = True
        node = orig.producers.get(node.input[0])
        if node is None:
            return "the Reshape's input has no producer"
    if node.output[0] != layer.anchor or not _is_default(node) or node.op_type not in ("MatMul", "Gemm"):
        return f"the chain from {layer.output!r} does not lead back to the MatMul/Gemm {layer.anchor!r}"
    act = node.input[0]
    if sandwich:
        first = orig.producers.get(act)
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
        return _DenseLayer(act, weight_kc, bias)
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
    if gemm_c is not None and not isinstance(gemm_c, Const):
        return "the Gemm's bias is not a constant"
    if gemm_c is not None and add_bias is not None:
        return "both the Gemm's bias and an Add after it"
    if gemm_c is not None:
        return _DenseLayer(act, gemm_kc, _bias_vector(gemm_c, weight, beta, trans_b))
    return _DenseLayer(act, gemm_kc, None if add_bias is None else _bias_vector(add_bias, weight, 1.0, trans_b))


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
        self._skip: set[int] = set()  # nodes a written-out LayerNormalization already accounted for
        self._readers: dict[str, list[NodeProto]] | None = None
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
        if default and node.op_type == "Constant":
            fact = _constant_node_fact(node, (id(self), node.output[0]))
            if isinstance(fact, Const):
                self.facts[node.output[0]] = fact
                return
        if node.name in self.convs:
            self._layer(node, self.convs[node.name])
            return
        if default and node.op_type in ("Cast", "ReduceMean") and self._written_out_layernorm(node):
            return
        self._match(node)

    # A LayerNormalization written out over other axes (the cleanup's opt-in NCHW form) -------------

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
            perm = _then(_inverse(o.perm), r.perm)
        except ValueError:
            return None
        if perm is None:
            return None
        rank, attrs = len(perm), _attrs(cand)
        k = _norm(int(attrs.get("axis", -1)), rank)  # type: ignore[call-overload]
        if k is None:
            return None
        axes = sorted(a for a in range(rank) if perm[a] >= k)
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

    # A layer's Conv ---------------------------------------------------------------------------

    def _layer(self, conv: NodeProto, layer: RewrittenLayer) -> None:
        proof = self._prove_layer(conv, layer)
        self.cert.layers[conv.name] = proof
        if proof.status == "proved":
            out = self.orig.canon(layer.output)
            assert isinstance(out, Value)
            self.facts[conv.output[0]] = Value(out.root, _then(out.perm, _NCHW))
        else:
            self._unknown(conv, f"layer {layer.anchor!r} is {proof.status}: {proof.detail}")

    def _prove_layer(self, conv: NodeProto, layer: RewrittenLayer) -> LayerProof:
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
        try:
            expected_in = Value(want.root, _then(want.perm, _NCHW))
        except ValueError:
            return LayerProof("refuted", f"the original activation {layer.input!r} is not rank 4")
        if x != expected_in:
            return LayerProof("refuted", f"its input is {_show(x)}, not {layer.input!r} in NCHW ({_show(expected_in)})")
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
            reasons.append(verdict)
        why = reasons[0] if reasons else "no node of the original reads the same tensors"
        self._unknown(node, f"no counterpart in the original ({why})")

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
                perm = _then(_inverse(o.perm), r.perm)
            except ValueError:
                return "rank mismatch"
        if perm is not None and _is_default(node) and node.op_type in AXIS_OPS:
            return self._axis_counterpart(node, ins, cand, orig_ins, perm)
        if _plain_attributes(cand) != _plain_attributes(node):
            return "different attributes"
        if perm is not None and not (_is_default(node) and node.op_type in ELEMENTWISE):
            return f"{node.op_type} is read in another layout, which only elementwise and axis ops allow"
        for i, (r, o) in enumerate(zip(ins, orig_ins, strict=True)):
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
                if r != Value(o.root, _then(o.perm, perm)):
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
                    self.facts[out] = Value(o.root, _then(o.perm, perm)) if o.root else EMPTY
                else:
                    self.facts[out] = o if perm is None else Unknown("a constant output read in another layout")
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
        found = _axis_rule(node, cand, perm, r_params, o_params, ins, opset)
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
                if expected.ndim > len(perm):
                    self._compared[key] = "a constant of higher rank than the layout"
                    return self._compared[key]
                expected = np.transpose(expected.reshape((1,) * (len(perm) - expected.ndim) + expected.shape), perm)
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
    if isinstance(f, Value):
        return repr(f.root) if f.perm is None else f"Transpose({f.root!r}, {list(f.perm)})"
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
    orig = _Original(original.graph, None, value_of, original.opset_import)
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
