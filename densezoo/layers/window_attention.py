"""Shifted-window self-attention for image restoration transformers (SwinIR, DRCT, HAT).

The layers (``WindowAttention``, ``window_attention``, ``window_layout``, ``shifted_window_mask``, ...) keep the
official modules' parameter names, so official checkpoints load unchanged, and differ in how they compute.

Paper: SwinIR (https://arxiv.org/abs/2108.10257), after Swin Transformer (https://arxiv.org/abs/2103.14030).
Design notes: docs/sr-models.md.
"""
import functools
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from timm.layers import DropPath, Mlp
from timm.models.swin_transformer import get_relative_position_index

from densezoo.layers.fast_path import (flash_attention_cpu, is_tracing, onednn_linear, onednn_weight_packing,
                                      use_fast_path)

__all__ = ['shifted_window_mask', 'relative_position_index', 'window_partition', 'window_merge', 'window_layout',
           'to_window_order', 'from_window_order', 'window_attention', 'merge_heads', 'gather_position_bias',
           'fast_linear', 'WindowAttention', 'LeanMlp', 'SwinIRBlock', 'MASK_VALUE']

#: Additive attention score between tokens of different shifted regions (the official value, not -inf).
MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws², ws²) index into a ((2·ws − 1)², heads) relative-position bias table, as Swin defines it."""
    return get_relative_position_index(window_size, window_size)


def _window_rows(grid: np.ndarray, window_size: int) -> np.ndarray:
    """(H, W) array → (nW, ws²): its windows in row-major order, as ``window_partition`` orders them."""
    height, width = grid.shape
    windows = grid.reshape(height // window_size, window_size, width // window_size, window_size)
    return windows.transpose(0, 2, 1, 3).reshape(-1, window_size * window_size)


def _mask_array(height: int, width: int, window_size: int, shift_size: int) -> np.ndarray:
    regions = np.zeros((height, width), dtype=np.int64)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    windows = _window_rows(regions, window_size)  # (nW, ws²) region labels
    differs = windows[:, None, :] != windows[:, :, None]
    return np.where(differs, MASK_VALUE, 0.).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _cached_mask(height: int, width: int, window_size: int, shift_size: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor even when first asked for under inference_mode
        return torch.as_tensor(_mask_array(height, width, window_size, shift_size), device=device)


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """Additive mask (nW, ws², ws²) of a window attention shifted by ``shift_size`` on an H×W token grid.

    Entry (w, i, j) is 0 where tokens i and j of window w came from the same region before the cyclic shift and
    ``MASK_VALUE`` otherwise (the official SwinIR / Swin masks). Cached per size, window, shift and device (except
    while a compiler or tracer records the model); do not modify the returned tensor.
    """
    device = torch.device(device or 'cpu')
    if is_tracing():
        return torch.as_tensor(_mask_array(height, width, window_size, shift_size), device=device)
    return _cached_mask(height, width, window_size, shift_size, device)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) → (B, nW, ws·ws, C), windows in row-major order as Swin orders them."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window_size * window_size, channels)


def window_merge(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B, nW, ws·ws, C) → (B, H, W, C)."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.view(batch, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


class WindowLayout(NamedTuple):
    """Where the tokens of an H×W grid go when it is cyclically shifted and split into windows.

    ``order`` (H·W,) gathers tokens in row-major order into windows (``x[:, order]``), ``inverse`` scatters them back
    (``windows[:, inverse]``). The windows whose tokens come from more than one region of the shifted grid (the
    last row and column of windows) are placed last: ``mask`` (nW, N, N) is the additive shifted-window mask in this
    window order, zero for its first ``unmasked`` windows. ``mask`` is None without a shift.

    A layout for tokens that already come in the unshifted window order (``window_layout(..., windowed=True)``)
    indexes that order instead of the row-major one; without a shift its ``order`` and ``inverse`` are None (the
    tokens are in place).
    """
    order: Optional[torch.Tensor]
    inverse: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    unmasked: int
    regions: Tuple[Tuple[int, int, int], ...] = ()


#: ``WindowLayout.regions`` (with ``window_layout(..., regions=True)``): after the ``unmasked`` whole windows, the
#: masked windows come split at their region borders, as groups of ``count`` rectangles of ``height × width``
#: tokens (each rectangle's tokens row by row). Attention within each rectangle, without a mask, is the masked
#: attention of the whole window: the masked scores weigh exp(−100) ≈ 4e-44 there, nothing in float32.


def _edge_rectangles(grid: np.ndarray, window_size: int, shift_size: int) -> Dict[Tuple[int, int], list]:
    """The masked windows of a shifted ``grid`` cut at their region borders: rectangles of token numbers, grouped
    by shape (rows, columns), in window order."""
    height, width = grid.shape
    rows, cols = height // window_size, width // window_size

    def spans(index: int, count: int, side: int) -> list:
        if index < count - 1:
            return [(index * window_size, window_size)]
        return [(side - window_size, window_size - shift_size), (side - shift_size, shift_size)]

    groups: Dict[Tuple[int, int], list] = {}
    for i in range(rows):
        for j in range(cols):
            if i < rows - 1 and j < cols - 1:
                continue
            for top, tall in spans(i, rows, height):
                for left, wide in spans(j, cols, width):
                    groups.setdefault((tall, wide), []).append(grid[top:top + tall, left:left + wide].reshape(-1))
    return groups


def _layout_arrays(height: int, width: int, window_size: int, shift_size: int, windowed: bool = False,
                   regions: bool = False):
    """The layout as arrays: pure integer work, so that no tracer sees it as data-dependent. With ``windowed`` the
    token numbers are positions in the unshifted window order rather than in row-major order; with ``regions``
    (and a shift) the masked windows are cut into their regions (``WindowLayout.regions``) and no mask is made."""
    grid = np.arange(height * width).reshape(height, width)
    if windowed:  # grid[r, c] = where token (r, c) sits in the unshifted window order
        grid = np.argsort(_window_rows(grid, window_size).reshape(-1)).reshape(height, width)
    mask, groups = None, ()
    if shift_size:
        grid = np.roll(grid, (-shift_size, -shift_size), axis=(0, 1))
    windows = _window_rows(grid, window_size)  # (nW, N) token indices
    unmasked = windows.shape[0]
    if shift_size:
        # the windows of the last row and column hold tokens of two regions; the others of one. Chosen by index
        # arithmetic rather than by looking at the mask, so that every size is static for tracers
        rows, cols = height // window_size, width // window_size
        plain = [i * cols + j for i in range(rows - 1) for j in range(cols - 1)]
        if regions:
            rectangles = _edge_rectangles(grid, window_size, shift_size)
            groups = tuple((len(parts), tall, wide) for (tall, wide), parts in rectangles.items())
            order = np.concatenate([windows[plain].reshape(-1)] + [np.concatenate(parts)
                                                                    for parts in rectangles.values()])
            return order, np.argsort(order), None, len(plain), groups
        edge = [i * cols + j for i in range(rows) for j in range(cols) if i == rows - 1 or j == cols - 1]
        keep = np.array(plain + edge, dtype=np.int64)
        windows, unmasked = windows[keep], len(plain)
        mask = _mask_array(height, width, window_size, shift_size)[keep]
    order = windows.reshape(-1)
    return order, np.argsort(order), mask, unmasked, groups


def _layout_tensors(height: int, width: int, window_size: int, shift_size: int, device: torch.device,
                    windowed: bool = False, regions: bool = False) -> WindowLayout:
    if windowed and not shift_size:
        return WindowLayout(None, None, None, (height // window_size) * (width // window_size))
    order, inverse, mask, unmasked, groups = _layout_arrays(height, width, window_size, shift_size, windowed,
                                                            regions)
    return WindowLayout(torch.as_tensor(order, device=device), torch.as_tensor(inverse, device=device),
                        None if mask is None else torch.as_tensor(mask, device=device), unmasked, groups)


def _symbolic_layout(height, width, window_size: int, shift_size: int, device: torch.device,
                     windowed: bool) -> WindowLayout:
    """The layout of a grid whose size is symbolic (``torch.export`` with a dynamic height or width), made of
    tensor operations on the size: the windows stay in row-major order (``unmasked`` is 0) and ``mask`` covers
    every window."""
    ws = window_size
    if windowed and not shift_size:
        return WindowLayout(None, None, None, (height // ws) * (width // ws))
    rows = torch.arange(height, device=device)[:, None].expand(height, width)
    cols = torch.arange(width, device=device)[None, :].expand(height, width)

    def windows(grid: torch.Tensor) -> torch.Tensor:  # (H, W) -> (H·W,), window_partition's order
        return grid.reshape(height // ws, ws, width // ws, ws).permute(0, 2, 1, 3).reshape(-1)

    def in_window_order(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # where cell (r, c) sits in it
        return ((r // ws) * (width // ws) + c // ws) * (ws * ws) + (r % ws) * ws + c % ws

    def source(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # where the tokens come from
        return in_window_order(r, c) if windowed else r * width + c

    def wrap(index: torch.Tensor, size) -> torch.Tensor:  # index % size for index in [-size, 2·size), without
        # a modulo by a symbolic size (ONNX export takes none)
        return torch.where(index >= size, index - size, torch.where(index < 0, index + size, index))

    # window position t of the shifted grid, cell (R, C), holds the token of cell ((R + s) % H, (C + s) % W)
    shifted_rows, shifted_cols = windows(rows), windows(cols)
    order = source(wrap(shifted_rows + shift_size, height), wrap(shifted_cols + shift_size, width))
    token_rows, token_cols = (shifted_rows, shifted_cols) if windowed else (rows.reshape(-1), cols.reshape(-1))
    inverse = in_window_order(wrap(token_rows - shift_size, height), wrap(token_cols - shift_size, width))
    mask = None
    if shift_size:  # region labels of the shifted grid, as _mask_array makes them
        labels = 3 * ((rows >= height - ws).long() + (rows >= height - shift_size).long()) \
            + (cols >= width - ws).long() + (cols >= width - shift_size).long()
        labels = windows(labels).view(-1, ws * ws)
        differs = labels[:, None, :] != labels[:, :, None]
        mask = torch.where(differs, torch.tensor(MASK_VALUE, device=device), torch.tensor(0., device=device))
    return WindowLayout(order, inverse, mask, 0)


@functools.lru_cache(maxsize=64)
def _cached_window_layout(height: int, width: int, window_size: int, shift_size: int, device: torch.device,
                          windowed: bool, regions: bool) -> WindowLayout:
    with torch.inference_mode(False):  # normal tensors even when first asked for under inference_mode, so that
        # later training can save them for backward
        return _layout_tensors(height, width, window_size, shift_size, device, windowed, regions)


def window_layout(height: int, width: int, window_size: int, shift_size: int = 0,
                  device: Optional[torch.device] = None, windowed: bool = False,
                  regions: bool = False) -> WindowLayout:
    """The ``WindowLayout`` of an H×W token grid for windows of ``window_size`` shifted by ``shift_size``.

    ``windowed``: the tokens come in the unshifted window order (``to_window_order``) rather than row by row.
    ``regions``: cut the masked windows of a shifted layout at their region borders instead of making a mask.
    Cached per size, window, shift, order and device, except while a compiler or tracer records the model (it
    records the tensors as constants); do not modify the returned tensors.
    """
    device = torch.device(device or 'cpu')
    if not (isinstance(height, int) and isinstance(width, int)):  # torch.export with dynamic sizes
        return _symbolic_layout(height, width, window_size, shift_size, device, windowed)
    if is_tracing():
        return _layout_tensors(height, width, window_size, shift_size, device, windowed, regions)
    return _cached_window_layout(height, width, window_size, shift_size, device, windowed, regions)


def to_window_order(x: torch.Tensor, x_size: Tuple[int, int], window_size: int) -> torch.Tensor:
    """Tokens (B, H·W, C) in row-major order → the same tokens window by window (``window_partition``'s order).

    Layers that act on each token alone keep this order; ``SwinIRBlock(..., windowed=True)`` takes it, and then
    its unshifted attention gathers and scatters nothing.
    """
    return x.index_select(1, window_layout(*x_size, window_size, device=x.device).order)


def from_window_order(x: torch.Tensor, x_size: Tuple[int, int], window_size: int) -> torch.Tensor:
    """Inverse of ``to_window_order``: tokens window by window → (B, H·W, C) in row-major order."""
    return x.index_select(1, window_layout(*x_size, window_size, device=x.device).inverse)


#: parameter → {what: ((version, address, shape, strides), sample of the values, derived tensor)}
_DERIVED = WeakTensorKeyDictionary()

#: values of a tensor compared, besides its version counter, to tell that it changed (``.data`` writes do not
#: count as versions)
_SAMPLED = 1024


def _derived(tensor: torch.Tensor, what: object, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``, a tensor that follows from ``tensor`` (a parameter or a view of one) in inference, made once
    and kept while ``tensor`` is unchanged: an in-place update, a write that changes any of ``_SAMPLED`` evenly
    spread values, a new storage or another view makes it again."""
    if tensor.is_inference():  # inference tensors have no version counter to check
        return make()
    owner = tensor if tensor._base is None else tensor._base
    state = (tensor._version, tensor.data_ptr(), tensor.shape, tensor.stride())
    sample = tensor.reshape(-1)[::max(1, tensor.numel() // _SAMPLED)]
    entries = _DERIVED.get(owner)
    if entries is None:
        entries = _DERIVED[owner] = {}
    entry = entries.get(what)
    if entry is None or entry[0] != state or not torch.equal(entry[1], sample):
        entry = entries[what] = (state, sample.clone(), make())
    return entry[2]


def _packed_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The oneDNN-packed copy of ``weight`` (kept while the weight is unchanged), or ``weight`` itself where
    packing is not available."""
    pack = onednn_weight_packing()
    return weight if pack is None else _derived(weight, 'packed', lambda: pack(weight, rows))


def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                activation: str = 'none') -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by exact GELU when ``activation='gelu'``.

    In float32 CPU inference (no gradients, no autocast) with the fast path on (``densezoo.use_fast_path()``) this
    runs PyTorch's oneDNN linear kernel with the activation fused, on a copy of the weight packed once in oneDNN's
    layout (docs/benchmarks.md has the speed; same results to float rounding). Everywhere else it is ``F.linear``
    (and ``F.gelu``).
    """
    if (not torch.is_grad_enabled() and x.device.type == 'cpu' and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_autocast_enabled('cpu')
            and not isinstance(x, torch.fx.Proxy) and use_fast_path()):
        op = onednn_linear()
        if op is not None:
            return op(x, _packed_weight(weight, x.numel() // x.shape[-1]), bias, activation, [], 'none')
    out = F.linear(x, weight, bias)
    return F.gelu(out) if activation == 'gelu' else out


def gather_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Relative-position bias (heads, N, M), contiguous, from a (positions, heads) ``table`` and an (N, M) ``index``."""
    return table.t().index_select(1, index.view(-1)).view(table.shape[1], *index.shape)


def _merge_windows_into_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, nW, heads, N, d) → (B, nW·heads, N, d): 4-D, so PyTorch's fused CPU attention kernel takes it."""
    return x.flatten(1, 2)


def _combined_bias(position_bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(1, heads, N, N) without a mask, else (1, nW·heads, N, N): bias + mask, broadcast over the batch."""
    if mask is None:
        return position_bias.unsqueeze(0)
    return (position_bias.unsqueeze(0) + mask.unsqueeze(1)).flatten(0, 1).unsqueeze(0)


class _FusedBiasedAttention(torch.autograd.Function):
    """Window attention whose additive bias needs a gradient, on CPU, without keeping attention matrices.

    PyTorch's fused CPU kernel does not differentiate ``attn_mask`` and falls back to the unfused path, which keeps
    the (N × N) attention weights of every window and head for backward. This function runs the fused kernel forward
    (keeping q, k, v, the output and the log-sum-exp) and recomputes the weights in backward. Inputs are 4-D
    (batch·windows or batch, windows·heads, tokens, head dim); the output is the kernel's own tensor, never a view,
    so that callers may reshape it and add into it.
    """

    @staticmethod
    def forward(ctx, q, k, v, position_bias, mask, scale):
        bias = _combined_bias(position_bias, mask).to(q.dtype)
        out, lse = flash_attention_cpu()(q, k, v, attn_mask=bias, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, position_bias, mask)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, position_bias, mask = ctx.saved_tensors
        bias = _combined_bias(position_bias, mask).to(q.dtype)
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(ctx.scale).add_(bias)
        probs = scores.sub_(lse.unsqueeze(-1).to(scores.dtype)).exp_()
        grad_v = torch.matmul(probs.transpose(-2, -1), grad_out)
        grad_probs = torch.matmul(grad_out, v.transpose(-2, -1))
        delta = (grad_out * out).sum(-1, keepdim=True)
        grad_scores = probs.mul_(grad_probs.sub_(delta))
        grad_q = torch.matmul(grad_scores, k).mul_(ctx.scale)
        grad_k = torch.matmul(grad_scores.transpose(-2, -1), q).mul_(ctx.scale)
        heads = position_bias.shape[0]
        grad_bias = grad_scores.reshape(-1, heads, *grad_scores.shape[-2:]).sum(0).to(position_bias.dtype)
        return grad_q, grad_k, grad_v, grad_bias, None, None


def _fused_biased_attention(q, k, v, position_bias, mask, scale):
    """``_FusedBiasedAttention`` on (B, nW, heads, N, d) queries and (B, nW, heads, M, d) keys and values."""
    merge = _merge_windows_into_heads if mask is not None else (lambda t: t.flatten(0, 1))
    out = _FusedBiasedAttention.apply(merge(q), merge(k), merge(v), position_bias, mask, scale)
    return out.view(q.shape)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Attention output (B, nW, heads, N, d) → (B, nW, N, heads·d).

    While a compiler or tracer records the model the heads are copied into place first, so that the recorded
    program does not depend on the attention kernel's output layout (ONNX export replaces the kernel, and a view
    recorded for the first layout would not fit the other).
    """
    x = x.transpose(2, 3)
    if is_tracing():
        x = x.clone(memory_format=torch.contiguous_format)
    return x.flatten(3)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position_bias: torch.Tensor,
                     mask: Optional[torch.Tensor], scale: float, dropout_p: float = 0.,
                     unmasked: int = 0) -> torch.Tensor:
    """softmax(q·kᵀ·scale + position_bias + mask)·v over windows.

    Args:
        q: (B, nW, heads, N, d) queries; k, v: (B, nW, heads, M, d) keys and values (M = N for self-attention).
            Any strides with a contiguous last dimension (views of a fused projection) are taken without copies.
        position_bias: (heads, N, M) relative-position bias.
        mask: (nW, N, M) additive mask, or None.
        unmasked: How many leading windows have a zero mask; they share the position bias instead of each adding
            their mask (``WindowLayout`` puts the masked windows last).
    Returns:
        (B, nW, heads, N, d).
    """
    batch, windows = q.shape[:2]
    if _needs_bias_grad(q, position_bias, dropout_p):
        return _fused_biased_attention(q, k, v, position_bias, mask, scale)
    bias = position_bias.unsqueeze(0).to(q.dtype)
    if mask is None:
        out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=bias,
                                             scale=scale, dropout_p=dropout_p)
        return out.unflatten(0, (batch, windows))
    # unmasked windows share the (1, heads, N, M) bias; the last windows add their mask. Each image is one call per
    # part, so q, k and v stay views of the projection and the masked bias is not repeated per image.
    plain = unmasked
    masked_bias = (bias + mask[plain:].unsqueeze(1)).to(q.dtype)
    parts = []
    for i in range(batch):
        if plain:
            parts.append(F.scaled_dot_product_attention(q[i, :plain], k[i, :plain], v[i, :plain], attn_mask=bias,
                                                        scale=scale, dropout_p=dropout_p))
        if plain < windows:
            parts.append(F.scaled_dot_product_attention(q[i, plain:], k[i, plain:], v[i, plain:],
                                                        attn_mask=masked_bias, scale=scale, dropout_p=dropout_p))
    if len(parts) == 1:
        return parts[0].unsqueeze(0)
    # joined in the (windows, N, heads, d) order the caller merges heads in, presented as (windows, heads, N, d)
    out = torch.cat([part.transpose(1, 2) for part in parts])
    return out.view(batch, windows, *out.shape[1:]).transpose(2, 3)


def _needs_bias_grad(q: torch.Tensor, position_bias: torch.Tensor, dropout_p: float) -> bool:
    """Whether attention takes the CPU training fast path that differentiates the bias without keeping N×N
    weights (with the fast path switched on and the fused kernel usable)."""
    return (position_bias.requires_grad and torch.is_grad_enabled() and q.device.type == 'cpu' and not dropout_p
            and not isinstance(q, torch.fx.Proxy) and use_fast_path() and flash_attention_cpu() is not None)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias (official parameter names).

    Args:
        dim: Token width.
        window_size: Side of the square windows.
        num_heads: Attention heads; ``dim`` need not be divisible by it (DRCT uses floor(dim / heads) per head).
        qkv_bias: Bias on the query/key/value projection.
        qk_scale: Score scale; default ``head_dim ** -0.5``.
        attn_drop: Dropout on the attention weights (training only).
        proj_drop: Dropout after the output projection.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0., proj_drop: float = 0.):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def position_bias(self, tall: Optional[int] = None, wide: Optional[int] = None) -> torch.Tensor:
        """The relative-position bias (heads, N, N) gathered from the table (contiguous, so that adding the
        shifted-window mask gives the contiguous mask the fused attention kernel takes without copying).

        With ``tall`` and ``wide``: the bias (heads, n, n) among the n = tall·wide tokens of a rectangle inside a
        window. On the fast path in inference it is gathered once and kept while the table is unchanged.
        """
        side = self.window_size
        tall, wide = tall or side, wide or side

        def gather() -> torch.Tensor:
            index = self.relative_position_index
            if (tall, wide) != (side, side):
                inside = (torch.arange(tall, device=index.device)[:, None] * side
                          + torch.arange(wide, device=index.device)).view(-1)
                index = index[inside][:, inside]
            return gather_position_bias(self.relative_position_bias_table, index)

        table = self.relative_position_bias_table
        if torch.is_grad_enabled() or not use_fast_path() or isinstance(table, torch.fx.Proxy):
            return gather()
        return _derived(table, ('position_bias', tall, wide), gather)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, unmasked: int = 0) -> torch.Tensor:
        """x: (B, nW, N, C) windows of N tokens; mask: (nW, N, N) additive, zero for the first ``unmasked``."""
        batch, windows, tokens, _ = x.shape
        qkv = fast_linear(x, self.qkv.weight, self.qkv.bias)
        qkv = qkv.view(batch, windows, tokens, 3, self.num_heads, -1).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)
        x = window_attention(q, k, v, self.position_bias(), mask, self.scale, unmasked=unmasked,
                             dropout_p=self.attn_drop if self.training else 0.)
        x = merge_heads(x)
        return self.proj_drop(fast_linear(x, self.proj.weight, self.proj.bias))

    def forward_regions(self, x: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """Inference on tokens (B, T, C) gathered by a ``layout`` with ``regions``: the unmasked windows attend as
        whole windows, the masked ones rectangle by rectangle (``WindowLayout.regions``), without a mask."""
        batch, _, channels = x.shape
        side = self.window_size
        qkv = fast_linear(x, self.qkv.weight, self.qkv.bias)
        segments = [(layout.unmasked, side, side)] * bool(layout.unmasked) + list(layout.regions)
        parts = [[] for _ in range(batch)]  # per image, segment by segment
        start = 0
        for count, tall, wide in segments:
            size = tall * wide
            segment_bias = self.position_bias(tall, wide).unsqueeze(0).to(qkv.dtype)
            chunk = qkv[:, start:start + count * size].view(batch, count, size, 3, self.num_heads, -1)
            q, k, v = chunk.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, count, heads, size, d) each
            for i in range(batch):
                out = F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=segment_bias, scale=self.scale)
                parts[i].append(out.transpose(1, 2).reshape(count * size, -1))
            start += count * size
        out = torch.cat([part for image in parts for part in image]).view(batch, -1, channels)
        return self.proj_drop(fast_linear(out, self.proj.weight, self.proj.bias))


