"""Collect a sweep into a markdown table and a chart, each arm against a baseline arm. Same as `detector ablate`.

    python tools/ablate.py ARGS   # is: detector ablate ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
