"""Every config value is checked where it is read: out-of-range values, unknown names, devices torch does not see,
duplicate YAML keys, unsafe run names, model keywords and missing weight files are one-line errors before any model
is built."""
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from densezoo.cli.train import main as train_main
from densezoo.distributed import DistInfo, open_device
from densezoo.engine import ConfigError, config_from_dict, load_config, resume_config, train
from densezoo.tasks import TASKS
from densezoo.tasks.base import check_model_keywords
from tests.engine.conftest import TINY_MODEL, tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]


def _error(tmp_path, overrides, task_values=None) -> str:
    """The one-line message of loading the tiny config (or ``task_values``) with ``overrides``."""
    values = task_values or tiny_config(tmp_path / 'data', tmp_path / 'runs')
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / 'exp.yaml', values), overrides)
    message = str(info.value)
    assert '\n' not in message, message
    return message


@pytest.mark.parametrize('overrides, expected', [
    (['optim.clip_grad=-1'], 'optim.clip_grad=-1.0 must be positive, or null (no clipping)'),
    (['optim.clip_grad=0'], 'optim.clip_grad=0.0 must be positive, or null (no clipping)'),
    (['sched.warmup_epochs=-1'], 'sched.warmup_epochs=-1.0 must be 0 or more'),
    (['data.mixup=-0.2'], 'data.mixup=-0.2 must be 0 or more (0: off)'),
    (['data.cutmix=-1'], 'data.cutmix=-1.0 must be 0 or more (0: off)'),
    (['optim.lr=0'], 'optim.lr=0.0 must be positive'),
    (['optim.lr=.nan'], "optim.lr=nan is not allowed; optim.lr must be a finite number"),
    (['optim.weight_decay=-0.05'], 'optim.weight_decay=-0.05 must be 0 or more'),
    (['optim.momentum=1'], 'optim.momentum=1.0 must be 0 or more and below 1 (e.g. 0.9)'),
    (['optim.layer_decay=0'], 'optim.layer_decay=0.0 must lie in (0, 1] (e.g. 0.75), or be null (no layer decay)'),
    (['optim.layer_decay=1.5'], 'optim.layer_decay=1.5 must lie in (0, 1]'),
    (['sched.min_lr=-1e-6'], 'sched.min_lr=-1e-06 must be 0 or more'),
    (['sched.min_lr=0.1'], 'sched.min_lr=0.1 is larger than optim.lr=0.003; the schedule decays from optim.lr to '
                           'sched.min_lr'),
    (['sched.warmup_lr=-1'], 'sched.warmup_lr=-1.0 must be 0 or more'),
    (['sched.decay_rate=0'], 'sched.decay_rate=0.0 must be positive'),
    (['sched.decay_milestones=[30, 10]'], 'sched.decay_milestones=[30, 10] must be 0 or more and increasing'),
    (['sched.decay_milestones=[-1, 10]'], 'sched.decay_milestones=[-1, 10] must be 0 or more and increasing'),
    (['eval_every=0'], 'eval_every=0 must be at least 1 (epochs)'),
    (['log_every=0'], 'log_every=0 must be at least 1 (optimizer steps)'),
    (['seed=-1'], 'seed=-1 must lie between 0 and 4294967295'),
    (['data.val_batch_size=0'], 'data.val_batch_size=0 must be at least 1 (or null: data.batch_size)'),
    (['data.img_size=0'], 'data.img_size=0 must be at least 1'),
    (['data.hflip=1.5'], 'data.hflip=1.5 must lie between 0 and 1'),
    (['data.color_jitter=-0.1'], 'data.color_jitter=-0.1 must be 0 or more (0: no jitter)'),
    (['data.re_prob=2'], 'data.re_prob=2.0 must lie between 0 and 1'),
    (['data.mixup_prob=-0.1'], 'data.mixup_prob=-0.1 must lie between 0 and 1'),
    (['data.mixup_switch_prob=1.1'], 'data.mixup_switch_prob=1.1 must lie between 0 and 1'),
    (['data.label_smoothing=1.5'], 'data.label_smoothing=1.5 must be 0 or more and below 1 (e.g. 0.1)'),
    (['data.label_smoothing=1'], 'data.label_smoothing=1.0 must be 0 or more and below 1'),
    (['data.scale=[0.9, 0.5]'], 'data.scale=[0.9, 0.5] must be two positive numbers, low <= high'),
    (['data.scale=[0, 1]'], 'data.scale=[0.0, 1.0] must be two positive numbers, low <= high'),
    (['data.scale=[0.5, 2]'], 'data.scale=[0.5, 2.0] must be at most 1 (fractions of the image area)'),
    (['data.ratio=[1.33, 0.75]'], 'data.ratio=[1.33, 0.75] must be two positive numbers, low <= high'),
    (['data.crop_pct=0'], "data.crop_pct=0.0 must lie in (0, 1] (e.g. 0.875), or be null (the model's)"),
    (['data.mixup_mode=row'], "data.mixup_mode='row' is not allowed; use batch, pair, elem"),
    (['data.mixup=0.2', 'data.batch_size=7'], "data.batch_size=7 must be even with data.mixup / data.cutmix"),
    (['data.interpolation=random'], "data.interpolation='random' is not allowed; use nearest, box, bilinear, "
                                    "hamming, bicubic, lanczos or null (the model's)"),
    (['data.auto_augment=rand-q9'], "data.auto_augment='rand-q9' is not a timm augmentation policy (Unknown "
                                    "RandAugment config section); use e.g. 'rand-m9-mstd0.5-inc1'"),
    (['data.mean=[0.5, 0.5]'], 'data.mean=[0.5, 0.5] must have 3 values (RGB) or 1 (grey)'),
    (['data.std=[0.2, 0, 0.2]'], 'data.std=[0.2, 0.0, 0.2] must lie in (0, 1]: images are scaled to [0, 1] first'),
    (['data.mean=[123.7, 116.3, 103.5]'], 'data.mean=[123.7, 116.3, 103.5] must lie between 0 and 1: images are '
                                          'scaled to [0, 1] first'),
    (['data.albumentations=[{p: 0.5}]'], "data.albumentations step 1 ({'p': 0.5}) needs a name; write steps as "
                                         "{name: HorizontalFlip, p: 0.5}"),
    (['model.drop_path_rate=1'], 'model.drop_path_rate=1.0 must be 0 or more and below 1 (e.g. 0.1)'),
    (['model.kwargs.pretrained=true'], 'model.kwargs.pretrained is not allowed; set model.pretrained instead'),
    (['model.kwargs.num_classes=10'], 'model.kwargs.num_classes is not allowed; task classification sets it to the '
                                      'number of class folders'),
    (['optim.name=adamm'], "optim.name='adamm' is not a timm optimizer; did you mean 'adam'?"),
    (['optim.name=lookahead_adamm'], "optim.name='lookahead_adamm' is not a timm optimizer; did you mean 'adam'?"),
    (['optim.kwargs={betaz: [0.9, 0.99]}'], 'optim.kwargs has betaz, which optimizer adamw does not take; its '
                                            'arguments are: lr, betas, eps, weight_decay, amsgrad'),
    (['optim.kwargs.lr=0.1'], 'optim.kwargs.lr is not allowed; set optim.lr instead'),
    (['sched.name=cosin'], "sched.name='cosin' is not a timm scheduler; did you mean 'cosine'?"),
    (['sched.name=plateau'], "sched.name='plateau' is not supported: the engine updates the schedule every optimizer "
                             "step; it steps once per epoch on a validation metric"),
    (['sched.name=none'], "sched.name='none' is not supported: the engine updates the schedule every optimizer step; "
                          "for a fixed learning rate use constant"),
    (['device=tpu'], "device='tpu' is not allowed; use cpu, cuda, cuda:N (N: a GPU index) or mps, or leave device "
                     "unset (cuda when available, else cpu)"),
    (['device=cuda:x'], "device='cuda:x' is not allowed; use cpu, cuda, cuda:N"),
    (['name=../elsewhere'], "name='../elsewhere' is not allowed; a run name (its folder under output) is made of "
                            "letters, digits, '-', '_' and '.', and does not start with '.'"),
    (['name=runs/a'], "name='runs/a' is not allowed; a run name"),
    (['name=a\\b'], "name='a\\\\b' is not allowed; a run name"),
    (['name=.hidden'], "name='.hidden' is not allowed; a run name"),
    (['name=my run'], "name='my run' is not allowed; a run name"),
    (['model.pretrained_file=missing.pth'], "model.pretrained_file='missing.pth' does not exist"),
])
def test_out_of_range_values_are_one_line_errors(tmp_path, overrides, expected):
    assert _error(tmp_path, overrides).startswith(expected)