class _GeluLinear(torch.autograd.Function):
    """linear(gelu(u)) on 2-D ``u`` that keeps u only: the activation is recomputed in backward instead of being
    stored. The output is the matrix product's own tensor, never a view, so that callers may add into it."""

    @staticmethod
    def forward(ctx, hidden, weight, bias):
        ctx.save_for_backward(hidden, weight)
        ctx.has_bias = bias is not None
        activated = F.gelu(hidden)
        return torch.addmm(bias, activated, weight.t()) if bias is not None else activated.mm(weight.t())

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight = ctx.saved_tensors
        activated = F.gelu(hidden).to(grad_out.dtype)  # under autocast the forward ran in a lower precision
        grad_weight = grad_out.t().mm(activated).to(weight.dtype)
        grad_bias = grad_out.sum(0).to(weight.dtype) if ctx.has_bias else None
        grad_hidden = torch.ops.aten.gelu_backward(grad_out.mm(weight.to(grad_out.dtype)).to(hidden.dtype), hidden)
        return grad_hidden, grad_weight, grad_bias


class LeanMlp(Mlp):
    """timm's ``Mlp`` (same parameters: ``fc1``, ``fc2``) that stores one hidden-size activation instead of two in
    training (GELU is recomputed in backward) and fuses GELU into the first linear in inference (``fast_linear``);
    the same outputs and gradients. With the fast path off (``densezoo.set_fast_path(False)``) it is timm's
    ``Mlp``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain_gelu = (isinstance(self.act, nn.GELU) and self.act.approximate == 'none'
                      and isinstance(self.norm, nn.Identity))
        if not plain_gelu or not use_fast_path() or isinstance(x, torch.fx.Proxy):
            return super().forward(x)
        if not torch.is_grad_enabled():  # inference: linear and GELU fused where the CPU kernel exists
            hidden = fast_linear(x, self.fc1.weight, self.fc1.bias, activation='gelu')
            return self.drop2(fast_linear(self.drop1(hidden), self.fc2.weight, self.fc2.bias))
        if self.training and self.drop1.p:
            return super().forward(x)
        hidden = self.fc1(x)
        out = _GeluLinear.apply(hidden.reshape(-1, hidden.shape[-1]), self.fc2.weight, self.fc2.bias)
        return self.drop2(out.view(*hidden.shape[:-1], out.shape[-1]))


def _add_residual(branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """branch + x. Without autograd the sum is written into the branch's own fresh output (no new tensor); with
    autograd it is a new tensor, so that no operator's output is modified in place while gradients are recorded."""
    if torch.is_grad_enabled() or isinstance(branch, torch.fx.Proxy):
        return branch + x
    return branch.add_(x)


