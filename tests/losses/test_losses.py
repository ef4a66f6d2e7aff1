"""PerceptualLoss (VGG19 layer names and indices, features equal torchvision's, weights files and their one-line
errors, hand-computed perceptual and style values, layer weights, a frozen VGG) and GANLoss (each type's formula,
loss_weight for the generator only); both against BasicSR's values when basicsr is installed."""
import math

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from densezoo.checkpoint_io import WeightsFileError
from densezoo.losses import GAN_TYPES, VGG19_LAYERS, GANLoss, PerceptualLoss, VGGFeatureExtractor, VGGWeightsError
from densezoo.losses.perceptual import VGG19_WEIGHTS_ADVICE
from tests.helpers import one_line

#: the layers and weights of Real-ESRGAN's perceptual loss
REAL_ESRGAN_LAYERS = {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1, 'conv4_4': 1, 'conv5_4': 1}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope='module')
def tv_vgg():
    """torchvision's VGG19 with random weights."""
    torch.manual_seed(0)
    return torchvision.models.vgg19(weights=None).eval()


@pytest.fixture(scope='module')
def vgg_file(tv_vgg, tmp_path_factory):
    """Its whole state dict, as torchvision's vgg19-dcbe5e4b.pth holds it (features.N.* and classifier.N.*)."""
    path = tmp_path_factory.mktemp('vgg') / 'vgg19-random.pth'
    torch.save(tv_vgg.state_dict(), path)
    return path


def _features_state(tv_vgg):
    return {f'features.{key}': value.clone() for key, value in tv_vgg.features.state_dict().items()}


@pytest.fixture(scope='module')
def features_file(tv_vgg, tmp_path_factory):
    """Its features.* entries alone."""
    path = tmp_path_factory.mktemp('vgg') / 'vgg19-features.pth'
    torch.save(_features_state(tv_vgg), path)
    return path


def _torchvision_features(tv_vgg, x, name, normalise=True):
    """What torchvision's vgg19().features[:i + 1] gives for layer ``name`` (index i)."""
    with torch.no_grad():
        return tv_vgg.features[:VGG19_LAYERS.index(name) + 1]((x - MEAN) / STD if normalise else x.clone())


def _images(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator), torch.rand(*shape, generator=generator)


# ---------------------------------------------------------------------------------------------------------------
# the VGG19 feature extractor

def test_layer_names_follow_torchvision_modules(tv_vgg):
    modules = list(tv_vgg.features)
    assert len(VGG19_LAYERS) == len(modules) == 37
    kinds = {'conv': nn.Conv2d, 'relu': nn.ReLU, 'pool': nn.MaxPool2d}
    for name, module in zip(VGG19_LAYERS, modules):
        assert isinstance(module, kinds[name[:4]]), name
        if name.startswith('conv'):
            block = int(name[4])
            assert module.out_channels == min(64 * 2 ** (block - 1), 512), name
    assert [VGG19_LAYERS.index(name) for name in REAL_ESRGAN_LAYERS] == [2, 7, 16, 25, 34]
    assert [VGG19_LAYERS.index(f'pool{block}') for block in range(1, 6)] == [4, 9, 18, 27, 36]
    assert VGG19_LAYERS.index('relu5_4') == 35


@pytest.mark.parametrize('layers, kept', [(['conv2_2'], 8), (['relu1_1', 'conv1_1'], 2),
                                          (list(REAL_ESRGAN_LAYERS), 35), (['pool5'], 37)])
def test_only_the_layers_up_to_the_last_used_are_kept(layers, kept):
    extractor = VGGFeatureExtractor(layers, random_weights=True)
    assert [name for name, _ in extractor.body.named_children()] == list(VGG19_LAYERS[:kept])


def test_features_equal_torchvision_from_its_state_dict_file(tv_vgg, vgg_file):
    layers = ['conv1_2', 'relu2_1', 'pool3', 'conv5_4']
    extractor = VGGFeatureExtractor(layers, weights_file=vgg_file)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = extractor(x)
    assert list(features) == layers
    for name in layers:
        torch.testing.assert_close(features[name], _torchvision_features(tv_vgg, x, name), rtol=0, atol=0, msg=name)
    assert features['conv1_2'].min() < 0 and features['conv5_4'].min() < 0  # before the ReLU
    assert features['relu2_1'].min() >= 0


