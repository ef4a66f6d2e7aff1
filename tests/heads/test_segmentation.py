"""Segmentation heads: output shapes and strides, values against direct computations, structure as in mmseg."""
import pytest
import torch
import torch.nn.functional as F

from densezoo.heads.segmentation import (SEG_HEADS, DPTHead, FCNHead, FPNHead, PyramidPooling, SegFormerHead,
                                         UPerHead, create_seg_head)

CHANNELS, STRIDES = [8, 16, 24, 32], [4, 8, 16, 32]


def pyramid(batch=2, size=64, channels=CHANNELS, strides=STRIDES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // s, size // s, generator=gen) for c, s in zip(channels, strides)]


def randomize_norms(module):
    """Non-trivial BatchNorm statistics and affine parameters, so that eval-mode values test them too."""
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def conv_norm_act(block, x, act=True):
    x = F.batch_norm(block.conv(x) if hasattr(block, 'conv') else x, block.bn.running_mean, block.bn.running_var,
                     block.bn.weight, block.bn.bias, eps=block.bn.eps)
    return F.relu(x) if act else x


@pytest.mark.parametrize('name', ['upernet', 'fpn', 'segformer'])
def test_pyramid_heads_shapes(name):
    head = create_seg_head(name, CHANNELS, STRIDES, num_classes=5, channels=16)
    out = head(pyramid())
    assert out.shape == (2, 5, 16, 16) and head.output_stride == 4
    # three levels starting at stride 8 (e.g. out_indices=(1, 2, 3)): logits at stride 8
    head = create_seg_head(name, CHANNELS[1:], STRIDES[1:], num_classes=3, channels=16)
    assert head(pyramid()[1:]).shape == (2, 3, 8, 8) and head.output_stride == 8


def test_defaults_as_mmseg():
    upernet = UPerHead(CHANNELS, STRIDES, 150)
    assert upernet.channels == 512 and len(upernet.psp_modules.stages) == 4
    assert [s[0].output_size for s in upernet.psp_modules.stages] == [1, 2, 3, 6]
    assert upernet.dropout.p == 0.1 and isinstance(upernet.dropout, torch.nn.Dropout2d)
    fpn = FPNHead(CHANNELS, STRIDES, 150)
    assert fpn.channels == 128 and fpn.lateral_convs[0].out_channels == 256
    # semantic FPN: 1, 1, 2, 3 conv(+2x upsample) steps for strides 4, 8, 16, 32
    convs = [sum(1 for m in head if not isinstance(m, torch.nn.Upsample)) for head in fpn.scale_heads]
    assert convs == [1, 1, 2, 3]
    assert SegFormerHead(CHANNELS, STRIDES, 150).channels == 256
    dpt = DPTHead([768] * 4, [16] * 4, 150)
    assert dpt.channels == 256 and [p.out_channels for p in dpt.reassemble_blocks.projects] == [96, 192, 384, 768]
    assert FCNHead(384, 16, 150).channels == 256


def test_segformer_values():
    """Eval-mode output equals the all-MLP decoder written out with functional ops."""
    head = SegFormerHead(CHANNELS, STRIDES, num_classes=4, channels=8).eval()
    randomize_norms(head)
    features = pyramid(batch=1)
    with torch.no_grad():
        ups = [F.interpolate(conv_norm_act(conv, x), size=(16, 16), mode='bilinear', align_corners=False)
               for conv, x in zip(head.convs, features)]
        expected = head.conv_seg(conv_norm_act(head.fusion_conv, torch.cat(ups, 1)))
        torch.testing.assert_close(head(features), expected)


def test_upernet_values():
    """Eval-mode output equals PPM + top-down FPN + fusion written out with functional ops."""
    head = UPerHead(CHANNELS, STRIDES, num_classes=3, channels=8).eval()
    randomize_norms(head)
    f = pyramid(batch=1)
    up = lambda x, ref: F.interpolate(x, size=ref.shape[-2:], mode='bilinear', align_corners=False)  # noqa: E731
    with torch.no_grad():
        pooled = [up(conv_norm_act(stage[1], F.adaptive_avg_pool2d(f[3], s)), f[3])
                  for stage, s in zip(head.psp_modules.stages, (1, 2, 3, 6))]
        top = conv_norm_act(head.bottleneck, torch.cat([f[3]] + pooled, 1))
        lat = [conv_norm_act(c, x) for c, x in zip(head.lateral_convs, f[:3])] + [top]
        lat[2] = lat[2] + up(lat[3], lat[2])
        lat[1] = lat[1] + up(lat[2], lat[1])
        lat[0] = lat[0] + up(lat[1], lat[0])
        outs = [conv_norm_act(c, x) for c, x in zip(head.fpn_convs, lat[:3])] + [lat[3]]
        fused = conv_norm_act(head.fpn_bottleneck, torch.cat([up(x, outs[0]) for x in outs], 1))
        torch.testing.assert_close(head(f), head.conv_seg(fused))


def test_pyramid_pooling_constant_input():
    """A constant map pools to itself at every scale: each branch is conv-bn-relu of the constant, everywhere."""
    ppm = PyramidPooling(4, 6).eval()
    x = torch.full((1, 4, 5, 7), 0.5)
    with torch.no_grad():
        for stage, out in zip(ppm.stages, ppm(x)):
            expected = conv_norm_act(stage[1], torch.full((1, 4, 1, 1), 0.5))
            torch.testing.assert_close(out, expected.expand(1, 6, 5, 7))


def test_dpt_reassembly_and_output():
    head = DPTHead([12] * 4, [16] * 4, num_classes=5, channels=8, post_process_channels=(4, 8, 12, 16))
    maps = head.reassemble_blocks([torch.randn(2, 12, 4, 6) for _ in range(4)])
    assert [tuple(m.shape[1:]) for m in maps] == [(4, 16, 24), (8, 8, 12), (12, 4, 6), (16, 2, 3)]
    out = head([torch.randn(2, 12, 4, 6) for _ in range(4)])
    assert out.shape == (2, 5, 32, 48) and head.output_stride == 2
    assert head.fusion_blocks[0].res_conv_unit1 is None


def test_fcn_values():
    head = FCNHead(6, 16, num_classes=3, channels=5).eval()
    randomize_norms(head)
    x = torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(head([x]), head.conv_seg(conv_norm_act(head.convs[0], x)))


def test_gradients_reach_every_parameter():
    for name in SEG_HEADS:
        if name == 'dpt':
            head, features = create_seg_head('dpt', [8] * 4, [16] * 4, 3, channels=8,
                                             post_process_channels=(4, 4, 8, 8)), [torch.randn(2, 8, 4, 4)] * 4
        else:
            head, features = create_seg_head(name, CHANNELS, STRIDES, 3, channels=8), pyramid(size=64)
        head(features).square().mean().backward()
        missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, (name, missing)


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"head='upernet' needs a feature pyramid .* use head='dpt'"):
        UPerHead([8] * 4, [16] * 4, 3)
    with pytest.raises(ValueError, match="head='dpt' needs four token maps of one stride"):
        DPTHead(CHANNELS, STRIDES, 3)
    with pytest.raises(ValueError, match="head='mask' is not known; choose one of upernet, fpn, segformer, dpt"):
        create_seg_head('mask', CHANNELS, STRIDES, 3)
    with pytest.raises(ValueError, match='num_classes=0 must be at least 1'):
        FPNHead(CHANNELS, STRIDES, 0)
    with pytest.raises(ValueError, match='was built for 4 feature maps, got 3'):
        SegFormerHead(CHANNELS, STRIDES, 3)(pyramid()[:3])
