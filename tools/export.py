"""Export a checkpoint to ONNX and check the file against PyTorch. Same as `detector export`.

    python tools/export.py ARGS   # is: detector export ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