@pytest.mark.parametrize('fmt', ['features only', 'no prefix', 'safetensors'])
def test_other_file_layouts_load(tv_vgg, tmp_path, fmt):
    state = _features_state(tv_vgg)
    if fmt == 'no prefix':  # the state dict of vgg19().features
        state = {key[len('features.'):]: value for key, value in state.items()}
    path = tmp_path / ('vgg19.safetensors' if fmt == 'safetensors' else 'vgg19.pth')
    save_file(state, str(path)) if fmt == 'safetensors' else torch.save(state, path)
    extractor = VGGFeatureExtractor(['conv3_4'], weights_file=path)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)['conv3_4'], _torchvision_features(tv_vgg, x, 'conv3_4'), rtol=0,
                                   atol=0)


def test_input_normalisation_options(tv_vgg, features_file):
    x = torch.rand(1, 3, 16, 16)
    plain = VGGFeatureExtractor(['conv2_1'], weights_file=features_file, use_input_norm=False)
    ranged = VGGFeatureExtractor(['conv2_1'], weights_file=features_file, range_norm=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x)['conv2_1'], _torchvision_features(tv_vgg, x, 'conv2_1', False))
        torch.testing.assert_close(ranged(x * 2 - 1)['conv2_1'], _torchvision_features(tv_vgg, x, 'conv2_1'))


def test_vgg_is_frozen_and_stays_in_eval_mode():
    loss = PerceptualLoss({'conv2_2': 1.0}, random_weights=True)
    assert loss.training and not loss.vgg.body.training
    loss.train()
    assert loss.training and loss.vgg.training
    assert not any(module.training for module in loss.vgg.body.modules())
    assert [name for name, p in loss.named_parameters() if p.requires_grad] == []
    x, gt = _images(1, 3, 16, 16)
    x.requires_grad_()
    loss(x, gt)[0].backward()
    assert x.grad is not None and all(p.grad is None for p in loss.parameters())
    # the normalisation constants follow the module but are not state
    convs = ('conv1_1', 'conv1_2', 'conv2_1', 'conv2_2')
    assert list(loss.state_dict()) == [f'vgg.body.{name}.{entry}' for name in convs for entry in ('weight', 'bias')]


def test_unknown_layer_and_criterion():
    with pytest.raises(ValueError) as err:
        PerceptualLoss({'conv6_1': 1.0, 'conv1_1': 1.0}, random_weights=True)
    assert one_line(err).startswith('VGG19 layers must be some of conv1_1, relu1_1, conv1_2') and \
        one_line(err).endswith("pool5; got 'conv6_1'")
    with pytest.raises(ValueError) as err:
        PerceptualLoss({}, random_weights=True)
    assert one_line(err).endswith('; got none')
    with pytest.raises(ValueError) as err:
        PerceptualLoss({'conv1_1': 1.0}, random_weights=True, criterion='l3')
    assert one_line(err) == "criterion must be one of l1, l2, fro, got 'l3'"


# ---------------------------------------------------------------------------------------------------------------
# weights files: nothing without one unless asked, one-line errors

def test_random_weights_must_be_asked_for(tmp_path):
    with pytest.raises(VGGWeightsError) as err:
        PerceptualLoss({'conv1_2': 1.0})
    assert isinstance(err.value, ValueError) and err.value.path is None
    assert one_line(err) == (f'the perceptual loss needs VGG19 weights and weights_file is None; '
                             f'{VGG19_WEIGHTS_ADVICE} as weights_file (random_weights=True builds an untrained '
                             f'loss, for tests only)')
    with pytest.raises(ValueError) as err:
        PerceptualLoss({'conv1_2': 1.0}, weights_file=tmp_path / 'vgg19.pth', random_weights=True)
    assert one_line(err) == 'give either weights_file (VGG19 weights) or random_weights=True, not both'


def _message(path, problem):
    return f'perceptual loss weights file {str(path)!r} {problem}; {VGG19_WEIGHTS_ADVICE}'


