"""The certificate's proof-rule table: it covers every op the cleanup moves, and every rule in it is needed.

The cleanup's handler table says which ops a Transpose moves through; the certificate's ``PROOF_RULES`` says
how each such move is proved, written independently. The first tests fail when the cleanup can move (or
write) an op that has no proof rule: a drift that would otherwise show up as an unproved certificate on a
user's model. The others show each rule load-bearing: a real conversion (``converter.rewrite``, or the
cleanup's passes where no layer is involved) is proved with the table as it is, and no longer proved with
that one rule taken out. A last check makes sure every rule in the table has such a case, so a rule added
without one fails here.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import converter
from converter.rewriter.cleanup.handlers import HANDLERS, OTHER_DOMAINS
from converter.verifier.certificate import LAYER_PROVERS, PROOF_RULES, certify
from converter.verifier.certificate.ops import CONSTANT_EXPRESSION, ON_CONSTANTS
from models import graphs
from models.graphs import Builder
from tests.conftest import dense_model

Converted = tuple[onnx.ModelProto, onnx.ModelProto, list]  # original, rewritten, the rewrite's layer claims
PHASES = ("prove", "relaid", "fallback", "attributes")
CLEANUP = Path(converter.__file__).parent / "rewriter" / "cleanup"
NHWC, NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
N, C, H, W = 2, 6, 5, 7  # H != W, N > 1
# Dims whose element count (symbolic batch set to 2) is past what the element-index proof of a rearrangement
# follows (2**24): there only the rule that knows the op can prove it.
BIG = 1 << 22


# -- the table covers what the cleanup does -----------------------------------------------------------------


def test_every_op_the_cleanup_moves_has_a_proof_rule() -> None:
    moved = {("", op) for op in HANDLERS} | set(OTHER_DOMAINS)
    assert moved - set(PROOF_RULES) == set()


def _ops_the_cleanup_writes() -> set[str]:
    """The op types the cleanup's code writes as new nodes (the first argument of each ``new_node`` call)."""
    found = set()
    for path in CLEANUP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "new_node":
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add(first.value)
    return found


def test_every_op_the_cleanup_writes_has_a_proof_rule() -> None:
    """A node the cleanup makes (a Transpose, a folded Reshape, a Gather of a shape, a re-laid Expand...) has
    no counterpart in the original of its own: a rule must prove it."""
    written = _ops_the_cleanup_writes()
    assert {"Transpose", "Reshape", "Gather", "Expand", "Shape"} <= written  # the scan finds them
    assert {op for op in written if ("", op) not in PROOF_RULES} == set()


# -- each rule is needed -------------------------------------------------------------------------------------


def _converted(model: onnx.ModelProto, **options) -> Converted:  # noqa: ANN003
    result = converter.rewrite(model, **options)
    assert result.report.rewritten >= 1, result.report.decisions
    return model, result.model, list(result.report.layers)


def _cleaned(model: onnx.ModelProto) -> Converted:
    """The cleanup's passes alone, on a graph with no layer to rewrite (its Transposes moved and cancelled)."""
    from tests.rewriter.cleanup._harness import cleaned, transposes

    out, _ = cleaned(model)
    assert transposes(out) < transposes(model)
    return model, out, []


def _ints(b: Builder, values: object) -> str:
    return b.const(np.array(values), np.int64)


def _after_a_layer(
    op: str,
    *operands: Callable[[Builder], str],
    back: list[int] | None = NCHW,
    shape: tuple[int | str, ...] = (N, C, H, W),
    outputs: int = 1,
    **attrs,  # noqa: ANN003
) -> onnx.ModelProto:
    """``x`` (NCHW) -> Transpose to NHWC -> a dense layer -> ``op`` -> Transpose back: once the layer is a Conv
    (in NCHW), the cleanup moves the Transpose after it down through ``op``."""
    b = Builder(1)
    y = b.dense(b.op("Transpose", "x", perm=NHWC), C, C)
    ys = [b.op(op, y, *(make(b) for make in operands), **attrs)]
    ys += [f"{ys[0]}_{i}" for i in range(1, outputs)]
    b.nodes[-1].output.extend(ys[1:])
    if back is not None:
        ys = [b.op("Transpose", y, perm=back) for y in ys]
    return b.model([("x", list(shape))], ys)


