"""Segmentor: backbones x heads at odd input sizes, parity with the plain backbone, gradients, published sizes,
bad input, mIoU / accuracy by hand, sliding-window inference."""
import pytest
import torch
from torch import nn

from densezoo.models import lookupvit, pvt, pvtv2, rdnets, swin, vit
from densezoo.heads.segmentor import create_segmentor, load_segmentor_state
from densezoo.metrics.segmentation import IGNORE_INDEX, check_labels, confusion_matrix, segmentation_scores
from densezoo.tasks.segmentation import segmentation_loss, slide_inference

REGISTERED = (lookupvit, pvt, pvtv2, rdnets, swin, vit)  # importing these registers their models with timm
HEAD = dict(channels=8)
SWIN = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4)
PVT = dict(embed_dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
RDNET = dict(num_init_features=16, growth_rates=(8, 8, 16, 16), num_blocks_list=(2, 2, 2, 2),
             is_downsample_block=(None, True, True, True), block_type=('Block', 'Block', 'BlockESE', 'BlockESE'))
VIT = dict(embed_dim=32, depth=4, num_heads=2)
LOOKUP = dict(embed_dim=32, depth=4, num_heads=2, compressed_grid=3)

CASES = [
    ('swin_tiny_patch4_window7_224_dwa', 'upernet', SWIN),
    ('pvt_v2_b0_mudd', 'segformer', PVT),
    ('rdnet_tiny_dwa', 'fpn', RDNET),
    ('vit_small_patch16_224_dwa', 'dpt', VIT),
    ('lookupvit_tiny_patch16_224', 'dpt', LOOKUP),
    ('resnet18', 'upernet', {}),
    ('convnext_atto', 'fpn', {}),
]


@pytest.mark.parametrize('backbone,head,kwargs', CASES, ids=[f'{b}-{h}' for b, h, _ in CASES])
def test_logits_at_input_size(backbone, head, kwargs):
    torch.manual_seed(0)
    model = create_segmentor(backbone, head, num_classes=5, aux_head=True, head_kwargs=HEAD, **kwargs).eval()
    images = torch.randn(1, 3, 83, 61)  # not a multiple of any stride
    with torch.no_grad():
        logits = model(images)
        main, aux = model(images, return_aux=True)
    assert logits.shape == aux.shape == (1, 5, 83, 61)
    torch.testing.assert_close(main, logits)
    assert torch.isfinite(logits).all() and logits.std() > 0
    # padding only adds pixels at the bottom / right: the same image padded by the caller gives the same logits
    # over the original pixels whenever the padded size is the same multiple of the stride
    with torch.no_grad():
        padded = model(torch.nn.functional.pad(images, (0, 3, 0, 13)))
    assert padded.shape[-2:] == (96, 64)
    if head != 'dpt':  # DPT's bilinear upsampling follows the padded size; pyramid heads see identical maps
        torch.testing.assert_close(model.decode_head(model.backbone(model._padded(images))),
                                   model.decode_head(model.backbone(torch.nn.functional.pad(images, (0, 3, 0, 13)))))


def test_default_out_indices_and_sizes():
    model = create_segmentor('resnet18', 'upernet', num_classes=3, head_kwargs=HEAD)
    assert model.backbone.feature_info.reduction() == [4, 8, 16, 32] and model.size_divisor == 32
    vit = create_segmentor('vit_small_patch16_224_dwa', 'dpt', num_classes=3, head_kwargs=HEAD,
                           **dict(VIT, depth=12))
    assert [info['index'] for info in vit.backbone.feature_info.get_dicts()] == [2, 5, 8, 11]  # DPT's blocks
    assert vit.size_divisor == 32


def test_connected_segmentor_equals_plain_at_init():
    """A DWA Swin segmentor with the plain Swin segmentor's weights gives the same logits (identity at init)."""
    torch.manual_seed(0)
    plain = create_segmentor('swin_tiny_patch4_window7_224', 'upernet', num_classes=4, head_kwargs=HEAD,
                             **SWIN).eval()
    dwa = create_segmentor('swin_tiny_patch4_window7_224_dwa', 'upernet', num_classes=4, head_kwargs=HEAD,
                           **SWIN).eval()
    extra = set(dwa.state_dict()) - set(plain.state_dict())
    assert extra and all('.connection.' in key for key in extra)
    dwa.load_state_dict(plain.state_dict(), strict=False)
    images = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(dwa(images), plain(images))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = create_segmentor('swin_tiny_patch4_window7_224_dwa', 'upernet', num_classes=4, aux_head=True,
                             head_kwargs=HEAD, **SWIN).train()
    images = torch.randn(2, 3, 45, 39)
    target = torch.randint(0, 4, (2, 45, 39))
    target[:, :5] = IGNORE_INDEX
    logits, aux = model(images, return_aux=True)
    segmentation_loss(logits, target, aux).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_published_sizes():
    """UPerNet + auxiliary FCN on Swin-T: 59.94M (Swin paper: 60M); SegFormer-B0 (MiT-B0 = PVTv2-b0 layout): 3.8M;
    semantic FPN on ResNet-50: 28.5M (150 classes)."""
    def count(*args, **kwargs):
        with torch.device('meta'):
            model = create_segmentor(*args, num_classes=150, device='meta', **kwargs)
        return sum(p.numel() for p in model.parameters())
    assert count('swin_tiny_patch4_window7_224', 'upernet', aux_head=True) == pytest.approx(59.94e6, abs=0.01e6)
    assert count('pvt_v2_b0', 'segformer') == pytest.approx(3.8e6, abs=0.05e6)
    assert count('resnet50', 'fpn') == pytest.approx(28.5e6, abs=0.05e6)


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"^head='upernet' needs a feature pyramid but vit_small_patch16_224_dwa "
                                         r"gives maps at a single stride 16; use head='dpt'$"):
        create_segmentor('vit_small_patch16_224_dwa', 'upernet', num_classes=3, **VIT)
    with pytest.raises(ValueError, match=r"head='segformer' needs a feature pyramid .* use head='dpt'"):
        create_segmentor('lookupvit_tiny_patch16_224', 'segformer', num_classes=3, **LOOKUP)
    with pytest.raises(ValueError, match=r'^out_indices \[5\] are out of range: resnet18 has 5 feature maps '
                                         r'\(indices 0..4\)$'):
        create_segmentor('resnet18', out_indices=(1, 2, 5), num_classes=3)
    with pytest.raises(ValueError, match="head='psp' is not known"):
        create_segmentor('resnet18', 'psp', num_classes=3)
    with pytest.raises(ValueError, match='aux_head=True needs a stride-16 map'):
        create_segmentor('resnet18', out_indices=(1, 2), num_classes=3, aux_head=True)
    with pytest.raises(ValueError, match=r'^label values \[7, 254\] are outside \[0, 4\) and not the ignore index 255'):
        segmentation_loss(torch.zeros(1, 4, 2, 2), torch.tensor([[[0, 7], [254, 255]]]))
    with pytest.raises(ValueError, match=r'label values \[-1\]'):
        confusion_matrix(torch.zeros(1, 3), torch.tensor([[0, -1, 2]]), 4)
    small = create_segmentor('resnet18', num_classes=3, head_kwargs=HEAD)
    other = create_segmentor('resnet18', num_classes=5, head_kwargs=HEAD)
    with pytest.raises(ValueError, match=r'^the checkpoint has 5 classes but the segmentor has 3; create it with '
                                         r'num_classes=5'):
        load_segmentor_state(small, dict(state_dict=other.state_dict()))
    with pytest.raises(ValueError, match='the checkpoint has 5 classes'):
        create_segmentor('resnet18', num_classes=3, head_kwargs=HEAD, checkpoint=other.state_dict())
    load_segmentor_state(other, dict(model=other.state_dict()))  # a matching checkpoint loads


