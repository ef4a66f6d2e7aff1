"""DRCT: the official quirks, parameter counts and outputs (fixture from ming053l/DRCT ``DRCT_arch.py``); the SR
contract of every registered model: tests/models/test_contract.py.

Counts: DRCT ×2/×3/×4 13,991,867 / 14,176,507 / 14,139,579 and DRCT-L 27,433,007 / 27,617,647 / 27,580,719, the
official model's (README: 14.13M and 27.58M).
"""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath

from densezoo.models._sr import checkpoint_filter_fn
from densezoo.models.drct import DRCT
from tests.helpers import load_fixture, perturb_connections, scale_preserving_weights

OFFICIAL_COUNTS = {'drct_x2': 13_991_867, 'drct_x3': 14_176_507, 'drct_x4': 14_139_579,
                   'drct_l_x2': 27_433_007, 'drct_l_x3': 27_617_647, 'drct_l_x4': 27_580_719}
SMALL = dict(img_size=16, window_size=4, depths=(2, 2), embed_dim=24, num_heads=(6, 6), gc=8, mlp_ratio=2,
             upsampler='pixelshuffle', drop_path_rate=0.)


def _fixture_model():
    data = load_fixture('drct_x2.pt')
    model = DRCT(**json.loads(data['kwargs'])).eval()
    model.load_state_dict(checkpoint_filter_fn(dict(data['state_dict']), model), strict=True)
    return model, data


def test_output_equals_official():
    model, data = _fixture_model()
    with torch.no_grad():
        torch.testing.assert_close(model(data['input']), data['output'], rtol=0, atol=1e-5)
    # the training path (separate concatenations, attention with its own backward) gives the same output
    for module in model.modules():
        if isinstance(module, DropPath):
            module.drop_prob = 0.
    torch.testing.assert_close(model.train()(data['input']), data['output'], rtol=0, atol=1e-5)


def test_official_quirks():
    """Five Swin layers per group whatever depths says; heads num_heads − (width mod num_heads); MLP ratio 1 in
    layers 4 and 5; layers 2 and 4 shifted; adjust5 maps back to embed_dim; residual scale 0.2."""
    model, _ = _fixture_model()
    group = model.layers[0]
    widths = [getattr(group, f'swin{k}').dim for k in range(1, 6)]
    assert widths == [24, 32, 40, 48, 56]
    assert [getattr(group, f'swin{k}').num_heads for k in range(1, 6)] == [6, 4, 2, 6, 4]
    assert [getattr(group, f'swin{k}').mlp.fc1.out_features for k in range(1, 6)] == [48, 64, 80, 48, 56]
    assert [getattr(group, f'swin{k}').shift_size for k in range(1, 6)] == [0, 2, 0, 2, 0]
    assert group.adjust5.out_channels == 24 and group.res_scale == 0.2
    # depths only sets the number of groups
    assert len(DRCT(**{**SMALL, 'depths': (1, 9, 3), 'num_heads': (6, 6, 6)}).layers) == 3
    DRCT(compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5, **SMALL)  # accepted, unused


@pytest.mark.parametrize('name', sorted(OFFICIAL_COUNTS))
def test_official_parameter_counts(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_COUNTS[name]
    assert model.checkpoint_key == 'params_ema' and 'DRCT' in model.pretrained_cfg['notes'][0]


def test_release_layout_loads_through_timm(tmp_path):
    _, data = _fixture_model()
    path = tmp_path / 'DRCT_SRx2.pth'
    torch.save({'params_ema': {f'module.{k}': v for k, v in data['state_dict'].items()}}, path)
    kwargs = {k: v for k, v in json.loads(data['kwargs']).items() if k != 'upscale'}
    model = timm.create_model('drct_x2', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(data['input']), data['output'], rtol=0, atol=1e-5)


def test_inputs_of_any_size_are_padded_like_the_official_training_framework():
    """DRCT's own forward needs window multiples; here it reflect-pads bottom/right and crops, like DRCTModel."""
    torch.manual_seed(0)
    model = scale_preserving_weights(DRCT(upscale=3, **SMALL)).eval()
    x = torch.rand(2, 3, 10, 7)
    with torch.no_grad():
        out = model(x)
        padded = model(F.pad(x, (0, 1, 0, 2), mode='reflect'))
    assert out.shape == (2, 3, 30, 21)
    torch.testing.assert_close(out, padded[..., :30, :21], rtol=0, atol=0)


def test_unsupported_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="upsampler='' is not supported by DRCT; it reconstructs with "
                                         "'pixelshuffle' only"):
        DRCT(**{**SMALL, 'upsampler': ''})
    with pytest.raises(ValueError, match="resi_connection='3conv' is not supported by DRCT"):
        DRCT(**{**SMALL, 'resi_connection': '3conv'})
    with pytest.raises(ValueError, match=r'num_heads gives 2 values for 3 groups'):
        DRCT(**{**SMALL, 'depths': (2, 2, 2)})
    with pytest.raises(ValueError, match='upscale=5 is not supported'):
        DRCT(**SMALL, upscale=5)


@pytest.mark.parametrize('kind', ['dwa', 'mudd'])
def test_connected_variants_start_as_the_plain_model(kind):
    torch.manual_seed(0)
    plain = scale_preserving_weights(timm.create_model('drct_x2', **SMALL)).eval()
    model = timm.create_model(f'drct_x2_{kind}', **SMALL).eval()
    model.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() <= 1e-6
        assert (perturb_connections(model)(x) - plain(x)).abs().max() > 1e-4
