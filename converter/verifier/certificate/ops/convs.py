"""Convolutions written another way: attributes that change nothing the convolution computes.

A Conv of the original (not a dense layer: one the rewrite keeps, a 1x1 projection of a CNN) is matched as any
node is, by its op, its inputs and its attributes; another tool may write the same convolution with other
attributes. Each law below holds for Conv, ConvInteger and QLinearConv alike (they read ``kernel_shape``,
``dilations``, ``strides``, ``pads`` and ``auto_pad`` the same way), along each spatial axis ``i`` of a kernel
of ``k_i`` elements, with the output size ``floor((in + pads - ((k_i - 1) * d_i + 1)) / s_i) + 1``:

- a dilation spans ``(k_i - 1) * d_i + 1`` input elements, one when ``k_i = 1``: ``d_i`` is then any value (the
  same element is read), so it is read as 1; ``dilations`` all 1, ``strides`` all 1 and ``pads`` all 0 are the
  attributes left out;
- ``kernel_shape`` equal to the weight's spatial dims is the attribute left out (it is read from the weight);
- ``auto_pad`` VALID pads nothing: ``auto_pad`` left out with no ``pads``; SAME_UPPER and SAME_LOWER pad
  ``(ceil(in / s) - 1) * s + (k - 1) * d + 1 - in`` in all, 0 when every ``k_i = 1`` at stride 1.

The kernel's dims are the weight's (the original's: the operands check then holds the candidate's to be the same
values), or ``kernel_shape``. Two convolutions are the same when their attributes read this way are equal
(schema defaults aside, ``nodes.written``); anything else (a stride, a dilation on a larger kernel, a group) is
compared as written.
"""

from __future__ import annotations

import onnx
from onnx import NodeProto

from converter.verifier.certificate.context import Context
from converter.verifier.certificate.nodes import plain_attributes, written

_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}


def same_attributes(ctx: Context, node: NodeProto, cand: NodeProto) -> bool:
    """Whether the convolution ``node`` has the attributes of the original's ``cand`` as they are read (see the
    module docstring)."""
    opset = ctx.orig.opset
    if plain_attributes(node, opset) == plain_attributes(cand, opset):
        return True
    kernel = _kernel(ctx, cand)
    return _read(node, opset, kernel) == _read(cand, opset, kernel)


def _kernel(ctx: Context, cand: NodeProto) -> tuple[int, ...] | None:
    """The spatial dims of the original convolution's weight, or None when they are not known."""
    slot = _WEIGHT.get(cand.op_type, 1)
    shape = ctx.orig.shape(cand.input[slot]) if len(cand.input) > slot and cand.input[slot] else None
    dims = tuple(d for d in shape[2:] if isinstance(d, int)) if shape is not None else ()
    return dims if shape is not None and len(shape) > 2 and len(dims) == len(shape) - 2 else None


def _read(node: NodeProto, opset: int, kernel: tuple[int, ...] | None) -> dict[str, object]:
    """``node``'s attributes as the convolution reads them: what changes nothing left out."""
    attrs: dict[str, object] = {}
    for a in written(node, opset):
        value = onnx.helper.get_attribute_value(a)
        attrs[a.name] = tuple(value) if isinstance(value, list) else value.decode() if isinstance(value, bytes) else value
    shape = attrs.get("kernel_shape")
    if kernel is not None and shape == kernel:
        del attrs["kernel_shape"]
    kernel = kernel if kernel is not None else shape if isinstance(shape, tuple) else None
    dilations = attrs.get("dilations")
    if isinstance(dilations, tuple) and kernel is not None and len(dilations) == len(kernel):
        attrs["dilations"] = tuple(1 if k == 1 else d for d, k in zip(dilations, kernel, strict=True))
    for name, neutral in (("dilations", 1), ("strides", 1), ("pads", 0)):
        value = attrs.get(name)
        if isinstance(value, tuple) and all(v == neutral for v in value):
            del attrs[name]
    pad = attrs.get("auto_pad")
    if pad in ("NOTSET", "VALID") and "pads" not in attrs:
        attrs.pop("auto_pad")
    elif pad in ("SAME_UPPER", "SAME_LOWER") and kernel is not None and all(k == 1 for k in kernel):
        if "strides" not in attrs and "pads" not in attrs:
            attrs.pop("auto_pad")
    return attrs
