"""Cleanup passes that run after the rules, and the bounded manager that repeats them.

A pass edits one graph through its :class:`Workspace` (an index built once per graph and kept
current by every edit) and says whether it changed anything. The manager runs the passes over
every graph (inner graphs first) in rounds until a round changes nothing, at most ``max_rounds``
times; each pass looks only at the Transposes that a change touched since its last run. A graph's
result is kept only if it has no more Transposes than before: the cleanup may never make a graph
worse than the rewrite alone left it (the workspace puts it back without having copied it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import onnx
from onnx import GraphProto, NodeProto

from converter.graph import NameAllocator, Scope, TensorType, postorder_graphs
from converter.rewriter.cleanup._workspace import Workspace


class TypeOverlay(Mapping[str, TensorType]):
    """Types read from a table that stays as it is, with the ones the passes add on top (shape inference's table
    makes its entries lazily: it is read through, never copied)."""

    def __init__(self, base: Mapping[str, TensorType]) -> None:
        self._base = base
        self._added: dict[str, TensorType] = {}

    def __getitem__(self, name: str) -> TensorType:
        found = self._added.get(name)
        return found if found is not None else self._base[name]

    def __contains__(self, name: object) -> bool:
        return name in self._added or name in self._base

    def get(self, name: str, default: TensorType | None = None) -> TensorType | None:  # type: ignore[override]
        found = self._added.get(name)
        return found if found is not None else self._base.get(name, default)

    def __iter__(self):  # noqa: ANN204 - Mapping's own signature
        yield from self._added
        yield from self._base

    def __len__(self) -> int:
        return len(self._added) + len(self._base)

    def add(self, name: str, t: TensorType) -> None:
        self._added[name] = t


def inverse_perm(perm: Sequence[int]) -> list[int]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return out


PASS_KEY = "converter.pass"


@dataclass(frozen=True)
class CleanupOptions:
    """What the caller chooses about the cleanup (the defaults keep every op as the model has it).

    ``layernorm_to_nchw``: a LayerNormalization over the last axes of a transposed tensor is
    written out (ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add) over the matching axes
    of the untransposed tensor, so that the Transpose moves below it and can meet its inverse
    (ConvNeXt's ``permute -> LayerNorm -> Linear``). More nodes, fewer Transposes.
    """

    layernorm_to_nchw: bool = False


@dataclass
class PassResult:
    modified: bool
    changes: int = 0


@runtime_checkable
class Guide(Protocol):
    """The layout the caller chose for one graph (rewriter/layout): which nodes run in the other layout.

    With a guide the cleanup decides nothing itself: a Transpose moves through a node exactly when the guide
    says that node runs in the layout the Transpose's input has, and the handlers' own cost checks are off.
    """

    def moves(self, node: NodeProto, read: str, perm: Sequence[int]) -> bool:
        """Whether ``node``, reading ``read = Transpose(a, perm)``, is to run on ``a`` instead."""
        ...

    def absorbs(self, node: NodeProto, read: str) -> bool:
        """Whether ``node`` starts a chain of Reshapes and Transposes that is to take ``read``'s Transpose in."""
        ...

    def place(self, ws: object, ctx: PassContext) -> int:
        """Put the Transposes the chosen layout starts from into the graph (once, before the passes run); how many."""
        ...


class PassContext:
    """What passes share over a whole run: options, unique names, provenance tags, constants they made dead.

    ``guides`` (graph -> Guide, by id of the GraphProto) turn the cleanup into the materialization of a layout
    chosen beforehand (rewriter/layout). ``assume`` (probe mode, see probe.py) names tensors that handlers may
    take as already available in the layout asked about.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        value_of: Callable[[onnx.TensorProto], np.ndarray] | None = None,
        options: CleanupOptions | None = None,
        types: Mapping[str, TensorType] | None = None,
        guides: Mapping[int, Guide] | None = None,
        index: Scope | None = None,
    ) -> None:
        self.model = model
        self.index = index  # the main graph's index, when the caller built it (see run_passes)
        self.guides = dict(guides or {})
        self.guide: Guide | None = None  # the guide of the graph being cleaned
        # Folds the guide waits for (a chain head that is to take in a Transpose the moves have not brought yet: folded
        # before, the chain would fold without it); ``settled``: the moves are done, the waiting folds go ahead.
        self.postponed: list[NodeProto] = []
        self.settled = False
        self.placed: set[str] = set()  # the outputs of the Transposes the guide placed (``Guide.place``)
        # The outputs of the Gathers that read a moved tensor's shape in its old order (the Shape handler's, the
        # guide's twin reads): the inner Gathers compose_gathers composes (an original's own it leaves as they are)
        self.shape_reads: set[str] = set()
        self.assume: frozenset[str] | None = None
        # The main graph's tensor types as shape inference found them before the rewrite; the passes add the types of
        # the tensors they make in another layout (note_type), so that what needs sizes (fold_rearranges, the shape of
        # a tensor whose every dim is known) still has them.
        # The caller may pass an overlay of its own, to read the types the passes added afterwards.
        self.types: TypeOverlay | None = (
            types if isinstance(types, TypeOverlay) else TypeOverlay(types) if types is not None else None
        )
        self.options = options or CleanupOptions()
        self.value_of = value_of  # reads constants, detached ones too
        self.ir_version = model.ir_version
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.released: set[str] = set()
        self.vanished: set[str] = set()
        # Constants a pass re-laid out, per graph: (source name, *layout key) -> new name.
        self.derived: dict[tuple[object, ...], str] = {}
        self._names: NameAllocator | None = None
        self._workspace: Workspace | None = None

    @property
    def names(self) -> NameAllocator:
        """Unique names over the whole model, gathered on first use (a run that only cancels needs none).

        While the main graph is being cleaned its names come from the workspace's index (a second
        walk over a 100k-node graph was a tenth of the cleanup); otherwise NameAllocator gathers them.
        """
        if self._names is None:
            ws = self._workspace
            main = ws is not None and ws.graph is self.model.graph
            self._names = NameAllocator(None, ws.names_in_use()) if main else NameAllocator(self.model)  # type: ignore[union-attr]
        return self._names

    def note_type(self, name: str, like: str, perm: Sequence[int] | None = None) -> None:
        """``name`` holds ``like`` (laid out so that ``like = Transpose(name, perm)``, when ``perm`` is given)."""
        if self.types is None or name in self.types:
            return
        t = self.types.get(like)
        if t is None or t.shape is None or t.conflict:
            return
        shape = t.shape if perm is None else tuple(t.shape[i] for i in inverse_perm(perm))
        self.types.add(name, TensorType(t.elem_type, shape))

    @property
    def decided(self) -> bool:
        """Whether a layout was chosen for this graph (or a probe asks what a handler can do): the handlers'
        own cost checks are then off."""
        return self.guide is not None or self.assume is not None

    def workspace(self, graph: GraphProto) -> Workspace:
        """The index of the graph being cleaned, built once for all passes and rounds."""
        if self._workspace is None or self._workspace.graph is not graph:
            main = graph is self.model.graph
            types, index = (self.types, self.index) if main else (None, None)
            self._workspace = Workspace(graph, self.value_of, self.opset, types, index)
        return self._workspace

    def tag(self, node: NodeProto, pass_name: str) -> NodeProto:
        if self.ir_version >= 10:
            node.metadata_props.add(key=PASS_KEY, value=pass_name)
        else:
            node.doc_string = f"{PASS_KEY}: {pass_name}"
        return node


class Pass(Protocol):
    name: str

    def run(self, graph: GraphProto, ctx: PassContext) -> PassResult: ...


@dataclass
class CleanupReport:
    transposes_before: int = 0
    transposes_after: int = 0
    rounds: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    reverted_graphs: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def run_passes(
    model: onnx.ModelProto,
    passes: Sequence[Pass],
    max_rounds: int = 64,
    value_of: Callable[[onnx.TensorProto], np.ndarray] | None = None,
    options: CleanupOptions | None = None,
    types: Mapping[str, TensorType] | None = None,
    guides: Mapping[int, Guide] | None = None,
    index: Scope | None = None,
) -> CleanupReport:
    """Run ``passes`` to a fixed point on every graph of ``model``, in place.

    Args:
        model: the model, edited in place.
        passes: run in this order, in rounds, until a round changes nothing (at most ``max_rounds``).
        max_rounds: the bound on rounds.
        value_of: reads constants (detached ones too).
        options: what the caller chose (CleanupOptions).
        types: the main graph's tensor types, for the passes that need sizes.
        guides: per graph (by id of its GraphProto), the layout chosen for it (see Guide): the graph's
            Transposes are placed first, then moved only where the guide says. Graphs without one are cleaned
            greedily, and never end with more Transposes than they started with.
        index: the main graph's index (``Scope``) as the graph is now, when the caller built one: the passes use it
            and keep its producers and constants current, so that the caller can read the result with it (one
            index for the census before and after the cleanup and the cleanup itself, not three).
    """
    ctx = PassContext(model, value_of, options, types, guides, index)
    report = CleanupReport()
    changes: dict[str, int] = defaultdict(int)
    for graph in list(postorder_graphs(model.graph)):
        before = sum(n.op_type == "Transpose" for n in graph.node)
        report.transposes_before += before
        report.transposes_after += before
        if not before and id(graph) not in ctx.guides:
            continue  # every pass starts from a Transpose
        ctx.released, ctx.vanished, ctx.derived = set(), set(), {}
        ctx.postponed, ctx.settled, ctx.placed = [], False, set()
        ws = ctx.workspace(graph)
        ctx.guide = ctx.guides.get(id(graph))
        local: dict[str, int] = defaultdict(int)
        if ctx.guide is not None:
            local["place_layout"] += ctx.guide.place(ws, ctx)
        for round_no in range(1, max_rounds + 1):
            modified = False
            for p in passes:
                result = p.run(graph, ctx)
                local[p.name] += result.changes
                modified |= result.modified
            report.rounds = max(report.rounds, round_no)
            if not modified:
                # Twins merged make one Transpose of several readers: a chain in front of it may now fold
                # into it (three layers reading one window partition each brought their own), so the rounds
                # go on while merging finds twins.
                merged = merge_duplicates(ws, ctx) if ctx.guide is not None else 0
                local["merge_transposes"] += merged
                if not merged and ctx.postponed and not ctx.settled:
                    # Nothing moves any more: the folds that waited for a Transpose go ahead without it.
                    ctx.settled = True
                    for node in ctx.postponed:
                        if ws.alive(node):
                            ws.mark(node)
                    continue
                if not merged:
                    break
        ctx._workspace = None
        ctx.guide = None
        dead = ws.drop_released(ctx.released, ctx.vanished)
        if ws.transposes > before and ctx.guides.get(id(graph)) is None:
            ws.revert()  # worse than the rewrite alone: the graph goes back exactly as it was
            report.reverted_graphs += 1
            continue
        ws.commit(dead, ctx.vanished)
        for k, v in local.items():
            changes[k] += v
        report.transposes_after += ws.transposes - before
    report.changes = dict(changes)
    return report


def merge_duplicates(ws: Workspace, ctx: PassContext) -> int:
    """Transposes of one tensor by one perm become one (the cut of a chosen layout is paid once per tensor and
    layout, whoever reads it: several layers reading one activation each brought their own)."""
    merged = 0
    for node in list(ws.nodes()):
        if node.op_type != "Transpose" or not ws.alive(node) or not node.input:
            continue
        perm = ws.perm(node)
        for twin in ws.readers(node.input[0]):
            if twin is node or twin.op_type != "Transpose" or not ws.alive(twin) or ws.perm(twin) != perm:
                continue
            if twin.output[0] in ws.outputs:
                continue
            for reader in ws.readers(twin.output[0]):
                for slot, name in enumerate(reader.input):
                    if name == twin.output[0]:
                        ws.set_input(reader, slot, node.output[0])
            ws.remove(twin)
            ctx.vanished.add(twin.output[0])
            ws.unordered = True  # a reader of the twin may come before this Transpose in the list
            merged += 1
    return merged
