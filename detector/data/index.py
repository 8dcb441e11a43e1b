"""A data set's labels as flat arrays, and the label cache that saves re-reading them.

``FlatIndex`` (M images, N boxes in all): one ``boxes [N, 4]`` float32 xyxy px array, ``labels
[N]`` int64, ``offsets [M + 1]`` (image i owns rows ``offsets[i]:offsets[i + 1]``), ``image_ids
[M]``, ``sizes [M, 2]`` (width, height; 0 when unknown) and ``files [M]`` (UTF-8 bytes, relative
to ``root``). A handful of numpy arrays rather than a Python object per image: COCO's 118k images
take about 20 MB, and DataLoader workers forked from the main process share the pages instead of
copying them one reference count at a time.

The label cache (``<annotation file>.<key hash>.cache.npz``, like ultralytics' ``labels.cache``)
holds the index and the bad-input report. Its key is the annotation file's absolute path, size
and modification time, the options that change the labels and ``FORMAT_VERSION``; a data set of
many files (YOLO's one label file per image) gives instead a ``fingerprint`` of every file's
path, size and modification time (``files_fingerprint``: one stat per file, nothing read), and
its ``source`` only names the cache. A cache whose key differs is never used (the file name
carries a hash of the key, and the key is checked again inside). It is written beside the
annotation file (or ``source``), or under ``$DETECTOR_CACHE`` (else ``~/.cache/detector``)
``/labels`` when that folder is not writable; when neither can be written, this is reported once
and the data set is used without a cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("detector")
# 2: image sizes as shown (EXIF orientation applied), YOLO polygons read as boxes, COCO jsons checked
FORMAT_VERSION = 2
_reported: set[str] = set()  # warnings already given in this process


def warn_once(message: str) -> None:
    if message not in _reported:
        _reported.add(message)
        log.warning(message)


def user_cache_dir() -> Path:
    return Path(os.environ.get("DETECTOR_CACHE", Path.home() / ".cache" / "detector"))


@dataclass
class FlatIndex:
    root: str
    files: np.ndarray  # [M] bytes (UTF-8), relative to root
    image_ids: np.ndarray  # [M] int64
    sizes: np.ndarray  # [M, 2] int32 (width, height), 0 when unknown
    offsets: np.ndarray  # [M + 1] int64
    boxes: np.ndarray  # [N, 4] float32 xyxy px
    labels: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes for k in ("files", "image_ids", "sizes", "offsets", "boxes", "labels"))

    def path(self, i: int) -> Path:
        return Path(self.root, self.files[i].decode())

    def boxes_of(self, i: int) -> np.ndarray:
        return self.boxes[self.offsets[i]:self.offsets[i + 1]]

    def labels_of(self, i: int) -> np.ndarray:
        return self.labels[self.offsets[i]:self.offsets[i + 1]]

    def select(self, keep: np.ndarray) -> FlatIndex:
        """The images where ``keep`` [M] bool is True, with their boxes."""
        counts = np.diff(self.offsets)
        rows = np.repeat(keep, counts)
        offsets = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
        return FlatIndex(self.root, self.files[keep], self.image_ids[keep], self.sizes[keep], offsets,
                         self.boxes[rows], self.labels[rows])

    @classmethod
    def from_lists(cls, root: str, files: list[str], image_ids, boxes: list[np.ndarray], labels: list[np.ndarray],
                   sizes=None) -> FlatIndex:
        """From per-image lists (a data set that builds its labels one file at a time)."""
        counts = np.array([len(b) for b in boxes], dtype=np.int64)
        return cls(
            root=str(root), files=np.array([f.encode() for f in files], dtype=bytes).reshape(-1),
            image_ids=np.asarray(image_ids, dtype=np.int64).reshape(-1),
            sizes=np.zeros((len(files), 2), np.int32) if sizes is None else np.asarray(sizes, np.int32).reshape(-1, 2),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            boxes=np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes] or [np.zeros((0, 4), np.float32)]),
            labels=np.concatenate([np.asarray(l, np.int64).reshape(-1) for l in labels] or [np.zeros(0, np.int64)]))


# --- the label cache ---

def files_fingerprint(paths: list[str | Path]) -> str:
    """A digest of ``paths`` in order with each file's size and modification time: one stat per
    file, no read; a file that does not exist counts as size and time -1."""
    stats = np.full((len(paths), 2), -1, np.int64)  # [F, 2] (size, mtime_ns)
    for i, path in enumerate(paths):
        try:
            stat = os.stat(path)
        except OSError:
            continue
        stats[i] = stat.st_size, stat.st_mtime_ns
    digest = hashlib.sha1("\0".join(map(os.fspath, paths)).encode("utf-8", "surrogateescape"))
    digest.update(stats.tobytes())
    return digest.hexdigest()


def cache_key(source: str | Path, options: dict, fingerprint: str | None = None) -> dict:
    """What a cache of ``source`` (a file or folder) depends on; raises OSError if it is missing.
    With a ``fingerprint`` (``files_fingerprint`` of the files read) that replaces the source's
    size and time, and ``source`` need not exist."""
    if fingerprint is not None:
        return {"version": FORMAT_VERSION, "source": str(Path(source).resolve()), "fingerprint": fingerprint,
                "options": options}
    stat = Path(source).stat()
    return {"version": FORMAT_VERSION, "source": str(Path(source).resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "options": options}


def cache_path(source: str | Path, key: dict | None, folder: Path | None = None) -> Path:
    """Beside ``source`` by default, else in ``folder``; the name holds a hash of the key."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12] if key else "*"
    source = Path(source).resolve()
    if folder is None:
        return source.parent / f"{source.name}.{digest}.cache.npz"
    where = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    return folder / f"{source.name}.{where}.{digest}.cache.npz"


