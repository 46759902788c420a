"""QuantizeLinear and DequantizeLinear: per element, with the parameters along one axis at most.

Before::  t = Transpose(a, p); y = QuantizeLinear(t, scale, zero_point[, axis])
After::   y' = QuantizeLinear(a, scale, zero_point[, axis']); y = Transpose(y', p)

(DequantizeLinear the same.) ``(De)QuantizeLinear`` computes each element from that element and the
parameters of its position along ``axis``:

- per tensor (a scalar scale): nothing depends on the position, so the op is the same on either side
  of the Transpose; no attribute changes;
- per axis (a 1-D scale along ``axis``, default 1): dim ``axis`` of ``t`` is dim ``p[axis]`` of ``a``,
  so ``axis' = p[axis]``; scale and zero point stay as they are.

The Transpose is taken on the data input only (scale and zero point are parameters), and the
parameters must be constants of known rank. Blocked quantization (``block_size``) is declined.

Cost check: the move is made only when the Transpose can go on past the pair (every reader of the
DequantizeLinear is a Transpose or an op a handler knows; a graph output is fine, the op before the
pair then writes the quantized tensor directly). A pair in front of an op no Transpose
moves through (the Conv a rule made) keeps the Transpose before it, ``Transpose -> QuantizeLinear
-> DequantizeLinear -> Conv``: the QDQ form quantization tools and NPU compilers fuse.
"""

from __future__ import annotations

from onnx import NodeProto, helper

from converter.graph import new_node
from converter.rewriter.cleanup._edit import DEFAULT_DOMAINS, attribute, inverse
from converter.rewriter.cleanup.handlers._base import (
    Decline,
    HandlerArgs,
    Operand,
    Plan,
    axis_of,
    data_input_only,
    data_plan,
    laid_out,
    one_output,
    operand,
)
from converter.rewriter.cleanup.handlers.elementwise import broadcast


def qdq(args: HandlerArgs) -> Plan | Decline:
    if declined := data_input_only(args) or one_output(args) or _goes_on(args):
        return declined
    node = args.node
    if attribute(node, "block_size", 0):
        return Decline("blocked_quantization", f"{node.op_type} quantizes in blocks")
    if len(node.input) < 2 or not node.input[1]:
        return Decline("no_scale", f"{node.op_type} has no scale")
    scale = node.input[1]
    if not args.ws.scope.source(scale).is_constant:
        return Decline("scale_not_constant", f"the scale of {node.op_type} ({scale}) is computed, not constant")
    rank = len(args.ws.scope.constant_tensor(scale).dims)
    if rank == 0:
        return data_plan(args)
    if rank != 1:
        return Decline("bad_axes", f"the scale of {node.op_type} has rank {rank}")
    k = axis_of(args, attribute(node, "axis", 1))  # type: ignore[arg-type]
    if isinstance(k, Decline):
        return k
    return data_plan(args, axis=args.perm[k])


def _goes_on(args: HandlerArgs) -> Decline | None:
    """Whether the Transpose, moved below this node (and a QuantizeLinear's DequantizeLinear), is read next
    by Transposes and ops a handler knows (or a graph output: the count is the same on either side, and the
    op before the pair then writes the quantized tensor directly, as QDQ fusion wants)."""
    ws, node = args.ws, args.node
    if args.ctx.decided:
        return None
    if node.op_type == "DequantizeLinear":
        return _readers_go_on(args, node.output[0])
    for reader in ws.readers(node.output[0]):
        if reader.op_type == "DequantizeLinear" and reader.domain in DEFAULT_DOMAINS:
            if declined := _readers_go_on(args, reader.output[0]):
                return declined
        elif declined := _stays(args, reader, node.output[0]):
            return declined
    return None


def _readers_go_on(args: HandlerArgs, name: str) -> Decline | None:
    for reader in args.ws.readers(name):
        if declined := _stays(args, reader, name):
            return declined
    return None


