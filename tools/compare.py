"""Train ours and ultralytics' YOLOv8 on the same data and budget, one evaluator. Same as `detector compare`.

    python tools/compare.py ARGS   # is: detector compare ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
