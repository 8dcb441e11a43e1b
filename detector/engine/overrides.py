"""Check a task's Hydra overrides against the config tree before Hydra runs them.

Hydra takes ``+epoch=1`` silently (nothing reads ``epoch``), lets ``+data.data_yaml=x`` through
without ``data=yolo`` (a TypeError deep in the data code later), and answers an unknown option
with its search-path listing. ``check_overrides`` refuses such overrides up front with an
``OverrideError`` of one line: the override as written, what is wrong, the fix.

Rules, for each override parsed by Hydra's own parser (a parse error names the override):

- ``hydra.*`` keys and ``hydra/*`` groups are Hydra's: allowed.
- A config-group choice (``loss_cls=vfl``, the sweep ``loss_cls=qfl,vfl``, ``experiment=...``):
  every value must be an option file of the group; the group must be in the task's defaults
  (``data=yolo`` means nothing to predict); ``+group=`` there is refused (drop the +), and so is
  ``group=null``, which Hydra's defaults list fails on (``~group`` drops a choice).
- Any other key (``epochs=3``, ``optim.lr=0.01``, ``+x=1``, ``++x=1``, ``~x``) is looked up in
  the task's config composed with the group choices (a sweep of choices: its first value only).
  A key that is there passes, except ``+key`` (Hydra refuses it: drop the +). A key that is not:
    1. a key that the file of another option of one of the task's groups sets is refused with
       that choice: ``data.data_yaml`` (data/yolo.yaml) ``needs data=yolo``. Files place their
       keys by package (``# @package _global_``: at the top, as dfl/on.yaml's ``dfl_loss``); of
       several, those placing it in their group's own node are named (``data.num_train``:
       data=shapes, not experiment=shapes_ablation, which merely adds to any data set);
    2. an argument with a default of the ``_target_`` of the node that would hold it
       (``+optim.eps=1e-8``, AdamW's) passes with ``+`` or ``++``; a required argument
       (``num_classes``, ``params``) is the code's to fill in and is refused;
    3. anything else is refused with the nearest keys (difflib): ``did you mean epochs?``.
  Rule 1 comes first so that the common mistake is answered without importing the component
  (torch, for an optimiser: seconds); no option file of the tree sets a key that another
  option's component takes without setting it, so the order changes no answer today.
  ``~key`` must name a key that is there.
- The values of plain keys, sweeps included, are Hydra's business and not looked at.

The ``_target_`` callables imported for rule 2 are those of the composed config tree, which holds
the project's option files and the group choices only, never a value given on the command line.
Inside ``@hydra.main`` or an ``initialize()`` block the caller's GlobalHydra is put aside for the
composition and put back.

Cached per process: the option files (``_options``: {group: (option, ...)}; ``_providers``, read
only when a key is missing: {dotted key: (Provider(group, option, in_own_node), ...)}), each
task's default groups, and each composition (``_compose``: the composed config's dotted keys,
{node key: _target_} and {group: choice}). Overrides that are all group choices need no
composition.
"""
from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.errors import HydraException
from hydra.utils import get_method
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class OverrideError(ValueError):
    """An override that Hydra would ignore, refuse with noise, or let fail later; one line."""


class Provider(NamedTuple):
    group: str
    option: str
    in_own_node: bool  # False for a file placed elsewhere: ``# @package _global_`` (dfl/on, experiment/*)


class Composed(NamedTuple):
    keys: frozenset[str]  # every dotted key of the config, hydra's node left out ("warmup.epochs")
    targets: dict[str, str]  # node key ("" for the root) -> its _target_ ("optim": "torch.optim.AdamW")
    choices: dict[str, str | None]  # group -> chosen option ("experiment": None), hydra/* left out


def check_overrides(task: str, overrides: Sequence[str], config_dir: str | Path) -> None:
    """Raise OverrideError (one line) for the first override of ``task`` that breaks the rules
    in the module docstring; ``task`` is a config name of ``config_dir`` (train, eval, ...)."""
    config_dir = str(Path(config_dir).resolve())
    if not Path(config_dir, f"{task}.yaml").is_file():
        raise ValueError(f"unknown task {task!r}: no {task}.yaml in {config_dir}")
    options = _options(config_dir)
    task_groups = _task_groups(config_dir, task)
    group_lines, plain = [], []
    for override in (_parse(line) for line in overrides):
        if override.is_hydra_override() or override.key_or_group == "hydra":
            continue
        if override.key_or_group in options:
            group_lines.append((override.input_line, _checked_choice(override, task, options, task_groups)))
        else:
            plain.append(override)
    if not plain:  # nothing to look up: the checks above are all a choice needs
        return
    composed = _compose_or_explain(config_dir, task, group_lines)
    for override in plain:
        _check_key(override, task, composed, config_dir)


# ------------------------------------------------------------------------------------ overrides
@lru_cache(maxsize=1)
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _parse(line: str) -> Override:
    try:
        return _parser().parse_overrides([line])[0]
    except HydraException as error:
        reason = str(error).splitlines()[0]
        raise OverrideError(f"{line}: Hydra cannot parse it ({reason}); write key=value, +key=value, "
                            "++key=value or ~key, and quote a value that holds special characters") from None


