"""QuantizeLinear and DequantizeLinear: read in another layout, and DequantizeLinear of constants.

``y = saturate(round(x / scale) + zero_point)`` and ``x = (y - zero_point) * scale``:

- a scalar scale (rank 0): per element, so in any layout ``P`` the same op with the same attributes; ``Q = P``;
- a 1-D scale: per position along ``axis`` (default 1), so that axis must be the original's seen through
  ``P``; the scale and zero point (inputs 1, 2) are neither laid out nor axes: the original's as they are;
  ``Q = P``;
- in blocks (``block_size``): not followed in another layout.

A DequantizeLinear whose inputs are all constants is a constant (a quantized weight the rewrite laid out as a
Conv weight): its value is computed (:func:`constants.dequantize`) and compared bit for bit wherever it is used,
the same way on both sides.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from onnx import NodeProto

from converter.verifier.certificate.constants import evaluated, run_on_constants
from converter.verifier.certificate.context import Context
from converter.verifier.certificate.facts import EMPTY, Const
from converter.verifier.certificate.layouts import Layout
from converter.verifier.certificate.ops._base import AxisArgs


def quantize_linear(a: AxisArgs) -> Layout | str:
    """QuantizeLinear and DequantizeLinear read in layout ``P`` (see the module docstring)."""
    op = a.node.op_type
    scale = a.ins[1] if len(a.ins) > 1 else None
    if not isinstance(scale, Const):
        return f"the {op} scale is not a constant"
    if a.attrs.get_int("block_size", 0) or a.orig_attrs.get_int("block_size", 0):
        return f"{op} in blocks in another layout"
    if np.asarray(scale.get()).ndim == 0:
        return a.perm if a.same_attributes() else f"the {op} attributes differ"
    if not a.same_attributes("axis") or not a.maps([a.attrs.get_int("axis", 1)], [a.orig_attrs.get_int("axis", 1)], True):
        return f"the {op} axis is not the original's under the layout"
    return a.perm


def dequantized_constant(ctx: Context, node: NodeProto) -> bool:
    """A DequantizeLinear of constants alone is the constant it computes (its output's fact set)."""
    ins = [ctx.fact(n) for n in node.input]
    if len(node.output) != 1 or not ins or not isinstance(ins[0], Const):
        return False
    if not all(isinstance(f, Const) or f is EMPTY for f in ins):
        return False
    opsets = ctx.orig.opsets
    if run_on_constants(node, ins, opsets) is None:
        return False
    ctx.facts[node.output[0]] = Const(ctx.key(node.output[0]), partial(evaluated, node, ins, opsets))
    return True
