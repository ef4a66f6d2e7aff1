"""Each task declares and checks its own config keys; the engine names none of them."""
import ast
import re
from pathlib import Path

import pytest
import yaml

import densezoo
from densezoo.config import TrainConfig, config_keys
from densezoo.engine import ConfigError, config_from_dict, config_to_dict, load_config, resume_config
from densezoo.engine.config import read_config_values
from densezoo.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
COMMON = set(config_keys(TrainConfig))
#: the keys each task adds to those of its base (``TrainConfig``, or the config of the task it extends)
OWN = {name: set(config_keys(task.config_class)) - set(config_keys(task.config_class.__mro__[1]))
       for name, task in TASKS.items()}


def minimal(task: str, **overrides) -> dict:
    values = dict(task=task, model=dict(name='resnet18'), data=dict(root='data'))
    if task == 'seg':
        values['data']['num_classes'] = 3
    if task == 'sr_gan':  # its perceptual loss needs a weights file
        values['perceptual'] = dict(weight=0.0)
    for key, value in overrides.items():
        section, _, name = key.rpartition('.')
        (values[section] if section else values)[name] = value
    return values


@pytest.mark.parametrize('task, key, value, owner', [
    ('sr', 'data.mixup', 0.2, 'classification'),
    ('seg', 'data.pipeline', 'timm', 'classification'),
    ('classification', 'data.hr_dir', 'HR', 'tasks sr, sr_gan'),
    ('classification', 'loss', 'l1', 'tasks sr, sr_gan'),
    ('seg', 'charbonnier_eps', 0.01, 'tasks sr, sr_gan'),
    ('sr', 'gan', {'weight': 0.1}, 'task sr_gan'),
    ('classification', 'model.head', 'fpn', 'seg'),
    ('sr', 'data.num_classes', 3, 'seg'),
])
def test_a_task_refuses_another_tasks_key_in_one_line(task, key, value, owner):
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(task, **{key: value}))
    owner = owner if owner.startswith('task') else f'task {owner}'
    assert str(info.value) == f"unknown config key '{key}' for task {task}; it is a key of {owner}"


@pytest.mark.parametrize('task, key, close', [
    ('sr', 'data.lr_pach', 'data.lr_patch'),
    ('seg', 'model.haed', 'model.head'),
    ('classification', 'data.mixpu', 'data.mixup'),
    ('sr', 'data.bach_size', 'data.batch_size'),
])
def test_typos_still_name_the_closest_key_of_the_task(task, key, close):
    with pytest.raises(ConfigError, match=rf"^unknown config key '{key}'; did you mean '{close}'\?$"):
        config_from_dict(minimal(task, **{key: 1}))


@pytest.mark.parametrize('override, message', [
    ({'data.degradation': 'blur'}, "data.degradation='blur' is not allowed; use bicubic, noise, jpeg, realesrgan, bsrgan"),
    ({'charbonnier_eps': 0}, 'charbonnier_eps=0.0 must be positive'),
    ({'data.jpeg_quality': 0}, 'data.jpeg_quality=0 must lie between 1 and 100'),
    ({'data.grey': 'RGB'}, "data.grey='RGB' is not allowed; use 'L' or 'Y'"),
])
def test_sr_checks_keep_their_messages(override, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal('sr', **override))
    assert str(info.value) == message


def test_task_configs_and_unknown_tasks():
    assert {name: type(config_from_dict(minimal(name))) for name in TASKS} == \
        {name: task.config_class for name, task in TASKS.items()}
    with pytest.raises(ConfigError, match=r"^task='detection' is not known; choose one of classification, seg, sr, "
                                          r"sr_gan$"):
        config_from_dict(minimal('detection'))
    with pytest.raises(ConfigError, match="^data.pipeline='dali' is not allowed; use 'timm' or 'albumentations'$"):
        config_from_dict(minimal('classification', **{'data.pipeline': 'dali'}))


def test_a_key_shared_by_tasks_is_declared_once_in_the_common_sections():
    names = sorted(OWN)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert OWN[first] & OWN[second] == set(), f'{first} and {second} both declare these keys'


def test_the_engine_names_no_task_key():
    """Neither the keys a task declares, nor the task names, nor task checks appear in densezoo/engine."""
    dotted = {key for keys in OWN.values() for key in keys}
    sections = 'model|data|optim|sched'
    generic = {'loss', 'scale', 'type'}  # also the logged training loss, GradScaler.scale and Python's type()
    shared = {key.rpartition('.')[2] for key in COMMON}  # a task's section may hold a shared one (gan.optim.lr)
    names = {key.rpartition('.')[2] for key in dotted} - generic - shared
    found = []
    for path in sorted((Path(densezoo.__file__).parent / 'engine').glob('*.py')):
        text = path.read_text(encoding='utf-8')
        for key in dotted:
            section, _, name = key.rpartition('.')
            pattern = rf'\b{section}\.{name}\b' if section else rf'\b(config|cfg|{sections})\.{name}\b'
            found += [f'{path.name}: {m.group(0)}' for m in re.finditer(pattern, text)]
        for node in ast.walk(ast.parse(text)):
            word = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else
                    node.arg if isinstance(node, (ast.keyword, ast.arg)) else
                    node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
            if word in names or word in TASKS or (isinstance(word, str) and re.search(r'check_(sr|seg|cls)', word)):
                found.append(f'{path.name}:{node.lineno}: {word}')
    assert found == [], found


def _same(got, written) -> bool:
    if isinstance(got, float) and isinstance(written, (str, int)):  # YAML reads 1e-4 as a string
        return got == float(written)
    return got == written


@pytest.mark.parametrize('path', sorted((ROOT / 'configs').glob('*/*.yaml')), ids=lambda p: f'{p.parent.name}/{p.name}')
def test_shipped_configs_keep_every_key_where_it_is(path):
    """Every key a shipped config sets (with its _base_ files) is loaded where the YAML puts it, with its value."""
    written, loaded = read_config_values(path), config_to_dict(load_config(path))
    keys = config_keys(TASKS[written['task']].config_class)
    sections = {key.rpartition('.')[0] for key in keys if '.' in key}  # 'model', 'gan', 'gan.optim', ...

    def check(written_values, loaded_values, prefix=''):
        for key, value in written_values.items():
            if f'{prefix}{key}' in sections:
                check(value, loaded_values[key], f'{prefix}{key}.')
            else:
                assert _same(loaded_values[key], value), f'{prefix}{key}'
    check(written, loaded)


def test_a_run_folder_listing_every_tasks_keys_resumes(tmp_path):
    """Runs started when one config held every task's keys wrote them all into config.yaml."""
    values = minimal('classification', **{'loss': None, 'charbonnier_eps': 1e-3, 'data.hr_dir': 'HR',
                                          'model.head': 'upernet', 'data.mixup': 0.2})
    (tmp_path / 'config.yaml').write_text(yaml.safe_dump(values))
    config = resume_config(tmp_path)
    assert config.data.mixup == 0.2 and not hasattr(config, 'loss') and not hasattr(config.data, 'hr_dir')
    with pytest.raises(ConfigError, match="^unknown config key .* for task classification; it is a key of task"):
        config_from_dict(values)
