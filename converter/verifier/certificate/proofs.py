"""What the certificate says: the verdict per layer and per graph, and what each claimed layer is in the original.

The numeric checks (``converter.verifier.numbers``) read the original layers from here (:class:`DenseLayer`
through :meth:`Certificate.original_dense`, :class:`IntegerLayer` as it is), never the rewritten ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto


class Mismatch(Exception):
    """A definite disagreement found while computing an expected value."""


@dataclass
class LayerProof:
    """The certificate's word on one rewritten layer."""

    status: str  # "proved" | "refuted" | "unproved"
    detail: str = ""


@dataclass
class DenseLayer:
    """A float dense layer as the original computes it (MatMul or Gemm, a bias, maybe a quantized sandwich)."""

    x: str
    weight_kc: Callable[[], np.ndarray]  # the expected Conv weight as [K, C]
    bias: Callable[[], np.ndarray] | None  # the expected Conv bias as [K], or None
    # A quantized sandwich: the original (QuantizeLinear, DequantizeLinear) pairs on the flat activation and
    # on the flat output, inside the Reshapes, and the MatMul's flat output.
    in_pair: tuple[NodeProto, NodeProto] | None = None
    out_pair: tuple[NodeProto, NodeProto] | None = None
    flat: str = ""
    end: str = ""  # the original tensor the layer ends in (the second Reshape's output), when not ``output``


@dataclass(frozen=True)
class IntegerLayer:
    """What the numeric checks of an integer layer need, as read from the original graph.

    ``weight_kc`` the integer weight as [K, C]; ``w_zero`` the weight's zero point as [K]; ``x_zero`` None
    when computed at run time (DynamicQuantizeLinear's: the verifier supplies it). The scales and
    ``y_zero`` are QLinearConv's only (None for ConvInteger).
    """

    weight_kc: np.ndarray
    w_zero: np.ndarray
    x_zero: np.ndarray | None = None
    x_scale: np.ndarray | None = None
    w_scale: np.ndarray | None = None
    y_scale: np.ndarray | None = None
    y_zero: np.ndarray | None = None
    end: str = ""  # a Tensordot's: the original 4D tensor its second Reshape restores from the flat output
    bias: np.ndarray | None = None  # an int32 [K] bias added to the sums before requantizing (QGemm's, QLinearConv's B)


@dataclass
class Certificate:
    layers: dict[str, LayerProof] = field(default_factory=dict)  # by the Conv node's name
    problems: list[str] = field(default_factory=list)  # definite disagreements
    unproved: list[str] = field(default_factory=list)  # what the walk could not follow (and where)
    # What each claimed layer is in the original (by Conv name), for the numeric checks to use.
    originals: dict[str, DenseLayer | IntegerLayer | str] = field(default_factory=dict)
    # The main graph's computed tensors whose shape the proof took from onnx's shape inference (dims: an int, a
    # symbol, a product "k*N", or None where not told): the verifier checks them against onnxruntime's, and until
    # it has, the proof rests on them (see original.Original.shape).
    assumed_shapes: dict[str, tuple[int | str | None, ...]] = field(default_factory=dict)

    def original_dense(self, conv: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The original layer's weight as [K, C] and bias as [K] (or None); ValueError when it is no dense layer.

        Args:
            conv: the rewritten Conv's node name, as the layer's claim names it.
        """
        dense = self.originals.get(conv, "the walk never reached this layer's graph")
        if isinstance(dense, str):
            raise ValueError(dense)
        if not isinstance(dense, DenseLayer):
            raise ValueError("it is an integer layer, not a float dense one")
        try:
            return dense.weight_kc(), None if dense.bias is None else dense.bias()
        except Mismatch as e:
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
