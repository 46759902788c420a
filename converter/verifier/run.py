"""Proving a rewrite: a structural certificate, layer-level numbers and the end-to-end outputs, one verdict.

What is checked, exactly:

1. Structure (certify.py): from the two graphs alone, every rewritten layer's Conv holds the
   original weight transposed and the original bias bit for bit, reads the original activation in
   NCHW, and every other node and every graph output corresponds to the original's.
2. Numbers, per layer (layers.py): both models run in onnxruntime (graph optimizations off, so each
   graph runs as written) with each rewritten layer's tensors exposed: the Conv's input must be the
   original activation in NCHW, and its output ``X @ W + b`` within a bound from the layer's own
   arithmetic. Layers inside If/Loop/Scan bodies are checked by running their graph as a model of
   its own, so an If branch that the inputs never take is still checked.
3. Numbers, end to end (compare.py): every graph output over every trial, ``|rewritten - original|
   <= atol + rtol * |original|``; NaNs in the same places, non-float outputs equal exactly. An
   output that is all NaN/Inf, constant, or the same for every input is reported as proving nothing.

Inputs (feeds.py): symbolic dims get distinct values > 1 that the original model accepts (batch 2,
H != W, multiples of the model's stride); ``trials`` seeded input sets (default 2; scalar booleans
take both values, so both branches of an If fed by one run); a layer whose input held NaN or Inf and
no usable data gets one more trial with positive inputs.

The verdict is ``passed`` only when every rewritten layer is proved by structure and passed by
numbers and every output matches; ``failed`` when anything disagrees; ``incomplete`` when nothing
disagrees but some layer lacks one kind of evidence. Every run has a deadline (``timeout``) and the
inputs and outputs kept must fit ``max_memory``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.errors import InputError
from converter.files.save import inline_bytes
from converter.graph.detached import DetachedWeights
from converter.options import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT, DEFAULT_TRIALS, VerifyOptions, verify_options
from converter.providers import dtype_name, resolve_providers
from converter.report import InputSpec, LayerCheck, OutputCheck, RewrittenLayer, VerifyReport
from converter.verifier import inputs as feeding
from converter.verifier.certificate import INTEGER_CONVS, Certificate, IntegerLayer, certify, discover, find_graphs
from converter.verifier.numbers.layers import LayerNumbers, LayerTensors, check_integer_layer, check_layers
from converter.verifier.numbers.outputs import compare, default_tolerances, degenerate, end_to_end_atol, failed
from converter.verifier.numbers.shapes import SUFFIX, disagreements, probe_model, readable
from converter.verifier.sessions import Runner, VerificationTimeout

__all__ = ["DEFAULT_TOLERANCES", "compare", "default_tolerances", "interface_differences", "verify", "verify_reference"]
from converter.verifier.numbers.outputs import DEFAULT_TOLERANCES  # noqa: E402  (re-exported: part of the verify module's surface)

_MAX_SHAPE_TRIES = 5


def verify(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto | Any,
    options: VerifyOptions | None = None,
    *,
    layers: Sequence[RewrittenLayer] | None = None,
    on_step: Callable[[str], None] | None = None,
    values: DetachedWeights | None = None,
    release_original: bool = False,
    **shortcuts: Any,
) -> VerifyReport:
    """Check ``rewritten`` against ``original``; ``report.verdict`` is passed, failed or incomplete.

    Args:
        original: the model before the rewrite.
        rewritten: the rewritten model, or a ``RewriteResult`` (its report supplies ``layers``).
        options: providers, tolerances, seed, trials, memory and time limits, inputs (options.VerifyOptions).
        layers: the rewritten layers to prove (the claims); None: found from the two graphs (a Conv whose
            weight is an original dense layer's weight transposed, certificate/claims.py), each then proved and
            checked as a given claim is; a Conv found to stand for no original layer stays unexplained (the
            verdict is then incomplete or failed).
        on_step: called with a short sentence as each step starts.
        values: the data of both models' placeholder weights (graph/detached.py); both onnxruntime sessions
            use those arrays in place.
        release_original: forget what only the original needs once it has run (the caller keeps only the
            rewritten model), so that memory holds about one copy of the weights throughout.
        **shortcuts: the fields of ``options`` as keywords (``atol=1e-4``, ``input_shapes={...}``, ...).

    Raises:
        InputError: the given inputs or shapes do not fit the model, onnxruntime cannot run the original
            at any shape tried, the data would exceed ``max_memory``, or the runs ``timeout``
            (VerificationTimeout).
        ProviderUnavailable: the providers cannot run here.
    """
    options = verify_options(options, shortcuts)
    providers, inputs, input_shapes = options.providers, options.inputs, options.input_shapes
    atol, rtol, seed, trials, max_memory, timeout = (
        options.atol,
        options.rtol,
        options.seed,
        options.trials,
        options.max_memory,
        options.timeout,
    )
    if hasattr(rewritten, "report") and hasattr(rewritten, "model"):  # a RewriteResult
        layers = rewritten.report.layers if layers is None else layers  # type: ignore[attr-defined]
        rewritten = rewritten.model  # type: ignore[attr-defined]
    started = time.perf_counter()
    deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else timeout)
    step = on_step or (lambda _msg: None)
    chosen = resolve_providers(providers)
    read = values.value if values is not None else numpy_helper.to_array
    # Without claims, the rewritten layers are found from the two graphs (certificate/claims.py): each is then
    # proved, and checked by numbers, as a rewrite's own claim is.
    claims = list(layers) if layers is not None else discover(original, rewritten, read)
    report = VerifyReport(providers=list(chosen), seed=seed)
    if layers is None and claims:
        report.notes.append(
            f"{len(claims)} rewritten layer{'s' * (len(claims) != 1)} found from the two graphs: each a Conv whose "
            "weight is an original dense layer's, transposed"
        )
    report.interface_problems = interface_differences(original, rewritten)

    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    settings = _Options(chosen, atol, rtol, seed, trials, budget, deadline, step, values)
    main = [c for c in claims if not c.graph]
    numbered, sampling = _numbered(rewritten, main, seed)  # past SAMPLE_ABOVE layers: every class and a sample
    pair = _Pair(original, rewritten, numbered, every=main)
    pool = None
    if inline_bytes(rewritten) < PARALLEL_BELOW:  # Constants too: each session holds its own copy of them
        # Both sessions are built in the background while the structure is checked here; the original's returns
        # the shapes of the tensors a proof may take from shape inference (numbers/shapes.py), to be checked.
        pair.shapes = readable(original)
        pool = ThreadPoolExecutor(max_workers=2)
        pair.early_original = pool.submit(_original_runner, pair, settings)
        pair.early = pool.submit(_rewritten_runner, pair, settings)
    try:
        step("checking the structure")
        pair.cert = cert = certify(original, rewritten, claims, read)
        if pool is None:  # the original's session is built after the proof: it returns the shapes the proof read
            pair.shapes = list(cert.assumed_shapes)
        step("running the original model")
        outcome = _Outcome()
        originals = _run_original(pair, settings, dict(inputs or {}), dict(input_shapes or {}), outcome)
        if cert.assumed_shapes:
            step("checking the shapes the proof took from shape inference against onnxruntime's")
            again = partial(certify, original, rewritten, claims, read)
            pair.cert = cert = _engine_shapes(pair, settings, originals, outcome, again)
        report.structure = {"proved": cert.proved, "problems": cert.problems, "unproved": cert.unproved}
        checks = _layer_checks(claims, cert)
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        raise

    # Layers inside subgraphs: their graphs run as models of their own (they may read the original's outer weights),
    # while the main graph's trials are kept: they have what is left of the memory budget.
    kept = sum(_nbytes(r) for r in originals.kept)
    by_graph: dict[tuple, list[RewrittenLayer]] = defaultdict(list)
    for c in claims:
        if c.graph:
            by_graph[tuple(tuple(s) for s in c.graph)].append(c)
    for key, group in by_graph.items():
        step(f"checking the subgraph {'/'.join(f'{h}.{a}' for h, a in key)} on its own")
        _check_subgraph(original, rewritten, key, group, settings, outcome.symbols, checks, cert, held=kept)

    if values is not None and release_original and pool is None:  # (with small weights the sessions were built early)
        # Nothing reads the original's weights from here on: keep only the rewritten model's.
        values.keep_only(t.name for t in rewritten.graph.initializer if values.is_placeholder(t))
    try:
        _run_rewritten(pair, settings, originals, outcome)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    report.inputs, report.dims, report.assumptions, report.trials = (
        outcome.inputs,
        outcome.dims,
        outcome.assumptions,
        outcome.trials,
    )
    report.outputs = outcome.outputs
    report.notes.extend(outcome.notes)
    for conv, numbers in outcome.layers.items():
        _record(checks[conv], numbers, "model")
    if sampling:
        report.notes.append(_by_class(rewritten, main, numbered, checks, sampling))
    report.layers = list(checks.values())
    report.seconds = time.perf_counter() - started
    return report


# Above this many rewritten layers (in the main graph), the numbers check every distinct class of layer and a
# random sample, while the certificate still proves every layer: the per-layer arithmetic and the tensors
# exposed for it would otherwise cost far more than the two sessions and their runs.
SAMPLE_ABOVE = 1000
SAMPLE_EXTRA = 32  # layers chosen at random (seeded), besides the first of each class


def _layer_class(conv: onnx.NodeProto | None, inits: dict[str, TensorProto]) -> tuple:
    """What numbers of one layer say of another: the same op, weight shape and dtype, attributes and bias."""
    if conv is None:
        return ("missing",)
    w = inits.get(conv.input[1]) if len(conv.input) > 1 else None
    weight = (tuple(w.dims), w.data_type) if w is not None else (conv.input[1] if len(conv.input) > 1 else "",)
    attrs = tuple(sorted(a.SerializeToString(deterministic=True) for a in conv.attribute))
    return (conv.op_type, weight, attrs, len(conv.input) > 2 and bool(conv.input[2]))


def _numbered(rewritten: onnx.ModelProto, main: list[RewrittenLayer], seed: int) -> tuple[list[RewrittenLayer], str]:
    """The main graph's layers the numbers check, and how they were chosen ("" when all of them are)."""
    if len(main) <= SAMPLE_ABOVE:
        return main, ""
    convs = {n.name: n for n in rewritten.graph.node if n.name}
    inits = {t.name: t for t in rewritten.graph.initializer}
    classes: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(main):
        classes[_layer_class(convs.get(c.conv), inits)].append(i)
    chosen = {members[0] for members in classes.values()}  # the first of each: the likeliest to see live data
    rest = [i for i in range(len(main)) if i not in chosen]
    picked = np.random.default_rng([seed, len(main)]).choice(len(rest), size=min(SAMPLE_EXTRA, len(rest)), replace=False)
    chosen.update(rest[int(j)] for j in picked)
    how = (
        f"the first layer of each of the {len(classes)} classes (op, weight shape and dtype, attributes, bias) and "
        f"{min(SAMPLE_EXTRA, len(rest))} more chosen at random (seed {seed})"
    )
    return [main[i] for i in sorted(chosen)], how


def _by_class(
    rewritten: onnx.ModelProto,
    main: list[RewrittenLayer],
    numbered: list[RewrittenLayer],
    checks: dict[str, LayerCheck],
    how: str,
) -> str:
    """Layers left to their class: each layer the numbers did not check (or whose input never held usable data)
    passes by its class when a layer of that class passed; the note says how the layers were chosen."""
    convs = {n.name: n for n in rewritten.graph.node if n.name}
    inits = {t.name: t for t in rewritten.graph.initializer}
    key = {c.conv: _layer_class(convs.get(c.conv), inits) for c in main}
    passed: dict[tuple, str] = {}
    for c in numbered:
        if checks[c.conv].numbers == "passed":
            passed.setdefault(key[c.conv], c.conv)
    ran = {c.conv for c in numbered}
    covered = 0
    for c in main:
        check = checks[c.conv]
        if check.numbers == "failed" or (c.conv in ran and check.numbers == "passed"):
            continue
        witness = passed.get(key[c.conv])
        if witness is None:
            if c.conv not in ran:
                check.numbers_detail = "not checked by numbers (sampled), and no layer of its class passed them"
            continue
        own = "" if c.conv not in ran else f" (its own input never held usable data: {check.numbers_detail})"
        check.numbers = "passed"
        check.numbers_detail = f"by its class: not checked by numbers itself{own}; {witness!r} of the same class was"
        covered += 1
    checked = sum(1 for c in numbered if checks[c.conv].numbers == "passed" and checks[c.conv].trials)
    return (
        f"numbers checked on {len(numbered)} of {len(main)} rewritten layers (more than {SAMPLE_ABOVE:,}): {how}; "
        f"{checked} of them passed on their own data, {covered} passed by their class; the certificate proved each "
        "layer's structure on its own"
    )


def verify_reference(
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    name: str,
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    options: VerifyOptions | None = None,
    *,
    values: DetachedWeights | None = None,
    **shortcuts: Any,
) -> VerifyReport:
    """Compare the rewritten model's outputs with another implementation of the original (e.g. TensorFlow).

    Args:
        reference: takes the feeds (keyed by the ONNX input names) and returns outputs keyed by the ONNX
            output names.
        name: what the reference is, for the report ("TensorFlow").
        original: the model whose interface the feeds follow.
        rewritten: the model compared with the reference.
        options: as for ``verify``; one trial, at ``options.input_shapes`` (give the shapes verify() chose).
        values: as for ``verify``.
        **shortcuts: the fields of ``options`` as keywords.
    """
    options = verify_options(options, shortcuts)
    providers, inputs, input_shapes = options.providers, options.inputs, options.input_shapes
    atol, rtol, seed, timeout = options.atol, options.rtol, options.seed, options.timeout
    started = time.perf_counter()
    chosen = resolve_providers(providers)
    report = VerifyReport(providers=[name], seed=seed)
    declared = feeding.declared_inputs(original)
    given = _checked_arrays(original, declared, dict(inputs or {}))
    shapes_given = {**dict(input_shapes or {}), **{n: list(a.shape) for n, a in given.items()}}
    fixed = feeding.fixed_symbols(declared, shapes_given)
    symbols, why = next(feeding.candidates(original, declared, fixed))
    shapes = feeding.shapes_for(declared, {**fixed, **symbols}, shapes_given)
    _check_budget(original, declared, shapes, DEFAULT_MAX_MEMORY if options.max_memory is None else options.max_memory)
    feeds = {**feeding.make_feeds([d for d in declared if d.name not in given], shapes, seed, 0), **given}
    report.dims = why
    report.inputs = [
        InputSpec(d.name, dtype_name(d.elem_type), list(feeds[d.name].shape), "file" if d.name in given else "random")
        for d in declared
    ]
    outputs = reference(feeds)
    missing = [o.name for o in original.graph.output if o.name not in outputs]
    if missing:
        report.interface_problems.append(f"{name} gave no output named {', '.join(missing)}")
        return report
    deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else timeout)
    try:
        actual = Runner(rewritten, chosen, (), "rewritten", values).run(feeds, deadline)
        problem = ""
    except VerificationTimeout:
        raise
    except InputError as e:
        actual, problem = None, str(e)
    for out in original.graph.output:
        ref = np.asarray(outputs[out.name])
        a_tol, r_tol = _tolerances(out.type.tensor_type.elem_type, ref, atol, rtol, 0.0)
        if actual is None:
            report.outputs.append(failed(out.name, ref, a_tol, r_tol, problem))
        else:
            report.outputs.append(compare(out.name, actual[out.name], ref, a_tol, r_tol))
    report.seconds = time.perf_counter() - started
    return report