def _after(op: str, *operands: Callable[[Builder], str], **kw) -> Callable[[], Converted]:  # noqa: ANN003
    return lambda: _converted(_after_a_layer(op, *operands, **kw), layout="keep-all")


def _qdq_dense() -> Converted:
    from tests.rewriter.rules.test_qdq_matmul_to_conv import Q, qdq_dense

    return _converted(qdq_dense(Q(output_q=True)), layout="keep-all")


def _blocked_dense() -> Converted:
    """A 4-bit weight in blocks on tokens: the Conv's weight is a DequantizeLinear in blocks of constants."""
    from tests.rewriter.rules.test_blocked_weights import B, blocked_dense

    return _converted(blocked_dense(B(rank=3)), tokens=True, layout="keep-all")


def _nbits_dense() -> Converted:
    """onnxruntime's MatMulNBits written as a DequantizeLinear in blocks and a Conv."""
    from tests.rewriter.rules.test_matmul_nbits_to_conv import handwritten

    return _converted(handwritten(), tokens=True, matmul_nbits=True, layout="keep-all")


def _qdq_tokens() -> Converted:
    """A QDQ layer on tokens: its activation's pair moved behind the Transpose and the unit axis ([B, C, 1, S])."""
    from tests.rewriter.rules.test_qdq_matmul_tokens_to_conv import qdq_tokens

    return _converted(qdq_tokens(), tokens=True, layout="keep-all")


def _integer_dense(dynamic: bool) -> Converted:
    from tests.rewriter.rules.test_integer_matmul_to_conv import L, integer_dense

    return _converted(integer_dense(L(dynamic=dynamic)), layout="keep-all")


def _qlinear_block() -> Converted:
    from tests.rewriter.cleanup.test_qlinear import block

    return _cleaned(block())


def _qlinear_activation(op: str) -> Converted:
    from tests.rewriter.cleanup.test_qlinear_activations import chain

    return _cleaned(chain(op))


def _qdq_pair() -> Converted:
    from tests.rewriter.cleanup.test_qdq import qdq_between

    return _cleaned(qdq_between(per_axis=3))


def _class_token() -> Converted:
    """ViT's class token expanded to a number of rows read from an input whose length is not known (were it
    known, the Expand would be a small constant expression, proved by value)."""
    from tests.rewriter.cleanup.test_expand import class_token

    model = class_token("runtime_rows")
    next(i for i in model.graph.input if i.name == "z").type.tensor_type.shape.dim[0].dim_param = "K"
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[2].dim_param = "S"
    return _cleaned(model)


def _shape_read() -> Converted:
    from tests.rewriter.cleanup.test_fold_rearranges import folded
    from tests.verifier.certificate.test_rearrange import shape_read

    model = shape_read()
    return model, folded(model), []


def _reshape_between_layers() -> Converted:
    """x [N, 3, 5, 8] -> dense -> Reshape [-1, 15, 1, 8] -> dense: the cleanup folds the Reshape and the layout
    Transposes into one Reshape, which only the element-index proof follows."""
    b = Builder(9)
    r = b.op("Reshape", b.dense("x", 8, 8), _ints(b, [-1, 15, 1, 8]))
    return _converted(b.model([("x", ["N", 3, 5, 8])], [b.dense(r, 8, 4)]))


def _tokens(length: int | str) -> Converted:
    from tests.conftest import C as channels
    from tests.rewriter.rules.test_matmul_tokens_to_conv import tokens_model

    return _converted(tokens_model(x_shape=("B", length, channels)), tokens=True, layout="keep-all")


def _heads_merged(length: int | str) -> Converted:
    """TorchScript's MultiheadAttention out_proj: heads [S, B, H, D] merged by ``Reshape [0, 0, C]``."""
    from tests.rewriter.rules.test_tensordot_to_conv import E, token_sandwich

    model = token_sandwich("mha_ts", "Gemm", "gemm", ("B", length, E))
    return _converted(model, tokens=True, layout="keep-all", fold_transposes=False)


