"""cache=ram|disk|off: the same pixels as decoding, memory checked before filling, stale files
refreshed, unwritable folders reported once, damaged images skipped."""
import logging
import os

import numpy as np
import pytest
import torch

from detector.data import YoloDetection
from detector.data import cache as cache_module
from detector.data.cache import ImageCache, cache_mode
from detector.data.pipeline import TrainDataset


pytestmark = pytest.mark.usefixtures("user_cache")  # conftest: a cache folder of its own


@pytest.fixture
def jpegs(tmp_path):
    """6 noisy JPEGs of several sizes and aspect ratios (one larger than twice imgsz), one box each."""
    import cv2

    root = tmp_path / "jpegs"
    (root / "labels" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(96, 64), (64, 96), (80, 80), (300, 200), (50, 120), (128, 72)]):
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / "train" / f"{i}.jpg"), image)
        (root / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return root


def fetch_all(train, epochs=(0, 1)):
    out = []
    for epoch in epochs:
        train.set_epoch(epoch)
        out += train.__getitems__([3, 0, 5, 1]) + train.__getitems__([2, 4])
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and ta["image_id"] == tb["image_id"]


@pytest.mark.parametrize("mode", ["ram", "disk"])
@pytest.mark.parametrize("partners", ["batch", "dataset"])
def test_cached_pipeline_gives_the_same_samples_as_decoding(jpegs, mode, partners):
    dataset = YoloDetection(jpegs, "train", names=["x"])
    plain = fetch_all(TrainDataset(dataset, imgsz=64, seed=2, mosaic_partners=partners))
    cached = TrainDataset(dataset, imgsz=64, seed=2, cache=mode, mosaic_partners=partners)
    assert cached.cache.filled.all() and cached.cache.needed == sum(
        h * w * 3 for h, w in [(43, 64), (64, 43), (64, 64), (43, 64), (64, 27), (36, 64)])
    assert_same(fetch_all(cached), plain)
    image, (height, width) = cached.cache.get(3)
    assert image.shape == (43, 64, 3) and (height, width) == (200, 300)


def test_ram_cache_that_would_not_fit_fails_at_start_with_both_numbers(jpegs, monkeypatch):
    dataset = YoloDetection(jpegs, "train", names=["x"])
    monkeypatch.setattr(cache_module, "available_memory", lambda: 40_000)
    with pytest.raises(MemoryError, match=r"6 training images resized to imgsz=64 need 0\.00 GB.*only 0\.00 GB"):
        TrainDataset(dataset, imgsz=64, cache="ram")
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10**6)
    assert TrainDataset(dataset, imgsz=64, cache="ram").cache.buffer.nbytes == 49_152  # 1.25 x that fits in 1 MB


def test_auto_cache_keeps_a_small_set_in_ram_and_draws_partners_from_the_whole_set(jpegs, monkeypatch):
    dataset = YoloDetection(jpegs, "train", names=["x"])
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10**6)  # 39,321 bytes needed: under a quarter
    train = TrainDataset(dataset, imgsz=64, seed=2, cache="auto")
    assert train.cache.mode == "ram" and train.cache.filled.all() and train.mosaic_partners == "dataset"
    assert_same(fetch_all(train), fetch_all(TrainDataset(dataset, imgsz=64, seed=2, mosaic_partners="dataset")))
    monkeypatch.setattr(cache_module, "available_memory", lambda: 150_000)  # a quarter is 37,500: decoded each time
    train = TrainDataset(dataset, imgsz=64, seed=2, cache="auto")
    assert train.cache is None and train.mosaic_partners == "batch"
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10**12)
    monkeypatch.setattr(cache_module, "AUTO_RAM_LIMIT", 39_320)  # one byte under what the set needs
    assert TrainDataset(dataset, imgsz=64, cache="auto").cache is None
    assert TrainDataset(dataset, imgsz=64, cache="off").mosaic_partners == "batch"
    assert TrainDataset(dataset, imgsz=64, cache="disk").mosaic_partners == "dataset"
    assert TrainDataset(dataset, imgsz=64, cache="disk", mosaic_partners="batch").mosaic_partners == "batch"