@pytest.mark.parametrize('task, overrides, expected', [
    ('sr', ['data.lr_dir=LR/X{s}'], "data.lr_dir='LR/X{s}' is not allowed; its only placeholder is {scale} (e.g. "
                                    "'LR_bicubic/X{scale}')"),
    ('sr', ["data.hr_dir=''"], "data.hr_dir is empty; name the folder of the HR images (e.g. 'HR')"),
    ('sr', ['data.degradation=noise', 'data.upscale=2'], "data.degradation='noise' keeps the image size; it needs "
                                                          "data.upscale 1, not 2"),
    ('seg', ['data.num_classes=256'], 'data.num_classes=256 is too many; label 255 marks ignored pixels, so classes '
                                      'are 0..254'),
    ('seg', ['model.out_indices=[]'], "model.out_indices=[] must list one or more different feature maps"),
    ('seg', ['model.out_indices=[1, 1]'], "model.out_indices=[1, 1] must list one or more different feature maps"),
    ('seg', ['model.kwargs.out_indices=[1]'], 'model.kwargs.out_indices is not allowed; set model.out_indices '
                                              'instead'),
    ('seg', ['model.head_kwargs={chanels: 64}'], 'model.head_kwargs has chanels, which head upernet does not take; '
                                                 'its arguments are: channels, pool_scales, dropout; remove it from '
                                                 'the config'),
    ('seg', ['data.std=[0.2, 0.2, -1]'], 'data.std=[0.2, 0.2, -1.0] must lie in (0, 1]'),
])
def test_task_values_are_one_line_errors(tmp_path, task, overrides, expected):
    values = dict(task=task, model=dict(name='resnet18'), data=dict(root='data'))
    if task == 'seg':
        values['data']['num_classes'] = 3
    assert _error(tmp_path, overrides, values).startswith(expected)


