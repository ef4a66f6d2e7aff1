"""Every family in every execution mode, with densezoo's fast paths checked against the plain PyTorch reference.

One small member of each family (and of its connections, and each SwinIR upsampler) runs in train mode, eval mode
with autograd, under no_grad, under inference_mode, under CPU bfloat16 autocast, compiled with inductor and
exported with torch.export. The reference is the same model with the fast paths switched off
(``densezoo.fast_path(False)``: plain ``F.linear``, ``F.gelu``, ``F.scaled_dot_product_attention`` and autograd),
run eagerly in float32; outputs and the gradients of the input and of every parameter must agree with it.
"""
import copy

import pytest
import timm
import torch

import densezoo
from tests.helpers import one_line, perturb_connections, perturb_norms, scale_preserving_weights

_SWIN = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 4), drop_path_rate=0.)
_PVT = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(2, 2, 2, 2), drop_path_rate=0.)
_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
_RDNET = dict(num_init_features=16, growth_rates=(8, 8, 16, 16), num_blocks_list=(2, 2, 2, 2),
              is_downsample_block=(None, True, True, True), block_type=('Block', 'Block', 'BlockESE', 'BlockESE'),
              ls_init_value=1.0)
_LOOKUP = dict(img_size=64, patch_size=8, embed_dim=32, depth=3, num_heads=2, compressed_grid=3)
_WINDOW = dict(img_size=16, window_size=4, depths=(2, 2), num_heads=(2, 2), embed_dim=16, mlp_ratio=2,
               drop_path_rate=0.)
_DRCT = dict(_WINDOW, embed_dim=24, num_heads=(6, 6), gc=8)
_HAT = dict(_WINDOW, embed_dim=24, compress_ratio=3, squeeze_factor=2)

#: name -> (reduced constructor arguments, input shape)
CASES = {
    'swin_tiny_patch4_window7_224_dwa': (_SWIN, (2, 3, 64, 64)),
    'swin_tiny_patch4_window7_224_mudd': (_SWIN, (2, 3, 64, 64)),
    'swinv2_tiny_window8_256_dwa': (dict(_SWIN, window_size=4), (2, 3, 64, 64)),
    'swinv2_tiny_window8_256_mudd': (dict(_SWIN, window_size=4), (2, 3, 64, 64)),
    'pvt_tiny_dwa': (dict(_PVT, img_size=64), (2, 3, 64, 64)),
    'pvt_tiny_mudd': (dict(_PVT, img_size=64), (2, 3, 64, 64)),
    'pvt_v2_b0_dwa': (_PVT, (2, 3, 64, 64)),
    'pvt_v2_b0_mudd': (_PVT, (2, 3, 64, 64)),
    'vit_tiny_patch16_224_dwa': (_VIT, (2, 3, 32, 32)),
    'vit_tiny_patch16_224_mudd': (_VIT, (2, 3, 32, 32)),
    'rdnet_tiny_dwa': (_RDNET, (2, 3, 64, 64)),
    'rdnet_tiny_rir': (_RDNET, (2, 3, 64, 64)),
    'lookupvit_tiny_patch16_224_dwa': (_LOOKUP, (2, 3, 64, 64)),
    'lookupvit_tiny_patch16_224_mudd': (_LOOKUP, (2, 3, 64, 64)),
    'swinir_classical_x2': (_WINDOW, (2, 3, 12, 16)),  # upsampler 'pixelshuffle'
    'swinir_light_x2': (_WINDOW, (2, 3, 12, 16)),  # 'pixelshuffledirect'
    'swinir_real_x4': (_WINDOW, (2, 3, 12, 16)),  # 'nearest+conv'
    'swinir_denoise_color': (_WINDOW, (2, 3, 12, 16)),  # '' (same size)
    'swinir_classical_x2_dwa': (_WINDOW, (2, 3, 12, 16)),
    'swinir_light_x2_mudd': (_WINDOW, (2, 3, 12, 16)),
    'drct_x2': (_DRCT, (2, 3, 12, 16)),
    'drct_x2_mudd': (_DRCT, (2, 3, 12, 16)),
    'hat_x2': (_HAT, (2, 3, 12, 16)),
    'hat_x2_dwa': (_HAT, (2, 3, 12, 16)),
    'rcan_x2': (dict(num_feat=16, num_group=2, num_block=2, squeeze_factor=4), (2, 3, 12, 16)),
    'rdn_x2': (dict(num_features=16, growth_rate=8, num_blocks=2, num_layers=2), (2, 3, 12, 16)),
}

