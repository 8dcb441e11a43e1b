"""Wiring: the one place that turns a Hydra config into components.

Components are plain classes with explicit keyword arguments; this module reads the config and
calls them, so that no class ever sees a config object.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, DistributedSampler

from detector.data.collate import collate_detection
from detector.data.pipeline import TrainDataset
from detector.data.rect import RectValDataset
from detector.data.transforms import Letterbox
from detector.engine import optim
from detector.losses.criterion import DetectionCriterion

log = logging.getLogger("detector")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present (this process's local rank under torchrun), else CPU."""
    from detector.engine.dist import local_rank

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} was asked for but CUDA is not available; use device=cpu or device=auto")
        if name == "cuda":
            name = f"cuda:{local_rank()}"
        torch.cuda.set_device(torch.device(name))
    elif name != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_model(cfg: DictConfig, num_classes: int):
    return instantiate(cfg.model, num_classes=num_classes)


def resolve_recipe(cfg: DictConfig, num_classes: int) -> dict:
    """Write the run's own values over the recipe's ``auto`` ones (``nbs``, ``warmup.epochs``, ``optim.lr``,
    ``warmup.momentum``) in ``cfg``, so that the saved config, the logs and a resume hold what ran. A run
    that starts from weights (``pretrained=`` set, not a resume) takes ``finetune.*`` for them; a value
    given on the command line is kept as given. Returns the resolved values by dotted key."""
    pretrained = bool(cfg.get("pretrained")) and not cfg.get("resume")
    finetune = cfg.get("finetune") or {}
    nbs = optim.resolve_nbs(cfg.nbs, cfg.batch_size, pretrained, finetune.get("nbs", "auto"))
    warmup_epochs = optim.resolve_warmup_epochs(cfg.warmup.epochs, cfg.epochs, pretrained,
                                                finetune.get("warmup_epochs", "auto"))
    resolved = {
        "nbs": nbs,
        "warmup.epochs": warmup_epochs,
        "optim.lr": optim.resolve_lr(cfg.optim.lr, num_classes, pretrained, finetune.get("lr_scale", "auto"), nbs,
                                     warmup_epochs),
        "warmup.momentum": optim.resolve_warmup_momentum(cfg.warmup.momentum, pretrained,
                                                         finetune.get("warmup_momentum")),
    }
    with open_dict(cfg):
        for key, value in resolved.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return resolved


def build_optimizer(cfg: DictConfig, model, num_classes: int, weight_decay: float):
    """The ``optim`` option's optimiser over YOLOv8's three parameter groups; ``lr: auto`` is
    YOLOv8's fit for AdamW (``optim.auto_lr``)."""
    lr = optim.auto_lr(num_classes) if cfg.optim.lr == "auto" else cfg.optim.lr
    return optim.build_optimizer(instantiate(cfg.optim, lr=lr), model, weight_decay)


def memory_format(cfg: DictConfig) -> torch.memory_format:
    """``channels_last: true`` (the default) runs the model on NHWC tensors: 1.2x the training
    step's speed on a CPU (docs/benchmarks.md), and the layout tensor cores prefer."""
    return torch.channels_last if cfg.get("channels_last", True) else torch.contiguous_format


def batch_images(images: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """uint8 [B, 3, H, W] from the loader -> float [B, 3, H, W] in [0, 1] on ``device``, in ``layout``
    (collate already hands channels-last batches over, so that costs no copy by default)."""
    return images.to(device, non_blocking=True).contiguous(memory_format=layout).float().div_(255)


def build_criterion(cfg: DictConfig, num_classes: int) -> DetectionCriterion:
    dfl_loss = instantiate(cfg.dfl_loss) if cfg.get("dfl_loss") else None
    return DetectionCriterion(
        assigner=instantiate(cfg.assigner, num_classes=num_classes),
        cls_loss=instantiate(cfg.loss_cls),
        box_loss=instantiate(cfg.loss_box),
        dfl_loss=dfl_loss,
    )


def build_train_set(cfg: DictConfig, dataset) -> TrainDataset:
    return TrainDataset(dataset, imgsz=cfg.imgsz, seed=cfg.seed, cache=cfg.get("cache", "off"), **cfg.augment)


def build_train_loader(cfg: DictConfig, train_set, *, epoch: int, rank: int, world_size: int) -> DataLoader:
    """A fresh loader per epoch: the sampler order and the worker seeds derive from (seed, epoch)
    alone, which is what makes a resumed run see the same batches as an uninterrupted one."""
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    return DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        collate_fn=collate_detection, pin_memory=torch.cuda.is_available(), drop_last=False,
        generator=generator, persistent_workers=False,
    )


def build_val_loader(cfg: DictConfig, dataset, rect: bool | None = None) -> DataLoader:
    """Letterboxed val batches: square imgsz x imgsz, or rectangular (each batch padded to its own
    shape, detector/data/rect.py) when ``rect`` is true; ``rect=None`` reads ``eval.rect`` (the
    training config) or ``rect`` (the eval config), false when neither is set."""
    if rect is None:
        rect = bool(OmegaConf.select(cfg, "eval.rect", default=None) or cfg.get("rect", False))
    if rect:
        dataset = RectValDataset(dataset, cfg.imgsz, cfg.val_batch_size)
    else:
        dataset.transforms = Letterbox(cfg.imgsz)
    return DataLoader(dataset, batch_size=cfg.val_batch_size, shuffle=False, num_workers=cfg.workers,
                      collate_fn=collate_detection, pin_memory=torch.cuda.is_available())


def accumulation_steps(nbs: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimiser step so that an update sees about ``nbs`` images."""
    return max(round(nbs / (batch_size * world_size)), 1)
