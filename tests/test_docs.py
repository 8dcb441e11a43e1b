"""The docs cannot drift from the code: every command README.md and docs/*.md show parses and
composes, every relative link resolves, and the README stays short.

A command is a line of a fenced code block (not a ``python`` block) whose first word, after leading
``VAR=value`` assignments and a ``torchrun ...`` wrapper, is ``python tools/<name>.py`` or
``detector``. It is shlex-split (``# comments`` dropped, ``\\`` continuations joined, ``$VAR`` taken
from a ``VAR=value`` line earlier in the same block) and handed to ``detector.cli.check_command``:
the subcommand, then its arguments. That checks the overrides and composes the config of a Hydra
subcommand, or parses the arguments of an argparse one, and runs nothing. ``python -m pkg.mod`` and
``python path/to/x.py`` lines that name this checkout's own modules must name files that exist.
Test ids are ``file:line``.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_runner import TOOLS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260

# tools/<name>.py -> the `detector` subcommand that runs the same code
TOOL_SUBCOMMANDS = {file.removesuffix(".py"): command for file, command in TOOLS.items()}
SKIPPED_LANGUAGES = {"python", "py", "pycon", "text", "json", "yaml"}  # not shell commands
OWN_TOP_LEVEL = {"detector", "tools", "benchmarks", "datasets", "tests"}  # folders of this checkout
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
SEPARATORS = {"&&", "||", ";", "|"}
COMMAND_START = re.compile(r"\s*(\w+=\S*\s+)*(python3? tools/|python3? -m detector\b|detector(\s|$)|torchrun\s)")


@dataclass(frozen=True)
class Command:
    where: str  # "README.md:42"
    words: tuple[str, ...]  # the command itself, env assignments and wrappers removed


def _shell_lines(path: Path):
    """(line number, logical line, variables set earlier in the block) for each fenced shell line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fence, skip, variables = None, False, {}
    pending, start = "", 0
    for number, line in enumerate(lines, start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, skip, variables = match.group(1), match.group(2).lower() in SKIPPED_LANGUAGES, {}
            continue
        if match and match.group(1).startswith(fence) and not match.group(2):
            fence = None
            continue
        if skip:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = pending + line, ""
        yield start, logical, variables


def _expand(text: str, variables: dict[str, str], where: str) -> str:
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise NameError(f"${name} is not set by an earlier line of its code block")
        return variables[name]

    return VARIABLE.sub(value, text)


def _split_commands(words: list[str]):
    command = []
    for word in words:
        if word in SEPARATORS:
            if command:
                yield command
            command = []
        else:
            command.append(word)
    if command:
        yield command


def collect() -> list[Command]:
    commands = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for number, line, variables in _shell_lines(path):
            where = f"{name}:{number}"
            try:
                words = shlex.split(line, comments=True)
            except ValueError as error:  # an unbalanced quote: a broken command is a broken doc
                if COMMAND_START.match(line):
                    commands.append(Command(where, ("<unparsable>", str(error))))
                continue
            try:
                if len(words) == 1 and ASSIGNMENT.match(words[0]):  # VAR=value on its own line
                    key, value = words[0].split("=", 1)
                    variables[key] = _expand(value, variables, where)
                    continue
                if "$" in line:
                    words = shlex.split(_expand(line, variables, where), comments=True)
            except NameError as error:
                if COMMAND_START.match(line):
                    commands.append(Command(where, ("<unparsable>", str(error))))
                continue
            for command in _split_commands(words):
                while command and ASSIGNMENT.match(command[0]):  # PYTHONPATH=... python tools/...
                    command = command[1:]
                if command[:1] == ["torchrun"]:  # torchrun --nproc_per_node=8 tools/train.py ...
                    script = next((i for i, word in enumerate(command) if word.endswith(".py")), None)
                    command = ["python", *command[script:]] if script is not None else command
                if command:
                    commands.append(Command(where, tuple(command)))
    return commands


COMMANDS = collect()


def _argv(command: Command) -> list[str] | None:
    """The check_command argv of a `python tools/<x>.py` or `detector` command, else None."""
    words = list(command.words)
    if words[0] == "detector":
        return words[1:]
    if words[0] in ("python", "python3") and words[1:3] == ["-m", "detector"]:
        return words[3:]
    if words[0] in ("python", "python3") and len(words) > 1 and words[1].startswith("tools/"):
        name = words[1].removeprefix("tools/").removesuffix(".py")
        return [TOOL_SUBCOMMANDS.get(name, words[1]), *words[2:]]  # an unknown tool: check_command refuses it
    return None


def _first_of_each(commands: list[Command]) -> list[Command]:
    """One test per distinct command (the README and the pages repeat some): its first place."""
    seen, kept = set(), []
    for command in commands:
        if command.words not in seen:
            seen.add(command.words)
            kept.append(command)
    return kept


CLI_COMMANDS = _first_of_each([c for c in COMMANDS if c.words[0] == "<unparsable>" or _argv(c) is not None])
OWN_SCRIPTS = _first_of_each([c for c in COMMANDS if c.words[0] in ("python", "python3") and len(c.words) > 1
                              and _argv(c) is None])


@pytest.fixture(scope="module")
def check_command():
    from detector.cli import check_command

    return check_command


def test_the_docs_show_commands():
    """The collection itself works: the README's quick start is among the commands found."""
    assert any(_argv(c) == ["train"] for c in CLI_COMMANDS if c.where.startswith("README.md")), CLI_COMMANDS
    assert len(CLI_COMMANDS) > 30


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=[c.where for c in CLI_COMMANDS])
def test_command_parses_and_composes(command, check_command):
    assert command.words[0] != "<unparsable>", f"{command.where}: cannot read the command: {command.words[1]}"
    if command.words[1:2] and command.words[1].startswith("tools/"):
        assert (ROOT / command.words[1]).is_file(), f"{command.where}: there is no {command.words[1]}"
    argv = _argv(command)
    try:
        check_command(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):  # `--help` exits 0 after printing
            pytest.fail(f"{command.where}: `{shlex.join(command.words)}` is refused: {exit_}")
    except ValueError as error:
        pytest.fail(f"{command.where}: `{shlex.join(command.words)}` is refused: {error}")


