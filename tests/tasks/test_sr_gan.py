"""GAN super-resolution on the training engine (``task: sr_gan``): one step equals the published update order written
out by hand, both networks learn and are checkpointed, a stopped run resumes bit-identically, the second stage starts
from the first stage's weights, and bad settings stop with one-line reasons."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file

from densezoo.engine import ConfigError, Trainer, config_from_dict, train
from densezoo.engine.checkpoint import load_checkpoint
from tests.sr_standin import make_sr_images, sr_config, torchrun_standin

#: VGG19 layers the tests use: conv1_2 and conv2_2 are features.2 and features.7 (torchvision's module list)
LAYERS = {'conv1_2': 0.5, 'conv2_2': 1.0}


@pytest.fixture(scope='module')
def vgg_file(tmp_path_factory):
    """A file in torchvision's VGG19 key layout with random weights, holding the layers up to conv2_2."""
    torch.manual_seed(0)
    features = torchvision.models.vgg19(weights=None).features[:8]
    path = tmp_path_factory.mktemp('vgg') / 'vgg19-random.pth'
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_sr_images(tmp_path_factory.mktemp('gan') / 'data', count=(6, 2), size=(32, 36))


def gan_config(root, output, vgg_file, **overrides) -> dict:
    values = sr_config(root, output, **overrides)
    values.update(task='sr_gan', name='tiny_gan')
    values.setdefault('perceptual', dict(weights_file=str(vgg_file), layer_weights=dict(LAYERS)))
    values.setdefault('gan', dict(num_feat=8))
    return values


def test_one_step_is_the_published_update(data, vgg_file, tmp_path):
    """Generator step (pixel + perceptual + 0.1 x vanilla GAN loss, discriminator frozen), then the discriminator's
    step on the ground truth and the detached output: BasicSR's RealESRGANModel.optimize_parameters, written out
    with plain torch and compared."""
    config = config_from_dict(gan_config(data, tmp_path, vgg_file, sharpen=['pixel', 'perceptual']))
    trainer = Trainer(config, tmp_path / 'run', progress=False)
    task = trainer.task
    generator, discriminator = copy.deepcopy(trainer.model), copy.deepcopy(task.discriminator)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.9, 0.99))
    torch.manual_seed(1)
    lr, hr = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 16, 16)

    trainer.model.train()
    task.training_loss(trainer.model, lr, hr).backward()
    trainer._optimizer_step()  # the generator's step, then the task's discriminator step

    from densezoo.datasets.degradations import usm_sharp
    sharp = usm_sharp(hr)
    discriminator.requires_grad_(False)
    output = generator(lr)
    percep = task.perceptual(output, sharp)[0]
    loss = F.l1_loss(output, sharp) + percep + 0.1 * F.binary_cross_entropy_with_logits(
        discriminator(output), torch.ones(4, 1, 16, 16))
    loss.backward()
    opt_g.step()
    discriminator.requires_grad_(True)
    real = discriminator(hr)
    F.binary_cross_entropy_with_logits(real, torch.ones_like(real)).backward()
    fake = discriminator(output.detach())
    F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)).backward()
    opt_d.step()

    for name, ours, theirs in (('generator', trainer.model, generator), ('discriminator', task.discriminator,
                                                                        discriminator)):
        mine, reference = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == reference.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], reference[key], rtol=1e-5, atol=1e-6, msg=f'{name} {key}')
    assert not any(p.requires_grad for p in task.discriminator.parameters())  # frozen again until its next step
    assert set(trainer._window_extras) == {'l_pix', 'l_percep', 'l_g_gan', 'l_d_real', 'l_d_fake', 'out_d_real',
                                           'out_d_fake'}


