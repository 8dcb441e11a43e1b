"""The detector: backbone -> neck -> head; train mode returns HeadOutput, eval mode the decoded
predictions [B, A, 4 + C] (xyxy px, then per-class sigmoid scores). ``build_model`` builds any
architecture of the registry (detector.models.registry) at any of its scales."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.boxes import decode_boxes
from detector.models.head import DecoupledHead, HeadOutput
from detector.models.layers import Conv
from detector.models.postprocess import postprocess
from detector.models.registry import DEFAULT_ARCH, resolve

MAX_STRIDE = 32


class DetectionModel(nn.Module):
    """``arch`` and ``scale`` say what was built ("yolo11", "n"), so that checkpoints can record it;
    ``name`` is the model's name in the registry and in configs/model ("yolo11n")."""

    def __init__(self, *, backbone: nn.Module, neck: nn.Module, head: DecoupledHead, scale: str = "custom",
                 arch: str = DEFAULT_ARCH):
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.arch, self.scale = arch, scale
        self.num_classes, self.reg_max, self.strides = head.num_classes, head.reg_max, head.strides

    @property
    def name(self) -> str:
        return f"{self.arch}{self.scale}"

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

    def for_inference(self, device: torch.device | str | None = None) -> "DetectionModel":
        """Fused, in eval mode, on ``device``, with channels-last (NHWC) weights; in place. Every
        PyTorch inference path (predict, val, the benchmarks) runs this: on a CPU NHWC convolutions
        take about 0.9x the time of NCHW ones (docs/benchmarks.md#models). Inputs may stay NCHW:
        the first convolution converts them, and the output [B, A, 4 + C] is the same to 1e-4."""
        return self.fuse().eval().to(device=device, memory_format=torch.channels_last)


def build_model(scale: str = "n", num_classes: int = 80, reg_max: int = 16, cls_width: int | None = None,
                arch: str | None = None) -> DetectionModel:
    """A detector of the registry: ``scale`` a model name ("yolov8n" ... "yolo11x") or a scale
    (n/s/m/l/x) of ``arch`` (None: YOLOv8). Depths, widths and channel caps are ultralytics' yaml's;
    ``cls_width`` None gives ultralytics' class-branch width (detector.models.head)."""
    architecture, scale = resolve(scale, arch)
    if num_classes < 1 or reg_max < 1:
        raise ValueError(f"num_classes and reg_max must be >= 1, got {num_classes}, {reg_max}")
    if cls_width is not None and not 1 <= cls_width <= 4096:
        raise ValueError(f"cls_width must be in [1, 4096] or None, got {cls_width}")
    backbone, neck = architecture.build_features(scale)
    head = DecoupledHead(neck.out_channels, num_classes=num_classes, reg_max=reg_max, cls_width=cls_width,
                         depthwise_cls=architecture.depthwise_cls)
    return DetectionModel(backbone=backbone, neck=neck, head=head, scale=scale, arch=architecture.name)