def test_missing_file(tmp_path):
    path = tmp_path / 'vgg19-dcbe5e4b.pth'
    with pytest.raises(VGGWeightsError) as err:
        PerceptualLoss(REAL_ESRGAN_LAYERS, weights_file=path)
    assert one_line(err) == _message(path, 'does not exist')
    assert isinstance(err.value, WeightsFileError) and err.value.path == path
    assert "download torchvision's vgg19 weights (vgg19-dcbe5e4b.pth" in one_line(err)


@pytest.mark.parametrize('name, content, reason', [
    ('empty.pth', b'', 'zero bytes'),
    ('text.pth', b'not a checkpoint', None),
    ('truncated.pth', 'half', 'truncated: the zip archive misses its central directory'),
    ('bad.safetensors', b'garbage', 'safetensors: header too small'),
])
def test_damaged_file(tmp_path, features_file, name, content, reason):
    path = tmp_path / name
    if content == 'half':
        data = features_file.read_bytes()
        content = data[:len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(VGGWeightsError) as err:
        PerceptualLoss({'conv1_2': 1.0}, weights_file=path)
    message = one_line(err)
    if reason is None:  # the parser's own words
        assert message.startswith(_message(path, 'is damaged or not a checkpoint (').split(';')[0])
        assert message.endswith(f'); {VGG19_WEIGHTS_ADVICE}')
    else:
        assert message == _message(path, f'is damaged or not a checkpoint ({reason})')


def test_file_with_wrong_keys(tmp_path, tv_vgg):
    path = tmp_path / 'other.pth'
    torch.save({'conv_first.weight': torch.zeros(4, 3, 3, 3), 'conv_first.bias': torch.zeros(4)}, path)
    with pytest.raises(VGGWeightsError) as err:
        PerceptualLoss({'conv2_2': 1.0}, weights_file=path)
    assert one_line(err) == _message(path, "is not a VGG19 state dict: it lacks 8 of the 8 entries needed, the "
                                           "first features.0.weight (its first keys: 'conv_first.weight', "
                                           "'conv_first.bias')")
    # the first layers only: enough for conv2_2 (features[:8]), not for conv3_1 (features[10])
    state = {key: value for key, value in _features_state(tv_vgg).items() if int(key.split('.')[1]) < 8}
    torch.save(state, path)
    PerceptualLoss({'conv2_2': 1.0}, weights_file=path)
    with pytest.raises(VGGWeightsError) as err:
        PerceptualLoss({'conv3_1': 1.0}, weights_file=path)
    assert one_line(err) == _message(path, "is not a VGG19 state dict: it lacks 2 of the 10 entries needed, the "
                                           "first features.10.weight (its first keys: 'features.0.weight', "
                                           "'features.0.bias', 'features.2.weight')")


def test_file_with_wrong_shapes_or_no_dict(tmp_path, tv_vgg):
    path = tmp_path / 'vgg19.pth'
    state = _features_state(tv_vgg)
    state['features.5.weight'] = torch.zeros(128, 32, 3, 3)
    torch.save(state, path)
    with pytest.raises(VGGWeightsError) as err:
        PerceptualLoss({'conv2_2': 1.0}, weights_file=path)
    assert one_line(err) == _message(path, "is not VGG19's: 5.weight (conv2_1.weight) is (128, 32, 3, 3), VGG19 "
                                           "has (128, 64, 3, 3)")
    torch.save(torch.zeros(3), path)
    with pytest.raises(VGGWeightsError) as err:
        PerceptualLoss({'conv2_2': 1.0}, weights_file=path)
    assert one_line(err) == _message(path, 'holds a Tensor, not a state dict')


# ---------------------------------------------------------------------------------------------------------------
# perceptual and style values

def test_identical_images_give_zero():
    loss = PerceptualLoss(REAL_ESRGAN_LAYERS, random_weights=True, style_weight=1.0)
    x, _ = _images(2, 3, 32, 32)
    perceptual, style = loss(x, x.clone())
    assert perceptual.item() == 0 and style.item() == 0


@pytest.mark.parametrize('criterion', ['l1', 'l2', 'fro'])
def test_different_images_give_a_positive_loss_and_finite_gradients(criterion):
    loss = PerceptualLoss(REAL_ESRGAN_LAYERS, random_weights=True, style_weight=1.0, criterion=criterion)
    x, gt = _images(2, 3, 32, 32)
    x.requires_grad_()
    perceptual, style = loss(x, gt)
    assert perceptual.item() > 0 and style.item() > 0
    (perceptual + style).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize('criterion', ['l1', 'l2', 'fro'])
def test_values_by_hand_on_a_tiny_case(criterion):
    """conv1_1 features of 4×4 images, their Gram matrices written out, each criterion by its formula."""
    loss = PerceptualLoss({'conv1_1': 0.5}, random_weights=True, perceptual_weight=3.0, style_weight=2.0,
                          criterion=criterion)
    x, gt = _images(1, 3, 4, 4)
    conv = loss.vgg.body.conv1_1

    def features(img):
        return F.conv2d((img - MEAN) / STD, conv.weight, conv.bias, padding=1)[0]  # (64, 4, 4)

    def gram(f):
        c, h, w = f.shape
        flat = f.reshape(c, h * w)
        return torch.stack([torch.stack([(flat[i] * flat[j]).sum() for j in range(c)]) for i in range(c)]) / (c * h * w)

    def distance(a, b):
        diff = a - b
        return {'l1': diff.abs().mean(), 'l2': diff.square().mean(), 'fro': diff.square().sum().sqrt()}[criterion]

    with torch.no_grad():
        fx, fg = features(x), features(gt)
        perceptual, style = loss(x, gt)
        torch.testing.assert_close(perceptual, 3.0 * 0.5 * distance(fx, fg))
        torch.testing.assert_close(style, 2.0 * 0.5 * distance(gram(fx), gram(fg)))


def test_a_zero_weight_skips_a_term():
    loss = PerceptualLoss({'conv1_1': 1.0}, random_weights=True, perceptual_weight=0.0, style_weight=0.0)
    assert loss(*_images(1, 3, 8, 8)) == (None, None)
    only_style = PerceptualLoss({'conv1_1': 1.0}, random_weights=True, perceptual_weight=0.0, style_weight=1.0)
    perceptual, style = only_style(*_images(1, 3, 8, 8))
    assert perceptual is None and style.item() > 0


def test_layer_weights_scale_each_layer(features_file):
    x, gt = _images(2, 3, 32, 32)

    def value(layer_weights):
        perceptual, style = PerceptualLoss(layer_weights, weights_file=features_file, style_weight=1.0)(x, gt)
        return perceptual.item(), style.item()

    first, second = value({'conv1_2': 1.0}), value({'conv4_4': 1.0})
    both = value({'conv1_2': 0.3, 'conv4_4': 2.0})
    for term in range(2):
        assert both[term] == pytest.approx(0.3 * first[term] + 2.0 * second[term], rel=1e-6)
        assert first[term] != pytest.approx(second[term], rel=1e-3)  # a mix-up of the layers would show
    assert value({'conv1_2': 0.0, 'conv4_4': 1.0}) == pytest.approx(second, rel=1e-6)


def test_only_the_used_layers_weights_matter(tv_vgg, tmp_path):
    """conv2_2 is features[7]: changing conv3_1's weights (features[10]) in the file changes nothing, changing
    conv2_1's (features[5]) changes the loss."""
    x, gt = _images(2, 3, 16, 16)

    def value(layer, changed=None):
        state = {key: value for key, value in _features_state(tv_vgg).items() if int(key.split('.')[1]) <= 10}
        if changed is not None:
            state[f'features.{changed}.weight'] += 0.1
        path = tmp_path / f'vgg19-{changed}.pth'
        torch.save(state, path)
        return PerceptualLoss({layer: 1.0}, weights_file=path)(x, gt)[0].item()

    assert value('conv2_2', changed=10) == value('conv2_2')
    assert value('conv2_2', changed=5) != value('conv2_2')
    assert value('conv3_1', changed=10) != value('conv3_1')


# ---------------------------------------------------------------------------------------------------------------
# GAN losses

def _expected_gan(gan_type, x, real, is_disc, real_label, fake_label):
    """Each type's formula, written out."""
    label = real_label if real else fake_label
    if gan_type == 'vanilla':  # binary cross-entropy of sigmoid(x) against the label
        p = torch.sigmoid(x)
        return -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).mean()
    if gan_type == 'lsgan':
        return ((x - label) ** 2).mean()
    if gan_type == 'wgan':
        return -x.mean() if real else x.mean()
    if gan_type == 'wgan_softplus':
        return torch.log1p(torch.exp(-x)).mean() if real else torch.log1p(torch.exp(x)).mean()
    if not is_disc:  # hinge, generator
        return -x.mean()
    return torch.clamp(1 - x, min=0).mean() if real else torch.clamp(1 + x, min=0).mean()