def _constant_node_renamed() -> Converted:
    """A layer whose bias the rewritten graph reads from a Constant node of its own (no original node makes
    that tensor): only the Constant's value says what it is."""
    model = dense_model()
    original, rewritten, layers = _converted(model, layout="keep-all")
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv")
    bias = next(t for t in rewritten.graph.initializer if t.name == conv.input[2])
    rewritten.graph.initializer.remove(bias)
    rewritten.graph.node.insert(0, onnx.helper.make_node("Constant", [], [bias.name], value=bias))
    return original, rewritten, layers


def _applied_twice(op: str) -> Converted:
    """A converted ConvNeXt block with ``op`` inserted twice on the edge into the second layer's Conv: ``Neg(Neg(x))``
    is ``x``; an idempotent op applied twice is the op once, which the original does not apply: wrong, never proved
    (the rule sees the pair; the original has nothing there for it to stand for)."""
    original, rewritten, layers = _converted(graphs.convnext_block(), layout="keep-all")
    conv = [n for n in rewritten.graph.node if n.op_type == "Conv"][-1]
    src = conv.input[0]
    first, second = f"{src}_{op.lower()}_1", f"{src}_{op.lower()}_2"
    at = list(rewritten.graph.node).index(conv)
    rewritten.graph.node.insert(at, onnx.helper.make_node(op, [first], [second], name=second))
    rewritten.graph.node.insert(at, onnx.helper.make_node(op, [src], [first], name=first))
    conv.input[0] = second
    return original, rewritten, layers


def _exp_renamed() -> Converted:
    """An ``Exp`` of a constant between two layers (an op no shape arithmetic folds), its output renamed: no original
    node makes a tensor of that name, and it reads no original tensor: only its inputs' values say what it is."""
    from tests.bugs import _on_constants, _rename_outputs
    from tests.verifier.test_check_forms import _on_constants_model

    original, rewritten, layers = _converted(_on_constants_model("exp"), layout="keep-all")
    _rename_outputs(rewritten, next(n for n in _on_constants(rewritten) if n.op_type == "Exp"), np.random.default_rng(0))
    return original, rewritten, layers


def _dilated_1x1() -> Converted:
    """The original's own 1x1 Conv (no layer) with ``dilations`` written: only the Conv's laws say it is the same."""
    from tests.verifier.test_check_forms import _set_attribute, _with_a_conv

    original, rewritten, layers = _converted(_with_a_conv(), layout="keep-all")
    _set_attribute(rewritten, "Conv", dilations=[2, 3])  # the first Conv: the original's, before the layers
    return original, rewritten, layers


def _pads_computed() -> Converted:
    """A Pad moved into NCHW whose pads the rewritten graph computes from two constants (``Concat``), where the
    original reads one constant: only the value of that small expression says they are the same pads."""
    model = _after_a_layer("Pad", lambda b: _ints(b, [0, 1, 0, 2, 0, 0, 3, 1]))
    original, rewritten, layers = _converted(model, layout="keep-all")
    pad = next(n for n in rewritten.graph.node if n.op_type == "Pad")
    pads = next(t for t in rewritten.graph.initializer if t.name == pad.input[1])
    value = onnx.numpy_helper.to_array(pads)
    halves = [onnx.numpy_helper.from_array(part, f"{pads.name}_{i}") for i, part in enumerate(np.split(value, 2))]
    rewritten.graph.initializer.extend(halves)
    concat = onnx.helper.make_node("Concat", [h.name for h in halves], [f"{pads.name}_joined"], axis=0, name="pads_joined")
    rewritten.graph.node.insert(list(rewritten.graph.node).index(pad), concat)
    pad.input[1] = concat.output[0]
    return original, rewritten, layers


@dataclasses.dataclass(frozen=True)
class Case:
    make: Callable[[], Converted]
    key: tuple[str, str]  # the rule
    phase: str  # the phase taken out


