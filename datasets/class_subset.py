"""A YOLO data set with only some of its classes: the same pictures (linked), the label lines of
the kept classes renumbered 0..k-1 in the order given, and ``OUT/data.yaml``. The objects of the
other classes stay in the pictures, unlabelled: a fine-tuning set whose classes are a subset of
what a checkpoint knows (as a person detector fine-tuned from COCO weights).

    python datasets/class_subset.py shapes_yolo/data.yaml shapes_star --classes star
    python datasets/class_subset.py coco128.yaml vehicles --classes car truck bus

Label lines are copied as they are (a line that is not ``cls cx cy w h ...`` is copied only when it
is of a kept class, and reported by the reader that trains on it, as any other).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from detector.data.data_yaml import label_path, read_data_yaml, split_images
from detector.data.yolo_export import link_or_copy


def subset_lines(text: str, mapping: dict[int, int]) -> list[str]:
    """The label lines of a YOLO label file whose class is in ``mapping`` (old id -> new id), renumbered."""
    kept = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit() and int(fields[0]) in mapping:
            kept.append(" ".join([str(mapping[int(fields[0])]), *fields[1:]]))
    return kept


def build(data_yaml: str | Path, out: str | Path, classes: list[str]) -> dict[str, int]:
    """Write the subset under ``out``; returns the objects kept per split."""
    data, out = read_data_yaml(data_yaml), Path(out)
    unknown = [name for name in classes if name not in data.names]
    if unknown or not classes:
        raise SystemExit(f"{data.file}: no class {', '.join(map(repr, unknown))}; it has {', '.join(data.names)}"
                         if unknown else "give at least one class to keep (--classes)")
    mapping = {data.names.index(name): new for new, name in enumerate(classes)}
    kept = {}
    for split in ("train", "val"):
        images = split_images(data, split).images
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        kept[split] = 0
        for image in images:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            link_or_copy(image, out / "images" / split / image.name)
            source = label_path(image)
            lines = subset_lines(source.read_text(encoding="utf-8"), mapping) if source.is_file() else []
            (out / "labels" / split / f"{image.stem}.txt").write_text("".join(f"{line}\n" for line in lines))
            kept[split] += len(lines)
    (out / "data.yaml").write_text(yaml.safe_dump({"path": str(out.resolve()), "train": "images/train",
                                                   "val": "images/val", "names": dict(enumerate(classes))},
                                                  sort_keys=False))
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the source data.yaml (YOLO layout, train and val splits)")
    parser.add_argument("out", help="the folder to write (images linked, labels, data.yaml)")
    parser.add_argument("--classes", nargs="+", required=True, help="the class names to keep, in their new order")
    args = parser.parse_args(argv)
    kept = build(args.data, args.out, args.classes)
    print(f"wrote {Path(args.out) / 'data.yaml'}: {', '.join(args.classes)}; "
          f"{kept['train']} train / {kept['val']} val objects kept")


if __name__ == "__main__":
    main()
