"""Convert an ultralytics YOLOv8 detection checkpoint to ours. Same as `detector convert`.

    python tools/convert.py ARGS   # is: detector convert ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
