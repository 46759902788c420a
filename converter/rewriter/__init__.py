"""Rewriting: rules (one file each), the Transpose cleanup, and the layout policy around them.

``rewrite_model`` runs them on a copy of a model; ``converter.rewrite`` (pipeline.py) is the public
entry point that also takes paths and onnx-graphsurgeon graphs. Nothing here imports ``converter.verifier``.
"""

from converter.rewriter.run import CLEANUP, RULES, RewriteResult, rewrite_in_place, rewrite_model

__all__ = ["CLEANUP", "RULES", "RewriteResult", "rewrite_in_place", "rewrite_model"]
