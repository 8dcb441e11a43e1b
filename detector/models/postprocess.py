"""From decoded predictions to detections: confidence filter, class-aware NMS, max_det.

predictions: [B, A, 4 + C], xyxy px then per-class scores in [0, 1] (the eval-mode model output
and the ONNX output).
"""
from __future__ import annotations

from torch import Tensor
from torchvision.ops import batched_nms

MAX_CANDIDATES = 30000  # (anchor, class) pairs per image kept for NMS, by score


def postprocess(predictions: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> list[dict]:
    """Multi-label detections per image as torchvision dicts {"boxes" [N,4], "scores" [N], "labels" [N]}."""
    results = []
    for pred in predictions:
        boxes, scores = pred[:, :4], pred[:, 4:]  # [A, 4], [A, C]
        anchor, label = (scores > conf).nonzero(as_tuple=True)
        score = scores[anchor, label]
        if score.numel() > MAX_CANDIDATES:
            top = score.topk(MAX_CANDIDATES).indices
            anchor, label, score = anchor[top], label[top], score[top]
        keep = batched_nms(boxes[anchor].float(), score.float(), label, iou)[:max_det]
        results.append({"boxes": boxes[anchor[keep]], "scores": score[keep], "labels": label[keep]})
    return results