def _checked_choice(override: Override, task: str, options: dict[str, tuple[str, ...]],
                    task_groups: frozenset[str]) -> str:
    """Check a group choice; return the override to compose with (a sweep: its first value)."""
    line, group = override.input_line, override.key_or_group
    valid = options[group]
    if group not in task_groups:
        takes = f"its groups are {', '.join(sorted(task_groups))}" if task_groups else f"{task} takes no group choice"
        raise OverrideError(f"{line}: {task}'s config has no {group} group; {takes}")
    if override.is_add():
        raise OverrideError(f"{line}: {group} is already a group of {task}'s config; drop the + ({line[1:]})")
    if override.value_type is None:  # ~group
        return line
    if override.is_interval_sweep():
        raise OverrideError(f"{line}: a {group} choice is an option name, not an interval; "
                            f"{group} is one of {', '.join(valid)}")
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        values = override.value().filter(list(valid))
        if not values:
            raise OverrideError(f"{line}: no option matches; {group} is one of {', '.join(valid)}")
    elif override.is_sweep_override():
        values = list(override.sweep_string_iterator())
    else:
        value = override.value()
        values = [_choice_text(v) for v in (value if isinstance(value, list) else [value])]
    if "null" in values:  # Hydra's compose and command line fail on it (a ValueError in the defaults list)
        raise OverrideError(f"{line}: Hydra cannot choose null for a group on the command line; "
                            f"write ~{group} to drop the choice")
    bad = [v for v in values if v not in valid]
    if bad:
        which = f"option{'s' if len(bad) > 1 else ''} {', '.join(bad)}" if override.is_sweep_override() else "option"
        raise OverrideError(f"{line}: no such {which}; {group} is one of {', '.join(valid)}")
    return f"{override.get_key_element()}={values[0]}" if override.is_sweep_override() else line


def _choice_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_key(override: Override, task: str, composed: Composed, config_dir: str) -> None:
    line, key = override.input_line, override.key_or_group
    if not key:
        raise OverrideError(f"{line}: no key before the =; write key=value")
    if key in composed.keys:
        if override.is_add():
            raise OverrideError(f"{line}: {key} is already in {task}'s config; drop the + ({line[1:]})")
        return
    if override.is_delete():
        raise OverrideError(f"{line}: no key {key} in {task}'s config to delete{_did_you_mean(key, composed)}")
    choices, groups = composed.choices, _task_groups(config_dir, task)
    # a group of the task missing from the choices was chosen as a list (logger=[tensorboard,csv])
    found = [p for p in _providers(config_dir).get(key, ())
             if (p.group in choices and choices[p.group] != p.option) or (p.group not in choices and p.group in groups)]
    found = [p for p in found if p.in_own_node] or found  # data=shapes, not experiment=... (which merely adds)
    if found:
        raise OverrideError(f"{line}: {key} needs {' or '.join(f'{p.group}={p.option}' for p in found)}")
    parent, _, name = key.rpartition(".")
    target = composed.targets.get(parent)
    arguments = _arguments(target) if target else None
    if arguments is not None:
        optional, required, any_keyword = arguments
        if name in optional or (any_keyword and name not in required):
            if override.type in (OverrideType.ADD, OverrideType.FORCE_ADD):
                return
            raise OverrideError(f"{line}: {key} is an argument of {target} that {task}'s config does not set; "
                                f"add it with +{line}")
        if name in required:
            raise OverrideError(f"{line}: {name} is a required argument of {target} that the code fills in; "
                                "leave it out")
    raise OverrideError(f"{line}: no key {key} in {task}'s config{_did_you_mean(key, composed)}")


def _did_you_mean(key: str, composed: Composed) -> str:
    """``; did you mean a or b?``. Under a node that exists, its own keys (optim.lr0 -> optim.lr;
    none near: the node's keys are listed); at the top, top-level names, then any key's last name
    (lr -> optim.lr); under a node that does not exist, whole dotted keys (optm.lr -> optim.lr)."""
    pool = composed.keys | set(composed.choices)  # dfl, experiment: groups without a node of their own
    parent, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in pool if k.rpartition(".")[0] == parent}
    if parent and parent not in pool:
        matches = difflib.get_close_matches(key, pool, n=3)
    else:
        matches = [siblings[m] for m in difflib.get_close_matches(name, siblings, n=3)]
        if not matches and parent and siblings:
            return f"; {parent} has {', '.join(sorted(n for n in siblings if not n.startswith('_')))}"
        if not matches and not parent:
            by_name: dict[str, list[str]] = {}
            for k in sorted(pool):
                by_name.setdefault(k.rpartition(".")[2], []).append(k)
            matches = [k for m in difflib.get_close_matches(name, by_name, n=3) for k in by_name[m]][:3]
    if not matches:
        return "; check the spelling (--cfg job lists the keys)"
    return f"; did you mean {' or '.join(matches)}?"


