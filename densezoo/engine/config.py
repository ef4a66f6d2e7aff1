"""Training config files: YAML (with ``_base_`` files), ``key=value`` overrides, and the config of the file's task.

The ``task`` key chooses the config class: every task (``densezoo.tasks``) declares its keys, their types and
defaults, and checks their values; the keys all tasks share are declared and checked in ``densezoo.config``. An
unknown key is an error that names the closest valid key (or the task whose key it is); a value of the wrong type is
an error that names the key, the value and the expected type; a key given twice in one mapping of a file is an error.
"""
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import yaml

from densezoo.config import (ConfigError, DataConfig, ModelConfig, OptimConfig, SchedConfig, TrainConfig,
                             build_config, check_common, config_keys)
from densezoo.tasks import TASKS

__all__ = ['ConfigError', 'ModelConfig', 'DataConfig', 'OptimConfig', 'SchedConfig', 'TrainConfig', 'load_config',
           'read_config_values', 'config_from_dict', 'config_to_dict', 'apply_overrides', 'task_class']


def task_class(values: Dict[str, Any]) -> type:
    """The task class that the ``task`` key of plain config values names (default: ``TrainConfig.task``)."""
    name = values.get('task', TrainConfig.task) if isinstance(values, dict) else TrainConfig.task
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f'task={name!r} is not known; choose one of {", ".join(sorted(TASKS))}')
    return TASKS[name]


def _keys_elsewhere(task: type) -> Dict[str, List[str]]:
    """Dotted keys of the other tasks' configs that ``task``'s config lacks, with the tasks that declare them."""
    own = set(config_keys(task.config_class))
    elsewhere: Dict[str, List[str]] = {}
    for name, other in sorted(TASKS.items()):
        for key in config_keys(other.config_class):
            if key not in own:
                elsewhere.setdefault(key, []).append(name)
    return elsewhere


def config_from_dict(values: Dict[str, Any], drop_other_tasks_keys: bool = False,
                     resume: bool = False) -> TrainConfig:
    """Build and check the config of the task that ``values`` names (its ``config_class``); raises ``ConfigError``.

    A key of another task is an error, or with ``drop_other_tasks_keys`` left out (the ``config.yaml`` of runs
    started when one config held the keys of every task lists them all). ``resume``: the values of a run that
    continues from its checkpoint, which holds its weights: a ``model.pretrained_file`` removed since is left out
    (with ``model.pretrained``) instead of being an error.
    """
    task = task_class(values)
    config = build_config(task.config_class, values, task.name, _keys_elsewhere(task),
                          drop_elsewhere=drop_other_tasks_keys)
    if resume and config.model.pretrained_file and not Path(config.model.pretrained_file).is_file():
        config.model.pretrained_file, config.model.pretrained = None, False
    check_common(config)
    task.check_config(config)
    return config


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
    """Plain (YAML-safe) values of a config."""
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    sections = [f.name for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))]
    values = plain(dataclasses.asdict(config))  # the run keys (a task's own ones included) before the sections
    return {**{k: v for k, v in values.items() if k not in sections}, **{k: values[k] for k in sections}}


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one YAML mapping, with the (1-based) lines of both."""

    def __init__(self, key, first: int, second: int):
        super().__init__(f'key {key!r} appears twice in one mapping (lines {first} and {second})')
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':  # the keys of '<<: *anchor' may be overridden
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise _DuplicateKey(key, lines[key], line)
                    lines[key] = line
                except TypeError:  # an unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str):
    """``yaml.safe_load`` that refuses duplicate keys (``_DuplicateKey``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _yaml_error(err: yaml.YAMLError) -> str:
    """A YAML syntax error on one line: 'line L, column C: problem'."""
    mark, problem = getattr(err, 'problem_mark', None), getattr(err, 'problem', None)
    if mark is None or not problem:
        return ' '.join(str(err).split())
    return f'line {mark.line + 1}, column {mark.column + 1}: {problem}'


def _parse_value(text: str):
    try:
        return _load_yaml(text)
    except _DuplicateKey:
        raise
    except yaml.YAMLError:
        return text


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)')
        target = values
        parts = key.split('.')
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f'override {item!r}: {part} is not a section')
        try:
            target[parts[-1]] = _parse_value(text)
        except _DuplicateKey as err:
            raise ConfigError(f'override {item!r} sets the key {err.key!r} twice; keep one of them') from None
    return values


#: key naming the config files a config builds on (paths relative to its own folder), as in mmengine's configs
BASE_KEY = '_base_'
#: key that, set to true in a mapping, replaces the base's mapping instead of updating it key by key
DELETE_KEY = '_delete_'


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` updated by ``update``: mappings merge key by key (unless ``update``'s has ``_delete_: true``),
    anything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and value.get(DELETE_KEY):
            merged[key] = {k: v for k, v in value.items() if k != DELETE_KEY}
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_values(path, _including: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The values of a YAML config file with its ``_base_`` files (one name or a list, read relative to the file's
    folder, earlier ones first) merged under it; raises ``ConfigError`` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {str(path)!r} does not exist')
    if path.resolve() in _including:
        chain = ' -> '.join(str(p) for p in (*_including, path.resolve()))
        raise ConfigError(f'config file {str(path)!r} includes itself through {BASE_KEY}: {chain}')
    try:
        values = _load_yaml(path.read_text()) or {}
    except _DuplicateKey as err:
        raise ConfigError(f'config file {str(path)!r} sets the key {err.key!r} twice in one mapping (lines '
                          f'{err.first} and {err.second}); keep one of them') from None
    except yaml.YAMLError as err:
        raise ConfigError(f'config file {str(path)!r} is not valid YAML: {_yaml_error(err)}') from None
    if not isinstance(values, dict):
        raise ConfigError(f'config file {str(path)!r} must hold a mapping of sections, got {type(values).__name__}')
    bases = values.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f'{BASE_KEY} in config file {str(path)!r} must be a file name or a list of file names, '
                          f'got {bases!r}')
    merged: Dict[str, Any] = {}
    for base in bases:
        if not (path.parent / base).is_file():
            raise ConfigError(f'{BASE_KEY} file {base!r} of config file {str(path)!r} does not exist (it is read '
                              f'relative to {str(path.parent)!r})')
        merged = _merge(merged, read_config_values(path.parent / base, (*_including, path.resolve())))
    return _merge(merged, values)


def load_config(path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config file (with its ``_base_`` files), apply overrides and check it; raises ``ConfigError``
    with a one-line reason."""
    path = Path(path)
    config = config_from_dict(apply_overrides(read_config_values(path), overrides))
    if not config.name:
        config.name = path.stem
    return config
