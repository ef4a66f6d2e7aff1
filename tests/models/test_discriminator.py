"""UNetDiscriminatorSN: BasicSR's state dict layout and parameter count, per-pixel output shapes, gradients, spectral
normalisation at work, one-line input errors, and outputs equal to BasicSR's (when basicsr is installed)."""
import pytest
import torch

from densezoo.models.discriminator import UNetDiscriminatorSN
from tests.helpers import one_line

SN_CONVS = [f'conv{i}' for i in range(1, 9)]  # conv0 and conv9 are not spectrally normalised

# BasicSR's UNetDiscriminatorSN(num_in_ch=3, num_feat=64, skip_connection=True), the configuration of Real-ESRGAN's
# RealESRGAN_x4plus_netD.pth; keys in BasicSR's order (the order of its state_dict)
EXPECTED_KEYS = (['conv0.weight', 'conv0.bias']
                 + [f'{name}.{entry}' for name in SN_CONVS for entry in ('weight_orig', 'weight_u', 'weight_v')]
                 + ['conv9.weight', 'conv9.bias'])
# the layer shapes of BasicSR's class (out, in, kernel): conv0 64·3·3·3 + 64 = 1,792; conv1 128·64·4·4 = 131,072;
# conv2 256·128·16 = 524,288; conv3 512·256·16 = 2,097,152; conv4 256·512·9 = 1,179,648;
# conv5 128·256·9 = 294,912; conv6 64·128·9 = 73,728; conv7, conv8 64·64·9 = 36,864 each; conv9 1·64·9 + 1 = 577
# (no biases in the SN convs).
# The sum, 4,376,897, is also what BasicSR 1.4.2's UNetDiscriminatorSN(3).parameters() counts (test_basicsr_parity).
PARAMS = 4_376_897


@pytest.fixture(scope='module')
def disc():
    torch.manual_seed(0)
    return UNetDiscriminatorSN()


def test_state_dict_keys_and_shapes(disc):
    state = disc.state_dict()
    assert list(state) == EXPECTED_KEYS
    assert state['conv0.weight'].shape == (64, 3, 3, 3)
    assert state['conv3.weight_orig'].shape == (512, 256, 4, 4)
    assert state['conv3.weight_u'].shape == (512,) and state['conv3.weight_v'].shape == (256 * 4 * 4,)
    assert state['conv9.weight'].shape == (1, 64, 3, 3)
    # the normalised weight is recomputed from weight_orig, not stored
    assert 'conv1.weight' not in state and isinstance(disc.conv1.weight, torch.Tensor)


def test_parameter_count(disc):
    assert sum(p.numel() for p in disc.parameters()) == PARAMS


def test_strict_load_of_its_own_state():
    source, target = UNetDiscriminatorSN(num_feat=8), UNetDiscriminatorSN(num_feat=8)
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize('size', [(8, 8), (16, 24), (32, 32), (40, 16)])
def test_output_is_one_logit_per_pixel(disc, size):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = disc.eval()(x)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('skip_connection', [True, False])
def test_gradients_reach_input_and_every_parameter(skip_connection):
    torch.manual_seed(0)
    model = UNetDiscriminatorSN(num_in_ch=3, num_feat=8, skip_connection=skip_connection).train()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    model(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_skip_connections_change_the_output():
    torch.manual_seed(0)
    with_skip = UNetDiscriminatorSN(num_feat=8, skip_connection=True).eval()
    without = UNetDiscriminatorSN(num_feat=8, skip_connection=False).eval()
    without.load_state_dict(with_skip.state_dict())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(with_skip(x), without(x))


def _largest_singular_value(weight: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(weight.detach().flatten(1), ord=2).item()


def test_spectral_norm_bounds_each_conv():
    """With weights scaled far above norm 1, a few training-mode forwards (one power iteration each) bring the
    largest singular value of every normalised conv weight to 1 (from above: the estimate never exceeds it)."""
    torch.manual_seed(0)
    model = UNetDiscriminatorSN(num_feat=8).train()
    with torch.no_grad():
        for name in SN_CONVS:
            getattr(model, name).weight_orig.mul_(10)
    raw = {name: _largest_singular_value(getattr(model, name).weight_orig) for name in SN_CONVS}
    assert min(raw.values()) > 5  # without normalisation the convs would have these norms
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        for _ in range(30):
            model(x)
    for name in SN_CONVS:
        sigma = _largest_singular_value(getattr(model, name).weight)
        assert 1 - 1e-4 < sigma < 1.05, (name, sigma)


def test_spectral_norm_makes_the_output_independent_of_weight_scale():
    torch.manual_seed(0)
    model = UNetDiscriminatorSN(num_feat=8)
    with torch.no_grad():
        model.train()(torch.randn(1, 3, 8, 8))  # one power iteration: u and v no longer at their initial values
        model.eval()
        x = torch.randn(2, 3, 16, 16)
        before = model(x)
        for name in SN_CONVS:
            getattr(model, name).weight_orig.mul_(7)
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
        model.conv9.weight.mul_(7)  # not normalised
        torch.testing.assert_close(model(x) - model.conv9.bias, 7 * (before - model.conv9.bias), rtol=1e-5,
                                   atol=1e-5)


def test_eval_mode_keeps_the_power_iteration_state():
    torch.manual_seed(0)
    model = UNetDiscriminatorSN(num_feat=8)
    x = torch.randn(1, 3, 8, 8)
    u = model.conv1.weight_u.clone()
    with torch.no_grad():
        model.eval()(x)
        assert torch.equal(model.conv1.weight_u, u)
        model.train()(x)
    assert not torch.equal(model.conv1.weight_u, u)


@pytest.mark.parametrize('size', [(12, 16), (16, 20), (7, 8)])
def test_sizes_not_multiples_of_8_are_refused(size):
    model = UNetDiscriminatorSN(num_feat=8)
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, *size))
    assert one_line(err) == (f'UNetDiscriminatorSN takes heights and widths that are multiples of 8 (it downsamples '
                             f'three times by 2), got {size[0]}x{size[1]}; crop or pad the images')


