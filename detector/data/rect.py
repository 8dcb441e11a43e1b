"""Rectangular validation batches, as YOLOv8's val does them (``eval.rect=true``).

Images are sorted by aspect ratio (height / width) and cut into batches in that order; each batch
is letterboxed to its own shape, the smallest multiple of the stride that holds every image of the
batch with its longer side imgsz, plus half a stride of margin (YOLOv8's ``pad=0.5`` for val).
COCO's 4:3 images then run at 512 x 672 instead of 672 x 672 (YOLOv8's shape for a square batch)
or 640 x 640: a sixth fewer pixels than the square letterbox. Predictions map back with the (scale, pad_x, pad_y) each
item records, exactly as for the square letterbox. Image sizes come from the data set's index
(the json, or the image headers), so nothing is decoded to sort.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from detector.data.base import DetectionDataset, items_leaving_out
from detector.data.cache import image_sizes
from detector.data.transforms import letterbox_image, to_letterbox


def rect_batch_shapes(sizes: np.ndarray, batch_size: int, imgsz: int, stride: int = 32, pad: float = 0.5
                      ) -> tuple[np.ndarray, np.ndarray]:
    """sizes [M, 2] (width, height) -> (order [M]: the images sorted by aspect ratio, shapes
    [ceil(M / batch_size), 2] (height, width) px of each batch, multiples of ``stride``)."""
    aspect = sizes[:, 1] / np.maximum(sizes[:, 0], 1)  # [M] height / width
    order = np.argsort(aspect, kind="stable")
    aspect = aspect[order]
    count = -(-len(order) // batch_size)
    shapes = np.ones((count, 2))  # (height, width) as fractions of imgsz
    for b in range(count):
        part = aspect[b * batch_size:(b + 1) * batch_size]
        if part.max() < 1:  # all wider than high
            shapes[b] = (part.max(), 1)
        elif part.min() > 1:  # all higher than wide
            shapes[b] = (1, 1 / part.min())
    return order, (np.ceil(shapes * imgsz / stride + pad).astype(np.int64) * stride)


class RectValDataset(Dataset):
    """Item k: the k-th image in aspect order, letterboxed to its batch's shape; ``(uint8 [3, h, w],
    target)`` with target["letterbox"] = (scale, pad_x, pad_y) and boxes moved along. Use it with a
    DataLoader of the same ``batch_size`` and no shuffling."""

    def __init__(self, dataset: DetectionDataset, imgsz: int, batch_size: int, stride: int = 32, pad: float = 0.5):
        self.dataset, self.imgsz, self.batch_size = dataset, imgsz, batch_size
        self.order, self.shapes = rect_batch_shapes(image_sizes(dataset), batch_size, imgsz, stride, pad)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int):
        image, target = self.dataset.raw_item(int(self.order[k]))  # its own transforms are left out
        shape = tuple(int(v) for v in self.shapes[k // self.batch_size])
        image, params = letterbox_image(image, self.imgsz, shape)
        return image, dict(target, boxes=to_letterbox(target["boxes"], params), letterbox=params)

    def __getitems__(self, indices: list[int]) -> list:
        """A batch; an image the data set cannot use is left out as the data set's own batches do."""
        return items_leaving_out(self.dataset, self.__getitem__, indices, position=self.order)


__all__ = ["RectValDataset", "rect_batch_shapes"]
