"""Write a grid of augmented training images with their boxes and class names. Same as `detector show-data`.

    python tools/show_data.py ARGS   # is: detector show-data ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["show-data", *sys.argv[1:]]))
