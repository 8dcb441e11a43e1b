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


def test_collate_stacks_hwc_views_and_chw_images_alike():
    generator = torch.Generator().manual_seed(0)
    view = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8, generator=generator).permute(2, 0, 1)  # as the pipeline
    chw = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=generator)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 1, "orig_size": (5, 7)}
    images = collate_detection([(view, target), (chw, target)])["images"]
    assert images.is_contiguous(memory_format=torch.channels_last) and torch.equal(images, torch.stack([view, chw]))


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
            # Slivers under 5 px (an object cropped to its edge) lose their box by design (MIN_BOX_SIZE,
            # min_visibility); a 5x5 erosion (outside the image counts as not red) removes them so
            # that only real object pixels are checked.
            not_red = torch.nn.functional.pad((~red)[None].float(), (2, 2, 2, 2), value=1.0)
            red = torch.nn.functional.max_pool2d(not_red, 5, stride=1)[0] < 0.5
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


@pytest.fixture
def solid_colours(tmp_path, write_image):
    """8 images, each one solid colour of its own (PNG, so exact), with one box over the whole image."""
    root = tmp_path / "solid"
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(8):
        write_image(root / "images" / "train" / f"{i}.png", 64, 48, colour=(0, 0, 0), background=(30 * i, 200, 10))
        (root / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 1 1\n")
    return YoloDetection(root, "train", names=["solid"])


def test_batch_fetch_decodes_each_image_once_and_draws_partners_from_the_batch(solid_colours, monkeypatch):
    train = TrainDataset(solid_colours, imgsz=64, mosaic=1.0, scale=0.0, translate=0.0, fliplr=0.0,
                         hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    loads = []
    original = solid_colours.load
    monkeypatch.setattr(solid_colours, "load", lambda i: loads.append(i) or original(i))
    batch = [5, 1, 6]
    samples = train.__getitems__(batch)
    assert sorted(loads) == sorted(set(loads)) and set(loads) <= set(batch)  # each at most once, batch only
    allowed = {(30 * i, 200, 10) for i in batch} | {(114, 114, 114)}  # the batch's colours and the padding
    for image, target in samples:
        colours = {tuple(c) for c in image.reshape(3, -1).T.tolist()}
        assert colours <= allowed, colours - allowed
        assert len(target["boxes"]) >= 1
    # The same batch again, in another data set object: identical (a function of seed, epoch, batch).
    again = TrainDataset(solid_colours, imgsz=64, mosaic=1.0, scale=0.0, translate=0.0, fliplr=0.0,
                         hsv_h=0.0, hsv_s=0.0, hsv_v=0.0).__getitems__(batch)
    for (ia, ta), (ib, tb) in zip(samples, again):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])


