"""Detect objects in images with a checkpoint or an exported ONNX file. Same as `detector predict`.

    python tools/predict.py ARGS   # is: detector predict ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
