"""The detector: backbone -> neck -> head; train mode returns HeadOutput, eval mode the decoded
predictions [B, A, 4 + C] (xyxy px, then per-class sigmoid scores)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.boxes import decode_boxes
from detector.models.backbone import SCALES, CSPDarknet
from detector.models.head import DecoupledHead, HeadOutput
from detector.models.layers import Conv
from detector.models.neck import PANFPN
from detector.models.postprocess import postprocess

MAX_STRIDE = 32


class DetectionModel(nn.Module):
    def __init__(self, *, backbone: nn.Module, neck: nn.Module, head: DecoupledHead, scale: str = "custom"):
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.scale = scale
        self.num_classes, self.reg_max, self.strides = head.num_classes, head.reg_max, head.strides

    def forward(self, images: Tensor) -> HeadOutput | Tensor:
        """images [B, 3, H, W] float in [0, 1], H and W multiples of 32."""
        height, width = images.shape[-2:]
        if not torch.jit.is_tracing() and (height % MAX_STRIDE or width % MAX_STRIDE):
            raise ValueError(f"image size {height}x{width} is not a multiple of {MAX_STRIDE}; "
                             "letterbox or pad the images (detector.data.transforms.Letterbox)")
        out = self.head(self.neck(self.backbone(images)))
        if self.training:
            return out
        return self.decode(out)

    @staticmethod
    def decode(out: HeadOutput) -> Tensor:
        boxes = decode_boxes(out.box_dist, out.anchor_points, out.strides)  # [B, A, 4] px
        return torch.cat((boxes, out.cls_logits.sigmoid()), dim=-1)  # [B, A, 4 + C]

    @torch.no_grad()
    def predict(self, images: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> list[dict]:
        """Detections per image: {"boxes": [N, 4] xyxy px, "scores": [N], "labels": [N]}."""
        was_training = self.training
        self.eval()
        try:
            return postprocess(self(images), conf=conf, iou=iou, max_det=max_det)
        finally:
            self.train(was_training)

    def fuse(self) -> "DetectionModel":
        """Fold every Conv+BN pair into one conv (inference and export); in place."""
        for module in self.modules():
            if isinstance(module, Conv):
                module.fuse()
        return self


def build_model(scale: str = "n", num_classes: int = 80, reg_max: int = 16, cls_width: int | None = None) -> DetectionModel:
    """A YOLOv8-layout detector; scale in n/s/m/l/x (YOLOv8 depths, widths and channel caps);
    ``cls_width`` None gives ultralytics' class-branch width (detector.models.head)."""
    if scale not in SCALES:
        raise ValueError(f"unknown model scale {scale!r}; valid: {', '.join(SCALES)}")
    if num_classes < 1 or reg_max < 1:
        raise ValueError(f"num_classes and reg_max must be >= 1, got {num_classes}, {reg_max}")
    backbone = CSPDarknet(SCALES[scale])
    neck = PANFPN(backbone.out_channels, SCALES[scale])
    if cls_width is not None and not 1 <= cls_width <= 4096:
        raise ValueError(f"cls_width must be in [1, 4096] or None, got {cls_width}")
    head = DecoupledHead(neck.out_channels, num_classes=num_classes, reg_max=reg_max, cls_width=cls_width)
    return DetectionModel(backbone=backbone, neck=neck, head=head, scale=scale)
