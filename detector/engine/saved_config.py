"""A run config read from a file (a checkpoint's ``config``) is data, never code.

Hydra's ``instantiate`` calls whatever ``_target_`` a node names, so a checkpoint whose config
says ``loss_cls: {_target_: subprocess.run, ...}`` would run a process on ``tools/eval.py
ckpt=...`` or ``resume=...``. Before any saved config reaches ``instantiate``, ``checked_config``
compares it with the project's own config tree (``configs/``):

- every ``_target_`` must sit where an option of the project puts one (``model``, ``data``,
  ``loss_cls``, ``dfl_loss``, ...) and name a callable that an option of that group names;
- Hydra's other call keys (``_args_``, ``_recursive_``, ``_convert_``) are refused, ``_partial_``
  must be what the project's option has;
- values are plain data (str, int, float, bool, None, lists, string-keyed mappings) and no string
  holds an interpolation (``${...}``: a saved config is resolved, and resolvers such as
  ``oc.create`` could build a node with a target after the check).

Anything else is a ``SavedConfigError`` naming the file, the key and the target. The allow-list
is read from the installed configs once per process, so a new option file is allowed as soon as
it exists, and nothing a checkpoint holds can widen it.
"""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

from detector.engine.checkpoint import CheckpointError
from detector.engine.compose import config_dir as installed_config_dir
CALL_KEYS = ("_args_", "_recursive_", "_convert_")
PLAIN = (str, int, float, bool, type(None))
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: about 10x faster, read on first use


class SavedConfigError(CheckpointError):
    """A saved config that names a callable the project's config tree does not, or is not plain data."""


@functools.lru_cache(maxsize=4)
def allowed_targets(config_dir: Path | None = None) -> dict[str, dict[str, object]]:
    """{config path of a node ('loss_cls', 'dfl_loss', ...): {target: its ``_partial_`` value}}.

    A group option's nodes sit under the group's name; a ``# @package _global_`` option's (``dfl``,
    ``experiment``) where the file puts them. The entry configs (train.yaml, ...) count too.
    """
    allowed: dict[str, dict[str, object]] = {}
    config_dir = Path(config_dir) if config_dir is not None else installed_config_dir()
    for path in sorted(config_dir.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        group = path.parent.relative_to(config_dir).as_posix()
        is_global = group == "." or "@package _global_" in text.split("\n", 1)[0]
        prefix = "" if is_global else group.replace("/", ".")
        _collect(yaml.load(text, Loader=SAFE_LOADER) or {}, prefix, allowed)
    return allowed


def _collect(node, path: str, allowed: dict) -> None:
    if isinstance(node, dict):
        if "_target_" in node:
            allowed.setdefault(path, {})[str(node["_target_"])] = node.get("_partial_", False)
        for key, value in node.items():
            if key not in ("defaults", "hydra"):
                _collect(value, f"{path}.{key}" if path else str(key), allowed)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _collect(value, f"{path}[{i}]", allowed)


def checked_config(config, source: str, config_dir: Path | None = None) -> dict:
    """``config`` unchanged when every component it names is the project's own; else SavedConfigError.

    ``source`` names the file in the error ("checkpoint runs/x/best.pt").
    """
    if not isinstance(config, dict):
        raise SavedConfigError(f"{source}: its config is a {type(config).__name__}, not a mapping")
    allowed = allowed_targets(Path(config_dir) if config_dir is not None else installed_config_dir())
    _check(config, "", source, allowed)
    for path in allowed:  # where a component goes, a mapping (its keys; tools/convert.py writes model's) or null
        node = _select(config, path)
        if node is not None and not isinstance(node, dict):
            raise SavedConfigError(f"{source}: config key {path} is a {type(node).__name__}, not a mapping of a "
                                   "component's keys; the file is malformed")
    return config


def _select(config: dict, path: str):
    node = config
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _check(node, path: str, source: str, allowed: dict) -> None:
    where = path or "<root>"
    if isinstance(node, dict):
        for key in node:
            if not isinstance(key, str):
                raise SavedConfigError(f"{source}: config key {key!r} under {where} is not a string")
        if "_target_" in node:
            _check_target(node, path, source, allowed)
        else:
            for key in ("_partial_", *CALL_KEYS):
                if key in node:
                    raise SavedConfigError(f"{source}: config key {where}.{key} is a Hydra call key outside a "
                                           "component; refusing the file")
        for key, value in node.items():
            _check(value, f"{path}.{key}" if path else key, source, allowed)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check(value, f"{path}[{i}]", source, allowed)
    elif isinstance(node, str):
        if "${" in node:
            raise SavedConfigError(f"{source}: config key {where} holds an interpolation ({node[:80]!r}); a saved "
                                   "config is resolved data, refusing the file")
    elif not isinstance(node, PLAIN):
        raise SavedConfigError(f"{source}: config key {where} holds a {type(node).__name__}, not plain data")


def _check_target(node: dict, path: str, source: str, allowed: dict) -> None:
    target = node["_target_"]
    options = allowed.get(path, {})
    if not isinstance(target, str) or target not in options:
        valid = ", ".join(sorted(options)) or "none: the project puts no component there"
        raise SavedConfigError(
            f"{source}: config key {path or '<root>'}._target_ names {str(target)[:120]!r}, which is not a "
            f"component of this project's configs (valid there: {valid}); refusing the file, nothing was run")
    for key in CALL_KEYS:
        if key in node:
            raise SavedConfigError(f"{source}: config key {path}.{key} (Hydra call key) is not used by the "
                                   f"project's {target}; refusing the file")
    if node.get("_partial_", False) != options[target]:
        raise SavedConfigError(f"{source}: config key {path}._partial_ is {node.get('_partial_')!r}, the project's "
                               f"{target} has {options[target]!r}; refusing the file")