def test_valid_values_still_load(tmp_path):
    config = load_config(write_config(tmp_path / 'exp.yaml', tiny_config(tmp_path / 'data', tmp_path / 'runs')),
                         ['name=swin-tiny_v2.1', 'device=cpu', 'optim.name=lookahead_AdamW', 'sched.name=multistep',
                          'sched.decay_milestones=[0, 5]', 'data.mixup=0.2', 'data.mixup_mode=pair',
                          'data.auto_augment=rand-m9-mstd0.5-inc1', 'data.interpolation=bicubic',
                          'optim.kwargs={betas: [0.9, 0.99], eps: 1e-6}', 'data.mean=[0.5]', 'data.std=[0.25]'])
    assert config.name == 'swin-tiny_v2.1' and config.device == 'cpu' and config.data.mixup_mode == 'pair'
    assert config.sched.decay_milestones == (0, 5) and config.optim.kwargs['betas'] == [0.9, 0.99]


def test_device_torch_does_not_see_is_a_one_line_error(monkeypatch, dataset, tmp_path):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: False)
    config = config_from_dict(tiny_config(dataset, tmp_path / 'runs', device='cuda'))  # the form is fine
    with pytest.raises(ConfigError) as info:
        train(config, run_dir=tmp_path / 'run', progress=False)
    assert str(info.value) == "device='cuda' but torch sees no CUDA device; use device=cpu or leave device unset"
    assert not (tmp_path / 'run').exists()
    with pytest.raises(ConfigError, match=r"^device='mps' but torch sees no MPS device \(Apple GPU\); use "
                                          r"device=cpu or leave device unset$"):
        open_device('mps')
    assert open_device(None) == torch.device('cpu') and open_device('cpu') == torch.device('cpu')
    with pytest.raises(ConfigError, match=r"^device='tpu' is not allowed; use cpu, cuda"):
        open_device('tpu')


