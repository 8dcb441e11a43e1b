"""ultralytics' data.yaml, read as its users write it: ``path``, ``train``, ``val``, ``test``, ``names``.

The rules follow ultralytics (``data/utils.py`` check_det_dataset, ``data/base.py`` get_img_files,
``img2label_paths``), read from its source; ultralytics itself is never imported:

- ``path``: the data set root. Absent: the yaml's folder. Relative: tried against the yaml's
  folder first (so that a data set folder with its own yaml, such as COCO128's ``path: .``, works
  from any directory), then the working directory and ultralytics' ``datasets_dir`` setting
  (``$YOLO_CONFIG_DIR`` or ``~/.config/Ultralytics``/settings.json), ultralytics' two places.
- ``train`` / ``val`` / ``test``: a folder of images (searched recursively), a .txt file listing
  image paths, one image, or a list of any of these; each relative to ``path`` (an entry
  ``../x`` missing there is also tried as ``x``, as ultralytics does). In a list file a line
  ``./x`` is relative to the list file's folder (ultralytics' rule); any other relative line is
  tried against the list file's folder, then ``path``, then the working directory.
- ``names``: a list, or a mapping {0: name, ...} with keys 0..n-1; without names, ``nc`` gives
  ``class0``.. as in ultralytics; with neither the file is refused.
- the label file of an image: the last ``/images/`` of its path replaced by ``/labels/``, the
  suffix by ``.txt``.

Every error names the file, the key and the path at fault; nothing falls back to another split.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_KEYS = ("train", "val", "test")


class DataYamlError(ValueError):
    """A data.yaml that cannot be used; the message names the file, the key and the path."""


@dataclass(frozen=True)
class DataYaml:
    """A checked data.yaml: every split entry exists (a folder, a list file or an image)."""

    file: Path
    root: Path  # the resolved ``path``
    names: list[str]
    splits: dict[str, tuple[Path, ...]]  # split key -> its entries, absolute


@dataclass
class SplitImages:
    """The images of one split, sorted, and the listed images that do not exist (``file:line``)."""

    images: list[Path]
    missing: list[str] = field(default_factory=list)


def label_path(image: Path | str) -> Path:
    """ultralytics' img2label_paths: the last ``/images/`` becomes ``/labels/``; suffix ``.txt``."""
    text = os.fspath(image)
    marker, replacement = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, found, tail = text.rpartition(marker)
    text = head + replacement + tail if found else text
    return Path(text.rsplit(".", 1)[0] + ".txt")


def load_mapping(file: Path | str) -> dict:
    file = Path(file).expanduser()
    if not file.is_file():
        raise DataYamlError(f"data.yaml {file}: no such file")
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as error:
        raise DataYamlError(f"data.yaml {file}: not valid YAML ({error})") from error
    if not isinstance(content, dict):
        raise DataYamlError(f"data.yaml {file}: expected a mapping of keys (path, train, val, names), "
                            f"got {type(content).__name__}")
    return content


def has_splits(content: dict) -> bool:
    """Whether a data.yaml names its splits (else it only gives names, for a ``root`` layout)."""
    return any(content.get(key) for key in SPLIT_KEYS)


def parse_names(content: dict, file: Path | str) -> list[str]:
    raw = content.get("names")
    if raw is None:
        if isinstance(content.get("nc"), int) and content["nc"] > 0:
            return [f"class{i}" for i in range(content["nc"])]
        raise DataYamlError(f"data.yaml {file}: key 'names' is missing (a list, or a mapping 0: name)")
    if isinstance(raw, list) and raw:
        return [str(name) for name in raw]
    if isinstance(raw, dict) and raw:
        try:
            keyed = {int(key): str(name) for key, name in raw.items()}
        except (TypeError, ValueError):
            raise DataYamlError(f"data.yaml {file}: key 'names' must map integers to names, "
                                f"got keys {list(raw)[:5]}") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise DataYamlError(f"data.yaml {file}: key 'names' must have the keys 0..{len(keyed) - 1}, "
                                f"got {sorted(keyed)[:5]}..{sorted(keyed)[-1]}")
        return [keyed[i] for i in range(len(keyed))]
    raise DataYamlError(f"data.yaml {file}: key 'names' must be a non-empty list or mapping, got {raw!r}")


