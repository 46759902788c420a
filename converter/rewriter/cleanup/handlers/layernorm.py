"""LayerNormalization over the last axes of a transposed tensor, written out on the untransposed one (opt-in).

Only with ``CleanupOptions(layernorm_to_nchw=True)``, or where a chosen layout says so (the layout
optimizer decides it per LayerNorm: written out, it takes more nodes and runs slower on CPUs). With ``t = Transpose(a, perm)`` and
``y = LayerNormalization(t, scale, bias, axis=k, epsilon=eps)`` (``k`` normalized; the statistics
outputs unused), and ``A = sorted(perm[i] for i in k..rank-1)`` (ConvNeXt, perm [0,2,3,1], k=3: A=[1])::

    x    = Cast(a, stash_type)            (only when the data type is not the stash type)
    mean = ReduceMean(x, A, keepdims=1)
    d    = Sub(x, mean)
    var  = ReduceMean(Mul(d, d), A, keepdims=1)
    n    = Div(d, Sqrt(Add(var, eps)))
    n    = Cast(n, data type)             (only with the first Cast)
    y'   = Add(Mul(n, scale'), bias')     (scale, bias laid out as elementwise constants: [C] -> [1,C,1,1])
    y    = Transpose(y', perm)

which is the ONNX function body of LayerNormalization over the axes ``A`` of ``a``. Scale and bias
must be constants. Made only when every reader of ``y`` is a Transpose or an op a handler knows
(otherwise it would add nodes and save no Transpose).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper

from converter.graph import new_node
from converter.rewriter.cleanup._edit import attribute
from converter.rewriter.cleanup.handlers._base import (
    Decline,
    HandlerArgs,
    Operand,
    Plan,
    axis_of,
    data_input_only,
    laid_out,
    optional_input,
    outputs_move_on,
)


def layernorm(args: HandlerArgs) -> Plan | Decline:
    if not (args.ctx.options.layernorm_to_nchw or args.ctx.decided):
        return Decline("option_off", "LayerNormalization is kept as it is unless CleanupOptions(layernorm_to_nchw=True)")
    if declined := data_input_only(args):
        return declined
    node, ws = args.node, args.ws
    if any(out and ws.is_read(out) for out in node.output[1:]):
        return Decline("statistics_read", "LayerNormalization's mean or inverse deviation is read")
    k = axis_of(args, attribute(node, "axis", -1))  # type: ignore[arg-type]
    if isinstance(k, Decline):
        return k
    inputs: dict[int, Operand] = {0: args.a}
    dtype = None
    for slot in (1, 2):
        name = optional_input(node, slot)
        if not name:
            continue
        if not ws.scope.source(name).is_constant:
            return Decline("scale_not_constant", f"LayerNormalization's {('scale', 'bias')[slot - 1]} {name} is computed")
        tensor = ws.scope.constant_tensor(name)
        if len(tensor.dims) > args.rank - k:
            return Decline("bad_axes", f"LayerNormalization's {name} has more axes than it normalizes")
        dtype = dtype or tensor.data_type
        inputs[slot] = laid_out(name, list(tensor.dims), args.perm)
    if declined := outputs_move_on(args):
        return declined
    axes = sorted(args.perm[i] for i in range(k, args.rank))
    epsilon = float(attribute(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    stash = int(attribute(node, "stash_type", TensorProto.FLOAT))  # type: ignore[call-overload]

    def written_out(ins: list[str], outs: list[str]) -> list[NodeProto]:
        return _nodes(args, ins, outs[0], axes, epsilon, dtype or TensorProto.FLOAT, stash)

    return Plan(inputs, [args.perm] + [None] * (len(node.output) - 1), replace=written_out)


def _nodes(args: HandlerArgs, ins: list[str], out: str, axes: list[int], epsilon: float, dtype: int, stash: int) -> list[NodeProto]:
    names, ws = args.ctx.names, args.ws
    base = args.node.name or out
    made: list[NodeProto] = []

    def op(op_type: str, inputs: list[str], **attrs: object) -> str:
        result = names.fresh(f"{out}_{op_type.lower()}")
        made.append(new_node(op_type, inputs, [result], names.fresh(f"{base}_{op_type.lower()}"), **attrs))
        return result

    stash_np = helper.tensor_dtype_to_np_dtype(stash)
    eps = ws.add_constant(names.fresh(f"{base}_epsilon"), np.array(epsilon, dtype=stash_np))
    if args.opset >= 18:
        axes_in, axes_attr = [ws.add_constant(names.fresh(f"{base}_axes"), np.array(axes, dtype=np.int64))], {}
    else:
        axes_in, axes_attr = [], {"axes": axes}
    cast = dtype != stash
    x = op("Cast", [ins[0]], to=stash) if cast else ins[0]
    mean = op("ReduceMean", [x, *axes_in], keepdims=1, **axes_attr)
    d = op("Sub", [x, mean])
    var = op("ReduceMean", [op("Mul", [d, d]), *axes_in], keepdims=1, **axes_attr)
    n = op("Div", [d, op("Sqrt", [op("Add", [var, eps])])])
    if cast:
        n = op("Cast", [n], to=dtype)
    y = op("Mul", [n, ins[1]])
    if len(ins) > 2 and ins[2]:
        y = op("Add", [y, ins[2]])
    made[-1].output[0] = out
    return made