@lru_cache(maxsize=64)
def _arguments(target: str) -> tuple[frozenset[str], frozenset[str], bool] | None:
    """(keyword arguments with a default, required ones, takes **kwargs) of a config's
    ``_target_``, None where it cannot be imported or inspected."""
    try:
        parameters = inspect.signature(get_method(target)).parameters.values()
    except (ImportError, ValueError, TypeError):
        return None
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return (frozenset(p.name for p in named if p.default is not p.empty),
            frozenset(p.name for p in named if p.default is p.empty),
            any(p.kind == p.VAR_KEYWORD for p in parameters))


# ---------------------------------------------------------------------------------- config tree
@lru_cache(maxsize=8)
def _options(config_dir: str) -> dict[str, tuple[str, ...]]:
    """{group: its options, sorted}: ("data": ("coco", "shapes", "yolo")); groups nest as "a/b"."""
    root = Path(config_dir)
    options: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        if path.parent != root:  # the top holds the tasks' entry configs
            options.setdefault(path.parent.relative_to(root).as_posix(), []).append(path.stem)
    return {group: tuple(names) for group, names in options.items()}


@lru_cache(maxsize=8)
def _providers(config_dir: str) -> dict[str, tuple[Provider, ...]]:
    """{dotted key: the options whose file sets it}, each file's keys placed by its package
    ("data.data_yaml": (Provider("data", "yolo", True),); a _global_ file's at the top)."""
    providers: dict[str, list[Provider]] = {}
    for group, names in _options(config_dir).items():
        node = group.replace("/", ".")
        for name in names:
            path = Path(config_dir, group, f"{name}.yaml")
            package = _package(path, group)
            content = _load_yaml(path)
            if isinstance(content, dict):
                content.pop("defaults", None)
            keys: set[str] = set()
            _walk(content, package, keys, {})
            in_own_node = package == node or package.startswith(f"{node}.")
            for key in keys:
                providers.setdefault(key, []).append(Provider(group, name, in_own_node))
    return {key: tuple(found) for key, found in providers.items()}


def _load_yaml(path: Path):
    """A config file as plain data; PyYAML's C loader is 10x OmegaConf.load, and only keys are read."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _package(path: Path, group: str) -> str:
    """Where an option file's keys go: its ``# @package`` header among the comment lines at the
    top (absolute; ``_global_``: the top, "") or else the group's path ("data")."""
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            break
        match = re.match(r"#\s*@package\s+(\S+)", line)
        if match:
            package = match[1]
            return "" if package == "_global_" else package.removeprefix("_global_.")
    return group.replace("/", ".")


@lru_cache(maxsize=32)
def _task_groups(config_dir: str, task: str) -> frozenset[str]:
    """The groups of a task's own defaults list (train: model, data, ..., experiment)."""
    defaults = (_load_yaml(Path(config_dir, f"{task}.yaml")) or {}).get("defaults") or []
    groups = set()
    for entry in defaults:
        for name in entry if isinstance(entry, dict) else ():
            words = name.split()  # "data", "optional data", "override hydra/job_logging"
            group = words[-1].split("@")[0].lstrip("/")
            if words[0] != "override" and not group.startswith("hydra/"):
                groups.add(group)
    return frozenset(groups)


def _walk(node, prefix: str, keys: set[str], targets: dict[str, str]) -> None:
    """Add the dotted key of every node under ``node`` to ``keys``, every _target_ to ``targets``."""
    if isinstance(node, dict):
        if "_target_" in node:
            targets[prefix] = node["_target_"]
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for name, child in items:
        key = f"{prefix}.{name}" if prefix else str(name)
        keys.add(key)
        _walk(child, key, keys, targets)


@contextmanager
def _outside_hydra():
    """compose() needs a GlobalHydra of its own: inside @hydra.main or an initialize() block the
    caller's is put aside for the call and put back after."""
    saved = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().hydra = saved


@lru_cache(maxsize=32)
def _compose(config_dir: str, task: str, group_lines: tuple[str, ...]) -> Composed:
    with _outside_hydra(), initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name=task, overrides=list(group_lines), return_hydra_config=True)
    choices = {g: c for g, c in cfg.hydra.runtime.choices.items() if not g.startswith("hydra/")}
    tree = OmegaConf.to_container(cfg, resolve=False)
    del tree["hydra"]
    keys: set[str] = set()
    targets: dict[str, str] = {}
    _walk(tree, "", keys, targets)
    return Composed(frozenset(keys), targets, choices)


def _compose_or_explain(config_dir: str, task: str, choices: list[tuple[str, str]]) -> Composed:
    """The composition with the (as written, to compose) group choices; a Hydra error becomes
    one line naming the choice that causes it."""
    try:
        return _compose(config_dir, task, tuple(line for _, line in choices))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        culprits = [written for written, _ in choices]
        for written, line in choices:
            try:
                _compose(config_dir, task, (line,))
            except (HydraException, OmegaConfBaseException, ValueError):
                culprits = [written]
                break
        reason = " ".join(str(error).split("Config search path")[0].split())
        if not culprits:
            raise OverrideError(f"{task}.yaml: Hydra cannot compose it ({reason})") from None
        raise OverrideError(f"{' '.join(culprits)}: Hydra cannot compose {task}'s config with it ({reason})") from None