def ultralytics_datasets_dir() -> Path | None:
    """ultralytics' ``datasets_dir`` setting, read from its settings.json when there is one."""
    config_dir = os.environ.get("YOLO_CONFIG_DIR")
    folder = Path(config_dir) if config_dir else Path.home() / ".config" / "Ultralytics"
    try:
        value = json.loads((folder / "settings.json").read_text()).get("datasets_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(value) if value else None


def resolve_root(content: dict, file: Path, root: str | Path | None = None) -> Path:
    """The data set root: ``root`` if given (it replaces the yaml's ``path``), else ``path``."""
    given = root if root is not None else content.get("path")
    if given is None or str(given) == "":
        return file.parent.resolve()
    given = Path(str(given)).expanduser()
    key = "data.root" if root is not None else "path"
    if given.is_absolute():
        if not given.is_dir():
            raise DataYamlError(f"data.yaml {file}: {key} {given} is not a folder")
        return given
    tried = [file.parent / given, Path.cwd() / given]
    datasets_dir = ultralytics_datasets_dir()
    if datasets_dir is not None:
        tried.append(datasets_dir / given)
    for candidate in tried:
        if candidate.is_dir():
            return candidate.resolve()
    raise DataYamlError(f"data.yaml {file}: {key} {given} is not a folder (tried {', '.join(map(str, tried))})")


def resolve_entry(entry: str, root: Path, file: Path, key: str) -> Path:
    """One ``train``/``val``/``test`` entry, relative to the root; must exist."""
    path = root / Path(entry).expanduser()  # an absolute entry stays itself
    if not path.exists() and entry.startswith("../"):
        path = root / entry[3:]
    if not path.exists():
        raise DataYamlError(f"data.yaml {file}: key '{key}': {entry} does not exist (looked for {path})")
    if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES and path.suffix.lower() != ".txt":
        raise DataYamlError(f"data.yaml {file}: key '{key}': {path} is neither a folder, a .txt list "
                            "of images nor an image")
    return path.resolve()


def read_data_yaml(file: str | Path, root: str | Path | None = None) -> DataYaml:
    """Parse and check a data.yaml; ``root`` (data.root) replaces its ``path`` when given."""
    file = Path(file).expanduser().resolve()
    content = load_mapping(file)
    if content.get("val") is None and content.get("validation") is not None:
        content["val"] = content["validation"]  # ultralytics renames it too
    for key in ("train", "val"):
        if not content.get(key):
            raise DataYamlError(f"data.yaml {file}: key '{key}' is missing or empty "
                                "('train' and 'val' are required, as in ultralytics)")
    names = parse_names(content, file)
    base = resolve_root(content, file, root)
    splits = {}
    for key in SPLIT_KEYS:
        value = content.get(key)
        if not value:
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(entry, str) for entry in entries):
            raise DataYamlError(f"data.yaml {file}: key '{key}' must be a path or a list of paths, got {value!r}")
        splits[key] = tuple(resolve_entry(entry, base, file, key) for entry in entries)
    return DataYaml(file=file, root=base, names=names, splits=splits)


def _listed_image(line: str, list_file: Path, root: Path) -> Path:
    if line.startswith("./"):
        return list_file.parent / line[2:]
    path = Path(line).expanduser()
    if path.is_absolute():
        return path
    for base in (list_file.parent, root, Path.cwd()):
        if (base / path).exists():
            return base / path
    return list_file.parent / path  # reported as missing under the list file's folder


def split_images(data: DataYaml, key: str) -> SplitImages:
    """The images of split ``key`` (folders searched recursively, list files read line by line)."""
    if key not in data.splits:
        raise DataYamlError(f"data.yaml {data.file}: no key '{key}' (it has {', '.join(data.splits)})")
    images: set[Path] = set()
    missing = []
    for entry in data.splits[key]:
        if entry.is_dir():
            images.update(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            images.add(entry)
        else:
            lines = entry.read_text(encoding="utf-8-sig").splitlines()
            for number, line in enumerate(lines, start=1):
                line = line.strip()
                if not line or Path(line).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                path = _listed_image(line, entry, data.root)
                if path.is_file():
                    images.add(Path(os.path.abspath(path)))  # not resolve(): a symlink keeps its labels
                else:
                    missing.append(f"{entry.name}:{number}")
    if not images:
        shown = ", ".join(str(e) for e in data.splits[key])
        raise DataYamlError(f"data.yaml {data.file}: key '{key}': no images found in {shown}")
    return SplitImages(sorted(images, key=str), missing)
