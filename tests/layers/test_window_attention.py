"""Window attention of the SR transformers: values and gradients against a direct reference, mask caching."""
import pytest
import torch

import densezoo
from densezoo.layers.window_attention import (MASK_VALUE, SwinIRBlock, WindowAttention, fast_linear,
                                               from_window_order, shifted_window_mask, to_window_order,
                                               window_attention, window_merge, window_layout, window_partition)


def _reference(q, k, v, position_bias, mask, scale):
    """softmax(q kᵀ·scale + bias + mask) v, written out (the official computation)."""
    scores = q @ k.transpose(-2, -1) * scale + position_bias
    if mask is not None:
        scores = scores + mask[None, :, None]
    return scores.softmax(-1) @ v


@pytest.mark.parametrize('shifted', [False, True])
@pytest.mark.parametrize('grad_mode', ['train', 'infer'])
def test_values_and_gradients_match_the_reference(shifted, grad_mode):
    generator = torch.Generator().manual_seed(0)
    batch, windows, heads, tokens, dim = 2, 4, 3, 16, 5
    q, k, v = (torch.randn(batch, windows, heads, tokens, dim, generator=generator, requires_grad=True)
               for _ in range(3))
    bias = (torch.randn(heads, tokens, tokens, generator=generator) * 0.5).requires_grad_()
    mask = shifted_window_mask(8, 8, 4, 2) if shifted else None
    expected = _reference(q, k, v, bias, mask, 0.3)
    if grad_mode == 'infer':
        with torch.no_grad():
            torch.testing.assert_close(window_attention(q, k, v, bias, mask, 0.3), expected, rtol=0, atol=1e-6)
        return
    out = window_attention(q, k, v, bias, mask, 0.3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    upstream = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad(out, (q, k, v, bias), upstream)
    expected_grads = torch.autograd.grad(expected, (q, k, v, bias), upstream)
    for got, want, name in zip(grads, expected_grads, 'qkvb'):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6, msg=name)


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('shifted', [False, True])
def test_views_of_a_fused_projection_give_the_reference(batch, shifted):
    """q, k, v as strided views of one (B, nW, N, 3, heads, d) projection, as WindowAttention passes them."""
    generator = torch.Generator().manual_seed(2)
    windows, heads, tokens, dim = 4, 3, 16, 5
    qkv = torch.randn(batch, windows, tokens, 3, heads, dim, generator=generator)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
    assert not q.is_contiguous()
    bias = torch.randn(heads, tokens, tokens, generator=generator)
    mask = shifted_window_mask(8, 8, 4, 2) if shifted else None
    with torch.no_grad():
        out = window_attention(q, k, v, bias, mask, 0.3)
    assert out.shape == (batch, windows, heads, tokens, dim)
    torch.testing.assert_close(out, _reference(q, k, v, bias, mask, 0.3), rtol=0, atol=1e-6)


@pytest.mark.parametrize('shift', [0, 2])
def test_window_layout_is_roll_then_partition_with_masked_windows_last(shift):
    x = torch.randn(2, 8, 12, 3)
    layout = window_layout(8, 12, 4, shift)
    rolled_windows = window_partition(torch.roll(x, shifts=(-shift, -shift), dims=(1, 2)), 4)  # (2, 6, 16, 3)
    windows = x.flatten(1, 2)[:, layout.order].view(2, 6, 16, 3)
    assert torch.equal(windows.flatten(1, 2)[:, layout.inverse], x.flatten(1, 2))
    if not shift:
        assert layout.mask is None and torch.equal(windows, rolled_windows)
    else:
        # the 3 x 2 windows of a grid shifted by 2: the last row and column (4 windows) carry masks, placed last
        full = shifted_window_mask(8, 12, 4, 2)
        masked = full.flatten(1).ne(0).any(1)
        assert masked.tolist() == [False, False, True, True, True, True]
        assert torch.equal(windows, torch.cat((rolled_windows[:, ~masked], rolled_windows[:, masked]), 1))
        assert torch.equal(layout.mask, torch.cat((full[~masked], full[masked]))) and layout.unmasked == 2
    assert window_layout(8, 12, 4, shift) is layout  # cached


@pytest.mark.parametrize('size', [(8, 12, 4, 2), (4, 12, 4, 1), (16, 8, 8, 4), (24, 24, 8, 4), (8, 8, 8, 4)])
def test_masked_windows_are_exactly_those_the_mask_marks(size):
    """The layout picks the masked windows by index arithmetic; the mask agrees at every size."""
    height, width, window, shift = size
    layout = window_layout(height, width, window, shift)
    carries_mask = layout.mask.flatten(1).ne(0).any(1)
    assert not carries_mask[:layout.unmasked].any() and carries_mask[layout.unmasked:].all()
    full = shifted_window_mask(height, width, window, shift)
    assert layout.unmasked == int((~full.flatten(1).ne(0).any(1)).sum())


def test_layouts_first_built_under_inference_mode_serve_training():
    with torch.inference_mode():
        layout = window_layout(12, 20, 4, 2)
        mask = shifted_window_mask(12, 20, 4, 2)
    assert not layout.order.is_inference() and not layout.mask.is_inference() and not mask.is_inference()