@pytest.mark.parametrize('gan_type', GAN_TYPES)
@pytest.mark.parametrize('real', [True, False])
@pytest.mark.parametrize('is_disc', [True, False])
def test_gan_loss_formulas(gan_type, real, is_disc):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    loss = GANLoss(gan_type, real_label_val=0.9, fake_label_val=0.1, loss_weight=0.25)
    expected = _expected_gan(gan_type, x, real, is_disc, 0.9, 0.1) * (1 if is_disc else 0.25)
    torch.testing.assert_close(loss(x, real, is_disc=is_disc), expected)


@pytest.mark.parametrize('gan_type', GAN_TYPES)
def test_loss_weight_applies_to_the_generator_only(gan_type):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    weighted, unweighted = GANLoss(gan_type, loss_weight=0.1), GANLoss(gan_type)
    for real in (True, False):
        assert weighted(x, real, is_disc=True).item() == unweighted(x, real, is_disc=True).item()
        assert weighted(x, real).item() == pytest.approx(0.1 * unweighted(x, real).item(), rel=1e-6)


def test_special_cases():
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    hinge = GANLoss('hinge')
    assert hinge(x, True).item() == hinge(x, False).item() == -x.mean().item()
    # with the default labels, vanilla on a logit of 0 is log 2 for either target
    assert GANLoss('vanilla')(torch.zeros(4), False).item() == pytest.approx(math.log(2))
    # labels do not matter to wgan
    assert GANLoss('wgan', 0.5, 0.5)(x, True).item() == GANLoss('wgan')(x, True).item()
    with pytest.raises(ValueError) as err:
        GANLoss('relativistic')
    assert one_line(err) == "gan_type must be one of vanilla, lsgan, wgan, wgan_softplus, hinge, got 'relativistic'"