CASES: dict[str, Case] = {
    # ops/elementwise.py
    "GELU's Erf in NCHW": Case(lambda: _converted(graphs.convnext_block(), layout="keep-all"), ("", "Erf"), "relaid"),
    "QLinearAdd": Case(_qlinear_block, ("com.microsoft", "QLinearAdd"), "relaid"),
    "QLinearMul": Case(_qlinear_block, ("com.microsoft", "QLinearMul"), "relaid"),
    "QLinearSigmoid": Case(lambda: _qlinear_activation("QLinearSigmoid"), ("com.microsoft", "QLinearSigmoid"), "relaid"),
    "QLinearLeakyRelu": Case(lambda: _qlinear_activation("QLinearLeakyRelu"), ("com.microsoft", "QLinearLeakyRelu"), "relaid"),
    "DynamicQuantizeLinear": Case(lambda: _integer_dense(dynamic=True), ("", "DynamicQuantizeLinear"), "relaid"),
    # ops/axis_ops.py
    "Softmax": Case(_after("Softmax", axis=-1), ("", "Softmax"), "relaid"),
    "Concat": Case(_after("Concat", lambda b: b.nodes[-1].output[0], axis=3), ("", "Concat"), "relaid"),
    "Split": Case(_after("Split", lambda b: _ints(b, [2, 4]), axis=3, outputs=2), ("", "Split"), "relaid"),
    "Slice": Case(_after("Slice", *(lambda b, v=v: _ints(b, v) for v in ([1], [4], [3]))), ("", "Slice"), "relaid"),
    "Pad": Case(_after("Pad", lambda b: _ints(b, [0, 1, 0, 2, 0, 0, 3, 1])), ("", "Pad"), "relaid"),
    "ReduceSum without keepdims": Case(
        _after("ReduceSum", lambda b: _ints(b, [1, 2]), keepdims=0, back=None), ("", "ReduceSum"), "relaid"
    ),
    "Gather": Case(_after("Gather", lambda b: _ints(b, 2), axis=3, back=None), ("", "Gather"), "relaid"),
    "Squeeze of a large tensor": Case(
        _after("Squeeze", lambda b: _ints(b, [1]), back=None, shape=("N", C, 1, BIG)), ("", "Squeeze"), "relaid"
    ),
    # ops/qdq.py
    "QuantizeLinear per axis": Case(_qdq_pair, ("", "QuantizeLinear"), "relaid"),
    "DequantizeLinear per axis": Case(_qdq_pair, ("", "DequantizeLinear"), "relaid"),
    "a quantized weight laid out as a Conv weight": Case(_qdq_dense, ("", "DequantizeLinear"), "prove"),
    "a 4-bit weight in blocks laid out as a Conv weight": Case(_blocked_dense, ("", "DequantizeLinear"), "prove"),
    "MatMulNBits' weight as a DequantizeLinear in blocks": Case(_nbits_dense, ("", "DequantizeLinear"), "prove"),
    "a token layer's QuantizeLinear in [B, C, 1, S]": Case(_qdq_tokens, ("", "QuantizeLinear"), "relaid"),
    "a token layer's DequantizeLinear in [B, C, 1, S]": Case(_qdq_tokens, ("", "DequantizeLinear"), "relaid"),
    # ops/layout_ops.py
    "Transposes around a large layer": Case(
        lambda: _converted(graphs.convnext_block(h=1200, w=1100), fold_transposes=False), ("", "Transpose"), "prove"
    ),
    "Identity": Case(_after("Identity"), ("", "Identity"), "prove"),
    "a Constant node": Case(_constant_node_renamed, ("", "Constant"), "prove"),
    "a large token layer's unit axis": Case(lambda: _tokens(BIG), ("", "Unsqueeze"), "prove"),
    "a large token layer's merged heads": Case(lambda: _heads_merged(BIG), ("", "Reshape"), "prove"),
    "ViT's class token": Case(_class_token, ("", "Expand"), "prove"),
    "a folded Reshape between layers": Case(_reshape_between_layers, ("", "Reshape"), "fallback"),
    # ops/shape.py
    "a Shape read in a layout": Case(_shape_read, ("", "Shape"), "fallback"),
    "a Gather of that shape": Case(_shape_read, ("", "Gather"), "fallback"),
    # ops/repeated.py
    "Neg(Neg(x)) inserted before a layer": Case(lambda: _applied_twice("Neg"), ("", "Neg"), "prove"),
    # ops/expressions.py
    "pads computed from constants": Case(_pads_computed, ("", CONSTANT_EXPRESSION), "prove"),
    # ops/on_constants.py
    "a node on constants renamed": Case(_exp_renamed, ("", ON_CONSTANTS), "fallback"),
    # ops/convs.py
    "dilations on the original's 1x1 Conv": Case(_dilated_1x1, ("", "Conv"), "attributes"),
    # ops/channel_groups.py
    "BatchNormalization of token rows read channels-first": Case(
        lambda: _converted(_levit_block(kind="bn"), tokens=True), ("", "BatchNormalization"), "fallback"
    ),
    "a per-channel Mul of token rows read channels-first": Case(
        lambda: _converted(_levit_block(kind="affine"), tokens=True), ("", "Mul"), "fallback"
    ),
    # ops/layernorm.py
    "LayerNormalization written out in NCHW": Case(
        lambda: _converted(graphs.convnext_stage(8, 5, 7, blocks=1, layernorm=True), layout="nchw"),
        ("", "LayerNormalization"),
        "prove",
    ),
}


