"""The proof rules: (domain, op type) -> :class:`ProofRule`, one family per module, the math in its docstring.

The cleanup's handler table says which ops a Transpose moves through; this table says how the certificate
proves each such move, written independently of it (tests check that every op the cleanup moves has a rule
here, and that each rule is needed). An op without a rule is still proved where it reads its inputs as the
original's counterpart does (same attributes, same inputs); it is only never accepted in another layout.

Adding an op is one function in the module of its family (the math in that module's docstring), one line
here, and one test. A rule is a :class:`ProofRule` of up to four phases (``ops._base`` says what each
receives and returns): ``prove`` (no counterpart needed), ``relaid`` (read in another layout against a
candidate counterpart: :func:`per_element` or :func:`axis_op` with a layout function), ``fallback``, and
``attributes`` (whether a counterpart read as it is has the same attributes, where an op has laws for that).
The default domain is written ``""`` (``"ai.onnx"`` is read as it). Two entries are no op:
:data:`CONSTANT_EXPRESSION`, whose ``prove`` starts at every op of the shape arithmetic exporters write
(``ops/expressions.py``: a node on small constants alone is the constant it computes), and :data:`ON_CONSTANTS`,
whose ``fallback`` the walk tries on any node that reads constants alone and that nothing else explained
(``ops/on_constants.py``: its counterpart found by value, not by name).
"""

from __future__ import annotations

from collections import defaultdict

from onnx import NodeProto

from converter.verifier.certificate.canonical import IDEMPOTENT, INVOLUTIONS
from converter.verifier.certificate.expressions import EXPRESSION_OPS
from converter.verifier.certificate.nodes import is_default
from converter.verifier.certificate.ops import (
    axis_ops,
    channel_groups,
    convs,
    elementwise,
    expressions,
    layernorm,
    layout_ops,
    on_constants,
    qdq,
    repeated,
    shape,
    shape_entries,
)
from converter.verifier.certificate.ops._base import (
    ALL,
    AxisArgs,
    Fallback,
    ProofRule,
    Prove,
    Relaid,
    axis_op,
    either,
    per_element,
    same_operands,
    set_outputs,
)

_REDUCE = axis_op(axis_ops.reduce, params=(1,))
REPEATABLE = INVOLUTIONS | IDEMPOTENT
CONSTANT_EXPRESSION = "(constant expression)"  # no op: the key of the rule that starts at every expression op
ON_CONSTANTS = "(on constants)"  # no op: the key of the rule the walk tries on any node reading constants alone

