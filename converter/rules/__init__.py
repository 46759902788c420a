"""Rewrite rules: one file per rule, run by the engine in ``_engine.py``."""

from ._engine import Decline, RewriteOptions, Rule, apply_rules
from .matmul_add_to_conv import MatMulAddToConv

__all__ = ["Decline", "MatMulAddToConv", "RewriteOptions", "Rule", "apply_rules"]