#: one member of each family for torch.compile (inductor takes 5 to 30 s of C++ compilation per model on two CPU
#: cores), two stages where the family allows it: name -> (constructor arguments, input shape)
_TWO_STAGES = dict(depths=(2, 2), num_heads=(1, 2), drop_path_rate=0.)
COMPILED = {
    'swin_tiny_patch4_window7_224_dwa': (dict(_SWIN, **_TWO_STAGES), (2, 3, 64, 64)),
    'swinv2_tiny_window8_256_mudd': (dict(_SWIN, window_size=4, **_TWO_STAGES), (2, 3, 64, 64)),
    'pvt_tiny_mudd': (dict(_PVT, img_size=64, embed_dims=(16, 32), sr_ratios=(8, 1), mlp_ratios=(4, 4),
                           **_TWO_STAGES), (2, 3, 64, 64)),
    'pvt_v2_b0_dwa': (dict(_PVT, embed_dims=(16, 32), sr_ratios=(8, 4), mlp_ratios=(4, 4), **_TWO_STAGES),
                      (2, 3, 64, 64)),
    'vit_tiny_patch16_224_mudd': CASES['vit_tiny_patch16_224_mudd'],
    'rdnet_tiny_rir': (dict(_RDNET, num_blocks_list=(1, 1, 1, 1)), (2, 3, 64, 64)),
    'lookupvit_tiny_patch16_224_dwa': CASES['lookupvit_tiny_patch16_224_dwa'],
    'swinir_light_x2_mudd': CASES['swinir_light_x2_mudd'],
    'swinir_real_x4': CASES['swinir_real_x4'],
    'drct_x2': CASES['drct_x2'],
    'hat_x2_dwa': CASES['hat_x2_dwa'],
    'rcan_x2': CASES['rcan_x2'],
    'rdn_x2': CASES['rdn_x2'],
}

MODES = ['train', 'eval_grad', 'no_grad', 'inference_mode', 'autocast_bf16', 'export']

#: float32: largest difference allowed, relative to the largest reference value of the same tensor;
#: bfloat16 (8 significant bits): norm of the output's difference from float32, relative to its norm
TOLERANCE = {'float32': 2e-4, 'bfloat16': 5e-2}