def test_channel_mismatch_is_refused():
    model = UNetDiscriminatorSN(num_in_ch=3, num_feat=8)
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 4, 16, 16))
    assert one_line(err) == 'UNetDiscriminatorSN was built for 3 input channels (num_in_ch) but the input has 4'
    with pytest.raises(ValueError) as err:
        model(torch.randn(3, 16, 16))
    assert one_line(err) == ('UNetDiscriminatorSN takes a (batch, channels, height, width) tensor, got shape '
                             '(3, 16, 16)')
    assert UNetDiscriminatorSN(num_in_ch=1, num_feat=8)(torch.randn(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def _deterministic_weights(model):
    """Weights (and power-iteration vectors) from a formula, independent of random number generators."""
    with torch.no_grad():
        for i, (name, t) in enumerate(model.state_dict().items()):
            values = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.731 + i).reshape(t.shape)
            if name.endswith(('weight_u', 'weight_v')):
                values = values / values.norm()
            elif t.dim() > 1:
                values = values / t[0].numel() ** 0.5
            else:
                values = values * 0.1
            t.copy_(values)
    return model


#: BasicSR 1.4.2's UNetDiscriminatorSN(3, num_feat=4, skip_connection) with ``_deterministic_weights``, after three
#: training-mode forwards of the input below: (output sum, mean |output|, output[0, 0, 0, 0], output[1, 0, 7, 13],
#: output[1, 0, 15, 23]) and conv3.weight_u[:3]; the eval-mode output after them is the same
BASICSR_VALUES = {
    True: ([81.676392, 0.20917375, 0.15053482, 0.067198537, 0.31159055], [0.20787126, -0.094807014, -0.24762751]),
    False: ([73.450218, 0.095638305, 0.095639601, 0.095640905, 0.095637478],
            [0.20787126, -0.094807014, -0.24762751]),
}


@pytest.mark.parametrize('skip_connection', [True, False])
def test_recorded_basicsr_values(skip_connection):
    model = _deterministic_weights(UNetDiscriminatorSN(3, num_feat=4, skip_connection=skip_connection))
    x = torch.sin(torch.arange(2 * 3 * 16 * 24, dtype=torch.float32) * 0.1).reshape(2, 3, 16, 24)
    outputs, u = BASICSR_VALUES[skip_connection]
    with torch.no_grad():
        model.train()
        for _ in range(3):
            out = model(x)
        for mode_out in (out, model.eval()(x)):
            values = [mode_out.sum(), mode_out.abs().mean(), mode_out[0, 0, 0, 0], mode_out[1, 0, 7, 13],
                      mode_out[1, 0, 15, 23]]
            torch.testing.assert_close(torch.stack(values), torch.tensor(outputs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.conv3.weight_u[:3], torch.tensor(u), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('skip_connection', [True, False])
def test_basicsr_parity(skip_connection):
    """Same keys, shapes and parameter count as BasicSR's class; with its weights, the same outputs in eval and
    training mode and the same power-iteration state (weight_u, weight_v) after training-mode forwards."""
    arch = pytest.importorskip('basicsr.archs.discriminator_arch')
    torch.manual_seed(0)
    reference = arch.UNetDiscriminatorSN(3, num_feat=64, skip_connection=skip_connection)
    model = UNetDiscriminatorSN(3, num_feat=64, skip_connection=skip_connection)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert sum(p.numel() for p in reference.parameters()) == PARAMS
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        reference.train(), model.train()
        for _ in range(2):
            torch.testing.assert_close(model(x.clone()), reference(x.clone()), rtol=0, atol=0)
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
        reference.eval(), model.eval()
        torch.testing.assert_close(model(x.clone()), reference(x.clone()), rtol=0, atol=0)
