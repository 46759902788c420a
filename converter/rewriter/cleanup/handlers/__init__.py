"""The tables of ops a Transpose moves through: op type (default domain) -> handler, and
(domain, op type) -> handler for the ops of other domains (onnxruntime's com.microsoft QLinear ops).

Adding an op is one handler function (in the module of its family, the rule in its docstring)
and one line here. A handler receives :class:`HandlerArgs` and returns a :class:`Plan` or a
:class:`Decline`; :mod:`converter.rewriter.cleanup.sink_transposes` applies the plans. Everything that asks
"does a Transpose move through this node" goes through :func:`handler_for`.
"""

from __future__ import annotations

from onnx import NodeProto

from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS
from converter.rewriter.cleanup.handlers._base import Decline, Handler, HandlerArgs, Plan
from converter.rewriter.cleanup.handlers.axis_ops import gather, pad, slice_, softmax, squeeze, unsqueeze
from converter.rewriter.cleanup.handlers.dynamic import dynamic_quantize
from converter.rewriter.cleanup.handlers.elementwise import BINARY, UNARY, VARIADIC, unary
from converter.rewriter.cleanup.handlers.layernorm import layernorm
from converter.rewriter.cleanup.handlers.qdq import broadcast_quantized, qdq
from converter.rewriter.cleanup.handlers.qlinear import qlinear_binary, qlinear_unary
from converter.rewriter.cleanup.handlers.reductions import REDUCE, reduce
from converter.rewriter.cleanup.handlers.shape import shape
from converter.rewriter.cleanup.handlers.split_concat import concat, split

HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(UNARY, unary),
    **dict.fromkeys(BINARY | VARIADIC, broadcast_quantized),  # broadcast, and DequantizeLinear constants
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), softmax),
    **dict.fromkeys(REDUCE, reduce),
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Pad": pad,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Gather": gather,
    "Shape": shape,
    "QuantizeLinear": qdq,
    "DequantizeLinear": qdq,
    "DynamicQuantizeLinear": dynamic_quantize,
    "LayerNormalization": layernorm,  # only with CleanupOptions(layernorm_to_nchw=True)
}

OTHER_DOMAINS: dict[tuple[str, str], Handler] = {
    ("com.microsoft", "QLinearAdd"): qlinear_binary,
    ("com.microsoft", "QLinearMul"): qlinear_binary,
    ("com.microsoft", "QLinearSigmoid"): qlinear_unary,
    ("com.microsoft", "QLinearLeakyRelu"): qlinear_unary,
}

# Besides the elementwise ops: ops whose moved output is at each position a function of the same position
# of the input (the layout goes on unchanged, only a per-axis parameter's axis follows it). Their fan-out is
# taken as elementwise fan-out is (sink_transposes._worth_it).
PER_ELEMENT: frozenset[tuple[str, str]] = frozenset(
    {("", "QuantizeLinear"), ("", "DequantizeLinear"), ("", "DynamicQuantizeLinear"), *OTHER_DOMAINS}
)


def handler_for(node: NodeProto) -> Handler | None:
    """The handler that moves a Transpose through ``node``, or None."""
    if node.domain in DEFAULT_DOMAINS:
        return HANDLERS.get(node.op_type)
    return OTHER_DOMAINS.get((node.domain, node.op_type))


def per_element(node: NodeProto) -> bool:
    domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
    return (domain, node.op_type) in PER_ELEMENT


__all__ = ["HANDLERS", "OTHER_DOMAINS", "Decline", "Handler", "HandlerArgs", "Plan", "handler_for", "per_element"]
