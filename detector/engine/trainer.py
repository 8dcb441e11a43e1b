"""The training loop as plain functions: ``train(cfg, run_dir)`` runs a whole run.

One step: uint8 images -> float [0,1] on the device -> model (HeadOutput) -> criterion (dict of
losses) -> (loss * batch_size) backward, accumulated to the nominal batch -> unscale, clip,
optimiser step -> EMA update. Validation uses the EMA weights; checkpoints are atomic.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from detector.engine import build, dist
from detector.engine.checkpoint import (CheckpointError, capture_rng_state, load_state, read_checkpoint,
                                       remove_orphaned_temporaries, restore_rng_state, save_checkpoint)
from detector.engine.ema import ModelEMA, unwrap
from detector.engine.logging import NullLogger, RunLogger
from detector.engine.optim import apply_schedule, auto_warmup_bias_lr, warmup_iterations
from detector.engine.pretrained import freeze_layers, load_pretrained, read_pretrained, source_cls_width
from detector.engine.validate import validate

log = logging.getLogger("detector")
LOSS_NAMES = ("loss_cls", "loss_box", "loss_dfl")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    iteration: int = 0  # global micro-batch count, drives warmup
    last_step: int = -1  # iteration of the last optimiser step
    best_ap: float = -1.0
    nonfinite_in_row: int = 0
    history: list = field(default_factory=list)


FEW_STEPS = 8  # optimiser steps per epoch below which a run warns that it can hardly learn


def steps_per_epoch(images: int, global_batch: int, accumulate: int) -> int:
    """Optimiser steps in one epoch of ``images`` (the last partial batch is kept, as the loader does)."""
    return math.ceil(math.ceil(images / global_batch) / accumulate)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    device = build.resolve_device(cfg.device)
    rank, world_size = dist.init_distributed(device)
    build.seed_everything(cfg.seed + rank, cfg.deterministic)
    logger = RunLogger(run_dir) if rank == 0 else NullLogger()
    if rank == 0:
        for tmp in remove_orphaned_temporaries(run_dir / "checkpoints"):
            log.warning("removed %s, the temporary file of a checkpoint write that did not finish", tmp)

    splits = instantiate(cfg.data)
    num_classes = len(splits.names)
    source = None
    if cfg.get("pretrained") and not cfg.resume:  # a resumed run restores its own weights (and width)
        source = read_pretrained(cfg.pretrained)
        width = source_cls_width(source, cfg.model.scale, num_classes)
        if width is not None and cfg.model.get("cls_width") is None:
            with open_dict(cfg):
                cfg.model.cls_width = width  # recorded in the config, so that resume builds the same head
    model = build.build_model(cfg, num_classes).to(device, memory_format=build.memory_format(cfg))
    if source is not None:
        load_pretrained(model, cfg.pretrained, log=log.info if rank == 0 else lambda message: None,
                        names=list(splits.names), source=source)
    if cfg.get("freeze"):
        log.info("freeze=%s: %d parameter tensors frozen", cfg.freeze, freeze_layers(model, cfg.freeze))
    criterion = build.build_criterion(cfg, num_classes)
    accumulate = build.accumulation_steps(cfg.nbs, cfg.batch_size, world_size)
    weight_decay = cfg.optim.weight_decay * cfg.batch_size * world_size * accumulate / cfg.nbs
    optimizer = build.build_optimizer(cfg, model, num_classes, weight_decay)
    schedule = instantiate(cfg.sched)
    ema = ModelEMA(model, decay=cfg.ema.decay, tau=cfg.ema.tau)
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    state = TrainState()
    if cfg.resume:
        state = resume_from(cfg.resume, model, optimizer, ema, scaler, device)
    if world_size > 1:
        if cfg.sync_bn and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif cfg.sync_bn and rank == 0:
            log.warning("sync_bn=true ignored: SyncBatchNorm needs CUDA; on CPU each process keeps its own BN statistics")
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    train_set = build.build_train_set(cfg, splits.train)
    val_loader = build.build_val_loader(cfg, splits.val) if rank == 0 else None
    meta = {"names": list(splits.names), "category_ids": list(splits.val.category_ids),
            "model_args": {"scale": cfg.model.scale, "num_classes": num_classes, "reg_max": cfg.model.reg_max,
                           "cls_width": unwrap(model).head.cls_width},
            "config": OmegaConf.to_container(cfg, resolve=True)}
    if rank == 0:
        log.info("run folder: %s | %d train / %d val images, %d classes | device %s x%d | accumulate %d | "
                 "%s lr %g", run_dir, len(train_set), len(splits.val), num_classes, device, world_size, accumulate,
                 type(optimizer).__name__, optimizer.param_groups[0]["initial_lr"])
        steps = steps_per_epoch(len(train_set), cfg.batch_size * world_size, accumulate)
        if steps < FEW_STEPS:
            log.warning("an epoch is only %d optimiser step%s (%d training images at batch_size %d x %d process(es), "
                        "accumulate %d): %d updates in all, too few to learn from; use a smaller batch_size, "
                        "a smaller nbs (the nominal batch gradients accumulate to) or more epochs", steps, "s" * (steps != 1),
                        len(train_set), cfg.batch_size, world_size, accumulate, steps * cfg.epochs)

    metrics: dict = {}
    start = time.time()
    epoch = state.epoch
    try:
        for epoch in range(state.epoch, cfg.epochs):
            mosaic_on = epoch < cfg.epochs - cfg.close_mosaic
            train_set.set_mosaic(cfg.augment.mosaic if mosaic_on else 0.0)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            loader = build.build_train_loader(cfg, train_set, epoch=epoch, rank=rank, world_size=world_size)
            epoch_stats = train_one_epoch(
                cfg, model, criterion, loader, optimizer, schedule, ema, scaler, state,
                epoch=epoch, accumulate=accumulate, device=device, dtype=dtype, logger=logger, rank=rank)
            state.epoch = epoch + 1
            last = epoch + 1 == cfg.epochs
            if rank == 0 and ((epoch + 1) % cfg.val_interval == 0 or last):
                result = validate(cfg, ema.module, val_loader, splits, device, dtype, logger, step=epoch + 1)
                metrics = result.metrics
            dist.barrier()
            if rank == 0:
                finish_epoch(cfg, run_dir, logger, state, metrics, epoch_stats, epoch, optimizer,
                             model, ema, scaler, meta, validated=bool(metrics))
    except KeyboardInterrupt:
        if rank == 0:
            log.warning("interrupted: writing %s before exiting", run_dir / "checkpoints/last.pt")
            save_checkpoint(checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics, interrupted=True),
                            run_dir / "checkpoints" / "last.pt")
        raise
    finally:
        dist.cleanup()

    summary = {"epochs": cfg.epochs, "train_seconds": time.time() - start, "best_AP": state.best_ap,
               "final": metrics, "run_dir": str(run_dir), "optimizer_steps": state.iteration // accumulate}
    if rank == 0:
        logger.summary(summary)
        logger.hparams(_hparams(cfg), {k: metrics.get(k, 0.0) for k in ("AP", "AP50", "spearman")})
        logger.close()
    return summary


def train_one_epoch(cfg, model, criterion, loader, optimizer, schedule, ema, scaler, state: TrainState, *,
                    epoch: int, accumulate: int, device, dtype, logger, rank: int) -> dict:
    model.train()
    layout = build.memory_format(cfg)
    batches = len(loader)
    warmup_iters = warmup_iterations(cfg.warmup.epochs, cfg.warmup.min_iters, cfg.epochs, batches)
    bias_lr = auto_warmup_bias_lr(optimizer) if cfg.warmup.bias_lr == "auto" else cfg.warmup.bias_lr
    sums = {name: 0.0 for name in (*LOSS_NAMES, "loss")}
    seen, data_time, compute_time = 0, 0.0, 0.0
    bar = tqdm(loader, total=batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0 or not cfg.progress,
               dynamic_ncols=True, leave=True, mininterval=2.0)
    tick = time.perf_counter()
    for batch in bar:
        loaded = time.perf_counter()
        data_time += loaded - tick
        it = state.iteration
        apply_schedule(optimizer, schedule, epoch=epoch, iteration=it, epochs=cfg.epochs, warmup_iters=warmup_iters,
                       warmup_bias_lr=bias_lr, warmup_momentum=cfg.warmup.momentum)
        # YOLOv8 ramps the accumulation from 1 to its full value during warmup
        step_every = accumulate if it >= warmup_iters else max(1, round(np.interp(it, [0, warmup_iters], [1, accumulate])))

        images = build.batch_images(batch["images"], device, layout)  # [B, 3, H, W] in [0, 1]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(images)
        losses = criterion(outputs, batch["labels"].to(device), batch["boxes"].to(device), batch["gt_mask"].to(device))
        total = losses["loss"]
        if not torch.isfinite(total):
            handle_nonfinite(cfg, state, losses, it)
        else:
            state.nonfinite_in_row = 0
            scaler.scale(total * images.shape[0]).backward()
            for name in sums:
                sums[name] += float(losses[name].detach()) * images.shape[0]
            seen += images.shape[0]
        if it - state.last_step >= step_every:
            optimizer_step(model, optimizer, scaler, ema, cfg.grad_clip)
            state.last_step = it
        state.iteration += 1
        tick = time.perf_counter()
        compute_time += tick - loaded
        if rank == 0 and seen:
            rate = seen / max(data_time + compute_time, 1e-9)
            bar.set_postfix({k.replace("loss_", ""): f"{v / seen:.3f}" for k, v in sums.items()} | {"img/s": f"{rate:.1f}"})
            if it % cfg.log_interval == 0:
                logger.scalars({f"train/{k}": float(losses[k].detach()) for k in (*LOSS_NAMES, "loss")}, it)
                logger.scalars({f"train_weighted/{k}": criterion.weights[k] * float(losses[k].detach()) for k in LOSS_NAMES}, it)
                logger.scalars({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}, it)
                logger.scalars({"perf/images_per_s": rate, "perf/data_fraction": data_time / max(data_time + compute_time, 1e-9)}, it)
    bar.close()
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats.update(images_per_s=seen / max(data_time + compute_time, 1e-9), data_seconds=data_time,
                 compute_seconds=compute_time, **{f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
    return stats


def optimizer_step(model, optimizer, scaler, ema: ModelEMA, grad_clip: float) -> None:
    scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model)


def handle_nonfinite(cfg, state: TrainState, losses: dict, iteration: int) -> None:
    state.nonfinite_in_row += 1
    values = {k: float(v) for k, v in losses.items()}
    log.warning("non-finite loss at iteration %d (%s): step skipped", iteration, values)
    if state.nonfinite_in_row >= cfg.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{state.nonfinite_in_row} non-finite losses in a row (last: {values}). Usual causes: a learning "
            "rate too high (optim.lr), fp16 overflow (try amp=false), or invalid labels in the data set.")


def finish_epoch(cfg, run_dir, logger, state, metrics, epoch_stats, epoch, optimizer, model, ema, scaler, meta,
                 validated: bool) -> None:
    ckpt_dir = run_dir / "checkpoints"
    ap = float(metrics.get("AP", -1.0)) if validated else -1.0
    save_checkpoint(checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics), ckpt_dir / "last.pt")
    if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
        save_checkpoint(checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics),
                        ckpt_dir / f"epoch{epoch + 1}.pt")
    if validated and ap > state.best_ap:
        state.best_ap = ap
        best = checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics)
        best.pop("train_state")
        save_checkpoint(best, ckpt_dir / "best.pt")
    row = {"epoch": epoch + 1, **epoch_stats, **{k: metrics.get(k, "") for k in
           ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "spearman", "pearson")}}
    logger.epoch_row(row)
    logger.scalars({f"epoch/{k}": v for k, v in epoch_stats.items()}, epoch + 1)
    if validated:
        log.info("epoch %d/%d: AP %.4f AP50 %.4f (best AP %.4f)", epoch + 1, cfg.epochs, metrics.get("AP", 0),
                 metrics.get("AP50", 0), state.best_ap)


def checkpoint_state(state: TrainState, model, optimizer, ema: ModelEMA, scaler, meta: dict, metrics: dict,
                     interrupted: bool = False) -> dict:
    return {
        **meta,
        "model": ema.module.state_dict(),
        "epoch": state.epoch - 1,
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "train_state": {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
            "scaler": scaler.state_dict(), "iteration": state.iteration, "last_step": state.last_step,
            "best_ap": state.best_ap, "next_epoch": state.epoch, "interrupted": interrupted,
            "rng": capture_rng_state(),
        },
    }


def resume_from(path, model, optimizer, ema: ModelEMA, scaler, device) -> TrainState:
    checkpoint = read_checkpoint(path, map_location=device)
    if "train_state" not in checkpoint:
        raise ValueError(f"resume={path}: this checkpoint has no training state (best.pt?); resume from last.pt")
    train_state = checkpoint["train_state"]
    try:
        load_state(model, train_state["model"], path, "training weights")
        ema.load_state_dict(train_state["ema"])
        optimizer.load_state_dict(train_state["optimizer"])
        scaler.load_state_dict(train_state["scaler"])
        restore_rng_state(train_state["rng"])
        state = TrainState(epoch=int(train_state["next_epoch"]), iteration=int(train_state["iteration"]),
                           last_step=int(train_state["last_step"]), best_ap=float(train_state["best_ap"]))
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise CheckpointError(f"resume={path}: its training state does not fit the model and optimiser its own "
                              f"config builds ({detail}); the file is inconsistent or was edited") from None
    log.info("resumed from %s at epoch %d%s", path, state.epoch + 1,
             " (interrupted mid-epoch: that epoch is run again)" if train_state.get("interrupted") else "")
    return state


def _hparams(cfg: DictConfig) -> dict:
    choices = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}
    except ValueError:
        pass
    return {**choices, "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch_size": cfg.batch_size, "seed": cfg.seed}


__all__ = ["train", "train_one_epoch", "TrainState", "NonFiniteLossError"]
