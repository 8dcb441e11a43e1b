"""Train a detector. Same as `detector train`.

    python tools/train.py ARGS   # is: detector train ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
