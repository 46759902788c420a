"""Rewrite rules: one file per rule, run by the engine in ``_engine.py``."""

from converter.rewriter.rules._engine import Decline, Prepared, Rule, RuleOptions, apply_rules, prepare_rules
from converter.rewriter.rules.gemm_sandwich_to_conv import GemmSandwichToConv
from converter.rewriter.rules.integer_sandwich_to_conv import IntegerSandwichToConv
from converter.rewriter.rules.matmul_add_to_conv import MatMulAddToConv
from converter.rewriter.rules.matmul_integer_to_conv import MatMulIntegerToConv
from converter.rewriter.rules.matmul_integer_tokens_to_conv import MatMulIntegerTokensToConv
from converter.rewriter.rules.matmul_nbits_to_conv import MatMulNBitsToConv
from converter.rewriter.rules.matmul_tokens_to_conv import MatMulTokensToConv
from converter.rewriter.rules.qdq_gemm_sandwich_to_conv import QdqGemmSandwichToConv
from converter.rewriter.rules.qdq_matmul_to_conv import QdqMatMulToConv
from converter.rewriter.rules.qdq_matmul_tokens_to_conv import QdqMatMulTokensToConv
from converter.rewriter.rules.qdq_sandwich_to_conv import QdqSandwichToConv
from converter.rewriter.rules.qgemm_sandwich_to_conv import QGemmSandwichToConv
from converter.rewriter.rules.qlinear_matmul_to_conv import QLinearMatMulToConv
from converter.rewriter.rules.qlinear_matmul_tokens_to_conv import QLinearMatMulTokensToConv
from converter.rewriter.rules.qlinear_sandwich_to_conv import QLinearSandwichToConv
from converter.rewriter.rules.tensordot_to_conv import TensordotToConv

__all__ = [
    "Decline",
    "GemmSandwichToConv",
    "IntegerSandwichToConv",
    "MatMulAddToConv",
    "MatMulIntegerToConv",
    "MatMulIntegerTokensToConv",
    "MatMulNBitsToConv",
    "MatMulTokensToConv",
    "QdqGemmSandwichToConv",
    "QdqMatMulToConv",
    "QdqMatMulTokensToConv",
    "QdqSandwichToConv",
    "QGemmSandwichToConv",
    "QLinearMatMulToConv",
    "QLinearMatMulTokensToConv",
    "QLinearSandwichToConv",
    "RuleOptions",
    "Rule",
    "TensordotToConv",
    "Prepared",
    "apply_rules",
    "prepare_rules",
]
