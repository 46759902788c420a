"""Rewrite rules: one file per rule, run by the engine in ``_engine.py``."""

from ._engine import Decline, RewriteOptions, Rule, apply_rules
from .gemm_sandwich_to_conv import GemmSandwichToConv
from .matmul_add_to_conv import MatMulAddToConv
from .tensordot_to_conv import TensordotToConv

__all__ = ["Decline", "GemmSandwichToConv", "MatMulAddToConv", "RewriteOptions", "Rule", "TensordotToConv", "apply_rules"]