def test_cuda_index_and_local_rank_beyond_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    with pytest.raises(ConfigError, match=r"^device='cuda:2' but torch sees 2 CUDA devices \(cuda:0..cuda:1\); use "
                                          r"an index below 2, or device=cuda$"):
        open_device('cuda:2')
    with pytest.raises(ConfigError, match=r'^LOCAL_RANK=2 but torch sees 2 CUDA devices \(cuda:0..cuda:1\); start '
                                          r'at most 2 processes per node$'):
        open_device('cuda', local_rank=2, world_size=3)
    with pytest.raises(ConfigError, match=r"^device='cuda:1' names one GPU for 2 processes; use device=cuda"):
        open_device('cuda:1', local_rank=0, world_size=2)
    assert open_device('cuda:1') == torch.device('cuda', 1)
    assert open_device('cuda', local_rank=1, world_size=2) == torch.device('cuda', 1)


def test_duplicate_yaml_keys_name_the_file_the_key_and_both_lines(tmp_path):
    values = 'task: classification\nmodel:\n  name: resnet18\ndata:\n  root: data\noptim:\n  lr: 0.1\n  lr: 0.01\n'
    (tmp_path / 'dup.yaml').write_text(values)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / 'dup.yaml')
    assert re.fullmatch(r"config file '.*dup.yaml' sets the key 'lr' twice in one mapping \(lines 7 and 8\); keep "
                        r"one of them", str(info.value)), info.value
    (tmp_path / 'base.yaml').write_text('seed: 1\nepochs: 2\nseed: 3\n')
    (tmp_path / 'child.yaml').write_text('_base_: base.yaml\nmodel: {name: resnet18}\ndata: {root: data}\n')
    with pytest.raises(ConfigError, match=r"^config file '.*base.yaml' sets the key 'seed' twice in one mapping "
                                          r"\(lines 1 and 3\); keep one of them$"):
        load_config(tmp_path / 'child.yaml')
    # the same key in different mappings, and keys merged from an anchor and then overridden, are fine
    (tmp_path / 'ok.yaml').write_text('model: &m {name: resnet18, kwargs: {name: 1}}\ndata: {root: data}\n'
                                      'optim: {lr: 0.1}\nsched: {<<: {min_lr: 0.0}, min_lr: 0.001}\n')
    config = load_config(tmp_path / 'ok.yaml')
    assert config.model.kwargs == {'name': 1} and config.sched.min_lr == 0.001