@pytest.fixture(scope='module')
def trained(data, vgg_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('gan_run')
    values = gan_config(data, tmp / 'runs', vgg_file, epochs=2, ema_decay=0.5)
    return train(config_from_dict(values), progress=False)


def test_both_networks_learn_and_are_checkpointed(trained):
    run = trained.run_dir
    last = run / 'checkpoints' / 'last'
    assert {p.name for p in last.iterdir()} == {'model.safetensors', 'ema.safetensors', 'discriminator.safetensors',
                                                'state.pt', 'manifest.json'}
    state = torch.load(last / 'state.pt', weights_only=True)
    assert set(state['task']) == {'d_optimizer', 'd_scheduler', 'd_scaler'}
    assert state['task']['d_optimizer']['state'][0]['step'] == trained.steps  # one discriminator step per step
    weights = load_file(str(last / 'discriminator.safetensors'))
    assert 'conv0.weight' in weights and any(k.endswith('weight_orig') for k in weights)
    records = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    train_records = [r for r in records if r['kind'] == 'train']
    keys = {'l_pix', 'l_percep', 'l_g_gan', 'l_d_real', 'l_d_fake', 'out_d_real', 'out_d_fake'}
    assert all(keys <= set(r) for r in train_records)
    assert all(0 < r['l_d_real'] < 5 and 0 < r['l_d_fake'] < 5 for r in train_records)
    # the generator's total loss is its terms: pixel (weight 1) + perceptual + GAN (already weighted 0.1)
    for r in train_records:
        assert r['loss'] == pytest.approx(r['l_pix'] + r['l_percep'] + r['l_g_gan'], rel=1e-5)
    assert (run / 'comparison.png').is_file()


@pytest.mark.parametrize('degradation', ['realesrgan', 'bsrgan'])
def test_a_stopped_run_resumes_bit_identically(data, vgg_file, tmp_path, degradation):
    """Stopped mid-epoch and resumed, with inputs degraded on the fly in two loader workers: generator, EMA and
    discriminator weights (spectral-norm vectors included) and the discriminator's optimizer end exactly as in a
    run never stopped."""
    values = gan_config(data, tmp_path / 'runs', vgg_file, epochs=2, ema_decay=0.7, checkpoint_every=1)
    values['data'].update(degradation=degradation, workers=2)
    reference = train(config_from_dict(values), run_dir=tmp_path / 'reference', progress=False)
    stopped = train(config_from_dict(dict(values, max_steps=4)), run_dir=tmp_path / 'resumed', progress=False)
    assert stopped.steps == 4 and reference.steps == 6
    resumed = train(config_from_dict(values), run_dir=tmp_path / 'resumed', resume=True, progress=False)
    assert resumed.steps == 6
    for name in ('model.safetensors', 'ema.safetensors', 'discriminator.safetensors'):
        a = load_file(str(tmp_path / 'reference' / 'checkpoints' / 'last' / name))
        b = load_file(str(tmp_path / 'resumed' / 'checkpoints' / 'last' / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (torch.load(tmp_path / run / 'checkpoints' / 'last' / 'state.pt', weights_only=True)['task']
            for run in ('reference', 'resumed'))
    for key, value in a['d_optimizer']['state'][0].items():
        assert torch.equal(value, b['d_optimizer']['state'][0][key]), key


def test_the_gan_stage_starts_from_the_psnr_stage(trained, data, vgg_file, tmp_path):
    """Two stages: a PSNR run (task: sr), then the GAN run from its EMA weights; its generator and EMA start as
    those weights, its discriminator from scratch."""
    psnr_run = train(config_from_dict(sr_config(data, tmp_path / 'runs', epochs=1, ema_decay=0.5)), progress=False)
    weights = psnr_run.run_dir / 'checkpoints' / 'last' / 'ema.safetensors'
    values = gan_config(data, tmp_path / 'runs', vgg_file, ema_decay=0.999)
    values['model']['pretrained_file'] = str(weights)
    trainer = Trainer(config_from_dict(values), tmp_path / 'gan', progress=False)
    expected = load_file(str(weights))
    for module in (trainer.model, trainer.ema.module):
        assert all(torch.equal(module.state_dict()[k], v) for k, v in expected.items())
    # resuming the PSNR run's folder as a GAN run is refused: its checkpoints hold no discriminator
    values['model'].pop('pretrained_file')
    with pytest.raises(Exception, match='discriminator'):
        Trainer(config_from_dict(values), psnr_run.run_dir, resume=True, progress=False)


@pytest.mark.parametrize('change, message', [
    (dict(sharpen=['gt']), "sharpen=['gt'] names gt; task sr_gan can sharpen the targets of: pixel, perceptual, "
                           "gan"),
    (dict(gan=dict(type='relativistic')), "gan.type='relativistic' is not allowed; use vanilla, lsgan, wgan, "
                                          "wgan_softplus, hinge"),
    (dict(gan=dict(weight=0)), 'gan.weight=0.0 must be positive'),
    (dict(gan=dict(optim=dict(name='adamm'))), "gan.optim.name='adamm' is not a timm optimizer"),
    (dict(perceptual=dict(layer_weights={'conv5_4': 1.0})), 'perceptual.weights_file is not set'),
    (dict(perceptual=dict(layer_weights={'conv6_1': 1.0}, weights_file='vgg19.pth')),
     'perceptual.layer_weights names conv6_1, not VGG19 layers'),
])
def test_bad_settings_stop_with_one_line(data, tmp_path, change, message):
    values = sr_config(data, tmp_path, **{'task': 'sr_gan'})
    values.update(change)
    with pytest.raises(ConfigError) as err:
        config_from_dict(values)
    assert message in str(err.value) and '\n' not in str(err.value)


def test_an_odd_patch_is_refused_before_training(data, vgg_file, tmp_path):
    values = gan_config(data, tmp_path, vgg_file)
    values['data']['lr_patch'] = 7  # 14 HR pixels
    with pytest.raises(ConfigError, match='lr_patch=7 x upscale 2 = 14 HR pixels; the U-Net discriminator needs '
                                          'a multiple of 8'):
        Trainer(config_from_dict(values), tmp_path / 'run', progress=False)


def test_checkpoint_loading_checks_the_discriminator(trained, tmp_path):
    """Weights of another discriminator (other width) are refused with a one-line reason."""
    from densezoo.models.discriminator import UNetDiscriminatorSN
    from densezoo.engine.faults import TrainingError
    folder = trained.run_dir / 'checkpoints' / 'last'
    with pytest.raises(TrainingError, match='does not fit the discriminator'):
        load_checkpoint(folder, _standin(), networks={'discriminator': UNetDiscriminatorSN(3, num_feat=16)})


def _standin():
    import timm
    return timm.create_model('densezoo_test_sr_x2')


def test_missing_weights_files_stop_before_the_model_is_built(data, vgg_file, tmp_path):
    values = gan_config(data, tmp_path, vgg_file)
    values['perceptual']['weights_file'] = 'missing/vgg19.pth'
    with pytest.raises(ConfigError) as err:
        Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    assert str(err.value) == ("perceptual.weights_file='missing/vgg19.pth' does not exist; download torchvision's "
                              "VGG19 weights (https://download.pytorch.org/models/vgg19-dcbe5e4b.pth) and give their "
                              "path")
    values = gan_config(data, tmp_path, vgg_file)
    values['gan']['pretrained_file'] = 'missing/net_d.pth'
    with pytest.raises(ConfigError, match="gan.pretrained_file='missing/net_d.pth' does not exist"):
        Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    assert not (tmp_path / 'run').exists()


def test_the_discriminator_starts_from_a_basicsr_file(data, vgg_file, tmp_path):
    """A discriminator file in BasicSR's layout ({'params': state dict}) loads; one of another width is refused."""
    from densezoo.models.discriminator import UNetDiscriminatorSN
    torch.manual_seed(3)
    trained = UNetDiscriminatorSN(3, num_feat=8)
    torch.save({'params': trained.state_dict()}, tmp_path / 'net_d.pth')
    values = gan_config(data, tmp_path, vgg_file)
    values['gan']['pretrained_file'] = str(tmp_path / 'net_d.pth')
    task = Trainer(config_from_dict(values), tmp_path / 'run', progress=False).task
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in task.discriminator.state_dict().items())
    torch.save({'params': UNetDiscriminatorSN(3, num_feat=16).state_dict()}, tmp_path / 'wide.pth')
    values['gan']['pretrained_file'] = str(tmp_path / 'wide.pth')
    with pytest.raises(ConfigError) as err:
        Trainer(config_from_dict(values), tmp_path / 'run2', progress=False)
    assert str(err.value).startswith(f"gan.pretrained_file='{tmp_path / 'wide.pth'}' does not fit the "
                                     f"discriminator (gan.num_feat 8, 3 channels): first differing tensor conv0.")


def test_two_processes_train_both_networks_alike(data, vgg_file, tmp_path):
    """Under torchrun (2 processes, gloo): both networks train, the discriminator through DDP, and the checkpoint
    holds the discriminator and its optimizer's state of every step."""
    config = tmp_path / 'gan.json'  # JSON is YAML
    config.write_text(json.dumps(gan_config(data, tmp_path / 'runs', vgg_file, epochs=2)))
    proc = torchrun_standin(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next((tmp_path / 'runs').glob('tiny_gan-*'))
    last = run / 'checkpoints' / 'last'
    state = torch.load(last / 'state.pt', weights_only=True)
    assert state['global_step'] == 2  # 12 crops, batch 4 per process, 2 processes: a step per epoch
    assert state['task']['d_optimizer']['state'][0]['step'] == 2
    records = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert {'l_d_real', 'l_d_fake', 'l_g_gan'} <= set(records[0])
    assert (last / 'discriminator.safetensors').is_file()


def test_bfloat16_autocast_trains_both_networks(data, vgg_file, tmp_path):
    """amp: bf16 runs the generator, the perceptual loss and the discriminator under autocast: finite losses, both
    networks change."""
    values = gan_config(data, tmp_path / 'runs', vgg_file, epochs=1, amp='bf16')
    trainer = Trainer(config_from_dict(values), tmp_path / 'run', progress=False)
    before = {name: copy.deepcopy(module.state_dict()) for name, module in
              (('generator', trainer.model), ('discriminator', trainer.task.discriminator))}
    result = trainer.fit()
    records = [json.loads(line) for line in (result.run_dir / 'log.jsonl').read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor([r['loss'], r['l_d_real'], r['l_d_fake']])).all()
               for r in records if r['kind'] == 'train')
    for name, module in (('generator', trainer.model), ('discriminator', trainer.task.discriminator)):
        changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[name][k])]
        assert changed, name