def colours_shown(image: torch.Tensor) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of a uint8 [3, H, W] image, the padding grey left out."""
    return {tuple(c) for c in image.reshape(3, -1).T.tolist()} - {(114, 114, 114)}


def test_batch_mosaic_shows_its_own_image_and_three_other_distinct_batch_members(solid_colours):
    train = TrainDataset(solid_colours, imgsz=64, mosaic=1.0, scale=0.0, translate=0.0, fliplr=0.0,
                         hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    colour = {i: (30 * i, 200, 10) for i in range(8)}
    batch = [0, 2, 3, 5, 7]
    four = 0
    for epoch in range(4):
        train.set_epoch(epoch)
        for index, (image, _) in zip(batch, train.__getitems__(batch)):
            shown = colours_shown(image)
            assert shown <= {colour[i] for i in batch}
            # the centre lies in the output (YOLOv8's range), so the 4 quadrants show 4 different images,
            # unless it falls on the output's very edge and a quadrant has no pixel left
            four += len(shown) == 4 and colour[index] in shown
    assert four >= 18, four
    # a batch too small for 3 distinct partners still makes mosaics, from what it has
    for index, (image, target) in zip([1, 4], train.__getitems__([1, 4])):
        shown = colours_shown(image)
        assert shown <= {colour[1], colour[4]} and len(target["boxes"]) >= 1
    (image, _), = train.__getitems__([6])
    assert colours_shown(image) == {colour[6]}


def test_data_loader_fetches_batches_the_same_in_any_number_of_workers(solid_colours):
    from torch.utils.data import DataLoader

    train = TrainDataset(solid_colours, imgsz=64, seed=1)
    batches = [[3, 0, 7], [2, 4, 1]]
    expected = [collate_detection(train.__getitems__(batch)) for batch in batches]
    for workers in (0, 2):
        loader = DataLoader(train, batch_sampler=batches, num_workers=workers, collate_fn=collate_detection)
        for got, want in zip(loader, expected, strict=True):
            assert all(torch.equal(got[key], want[key]) for key in ("images", "boxes", "labels", "gt_mask"))


@pytest.mark.coco128
def test_coco128_pipeline_keeps_every_box_valid_and_letterbox_maps_back(coco128):
    train = TrainDataset(coco128, imgsz=320, seed=0)
    order = np.random.default_rng(0).permutation(len(coco128)).tolist()
    total = 0
    for start in range(0, len(order), 16):
        for image, target in train.__getitems__(order[start:start + 16]):
            boxes, labels = target["boxes"], target["labels"]
            assert image.shape == (3, 320, 320) and image.dtype == torch.uint8
            assert ((boxes >= 0) & (boxes <= 320)).all() and ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
            assert ((labels >= 0) & (labels < 80)).all() and len(labels) == len(boxes)
            total += len(boxes)
    assert total > 500  # mosaics show most objects, several times over
    for index in range(0, len(coco128), 16):
        original = coco128[index][1]["boxes"]
        _, target = Letterbox(640)(*coco128[index])
        assert torch.allclose(from_letterbox(target["boxes"], target["letterbox"]), original, atol=1e-4)


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


def test_mosaic4_places_each_image_around_the_centre_and_moves_its_boxes():
    from detector.data.transforms import PAD_VALUE, mosaic4

    images = [np.full((40, 60, 3), 10 * (k + 1), np.uint8) for k in range(4)]  # h 40, w 60, flat colours
    boxes = [np.array([[10.0, 5.0, 50.0, 35.0]], np.float32)] * 4
    labels = [np.array([k]) for k in range(4)]
    canvas, out_boxes, out_labels = mosaic4(images, boxes, labels, imgsz=96, centre=(50, 30))
    # top-left image ends at the centre: its top 10 rows and left 10 columns are cut by the canvas
    assert canvas[0, 0, 0] == 10 and canvas[29, 49, 0] == 10
    assert canvas[0, 50, 0] == 20 and canvas[30, 49, 0] == 30 and canvas[30, 50, 0] == 40
    assert canvas[69, 40, 0] == 30 and canvas[75, 20, 0] == PAD_VALUE  # below the 40-row images: padding
    expected = np.array([[0.0, 0.0, 40.0, 25.0],      # (10-10, 5-10, 50-10, 35-10) clipped at 0
                         [60.0, 0.0, 96.0, 25.0],     # x0=50: (60, -5, 100, 25) clipped to the canvas
                         [0.0, 35.0, 40.0, 65.0],     # y0=30
                         [60.0, 35.0, 96.0, 65.0]], np.float32)
    np.testing.assert_allclose(out_boxes, expected)
    assert out_labels.tolist() == [0, 1, 2, 3]


def test_mosaic4_drops_boxes_mostly_cut_away():
    from detector.data.transforms import mosaic4

    images = [np.zeros((40, 40, 3), np.uint8)] * 4
    boxes = [np.array([[0.0, 0.0, 20.0, 20.0]], np.float32)] + [np.zeros((0, 4), np.float32)] * 3
    labels = [np.array([1])] + [np.zeros(0, np.int64)] * 3
    # the top-left image lands at (-38, -38): its box becomes (-38, -38, -18, -18), entirely cut away
    _, out_boxes, out_labels = mosaic4(images, boxes, labels, imgsz=64, centre=(2, 2))
    assert out_boxes.shape == (0, 4) and out_labels.shape == (0,)


def test_hsv_gains_identity_and_yolov8_formula():
    import cv2

    from detector.data.transforms import HSVGains

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    transform = HSVGains(hgain=0.0, sgain=0.0, vgain=0.0)
    np.testing.assert_array_equal(transform.apply(image, gain=np.ones(3)),
                                  cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), cv2.COLOR_HSV2RGB))
    out = HSVGains().apply(image, gain=np.array([1.0, 1.0, 0.5]))  # halve the value channel only
    hsv_in = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(int)
    hsv_out = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(int)
    assert np.abs(hsv_out[..., 2] - hsv_in[..., 2] * 0.5).mean() < 1.5
    gains = [HSVGains(0.015, 0.7, 0.4).get_params()["gain"] for _ in range(50)]
    assert all(0.3 <= g[1] <= 1.7 and 0.6 <= g[2] <= 1.4 and abs(g[0] - 1) <= 0.015 for g in gains)


def test_rect_batch_shapes_follow_yolov8_val():
    from detector.data.rect import rect_batch_shapes

    sizes = np.array([(640, 480), (480, 640), (640, 427), (500, 500), (300, 600)])  # (width, height)
    order, shapes = rect_batch_shapes(sizes, batch_size=2, imgsz=640)
    assert order.tolist() == [2, 0, 3, 1, 4]  # height / width: 0.667, 0.75, 1, 1.333, 2
    # wide pair: 0.75 * 640 / 32 + 0.5 = 15.5 -> 16 strides high; a mixed pair: square + half a stride;
    # a lone tall image: 640 / 2 / 32 + 0.5 = 10.5 -> 11 strides wide
    assert shapes.tolist() == [[512, 672], [672, 672], [672, 352]]


def test_rect_val_batches_map_back_and_score_like_square_ones(rectangles, tmp_path, red_box_model):
    from omegaconf import OmegaConf

    from detector.data.yolo import yolo_to_coco
    from detector.engine.build import build_val_loader
    from detector.eval.evaluator import evaluate, predict_loader

    ann = yolo_to_coco(tmp_path / "rects", "train", ["rect"], tmp_path / "val.json")
    cfg = OmegaConf.create({"imgsz": 128, "val_batch_size": 2, "workers": 0, "eval": {"rect": True}})
    rect_loader = build_val_loader(cfg, rectangles)
    sizes = {s.image_id: s for s in rectangles.samples}
    seen = []
    for batch in rect_loader:
        height, width = batch["images"].shape[2:]
        assert height % 32 == 0 and width % 32 == 0 and max(height, width) == 128 + 32  # longer side + margin
        for boxes, params, image_id in zip(batch["boxes"], batch["letterbox"], batch["image_ids"].tolist()):
            scale, pad_x, pad_y = params.tolist()
            original = (boxes[:1] - torch.tensor([pad_x, pad_y] * 2)) / scale
            assert torch.allclose(original, torch.from_numpy(sizes[image_id].boxes), atol=1e-4)
            seen.append(image_id)
    assert sorted(seen) == sorted(sizes) and rect_loader.dataset.shapes.max() <= 128 + 32
    model = red_box_model
    rect = predict_loader(model, rect_loader, [1])
    square = predict_loader(model, build_val_loader(cfg, rectangles, rect=False), [1])
    by_id = {d["image_id"]: np.array(d["bbox"]) for d in square}
    for d in rect:  # the same box in original px, up to resampling (about 1 px)
        np.testing.assert_allclose(np.array(d["bbox"]), by_id[d["image_id"]], atol=1.5)
    for loader in (rect_loader, build_val_loader(cfg, rectangles, rect=False)):
        metrics = evaluate(model, loader, ann, [1], progress=False).metrics
        assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP"] > 0.9


def _canvas_then_warp(images, boxes, labels, centre, matrix, imgsz):
    """The two-step reference: draw the mosaic canvas, warp it with cv2.warpAffine, map box corners."""
    import cv2

    from detector.data.transforms import PAD_VALUE, mosaic4

    canvas, b, l = mosaic4(images, boxes, labels, imgsz, centre, min_visibility=0.0)
    out = cv2.warpAffine(canvas, matrix, (imgsz, imgsz), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], 1) @ matrix[:, :2].T + matrix[:, 2]
    return out, np.clip(np.concatenate([corners.min(1), corners.max(1)], 1), 0, imgsz), l


@pytest.mark.parametrize("degrees", [0.0, 12.0])
def test_fused_mosaic_and_affine_match_drawing_the_canvas_then_warping(degrees):
    from detector.data.transforms import affine_matrix, mosaic_layout, warp_placed

    shapes = [(40, 60), (64, 30), (50, 64), (20, 48)]
    images = [np.full((h, w, 3), 40 * (k + 1), np.uint8) for k, (h, w) in enumerate(shapes)]
    boxes = [np.array([[2.0, 3.0, w - 4.0, h - 2.0]], np.float32) for h, w in shapes]
    labels = [np.array([k]) for k in range(4)]
    centre, imgsz = (50, 45), 96
    matrix = affine_matrix(imgsz, scale=1.3, degrees=degrees, shear=(0.0, 0.0), translate=(5.3, -7.1))
    out, out_boxes, out_labels = warp_placed(images, boxes, labels, mosaic_layout(shapes, imgsz, centre), matrix,
                                             imgsz, min_visibility=0.0, min_size=0.0)
    ref, ref_boxes, ref_labels = _canvas_then_warp(images, boxes, labels, centre, matrix, imgsz)
    different = np.abs(out.astype(int) - ref.astype(int)).max(2) > 2
    if degrees:  # the warpAffine path: the same computation
        np.testing.assert_array_equal(out, ref)
    else:  # one resize per image: the same picture up to the seams' resampling, a pixel wide
        assert different.mean() < 0.06
    assert out_labels.tolist() == ref_labels.tolist()
    np.testing.assert_allclose(out_boxes, ref_boxes, atol=1.0 if not degrees else 1e-3)


def test_fused_warp_of_one_centred_image_without_scale_is_a_copy():
    from detector.data.transforms import PAD_VALUE, affine_matrix, warp_placed

    image = np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    box = np.array([[10.0, 5.0, 30.0, 25.0]], np.float32)
    matrix = affine_matrix(64, scale=1.0, degrees=0.0, shear=(0.0, 0.0), translate=(0.0, 0.0))
    out, boxes, labels = warp_placed([image], [box], [np.array([3])], [(0, 12, (0, 12, 64, 52))], matrix, 64)
    np.testing.assert_array_equal(out[12:52], image)
    assert (out[:12] == PAD_VALUE).all() and (out[52:] == PAD_VALUE).all()
    assert boxes.tolist() == [[10.0, 17.0, 30.0, 37.0]] and labels.tolist() == [3]
    # zoomed out by half about the centre: the box shrinks towards (32, 32)
    half = affine_matrix(64, scale=0.5, degrees=0.0, shear=(0.0, 0.0), translate=(0.0, 0.0))
    _, boxes, _ = warp_placed([image], [box], [np.array([3])], [(0, 12, (0, 12, 64, 52))], half, 64)
    np.testing.assert_allclose(boxes, [[21.0, 24.5, 31.0, 34.5]], atol=1e-4)


@pytest.mark.parametrize("degrees", [0.0, 12.0])
def test_colour_applied_while_pasting_equals_colour_applied_after(degrees):
    import functools

    from detector.data.transforms import affine_matrix, hsv_gains, mosaic_layout, warp_placed

    rng = np.random.default_rng(4)
    shapes = [(40, 60), (64, 30), (50, 64), (20, 48)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    boxes = [np.array([[2.0, 3.0, w - 4.0, h - 2.0]], np.float32) for h, w in shapes]
    labels = [np.array([k]) for k in range(4)]
    colour = functools.partial(hsv_gains, gain=np.array([1.01, 0.6, 1.3]))
    matrix = affine_matrix(96, scale=0.6, degrees=degrees, shear=(0.0, 0.0), translate=(4.0, -3.0))  # zoomed out
    layout = mosaic_layout(shapes, 96, (50, 45))
    plain, plain_boxes, _ = warp_placed(images, boxes, labels, layout, matrix, 96)
    coloured, coloured_boxes, _ = warp_placed(images, boxes, labels, layout, matrix, 96, colour=colour)
    # per pixel, up to one grey level: OpenCV's vector and scalar colour conversions round differently
    assert np.abs(coloured.astype(int) - colour(plain).astype(int)).max() <= (0 if degrees else 1)
    np.testing.assert_array_equal(coloured_boxes, plain_boxes)


def test_an_enlarged_image_is_coloured_before_its_resize_with_the_same_result_on_smooth_images():
    import functools

    from detector.data.transforms import affine_matrix, hsv_gains, mosaic_layout, warp_placed

    shapes = [(40, 60), (64, 30), (50, 64), (20, 48)]
    images = []
    for k, (h, w) in enumerate(shapes):  # smooth ramps: a bilinear blend of neighbours changes little
        y, x = np.mgrid[0:h, 0:w]
        images.append(np.stack([40 + 3 * x, 60 + 2 * y + 10 * k, 200 - 2 * x - y], -1).clip(0, 255).astype(np.uint8))
    boxes = [np.array([[2.0, 3.0, w - 4.0, h - 2.0]], np.float32) for h, w in shapes]
    labels = [np.array([k]) for k in range(4)]
    calls = []
    gain = np.array([1.01, 0.6, 1.3])
    colour = lambda part: calls.append(part.shape[:2]) or hsv_gains(part, gain)  # noqa: E731
    matrix = affine_matrix(96, scale=1.4, degrees=0.0, shear=(0.0, 0.0), translate=(4.0, -3.0))  # zoomed in
    layout = mosaic_layout(shapes, 96, (50, 45))
    plain, plain_boxes, _ = warp_placed(images, boxes, labels, layout, matrix, 96)
    coloured, coloured_boxes, _ = warp_placed(images, boxes, labels, layout, matrix, 96, colour=colour)
    pasted = sum(h * w for h, w in calls[1:])  # calls[0] is the 1x1 padding colour
    assert pasted < 96 * 96 / 1.4 ** 2 * 1.1  # about the source pixels, not the 96 x 96 output's
    difference = np.abs(coloured.astype(int) - hsv_gains(plain, gain).astype(int))
    # uint8 HSV rounds hue to 2 degrees: a few grey levels at most, under one on average
    assert difference.mean() < 0.6 and difference.max() <= 6, (difference.mean(), difference.max())
    np.testing.assert_array_equal(coloured_boxes, plain_boxes)


def test_mosaic_centre_falls_anywhere_in_the_output_as_yolov8s(solid_colours):
    """YOLOv8 draws the mosaic centre uniformly in the middle imgsz square of a 2 x imgsz canvas, so
    at scale 1 it lands anywhere in the output (an earlier rule kept it in the middle half)."""
    train = TrainDataset(solid_colours, imgsz=64, mosaic=1.0, scale=0.0, translate=0.0, fliplr=0.0,
                         hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    colour = torch.tensor([30.0, 200.0, 10.0])
    right_edges = []
    for epoch in range(10):
        train.set_epoch(epoch)
        for index, (image, _) in zip(range(8), train.__getitems__(list(range(8)))):
            own = (image.permute(1, 2, 0).float() == colour * torch.tensor([index, 1, 1])).all(-1)  # [H, W]
            if own.any():  # the item's own image is the top-left quadrant: it ends at the centre's x
                right_edges.append(int(own.any(0).nonzero().max()) + 1)
    assert len(right_edges) >= 70 and min(right_edges) < 13 and max(right_edges) > 51, sorted(right_edges)


def test_blur_gray_clahe_fires_each_op_with_its_probability_and_keeps_the_stream():
    from detector.data.transforms import blur_gray_clahe

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    assert np.array_equal(blur_gray_clahe(image, np.random.default_rng(1), 0.0), image)  # p 0: untouched
    gray = blur_gray_clahe(image, np.random.default_rng(1), 1.0)  # all four: ends grey (CLAHE keeps a and b)
    assert gray.shape == image.shape and gray.dtype == np.uint8
    assert np.abs(gray[..., 0].astype(int) - gray[..., 1]).max() <= 2 and gray.std() < image.std()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    blur_gray_clahe(image, a, 0.0), blur_gray_clahe(image, b, 1.0)
    assert a.random() == b.random()  # the same number of draws whatever fired
    fired = sum(not np.array_equal(blur_gray_clahe(image, np.random.default_rng(s), 0.25), image) for s in range(400))
    assert 0.6 * 400 * (1 - 0.75 ** 4) < fired < 1.4 * 400 * (1 - 0.75 ** 4)  # P(any of 4) = 0.68