def test_yaml_syntax_errors_give_line_and_column(tmp_path):
    (tmp_path / 'x.yaml').write_text('model:\n  name: resnet18\ndata: root: data\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / 'x.yaml')
    assert re.fullmatch(r"config file '.*x.yaml' is not valid YAML: line 3, column 11: mapping values are not "
                        r"allowed here", str(info.value)), info.value


def test_override_with_a_duplicate_key(tmp_path):
    assert _error(tmp_path, ['model.kwargs={depth: 1, depth: 2}']) == \
        "override 'model.kwargs={depth: 1, depth: 2}' sets the key 'depth' twice; keep one of them"


@pytest.mark.parametrize('name, kwargs, expected', [
    ('rcan_x2', dict(drop_path_rate=0.1), 'model rcan_x2 does not take drop_path_rate; its arguments are: num_in_ch, '
                                          'num_out_ch, num_feat, num_group, num_block, squeeze_factor, upscale, '
                                          'res_scale, img_range, rgb_mean, in_chans; remove it from the config'),
    ('rcan_x2', dict(img_size=32, num_feat=8, window_size=8), 'model rcan_x2 does not take img_size, window_size; '
                                                              'its arguments are: num_in_ch,'),
    ('resnet18', dict(foo=1), 'model resnet18 does not take foo; its arguments are: block, layers, num_classes,'),
    (TINY_MODEL['name'], dict(TINY_MODEL['kwargs'], foo=1),  # a connected model: its own and timm's arguments
     f"model {TINY_MODEL['name']} does not take foo; its arguments are: connection, connection_args, img_size,"),
])
def test_model_keywords_the_model_does_not_take(name, kwargs, expected):
    with pytest.raises(ConfigError) as info:
        check_model_keywords(name, kwargs)
    assert '\n' not in str(info.value) and str(info.value).startswith(expected), info.value
    check_model_keywords(name, {k: v for k, v in kwargs.items() if k not in ('foo', 'drop_path_rate', 'img_size',
                                                                             'window_size')})


def test_demo_sr_config_with_another_model_names_the_bad_keyword(monkeypatch):
    """The SR demo's drop_path_rate given to RCAN: one line, found on the meta device before the model is built."""
    config = load_config(ROOT / 'configs' / 'demo' / 'swinir_light_x2_sr.yaml',
                         ['model.name=rcan_x2', 'model.kwargs={}', f'data.root={ROOT / "data" / "sr_demo"}'])
    task = TASKS['sr'](config, DistInfo())
    devices, create = [], timm.create_model

    def recording(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # where tensors are made now
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, 'create_model', recording)
    with pytest.raises(ConfigError) as info:
        task.build_model()
    assert str(info.value).startswith('model rcan_x2 does not take drop_path_rate; its arguments are: num_in_ch, ')
    assert str(info.value).endswith('; remove it from the config')
    assert devices and set(devices) == {'meta'}


def _weights(path: Path) -> Path:
    model = timm.create_model(TINY_MODEL['name'], num_classes=3, **TINY_MODEL['kwargs'])
    save_file(model.state_dict(), str(path))
    return path


def test_missing_pretrained_file_blocks_a_new_run_but_not_a_resume(dataset, tmp_path):
    weights = _weights(tmp_path / 'weights.safetensors')
    values = tiny_config(dataset, tmp_path / 'runs', epochs=1)
    values['model']['pretrained_file'] = str(weights)
    result = train(config_from_dict(values), progress=False)
    weights.unlink()
    with pytest.raises(ConfigError, match=r"^model.pretrained_file='.*weights.safetensors' does not exist$"):
        config_from_dict(values)
    config = resume_config(result.run_dir)  # the weights come from the checkpoint now
    assert config.model.pretrained_file is None and not config.model.pretrained
    assert train(config, run_dir=result.run_dir, resume=True, progress=False).steps == result.steps
    assert _error(tmp_path, [f'model.pretrained_file={tmp_path}']).endswith(
        "is a folder; give the weights file (.safetensors, .pth)")


@pytest.mark.parametrize('opt, message', [
    ('optim.clip_grad=-1', 'error: optim.clip_grad=-1.0 must be positive, or null (no clipping)'),
    ('device=tpu', "error: device='tpu' is not allowed; use cpu, cuda, cuda:N"),
    ('model.kwargs.foo=1', f"error: model {TINY_MODEL['name']} does not take foo; its arguments are: connection,"),
])
def test_cli_exits_2_with_one_line(dataset, tmp_path, capsys, opt, message):
    config = write_config(tmp_path / 'exp.yaml', tiny_config(dataset, tmp_path / 'runs'))
    assert train_main([str(config), '--opt', opt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / 'runs').exists()  # stopped before a run folder was made
