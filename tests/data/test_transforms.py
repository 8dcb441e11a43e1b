import numpy as np
import pytest
import torch

from detector.data import YoloDetection
from detector.data.collate import collate_detection
from detector.data.pipeline import TrainDataset
from detector.data.synthetic import ensure_shapes, shapes_splits
from detector.data.transforms import Letterbox, from_letterbox, letterbox_image, to_letterbox



def test_letterbox_maps_exactly_both_ways():
    image = torch.zeros(3, 50, 100, dtype=torch.uint8)
    out, (scale, pad_x, pad_y) = letterbox_image(image, 64)
    assert out.shape == (3, 64, 64) and scale == pytest.approx(0.64) and (pad_x, pad_y) == (0, 16)
    boxes = torch.tensor([[10.0, 5.0, 60.0, 45.0]])
    there = to_letterbox(boxes, (scale, pad_x, pad_y))
    assert torch.allclose(there, torch.tensor([[6.4, 19.2, 38.4, 44.8]]))
    assert torch.allclose(from_letterbox(there, (scale, pad_x, pad_y)), boxes)
    _, target = Letterbox(64)(image, {"boxes": boxes, "labels": torch.tensor([0])})
    assert target["letterbox"] == (scale, pad_x, pad_y) and torch.allclose(target["boxes"], there)
    with pytest.raises(ValueError, match="multiple of 32"):
        Letterbox(50)


def test_collate_pads_and_masks():
    a = (torch.zeros(3, 32, 32, dtype=torch.uint8), {"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 2]),
                                                      "image_id": 4, "orig_size": (10, 20), "letterbox": (0.5, 1, 2)})
    b = (torch.zeros(3, 32, 32, dtype=torch.uint8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                                                      "image_id": 5, "orig_size": (30, 40)})
    batch = collate_detection([a, b])
    assert batch["boxes"].shape == (2, 2, 4) and batch["gt_mask"].tolist() == [[True, True], [False, False]]
    assert batch["image_ids"].tolist() == [4, 5] and batch["orig_sizes"].tolist() == [[10, 20], [30, 40]]
    assert batch["letterbox"].tolist() == [[0.5, 1.0, 2.0], [1.0, 0.0, 0.0]]
    empty = collate_detection([b])
    assert empty["boxes"].shape == (1, 0, 4)


@pytest.fixture
def rectangles(tmp_path, write_image):
    """Images with one solid red rectangle on grey; labels are the rectangle exactly."""
    root = tmp_path / "rects"
    rng = np.random.default_rng(0)
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    for i in range(6):
        w, h = int(rng.integers(80, 160)), int(rng.integers(80, 160))
        x1, y1 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
        x2, y2 = x1 + int(rng.integers(12, w - x1)), y1 + int(rng.integers(12, h - y1))
        write_image(root / "images" / "train" / f"{i}.png", w, h, (x1, y1, x2, y2), (255, 0, 0), (128, 128, 128))
        (labels / f"{i}.txt").write_text(f"0 {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n")
    return YoloDetection(root, "train", names=["rect"])


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_augmented_boxes_stay_inside_and_enclose_the_object(rectangles, mosaic):
    train = TrainDataset(rectangles, imgsz=96, mosaic=mosaic, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0)
    for epoch in range(3):
        train.set_epoch(epoch)
        for i in range(len(train)):
            image, target = train[i]
            assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
            boxes = target["boxes"]
            assert (boxes >= 0).all() and (boxes <= 96).all()
            assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
            red = (image[0].int() > 200) & (image[1].int() < 60) & (image[2].int() < 60)
            # Slivers under 3 px (an object cropped to its edge) lose their box by design (MIN_BOX_SIZE,
            # min_visibility); a 3x3 erosion removes them so that only real object pixels are checked.
            red = -torch.nn.functional.max_pool2d(-red[None].float(), 3, stride=1, padding=1)[0] > 0.5
            ys, xs = torch.nonzero(red, as_tuple=True)
            if len(xs) == 0:
                continue
            inside = torch.zeros_like(red)
            for x1, y1, x2, y2 in boxes.round().long().tolist():
                inside[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
            assert inside[red].float().mean() > 0.99  # every red pixel lies in a box (2 px tolerance)


def test_mosaic_combines_images_with_consistent_labels(rectangles):
    train = TrainDataset(rectangles, imgsz=128, mosaic=1.0, scale=0.0, translate=0.0, fliplr=0.0)
    counts = [len(train[i][1]["boxes"]) for i in range(len(train))]
    assert max(counts) > 1  # several source images in one sample
    assert all(target["labels"].eq(0).all() for _, target in (train[i] for i in range(2)))


def test_train_pipeline_is_a_function_of_seed_epoch_and_index(rectangles):
    a, b = TrainDataset(rectangles, imgsz=64, seed=3), TrainDataset(rectangles, imgsz=64, seed=3)
    first = [a[i] for i in (0, 1, 2)]
    second = [b[i] for i in (2, 1, 0)][::-1]  # other access order
    for (ia, ta), (ib, tb) in zip(first, second):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    b.set_epoch(1)
    assert not torch.equal(b[0][0], first[0][0])


def test_shapes_set_is_deterministic_and_cached(tmp_path):
    one = ensure_shapes(tmp_path / "a", num_train=4, num_val=2, min_size=64, max_size=96)
    two = ensure_shapes(tmp_path / "b", num_train=4, num_val=2, min_size=64, max_size=96)
    assert (one / "train" / "annotations.json").read_text() == (two / "train" / "annotations.json").read_text()
    stamp = (one / "val" / "annotations.json").stat().st_mtime_ns
    splits = shapes_splits(str(tmp_path / "a"), num_train=4, num_val=2, min_size=64, max_size=96)
    assert (one / "val" / "annotations.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert len(splits.train) == 4 and len(splits.names) == 6
    image, target = splits.train[0]
    h, w = target["orig_size"]
    assert 64 <= h <= 96 and 64 <= w <= 96 and image.shape == (3, h, w)
    boxes = target["boxes"]
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