@pytest.mark.parametrize('unmasked', [0, 2, 6])
@pytest.mark.parametrize('batch', [1, 2])
def test_leading_unmasked_windows_share_the_bias(batch, unmasked):
    """Windows declared unmasked (their mask is zero) attend exactly as with the mask added, in both paths."""
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(batch, 6, 2, 16, 4, generator=generator) for _ in range(3))
    bias = torch.randn(2, 16, 16, generator=generator)
    mask = shifted_window_mask(8, 12, 4, 2)[[0, 1, 2, 3, 4, 5]].clone()
    mask[:unmasked] = 0
    expected = _reference(q, k, v, bias, mask, 0.4)
    with torch.no_grad():
        out = window_attention(q, k, v, bias, mask, 0.4, unmasked=unmasked)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    q.requires_grad_()
    bias.requires_grad_()
    out = window_attention(q, k, v, bias, mask, 0.4, unmasked=unmasked)  # the training path
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_training_keeps_no_attention_matrices():
    """The saved tensors for backward are q, k, v, output and log-sum-exp (tokens × dims), not tokens²."""
    batch, windows, heads, tokens, dim = 1, 4, 2, 64, 8
    q, k, v = (torch.randn(batch, windows, heads, tokens, dim, requires_grad=True) for _ in range(3))
    bias = torch.zeros(heads, tokens, tokens, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        window_attention(q, k, v, bias, shifted_window_mask(16, 16, 8, 4), 0.5)
    per_window_matrices = [t for t in saved if t.numel() >= batch * windows * heads * tokens * tokens]
    assert not per_window_matrices, [tuple(t.shape) for t in per_window_matrices]


def test_masks_are_official_and_cached():
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16) and set(mask.unique().tolist()) == {0.0, MASK_VALUE}
    assert shifted_window_mask(8, 8, 4, 2) is mask  # built once per size, window, shift and device
    # the first window of an 8x8 grid shifted by 2 lies in one region: no masking
    assert not mask[0].any()
    # the last window mixes four regions: token 0 (top-left) and token 15 (bottom-right) are apart
    assert mask[3, 0, 15] == MASK_VALUE and mask[3, 0, 1] == 0


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2, 6, 16, 3)
    assert torch.equal(windows[0, 1], x[0, :4, 4:8].reshape(16, 3))  # row-major window order
    assert torch.equal(window_merge(windows, 4, 8, 12), x)


def test_cross_attention_to_larger_windows():
    """HAT's overlapping cross-attention: N queries per window attend to M > N keys; gradients as the reference."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 2, 16, 4, generator=generator, requires_grad=True)
    k, v = (torch.randn(2, 3, 2, 36, 4, generator=generator, requires_grad=True) for _ in range(2))
    bias = torch.randn(2, 16, 36, generator=generator).requires_grad_()
    out = window_attention(q, k, v, bias, None, 0.5)
    expected = _reference(q, k, v, bias, None, 0.5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    upstream = torch.randn(out.shape, generator=generator)
    for got, want in zip(torch.autograd.grad(out, (q, k, v, bias), upstream),
                         torch.autograd.grad(expected, (q, k, v, bias), upstream)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize('amp', [False, True])
def test_lean_mlp_equals_timm_mlp_and_keeps_less(amp):
    from timm.layers import Mlp

    from densezoo.layers.window_attention import LeanMlp
    torch.manual_seed(0)
    lean, plain = LeanMlp(8, 16), Mlp(8, 16)
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 5, 8, requires_grad=True)
    counts = []
    for mlp in (lean, plain):
        saved = []
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = mlp(x)
        counts.append(len(saved))
        out.float().square().sum().backward()
    if not amp:
        torch.testing.assert_close(lean(x), plain(x), rtol=0, atol=0)
    tol = dict(rtol=2e-2, atol=2e-2) if amp else dict(rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(lean.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=name)
    assert counts[0] < counts[1]


@pytest.mark.parametrize('activation', ['none', 'gelu'])
def test_fast_linear_equals_linear_in_inference_and_training(activation):
    """The fused inference kernel gives F.linear (+ exact GELU) to float rounding, on strided inputs and weight
    slices too; with gradients recorded it is F.linear itself (differentiable)."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, 40, generator=generator)[..., :20]  # strided, as DRCT's dense features
    weight = torch.randn(90, 20, generator=generator)[30:60]  # a slice of a fused weight
    bias = torch.randn(30, generator=generator)
    expected = torch.nn.functional.linear(x, weight, bias)
    if activation == 'gelu':
        expected = torch.nn.functional.gelu(expected)
    with torch.no_grad():
        torch.testing.assert_close(fast_linear(x, weight, bias, activation), expected, rtol=1e-5, atol=1e-5)
    weight.requires_grad_()
    out = fast_linear(x, weight, bias, activation)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize('size', [(8, 12, 4, 2), (4, 12, 4, 1), (16, 8, 8, 4), (24, 16, 8, 3), (8, 8, 8, 4)])
