"""The torchvision-backed stand-in for mmcv's compiled ops."""
import sys
import types

import pytest
import torch
import torchvision


def _boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 50
    wh = torch.rand(n, 2, generator=generator) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=generator)


@pytest.mark.parametrize('offset', [0, 1])
def test_nms_matches_torchvision(mm, offset):
    from mmcv.ops import nms
    generator = torch.Generator().manual_seed(offset)
    boxes, scores = _boxes(200, generator)
    dets, keep = nms(boxes, scores, iou_threshold=0.5, offset=offset)
    shifted = boxes.clone()
    shifted[:, 2:] += offset
    expected = torchvision.ops.nms(shifted, scores, 0.5)
    assert torch.equal(keep, expected)
    assert torch.equal(dets[:, :4], boxes[expected]) and torch.equal(dets[:, 4], scores[expected])
    assert 0 < len(keep) < 200


@pytest.mark.parametrize('aligned,sampling_ratio', [(True, 0), (False, 2)])
def test_roi_align_forward_backward_match_torchvision(mm, aligned, sampling_ratio):
    from mmcv.ops import roi_align
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 16, 20, generator=generator, dtype=torch.float64)
    boxes, _ = _boxes(6, generator)
    rois = torch.cat([torch.tensor([0, 1, 0, 1, 1, 0.]).unsqueeze(1), boxes.double()], dim=1)
    ours_in = features.clone().requires_grad_()
    ref_in = features.clone().requires_grad_()
    ours = roi_align(ours_in, rois, (5, 4), 0.25, sampling_ratio, 'avg', aligned)
    ref = torchvision.ops.roi_align(ref_in, rois, (5, 4), 0.25, sampling_ratio, aligned)
    assert torch.equal(ours, ref)
    weights = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(ours_in.grad, ref_in.grad) and ours_in.grad.abs().sum() > 0


def test_other_ops_fail_clearly_only_when_called(mm):
    from mmcv.ops import roi_align
    ext = sys.modules['mmcv._ext']
    if not mm.fallback_active():
        pytest.skip('a compiled mmcv is installed; the stand-in is not in use')
    op = ext.deform_conv_forward  # looking an op up works (mmcv checks names at import time)
    with pytest.raises(NotImplementedError) as error:
        op(torch.zeros(1))
    assert "'deform_conv_forward'" in str(error.value) and 'mmcv-lite' in str(error.value)
    assert '\n' not in str(error.value)
    with pytest.raises(NotImplementedError, match="pool_mode='max'") as error:
        roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0, 0, 0, 2, 2.]]), (2, 2), 1.0, 0, 'max', True)
    assert '\n' not in str(error.value)
    with pytest.raises(AttributeError):
        ext.__path__  # the stand-in is not a package
    assert ext.__spec__.name == 'mmcv._ext'


def test_compiled_ops_win(mm, monkeypatch):
    compiled = types.ModuleType('mmcv._ext')
    compiled.__spec__ = types.SimpleNamespace(name='mmcv._ext', loader=object())
    monkeypatch.setitem(sys.modules, 'mmcv._ext', compiled)
    assert mm.install_ext_fallback() is False
    assert sys.modules['mmcv._ext'] is compiled and not mm.fallback_active()


def test_fallback_installed_when_ext_missing(mm, monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)  # None in sys.modules makes the import fail
    assert mm.install_ext_fallback() is True
    assert mm.fallback_active()
    assert sys.modules['mmcv._ext'].nms is mm.ops.nms
