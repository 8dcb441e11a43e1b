"""Model summary: parameters and FLOPs (2 x multiply-accumulates, as YOLOv8 reports GFLOPs)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, imgsz: int = 640) -> float:
    """FLOPs of one eval forward at imgsz x imgsz, batch 1."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, imgsz, imgsz, device=device))
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def model_summary(model: nn.Module, imgsz: int = 640) -> dict:
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = sum(1 for m in model.modules() if not list(m.children()))
    return {"name": getattr(model, "name", "?"), "scale": getattr(model, "scale", "?"), "params": params,
            "trainable": trainable, "layers": layers, "gflops": count_flops(model, imgsz) / 1e9, "imgsz": imgsz}


def format_summary(summary: dict) -> str:
    return (f"model {summary.get('name', summary['scale'])}: {summary['layers']} layers, "
            f"{summary['params']:,} parameters, {summary['gflops']:.1f} GFLOPs at {summary['imgsz']}")