def build(name, cases=CASES):
    args, shape = cases[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **args)
    if densezoo.list_models(name, task='sr'):
        scale_preserving_weights(model)
    else:
        perturb_norms(model)
    perturb_connections(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return model, (x.sigmoid() if densezoo.list_models(name, task='sr') else x)


def assert_near(actual, expected, tolerance, what):
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f'{what}: not finite'
    error = (actual.float() - expected.float()).abs().max()
    scale = expected.float().abs().max().clamp_min(1e-6)
    assert error <= tolerance * scale, f'{what}: difference {error:.3g} against a largest value of {scale:.3g}'


def run(model, x, grad):
    """Output, and with ``grad`` the gradients of the input and of every parameter, of one forward/backward."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(grad)
    out = model(x)
    if not grad:
        return out.detach(), {}
    # a fixed random projection of the output, so that every output element carries its own weight
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.dtype)
    (out * probe).sum().backward()
    grads = {'input': x.grad, **{n: p.grad for n, p in model.named_parameters() if p.requires_grad}}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f'no gradient for {missing}'
    return out.detach(), grads


def assert_same(result, reference, tolerance):
    out, grads = result
    expected_out, expected_grads = reference
    assert_near(out, expected_out, tolerance, 'output')
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert_near(grad, expected_grads[name], tolerance, f'gradient of {name}')


def assert_bfloat16_as_close(result, expected, float32):
    """Under bfloat16 autocast the fast path is about as far from float32 as the reference path is, for the
    output, the input gradient and all parameter gradients together. The output is within the bfloat16 tolerance of
    float32's; the gradients point roughly as float32's do (cosine above 0.6: their bfloat16 error grows through
    the backward pass, most through MUDD's dynamic weights, on both paths alike)."""
    def parts(r):
        grads = r[1]
        return {'output': r[0].flatten(), 'input gradient': grads['input'].flatten(),
                'parameter gradients': torch.cat([g.flatten() for k, g in grads.items() if k != 'input'])}

    fast, ref, exact = parts(result), parts(expected), parts(float32)
    for what in fast:
        assert torch.isfinite(fast[what]).all(), f'{what}: not finite'
        error, reference_error = (float((p[what].float() - exact[what].float()).norm() / exact[what].float().norm())
                                  for p in (fast, ref))
        assert error <= 2 * reference_error + TOLERANCE['bfloat16'] / 2, (
            f'{what}: {error:.3g} from float32 against {reference_error:.3g} on the reference path')
        if what == 'output':
            assert error <= TOLERANCE['bfloat16'], f'output: {error:.3g} from float32'
        else:
            assert torch.cosine_similarity(fast[what].float(), exact[what].float(), dim=0) > 0.6, what


def reference(model, x, grad, train=False):
    with densezoo.fast_path(False):
        return run(model.train(train), x, grad)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('name', CASES)
def test_mode_matches_the_reference_path(name, mode):
    model, x = build(name)
    fp32 = TOLERANCE['float32']
    if mode in ('train', 'eval_grad'):
        train = mode == 'train'
        expected = reference(model, x, grad=True, train=train)
        assert_same(run(model.train(train), x, grad=True), expected, fp32)
    elif mode == 'no_grad':
        with torch.no_grad():
            expected = reference(model, x, grad=False)
            assert_same(run(model.eval(), x, grad=False), expected, fp32)
    elif mode == 'inference_mode':
        with torch.inference_mode():
            expected = reference(model, x, grad=False)
            assert_same(run(model.eval(), x, grad=False), expected, fp32)
    elif mode == 'autocast_bf16':
        float32 = reference(model, x, grad=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            expected = reference(model, x, grad=True)
            result = run(model.eval(), x, grad=True)
        assert result[0].dtype == expected[0].dtype
        assert_bfloat16_as_close(result, expected, float32)
    else:  # export: the exported program, run at once, gives the eager output
        program = torch.export.export(copy.deepcopy(model).eval(), (x,))
        with torch.no_grad():
            out = program.module()(x)
            expected = reference(model, x, grad=False)
        assert_same((out, {}), expected, fp32)


@pytest.mark.parametrize('name', COMPILED)
def test_compiled_training_step_matches_the_reference_path(name):
    """torch.compile with inductor: output, input and parameter gradients of a training step."""
    model, x = build(name, COMPILED)
    expected = reference(model, x, grad=True, train=True)
    torch.compiler.reset()
    compiled = copy.deepcopy(model).train()
    compiled.compile(backend='inductor')  # in place: the parameter names stay
    assert_same(run(compiled, x, grad=True), expected, TOLERANCE['float32'])


def _count_calls(monkeypatch, calls):
    """Record every call of a fast path: oneDNN's linear and its weight packing, attention by regions and the two
    hand-written backward functions."""
    from densezoo.layers import window_attention
    window_attention._DERIVED.clear()  # pack again, so that packing is seen
    linear = window_attention.onednn_linear()
    if linear is not None:
        monkeypatch.setattr(window_attention, 'onednn_linear',
                            lambda: lambda *args: calls.append('onednn_linear') or linear(*args))
    pack = window_attention.onednn_weight_packing()
    if pack is not None:
        monkeypatch.setattr(window_attention, 'onednn_weight_packing',
                            lambda: lambda *args: calls.append('onednn_weight_packing') or pack(*args))
    regions = window_attention.WindowAttention.forward_regions
    monkeypatch.setattr(window_attention.WindowAttention, 'forward_regions',
                        lambda *args: calls.append('forward_regions') or regions(*args))
    for function in (window_attention._FusedBiasedAttention, window_attention._GeluLinear):
        def forward(ctx, *args, _forward=function.forward, _name=function.__name__):
            calls.append(_name)
            return _forward(ctx, *args)
        monkeypatch.setattr(function, 'forward', staticmethod(forward))
    return {name for name, op in (('onednn_linear', linear), ('onednn_weight_packing', pack)) if op is not None}


@pytest.mark.parametrize('name', ['swinir_light_x2', 'hat_x2'])
def test_the_switch_turns_every_fast_path_off(name, monkeypatch):
    calls = []
    available = _count_calls(monkeypatch, calls)
    model, x = build(name)
    with densezoo.fast_path(False):
        assert not densezoo.use_fast_path()
        with torch.no_grad():
            model.eval()(x)
        model.train()(x).sum().backward()
    assert calls == []
    assert densezoo.use_fast_path()
    with torch.no_grad():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert set(calls) == {'_FusedBiasedAttention', '_GeluLinear', 'forward_regions'} | available


def test_compilers_take_the_reference_path(monkeypatch):
    calls = []
    _count_calls(monkeypatch, calls)
    model, x = build('swinir_light_x2')
    torch.export.export(model.eval(), (x,))
    assert calls == []


def test_the_environment_variable_and_its_errors(monkeypatch):
    import os
    import subprocess
    import sys
    from densezoo.layers import fast_path
    for value, expected in (('0', False), ('off', False), ('False', False), ('1', True), ('on', True), ('', True)):
        monkeypatch.setenv('DENSEZOO_FAST_PATH', value)
        assert fast_path._from_environment() is expected, value
    monkeypatch.setenv('DENSEZOO_FAST_PATH', 'fast')
    with pytest.raises(ValueError) as error:
        fast_path._from_environment()
    assert one_line(error) == ("DENSEZOO_FAST_PATH='fast' is not understood; set it to 1 (fast paths, the default) "
                               "or 0 (plain PyTorch only)")
    with pytest.raises(TypeError, match='^set_fast_path takes True or False'):
        densezoo.set_fast_path('no')
    # read when densezoo is imported
    env = {**os.environ, 'DENSEZOO_FAST_PATH': '0'}
    out = subprocess.run([sys.executable, '-c', 'import densezoo; print(densezoo.use_fast_path())'], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'
