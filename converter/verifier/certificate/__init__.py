"""The structural certificate: translation validation of each rewritten graph against its original.

Instead of trusting the rules and passes that produced the rewritten graph, the certificate checks it after
the fact, node by node, from the two graphs alone, without sampled inputs: every tensor of the rewritten
graph gets a fact saying what it equals in the original (:mod:`.facts`), and every graph output must be the
original's. It shares no code with ``converter.rewriter`` (its own statement of which ops are elementwise, of
what a dense layer's Conv weight is, of layout algebra), so that a bug there cannot hide by being repeated
here; a lint rule (ruff.toml in this folder) holds that.

The parts, each depending only on those above it:

- ``layouts`` (layout algebra), ``facts`` (SameAs / Const / Unknown), ``nodes`` (typed attribute reading),
  ``constants`` (bit-for-bit comparison, constant evaluation), ``canonical`` (the facts of re-laying nodes,
  shared by both sides), ``elements`` (element-index proofs of rearrangements);
- ``original`` (the original graph's index and canonical facts), ``views`` (rearrangements seen so far),
  ``proofs`` (the verdicts: ``Certificate``, ``LayerProof``, the original layers), ``context`` (what a rule may
  ask of the walk);
- ``ops`` (``PROOF_RULES``: one proof rule per op, a module per family) and ``layers`` (``LAYER_PROVERS``: the
  proof of a claimed layer's Conv, by op);
- ``walk`` (the walk that dispatches to both tables, and :func:`certify`);
- ``model`` (what a model computes with beside its nodes: opsets, functions, overridable defaults) and
  ``claims`` (which Convs stand for which original layers, read from the two graphs when nobody says).
"""

from converter.verifier.certificate.claims import discover
from converter.verifier.certificate.layers import INTEGER_CONVS, LAYER_PROVERS
from converter.verifier.certificate.ops import PROOF_RULES, ProofRule, rule_for
from converter.verifier.certificate.proofs import Certificate, IntegerLayer, LayerProof
from converter.verifier.certificate.walk import certify, find_graphs

__all__ = [
    "INTEGER_CONVS",
    "LAYER_PROVERS",
    "PROOF_RULES",
    "Certificate",
    "IntegerLayer",
    "LayerProof",
    "ProofRule",
    "certify",
    "discover",
    "find_graphs",
    "rule_for",
]
