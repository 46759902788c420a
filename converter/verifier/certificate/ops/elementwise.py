"""Ops that work per element: read in any layout ``P``, they are their counterpart in ``P``.

``y[i] = f(a[i], b[i], ...)`` at each position ``i`` after broadcasting, so
``Op(Transpose(a, P), Transpose(b, P)) == Transpose(Op(a, b), P)``: the same op with the same attributes,
each operand the original's laid out by ``P`` (a constant broadcast to full rank, then transposed; a
one-element one of rank <= 1 as it is; a computed operand of lower rank broadcast the same way, rank 0 as it
is), and the outputs the original's in ``P``.

- The default domain's elementwise ops (:data:`ELEMENTWISE`), Where and the variadic ones included.
- onnxruntime's QLinearAdd / QLinearMul: ``y = saturate(round((sa (A - za) op sb (B - zb)) / sy) + zy)``, and
  QLinearSigmoid / QLinearLeakyRelu: ``y = saturate(round(f(sx (X - zx)) / sy) + zy)`` (leaky relu's alpha an
  attribute, compared): per element when each scale and zero point is one value for the whole tensor, bit
  for bit the original's (compared as they are, never laid out).
- DynamicQuantizeLinear: ``y = saturate(round(x / s) + z)`` with ``s`` and ``z`` from the minimum and maximum
  of the whole tensor, which no layout changes: output 0 in ``P``, outputs 1 and 2 the original's as they are.
"""

from __future__ import annotations

from converter.verifier.certificate.ops._base import per_element

# Ops whose result at each position depends only on the inputs at that position (after broadcasting).
ELEMENTWISE = frozenset(
    (
        "Abs Acos Acosh Asin Asinh Atan Atanh BitwiseNot Cast Ceil Celu Clip Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid "
        "HardSwish IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Sigmoid Sign Sin Sinh Softplus "
        "Softsign Sqrt Tan Tanh ThresholdedRelu "
        "Add And BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual Less LessOrEqual Max Mean Min Mod "
        "Mul Or Pow PRelu Sub Sum Where Xor"
    ).split()
)

# onnxruntime's quantized elementwise ops: the inputs that are scales and zero points (the others are data).
QLINEAR_ELEMENTWISE: dict[tuple[str, str], tuple[int, ...]] = {
    ("com.microsoft", "QLinearAdd"): (1, 2, 4, 5, 6, 7),  # A, B: inputs 0 and 3
    ("com.microsoft", "QLinearMul"): (1, 2, 4, 5, 6, 7),
    ("com.microsoft", "QLinearSigmoid"): (1, 2, 3, 4),  # X: input 0
    ("com.microsoft", "QLinearLeakyRelu"): (1, 2, 3, 4),
}

same_op = per_element()  # the default domain's elementwise ops
qlinear = {key: per_element(per_tensor=slots) for key, slots in QLINEAR_ELEMENTWISE.items()}
dynamic_quantize = per_element(unpermuted=(1, 2))
