"""Generate the synthetic shapes set ahead of time: python datasets/make_shapes.py [--root DIR]"""
import argparse

from detector.data.synthetic import ensure_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=None, help="cache folder (default $DETECTOR_CACHE or ~/.cache/detector)")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=640)
    args = parser.parse_args()
    print(ensure_shapes(args.root, args.num_train, args.num_val, args.seed, args.min_size, args.max_size))


if __name__ == "__main__":
    main()
