"""Plain records of what happened, with ``to_dict()`` for the JSON report.

They hold data only; the CLI decides how to show them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass
class RewriteReport:
    decisions: list[Decision] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    # Op counts right after the rules, before the cleanup passes, and what the cleanup did.
    ops_rewritten: dict[str, int] = field(default_factory=dict)
    cleanup: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def candidates(self) -> int:
        return len(self.decisions)

    @property
    def rewritten(self) -> int:
        return sum(d.rewritten for d in self.decisions)

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        counts = Counter(d.reason for d in self.decisions if not d.rewritten)
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


@dataclass
class VerifyReport:
    providers: list[str]
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[OutputCheck] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    interface_problems: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.interface_problems and bool(self.outputs) and all(o.passed for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
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
    def ok(self) -> bool:
        """True unless a verification ran and found a mismatch."""
        return all(v is None or v.passed for v in (self.verify, self.verify_reference))

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "written": self.written,
            "dry_run": self.dry_run,
            "forced": self.forced,
            "warnings": self.warnings,
            "ok": self.ok,
            "rewrite": self.rewrite.to_dict(),
            "verify": None if self.verify is None else self.verify.to_dict(),
            "verify_reference": None if self.verify_reference is None else self.verify_reference.to_dict(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
