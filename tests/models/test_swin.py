"""Swin / Swin V2 connected variants: parity with timm, checkpoints, re-initialisation, memory, bad input (the timm
model contract, cfgs and parameter counts of every registered variant: tests/models/test_contract.py).

How we know the numbers are right: the plain reference is timm's own SwinTransformer(V2) (timm 1.0.x), loaded with
the same weights; ``residual`` must reproduce it bitwise, and every connection that starts as the plain network
must reproduce it at initialisation within 1e-6 (float32).
"""
import copy
import io
import logging
import re

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._manipulate import reinit_non_persistent_buffers
from torch import nn

import densezoo
from densezoo.models.swin import CONNECTIONS
from densezoo.profile import training_step_memory
from tests.helpers import perturb_connections, perturb_norms, plain_state
from tests.models.reduced import reduced_args, representatives

SMALL = dict(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 1, 2, 4))
TINY_BASES = ['swin_tiny_patch4_window7_224', 'swinv2_tiny_window8_256']


def _plain(base, seed=0, **kwargs):
    torch.manual_seed(seed)
    return perturb_norms(timm.create_model(base, **kwargs), seed=seed).eval()


def _image(size, batch=2, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('base', TINY_BASES)
def test_residual_connection_is_exactly_timm(base):
    plain = _plain(base)
    connected = densezoo.connect(copy.deepcopy(plain), 'residual')
    x = _image(plain.pretrained_cfg['input_size'][-1])
    with torch.no_grad():
        assert torch.equal(connected(x), plain(x))
    assert [n for n, _ in connected.named_parameters()] == [n for n, _ in plain.named_parameters()]


@pytest.mark.parametrize('base', TINY_BASES)
@pytest.mark.parametrize('kind', list(CONNECTIONS))
def test_timm_weights_load_and_output_is_unchanged_full_size(base, kind, caplog):
    plain = _plain(base)
    model = timm.create_model(f'{base}_{kind}').eval()
    with caplog.at_level(logging.WARNING, logger='densezoo'):
        result = model.load_state_dict(plain.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    connection_keys = [k for k in model.state_dict() if '.connection.' in k]
    assert f'{len(connection_keys)} connection tensors are not in the checkpoint' in caplog.text
    x = _image(plain.pretrained_cfg['input_size'][-1])
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() <= 1e-6


@pytest.mark.parametrize('name', representatives(densezoo.list_models('swin*', task='classification')))
def test_every_variant_starts_as_its_timm_base(name):
    """At the reduced size, every registered variant (one per reduced construction) loaded with its timm base's
    weights gives the base's output. (Keys and shapes at the registered size: tests/models/test_contract.py.)"""
    base = name.rsplit('_', 1)[0]
    _, args, _ = reduced_args(name)
    plain = _plain(base, **args)
    model = timm.create_model(name, **args).eval()
    model.load_state_dict(plain.state_dict(), strict=True)
    x = _image(64)
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() <= 1e-6


def test_swin_v2_with_its_registered_windows_takes_other_input_sizes():
    """16-token windows (the contract's reduced Swin V2 has 4): other sizes without a fixed size, and a model
    created for 128x128 resized to 256x256 (timm < 1.0.31's Swin V2 failed at 96 with such windows)."""
    name = 'swinv2_tiny_window16_256_mudd'
    model = perturb_connections(timm.create_model(name, img_size=64, strict_img_size=False, **SMALL)).eval()
    fixed = timm.create_model(name, img_size=128, **SMALL).eval()
    assert fixed.patch_embed.img_size == (128, 128)
    fixed.set_input_size(img_size=(256, 256))
    with torch.no_grad():
        for size in [(64, 96), (96, 64), (36, 68)]:
            x = torch.randn(1, 3, *size)
            assert model(x).shape == (1, 1000)
            assert model.forward_intermediates(x, intermediates_only=True)[0].shape[-2:] == (size[0] // 4,
                                                                                             size[1] // 4)
        assert fixed(_image(256, batch=1)).shape == (1, 1000)


def _official_swin_checkpoint(state: dict, v2: bool) -> dict:
    """The layout of the official Swin / Swin V2 releases: downsample at the end of a stage, head without '.fc',
    attention masks and index tables stored, everything under 'model'."""
    out = {}
    for key, value in state.items():
        key = re.sub(r'layers\.(\d+)\.downsample', lambda m: f'layers.{int(m.group(1)) - 1}.downsample', key)
        out[key.replace('head.fc.', 'head.')] = value
    for key in list(out):
        if key.endswith('attn.proj.weight'):
            prefix = key[:-len('proj.weight')]
            out[prefix + 'relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
            if v2:
                out[prefix + 'relative_coords_table'] = torch.zeros(1, 13, 13, 2)
    out['layers.0.blocks.1.attn_mask'] = torch.zeros(64, 49, 49)
    return {'model': out}


@pytest.mark.parametrize('base', TINY_BASES)
def test_official_and_timm_checkpoint_files_load_through_create_model(base, tmp_path):
    plain = _plain(base)
    x = _image(plain.pretrained_cfg['input_size'][-1])
    with torch.no_grad():
        expected = plain(x)
    official = tmp_path / 'official.pth'
    torch.save(_official_swin_checkpoint(plain.state_dict(), v2=base.startswith('swinv2')), official)
    timm_file = tmp_path / 'timm.safetensors'
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(timm_file))
    for path in (official, timm_file):
        model = timm.create_model(f'{base}_dwa', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        with torch.no_grad():
            assert (model.eval()(x) - expected).abs().max() <= 1e-6, path.name


def test_pretrained_cfg_points_at_timm_base_weights():
    cfg = timm.models.get_pretrained_cfg('swin_tiny_patch4_window7_224_dwa')
    assert cfg.hf_hub_id == 'timm/swin_tiny_patch4_window7_224.ms_in1k'
    assert cfg.url.endswith('swin_tiny_patch4_window7_224.pth')
    tags = timm.list_models('swin_tiny_patch4_window7_224_dwa', pretrained=True, include_tags=True)
    assert tags == ['swin_tiny_patch4_window7_224_dwa.ms_in1k', 'swin_tiny_patch4_window7_224_dwa.ms_in22k',
                    'swin_tiny_patch4_window7_224_dwa.ms_in22k_ft_in1k']
    assert timm.models.get_pretrained_cfg('swinv2_base_window16_256_mudd').input_size == (3, 256, 256)


def test_connected_checkpoint_round_trip_keeps_connection_values(caplog):
    model = perturb_connections(timm.create_model('swin_tiny_patch4_window7_224_mudd', img_size=64, **SMALL))
    other = timm.create_model('swin_tiny_patch4_window7_224_mudd', img_size=64, **SMALL)
    with caplog.at_level(logging.WARNING, logger='densezoo'):
        other.load_state_dict(model.state_dict())
    assert 'connection tensors' not in caplog.text
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_checkpoint_of_another_connection_is_rejected():
    dwa = timm.create_model('swin_tiny_patch4_window7_224_dwa', img_size=64, **SMALL)
    mudd = timm.create_model('swin_tiny_patch4_window7_224_mudd', img_size=64, **SMALL)
    with pytest.raises(RuntimeError, match='Unexpected key.*connection.alphas'):
        mudd.load_state_dict(dwa.state_dict())


@pytest.mark.parametrize('base', TINY_BASES)
@pytest.mark.parametrize('kind', ['dwa', 'mudd'])
def test_identity_survives_init_weights_and_user_reinit(base, kind):
    model = perturb_connections(timm.create_model(f'{base}_{kind}', img_size=64, **SMALL)).eval()
    plain = timm.create_model(base, img_size=64, **SMALL).eval()
    x = _image(64)
    model.init_weights()  # timm's own initialisation, as after to_empty()
    perturb_norms(model)
    plain.load_state_dict(plain_state(model))
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() <= 1e-6

    def user_init(module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.normal_(module.bias, std=0.02)

    model.apply(user_init)
    plain.load_state_dict(plain_state(model))
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() <= 1e-6


@pytest.mark.parametrize('name', ['swin_tiny_patch4_window7_224_mudd', 'swinv2_tiny_window8_256_mudd'])
def test_meta_device_then_to_empty_and_init_weights(name):
    model = timm.create_model(name, device='meta', dtype=torch.float64, img_size=64, **SMALL)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    model = model.to_empty(device='cpu').eval()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float('nan'))
    model.init_weights()
    if name.startswith('swinv2'):
        reinit_non_persistent_buffers(model)  # timm's Swin V2 leaves its attention masks to this helper
    assert all(torch.isfinite(t).all() for t in model.parameters())
    for bias in model.layers[2].connection.bias:
        assert torch.equal(bias, torch.eye(bias.shape[1], dtype=torch.float64)[-1:].expand_as(bias))
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64, dtype=torch.float64))).all()


@pytest.mark.parametrize('kind', list(CONNECTIONS))
def test_grad_checkpointing_same_gradients_less_memory(kind):
    torch.manual_seed(0)
    model = perturb_connections(timm.create_model(f'swin_tiny_patch4_window7_224_{kind}', img_size=128,
                                                  drop_path_rate=0., **SMALL))
    x = _image(128, batch=4)
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    memory = training_step_memory(model, x)
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).square().mean().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
    checkpointed = training_step_memory(model, x)
    assert checkpointed['peak_step'] < 0.5 * memory['peak_step']  # measured: about 0.4