def test_gan_loss_gradient():
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    GANLoss('vanilla', loss_weight=2.0)(x, True).backward()
    # d/dx of 2 · mean(softplus(-x)) at 0 is 2 · (-1/2) / 4 per element
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.25))


# ---------------------------------------------------------------------------------------------------------------
# BasicSR's values (only where basicsr can be imported)

def test_basicsr_gan_parity():
    gan_loss = pytest.importorskip('basicsr.losses.gan_loss')
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for gan_type in GAN_TYPES:
        reference, loss = gan_loss.GANLoss(gan_type, 0.9, 0.1, 0.5), GANLoss(gan_type, 0.9, 0.1, 0.5)
        for real in (True, False):
            for is_disc in (True, False):
                torch.testing.assert_close(loss(x, real, is_disc), reference(x, real, is_disc), rtol=0, atol=0)


def test_basicsr_perceptual_parity(vgg_file, monkeypatch):
    basic_loss = pytest.importorskip('basicsr.losses.basic_loss')
    import basicsr.archs.vgg_arch as vgg_arch

    def no_download(*args, **kwargs):
        raise AssertionError('BasicSR tried to download VGG19 weights')

    monkeypatch.setattr(vgg_arch, 'VGG_PRETRAIN_PATH', str(vgg_file))  # BasicSR reads its VGG19 weights from here
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_download)
    x, gt = _images(2, 3, 32, 32)
    for kwargs in (dict(style_weight=0.5), dict(criterion='fro', style_weight=1.0, range_norm=True)):
        reference = basic_loss.PerceptualLoss(REAL_ESRGAN_LAYERS, vgg_type='vgg19', **kwargs)
        loss = PerceptualLoss(REAL_ESRGAN_LAYERS, weights_file=vgg_file, **kwargs)
        with torch.no_grad():
            for value, expected in zip(loss(x, gt), reference(x, gt)):
                torch.testing.assert_close(value, expected, rtol=0, atol=0)
