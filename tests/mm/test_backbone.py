"""DenseZooBackbone in mmseg / mmdet: registries, freezing, norm_eval, pretrained loading, error messages."""
import pytest
import timm
import torch
from torch import nn

SMALL = {
    'swin_tiny_patch4_window7_224_dwa': dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                                             strict_img_size=False),
    'pvt_v2_b2_mudd': dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
    'rdnet_tiny_dwa': dict(num_init_features=16, growth_rates=(8,) * 7, num_blocks_list=(2,) * 7),
}


def build(registry_name, **cfg):
    if registry_name == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    return MODELS.build(dict(type='DenseZooBackbone', **cfg))


@pytest.mark.parametrize('registry', ['mmseg', 'mmdet'])
@pytest.mark.parametrize('name', sorted(SMALL))
def test_features_equal_timm(mm, registry, name):
    torch.manual_seed(0)
    backbone = build(registry, model_name=name, out_indices=(1, 3), **SMALL[name])
    assert isinstance(backbone, mm.DenseZooBackbone)
    reference = timm.create_model(name, features_only=True, feature_cls='getter', out_indices=(1, 3), **SMALL[name])
    reference.load_state_dict(backbone.features.state_dict())
    x = torch.randn(1, 3, 64, 96)
    outs = backbone.eval()(x)
    assert isinstance(outs, tuple) and len(outs) == 2
    for out, ref, channels, stride in zip(outs, reference.eval()(x), backbone.channels, backbone.strides):
        assert out.shape == (1, channels, 64 // stride, 96 // stride)
        torch.testing.assert_close(out, ref)


def test_frozen_stages(mm):
    backbone = build('mmdet', model_name='pvt_v2_b2_mudd', frozen_stages=2, **SMALL['pvt_v2_b2_mudd'])
    backbone.train()
    model = backbone.features.model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.split('.')[0] == 'patch_embed'
                      or n.startswith(('stages.0.', 'stages.1.'))}
    assert not model.patch_embed.training and not model.stages[1].training and model.stages[2].training
    sum(out.sum() for out in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith('stages.3.blocks'))
    stem_only = build('mmdet', model_name='rdnet_tiny_dwa', frozen_stages=0, **SMALL['rdnet_tiny_dwa'])
    assert {n.split('.')[0] for n, p in stem_only.features.model.named_parameters() if not p.requires_grad} == {'stem'}


def test_norm_eval_keeps_batchnorm_statistics(mm):
    backbone = build('mmdet', model_name='rdnet_tiny_dwa', norm_eval=True, norm_layer='batchnorm2d',
                     **SMALL['rdnet_tiny_dwa'])
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    before = [m.running_mean.clone() for m in norms]
    backbone.train()
    assert all(not m.training for m in norms) and backbone.training
    sum(out.sum() for out in backbone(torch.randn(2, 3, 64, 64))).backward()
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before))
    assert all(m.weight.grad is not None for m in norms)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_pretrained_plain_timm_checkpoint(mm, tmp_path, suffix):
    from safetensors.torch import save_file
    plain = timm.create_model('swin_tiny_patch4_window7_224', **SMALL['swin_tiny_patch4_window7_224_dwa'])
    path = tmp_path / f'plain{suffix}'
    state = {k: v.contiguous() for k, v in plain.state_dict().items()}
    save_file(state, str(path)) if suffix == '.safetensors' else torch.save({'state_dict': state}, path)
    backbone = build('mmseg', model_name='swin_tiny_patch4_window7_224_dwa', frozen_stages=1,
                     init_cfg=dict(type='Pretrained', checkpoint=str(path)), **SMALL['swin_tiny_patch4_window7_224_dwa'])
    backbone.init_weights()
    assert not any(p.requires_grad for p in backbone.features.model.patch_embed.parameters())
    reference = timm.create_model('swin_tiny_patch4_window7_224', features_only=True, feature_cls='getter',
                                  **SMALL['swin_tiny_patch4_window7_224_dwa'])
    reference.model.load_state_dict(state, strict=False)
    x = torch.randn(1, 3, 64, 64)
    for out, ref in zip(backbone.eval()(x), reference.eval()(x)):  # connections start as the plain network
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize('cfg,message', [
    (dict(model_name='vit_tiny_patch16_224'), "has no feature pyramid"),
    (dict(model_name='resnet_nonexistent'), "unknown model"),
    (dict(model_name='pvt_v2_b2_mudd', out_indices=(0, 4)), r"out_indices \(0, 4\) out of range"),
    (dict(model_name='pvt_v2_b2_mudd', frozen_stages=5), "frozen_stages=5 out of range"),
    (dict(model_name='pvt_v2_b2_mudd', init_cfg=dict(type='Pretrained', checkpoint='missing.pth')), "is not a file"),
])
def test_errors_are_one_line(mm, cfg, message):
    from mmengine.registry import MODELS
    with pytest.raises(ValueError, match=message) as error:
        backbone = MODELS.build(dict(type='DenseZooBackbone', **cfg))
        backbone.init_weights()
    assert '\n' not in str(error.value)
