"""Decoded, resized training images kept in RAM or on disk: ``cache=auto|ram|disk|off``.

What is kept is exactly what the pipeline would compute from the file, ``read_resized``: the
image resized so that its longer side is imgsz (uint8 HWC RGB), so a cached run sees the same
pixels, and the same batches, as an uncached one (and ``resume=`` stays exact in every mode).

- ``ram``: one uint8 buffer for every image (no Python object per image), filled at start by a
  few threads (decoding releases the GIL). DataLoader workers forked afterwards share its pages.
  The memory it needs is computed from the image sizes and checked against MemAvailable before
  anything is filled: a cache that would not fit fails at start, naming both numbers.
- ``auto`` (the default): ``ram`` when the resized set needs at most AUTO_RAM_LIMIT and a quarter of
  the available memory (a small data set: it then also gets whole-set mosaic partners, see
  detector/data/pipeline.py), else ``off``; the log says which.
- ``disk``: one ``.npy`` per image beside it (``<name>.<imgsz>px.v<version>.npy``), or under
  ``$DETECTOR_CACHE/images`` when the image folder is not writable; filled at start, skipping
  files already there and newer than their image (an image changed since is cached again).
  A cache that cannot be written (read-only folders, a full disk) is reported once, and the run
  goes on decoding the images.

An image that cannot be decoded while filling (or that decodes to another size than its
annotation gives) is reported like any other damaged image and replaced by the next good one,
as without a cache. Sizes are those of the picture as shown (EXIF orientation applied,
detector/data/base.py ``image_size``), as the decoder returns it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from detector.data.base import DetectionDataset, ImageDecodeError, image_size, read_resized, resized_shape
from detector.data.index import user_cache_dir, warn_once

log = logging.getLogger("detector")
CACHE_MODES = ("off", "ram", "disk", "auto")
DISK_VERSION = 1
RAM_HEADROOM = 1.25  # cache=ram must fit 1.25 times in what is available: workers and the model need room too
AUTO_RAM_LIMIT = 2 * 2**30  # cache=auto keeps a set in RAM up to this size (and a quarter of the available memory)


def cache_mode(value) -> str:
    """``cache=`` as written in a config: off (also false/null), ram (also true), disk or auto."""
    if value is None or value is False or value == "off":
        return "off"
    if value is True:
        return "ram"
    if value not in CACHE_MODES:
        raise ValueError(f"cache={value!r}: expected one of {', '.join(CACHE_MODES)}")
    return value


def available_memory() -> int:
    """Bytes the kernel says a new allocation can take without swapping (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def image_sizes(dataset: DetectionDataset) -> np.ndarray:
    """[M, 2] (width, height) of every image as shown: from the index, else from the file's header."""
    sizes = dataset.index.sizes.copy()
    for i in np.flatnonzero((sizes <= 0).any(1)):
        sizes[i] = image_size(dataset.index.path(i)) or (1, 1)  # None: undecodable, found when filling
    return sizes


class ImageCache:
    """``get(i)`` -> (resized image, original (height, width)) or None (not cached: decode it)."""

    def __init__(self, dataset: DetectionDataset, imgsz: int, mode: str, threads: int | None = None):
        self.dataset, self.imgsz, self.mode = dataset, imgsz, cache_mode(mode)
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.sizes = image_sizes(dataset)  # [M, 2] (width, height) of the originals
        shapes = np.array([resized_shape(int(w), int(h), imgsz) for w, h in self.sizes], dtype=np.int64).reshape(-1, 2)
        self.shapes = shapes[:, ::-1].copy()  # [M, 2] (height, width) once resized
        nbytes = self.shapes[:, 0] * self.shapes[:, 1] * 3
        self.offsets = np.concatenate([[0], np.cumsum(nbytes)])  # [M + 1] into the RAM buffer
        self.needed = int(self.offsets[-1])
        self.filled = np.zeros(len(dataset), bool)
        self.buffer = None
        if self.mode == "auto":
            fits = self.needed <= min(AUTO_RAM_LIMIT, available_memory() / 4)
            self.mode = "ram" if fits else "off"
            log.info("cache=auto: the resized training images need %.1f MB: %s", self.needed / 1e6,
                     "kept in RAM" if fits else f"over min({AUTO_RAM_LIMIT / 1e9:.1f} GB, a quarter of the "
                     "available memory): decoded each time")
        self.paths: list[Path] | None = None
        start = time.perf_counter()
        if self.mode == "ram":
            self._fill_ram()
        elif self.mode == "disk":
            self._fill_disk()
        if self.mode != "off":
            log.info("cache=%s: %d of %d images, %.1f MB at imgsz=%d, in %.1f s", self.mode, self.filled.sum(),
                     len(dataset), self.needed / 1e6, imgsz, time.perf_counter() - start)

    # --- RAM ---
    def _fill_ram(self) -> None:
        available = available_memory()
        if self.needed * RAM_HEADROOM > available:
            raise MemoryError(
                f"cache=ram: the {len(self.dataset)} training images resized to imgsz={self.imgsz} need "
                f"{self.needed / 1e9:.2f} GB ({RAM_HEADROOM:g}x that with headroom), but only "
                f"{available / 1e9:.2f} GB of memory is available: use cache=disk or cache=off")
        self.buffer = np.empty(self.needed, np.uint8)

        def fill(i: int) -> None:
            got = self._decode(i)
            if got is not None:
                self.buffer[self.offsets[i]:self.offsets[i + 1]] = got.reshape(-1)
                self.filled[i] = True

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(fill, range(len(self.dataset))))
        self.buffer.flags.writeable = False  # shared by every worker: the pipeline must copy, never write

    def _decode(self, i: int) -> np.ndarray | None:
        """Image i as the pipeline resizes it, if it decodes to the size the cache expects."""
        hint = tuple(int(v) for v in self.dataset.index.sizes[i])  # the size hint the uncached path uses
        try:
            got = read_resized(self.dataset.index.path(i), self.imgsz, hint)
        except ImageDecodeError as error:
            self.dataset.mark_bad(i, error.reason)
            return None
        image, (height, width) = got
        if (width, height) != tuple(self.sizes[i]):
            warn_once(f"cache={self.mode}: {self.dataset.index.path(i)} is {width}x{height}, not the "
                      f"{self.sizes[i][0]}x{self.sizes[i][1]} its labels say: not cached")
            return None
        return image

    # --- disk ---
    def disk_path(self, i: int, folder: Path | None = None) -> Path:
        image = self.dataset.index.path(i)
        name = f"{image.name}.{self.imgsz}px.v{DISK_VERSION}.npy"
        if folder is None:
            return image.with_name(name)
        return folder / hashlib.sha1(str(image.parent.resolve()).encode()).hexdigest()[:12] / name

    def _writable_folder(self) -> Path | None:
        """None when the npy files can go beside the images, else the user cache folder; raises
        OSError when neither is writable."""
        first = self.dataset.index.path(0).parent
        errors = []
        for folder in (None, user_cache_dir() / "images"):
            probe = self.disk_path(0, folder).with_name(f".write_test.{os.getpid()}")
            try:
                probe.parent.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"")
                probe.unlink()
                if shutil.disk_usage(probe.parent).free < self.needed * 1.05:
                    raise OSError(f"{shutil.disk_usage(probe.parent).free / 1e9:.2f} GB free of the "
                                  f"{self.needed / 1e9:.2f} GB needed")
                if errors:
                    warn_once(f"cache=disk: {errors[0]}: the .npy files go to {probe.parent.parent} instead")
                return folder
            except OSError as error:
                errors.append(f"cannot write beside {first if folder is None else probe.parent} ({error})")
        raise OSError("; ".join(errors))

    def _fill_disk(self) -> None:
        try:
            folder = self._writable_folder()
        except OSError as error:
            warn_once(f"cache=disk: {error}: going on without a cache")
            self.mode = "off"
            return
        self.paths = [self.disk_path(i, folder) for i in range(len(self.dataset))]
        failed: list[str] = []

        def fill(i: int) -> None:
            path = self.paths[i]
            if self._fresh(i):
                self.filled[i] = True
                return
            image = self._decode(i)
            if image is None:
                return
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as handle:
                    np.save(handle, image)
                os.replace(tmp, path)
                self.filled[i] = True
            except OSError as error:
                tmp.unlink(missing_ok=True)
                failed.append(f"{path} ({error.strerror or error})")

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(fill, range(len(self.dataset))))
        if failed:
            warn_once(f"cache=disk: {len(failed)} images could not be written (first: {failed[0]}): "
                      "they are decoded each time")

    def _fresh(self, i: int) -> bool:
        try:
            return self.paths[i].stat().st_mtime_ns >= self.dataset.index.path(i).stat().st_mtime_ns
        except OSError:
            return False

    # --- reading ---
    def get(self, i: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        if not self.filled[i]:
            return None
        width, height = (int(v) for v in self.sizes[i])
        shape = (int(self.shapes[i, 0]), int(self.shapes[i, 1]), 3)
        if self.mode == "ram":
            return self.buffer[self.offsets[i]:self.offsets[i + 1]].reshape(shape), (height, width)
        try:
            image = np.load(self.paths[i])
        except (OSError, ValueError, EOFError):  # removed or damaged since: decode the image instead
            return None
        return (image, (height, width)) if image.shape == shape else None
