"""Write a data set in ultralytics' YOLO layout. Same as `detector export-yolo`.

    python tools/export_yolo.py ARGS   # is: detector export-yolo ARGS (detector/cli); --help lists the options
"""
import sys

from detector.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-yolo", *sys.argv[1:]]))
