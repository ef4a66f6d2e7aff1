"""The contract every registered SR model keeps: timm creation, cfgs, forward/backward at any size, errors.

Numerics run at a reduced width and depth of the same family, scale and connection; structure (parameter count,
cfg) at the registered size on the meta device.
"""
import pytest
import timm
import torch

import densezoo
from tests.helpers import perturb_connections, scale_preserving_weights

MODELS = densezoo.list_models(task='sr')

# reduced configurations per family, with the official keyword names
_WINDOW = dict(img_size=16, window_size=4, depths=(2, 2), num_heads=(2, 2), embed_dim=16, mlp_ratio=2,
               drop_path_rate=0.)
REDUCED = {
    'SwinIR': _WINDOW,
    'DRCT': dict(_WINDOW, embed_dim=24, num_heads=(6, 6), gc=8),
    'HAT': dict(_WINDOW, embed_dim=24, num_heads=(2, 2), compress_ratio=3, squeeze_factor=2),
    'RCAN': dict(num_feat=16, num_group=2, num_block=2, squeeze_factor=4),
    'RDN': dict(num_features=16, growth_rate=8, num_blocks=2, num_layers=2),
}


def _family(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    return type(model).__name__.replace('Connected', ''), model


def reduced(name, seed=0):
    family, _ = _family(name)
    torch.manual_seed(seed)
    model = timm.create_model(name, **REDUCED[family])
    return perturb_connections(scale_preserving_weights(model, seed), seed=seed)


def test_registry_holds_every_family_scale_and_connection():
    for name in ('swinir_classical_x2', 'swinir_classical_x4', 'swinir_light_x2', 'swinir_real_x4',
                 'swinir_denoise_color', 'swinir_jpeg', 'drct_x4', 'drct_l_x4', 'swinir_light_x2_dwa',
                 'drct_x4_mudd'):
        assert name in MODELS, name
    assert not set(MODELS) & set(densezoo.list_models(task='classification'))


@pytest.mark.parametrize('name', MODELS)
def test_cfg_and_structure_at_registered_size(name):
    family, model = _family(name)
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and cfg['num_classes'] == 0 and cfg['classifier'] is None
    assert cfg['url'] or cfg['notes'], 'the cfg names where the official weights are'
    assert cfg['origin_url'].startswith('https://') and cfg['first_conv'] in dict(model.named_modules())
    assert cfg['input_size'][0] == model.in_chans and model.num_classes == 0
    assert model.upscale >= 1 and model.pad_multiple >= 1
    kind = name.rsplit('_', 1)[-1]
    if kind in ('dwa', 'mudd'):
        assert model.connection_kind == kind and densezoo.connection_parameters(model)


@pytest.mark.parametrize('name', MODELS)
def test_forward_backward_at_odd_sizes(name):
    model = reduced(name)
    channels, scale = model.in_chans, model.upscale
    x = torch.rand(2, channels, 9, 14)
    out = model.train()(x)
    assert out.shape == (2, channels, 9 * scale, 14 * scale) and torch.isfinite(out).all()
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not unused, unused
    model.eval()
    with torch.no_grad():
        first = model(x)
        torch.testing.assert_close(model(x[1:]), first[1:], rtol=0, atol=5e-5)


@pytest.mark.parametrize('name', MODELS[::7])
def test_wrong_input_and_arguments_are_one_line_errors(name):
    model = reduced(name)
    with pytest.raises(ValueError, match=f'expected {model.in_chans} input channels') as info:
        model(torch.rand(1, model.in_chans + 1, 8, 8))
    assert '\n' not in str(info.value)
    with pytest.raises(TypeError):
        timm.create_model(name, definitely_not_an_argument=1)
    with pytest.raises(TypeError, match='image-to-image model'):
        timm.create_model(name, num_classes=10)
