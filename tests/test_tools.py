"""tools/<name>.py is `detector <command>`: each file, run as a script, prints its command's help.

The other end-to-end tests call detector.cli.main in the test process (tests/cli_runner.py); this
runs each file itself as ``python tools/<name>.py`` would (as __main__, with tools/ first on
sys.path), so a file that called another command, or none, fails here."""
import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

from detector.cli import main
from tests.cli_runner import TOOLS

ROOT = Path(__file__).resolve().parents[1]


def test_every_tool_file_is_in_the_table():
    assert sorted(TOOLS) == sorted(p.name for p in (ROOT / "tools").glob("*.py"))


def printed_help(call) -> tuple[str, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = call()
        except SystemExit as exit:
            code = exit.code
    return out.getvalue(), code


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_the_script_runs_its_command(tool, monkeypatch):
    if tool == "bench.py":
        monkeypatch.chdir(ROOT)  # benchmarks/ is found from the working folder
    expected, expected_code = printed_help(lambda: main([TOOLS[tool], "--help"]))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "tools" / tool), "--help"])
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    printed, code = printed_help(lambda: runpy.run_path(str(ROOT / "tools" / tool), run_name="__main__"))
    assert printed == expected and printed.strip(), tool
    assert code in (0, None) and expected_code in (0, None), (tool, code)
