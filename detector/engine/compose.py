"""Hydra for the command line and the Python API: where the config tree is, and running one task
in its run folder through Hydra's own job runner.

The config tree is the package ``detector.configs`` (the repository's top-level ``configs/``,
shipped inside the wheel), so an installed package trains from any working directory. The
``detector`` command runs tasks through ``@hydra.main`` (sweeps, ``--cfg``, launchers); the API
composes the same config and runs the same task function with ``hydra.core.utils.run_job``, the
runner ``@hydra.main`` uses: the same run folder, ``.hydra/`` files and ``HydraConfig``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.resources
import logging
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger("detector")

CONFIG_PACKAGE = "detector.configs"
TASKS = ("train", "eval", "predict", "export")  # the entry configs: <config dir>/<task>.yaml


@functools.lru_cache(maxsize=1)
def config_dir() -> Path:
    """The installed config tree (a folder: setuptools installs package data as files)."""
    return Path(str(importlib.resources.files(CONFIG_PACKAGE)))


def _initialize(directory: Path, job_name: str):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        raise RuntimeError("detector composes its own Hydra configs and cannot run inside a @hydra.main "
                           "application or an initialize() block; call it outside them")
    return initialize_config_dir(config_dir=str(directory.resolve()), version_base="1.3", job_name=job_name)


def compose_task(task: str, overrides: list[str], directory: Path | None = None) -> DictConfig:
    """The task's config with its ``hydra`` node, as ``@hydra.main`` would build it (no run)."""
    from hydra import compose

    directory = Path(directory) if directory is not None else config_dir()
    with _initialize(directory, task):
        return compose(config_name=task, overrides=list(overrides), return_hydra_config=True)


def run_task(task: str, overrides: list[str], task_function: Callable[[DictConfig], object],
             directory: Path | None = None):
    """Compose ``task`` with ``overrides`` and run ``task_function(cfg)`` as a Hydra job: its run
    folder (``hydra.run.dir``; a fresh ``_1``, ``_2`` ... when two calls land in one second),
    ``.hydra/{config,hydra,overrides}.yaml`` and ``HydraConfig.get()`` inside. Returns what the
    function returns; its exception is raised here."""
    from hydra import compose
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext

    directory = Path(directory) if directory is not None else config_dir()
    with _initialize(directory, task):
        full = compose(config_name=task, overrides=list(overrides), return_hydra_config=True)
        explicit = any(o.split("=")[0].lstrip("+~") == "hydra.run.dir" for o in overrides)
        run_dir = Path(str(full.hydra.run.dir))
        if not explicit and run_dir.exists():
            n = 1
            while run_dir.with_name(f"{run_dir.name}_{n}").exists():
                n += 1
            with read_write(full), open_dict(full):
                full.hydra.run.dir = str(run_dir.with_name(f"{run_dir.name}_{n}"))
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(full))
        result = run_job(task_function=task_function, config=full, job_dir_key="hydra.run.dir",
                         job_subdir_key=None, hydra_context=context, configure_logging=False)
    if result.status == JobStatus.FAILED:
        raise result._return_value
    return result.return_value


def run_dir_of_job() -> Path:
    """The running job's folder (inside a task function)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


@contextlib.contextmanager
def log_to(run_dir: Path, name: str):
    """The "detector" logger at INFO, to ``<run_dir>/<name>.log`` for the call and to stdout when
    nothing else shows it (no root handler); repeated calls never stack handlers."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    ours = [h for h in log.handlers if getattr(h, "_detector_api", False)]
    if logging.getLogger().handlers:  # logging is configured (the command line): propagate there only
        for handler in ours:
            log.removeHandler(handler)
    elif not ours:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(formatter)
        stream._detector_api = True
        log.addHandler(stream)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(Path(run_dir) / f"{name}.log")
    file_handler.setFormatter(formatter)
    log.addHandler(file_handler)
    try:
        yield
    finally:
        log.removeHandler(file_handler)
        file_handler.close()


def setup_console_logging() -> None:
    """The command line's logging: INFO and above on stdout (the run's log file is added per task)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], force=True)