def test_ram_cache_is_read_only_and_shared(jpegs):
    cache = ImageCache(YoloDetection(jpegs, "train", names=["x"]), 64, "ram")
    image, _ = cache.get(0)
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0, 0] = 1
    assert np.shares_memory(image, cache.buffer)


def test_disk_cache_is_reused_and_refreshed_when_an_image_changes(jpegs, monkeypatch):
    dataset = YoloDetection(jpegs, "train", names=["x"])
    first = ImageCache(dataset, 64, "disk")
    npy = jpegs / "images" / "train" / "0.jpg.64px.v1.npy"
    assert npy.is_file() and np.load(npy).shape == (43, 64, 3)
    decoded = []
    original = cache_module.read_resized
    monkeypatch.setattr(cache_module, "read_resized", lambda *a: decoded.append(a[0].name) or original(*a))
    again = ImageCache(dataset, 64, "disk")
    assert decoded == [] and again.filled.all()
    image = jpegs / "images" / "train" / "2.jpg"
    os.utime(image, ns=(npy.stat().st_mtime_ns + 10**9,) * 2)  # the image is newer than its cache
    ImageCache(dataset, 64, "disk")
    assert decoded == ["2.jpg"]
    np.testing.assert_array_equal(first.get(1)[0], again.get(1)[0])


def test_unwritable_disk_cache_falls_back_then_is_reported_once(jpegs, user_cache, tmp_path, monkeypatch, caplog):
    dataset = YoloDetection(jpegs, "train", names=["x"])
    (jpegs / "images" / "train" / f".write_test.{os.getpid()}").mkdir()  # writing beside the images fails
    with caplog.at_level(logging.WARNING, logger="detector"):
        cache = ImageCache(dataset, 64, "disk")
    assert cache.mode == "disk" and cache.filled.all() and "go to" in caplog.text
    assert len(list((user_cache / "images").rglob("*.npy"))) == 6
    (tmp_path / "blocker").write_text("")
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "blocker" / "cache"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detector"):
        plain = fetch_all(TrainDataset(dataset, imgsz=64, seed=1))
        for _ in range(2):
            train = TrainDataset(dataset, imgsz=64, seed=1, cache="disk")
            assert train.cache is None  # fell back to decoding (and to batch partners, as without a cache)
    assert caplog.text.count("going on without a cache") == 1
    assert_same(fetch_all(train), plain)


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_damaged_image_found_while_filling_is_reported_and_replaced(jpegs, mode, caplog):
    dataset = YoloDetection(jpegs, "train", names=["x"])
    path = jpegs / "images" / "train" / "1.jpg"
    path.write_bytes(path.read_bytes()[:400])  # cut short after the data set was indexed
    with caplog.at_level(logging.WARNING, logger="detector"):
        train = TrainDataset(dataset, imgsz=64, cache=mode)
    assert "1.jpg" in caplog.text and not train.cache.filled[1] and train.cache.filled.sum() == 5
    item = train.load_resized(1)
    assert item["image_id"] == 2  # the next good image


def test_cache_mode_words():
    assert [cache_mode(v) for v in (None, False, "off", True, "ram", "disk", "auto")] == [
        "off", "off", "off", "ram", "ram", "disk", "auto"]
    with pytest.raises(ValueError, match="cache='memory': expected one of off, ram, disk"):
        cache_mode("memory")


def test_large_jpeg_decoded_at_reduced_scale_matches_a_full_decode(tmp_path):
    import cv2

    from detector.data.base import ImageDecodeError, read_image, read_resized

    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (1000, 1400, 3), dtype=np.uint8), (0, 0), 6)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    reduced, orig = read_resized(path, 320, size=(1400, 1000))  # decoded at 1/4: 350 x 250, then resized
    full, _ = read_resized(path, 320)  # size unknown: every pixel decoded
    assert orig == (1000, 1400) and reduced.shape == full.shape == (229, 320, 3)
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 2.0
    with pytest.raises(ImageDecodeError, match="decodes to 1400x1000, not the 2800x2000 its annotation gives"):
        read_resized(path, 320, size=(2800, 2000))  # a json size that is not the file's: its boxes would not fit
    np.testing.assert_array_equal(read_image(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