def _stays(args: HandlerArgs, reader: NodeProto, name: str) -> Decline | None:
    if not (reader.op_type == "Transpose" and reader.domain in DEFAULT_DOMAINS) and args.handler_for(reader) is None:
        return Decline("outputs_stay_transposed", f"{name} is read by {reader.op_type}, which no Transpose moves through")
    return None


# -- elementwise ops with a quantized constant operand ---------------------------------------------
#
# A QDQ model reads its constants through DequantizeLinear (a layer scale ``Mul(y, DQ(sq, s, z))``, a
# bias ``Add(y, DQ(bq, s, z))``). With per-tensor parameters, ``DQ(c, s, z)`` laid out by the inverse
# perm is ``DQ(c laid out, s, z)``: the integers move, scale and zero point stay. So the elementwise
# move reads a new DequantizeLinear of the re-laid out integers (a one-element integer tensor of rank
# <= 1 broadcasts alike in any layout and is read as it is); the old DequantizeLinear goes when the
# moved node was its only reader. Operands of every other kind are the plain elementwise handler's.


def _quantized_constant(args: HandlerArgs, slot: int) -> NodeProto | None:
    """The DequantizeLinear that makes input ``slot`` from constants with per-tensor parameters, if any."""
    name = args.node.input[slot]
    ws = args.ws
    dq = ws.producer(name) if name and name != args.t else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in DEFAULT_DOMAINS or attribute(dq, "block_size", 0):
        return None
    if len(dq.input) < 2 or not all(ws.scope.source(i).is_constant for i in dq.input if i):
        return None
    if len(ws.scope.constant_tensor(dq.input[1]).dims) != 0:
        return None  # per-axis parameters follow the data's axes: not a plain re-layout
    if len(ws.scope.constant_tensor(dq.input[0]).dims) > args.rank:
        return None
    return dq


def broadcast_quantized(args: HandlerArgs) -> Plan | Decline:
    """Elementwise ops (see ``elementwise.broadcast``) whose constant operands may be DequantizeLinear of constants."""
    node = args.node
    quantized = {slot: dq for slot in range(len(node.input)) if (dq := _quantized_constant(args, slot)) is not None}
    if not quantized:
        return broadcast(args)
    if declined := one_output(args):
        return declined
    if node.op_type == "PRelu" and 0 not in args.slots:
        return Decline("not_data_input", "PRelu takes the Transpose only on its data input")
    inputs: dict[int, Operand] = {}
    for slot in range(len(node.input)):
        dq = quantized.get(slot)
        if dq is not None:
            inputs[slot] = laid_out(dq.input[0], list(args.ws.scope.constant_tensor(dq.input[0]).dims), args.perm)
            continue
        new = operand(args, slot)
        if new is None:
            return Decline(
                "operand_in_other_layout", f"{node.op_type} input {node.input[slot]} is neither constant nor in the same layout"
            )
        inputs[slot] = new
    ctx, ws = args.ctx, args.ws

    def replace(ins: list[str], outs: list[str]) -> list[NodeProto]:
        made: list[NodeProto] = []
        reads = list(ins)
        for slot, dq in quantized.items():
            if ins[slot] == dq.input[0]:  # a one-element constant: the same DequantizeLinear serves
                reads[slot] = node.input[slot]
                continue
            out = ctx.names.fresh(f"{node.input[slot]}_{''.join(map(str, inverse(args.perm)))}")
            made.append(
                new_node("DequantizeLinear", [ins[slot], *dq.input[1:]], [out], ctx.names.fresh(dq.name or out), **_attrs(dq))
            )
            reads[slot] = out
            if ws.alive(dq) and [id(r) for r in ws.readers(dq.output[0])] == [id(node)] and dq.output[0] not in ws.outputs:
                ws.remove(dq)
                ctx.vanished.add(dq.output[0])
        moved = NodeProto()
        moved.CopyFrom(node)  # name, attributes and metadata kept; only what it reads and writes changes
        del moved.input[:], moved.output[:]
        moved.input.extend(reads)
        moved.output.extend(outs)
        return [*made, moved]

    return Plan(inputs, [args.perm], replace=replace)


def _attrs(node: NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