def test_region_layout_cuts_masked_windows_at_their_region_borders(size):
    """Every token once; the unmasked windows first, as in the masked layout; then rectangles whose tokens share a
    window and a region (mask 0 among them), and which are cut exactly where the mask separates tokens."""
    height, width, window, shift = size
    plain = window_layout(height, width, window, shift)
    layout = window_layout(height, width, window, shift, regions=True)
    assert layout.mask is None and layout.unmasked == plain.unmasked
    assert torch.equal(layout.order.sort().values, torch.arange(height * width))
    assert torch.equal(layout.order[layout.inverse], torch.arange(height * width))
    head = plain.unmasked * window * window
    assert torch.equal(layout.order[:head], plain.order[:head])
    # the region and the window of every token, in the rolled grid
    rolled = torch.arange(height * width).view(height, width).roll((-shift, -shift), (0, 1))
    mask = shifted_window_mask(height, width, window, shift)  # (nW, N, N), windows row-major
    window_of = torch.empty(height * width, dtype=torch.long)
    slot_of = torch.empty(height * width, dtype=torch.long)
    for w, tokens in enumerate(window_partition(rolled[None, ..., None], window).view(-1, window * window)):
        window_of[tokens], slot_of[tokens] = w, torch.arange(window * window)
    start, seen = head, 0
    for count, tall, wide in layout.regions:
        for _ in range(count):
            tokens = layout.order[start:start + tall * wide]
            start += tall * wide
            w = int(window_of[tokens[0]])
            assert (window_of[tokens] == w).all()
            slots = slot_of[tokens]
            assert (mask[w][slots][:, slots] == 0).all()  # one region
            others = torch.tensor([s for s in range(window * window) if s not in set(slots.tolist())])
            if len(others):
                assert (mask[w][slots][:, others] == MASK_VALUE).all()  # and the whole of it
            seen += 1
    assert start == height * width and seen > 0


@pytest.mark.parametrize('batch', [1, 2])
def test_attention_by_regions_equals_the_masked_attention(batch):
    torch.manual_seed(0)
    attention = WindowAttention(12, 4, 3).eval()
    height, width = 8, 12
    tokens = torch.randn(batch, height * width, 12)
    masked = window_layout(height, width, 4, 2)
    regions = window_layout(height, width, 4, 2, regions=True)
    with torch.no_grad():
        expected = attention(tokens[:, masked.order].view(batch, -1, 16, 12), masked.mask, masked.unmasked)
        expected = expected.view(batch, -1, 12)[:, masked.inverse]
        got = attention.forward_regions(tokens[:, regions.order], regions)[:, regions.inverse]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('shift', [0, 2])
@pytest.mark.parametrize('grad', [True, False])
def test_blocks_on_tokens_in_window_order(shift, grad):
    """A block given its tokens window by window returns them window by window, with the same values and
    gradients as on row-major tokens."""
    torch.manual_seed(1)
    block = SwinIRBlock(12, (8, 12), 3, window_size=4, shift_size=shift).eval()
    x = torch.randn(2, 8 * 12, 12, requires_grad=grad)
    windowed = to_window_order(x, (8, 12), 4)
    assert torch.equal(from_window_order(windowed, (8, 12), 4), x)
    assert torch.equal(windowed.view(2, 6, 16, 12), window_partition(x.view(2, 8, 12, 12), 4))
    with torch.set_grad_enabled(grad):
        expected = block(x, (8, 12))
        got = from_window_order(block(windowed, (8, 12), windowed=True), (8, 12), 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if grad:
        upstream = torch.randn_like(got)
        want = torch.autograd.grad(expected, [x, *block.parameters()], upstream)
        have = torch.autograd.grad(got, [x, *block.parameters()], upstream)
        for a, b in zip(have, want):  # the same sums taken in another order: float rounding apart
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_kept_inference_tensors_follow_their_parameters():
    """Packed weights and gathered position biases are kept between inference calls; every way of changing the
    parameters (optimiser step, load_state_dict, a write through .data, a new tensor) is seen at the next call."""
    torch.manual_seed(2)
    block = SwinIRBlock(16, (8, 8), 2, window_size=4, shift_size=2).eval()
    x = torch.randn(1, 64, 16)

    def infer():
        with torch.no_grad():
            out = block(x, (8, 8))
        with densezoo.fast_path(False), torch.no_grad():
            torch.testing.assert_close(out, block(x, (8, 8)), rtol=1e-5, atol=1e-5)
        return out

    before = infer()
    with torch.no_grad():  # as an optimiser steps
        block.attn.qkv.weight.mul_(1.5)
    changed = infer()
    assert not torch.allclose(changed, before)
    block.load_state_dict({k: v * 0.5 for k, v in block.state_dict().items()})
    infer()
    block.attn.relative_position_bias_table.data.add_(1.0)  # not counted as a version
    block.mlp.fc1.weight.data.mul_(-1.0)
    infer()
    block.attn.proj.weight = torch.nn.Parameter(torch.randn(16, 16))
    infer()
    with torch.inference_mode():  # tensors made under inference_mode are kept nowhere
        inference_block = SwinIRBlock(16, (8, 8), 2, window_size=4, shift_size=2).eval()
        inference_block(x, (8, 8))