def _levit_block(kind: str) -> onnx.ModelProto:
    from tests.rewriter.cleanup.test_channel_groups import levit_block

    return levit_block(kind=kind)


@pytest.mark.parametrize("name", list(CASES))
def test_the_conversion_is_proved_only_with_the_rule(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    original, rewritten, layers = case.make()
    cert = certify(original, rewritten, layers)
    assert cert.proved, cert.to_dict()
    rule = PROOF_RULES[case.key]
    assert getattr(rule, case.phase) is not None
    monkeypatch.setitem(PROOF_RULES, case.key, dataclasses.replace(rule, **{case.phase: None}))
    cert = certify(original, rewritten, layers)
    assert not cert.proved and not cert.problems, cert.to_dict()  # unproved: a limit, never a false disagreement
    assert cert.unproved


@pytest.mark.parametrize("op", ["Relu", "Abs", "Sign", "Floor"])
def test_an_op_applied_twice_that_is_not_the_identity_is_never_proved(op: str) -> None:
    """``Relu(Relu(x))`` is ``Relu(x)``, not ``x``: the law gives the first application, which the original has not."""
    original, rewritten, layers = _applied_twice(op)
    cert = certify(original, rewritten, layers)
    assert not cert.proved, cert.to_dict()


def test_every_rule_in_the_table_has_a_case_that_needs_it() -> None:
    """Each phase of each rule (by identity: a rule shared by several ops counts once) is taken out by a case."""
    needed = {id(getattr(PROOF_RULES[case.key], case.phase)) for case in CASES.values()}
    missing = [
        (key, phase)
        for key, rule in PROOF_RULES.items()
        for phase in PHASES
        if getattr(rule, phase) is not None and id(getattr(rule, phase)) not in needed
    ]
    assert missing == []


def test_without_its_rule_an_op_moved_to_another_layout_is_not_proved(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole entry out: the Softmax the cleanup moved (its axis now 1) has no counterpart, and the walk says where."""
    original, rewritten, layers = _after("Softmax", axis=-1)()
    monkeypatch.delitem(PROOF_RULES, ("", "Softmax"))
    cert = certify(original, rewritten, layers)
    assert not cert.proved
    softmax = next(n for n in rewritten.graph.node if n.op_type == "Softmax")
    assert any(f"Softmax {softmax.name!r}: no counterpart in the original" in u for u in cert.unproved), cert.unproved


LAYERS: dict[str, Callable[[], Converted]] = {
    "Conv": lambda: _converted(dense_model(), layout="keep-all"),
    "QLinearConv": lambda: _integer_dense(dynamic=False),
    "ConvInteger": lambda: _integer_dense(dynamic=True),
}


@pytest.mark.parametrize("op", list(LAYERS))
def test_a_layer_is_proved_only_with_its_prover(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original, rewritten, layers = LAYERS[op]()
    assert certify(original, rewritten, layers).proved
    monkeypatch.delitem(LAYER_PROVERS, op)
    cert = certify(original, rewritten, layers)
    conv = next(n for n in rewritten.graph.node if n.op_type == op)
    assert cert.layers[conv.name].status == "refuted" and not cert.proved


def test_every_layer_prover_has_a_case() -> None:
    assert set(LAYERS) == set(LAYER_PROVERS)
