"""Evaluate a checkpoint with the COCO metric. Same as `detector eval`.

    python tools/eval.py ARGS   # is: detector eval ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
