"""Rewrite rules: one file per rule, run by the engine in ``_engine.py``."""

from ._engine import Decline, RewriteOptions, Rule, apply_rules
from .gemm_sandwich_to_conv import GemmSandwichToConv
from .integer_sandwich_to_conv import IntegerSandwichToConv
from .matmul_add_to_conv import MatMulAddToConv
from .matmul_integer_to_conv import MatMulIntegerToConv
from .matmul_tokens_to_conv import MatMulTokensToConv
from .qdq_gemm_sandwich_to_conv import QdqGemmSandwichToConv
from .qdq_matmul_to_conv import QdqMatMulToConv
from .qdq_sandwich_to_conv import QdqSandwichToConv
from .qlinear_matmul_to_conv import QLinearMatMulToConv
from .qlinear_sandwich_to_conv import QLinearSandwichToConv
from .tensordot_to_conv import TensordotToConv

__all__ = [
    "Decline",
    "GemmSandwichToConv",
    "IntegerSandwichToConv",
    "MatMulAddToConv",
    "MatMulIntegerToConv",
    "MatMulTokensToConv",
    "QdqGemmSandwichToConv",
    "QdqMatMulToConv",
    "QdqSandwichToConv",
    "QLinearMatMulToConv",
    "QLinearSandwichToConv",
    "RewriteOptions",
    "Rule",
    "TensordotToConv",
    "apply_rules",
]
