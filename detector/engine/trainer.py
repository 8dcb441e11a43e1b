"""The training loop as plain functions: ``train(cfg, run_dir)`` runs a whole run.

One step: uint8 images -> float [0,1] on the device -> model (HeadOutput) -> criterion (dict of
losses) -> (loss * batch_size) backward, accumulated to the nominal batch -> unscale, clip,
optimiser step -> EMA update. Validation uses the EMA weights; checkpoints are atomic. With
``patience=N`` the run stops at a validation N or more epochs after the best AP (``should_stop``).
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
from detector.engine.logging import NullLogger, RunLogger, flat_params
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
    best_epoch: int = 0  # the 1-based epoch of best_ap (0: none yet, or a checkpoint from before patience)
    patience_start: int = 0  # patience counts from here when later than best_epoch (a stopped run trained on)
    stopped_epoch: int = 0  # the 1-based epoch at which patience stopped the run (0: it did not)
    nonfinite_in_row: int = 0
    metrics: dict = field(default_factory=dict)  # of the last validation (a resumed run: its checkpoint's)


FEW_STEPS = 8  # optimiser steps per epoch below which a run warns that it can hardly learn


def write_run_diagnostics(cfg, run_dir: Path, result, splits, logger, step: int) -> None:
    """The val diagnostics (confusion matrix, P/R/F1 curves, per-class table, reliability, val
    batches) of the best validation, to the run folder and the loggers; pictures never fail a run."""
    if getattr(result, "gt", None) is None or not cfg.eval.get("diagnostics", True):  # no validation with ground truth
        return
    from detector.eval.diagnostics import write_diagnostics

    try:
        diagnostics = write_diagnostics(run_dir, result.detections, result.gt, list(splits.names),
                                        precision=result.precision, dataset=splits.val,
                                        conf=cfg.eval.get("confusion_conf", 0.25), iou=cfg.eval.get("confusion_iou", 0.45),
                                        val_batches=cfg.eval.get("val_batches", 3))
    except (ValueError, RuntimeError, OSError) as error:
        log.warning("val diagnostics skipped: %s", error)
        return
    files = {f"val/{name}": run_dir / f"{name}{'.jpg' if name.startswith('val_batch') else '.png'}"
             for name in diagnostics.figures}
    logger.image_files({name: path for name, path in files.items() if path.is_file()}, step)


def steps_per_epoch(images: int, global_batch: int, accumulate: int) -> int:
    """Optimiser steps in one epoch of ``images`` (the last partial batch is kept, as the loader does)."""
    return math.ceil(math.ceil(images / global_batch) / accumulate)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def should_stop(patience: int, state: TrainState, epoch: int) -> bool:
    """After the validation of ``epoch`` (1-based): has AP not improved for ``patience`` epochs?

    YOLOv8's rule: counted in epochs from the best one, so with ``val_interval`` k the run stops at the
    first validation at least ``patience`` epochs after the best; a best AP of 0 does not start the count
    (a detector's first epochs are all 0); 0 turns it off."""
    return patience > 0 and state.best_ap > 0 and epoch - max(state.best_epoch, state.patience_start) >= patience


def record_validation(state: TrainState, ap: float, epoch: int, patience: int) -> bool:
    """The best AP and its epoch, and the early stop, after the validation of ``epoch`` (1-based);
    True when AP improved (best.pt is written)."""
    improved = ap > state.best_ap
    if improved:
        state.best_ap, state.best_epoch = ap, epoch
    if should_stop(patience, state, epoch):
        state.stopped_epoch = epoch
    return improved


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run (or resume) the run of ``cfg`` in ``run_dir``; returns its summary (also summary.json)."""
    run_dir = Path(run_dir)
    device = build.resolve_device(cfg.device)
    rank, world_size = dist.init_distributed(device)
    build.seed_everything(cfg.seed + rank, cfg.deterministic)
    try:  # the trackers first: a missing one stops the run before anything is built
        logger = RunLogger(run_dir, cfg.get("logger")) if rank == 0 else NullLogger()
    except BaseException:
        dist.cleanup()
        raise
    status = "FAILED"
    try:
        summary = _train(cfg, run_dir, device, rank, world_size, logger)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        logger.close(status)


def _train(cfg: DictConfig, run_dir: Path, device: torch.device, rank: int, world_size: int, logger) -> dict:
    if rank == 0:
        for tmp in remove_orphaned_temporaries(run_dir / "checkpoints"):
            log.warning("removed %s, the temporary file of a checkpoint write that did not finish", tmp)

    splits = instantiate(cfg.data)
    num_classes = len(splits.names)
    resolved = build.resolve_recipe(cfg, num_classes)  # nbs, warmup.epochs, optim.lr, warmup.momentum: auto
    if cfg.get("pretrained") and not cfg.resume and rank == 0:
        log.info("starting from weights: %s (finetune.*; a value given on the command line is kept)",
                 ", ".join(f"{k} {'none' if v is None else f'{v:g}'}" for k, v in resolved.items()))
    source = None
    if cfg.get("pretrained") and not cfg.resume:  # a resumed run restores its own weights (and width)
        source = read_pretrained(cfg.pretrained)
        width = source_cls_width(source, cfg.model.scale, num_classes, arch=cfg.model.get("arch"))
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
        state = resume_from(cfg.resume, model, optimizer, ema, scaler, device, epochs=cfg.epochs)
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
            "model_args": {"arch": unwrap(model).arch, "scale": unwrap(model).scale, "num_classes": num_classes,
                           "reg_max": cfg.model.reg_max, "cls_width": unwrap(model).head.cls_width},
            "config": OmegaConf.to_container(cfg, resolve=True)}
    if rank == 0:
        logger.params({**flat_params(meta["config"]), **{f"choice.{k}": v for k, v in _choices(cfg).items()}})
        log.info("run folder: %s | %d train / %d val images, %d classes | device %s x%d | accumulate %d | "
                 "%s lr %g", run_dir, len(train_set), len(splits.val), num_classes, device, world_size, accumulate,
                 type(optimizer).__name__, optimizer.param_groups[0]["initial_lr"])
        steps = steps_per_epoch(len(train_set), cfg.batch_size * world_size, accumulate)
        if steps < FEW_STEPS and cfg.get("pretrained") and not cfg.resume:
            log.info("an epoch is %d optimiser step%s (accumulate %d, nbs %d, lr %g): few, from weights, where the "
                     "pretrained features carry the run (docs/recipe.md#starting-from-weights)", steps,
                     "s" * (steps != 1), accumulate, cfg.nbs, optimizer.param_groups[0]["initial_lr"])
        elif steps < FEW_STEPS:
            log.warning("an epoch is only %d optimiser step%s (%d training images at batch_size %d x %d process(es), "
                        "accumulate %d): %d updates in all, too few to learn from; use a smaller batch_size, "
                        "a smaller nbs (the nominal batch gradients accumulate to) or more epochs", steps, "s" * (steps != 1),
                        len(train_set), cfg.batch_size, world_size, accumulate, steps * cfg.epochs)

    metrics: dict = state.metrics
    best_result = last_result = None  # EvalResults: the diagnostics are drawn from the best validation
    start = time.time()
    try:
        for epoch in range(cfg.epochs if state.stopped_epoch else state.epoch, cfg.epochs):  # stopped: none
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
            validated = (epoch + 1) % cfg.val_interval == 0 or last
            if rank == 0 and validated:
                last_result = validate(cfg, ema.module, val_loader, splits, device, dtype, logger, step=epoch + 1)
                metrics = last_result.metrics
                if metrics.get("AP", -1.0) > state.best_ap:  # finish_epoch writes this one's weights to best.pt
                    best_result = last_result
            dist.barrier()
            if rank == 0:
                finish_epoch(cfg, run_dir, logger, state, metrics, epoch_stats, epoch, optimizer,
                             model, ema, scaler, meta, validated=validated)
            if _stop_everywhere(state.stopped_epoch > 0, device, world_size):
                break
    except KeyboardInterrupt:
        if rank == 0:
            log.warning("interrupted: writing %s before exiting", run_dir / "checkpoints/last.pt")
            save_checkpoint(checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics, interrupted=True),
                            run_dir / "checkpoints" / "last.pt")
        raise
    finally:
        dist.cleanup()

    summary = {"epochs": cfg.epochs, "train_seconds": time.time() - start, "best_AP": state.best_ap,
               "best_epoch": state.best_epoch or None, "stopped_early_at": state.stopped_epoch or None,
               "final": metrics, "run_dir": str(run_dir), "optimizer_steps": state.iteration // accumulate}
    if rank == 0:
        logger.summary(summary)
        logger.hparams(_hparams(cfg), {k: metrics.get(k, 0.0) for k in ("AP", "AP50", "spearman")})
        logger.draw_results()
        write_run_diagnostics(cfg, run_dir, best_result or last_result, splits, logger, step=state.epoch)
        logger.artifacts()
    return summary


def _stop_everywhere(stop: bool, device: torch.device, world_size: int) -> bool:
    """Rank 0's early-stop decision, the same on every process (the others do not validate)."""
    if world_size == 1:
        return stop
    flag = torch.tensor([float(stop)], device=device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


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
    """Best AP and patience first, so that last.pt holds them; then last.pt, best.pt, the epoch's row."""
    ckpt_dir = run_dir / "checkpoints"
    patience = int(cfg.get("patience") or 0) if epoch + 1 < cfg.epochs else 0  # the last epoch ends the run anyway
    improved = validated and record_validation(state, float(metrics.get("AP", -1.0)), epoch + 1, patience)
    save_checkpoint(checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics), ckpt_dir / "last.pt")
    if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
        save_checkpoint(checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics),
                        ckpt_dir / f"epoch{epoch + 1}.pt")
    if improved:
        best = checkpoint_state(state, model, optimizer, ema, scaler, meta, metrics)
        best.pop("train_state")
        save_checkpoint(best, ckpt_dir / "best.pt")
    logger.epoch_row({"epoch": epoch + 1, **epoch_stats, **{k: metrics.get(k) if validated else None for k in
                      ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "spearman", "pearson")}})
    if validated:
        log.info("epoch %d/%d: AP %.4f AP50 %.4f (best AP %.4f)", epoch + 1, cfg.epochs, metrics.get("AP", 0),
                 metrics.get("AP50", 0), state.best_ap)
    if state.stopped_epoch:
        since = max(state.best_epoch, state.patience_start)
        log.info("patience=%d: no improvement in %d epochs since epoch %d (best AP %.4f%s): stopping", patience,
                 epoch + 1 - since, since, state.best_ap,
                 f" at epoch {state.best_epoch}" if state.best_epoch and state.best_epoch != since else "")


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
            "best_ap": state.best_ap, "best_epoch": state.best_epoch, "patience_start": state.patience_start,
            "stopped_epoch": state.stopped_epoch,
            "next_epoch": state.epoch, "interrupted": interrupted, "rng": capture_rng_state(),
        },
    }


