"""ultralytics' data.yaml, read as its users write it: ``path``, ``train``, ``val``, ``test``, ``names``.

The rules follow ultralytics (``data/utils.py`` check_det_dataset, ``data/base.py`` get_img_files,
``img2label_paths``), read from its source; ultralytics itself is never imported:

- ``path``: the data set root. Absent: the yaml's folder. Relative: tried against the yaml's
  folder first (so that a data set folder with its own yaml, such as COCO128's ``path: .``, works
  from any directory), then the working directory and ultralytics' ``datasets_dir`` setting
  (``$YOLO_CONFIG_DIR`` or ``~/.config/Ultralytics``/settings.json), ultralytics' two places.
- ``train`` / ``val`` / ``test``: a folder of images (searched recursively, following symbolic
  links to folders and skipping hidden names, as ultralytics' ``glob(**/*.*)`` does; a link back
  to a folder above it is reported and not followed), a .txt file listing
  image paths, one image, or a list of any of these; each relative to ``path`` (an entry
  ``../x`` missing there is also tried as ``x``, as ultralytics does). In a list file a line
  ``./x`` is relative to the list file's folder (ultralytics' rule); any other relative line is
  tried against the list file's folder, then ``path``, then the working directory.
- ``names``: a list, or a mapping {0: name, ...} with keys 0..n-1, of strings or numbers (made
  strings, as ultralytics does); without names, ``nc`` gives ``class0``.. as in ultralytics; with
  neither the file is refused, and so is a blank name (null), a list or a mapping.
- the file: UTF-8 (a byte-order mark ignored), a YAML mapping.
- the label file of an image: the last ``/images/`` of its path replaced by ``/labels/``, the
  suffix by ``.txt``.

Every error names the file, the key and the path at fault; nothing falls back to another split.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger("detector")
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
        content = yaml.safe_load(file.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DataYamlError(f"data.yaml {file}: not UTF-8 text (byte {error.start}: "
                            f"{error.object[error.start:error.start + 1]!r}); save it as UTF-8") from None
    except OSError as error:
        raise DataYamlError(f"data.yaml {file}: cannot be read ({error.strerror or error})") from None
    except (yaml.YAMLError, RecursionError) as error:
        raise DataYamlError(f"data.yaml {file}: not valid YAML ({error})") from None
    if not isinstance(content, dict):
        raise DataYamlError(f"data.yaml {file}: expected a mapping of keys (path, train, val, names), "
                            f"got {type(content).__name__}")
    return content


def has_splits(content: dict) -> bool:
    """Whether a data.yaml names its splits (else it only gives names, for a ``root`` layout)."""
    return any(content.get(key) for key in SPLIT_KEYS)


def _name(value, file: Path | str, where: str) -> str:
    """One class name: a string, or a number or boolean made one (ultralytics' ``str(v)``);
    nothing (a blank entry), a list or a mapping is refused."""
    if isinstance(value, (str, int, float)):
        return str(value)
    raise DataYamlError(f"data.yaml {file}: key 'names' {where}: a class name must be a string, got {value!r}")


def _class_key(key, file: Path | str) -> int:
    """A key of a names mapping: an integer, or a string of one."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str):
        try:
            return int(key.strip())
        except ValueError:
            pass
    raise DataYamlError(f"data.yaml {file}: key 'names' must map integers to names, got the key {key!r}")


def parse_names(content: dict, file: Path | str) -> list[str]:
    raw = content.get("names")
    if raw is None:
        nc = content.get("nc")
        if isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
            return [f"class{i}" for i in range(nc)]
        raise DataYamlError(f"data.yaml {file}: key 'names' is missing (a list, or a mapping 0: name)")
    if isinstance(raw, list) and raw:
        return [_name(name, file, f"item {i}") for i, name in enumerate(raw)]
    if isinstance(raw, dict) and raw:
        keyed = {}
        for key, name in raw.items():
            number = _class_key(key, file)
            if number in keyed:
                raise DataYamlError(f"data.yaml {file}: key 'names' gives class {number} twice")
            keyed[number] = _name(name, file, f"key {key!r}")
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
    key = "data.root" if root is not None else "path"
    if isinstance(given, bool) or not isinstance(given, (str, os.PathLike, int, float)):
        raise DataYamlError(f"data.yaml {file}: key '{key}' must be a folder path, got {given!r}")
    given = Path(str(given)).expanduser()
    if given.is_absolute():
        if not _is_dir(given):
            raise DataYamlError(f"data.yaml {file}: {key} {given} is not a folder")
        return given
    tried = [file.parent / given, Path.cwd() / given]
    datasets_dir = ultralytics_datasets_dir()
    if datasets_dir is not None:
        tried.append(datasets_dir / given)
    for candidate in tried:
        if _is_dir(candidate):
            return candidate.resolve()
    raise DataYamlError(f"data.yaml {file}: {key} {given} is not a folder (tried {', '.join(map(str, tried))})")


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, False for a name the system refuses (too long, a NUL byte, a link loop)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_entry(entry: str, root: Path, file: Path, key: str) -> Path:
    """One ``train``/``val``/``test`` entry, relative to the root; must exist."""
    path = root / Path(entry).expanduser()  # an absolute entry stays itself
    if not _exists(path) and entry.startswith("../"):
        path = root / entry[3:]
    if not _exists(path):
        raise DataYamlError(f"data.yaml {file}: key '{key}': {entry} does not exist (looked for {path})")
    if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES and path.suffix.lower() != ".txt":
        raise DataYamlError(f"data.yaml {file}: key '{key}': {path} is neither a folder, a .txt list "
                            "of images nor an image")
    try:
        return path.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a link loop (Python < 3.13)
        raise DataYamlError(f"data.yaml {file}: key '{key}': {path} cannot be resolved ({error})") from None


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
        if _exists(base / path):
            return base / path
    return list_file.parent / path  # reported as missing under the list file's folder


def folder_images(folder: Path) -> list[Path]:
    """The image files under ``folder``, as ultralytics' ``glob(folder/**/*.*, recursive=True)``
    finds them: symbolic links to folders followed, hidden files and folders skipped; the paths
    are kept as found (not resolved), so that an image's label file follows the path it was
    listed by. A link to a folder that holds it (a loop) is reported once and not followed."""
    found, loops = [], []
    stack = [(os.fspath(folder), frozenset())]  # (folder, (device, inode) of the folders above it, itself included)
    while stack:
        path, above = stack.pop()
        try:
            stat = os.stat(path)
            above = above | {(stat.st_dev, stat.st_ino)}
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:  # unreadable folder: what it holds cannot be listed
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():  # follows links
                    inner = entry.stat()
                    if (inner.st_dev, inner.st_ino) in above:
                        loops.append(entry.path)
                    else:
                        stack.append((entry.path, above))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    found.append(Path(entry.path))
            except OSError:  # a broken link, a file gone meanwhile
                continue
    if loops:
        log.warning("%s: %d symbolic link(s) to a folder above them not followed (a loop): %s", folder,
                    len(loops), ", ".join(loops[:5]))
    return found


def split_images(data: DataYaml, key: str) -> SplitImages:
    """The images of split ``key`` (folders searched recursively, list files read line by line)."""
    if key not in data.splits:
        raise DataYamlError(f"data.yaml {data.file}: no key '{key}' (it has {', '.join(data.splits)})")
    images: set[Path] = set()
    missing = []
    for entry in data.splits[key]:
        if entry.is_dir():
            images.update(folder_images(entry))
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            images.add(entry)
        else:
            try:
                lines = entry.read_bytes().decode("utf-8-sig").splitlines()
            except UnicodeDecodeError as error:
                raise DataYamlError(f"data.yaml {data.file}: key '{key}': the list {entry} is not UTF-8 text "
                                    f"(byte {error.start})") from None
            except OSError as error:
                raise DataYamlError(f"data.yaml {data.file}: key '{key}': the list {entry} cannot be read "
                                    f"({error.strerror or error})") from None
            for number, line in enumerate(lines, start=1):
                line = line.strip()
                if not line or Path(line).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                path = _listed_image(line, entry, data.root)
                if _exists(path) and path.is_file():
                    images.add(Path(os.path.abspath(path)))  # not resolve(): a symlink keeps its labels
                else:
                    missing.append(f"{entry.name}:{number}")
    if not images:
        shown = ", ".join(str(e) for e in data.splits[key])
        raise DataYamlError(f"data.yaml {data.file}: key '{key}': no images found in {shown}")
    return SplitImages(sorted(images, key=str), missing)