def _candidates(source: Path, key: dict) -> list[Path]:
    return [cache_path(source, key), cache_path(source, key, user_cache_dir() / "labels")]


def load_cache(source: str | Path, options: dict,
               fingerprint: str | None = None) -> tuple[FlatIndex, dict, dict] | None:
    """(index, problems {kind: [places]}, extra) from a cache that matches, else None."""
    try:
        key = cache_key(source, options, fingerprint)
    except OSError:
        return None
    for path in _candidates(Path(source), key):
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta["key"] != key:
                    continue
                index = FlatIndex(meta["root"], *(data[k] for k in ("files", "image_ids", "sizes", "offsets",
                                                                    "boxes", "labels")))
                return index, meta["problems"], meta["extra"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # damaged: rebuilt and overwritten
            log.info("label cache %s unreadable (%s): rebuilding it", path, error)
    return None


def save_cache(source: str | Path, options: dict, index: FlatIndex, problems: dict, extra: dict,
               fingerprint: str | None = None) -> Path | None:
    """Writes the cache atomically beside ``source``, else in the user cache folder; None if
    neither can be written (reported once: the data set works without it)."""
    key = cache_key(source, options, fingerprint)
    meta = json.dumps({"key": key, "root": index.root, "problems": problems, "extra": extra})
    errors = []
    for path in _candidates(Path(source), key):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                np.savez(handle, meta=np.array(meta), files=index.files, image_ids=index.image_ids, sizes=index.sizes,
                         offsets=index.offsets, boxes=index.boxes, labels=index.labels)
            os.replace(tmp, path)
            for old in path.parent.glob(path.name.rsplit(".", 3)[0] + ".*.cache.npz"):
                if old != path and len(old.name.split(".")) == len(path.name.split(".")):
                    old.unlink(missing_ok=True)  # an earlier key's cache of the same file
            if errors:
                warn_once(f"label cache: {errors[0]}; written to {path} instead")
            return path
        except OSError as error:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            errors.append(f"cannot write {path} ({error.strerror or error})")
    warn_once(f"label cache: {'; '.join(errors)}: going on without a label cache")
    return None
