"""Plain records of what happened, with ``to_dict()`` for the JSON report.

They hold data only; the CLI decides how to show them.

The JSON report (``convert --report FILE.json``, ``ConvertReport.to_dict()``), schema version 2. Top-level keys:

- ``schema_version`` (int): 2. Reports without the key are version 1: the same keys, except that an unchanged
  model's ``status`` read ``"passed"`` (or ``"not verified"``) and ``verdict`` / ``verification`` were absent,
  and non-finite numbers were written as ``Infinity`` / ``NaN``, which strict JSON readers refuse.
- ``verdict`` (str): the first word(s) of the command's last line, what the run amounts to: ``"PASSED"``
  (rewritten and verified), ``"FAILED"`` (verification found a mismatch), ``"INCOMPLETE"`` (nothing disagreed,
  evidence is missing), ``"UNCHANGED"`` (nothing to rewrite; the model is written as it was), ``"DONE"``
  (rewritten, not verified: ``--no-verify``) or ``"DRY RUN"`` (nothing verified or written).
- ``status`` (str): ``"passed"``, ``"failed"``, ``"incomplete"``, ``"unchanged"``, ``"not verified"`` or
  ``"dry run"``, the verdict in the words version 1 used (``"unchanged"`` is new in version 2).
- ``verification`` (str): what verification found, whatever was rewritten: ``"passed"``, ``"failed"``,
  ``"incomplete"`` or ``"not run"`` (``--no-verify``, dry run).
- ``ok`` (bool): false only after verification failed or was incomplete (then nothing is written unless forced).
- ``input``, ``output`` (str; ``output`` null on a dry run), ``written``, ``dry_run``, ``forced`` (bool),
  ``warnings`` (list of str), ``timings`` (seconds by step).
- ``rewrite``: ``RewriteReport.to_dict()`` (candidates, decisions with their reasons, op counts, layout).
- ``verify``, ``verify_reference``: ``VerifyReport.to_dict()`` or null (against the original model; against
  TensorFlow for a SavedModel or Keras input).

Numbers that are not finite (an error that is infinite because an output was missing) are written as the
strings ``"inf"``, ``"-inf"`` and ``"nan"``, so the file is strict JSON.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # of ConvertReport.to_dict() (the JSON report); the module docstring has the schema

# The verdicts, as the command's last line begins: the JSON report's "verdict".
PASSED, FAILED, INCOMPLETE, UNCHANGED, DONE, DRY_RUN = "PASSED", "FAILED", "INCOMPLETE", "UNCHANGED", "DONE", "DRY RUN"


@dataclass
class RewrittenLayer:
    """What one rewrite claims, for the verifier to check: the Conv named ``conv`` computes, laid out
    NCHW, the original tensor ``output`` from the original activation ``input`` (NHWC).

    ``anchor`` is the output of the original MatMul/Gemm. ``graph`` locates the graph both models
    hold the layer in: () for the main graph, else one (holder node's first output, attribute)
    step per nesting level (stable across the rewrite, unlike node indices).
    """

    graph: tuple[tuple[str, str], ...]
    anchor: str
    input: str
    output: str
    conv: str


@dataclass
class Decision:
    """What the rewrite did with one candidate node."""

    graph: str
    node: str
    op_type: str
    rule: str
    rewritten: bool
    reason: str | None = None
    detail: str = ""
    new_nodes: list[str] = field(default_factory=list)
    # Sub-decisions of a rewrite that went ahead, e.g. {"bias_folded": False, "bias_reason": "..."}.
    notes: dict[str, Any] = field(default_factory=dict)
    layer: RewrittenLayer | None = None
    # What the candidate's 4D input is, read from the graph (layout.py): "image" (an NHWC image
    # stream), "grouped tokens" (a window partition, e.g. MaxViT's [B, windows, tokens, C]) or
    # "unknown"; None where the rules declined it for another reason.
    activation: str | None = None


@dataclass
class LayoutReport:
    """The layout optimizer's account (rewriter/layout): its mode, and the Transposes of computed tensors (every
    graph) in the original, right after the rules, at the optimum it chose, and at the end.

    ``edge_*``: of those, the ones between a model input or output and the nearest op that cares about
    layout. The optimum never has more of the others (``final - edge_final``) than the original.
    ``transposes_optimum``/``edge_optimum`` are the optimizer's own count of the layout it chose (the Transposes
    inside the graphs it optimized, and at their edges); ``layernorms_written_out`` how many LayerNorms it
    writes out channels-first; ``seconds`` the time the optimizer took.
    """

    mode: str
    transposes_original: int = 0
    transposes_rewritten: int = 0
    transposes_final: int = 0
    transposes_keep_all: int = 0
    edge_original: int = 0
    edge_final: int = 0
    declined: int = 0  # layers declined with layout_cost
    attempts: int = 1  # rewrites run (always one since the optimizer replaced the retrying policy)
    transposes_optimum: int | None = None
    edge_optimum: int | None = None
    layernorms_written_out: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RewriteReport:
    decisions: list[Decision] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    # Op counts right after the rules, before the cleanup passes, and what the cleanup did.
    ops_rewritten: dict[str, int] = field(default_factory=dict)
    cleanup: dict[str, Any] | None = None
    seconds: float = 0.0
    layout: LayoutReport | None = None

    @property
    def candidates(self) -> int:
        return len(self.decisions)

    @property
    def rewritten(self) -> int:
        return sum(d.rewritten for d in self.decisions)

    @property
    def layers(self) -> list[RewrittenLayer]:
        return [d.layer for d in self.decisions if d.layer is not None]

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        counts = Counter(d.reason or "" for d in self.decisions if not d.rewritten)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "rewritten": self.rewritten,
            "skipped_by_reason": self.skipped_by_reason,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "ops_rewritten": self.ops_rewritten,
            "cleanup": self.cleanup,
            "seconds": round(self.seconds, 4),
            "layout": None if self.layout is None else self.layout.to_dict(),
            "decisions": [asdict(d) for d in self.decisions],
        }


@dataclass
class InputSpec:
    """One input fed to both models during verification, and where it came from."""

    name: str
    dtype: str
    shape: list[int]
    source: str  # "random", "file" or "initializer default"


@dataclass
class OutputCheck:
    name: str
    dtype: str
    shape: list[int]
    max_abs_error: float
    max_rel_error: float
    mismatched: int
    atol: float
    rtol: float
    passed: bool
    problem: str = ""  # set when the outputs could not be compared at all (shape or dtype differ)
    worst_index: list[int] | None = None  # where the failing element furthest past the tolerance is (compare.py)
    degenerate: str = ""  # why this output proves nothing (all NaN, constant, the same for every input)
    trials: int = 1


@dataclass
class DimChoice:
    """The value verification gave one symbolic input dim, and why."""

    name: str
    value: int
    why: str


@dataclass
class LayerCheck:
    """The evidence for one rewritten layer: the structural certificate, and numbers from the runs."""

    conv: str  # the Conv node's name in the rewritten model
    anchor: str  # the original MatMul/Gemm's output
    graph: str  # "main", or where the subgraph is
    structure: str  # proved | refuted | unproved
    structure_detail: str = ""
    numbers: str = "not exercised"  # passed | failed | not exercised
    numbers_detail: str = ""
    where: str = "model"  # "model", or "subgraph model" when its graph was run on its own
    trials: int = 0  # trials in which its input held usable data
    shape: list[int] = field(default_factory=list)  # the NHWC shape it saw
    input_rel_error: float = 0.0
    output_max_error: float = 0.0
    output_bound_ratio: float = 0.0  # largest |error| / bound; above 1 fails
    weak_shape: bool = False  # N, H or W was 1 or H == W: numbers alone could miss a layout bug

    @property
    def verified(self) -> bool:
        return self.structure == "proved" and self.numbers == "passed"

    @property
    def failed(self) -> bool:
        return self.structure == "refuted" or self.numbers == "failed"


@dataclass
class VerifyReport:
    providers: list[str]
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[OutputCheck] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    interface_problems: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0
    trials: int = 1
    dims: list[DimChoice] = field(default_factory=list)
    layers: list[LayerCheck] = field(default_factory=list)
    # The structural certificate's findings beyond single layers (None: not checked, e.g. against TensorFlow).
    structure: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """passed, failed (a mismatch was found) or incomplete (nothing failed, but not everything was proved)."""
        structure = self.structure or {}
        if (
            self.interface_problems
            or not self.outputs
            or any(not o.passed for o in self.outputs)
            or any(layer.failed for layer in self.layers)
            or structure.get("problems")
        ):
            return "failed"
        if any(not layer.verified for layer in self.layers) or structure.get("unproved"):
            return "incomplete"
        return "passed"

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["verdict"] = self.verdict
        d["seconds"] = round(self.seconds, 4)
        return d


@dataclass
class ConvertReport:
    input: str
    output: str | None
    rewrite: RewriteReport
    verify: VerifyReport | None = None
    # TensorFlow inputs: the SavedModel's own signature run against the rewritten model.
    verify_reference: VerifyReport | None = None
    written: bool = False
    dry_run: bool = False
    forced: bool = False  # written despite a verification mismatch (--force)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def verification(self) -> str:
        """What verification found: passed | failed | incomplete, or not run (--no-verify, dry run)."""
        checks = [v for v in (self.verify, self.verify_reference) if v is not None]
        if self.dry_run or not checks:
            return "not run"
        verdicts = {v.verdict for v in checks}
        return "failed" if "failed" in verdicts else "incomplete" if "incomplete" in verdicts else "passed"

    @property
    def status(self) -> str:
        """passed | failed | incomplete (verification ran), unchanged (nothing was rewritten, and verification
        did not fail), not verified (--no-verify), or dry run."""
        if self.dry_run:
            return "dry run"
        found = self.verification
        if found in ("failed", "incomplete"):
            return found
        if not self.rewrite.rewritten:
            return "unchanged"
        return "not verified" if found == "not run" else "passed"

    @property
    def verdict(self) -> str:
        """The run in one word, as the command's last line begins: PASSED, FAILED, INCOMPLETE, UNCHANGED, DONE
        (rewritten, not verified) or DRY RUN."""
        return {
            "dry run": DRY_RUN,
            "failed": FAILED,
            "incomplete": INCOMPLETE,
            "unchanged": UNCHANGED,
            "not verified": DONE,
            "passed": PASSED,
        }[self.status]

    @property
    def ok(self) -> bool:
        """True unless a verification ran and did not pass (a mismatch, or evidence missing)."""
        return self.status not in ("failed", "incomplete")

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema in the module docstring): plain data, non-finite numbers as strings."""
        return _finite(
            {
                "schema_version": SCHEMA_VERSION,
                "verdict": self.verdict,
                "status": self.status,
                "verification": self.verification,
                "ok": self.ok,
                "input": self.input,
                "output": self.output,
                "written": self.written,
                "dry_run": self.dry_run,
                "forced": self.forced,
                "warnings": self.warnings,
                "rewrite": self.rewrite.to_dict(),
                "verify": None if self.verify is None else self.verify.to_dict(),
                "verify_reference": None if self.verify_reference is None else self.verify_reference.to_dict(),
                "timings": {k: round(v, 4) for k, v in self.timings.items()},
            }
        )


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite as a string (``"inf"``, ``"-inf"``, ``"nan"``), for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