def test_connect_rewires_a_plain_timm_model_in_place():
    plain = timm.create_model('swin_tiny_patch4_window7_224', img_size=64, **SMALL)
    names = [n for n, _ in plain.named_parameters()]
    model = densezoo.connect(plain, 'dwa', dilation=2, period=2)
    assert model is plain and model.connection_kind == 'dwa'
    assert [n for n, _ in model.named_parameters() if '.connection.' not in n] == names
    assert model.layers[2].connection.dilation == 2
    assert sorted(densezoo.connection_parameters(model)) == [
        'layers.0.connection.alphas.1', 'layers.1.connection.alphas.1', 'layers.2.connection.alphas.1',
        'layers.2.connection.alphas.3', 'layers.3.connection.alphas.1']


def test_connected_models_pickle_and_deepcopy():
    model = perturb_connections(timm.create_model('swinv2_tiny_window8_256_rir', img_size=64, **SMALL)).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    clone = copy.deepcopy(model)
    x = _image(64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(clone(x), model(x))


def test_torchscript_is_refused_with_a_clear_message():
    model = timm.create_model('swin_tiny_patch4_window7_224_dwa', img_size=64, **SMALL)
    with pytest.raises(RuntimeError, match='cannot be compiled by TorchScript.*use torch.compile or torch.export'):
        torch.jit.script(model)


# ---------------------------------------------------------------------------------------------------------------
# bad input

def _swin():
    return timm.create_model('swin_tiny_patch4_window7_224', img_size=64, **SMALL)


@pytest.mark.parametrize('kind, options, message', [
    ('densenet', {}, r"^unknown connection kind 'densenet'; choose one of residual, dwa, mudd, rir, dense, laurel, "
                     r"rezero, value_residual$"),
    ('dwa', dict(dilation=0), r'^layers\.0: dilation=0 is not allowed; dilation must be a positive integer$'),
    ('rir', dict(group_size=4), r'^layers\.0: group_size=4 does not divide the 2 blocks of the stage; group_size '
                                r'must be one of \[1, 2\]$'),
    ('rir', dict(group_size=3), r'^layers\.0: group_size=3 does not divide the 2 blocks'),
    ('dense', dict(dilation=2), r"^layers\.0: option 'dilation' does not apply to connection 'dense'; its options "
                                r"are: growth$"),
    ('value_residual', {}, r"^connection 'value_residual' needs blocks that expose their attention values; Swin "
                           r"blocks do not$"),
    ('mudd', dict(num_streams=4), r"^connection 'mudd' needs blocks that take separate query, key and value inputs "
                                  r"\(use num_streams=1\); Swin blocks do not$"),
])
def test_connect_rejects_bad_kinds_and_options(kind, options, message):
    model = _swin()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        densezoo.connect(model, kind, **options)
    assert not any('.connection.' in k for k in model.state_dict())  # nothing changed
    assert model.state_dict().keys() == before.keys()


def test_connect_rejects_connected_and_unknown_models():
    model = densezoo.connect(_swin(), 'dwa')
    with pytest.raises(ValueError, match=r"^layers\.0 is already connected \('dwa'\); connect a plain model instead$"):
        densezoo.connect(model, 'mudd')
    with pytest.raises(ValueError, match=r'^connect\(\) does not know how to rewire a ResNet; it supports: '):
        densezoo.connect(timm.create_model('resnet18'), 'dwa')


def test_registered_variant_rejects_unfit_connection_args():
    with pytest.raises(ValueError, match=r'^layers\.0: group_size=4 does not divide the 2 blocks'):
        timm.create_model('swin_tiny_patch4_window7_224_rir', connection_args=dict(group_size=4))


@pytest.mark.parametrize('shape, kwargs, message', [
    ((1, 3, 96, 96), {}, r'^input size 96x96 does not match the model img_size 64x64; create the model with '
                         r'img_size=\(96, 96\) or strict_img_size=False, or call '
                         r'model\.set_input_size\(img_size=\(96, 96\)\)$'),
    ((1, 3, 66, 64), dict(strict_img_size=False), r'^input size 66x64 is not divisible by the patch size 4x4; '
                                                  r'resize or pad the image to a multiple of 4x4$'),
    ((1, 1, 64, 64), {}, r'^expected 3 input channels, got 1 \(input shape \(1, 1, 64, 64\)\); create the model '
                         r'with in_chans=1$'),
    ((3, 64, 64), {}, r'^expected an image batch of shape \(B, 3, H, W\), got shape \(3, 64, 64\)$'),
])
@pytest.mark.parametrize('name', ['swin_tiny_patch4_window7_224_dwa', 'swinv2_tiny_window8_256_dense'])
def test_inputs_a_swin_cannot_take(name, shape, kwargs, message):
    model = timm.create_model(name, img_size=64, **SMALL, **kwargs)
    for fn in (model, model.forward_features, lambda x: model.forward_intermediates(x)):
        with pytest.raises(ValueError, match=message):
            fn(torch.randn(shape))
    features = timm.create_model(name, img_size=64, features_only=True, **SMALL, **kwargs)
    with pytest.raises(ValueError, match=message):
        features(torch.randn(shape))
