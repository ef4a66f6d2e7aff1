"""RDN: parity with an independent reference of EDSR-PyTorch's RDN, the registered configurations, EDSR-PyTorch's
option names, timm's pretrained path and one-line errors (the SR contract of every registered model, input sizes
included: tests/models/test_contract.py).

No official RDN fixture exists (BasicSR has no RDN). The reference below is EDSR-PyTorch's ``src/model/rdn.py``
written out with ``F.conv2d`` loops: ``RDB_Conv`` = conv (always 3×3) + ReLU, concatenated after its input; ``RDB`` =
C such layers, ``LFF`` (1×1) and the block residual; ``RDN.forward`` = ``f__1 = SFENet1(x)``, ``SFENet2``, the D
blocks, ``GFF`` (1×1, then RDNkSize) on the concatenated block outputs, ``+ f__1``, ``UPNet``. It works on
[0, rgb_range] images without a mean shift, so densezoo's RDN (inputs in [0, 1]) must equal reference(255·x) / 255.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from densezoo.models._sr import checkpoint_filter_fn
from densezoo.models.rdn import RDN
from tests.helpers import one_line

#: a small configuration: D=3 blocks, C=2 layers, G=8, G0=16
SMALL = dict(num_blocks=3, num_layers=2, growth_rate=8, num_features=16)


def reference_rdn(state, x, num_blocks, num_layers, scale, kernel_size=3):
    """EDSR-PyTorch's RDN forward for the weights ``state`` on ``x`` in [0, 255]."""
    def conv(name, t, size):
        return F.conv2d(t, state[f'{name}.weight'], state[f'{name}.bias'], padding=(size - 1) // 2)

    f_1 = conv('SFENet1', x, kernel_size)
    h = conv('SFENet2', f_1, kernel_size)
    block_outputs = []
    for d in range(num_blocks):
        features = h
        for c in range(num_layers):
            features = torch.cat([features, F.relu(conv(f'RDBs.{d}.convs.{c}.conv.0', features, 3))], 1)
        h = conv(f'RDBs.{d}.LFF', features, 1) + h
        block_outputs.append(h)
    h = conv('GFF.1', conv('GFF.0', torch.cat(block_outputs, 1), 1), kernel_size) + f_1
    if scale == 4:
        h = F.pixel_shuffle(conv('UPNet.0', h, kernel_size), 2)
        h = F.pixel_shuffle(conv('UPNet.2', h, kernel_size), 2)
        return conv('UPNet.4', h, kernel_size)
    h = F.pixel_shuffle(conv('UPNet.0', h, kernel_size), scale)
    return conv('UPNet.2', h, kernel_size)


def randomise(model, seed=0, out_gain=0.3):
    """Scale-preserving random weights: N(0, 1/sqrt(fan_in)) kernels, N(0, 0.02) biases; the first conv divided and
    the last conv multiplied by img_range, so that the body sees unit-scale features and the output moves by O(0.1)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in model.named_parameters():
        if param.dim() > 1:
            value = torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel())
        else:
            value = torch.randn(param.shape, generator=generator) * 0.02
        state[name] = value
    last = max(key for key in state if key.startswith('UPNet.') and key.endswith('.weight'))
    state['SFENet1.weight'] /= model.img_range
    state[last] *= out_gain * model.img_range
    model.load_state_dict(state)
    return model.eval()


def _run(model, x):
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------------------------------------------------------
# parity with the reference

@pytest.mark.parametrize('scale, kernel_size', [(2, 3), (3, 3), (4, 3), (2, 5)])
def test_reference_parity(scale, kernel_size):
    model = randomise(RDN(upscale=scale, kernel_size=kernel_size, **SMALL), seed=scale + kernel_size)
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(1))
    y = _run(model, x)
    state = model.state_dict()
    with torch.no_grad():
        expected = reference_rdn(state, 255 * x, SMALL['num_blocks'], SMALL['num_layers'], scale, kernel_size) / 255
    assert y.shape == (2, 3, 9 * scale, 7 * scale)
    assert expected.std() > 0.05  # the comparison is not between two near-constant images
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)
    # the blocks' convs stay 3x3 whatever kernel_size is, as in EDSR-PyTorch
    assert state['RDBs.0.convs.0.conv.0.weight'].shape[-1] == 3
    assert state['SFENet1.weight'].shape[-1] == state['UPNet.0.weight'].shape[-1] == kernel_size


# ---------------------------------------------------------------------------------------------------------------
# configurations and EDSR-PyTorch's option names

@pytest.mark.parametrize('name, count', [('rdn_x2', 22_123_395), ('rdn_x3', 22_308_035), ('rdn_x4', 22_271_107)])
def test_registered_parameter_counts(name, count):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert (model.num_blocks, model.num_layers, model.growth_rate, model.num_features) == (16, 8, 64, 64)
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and cfg['url'] == '' and cfg['first_conv'] == 'SFENet1'
    assert 'EDSR-PyTorch' in ' '.join(cfg['notes'])


@pytest.mark.parametrize('scale, count', [(2, 5_541_795), (3, 5_634_115), (4, 5_578_787)])
def test_config_a_parameter_counts(scale, count):
    with torch.device('meta'):
        model = RDN(scale=[scale], RDNconfig='A')
    assert sum(p.numel() for p in model.parameters()) == count


def test_edsr_pytorch_option_names():
    with torch.device('meta'):
        edsr = RDN(scale=[4], n_colors=3, G0=64, RDNkSize=3, RDNconfig='B', rgb_range=255)
        plain = RDN()
    assert {k: v.shape for k, v in edsr.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert edsr.img_range == 255 and edsr.upscale == 4 and edsr.in_chans == 3
    with torch.device('meta'):
        grey = RDN(n_colors=1, G0=32, rgb_range=1., scale=2, **{k: SMALL[k] for k in ('num_blocks', 'num_layers')})
    assert grey.in_chans == 1 and grey.SFENet1.out_channels == 32 and grey.img_range == 1. and grey.upscale == 2
    assert grey.UPNet[-1].out_channels == 1


def test_inputs_are_scaled_by_img_range_without_mean():
    model = RDN(**SMALL)
    assert model.img_range == 255. and torch.count_nonzero(model.mean) == 0


# ---------------------------------------------------------------------------------------------------------------
# timm's pretrained path

@pytest.mark.parametrize('wrap', ['params', 'module', 'bare'])
def test_timm_pretrained_path(tmp_path, wrap):
    source = randomise(RDN(upscale=4, **SMALL), seed=7)
    state = source.state_dict()
    if wrap == 'module':
        state = {f'module.{key}': value for key, value in state.items()}
    elif wrap != 'bare':
        state = {wrap: state}
    path = tmp_path / 'rdn.pt'
    torch.save(state, path)
    model = timm.create_model('rdn_x4', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    x = torch.rand(1, 3, 6, 5)
    torch.testing.assert_close(_run(model.eval(), x), _run(source, x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# one-line errors

def test_unsupported_scale():
    with pytest.raises(ValueError, match='upscale=5 is not supported by the RDN upsampler') as info:
        RDN(upscale=5, **SMALL)
    one_line(info)
    with pytest.raises(ValueError, match='upscale=5'):
        timm.create_model('rdn_x4', upscale=5, **SMALL)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"RDNconfig='C' is not known"):
        RDN(RDNconfig='C')
    with pytest.raises(ValueError, match=r"num_blocks=10 and RDNconfig='A' \(num_blocks=20\) disagree"):
        RDN(RDNconfig='A', num_blocks=10)
    with pytest.raises(ValueError, match='upscale=3 and scale=2 disagree'):
        RDN(upscale=3, scale=2)
    with pytest.raises(ValueError, match='kernel_size=4 must be an odd'):
        RDN(kernel_size=4)
    with pytest.raises(ValueError, match='one scale'):
        RDN(scale=[2, 3])


def test_checkpoint_of_another_scale(tmp_path):
    x3 = RDN(upscale=3, **SMALL).state_dict()
    with pytest.raises(ValueError, match=r'UPNet\.0\.weight has shape 72x16x3x3 in the checkpoint and 32x16x3x3 in '
                                         r'the model') as info:
        checkpoint_filter_fn(x3, RDN(upscale=4, **SMALL))
    one_line(info)
    with pytest.raises(ValueError, match=r'UPNet\.2\.weight has shape 3x8x3x3 in the checkpoint and 32x8x3x3'):
        checkpoint_filter_fn(RDN(upscale=2, **SMALL).state_dict(), RDN(upscale=4, **SMALL))
    path = tmp_path / 'rdn_x3.pt'
    torch.save({'params': x3}, path)
    with pytest.raises(ValueError, match=r'UPNet\.0\.weight has shape 72x16x3x3'):
        timm.create_model('rdn_x4', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