def interface_differences(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> list[str]:
    problems = []
    for kind in ("input", "output"):
        a = [vi.SerializeToString(deterministic=True) for vi in getattr(original.graph, kind)]
        b = [vi.SerializeToString(deterministic=True) for vi in getattr(rewritten.graph, kind)]
        if a != b:
            problems.append(f"graph {kind}s differ (names, order, dtypes or shapes)")
    return problems


# --- internals ---------------------------------------------------------------------------------


@dataclass
class _Options:
    providers: tuple[str, ...]
    atol: float | None
    rtol: float | None
    seed: int
    trials: int | None
    budget: int
    deadline: float
    step: Callable[[str], None]
    values: DetachedWeights | None = None
    held: int = 0  # bytes the main graph's comparison keeps while subgraphs are checked: they have the rest of the budget

    def with_held(self, held: int) -> _Options:
        """The same options for runs made while ``held`` bytes of the budget are kept by another comparison."""
        return _Options(**{**vars(self), "held": held})


@dataclass
class _Pair:
    original: onnx.ModelProto
    rewritten: onnx.ModelProto
    layers: list[RewrittenLayer]  # those in the main graph of these two models that the numbers check
    cert: Certificate = field(default_factory=Certificate)  # knows each layer's original weight and bias
    every: list[RewrittenLayer] = field(default_factory=list)  # all of the main graph's (sampling: more than ``layers``)
    # The models' sessions, when they are being built in the background meanwhile.
    early_original: Future[Runner] | None = None
    early: Future[Runner] | None = None
    # Tensors whose shapes the original's session returns (``name + SUFFIX``): those the proof took from shape
    # inference, or, for a session built before the proof, those it may take (numbers/shapes.py).
    shapes: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    inputs: list[InputSpec] = field(default_factory=list)
    dims: list = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    outputs: list[OutputCheck] = field(default_factory=list)
    layers: dict[str, list[LayerNumbers]] = field(default_factory=dict)  # by Conv name, one entry per trial
    notes: list[str] = field(default_factory=list)
    symbols: dict[str, int] = field(default_factory=dict)
    trials: int = 0


def _layer_checks(claims: Sequence[RewrittenLayer], cert: Certificate) -> dict[str, LayerCheck]:
    checks = {}
    for c in claims:
        proof = cert.layers.get(c.conv)
        where = "main" if not c.graph else "/".join(f"{h}.{a}" for h, a in c.graph)
        checks[c.conv] = LayerCheck(
            c.conv, c.anchor, where, proof.status if proof else "unproved", proof.detail if proof else "not reached"
        )
    return checks


def _record(check: LayerCheck, numbers: list[LayerNumbers], where: str) -> None:
    check.where = where
    exercised = [n for n in numbers if n.exercised]
    check.trials = len(exercised)
    bad = [n for n in numbers if n.problem or (n.exercised and not n.passed)]
    if exercised:
        check.shape = list(exercised[0].shape)
        check.input_rel_error = max(n.input_rel_error for n in exercised)
        check.output_max_error = max(n.output_max_error for n in exercised)
        check.output_bound_ratio = max(n.output_ratio for n in exercised)
        n_, h, w, c = exercised[0].shape
        # A token layer's H is always 1: what exposes its layout bugs is B > 1 and S != C.
        check.weak_shape = (n_ < 2 or w < 2 or w == c) if exercised[0].tokens else (min(n_, h, w) < 2 or h == w)
    if bad:
        check.numbers = "failed"
        first = bad[0]
        if first.problem:
            check.numbers_detail = first.problem
        elif not first.input_ok:
            check.numbers_detail = f"its input is not the original activation in NCHW (relative error {first.input_rel_error:.3g})"
        else:
            check.numbers_detail = (
                f"{first.output_bad} output elements exceed the rounding bound (worst {first.output_ratio:.3g}x the bound)"
            )
    elif exercised:
        check.numbers = "passed"
        widened = max(n.widened for n in exercised)
        compared = [n.exact for n in exercised if n.exact is not None]
        if compared:
            check.numbers_detail = (
                "integer output equal to the original's, bit for bit"
                if all(compared)
                else "integer output within one step of the exact result, not bit for bit the original's"
            )
        if widened > 1:
            check.numbers_detail = f"bound widened {widened:.3g}x to fit the original MatMul's own rounding"
    else:
        check.numbers = "not exercised"
        check.numbers_detail = next((n.why_not for n in numbers if n.why_not), "no run reached it")


def _checked_arrays(
    model: onnx.ModelProto, declared: list[feeding.Declared], given: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    by_name = {d.name: d for d in declared}
    for name, array in given.items():
        if name not in by_name:
            raise InputError(f"the model has no input named {name!r} to feed; inputs: {', '.join(by_name) or '(none)'}")
        d = by_name[name]
        array = np.asarray(array)
        if array.dtype != d.dtype:
            raise InputError(f"input {name!r} must be {dtype_name(d.elem_type)}, the file has {array.dtype}")
        if not feeding.fits(array.shape, d.dims):
            raise InputError(f"shape {list(array.shape)} does not fit input {name!r} declared as {d.dims}")
        given[name] = array
    return given


@dataclass
class _Originals:
    """What the original model's runs left for the comparison: the trials and their outputs."""

    declared: list[feeding.Declared]
    random_inputs: list[feeding.Declared]
    given: dict[str, np.ndarray]
    shapes: dict[str, list[int]]
    plans: list[tuple[int, str]]
    kept: list[dict[str, np.ndarray]]

    def feeds(self, trial: int, distribution: str, seed: int) -> dict[str, np.ndarray]:
        return {**feeding.make_feeds(self.random_inputs, self.shapes, seed, trial, distribution), **self.given}


def _run_pair(pair: _Pair, o: _Options, given: dict[str, np.ndarray], shapes_given: dict[str, Sequence[int]]) -> _Outcome:
    """Run both models on the same trials and compare outputs and layer tensors."""
    out = _Outcome()
    originals = _run_original(pair, o, given, shapes_given, out)
    _run_rewritten(pair, o, originals, out)
    return out


def _run_original(
    pair: _Pair, o: _Options, given: dict[str, np.ndarray], shapes_given: dict[str, Sequence[int]], out: _Outcome
) -> _Originals:
    """Choose the shapes and run the original model on every trial, keeping what the comparison needs."""
    declared = feeding.declared_inputs(pair.original)
    for name in shapes_given:
        if name not in {d.name for d in declared}:
            raise InputError(f"the model has no input named {name!r}; inputs: {', '.join(d.name for d in declared) or '(none)'}")
    given = _checked_arrays(pair.original, declared, given)
    fixed_shapes = {**{k: list(v) for k, v in shapes_given.items()}, **{n: list(a.shape) for n, a in given.items()}}
    fixed = feeding.fixed_symbols(declared, fixed_shapes)
    random_inputs = [d for d in declared if d.name not in given]

    original = pair.early_original.result() if pair.early_original is not None else _original_runner(pair, o)
    pair.early_original = None  # the session goes when this phase ends

    # Shapes: the first candidate the original accepts whose layers see distinct N, H, W.
    best: tuple[int, dict[str, int], list, dict[str, list[int]], dict[str, np.ndarray]] | None = None
    first_error = ""
    too_big: InputError | None = None  # the first candidate over the memory budget (smaller ones are tried next)
    n_trials = 1 if not random_inputs else max(1, o.trials or DEFAULT_TRIALS)
    budget = o.budget - o.held
    for attempt, (symbols, why) in enumerate(feeding.candidates(pair.original, random_inputs, fixed)):
        if attempt >= _MAX_SHAPE_TRIES and best is not None:
            break
        shapes = feeding.shapes_for(declared, {**fixed, **symbols}, fixed_shapes)
        try:
            _check_budget(pair.original, declared, shapes, budget, n_trials)
        except InputError as e:
            too_big = too_big or e
            continue
        if too_big is not None and best is None and symbols and all(v == 1 for v in symbols.values()):
            raise too_big  # only 1 x 1 would fit: not worth a verdict that cannot see layout
        feeds = {**feeding.make_feeds(random_inputs, shapes, o.seed, 0), **given}
        try:
            result = original.run(feeds, o.deadline)
        except VerificationTimeout:
            raise
        except InputError as e:
            first_error = first_error or str(e)
            continue
        strong = sum(_strong(_tensor(c.input, result, feeds)) for c in pair.layers)
        if best is None or strong > best[0]:
            best = (strong, symbols, why, shapes, result)
        if strong == len(pair.layers):
            break
    if best is None and too_big is not None and not first_error:
        raise too_big
    if best is None:
        raise InputError(
            f"{first_error or 'onnxruntime cannot run the original model'} (tried the symbolic dims at several sizes; "
            "give --input-shape NAME:DIMS)"
        )
    _, symbols, why, shapes, first = best
    out.symbols = {**fixed, **symbols}
    out.dims = why
    if any(v == 1 for v in symbols.values()):
        out.assumptions.append("no larger value of the symbolic dims ran; layout bugs on them cannot be excluded by numbers")
    fed = {d.name: d for d in declared}
    for vi in pair.original.graph.input:
        if vi.name in fed:
            d = fed[vi.name]
            out.inputs.append(
                InputSpec(d.name, dtype_name(d.elem_type), list(shapes[d.name]), "file" if d.name in given else "random")
            )
        else:  # backed by an initializer: onnxruntime uses its value
            out.inputs.append(InputSpec(vi.name, dtype_name(vi.type.tensor_type.elem_type), [], "initializer default"))

    # What one trial keeps is known now (the outputs and the layers' tensors): every trial's must fit.
    inputs, per_trial = feeding.nbytes(declared, shapes), _nbytes(first)
    held = _held(inputs, per_trial, n_trials)
    if held > budget:
        raise InputError(
            f"verification would hold about {_size(held)}: {_size(per_trial)} of outputs and layer tensors per trial"
            f"{_over_trials(n_trials)} and {_size(inputs)} of inputs, at shapes "
            f"{', '.join(f'{k} {v}' for k, v in shapes.items())}, over the {_size(budget)} budget "
            f"(give --max-memory, {'fewer --trials, ' if n_trials > 1 else ''}smaller --input-shape values, or --no-verify)"
        )
    plans: list[tuple[int, str]] = [(t, "normal") for t in range(n_trials)]
    originals = _Originals(declared, random_inputs, given, shapes, plans, [first])
    for t, dist in plans[1:]:
        o.step(f"running the original model (trial {t + 1} of {n_trials})")
        originals.kept.append(original.run(originals.feeds(t, dist, o.seed), o.deadline))
    if random_inputs and _needs_positive(pair, originals, o.seed):
        t = len(plans)
        if _held(inputs, max(per_trial, max(_nbytes(r) for r in originals.kept)), t + 1) > budget:
            out.notes.append(
                "some layer's input held NaN or Inf in every trial; a trial with positive inputs would not fit --max-memory"
            )
        else:
            plans.append((t, "positive"))
            out.notes.append(f"trial {t + 1} used positive inputs: with normal ones some layer's input held NaN or Inf")
            originals.kept.append(original.run(originals.feeds(t, "positive", o.seed), o.deadline))
    out.trials = len(plans)
    return originals


def _run_rewritten(pair: _Pair, o: _Options, originals: _Originals, out: _Outcome) -> None:
    """Run the rewritten model on the original's trials and compare, output by output and layer by layer.

    Each layer's reference uses the original weight and bias; for a layer whose Conv the
    certificate proved to hold them bit for bit, the Conv's own copy serves (the same numbers, and
    the original's copy may already be gone, see verify()).
    """
    o.step("running the rewritten model")
    convs = {n.name: n for n in pair.rewritten.graph.node if n.name}
    depth = math.sqrt(sum(_channels(pair.original, c) for c in (pair.every or pair.layers))) / 32
    per_output: dict[str, list[OutputCheck]] = defaultdict(list)
    refs: dict[str, list[np.ndarray]] = defaultdict(list)
    inits = {t.name: t for t in pair.rewritten.graph.initializer}
    dense = {c.conv: _dense(pair, c, convs, inits, o.values) for c in pair.layers}
    try:
        rewritten = pair.early.result() if pair.early is not None else _rewritten_runner(pair, o)
        failure = ""
    except VerificationTimeout:
        raise
    except InputError as e:
        rewritten, failure = None, str(e)
    trial = _Trial(pair, o, convs, dense, depth, out, per_output, refs)
    for (t, dist), orig_out in zip(originals.plans, originals.kept, strict=True):
        # One trial at a time, in its own frame: its inputs and outputs are gone before the next is made.
        failure = trial.check(rewritten, originals.feeds(t, dist, o.seed), orig_out, failure)
    for name, checks in per_output.items():
        merged = _merge(checks)
        why = degenerate(refs[name])
        if why:
            merged.degenerate = why
            out.notes.append(
                f"output {name!r} is {why} over {len(originals.plans)} trials: it proves nothing about the layers before it"
            )
        out.outputs.append(merged)


def _quantized_inputs(model: onnx.ModelProto, convs: dict[str, onnx.NodeProto]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """For each Conv that reads ``DequantizeLinear(QuantizeLinear(t))`` with one constant scale and zero point
    (a QDQ layer: the certificate proved them the original's), what that pair makes of the original
    activation: its input check then compares like with like, not the quantized tensor with the float one
    (off by the quantization noise, which outliers make larger than the check's limit)."""
    made = {o: n for n in model.graph.node for o in n.output if o}
    overridable = {i.name for i in model.graph.input}  # initializers callers may override are no constants
    inits = {t.name: t for t in model.graph.initializer if t.name not in overridable}
    found: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for name, conv in convs.items():
        dq = made.get(conv.input[0]) if conv.input else None
        q = made.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" and dq.input else None
        if q is None or q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or dq.domain not in ("", "ai.onnx"):
            continue
        if (
            len(q.input) < 3
            or len(dq.input) < 3
            or q.input[1:3] != dq.input[1:3]
            or any(a.name != "axis" for a in [*q.attribute, *dq.attribute])
        ):
            continue
        if not all(n in inits for n in q.input[1:3]):
            continue
        scale, zero = (numpy_helper.to_array(inits[n]) for n in q.input[1:3])
        if scale.size != 1 or zero.size != 1 or zero.dtype.kind not in "iu" or scale.dtype.kind != "f":
            continue
        info = np.iinfo(zero.dtype)
        s, z = scale.reshape(()), int(zero.reshape(()))

        def qdq(x: np.ndarray, s: np.ndarray = s, z: int = z, lo: int = info.min, hi: int = info.max) -> np.ndarray:
            # QuantizeLinear rounds half to even and saturates; DequantizeLinear is (q - z) * s, in the scale's type.
            q = np.clip(np.rint(np.asarray(x, dtype=s.dtype) / s) + z, lo, hi)
            return ((q - z) * s).astype(s.dtype)

        found[name] = qdq
    return found


@dataclass
class _Trial:
    """Comparing one trial of the rewritten model with the original's outputs of the same inputs."""

    pair: _Pair
    o: _Options
    convs: dict[str, onnx.NodeProto]
    dense: dict[str, tuple[np.ndarray, np.ndarray | None] | IntegerLayer | str]
    depth: float
    out: _Outcome
    per_output: dict[str, list[OutputCheck]]
    refs: dict[str, list[np.ndarray]]
    quantized: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.quantized = _quantized_inputs(self.pair.rewritten, self.convs)

    def check(self, rewritten: Runner | None, feeds: dict[str, np.ndarray], orig_out: dict[str, np.ndarray], failure: str) -> str:
        """Run, compare and record; returns the failure message so far ("" when the rewritten model runs)."""
        pair, o, out = self.pair, self.o, self.out
        got = None
        if rewritten is not None:
            try:
                got = rewritten.run(feeds, o.deadline)
            except VerificationTimeout:
                raise
            except InputError as e:
                failure = str(e)
        pending: list[tuple[str, LayerTensors]] = []
        for c in pair.layers:
            numbers = out.layers.setdefault(c.conv, [])
            if got is None or c.conv not in self.convs:
                numbers.append(LayerNumbers(False, problem=failure or f"the rewritten model has no node named {c.conv!r}"))
                continue
            layer = self.dense[c.conv]
            if isinstance(layer, str) and layer == _UNREACHED:
                # The structure walk stopped before this layer's graph (unproved): what the original layer is cannot be
                # read, so its numbers are not checked here (the model's outputs still are), rather than failed.
                numbers.append(LayerNumbers(False, why_not=f"the original layer could not be read: {layer}"))
                continue
            if isinstance(layer, str):
                numbers.append(LayerNumbers(False, problem=f"the original has no such dense layer: {layer}"))
                continue
            node = self.convs[c.conv]
            if isinstance(layer, IntegerLayer):
                zero = layer.x_zero
                if zero is None and node.op_type == "ConvInteger" and len(node.input) > 2 and node.input[2]:
                    zero = _tensor(node.input[2], got, feeds)  # computed (DynamicQuantizeLinear): the proved same tensor
                numbers.append(
                    check_integer_layer(
                        _tensor(node.input[0], got, feeds),
                        _tensor(node.output[0], got, feeds),
                        layer,
                        zero,
                        _tensor(c.input, orig_out, feeds),
                        _tensor(c.output, orig_out, feeds),
                        calibrate=not any(n.exercised for n in numbers),
                    )
                )
                continue
            orig_in = _tensor(c.input, orig_out, feeds)
            quantized = self.quantized.get(c.conv)
            if quantized is not None and orig_in is not None:
                orig_in = quantized(orig_in)
            pending.append(
                (
                    c.conv,
                    LayerTensors(
                        _tensor(node.input[0], got, feeds),
                        _tensor(node.output[0], got, feeds),
                        layer[0],
                        layer[1],
                        orig_in,
                        _tensor(c.output, orig_out, feeds),
                        calibrate=not any(n.exercised for n in numbers),
                    ),
                )
            )
        for (conv, _), numbers in zip(pending, check_layers([t for _, t in pending]), strict=True):
            out.layers[conv].append(numbers)
        for vi in pair.original.graph.output:
            ref = orig_out[vi.name]
            self.refs[vi.name].append(ref)
            noise = sum(out.layers[c.conv][-1].noise for c in pair.layers if out.layers.get(c.conv))
            noise *= len(pair.every) / len(pair.layers) if pair.every and pair.layers else 1.0  # the sampled out too
            a_tol, r_tol = _tolerances(vi.type.tensor_type.elem_type, ref, o.atol, o.rtol, self.depth, noise)
            if got is None:
                check = failed(vi.name, ref, a_tol, r_tol, failure or "the rewritten model did not run")
            elif vi.name not in got:  # a candidate of --check may lack an output, or name it otherwise
                check = failed(vi.name, ref, a_tol, r_tol, f"the rewritten model has no output named {vi.name!r}")
            else:
                check = compare(vi.name, got[vi.name], ref, a_tol, r_tol)
            self.per_output[vi.name].append(check)
        return failure


# Proofs made again at most this often, each without the inferred shapes onnxruntime contradicted so far.
_SHAPE_ROUNDS = 3


def _engine_shapes(
    pair: _Pair, o: _Options, originals: _Originals, out: _Outcome, certify_again: Callable[..., Certificate]
) -> Certificate:
    """The certificate, once every shape it took from onnx's shape inference is the one onnxruntime computes on the
    first trial's inputs (numbers/shapes.py). Where onnxruntime computes another, the proof is made again without
    those shapes (``certify_again(declined=...)``: a candidate that kept the original's Shape nodes still proves, one
    that wrote inference's numbers as constants does not), and a note says so; what cannot be checked, or is still
    contradicted after a few rounds, leaves the proof unproved, with the reason.

    The shapes come from the first trial's run of the original (its session returns ``Shape(t)`` of the tensors a
    proof may read, and the tensors it exposes); only those it does not give are computed by a second session, the
    original cut down to what computes them."""
    cert = pair.cert
    actual: dict[str, list[int]] = {}
    declined: dict[str, str] = {}
    first = originals.kept[0]
    for _ in range(_SHAPE_ROUNDS):
        for n in cert.assumed_shapes:
            if n in actual:
                continue
            if n + SUFFIX in first:
                actual[n] = np.asarray(first[n + SUFFIX]).tolist()
            elif n in first:
                actual[n] = list(np.shape(first[n]))
        todo = [n for n in cert.assumed_shapes if n not in actual]
        if todo:
            try:
                runner = Runner(probe_model(pair.original, todo), o.providers, (), "original", o.values)
                t, dist = originals.plans[0]
                found = runner.run(originals.feeds(t, dist, o.seed), o.deadline)
            except VerificationTimeout:
                raise
            except InputError as e:
                cert.unproved.append(
                    f"the shapes the proof took from onnx's shape inference could not be checked against onnxruntime's ({e})"
                )
                return cert
            actual.update({n: found[n + SUFFIX].tolist() for n in todo if n + SUFFIX in found})
        wrong = disagreements(cert.assumed_shapes, actual, out.symbols)
        if not wrong:
            break
        declined.update(wrong)
        cert = certify_again(declined=declined)
    else:
        wrong = disagreements(cert.assumed_shapes, actual, out.symbols)
        cert.unproved.extend(f"the proof read a shape onnxruntime does not compute: {why}" for why in wrong.values())
    if declined:
        out.notes.append(
            f"{'; '.join(declined.values())}: the proof was made again without "
            f"{'these shapes' if len(declined) > 1 else 'that shape'}"
        )
    return cert


def _original_runner(pair: _Pair, o: _Options) -> Runner:
    # Exposed tensors: each layer's activation and output in the original (its Conv's in the rewritten).
    expose = [t for c in pair.layers for t in (c.input, c.output)]
    if pair.shapes:
        try:
            return Runner(pair.original, o.providers, expose, "original", o.values, pair.shapes)
        except InputError:  # (never seen): without the Shape nodes, what the proof read is checked on its own
            pair.shapes = []
    return Runner(pair.original, o.providers, expose, "original", o.values)


def _rewritten_runner(pair: _Pair, o: _Options) -> Runner:
    convs = {n.name: n for n in pair.rewritten.graph.node if n.name}
    expose = [t for c in pair.layers if c.conv in convs for t in (convs[c.conv].input[0], convs[c.conv].output[0])]
    # A ConvInteger's activation zero point may be computed (DynamicQuantizeLinear): its numbers need it.
    inits = {t.name for t in pair.rewritten.graph.initializer}
    expose += [
        convs[c.conv].input[2]
        for c in pair.layers
        if c.conv in convs and convs[c.conv].op_type == "ConvInteger" and len(convs[c.conv].input) > 2
        if convs[c.conv].input[2] and convs[c.conv].input[2] not in inits
    ]
    return Runner(pair.rewritten, o.providers, expose, "rewritten", o.values)


# Below this much weight data the rewritten model's session is built while the original runs:
# onnxruntime builds sessions without holding the GIL, and on graphs of many nodes building is
# most of the cost. Above it, one session at a time keeps one copy of the weights in memory.
PARALLEL_BELOW = 256 << 20


# The certificate's word for a layer whose graph its walk never reached (proofs.py says the same of float layers).
_UNREACHED = "the walk never reached this layer's graph"


def _dense(
    pair: _Pair,
    layer: RewrittenLayer,
    convs: dict[str, onnx.NodeProto],
    inits: dict[str, TensorProto],
    values: DetachedWeights | None,
) -> tuple[np.ndarray, np.ndarray | None] | IntegerLayer | str:
    """A layer's weight as [K, C] and bias: the Conv's when the certificate proved them the original's, else the original's."""
    proof = pair.cert.layers.get(layer.conv)
    node = convs.get(layer.conv)
    if node is not None and node.op_type in INTEGER_CONVS:
        # The certificate read it from the original (weight, zero points, scales), or says why not.
        found = pair.cert.originals.get(layer.conv, _UNREACHED)
        return found if isinstance(found, (IntegerLayer, str)) else "it is no integer layer in the original"
    if proof is not None and proof.status == "proved" and node is not None:
        read = values.value if values is not None else numpy_helper.to_array
        if node.input[1] in inits and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits):
            w = read(inits[node.input[1]])
            b = read(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            return w.reshape(w.shape[0], w.shape[1]), b
    try:
        return pair.cert.original_dense(layer.conv)
    except ValueError as e:
        return str(e)


def _tensor(name: str, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> np.ndarray:
    return outputs[name] if name in outputs else feeds[name]


def _strong(x: np.ndarray) -> bool:
    """Whether an NHWC activation's N, H and W are all > 1 and H != W (a swapped axis then shows)."""
    shape = np.shape(x)
    return len(shape) == 4 and min(shape[:3]) >= 2 and shape[1] != shape[2]


def _needs_positive(pair: _Pair, originals: _Originals, seed: int) -> bool:
    """Whether some layer's input held NaN or Inf and never any usable data in any trial: then one more
    trial with positive inputs (a Log or Sqrt before it is then finite). A layer that only saw zeros
    (a ReLU before it) is not helped by that, so it does not ask for the trial."""
    for c in pair.layers:
        usable, non_finite = False, False
        for (t, dist), result in zip(originals.plans, originals.kept, strict=True):
            feeds = originals.feeds(t, dist, seed) if c.input not in result else {}
            x = np.asarray(_tensor(c.input, result, feeds))
            if x.dtype.kind != "f":
                usable = True
                break
            finite = np.isfinite(x)
            non_finite |= not finite.all()
            values = x[finite]
            if values.size and (values != values.reshape(-1)[0]).any():
                usable = True
                break
        if not usable and non_finite:
            return True
    return False


def _channels(model: onnx.ModelProto, layer: RewrittenLayer) -> int:
    chain = find_graphs(model, layer.graph)
    if chain is None:
        return 0
    for g in chain:
        for vi in [*g.value_info, *g.input]:
            if vi.name == layer.input and vi.type.tensor_type.shape.dim:
                d = vi.type.tensor_type.shape.dim[-1]
                return d.dim_value if d.HasField("dim_value") else 0
    return 0


def _tolerances(
    elem_type: int, ref: np.ndarray, atol: float | None, rtol: float | None, depth: float, noise: float = 0.0
) -> tuple[float, float]:
    a_tol, r_tol = default_tolerances(elem_type)
    if atol is None and a_tol:
        a_tol = end_to_end_atol(a_tol, ref, depth, noise)
    return (a_tol if atol is None else atol), (r_tol if rtol is None else rtol)


def _merge(checks: list[OutputCheck]) -> OutputCheck:
    """One output over several trials: the worst figures, the failing elements summed."""
    first = checks[0]
    worst = max(checks, key=lambda c: (not c.passed, c.max_abs_error))
    return OutputCheck(
        first.name,
        first.dtype,
        first.shape,
        max(c.max_abs_error for c in checks),
        max(c.max_rel_error for c in checks),
        sum(c.mismatched for c in checks),
        max(c.atol for c in checks),
        first.rtol,
        all(c.passed for c in checks),
        problem=next((c.problem for c in checks if c.problem), ""),
        worst_index=worst.worst_index,
        trials=len(checks),
    )


def _check_budget(
    model: onnx.ModelProto, declared: list[feeding.Declared], shapes: dict[str, list[int]], budget: int, trials: int = 1
) -> None:
    """Refuse inputs and declared outputs that would not fit the memory budget over ``trials`` trials, before allocating any.

    What is held at once (``_held``): a trial's inputs, the original model's outputs of every trial, and one
    trial's outputs of the rewritten model. Sizes are Python ints (numpy's would wrap), an empty dim counts as 1.
    """
    inputs = feeding.nbytes(declared, shapes)
    symbols: dict[str, int] = {}
    for d in declared:
        for dim, v in zip(d.dims, shapes[d.name], strict=True):
            if isinstance(dim, str):
                symbols[dim] = v
    outputs = 0
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else symbols.get(d.dim_param, 1) for d in tt.shape.dim]
        outputs += feeding.elements(dims) * itemsize
    held = _held(inputs, outputs, trials)
    if held > budget:
        raise InputError(
            f"verification would hold about {_size(held)} of inputs and outputs at shapes "
            f"{', '.join(f'{k} {v}' for k, v in shapes.items())}{_over_trials(trials)}, over the {_size(budget)} budget "
            f"(give --max-memory, {'fewer --trials, ' if trials > 1 else ''}smaller --input-shape values, or --no-verify)"
        )


def _held(inputs: int, per_trial: int, trials: int) -> int:
    """Bytes verification holds at its peak: the original's outputs of every trial are kept until the rewritten
    model has run on them all, beside one trial of the rewritten model's; a trial's inputs count twice (they are
    made again for each trial while onnxruntime may still hold the last)."""
    return 2 * inputs + (trials + 1) * per_trial


def _over_trials(trials: int) -> str:
    return f" over {trials} trials (the original's outputs of each are kept for the comparison)" if trials > 1 else ""


def _nbytes(value: object) -> int:
    """Bytes of an onnxruntime result: arrays, and the sequences and maps some outputs are."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


# --- layers inside subgraphs: their graph run as a model of its own --------------------------


def _check_subgraph(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    key: tuple,
    group: list[RewrittenLayer],
    o: _Options,
    symbols: dict[str, int],
    checks: dict[str, LayerCheck],
    cert: Certificate,
    held: int = 0,
) -> None:
    o = o.with_held(held)
    try:
        orig_model = standalone(original, key, symbols)
        rew_model = standalone(rewritten, key, symbols, like=orig_model)
    except ValueError as e:
        for c in group:
            checks[c.conv].numbers_detail = f"its subgraph cannot be run on its own: {e}"
        return
    local = [RewrittenLayer((), c.anchor, c.input, c.output, c.conv) for c in group]
    try:
        outcome = _run_pair(_Pair(orig_model, rew_model, local, cert), o, {}, {})
    except VerificationTimeout:
        raise
    except InputError as e:
        for c in group:
            checks[c.conv].numbers_detail = f"its subgraph did not run on its own: {e}"
        return
    mismatched = [x.name for x in outcome.outputs if not x.passed]
    for c in group:
        _record(checks[c.conv], outcome.layers.get(c.conv, []), "subgraph model")
        if mismatched and checks[c.conv].numbers != "failed":
            checks[c.conv].numbers = "failed"
            checks[c.conv].numbers_detail = f"its subgraph's outputs differ when run on its own: {', '.join(mismatched)}"


def standalone(
    model: onnx.ModelProto, key: Sequence[Sequence[str]], symbols: dict[str, int], like: onnx.ModelProto | None = None
) -> onnx.ModelProto:
    """The subgraph ``key`` names as a model: its formal inputs, plus the outer tensors it reads.

    Outer constants come along as initializers; other outer tensors become inputs, typed by shape
    inference on ``model`` (symbolic dims as in ``symbols``). ``like`` (the original's standalone
    model) fixes the inputs' order and types, so both models take the same feeds.
    """
    chain = find_graphs(model, key)
    if chain is None:
        raise ValueError("the graph is not in the model")
    sub = chain[-1]
    types = _outer_types(model, key)
    free = _free_names(sub)
    graph = onnx.GraphProto()
    graph.CopyFrom(sub)
    graph.name = f"{model.graph.name}_{'_'.join(a for _, a in key)}"
    inputs = list(graph.input)
    for name in sorted(free):
        const = _outer_constant(chain[:-1], name)
        if const is not None:
            graph.initializer.append(const)
            continue
        if like is not None:
            vi = next((v for v in like.graph.input if v.name == name), None)
            if vi is not None:
                inputs.append(vi)
                continue
        t = types.get(name)
        if t is None or not t.type.tensor_type.HasField("shape"):
            raise ValueError(f"the subgraph reads {name!r}, whose shape is unknown")
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(t)
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                value = symbols.get(d.dim_param, 3) if d.dim_param else 3
                d.Clear()
                d.dim_value = value
        inputs.append(vi)
    graph.ClearField("input")
    graph.input.extend(inputs)
    for out in graph.output:
        if not out.type.HasField("tensor_type"):
            out.type.tensor_type.elem_type = TensorProto.UNDEFINED
    standalone_model = helper.make_model(graph, opset_imports=list(model.opset_import))
    standalone_model.ir_version = model.ir_version
    return standalone_model


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a graph (with its own subgraphs) reads but does not define."""
    defined = (
        {i.name for i in graph.input} | {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    )
    read: set[str] = set()
    for node in graph.node:
        read.update(n for n in node.input if n)
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
            for g in subs:
                read |= _free_names(g)
        defined.update(n for n in node.output if n)
    read.update(o.name for o in graph.output)
    return read - defined


def _outer_constant(outer: list[onnx.GraphProto], name: str) -> TensorProto | None:
    for g in reversed(outer):
        inputs = {i.name for i in g.input}
        for t in g.initializer:
            if t.name == name and name not in inputs:
                return t
        for n in g.node:
            if name in n.output:
                if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                    for a in n.attribute:
                        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                            copy = TensorProto()
                            copy.CopyFrom(a.t)
                            copy.name = name
                            return copy
                return None
        if name in inputs:
            return None
    return None


def _outer_types(model: onnx.ModelProto, key: Sequence[Sequence[str]]) -> dict[str, onnx.ValueInfoProto]:
    """Types of the tensors in the graphs around the subgraph ``key`` names, from shape inference on the model."""
    from converter.graph import skeleton

    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - a model inference cannot handle still has its declared types
        inferred = model
    chain = find_graphs(inferred, key) or [inferred.graph]
    types: dict[str, onnx.ValueInfoProto] = {}
    for g in chain[:-1]:
        for vi in [*g.input, *g.value_info, *g.output]:
            types[vi.name] = vi
    return types