def test_loss_ignores_ignored_pixels():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[0, IGNORE_INDEX]]])
    expected = torch.log1p(torch.exp(torch.tensor(-2.0)))  # -log softmax([2, 0])[0]
    torch.testing.assert_close(segmentation_loss(logits, target), expected)
    aux = torch.zeros_like(logits)
    torch.testing.assert_close(segmentation_loss(logits, target, aux), expected + 0.4 * torch.log(torch.tensor(2.)))


def test_miou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    matrix = confusion_matrix(prediction, target, num_classes=4)
    assert matrix.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    scores = segmentation_scores(matrix)
    # IoU: class 0: 2 / (3 + 3 - 2) = 1/2; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2;
    # class 3 absent from labels and predictions: left out
    assert scores['mIoU'] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert scores['aAcc'] == pytest.approx(100 * 5 / 7)
    assert scores['mAcc'] == pytest.approx(100 * (2 / 3 + 1 + 1 / 2) / 3)
    check_labels(target, 3)  # 255 is allowed
    assert segmentation_scores(torch.zeros(3, 3, dtype=torch.long)) == dict(mIoU=0., mAcc=0., aAcc=0.)


class _PixelModel(nn.Module):
    """A per-pixel (1x1 conv) model: its receptive field is one pixel, so windows do not change its logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


class _WindowSize(nn.Module):
    """Logits that are the window's pixel count at every pixel: shows which windows were averaged."""

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), float(x.shape[-2] * x.shape[-1]))


def test_slide_inference_equals_full_image_for_pixelwise_model():
    torch.manual_seed(0)
    model, images = _PixelModel(), torch.randn(2, 3, 23, 31)
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(model, images, 4, window=8, stride=5), model(images))
        torch.testing.assert_close(slide_inference(model, images, 4, window=(40, 40), stride=16), model(images))
    # a window as large as the image: one window, the segmentor's own full-image logits
    segmentor = create_segmentor('resnet18', 'upernet', num_classes=3, head_kwargs=HEAD).eval()
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(segmentor, images, 3, window=64, stride=32), segmentor(images))


def test_slide_inference_windows_and_average():
    """1 x 10 image, window 1 x 4, stride 3: windows at columns 0-3, 3-6, 6-9 (last flush with the border)."""
    calls = []

    def model(x):
        calls.append(x[0, 0, 0].tolist())
        return torch.ones(1, 1, *x.shape[-2:]) * len(calls)  # window k gives logit k
    images = torch.arange(10.).reshape(1, 1, 1, 10)
    out = slide_inference(model, images, 1, window=(1, 4), stride=(1, 3))
    assert calls == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert out[0, 0, 0].tolist() == [1, 1, 1, 1.5, 2, 2, 2.5, 3, 3, 3]
    with pytest.raises(ValueError, match='stride=5 is larger than window=4'):
        slide_inference(_WindowSize(), images, 1, window=4, stride=5)
