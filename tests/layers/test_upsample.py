"""SR reconstruction heads: official module layouts and one-line errors for scales an upsampler cannot make."""
import pytest
import torch

from densezoo.layers.upsample import DenseUpsample, PixelShuffleDirect, PixelShuffleUpsample, check_upscale


@pytest.mark.parametrize('scale,keys', [(2, ['0.weight', '0.bias']), (3, ['0.weight', '0.bias']),
                                        (4, ['0.weight', '0.bias', '2.weight', '2.bias']),
                                        (8, ['0.weight', '0.bias', '2.weight', '2.bias', '4.weight', '4.bias'])])
def test_pixelshuffle_upsample(scale, keys):
    head = PixelShuffleUpsample(scale, 8)
    assert list(head.state_dict()) == keys
    assert head(torch.randn(1, 8, 5, 7)).shape == (1, 8, 5 * scale, 7 * scale)


def test_direct_and_dense_upsamplers():
    assert PixelShuffleDirect(3, 16, 3)(torch.randn(2, 16, 4, 5)).shape == (2, 3, 12, 15)
    dense = DenseUpsample(4, 16, 8, 3)
    assert [k for k in dense.state_dict() if k.endswith('weight')] == ['0.weight', '2.weight', '4.weight']
    assert dense(torch.randn(1, 16, 4, 5)).shape == (1, 3, 16, 20)


@pytest.mark.parametrize('upsampler,scale', [('pixelshuffle', 5), ('pixelshuffle', 6), ('nearest+conv', 8),
                                             ('pixelshuffledirect', 0), ('bicubic', 2)])
def test_unsupported_scale_is_a_one_line_error(upsampler, scale):
    with pytest.raises(ValueError) as info:
        check_upscale(upsampler, scale)
    assert '\n' not in str(info.value) and (f'upscale={scale}' in str(info.value) or 'not known' in str(info.value))
    with pytest.raises(ValueError, match='not supported by the RDN upsampler'):
        DenseUpsample(8, 16, 8, 3)
