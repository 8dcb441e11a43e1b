"""Convert one split of a YOLO-format data set to a COCO json (image ids = sorted image index,
category ids = class + 1): python datasets/yolo2coco.py ROOT SPLIT [--data-yaml Y | --names a b] --out F"""
import argparse

from detector.data.yolo import read_names, yolo_to_coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("split")
    parser.add_argument("--data-yaml", default=None)
    parser.add_argument("--names", nargs="*", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(yolo_to_coco(args.root, args.split, read_names(args.data_yaml, args.names), args.out))


if __name__ == "__main__":
    main()