@pytest.mark.parametrize("argv, says", [
    (["train", "epoch=1"], "epochs"),
    (["train", "data.data_yaml=my.yaml"], "data=yolo"),
    (["train", "loss_cls=qfll"], "qfl"),
    (["compare"], ""),  # the data.yaml argument is required
    (["bench", "no_such_benchmark"], ""),
    (["no-such-subcommand"], ""),
])
def test_check_command_refuses_bad_commands(argv, says, check_command, capsys):
    """A check that passed everything would make the test above worthless."""
    with pytest.raises((SystemExit, ValueError)) as raised:
        check_command(argv)
    if isinstance(raised.value, SystemExit):
        assert raised.value.code not in (0, None)
    captured = capsys.readouterr()
    assert says in str(raised.value) + captured.err + captured.out


def _module_file(module: str) -> list[Path]:
    base = ROOT.joinpath(*module.split("."))
    return [base.with_suffix(".py"), base / "__main__.py"]


@pytest.mark.parametrize("command", OWN_SCRIPTS, ids=[c.where for c in OWN_SCRIPTS])
def test_scripts_and_modules_exist(command):
    """`python -m benchmarks.coco_scale ...` and `python datasets/make_shapes.py ...` name real files."""
    words = command.words
    if words[1] == "-m":
        module = words[2]
        if module.split(".")[0] in OWN_TOP_LEVEL:
            assert any(p.is_file() for p in _module_file(module)), f"{command.where}: no module {module} here"
    elif words[1].endswith(".py") and words[1].split("/")[0] in OWN_TOP_LEVEL:
        assert (ROOT / words[1]).is_file(), f"{command.where}: no file {words[1]}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; details belong in docs/"


def test_readme_shows_the_ci_commands():
    """CI (.ci/run) installs and tests exactly as the README says: the two must agree."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    wanted = [line.strip() for line in ci if line.strip().startswith(("pip install", "pytest"))]
    assert wanted, "no pip install / pytest line in .ci/run"
    readme = [line for _, line, _ in _shell_lines(ROOT / "README.md")]
    for command in wanted:
        assert any(command in line for line in readme), f"README.md shows no `{command}` in a code block"


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _links():
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        in_code = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if FENCE.match(line):
                in_code = not in_code
                continue
            if in_code:
                continue
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    yield pytest.param(path, target, id=f"{name}:{number}")


@pytest.mark.parametrize("path, target", list(_links()))
def test_relative_links_resolve(path, target):
    file, _, anchor = target.partition("#")
    resolved = (path.parent / file).resolve() if file else path
    assert resolved.exists(), f"{target}: no such file"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{target}: no heading #{anchor} in {resolved.name}"
