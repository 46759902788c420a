"""The documentation is what users run first: every code block in it runs, and what it lists is the code's.

Which files: ``README.md``, ``CONTRIBUTING.md`` and every page in ``docs/`` (a name starting with ``_`` is a
working file, not a page). How a block runs, by its language:

- ``bash``: a script, ``bash -e -o pipefail``, in a fresh workspace (below); it must exit 0.
- ``console``: ``$ command`` lines, each followed by what it prints (stdout and stderr together). Each
  command runs in one fresh workspace, in order, must exit 0 (show a failure with ``; echo "exit status $?"``)
  and print what is shown: ``...`` inside a line matches any text, a line of only ``...`` any number of lines.
- ``python``: run in a fresh workspace (in this process; a ``slow`` block in a child interpreter).
- ``text``: not code (formulas, trees, output shown for reading): not run.

An HTML comment directly above a block changes that: ``<!-- slow: why -->`` puts it in the slow tier,
``<!-- slow (needs torch): why -->`` also skips it where torch is not installed, and ``<!-- no-test: why -->``
does not run it at all. ``no-test`` is for what cannot run inside a test (installing packages, running the
suite itself); ``test_no_test_markers_are_few_and_justified`` keeps it that way.

The workspace is a temporary folder holding a copy of ``models/`` and ``benchmarks/`` and ``model.onnx``, a
small ConvNeXt exported by PyTorch (``models/fixtures/torch_convnext_small_trained_ts.onnx``: input ``x`` of
shape ``[N, 3, H, W]``), which the docs use for "your model". ``convert``, ``dense2conv`` and ``python`` are
this environment's.

The rest of the file checks the docs' lists against the code: reason codes, rules, option records, keyword
shortcuts, command-line options, JSON keys, verdicts and exit statuses, links; the README's length and test
commands; and that no page names a path of a particular machine or tells the project's history.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import converter
import converter.options

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
README = ROOT / "README.md"
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("_"))]
# The pages the other engineers are writing, linked to before they land: a missing one is not a broken link.
PENDING_PAGES = {ROOT / "docs" / "safety.md"}
YOUR_MODEL = ROOT / "models" / "fixtures" / "torch_convnext_small_trained_ts.onnx"
LANGUAGES = {"bash", "console", "python", "text"}
MARKER = re.compile(r"<!--\s*(no-test|slow)(?:\s*\(needs ([\w, ]+)\))?\s*:\s*(.*?)\s*-->")
# At most this many blocks may be left unrun, each installing packages or running the suite.
MAX_NO_TEST = 5


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str  # "", "no-test" or "slow"
    needs: tuple[str, ...]
    why: str
    section: str  # the heading it sits under

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if line.startswith("```"):
            language = line[3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            m = MARKER.fullmatch(above.strip())
            if above.strip().startswith("<!--") and m is None:
                raise AssertionError(f"{path.name}:{i + 1}: unknown marker {above.strip()!r}")
            needs = tuple(n.strip() for n in m.group(2).split(",")) if m and m.group(2) else ()
            code = "\n".join(lines[i + 1 : end]) + "\n"
            found.append(Block(path, i + 1, language, code, m.group(1) if m else "", needs, m.group(3) if m else "", section))
            i = end
        i += 1
    return found


BLOCKS = [b for page in PAGES for b in blocks_of(page)]
RUNNABLE = [b for b in BLOCKS if b.language != "text" and b.marker != "no-test"]


def _param(block: Block) -> object:
    marks = [pytest.mark.slow] if block.marker == "slow" else []
    return pytest.param(block, id=block.name, marks=marks)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A folder holding what the docs' examples read: models/, benchmarks/ and model.onnx."""
    leftovers = shutil.ignore_patterns("*_conv.onnx", "*_conv.onnx.data", "__pycache__", ".zoo-cache")
    for folder in ("models", "benchmarks"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=leftovers)
    shutil.copyfile(YOUR_MODEL, tmp_path / "model.onnx")
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYTHONIOENCODING")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _shell(command: str, cwd: Path, timeout: float, merge: bool = False) -> subprocess.CompletedProcess[str]:
    """A script (``bash -e``), or with ``merge`` one console command (stdout and stderr together, no ``-e``)."""
    return subprocess.run(
        ["bash", *([] if merge else ["-e"]), "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=_env(),
        capture_output=not merge,
        stdout=subprocess.PIPE if merge else None,
        stderr=subprocess.STDOUT if merge else None,
        text=True,
        timeout=timeout,
    )


def console_steps(code: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines and the lines each prints."""
    steps: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line.rstrip())
    return steps


def printed_as_shown(shown: list[str], printed: str) -> bool:
    """Whether ``printed`` is ``shown``, where ``...`` in a line is any text and a line of only ``...`` any lines."""
    pattern = ""
    for line in shown:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += "[^\n]*".join(re.escape(part) for part in line.split("...")) + r"\n"
    text = "".join(line.rstrip() + "\n" for line in printed.splitlines())
    return re.fullmatch(pattern, text) is not None


COMMANDS = ("convert", "dense2conv")
SHOW_STATUS = '; echo "exit status $?"'


def command_line(line: str) -> list[str] | None:
    """The arguments of a plain ``convert ...`` line (a comment allowed), or None for anything else of the shell."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    if not words or words[0] not in COMMANDS or any(w in "|&;<>()" or "$" in w or "`" in w for w in words):
        return None
    return words


def in_process(block: Block) -> bool:
    """Whether every command of a shell block is the converter's, so the fast tier can run it in this process."""
    if block.language == "bash":
        lines = [line for line in block.code.splitlines() if line.strip()]
        return all(command_line(line) is not None for line in lines)
    if block.language == "console":
        return all(command_line(c.removesuffix(SHOW_STATUS)) is not None for c, _ in console_steps(block.code))
    return False


def run_block(block: Block, workspace: Path, monkeypatch: pytest.MonkeyPatch, run_cli, through_shell: bool) -> None:
    """Run one block as its language says; shell blocks of plain ``convert`` lines run through ``converter.cli.main``
    in this process unless ``through_shell`` (the slow tier runs each of them through bash as well)."""
    for module in block.needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}, which is not installed")
    timeout = 900 if block.marker == "slow" else 180
    here = not through_shell and in_process(block)
    if block.language == "bash" and here:
        for line in block.code.splitlines():
            words = command_line(line) if line.strip() else None
            if words is not None:
                r = run_cli(*words[1:], cwd=workspace, script=words[0], timeout=timeout)
                assert r.returncode == 0, f"{block.name}: `{line}` exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    elif block.language == "bash":
        r = _shell(block.code, workspace, timeout)
        assert r.returncode == 0, f"{block.name} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    elif block.language == "console":
        for command, shown in console_steps(block.code):
            if here:
                words = command_line(command.removesuffix(SHOW_STATUS))
                assert words is not None
                r = run_cli(*words[1:], cwd=workspace, script=words[0], timeout=timeout)
                printed, status = r.stdout + r.stderr, r.returncode
                if command.endswith(SHOW_STATUS):
                    printed, status = printed + f"exit status {status}\n", 0
            else:
                done = _shell(command, workspace, timeout, merge=True)
                printed, status = done.stdout, done.returncode
            assert status == 0, f"{block.name}: `{command}` exited {status}\n{printed[-3000:]}"
            assert printed_as_shown(shown, printed), f"{block.name}: `{command}` printed\n{printed}"
    elif block.language == "python":
        if block.marker == "slow":  # TensorFlow and the like stay out of this process
            r = subprocess.run(
                [sys.executable, "-c", block.code], cwd=workspace, env=_env(), capture_output=True, text=True, timeout=timeout
            )
            assert r.returncode == 0, f"{block.name}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        else:
            monkeypatch.chdir(workspace)
            exec(compile(block.code, block.name, "exec"), {"__name__": "__docs__"})
    else:
        raise AssertionError(f"{block.name}: no way to run a {block.language!r} block")


def _check_promises(block: Block, workspace: Path) -> None:
    if block.path == README and block.section == "Quickstart":
        # What the comments promise: the bundled example and "your model" converted, the report written.
        ops = [n.op_type for n in onnx.load(workspace / "models" / "seed_dense_conv.onnx").graph.node]
        assert ops == ["Transpose", "Conv", "Transpose"]
        assert json.loads((workspace / "report.json").read_text())["status"] == "passed"
        assert (workspace / "model_conv.onnx").exists()


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_block_runs_as_written(block: Block, workspace: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    run_block(block, workspace, monkeypatch, run_cli, through_shell=False)
    _check_promises(block, workspace)


@pytest.mark.slow
@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in RUNNABLE if in_process(b)])
def test_block_runs_through_the_shell(block: Block, workspace: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    """The blocks the fast tier runs in this process, through bash and the installed script, as a user would."""
    run_block(block, workspace, monkeypatch, run_cli, through_shell=True)
    _check_promises(block, workspace)


def test_every_block_says_what_it_is() -> None:
    unknown = [f"{b.name} ({b.language or 'no language'})" for b in BLOCKS if b.language not in LANGUAGES]
    assert not unknown, f"a code block needs one of {sorted(LANGUAGES)} after its fence: {unknown}"
    assert [b for b in BLOCKS if b.path == README and b.language != "text"], "the README has no runnable block"


def test_no_test_markers_are_few_and_justified() -> None:
    unrun = [b for b in BLOCKS if b.marker == "no-test"]
    assert len(unrun) <= MAX_NO_TEST, [b.name for b in unrun]
    for b in unrun:
        assert len(b.why.split()) >= 4, f"{b.name}: say why it cannot run: {b.why!r}"
        assert re.search(r"\bpip install\b|\bpytest\b|\bvenv\b", b.code), f"{b.name}: this block can run in a test"
    assert len(unrun) * 4 <= len(BLOCKS), "most blocks must run"


def test_package_docstring_example_runs(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``converter.__doc__``'s example, after its first paragraph; ``model`` and ``graph`` stand for the user's."""
    gs = pytest.importorskip("onnx_graphsurgeon")
    example = textwrap.dedent(converter.__doc__.split("\n\n", 1)[1])
    for name in set(re.findall(r"\"([\w.-]+\.onnx)\"", example)):  # every model file it names: "your model"
        if not (workspace / name).exists():
            shutil.copyfile(YOUR_MODEL, workspace / name)
    namespace = {"model": onnx.load(YOUR_MODEL), "graph": gs.import_onnx(onnx.load(YOUR_MODEL))}
    monkeypatch.chdir(workspace)
    exec(compile(example, "converter/__init__.py (docstring)", "exec"), namespace)
    assert namespace["check"].passed, namespace["check"].to_dict()
    assert namespace["report"].status == "passed" and namespace["report"].written


def test_bundled_example_is_what_its_script_builds(tmp_path: Path) -> None:
    from models.seed_dense import build

    onnx.save(build(), tmp_path / "s.onnx")  # what `python models/seed_dense.py` writes
    assert (tmp_path / "s.onnx").read_bytes() == (ROOT / "models" / "seed_dense.onnx").read_bytes()
    shape = [d.dim_value for d in onnx.load(tmp_path / "s.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 2, 2, 1]


# ---------------------------------------------------------------------------------------------
# The README


def test_readme_is_read_in_five_minutes() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_quickstart_starts_with_the_bundled_example() -> None:
    (quickstart,) = [b for b in BLOCKS if b.path == README and b.section == "Quickstart"]
    commands = [line for line in quickstart.code.splitlines() if line.strip()]
    assert 3 <= len(commands) <= 4 and commands[0].startswith("convert models/seed_dense.onnx ")


def test_installing_makes_the_environment_first() -> None:
    (install,) = [b for b in BLOCKS if b.path == README and b.section == "Install"]
    lines = install.code.splitlines()
    assert "venv" in lines[0] and "pip install -e ." in lines[1], lines


def test_readme_test_commands_are_what_ci_runs() -> None:
    (tests,) = [b for b in BLOCKS if b.path == README and b.section == "Tests"]
    commands = [line.split("#")[0].strip() for line in tests.code.splitlines() if line.strip()]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert 'pip install -e ".[test]" && python -m pytest' in commands
    assert any("-m slow" in c for c in commands)
    missing = [c for c in commands if c not in ci]
    assert not missing, f".ci/run does not run the README's test commands {missing}"


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table under ``heading``."""
    after = text.split(heading, 1)[1]
    rows = []
    for line in after.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    return [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]


def _zero_layer_model() -> onnx.ModelProto:
    """A dense layer behind Relu(-|x|): it only ever sees zeros, so its numbers cannot be checked."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")
    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    return _model(nodes, [w, b])


def _noisy_model() -> onnx.ModelProto:
    """A dense layer whose output gets fresh random noise on every run: the two models can never agree."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("RandomNormalLike", ["m"], ["noise"]),
        helper.make_node("Add", ["m", "noise"], ["y"]),
    ]
    return _model(nodes, [w])


def _model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5, 6])
    graph = helper.make_graph(nodes, "g", [x], [y], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _documented_statuses() -> dict[str, str]:
    """The README's table: the verdict line's start (``PASSED``, ``convert: error``, ...) -> its exit status."""
    rows = _table(README.read_text(), "## Verdicts and exit status")
    return {row[0].strip("`").split(" ...")[0].rstrip(":;"): row[1] for row in rows}


def test_verdicts_and_exit_statuses_are_the_commands(tmp_path: Path, run_cli) -> None:
    """Each row of the README's table that a model can produce, produced by the command itself."""
    documented = _documented_statuses()
    onnx.save(_zero_layer_model(), tmp_path / "zero.onnx")
    onnx.save(_noisy_model(), tmp_path / "noisy.onnx")
    from models.graphs import resnet_style

    onnx.save(resnet_style(), tmp_path / "resnet.onnx")
    seed = ROOT / "models" / "seed_dense.onnx"
    runs = {
        "PASSED": [seed, "-o", tmp_path / "a.onnx"],
        "UNCHANGED": [tmp_path / "resnet.onnx"],
        "DONE": [seed, "-o", tmp_path / "b.onnx", "--no-verify"],
        "DRY RUN": [seed, "--dry-run"],
        "FAILED": [tmp_path / "noisy.onnx", "--layout", "keep-all"],
        "INCOMPLETE": [tmp_path / "zero.onnx"],
        "convert: error": [tmp_path / "missing.onnx"],
    }
    for verdict, args in runs.items():
        r = run_cli(*args, cwd=tmp_path)
        last = (r.stdout + r.stderr).strip().splitlines()[-1]
        assert last.startswith(verdict), (verdict, last)
        assert str(r.returncode) == documented[verdict], (verdict, r.returncode)


def test_exit_statuses_are_those_the_help_lists(run_cli) -> None:
    """--help lists the exit codes; the README's table has each of them, and the signals' 128 + N."""
    documented = _documented_statuses()
    listed = dict(re.findall(r"^ {2}(\d+) +(.+)$", _help(run_cli), re.M))
    assert listed, "convert --help lists no exit codes"
    for code, meaning in listed.items():
        rows = [start for start, status in documented.items() if status == code]
        assert rows, f"the README's table has no row for exit code {code} ({meaning})"
    internal = documented["convert: internal error"]
    assert "internal error" in listed[internal], listed
    stopped = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    assert [int(n) for n in documented["convert: interrupted"].split(", ")] == [128 + s for s in stopped]


def _help(run_cli) -> str:
    r = run_cli("--help")
    assert r.returncode == 0
    return r.stdout


def _help_options(help_text: str) -> list[set[str]]:
    """Each option --help lists, with its aliases: ``{"-o", "--output"}``."""
    groups = []
    for line in help_text.splitlines():
        m = re.match(r"^ {2}(-\S.*?)(?: {2,}|$)", line)
        if m:
            groups.append(set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", m.group(1))))
    return [g for g in groups if g and not g & {"-h", "--help"}]


def _options_in(cells: list[str]) -> set[str]:
    return {o for cell in cells for o in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b", cell)}


def test_readme_options_are_the_commands(run_cli) -> None:
    rows = _table(README.read_text(), "## The ten most used options")
    assert len(rows) == 10
    listed = _options_in([r[0] for r in rows])
    offered = set().union(*_help_options(_help(run_cli)))
    assert listed and listed <= offered, listed - offered


def test_cli_reference_lists_every_option(run_cli) -> None:
    listed = _options_in([r[0] for r in _table((ROOT / "docs" / "cli.md").read_text(), "## Options")])
    groups = _help_options(_help(run_cli))
    assert len(groups) > 20
    assert listed <= set().union(*groups), listed - set().union(*groups)
    missing = [sorted(g) for g in groups if not g & listed]
    assert not missing, f"docs/cli.md does not list {missing}"


# ---------------------------------------------------------------------------------------------
# Reason codes and rules (docs/rules.md)

RULES_DIR = ROOT / "converter" / "rewriter"


def _codes_in_code() -> tuple[set[str], set[str]]:
    """Reason codes the rules and the layout policy give: literal ones, and patterns such as ``{role}_not_constant``."""
    literal: set[str] = set()
    patterns: set[str] = set()
    layout = [*RULES_DIR.glob("layout.py"), *RULES_DIR.glob("layout/**/*.py")]  # the policy: one module or a package
    for path in [*(RULES_DIR / "rules").glob("*.py"), *layout]:
        text = path.read_text()
        for f, code in re.findall(r"Decline\(\s*(f?)\"([a-z_{}0-9]+)\"", text):
            (patterns if f else literal).add(code)
        literal.update(re.findall(r"return None, \"([a-z_]+)\"", text))  # a bias that stays an Add
        literal.update(re.findall(r"\"bias_reason\": \"([a-z_]+)\"", text))
        literal.update(re.findall(r"bias_reason = None, \"([a-z_]+)\"", text))
        literal.update(re.findall(r"^LAYOUT_COST = \"([a-z_]+)\"", text, re.M))
    return literal, patterns


def _documented_codes() -> set[str]:
    text = (ROOT / "docs" / "rules.md").read_text()
    reasons = text.split("## When a bias folds", 1)[1].split("## What stays untouched", 1)[0]
    rows = [r for r in re.findall(r"^\| (.*?) \|", reasons, re.M) if "`" in r]
    return {code for r in rows for code in re.findall(r"`([a-z_<>0-9]+)`", r)}


def test_every_reason_code_is_documented() -> None:
    literal, patterns = _codes_in_code()
    documented = _documented_codes()
    literal.discard("no_pattern")  # never reported: another rule's reason, or none (not a candidate of that rule)
    assert len(literal) > 30, "the scan of the rules found too few codes"
    missing = sorted(literal - documented)
    assert not missing, f"docs/rules.md does not list {missing}"
    for pattern in patterns:
        regex = re.compile(re.sub(r"\\\{\w+\\\}", "[a-z_<>0-9]+", re.escape(pattern)))
        assert any(regex.fullmatch(c) for c in documented), f"docs/rules.md lists no code of the form {pattern!r}"


def test_every_documented_reason_code_exists() -> None:
    literal, patterns = _codes_in_code()
    regexes = [re.compile(re.sub(r"\\\{\w+\\\}", "[a-z_]+", re.escape(p))) for p in patterns]
    for code in _documented_codes():
        concrete = code.replace("<role>", "weight")
        assert concrete in literal or any(r.fullmatch(concrete) for r in regexes), f"no rule gives {code!r}"


def test_rules_table_is_the_order_they_run_in() -> None:
    rows = _table((ROOT / "docs" / "rules.md").read_text(), "## The rules, in the order they run")
    assert [r[0].strip("`") for r in rows] == [rule.name for rule in converter.RULES]


# ---------------------------------------------------------------------------------------------
# The option records (docs/api.md)

RECORDS = [
    converter.TensorFlowOptions,
    converter.RewriteOptions,
    converter.VerifyOptions,
    converter.OutputOptions,
    converter.ConvertOptions,
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_api_lists_every_field_of_each_record_with_its_default(record: type) -> None:
    rows = _table((ROOT / "docs" / "api.md").read_text(), f"### `{record.__name__}`")
    documented = {r[0].strip("`"): r[1].strip("`") for r in rows}
    fields = {f.name: f for f in dataclasses.fields(record)}
    assert list(documented) == list(fields)
    for name, f in fields.items():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        assert eval(documented[name], vars(converter)) == default, (name, documented[name], default)


def test_api_lists_every_keyword_shortcut() -> None:
    rows = _table((ROOT / "docs" / "api.md").read_text(), "### Keyword shortcuts")
    documented: dict[str, str] = {}
    for keywords, sets in ((r[0], r[1]) for r in rows):
        for keyword in re.findall(r"`(\w+)`", keywords):
            documented[keyword] = sets
    assert set(documented) == {*converter.options.SHORTCUTS, "verify_outputs"}
    for keyword, targets in converter.options.SHORTCUTS.items():
        for record, field in targets:
            said = documented[keyword]
            assert f"`{record}.{field}`" in said or f"`{record}.<same name>`" in said, (keyword, said)


# ---------------------------------------------------------------------------------------------
# The JSON report (docs/cli.md)


def test_json_reference_lists_every_key(run_cli, tmp_path: Path) -> None:
    r = run_cli(ROOT / "models" / "seed_dense.onnx", "-o", tmp_path / "seed.onnx", "--report", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    reference = (ROOT / "docs" / "cli.md").read_text().split("## The JSON report", 1)[1]
    layout = (ROOT / "docs" / "layout.md").read_text()  # the policy's account lives with the policy
    for text, heading, value in [
        (reference, "### Top level", report),
        (reference, "### `rewrite`", report["rewrite"]),
        (layout, "## In the report", report["rewrite"]["layout"]),
        (reference, "### `rewrite.decisions[]`", report["rewrite"]["decisions"][0]),
        (reference, "### `verify`", report["verify"]),
        (reference, "### `verify.outputs[]`", report["verify"]["outputs"][0]),
        (reference, "### `verify.layers[]`", report["verify"]["layers"][0]),
    ]:
        documented = {k for row in _table(text, heading) for k in re.findall(r"`(\w+)`", row[0])}
        assert documented == set(value), (heading, sorted(documented - set(value)), sorted(set(value) - documented))


# ---------------------------------------------------------------------------------------------
# Links, machine paths, history

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_somewhere(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if path in PENDING_PAGES and not path.exists():
            continue
        assert path.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(path), f"{page.name}: {target}: no such heading"


MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users)/")
HISTORY = re.compile(r"\b(?:issue|issues) \d+|\bthis session\b|\bhelper engineer\b|\bmeasured by\b", re.I)


@pytest.mark.parametrize("page", [*PAGES, *sorted((ROOT / "docs").glob("_*.md")), ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_no_path_of_a_particular_machine(page: Path) -> None:
    found = MACHINE_PATH.findall(page.read_text())
    assert not found, f"{page.name} names paths of a particular machine"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_speak_of_the_project_not_its_history(page: Path) -> None:
    found = HISTORY.findall(page.read_text())
    assert not found, f"{page.name}: {found} (history goes to CHANGELOG.md)"
