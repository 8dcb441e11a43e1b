"""Benchmarks: speed and memory figures, one sub-benchmark per part of the framework.

    python tools/bench.py                    # all of them
    python tools/bench.py losses assigner    # some
    python tools/bench.py model --quick      # fewer repeats / smaller sizes, for a smoke check
    python tools/bench.py --help             # the list of sub-benchmarks

A thin entry to ``benchmarks/cli.py``: the benchmarks live in the checkout's ``benchmarks/``
package, not in the installed library, so the checkout goes first on ``sys.path``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cli import main  # noqa: E402  (after the checkout is on sys.path)

if __name__ == "__main__":
    sys.exit(main())