def resume_from(path, model, optimizer, ema: ModelEMA, scaler, device, epochs: int | None = None) -> TrainState:
    """The TrainState of ``path`` (a last.pt), its weights and optimiser state loaded. A run that patience
    stopped stays stopped unless ``epochs`` is above its own; then the count starts again where it stopped.
    Checkpoints from before patience existed (no best_epoch) count from the resumed epoch."""
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
        next_epoch = int(train_state["next_epoch"])
        state = TrainState(epoch=next_epoch, iteration=int(train_state["iteration"]),
                           last_step=int(train_state["last_step"]), best_ap=float(train_state["best_ap"]),
                           best_epoch=int(train_state.get("best_epoch", 0)),
                           # written before patience existed: the count starts at the resumed epoch
                           patience_start=int(train_state.get("patience_start", 0 if "best_epoch" in train_state
                                                                 else next_epoch)),
                           stopped_epoch=int(train_state.get("stopped_epoch", 0)),
                           metrics={k: float(v) for k, v in (checkpoint.get("metrics") or {}).items()})
        if not all(0 <= e <= next_epoch for e in (state.best_epoch, state.patience_start, state.stopped_epoch)):
            raise ValueError(f"best_epoch {state.best_epoch}, patience_start {state.patience_start} or "
                             f"stopped_epoch {state.stopped_epoch} after next_epoch {next_epoch}")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise CheckpointError(f"resume={path}: its training state does not fit the model and optimiser its own "
                              f"config builds ({detail}); the file is inconsistent or was edited") from None
    planned = (checkpoint.get("config") or {}).get("epochs")
    if state.stopped_epoch and epochs is not None and isinstance(planned, int) and epochs > planned:
        log.info("resume: the run stopped early at epoch %d; epochs=%d (was %d): training on, the patience count "
                 "starting there", state.stopped_epoch, epochs, planned)
        state.patience_start, state.stopped_epoch = state.stopped_epoch, 0
    elif state.stopped_epoch:
        log.info("this run stopped early at epoch %d (patience): nothing to run; raise epochs above %s to train "
                 "further", state.stopped_epoch, planned)
    log.info("resumed from %s at epoch %d%s", path, state.epoch + 1,
             " (interrupted mid-epoch: that epoch is run again)" if train_state.get("interrupted") else "")
    return state


def _choices(cfg: DictConfig) -> dict:
    """The run's group choices (loss_cls: bce, ...); {} outside a Hydra job and on resume (the resuming
    job's choices are its defaults, not the run's); a list choice (logger) is None."""
    if cfg.resume:
        return {}
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}
    except ValueError:
        return {}


def _hparams(cfg: DictConfig) -> dict:
    return {**_choices(cfg), "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch_size": cfg.batch_size, "seed": cfg.seed}


__all__ = ["train", "train_one_epoch", "should_stop", "record_validation", "TrainState", "NonFiniteLossError"]