class SwinIRBlock(nn.Module):
    """The Swin Transformer layer of SwinIR and DRCT: (shifted) window attention, then an MLP, both pre-norm residual.

    Tokens come as (B, H·W, C) with the grid size given to ``forward``. ``input_resolution`` is the training size
    (official ``img_size``); when it is not larger than the window, the block keeps its whole input as one window
    and does not shift, as the official layer does.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4., qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0., attn_drop: float = 0., drop_path: float = 0., act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= window_size:
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f'shift_size={shift_size} must lie in [0, window_size={self.window_size})')
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                    attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = LeanMlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def attend(self, x: torch.Tensor, x_size: Tuple[int, int], norm: Optional[nn.Module] = None,
               windowed: bool = False) -> torch.Tensor:
        """Window attention over tokens (B, H·W, C); returns (B, H·W, C) in the same order (row-major, or the
        unshifted window order with ``windowed``).

        ``norm`` (a per-token normalisation) is applied after the tokens are gathered into windows in inference: the
        same result, and an input that is a strided view (DRCT's dense features) is read once instead of copied
        first. When gradients are recorded it runs before the gather, so that its backward keeps the block input
        (held anyway) rather than a gathered copy.
        """
        height, width = x_size
        batch, tokens, channels = x.shape
        # inference on the fast path attends within the regions of masked windows rather than with a mask
        regions = bool(self.shift_size) and not torch.is_grad_enabled() and use_fast_path()
        layout = window_layout(height, width, self.window_size, self.shift_size, x.device, windowed, regions)
        if norm is not None and (torch.is_grad_enabled() or layout.order is None):
            x, norm = norm(x), None
        windows = x if layout.order is None else x.index_select(1, layout.order)
        if norm is not None:
            windows = norm(windows)
        if layout.regions:
            windows = self.attn.forward_regions(windows, layout)
        else:
            windows = self.attn(windows.view(batch, -1, self.window_size ** 2, channels), layout.mask,
                                layout.unmasked)
        windows = windows.view(batch, tokens, channels)
        return windows if layout.inverse is None else windows.index_select(1, layout.inverse)

    def forward(self, x: torch.Tensor, x_size: Tuple[int, int], windowed: bool = False) -> torch.Tensor:
        """x: tokens (B, H·W, C) in row-major order, or in the unshifted window order (``to_window_order``) with
        ``windowed``; returns them in the same order."""
        x = _add_residual(self.drop_path(self.attend(x, x_size, self.norm1, windowed)), x)
        return _add_residual(self.drop_path(self.mlp(self.norm2(x))), x)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, '
                f'shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}')