PROOF_RULES: dict[tuple[str, str], ProofRule] = {
    # per element (ops/elementwise.py)
    **{("", op): ProofRule(relaid=elementwise.same_op) for op in elementwise.ELEMENTWISE - REPEATABLE},
    # an involution or idempotent op applied to its own output (ops/repeated.py), else per element
    **{("", op): ProofRule(relaid=elementwise.same_op, prove=repeated.applied_twice) for op in REPEATABLE},
    **{key: ProofRule(relaid=check) for key, check in elementwise.qlinear.items()},
    ("", "DynamicQuantizeLinear"): ProofRule(relaid=elementwise.dynamic_quantize),
    # per channel, on flattened rows read channels-first (ops/channel_groups.py)
    **{("", op): ProofRule(relaid=elementwise.same_op, fallback=channel_groups.per_channel) for op in channel_groups.BINARY},
    ("", "BatchNormalization"): ProofRule(fallback=channel_groups.per_channel),
    # axes (ops/axis_ops.py)
    **dict.fromkeys([("", "Softmax"), ("", "LogSoftmax"), ("", "Hardmax")], ProofRule(relaid=axis_op(axis_ops.softmax))),
    ("", "Concat"): ProofRule(relaid=axis_op(axis_ops.concat, data=ALL)),
    ("", "Split"): ProofRule(relaid=axis_op(axis_ops.split, params=(1,))),
    ("", "Gather"): ProofRule(relaid=axis_op(axis_ops.gather), fallback=either(shape.gathered_shape, shape_entries.same_entries)),
    ("", "Slice"): ProofRule(relaid=axis_op(axis_ops.slice_, params=(1, 2, 3, 4), computed=(1, 2, 4))),
    ("", "Pad"): ProofRule(relaid=axis_op(axis_ops.pad, params=(1, 3))),
    **{("", op): ProofRule(relaid=_REDUCE) for op in axis_ops.REDUCE},
    # quantization (ops/qdq.py): scale and zero point compared as they are
    ("", "QuantizeLinear"): ProofRule(relaid=axis_op(qdq.quantize_linear)),
    ("", "DequantizeLinear"): ProofRule(relaid=axis_op(qdq.quantize_linear), prove=qdq.dequantized_constant),
    # re-laying a tensor (ops/layout_ops.py); a Squeeze of the root's own unit axes is a reduction (ops/axis_ops.py)
    ("", "Transpose"): ProofRule(prove=layout_ops.transpose, fallback=layout_ops.rearranged),
    ("", "Identity"): ProofRule(prove=layout_ops.identity),
    ("", "Constant"): ProofRule(prove=layout_ops.constant),
    ("", "Squeeze"): ProofRule(prove=layout_ops.unit_axis, relaid=_REDUCE, fallback=layout_ops.rearranged),
    ("", "Unsqueeze"): ProofRule(prove=layout_ops.unit_axis, fallback=layout_ops.rearranged),
    ("", "Reshape"): ProofRule(prove=layout_ops.merge, fallback=layout_ops.rearranged),
    ("", "Expand"): ProofRule(prove=layout_ops.relaid_expand),
    # shapes (ops/shape.py; a Gather's second fallback: the same entries of run-time shapes, ops/shape_entries.py)
    ("", "Shape"): ProofRule(fallback=shape.shape),
    # written out (ops/layernorm.py): the body starts at a Cast or a ReduceMean
    ("", "LayerNormalization"): ProofRule(prove=layernorm.written_out, starts=("Cast", "ReduceMean")),
    # small constant expressions (ops/expressions.py): any op of the shape arithmetic, on small constants alone
    ("", CONSTANT_EXPRESSION): ProofRule(prove=expressions.constant_expression, starts=tuple(sorted(EXPRESSION_OPS))),
    # convolutions of the original (not layers): attributes that change nothing (ops/convs.py)
    **dict.fromkeys([("", op) for op in ("Conv", "ConvInteger", "QLinearConv")], ProofRule(attributes=convs.same_attributes)),
    # any op on constants alone that no original node of its name explains (ops/on_constants.py): found by value
    ("", ON_CONSTANTS): ProofRule(fallback=on_constants.same_values),
}


def op_key(node: NodeProto) -> tuple[str, str]:
    """``node``'s key in the table: (domain, op type), the default domain as ``""``."""
    return ("" if is_default(node) else node.domain, node.op_type)


def rule_for(node: NodeProto) -> ProofRule | None:
    """The proof rule of ``node``'s op, or None."""
    return PROOF_RULES.get(op_key(node))


def prover_index() -> dict[tuple[str, str], list[Prove]]:
    """The ``prove`` phases to try on a node, by its key (``op_key``): its own op's, and those of the rules whose
    proof starts at its op (``ProofRule.starts``). Read from the table as it is when called (once per certificate)."""
    index: dict[tuple[str, str], list[Prove]] = defaultdict(list)
    for (domain, op), rule in PROOF_RULES.items():
        if rule.prove is not None:
            for start in rule.starts or (op,):
                index[(domain, start)].append(rule.prove)
    return dict(index)


__all__ = [
    "ALL",
    "CONSTANT_EXPRESSION",
    "ON_CONSTANTS",
    "PROOF_RULES",
    "AxisArgs",
    "Fallback",
    "ProofRule",
    "Prove",
    "Relaid",
    "axis_op",
    "op_key",
    "per_element",
    "prover_index",
    "rule_for",
    "same_operands",
    "set_outputs",
]
