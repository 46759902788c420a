"""The table of ops a Transpose moves through: op type (default domain) -> handler.

Adding an op is one handler function (in the module of its family, the rule in its docstring)
and one line here. A handler receives :class:`HandlerArgs` and returns a :class:`Plan` or a
:class:`Decline`; :mod:`converter.cleanup.sink_transposes` applies the plans.
"""

from __future__ import annotations

from converter.cleanup.handlers._base import Decline, Handler, HandlerArgs, Plan
from converter.cleanup.handlers.axis_ops import gather, pad, slice_, softmax, squeeze, unsqueeze
from converter.cleanup.handlers.elementwise import BINARY, UNARY, VARIADIC, broadcast, unary
from converter.cleanup.handlers.layernorm import layernorm
from converter.cleanup.handlers.reductions import REDUCE, reduce
from converter.cleanup.handlers.split_concat import concat, split

HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(UNARY, unary),
    **dict.fromkeys(BINARY | VARIADIC, broadcast),
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), softmax),
    **dict.fromkeys(REDUCE, reduce),
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Pad": pad,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Gather": gather,
    "LayerNormalization": layernorm,  # only with CleanupOptions(layernorm_to_nchw=True)
}

__all__ = ["HANDLERS", "Decline", "Handler", "HandlerArgs", "Plan"]
