"""Run ``tools/<name>.py ARGS`` (that is, ``detector <command> ARGS``) inside the test process.

Every tool is one line over ``detector.cli.main``; running main here gives the same exit status,
standard output and standard error as a subprocess would, without the interpreter start and the
import of torch (about 5 s of CPU each on CI's two cores). An uncaught exception is not turned into
a status: it fails the test with its traceback, as a traceback in a user's terminal would be a bug.
The real subprocess is kept where the process itself is the subject (Ctrl-C, torchrun, the wheel,
an address-space cap, a library hidden from the interpreter) and once per tool in tests/test_tools.py.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import warnings

from detector.cli import main

# tools/<name>.py -> the command it runs (each file is `sys.exit(main([command, *sys.argv[1:]]))`)
TOOLS = {"train.py": "train", "eval.py": "eval", "predict.py": "predict", "export.py": "export",
         "show_data.py": "show-data", "convert.py": "convert", "export_yolo.py": "export-yolo",
         "compare.py": "compare", "ablate.py": "ablate", "bench.py": "bench"}


def python_default_warnings() -> None:
    """The warning filters and printing of a fresh interpreter (pytest records warnings instead)."""
    warnings.resetwarnings()
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(tool: str, *args) -> subprocess.CompletedProcess:
    """``tools/<tool> ARGS`` in this process: a CompletedProcess with returncode, stdout and stderr."""
    argv = [TOOLS.get(tool, tool), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # the command configures logging with force=True
    cwd = os.getcwd()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        python_default_warnings()
        try:
            code = main(argv)
        except SystemExit as exit:  # what the interpreter makes of sys.exit(...)
            code = exit.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        finally:
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
            for handler in handlers:
                if handler not in root.handlers:
                    root.addHandler(handler)
            root.setLevel(level)
            os.chdir(cwd)
    return subprocess.CompletedProcess(argv, int(code or 0), out.getvalue(), err.getvalue())
