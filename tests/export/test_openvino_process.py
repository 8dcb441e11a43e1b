"""The ``openvino``-marked tests (test_openvino.py, test_int8.py) in a pytest process of their own,
when the session selected other tests too (tests/conftest.py says why). This test fails with their
output when any of them fails, and is skipped where the session runs them itself."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_openvino_tests_pass_in_a_process_of_their_own(openvino_node_ids, tmp_path):
    if not openvino_node_ids:
        pytest.skip("no openvino test was handed over: they run in this process, or openvino is not installed")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rfEs",
               f"--basetemp={tmp_path / 'basetemp'}", *openvino_node_ids]
    log = tmp_path / "openvino_tests.log"  # a file, not a pipe: a process openvino leaves behind cannot hold it open
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, timeout=1200).returncode
    output = log.read_text()
    summary = output.strip().splitlines()[-1:] or ["no output"]
    assert code == 0, f"{len(openvino_node_ids)} openvino tests, exit code {code} ({summary[0]}):\n{output[-8000:]}"
    assert " passed" in summary[0]
