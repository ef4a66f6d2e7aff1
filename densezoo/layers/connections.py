"""Block connections: what each block of a stage receives.

A connection replaces the plain chain x_i = B_i(x_{i-1}) of a stage's blocks: ``residual``, ``dwa`` (DenseFormer),
``mudd`` (MUDDFormer), ``rir`` (residual-in-residual), ``dense`` (DenseNet-style), ``laurel`` (LAuReL), ``rezero``
(ReZero) and ``value_residual`` (ResFormer). Entry points: ``create_connection``, ``connection_options`` and the
``StageConnection`` subclasses, each called as ``connection(x, runner, depth=None, taps=None)``.

Design notes: docs/connections.md.
"""
import copy
import inspect
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.fx
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.layers import trunc_normal_

__all__ = [
    'CONNECTION_KINDS', 'StageConnection', 'Residual', 'DepthWeightedAverage', 'MultiwayDynamicDense',
    'ResidualInResidual', 'DenseConcat', 'LAuReL', 'ReZero', 'ValueResidual', 'DenseResidualInResidual',
    'create_connection',
    'connection_options', 'weighted_sum', 'linear_over_chunks', 'dwa_num_weights',
]

LAYOUTS = ('NHWC', 'NLC', 'NCHW')

#: block index -> state after that block, filled in by a connection's forward (keys chosen by the caller)
Taps = Optional[Dict[int, Optional[torch.Tensor]]]


def weighted_sum(
        tensors: Sequence[torch.Tensor],
        weights: torch.Tensor,
        per_position: bool = False,
) -> torch.Tensor:
    """Return sum_j weights[..., j] * tensors[j] without stacking the tensors.

    ``weights`` is 1-D (one scalar per tensor), or with ``per_position`` has the tensors' shape with the last
    (channel) dimension replaced by the number of tensors (one weight per position). The sum accumulates in place,
    one fused multiply-add per term; autograd keeps references to the inputs, never copies.
    """
    out = tensors[0] * (weights[..., 0:1] if per_position else weights[0])
    for j in range(1, len(tensors)):
        # keep the in-place result: FX graphs drop in-place calls whose result is unused
        out = out.addcmul_(tensors[j], weights[..., j:j + 1] if per_position else weights[j])
    return out


def linear_over_chunks(
        chunks: Sequence[torch.Tensor],
        widths: Sequence[int],
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Apply ``F.linear(torch.cat(chunks, -1), weight, bias)`` without building the concatenation.

    ``widths`` are the chunks' channel counts. The weight is split column-wise along the chunks; each chunk adds
    one matrix product into the output (in the output's dtype, which autocast may have lowered).
    """
    out = F.linear(chunks[0], weight[:, :widths[0]], bias)
    flat = out.view(-1, weight.shape[0])
    start = widths[0]
    for chunk, width in zip(chunks[1:], widths[1:]):
        part = weight[:, start:start + width].t().to(flat.dtype)
        flat = flat.addmm_(chunk.reshape(-1, width).to(flat.dtype), part)
        start += width
    return flat.view_as(out)


def _tap(taps: Taps, index: int, state: torch.Tensor) -> None:
    """Record ``state`` as the state after block ``index`` if the caller asked for it."""
    if taps is not None and index in taps:
        taps[index] = state


def _leading(param: nn.Parameter, count: int) -> nn.Parameter:
    """A new parameter holding the first ``count`` entries of the 1-D parameter ``param``."""
    return nn.Parameter(param.detach()[:count].clone(), requires_grad=param.requires_grad)


def _check_int(name: str, value, minimum: int, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name}={value!r} is not allowed; {name} must be {allowed}')
    return value


def _check_layout(layout: str, allowed: Sequence[str] = LAYOUTS) -> str:
    if layout not in allowed:
        raise ValueError(f'layout={layout!r} is not allowed; choose one of {", ".join(allowed)}')
    return layout


def dwa_num_weights(num_blocks: int, dilation: int = 1, period: int = 1) -> int:
    """Number of DWA scalars for a stage: sum over averaging points i of (i + dilation) // dilation."""
    return sum((i + 1 + dilation) // dilation for i in range(num_blocks) if (i + 1) % period == 0)


class StageConnection(nn.Module):
    """Base class of the connections: runs the ``num_blocks`` blocks of one stage through a runner.

    Subclasses implement ``forward(x, runner, depth=None, taps=None)`` (see the module docstring for ``depth``,
    ``taps`` and the state after a block), ``reset_parameters()`` and, when they hold per-block parameters,
    ``_truncate(depth)``; ``no_weight_decay_names()`` lists the mixing coefficients that weight decay would pull
    away from their identity values.
    """
    kind: str = ''
    #: runner capability the connection needs beyond ``run_block`` (``'streams'`` or ``'values'``)
    requires: Optional[str] = None

    def __init__(self, num_blocks: int):
        super().__init__()
        self.num_blocks = _check_int('num_blocks', num_blocks, 1, 'a positive integer')

    def reset_parameters(self) -> None:
        """Restore the initial values of the connection parameters."""

    def blocks_to_run(self, depth: Optional[int]) -> int:
        """The number of blocks a call with ``depth`` runs (all when None); raises for a depth out of range."""
        if depth is None:
            return self.num_blocks
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.num_blocks:
            raise ValueError(f'depth={depth!r} is not allowed; it must be an integer from 1 to {self.num_blocks}')
        return depth

    def truncated(self, depth: int) -> 'StageConnection':
        """The connection of the first ``depth`` blocks alone: its output is this one's state after block depth-1.

        Kept parameters are shared with this connection (the same ``nn.Parameter`` objects) except where the
        truncation changes their shape (the last kept MUDD generator of a multi-stream connection); buffers are
        copied. ``depth == num_blocks`` returns this connection itself.
        """
        depth = self.blocks_to_run(depth)
        if depth == self.num_blocks:
            return self
        shared = {id(param): param for param in self.parameters()}
        short = copy.deepcopy(self, shared)
        short._truncate(depth)
        short.num_blocks = depth
        return short

    def _truncate(self, depth: int) -> None:
        """Drop, in place, what blocks ``depth`` and later use (called on a copy by ``truncated``)."""

    def no_weight_decay_names(self) -> List[str]:
        """Names (relative to this module) of parameters that should not use weight decay."""
        return []

    def mixing_macs(self, numel: int) -> int:
        """Multiply-adds of the weighted sums over stored outputs, for a stage input of ``numel`` elements.

        FLOP counters see the connections' matrix products (generators, projections, fusions) but not these
        elementwise multiply-adds; one per term and element.
        """
        return 0

    def extra_repr(self) -> str:
        return f'num_blocks={self.num_blocks}'


class Residual(StageConnection):
    """The plain chain x_i = B_i(x_{i-1}); exactly the network being connected."""
    kind = 'residual'

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        for i in range(self.blocks_to_run(depth)):
            x = runner.run_block(i, x)
            _tap(taps, i, x)
        return x


class DepthWeightedAverage(StageConnection):
    """DenseFormer's depth-weighted average (DWA) with dilation k and period p.

    After block i (0-based) its raw output X_{i+1} is stored (X_0 is the stage input). If (i + 1) is a multiple
    of p, the next block receives sum_j alpha_{i,j} X_j over the stored X_j with j = i + 1 (mod k), in depth order;
    otherwise it receives X_{i+1}. Block i owns (i + 1 + k) // k scalars, initialised to 0 except 1 on X_{i+1}, so
    the stage starts as the plain one. With k = p = 1 a stage of L blocks has L(L + 3) / 2 scalars.
    """
    kind = 'dwa'

    def __init__(self, num_blocks: int, dilation: int = 1, period: int = 1, device=None, dtype=None):
        super().__init__(num_blocks)
        self.dilation = _check_int('dilation', dilation, 1, 'a positive integer')
        self.period = _check_int('period', period, 1, 'a positive integer')
        self.alphas = nn.ParameterDict({
            str(i): nn.Parameter(torch.empty((i + 1 + dilation) // dilation, device=device, dtype=dtype))
            for i in range(num_blocks) if (i + 1) % period == 0
        })
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for alpha in self.alphas.values():
                alpha.zero_()
                alpha[-1] = 1.

    def no_weight_decay_names(self) -> List[str]:
        return [f'alphas.{key}' for key in self.alphas.keys()]

    def mixing_macs(self, numel: int) -> int:
        return numel * sum(alpha.numel() for alpha in self.alphas.values())

    def _truncate(self, depth: int) -> None:
        for key in [key for key in self.alphas.keys() if int(key) >= depth]:
            del self.alphas[key]

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        outputs = [x]
        for i in range(self.blocks_to_run(depth)):
            y = runner.run_block(i, x)
            outputs.append(y)
            if (i + 1) % self.period == 0:
                x = weighted_sum(outputs[(i + 1) % self.dilation::self.dilation], self.alphas[str(i)])
            else:
                x = y
            _tap(taps, i, x)
        return x

    def extra_repr(self) -> str:
        return f'num_blocks={self.num_blocks}, dilation={self.dilation}, period={self.period}'


class MultiwayDynamicDense(StageConnection):
    """MUDDFormer's multiway dynamic dense connection.

    After block i (0-based) with output X_{i+1}, a generator makes per-position weights from X_{i+1}:
    ``RMSNorm (no scale) -> Linear(D, h) -> GELU -> Linear(h, C * (i + 2))``, reshaped to (C, i + 2) and added to
    a static bias of that shape. Stream c is sum_j w[c, j] X_j over X_0..X_{i+1}. Blocks before the last produce
    C = ``num_streams`` streams (4: query, key, value and residual inputs of the next block, in that order, which the
    runner must accept through ``run_block_streams``; 1: a single input), the last block one stream (the stage
    output). The state after a block is its last stream: the residual stream, or the single one. Truncated to fewer
    blocks, the last kept generator keeps only the residual stream's rows, so its output is that state.

    ``hidden_dim`` defaults to MUDDFormer's rule, (C * (i + 2)) // 64 * 64 + 64. The second generator weight is 0
    and the bias is 1 on X_{i+1} and 0 elsewhere at initialisation, so the stage starts as the plain one.
    """
    kind = 'mudd'

    def __init__(
            self,
            num_blocks: int,
            dim: int,
            num_streams: int = 1,
            hidden_dim: Optional[int] = None,
            eps: float = 1e-6,
            device=None,
            dtype=None,
    ):
        super().__init__(num_blocks)
        self.dim = _check_int('dim', dim, 1, 'a positive integer')
        if num_streams not in (1, 4):
            raise ValueError(f'num_streams={num_streams!r} is not allowed; num_streams must be 1 or 4 '
                             f'(query, key, value and residual)')
        if hidden_dim is not None:
            _check_int('hidden_dim', hidden_dim, 1, 'a positive integer or None (MUDDFormer rule)')
        self.num_streams = num_streams
        self.requires = 'streams' if num_streams > 1 else None
        self.eps = eps
        dd = dict(device=device, dtype=dtype)
        self.w1, self.w2, self.bias = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(num_blocks):
            streams, inputs = self.streams_after(i), i + 2
            hidden = hidden_dim or (streams * inputs) // 64 * 64 + 64
            self.w1.append(nn.Parameter(torch.empty(hidden, dim, **dd)))
            self.w2.append(nn.Parameter(torch.empty(streams * inputs, hidden, **dd)))
            self.bias.append(nn.Parameter(torch.empty(streams, inputs, **dd)))
        self.reset_parameters()

    def streams_after(self, index: int) -> int:
        """Number of streams mixed after block ``index``."""
        return self.num_streams if index < self.num_blocks - 1 else 1

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for w1, w2, bias in zip(self.w1, self.w2, self.bias):
                nn.init.normal_(w1, std=self.dim ** -0.5)
                w2.zero_()
                bias.zero_()
                bias[:, -1] = 1.

    def no_weight_decay_names(self) -> List[str]:
        return [f'bias.{i}' for i in range(self.num_blocks)]

    def mixing_macs(self, numel: int) -> int:
        return numel * sum(self.streams_after(i) * (i + 2) for i in range(self.num_blocks))

    def _generate(self, index: int, y: torch.Tensor) -> torch.Tensor:
        h = F.rms_norm(y, (self.dim,), eps=self.eps)
        h = F.gelu(F.linear(h, self.w1[index]))
        w = F.linear(h, self.w2[index])
        return w.unflatten(-1, (self.streams_after(index), index + 2)) + self.bias[index]

    def dynamic_weights(self, index: int, y: torch.Tensor) -> torch.Tensor:
        """Weights of shape (*y.shape[:-1], C, index + 2) generated from block ``index``'s output ``y``.

        When training, the generator is recomputed in the backward pass (non-reentrant activation checkpointing),
        so its normalised input and hidden activations are not kept: training stores only the block outputs.
        """
        if torch.is_grad_enabled() and not torch.jit.is_scripting() and not isinstance(y, torch.fx.Proxy):
            return checkpoint(self._generate, index, y, use_reentrant=False)
        return self._generate(index, y)

    def _truncate(self, depth: int) -> None:
        last = depth - 1
        for name in ('w1', 'w2', 'bias'):
            setattr(self, name, nn.ParameterList(list(getattr(self, name))[:depth]))
        if self.num_streams > 1:  # the last kept block now feeds only the residual stream (the last one)
            w2, bias = self.w2[last], self.bias[last]
            inputs = last + 2
            self.w2[last] = nn.Parameter(w2.detach()[-inputs:].clone(), requires_grad=w2.requires_grad)
            self.bias[last] = nn.Parameter(bias.detach()[-1:].clone(), requires_grad=bias.requires_grad)

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        """Run the blocks; the state after a block is its last stream (the residual one, or the single one)."""
        depth = self.blocks_to_run(depth)
        outputs = [x]
        streams = [x]
        for i in range(depth):
            if len(streams) == 1:
                y = runner.run_block(i, streams[0])
            else:
                y = runner.run_block_streams(i, *streams)
            outputs.append(y)
            weights = self.dynamic_weights(i, y)
            count = self.streams_after(i)
            # stopping early, only the residual stream (the state after this block) is needed
            wanted = range(count) if i < depth - 1 else range(count - 1, count)
            streams = [weighted_sum(outputs, weights[..., c, :], per_position=True) for c in wanted]
            _tap(taps, i, streams[-1])
        return streams[-1]

    def extra_repr(self) -> str:
        return f'num_blocks={self.num_blocks}, dim={self.dim}, num_streams={self.num_streams}'


class ResidualInResidual(StageConnection):
    """Residual-in-residual groups (RCAN's RIR, SwinIR's RSTB) over a stage of residual blocks.

    Blocks are grouped in groups of ``group_size``. Group k maps its input x to x + s * P_k(G_k(x)), where
    G_k(x) = blocks(x) - x is the group's residual branch, P_k a projection (``'linear'``: a 1x1 map over
    channels; ``'conv3x3'``: a 3x3 convolution on the 2-D map) and s = ``residual_scale``. With ``long_skip`` the
    whole stage is wrapped the same way once more. Every P starts as I / s, so the stage starts as the plain one.
    """
    kind = 'rir'

    def __init__(
            self,
            num_blocks: int,
            dim: int,
            group_size: int = 2,
            projection: str = 'linear',
            long_skip: bool = False,
            residual_scale: float = 1.0,
            layout: str = 'NHWC',
            device=None,
            dtype=None,
    ):
        super().__init__(num_blocks)
        self.dim = _check_int('dim', dim, 1, 'a positive integer')
        self.group_size = _check_int('group_size', group_size, 1, 'a positive integer')
        if num_blocks % group_size:
            divisors = [d for d in range(1, num_blocks + 1) if num_blocks % d == 0]
            raise ValueError(f'group_size={group_size} does not divide the {num_blocks} blocks of the stage; '
                             f'group_size must be one of {divisors}')
        if projection not in ('linear', 'conv3x3'):
            raise ValueError(f"projection={projection!r} is not allowed; choose 'linear' or 'conv3x3'")
        self.layout = _check_layout(layout)
        if projection == 'conv3x3' and layout == 'NLC':
            raise ValueError("projection='conv3x3' needs a 2-D feature map; layout='NLC' has none, use 'linear'")
        if not residual_scale or not math.isfinite(residual_scale):
            raise ValueError(f'residual_scale={residual_scale!r} is not allowed; it must be a finite non-zero number')
        self.projection = projection
        self.long_skip = bool(long_skip)
        self.residual_scale = float(residual_scale)
        num_proj = num_blocks // group_size + int(self.long_skip)
        kernel = (3, 3) if projection == 'conv3x3' else ()
        self.weight = nn.ParameterList([
            nn.Parameter(torch.empty(dim, dim, *kernel, device=device, dtype=dtype)) for _ in range(num_proj)])
        self.bias = nn.ParameterList([
            nn.Parameter(torch.empty(dim, device=device, dtype=dtype)) for _ in range(num_proj)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for weight, bias in zip(self.weight, self.bias):
                weight.zero_()
                eye = torch.eye(self.dim, device=weight.device, dtype=weight.dtype) / self.residual_scale
                if weight.dim() == 4:
                    weight[:, :, 1, 1] = eye
                else:
                    weight.copy_(eye)
                bias.zero_()

    def project(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Apply projection ``index`` to features in this connection's layout."""
        weight, bias = self.weight[index], self.bias[index]
        if self.projection == 'linear':
            if self.layout == 'NCHW':
                return F.conv2d(x, weight[:, :, None, None], bias)
            return F.linear(x, weight, bias)
        if self.layout == 'NHWC':
            return F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)
        return F.conv2d(x, weight, bias, padding=1)

    def _skip(self, index: int, x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        branch = self.project(index, x_out - x_in)
        if self.residual_scale != 1.:
            branch = branch * self.residual_scale
        return x_in + branch

    def _truncate(self, depth: int) -> None:
        # complete groups keep their projection; a trailing partial group and the long skip are left open
        groups = depth // self.group_size
        self.weight = nn.ParameterList(list(self.weight)[:groups])
        self.bias = nn.ParameterList(list(self.bias)[:groups])
        self.long_skip = False

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        stage_input = group_input = x
        for i in range(self.blocks_to_run(depth)):
            x = runner.run_block(i, x)
            if (i + 1) % self.group_size == 0:
                x = self._skip(i // self.group_size, group_input, x)
                group_input = x
            if self.long_skip and i == self.num_blocks - 1:
                x = self._skip(len(self.weight) - 1, stage_input, x)
            _tap(taps, i, x)
        return x

    def extra_repr(self) -> str:
        return (f'num_blocks={self.num_blocks}, dim={self.dim}, group_size={self.group_size}, '
                f'projection={self.projection!r}, long_skip={self.long_skip}, residual_scale={self.residual_scale}')


class DenseConcat(StageConnection):
    """DenseNet-style concatenation with growth rate g and 1x1 fusion, starting as the plain stage.

    The stage keeps F = [x_0, T_1(X_1), ..., T_i(X_i)]: the stage input at full width and every block output
    reduced to g channels by a transition T_i (a 1x1 projection). After block i the next block receives
    X_i + Fuse_i(F) where Fuse_i is a 1x1 projection from D + i*g channels to D; the fusion after the last block is
    the local feature fusion, added to the stage output. The fusions start at 0, so the stage starts as the plain
    one. Features are channels-last (``layout`` 'NHWC' or 'NLC'); the concatenation is never materialised.
    """
    kind = 'dense'

    def __init__(
            self,
            num_blocks: int,
            dim: int,
            growth: int = 32,
            layout: str = 'NHWC',
            device=None,
            dtype=None,
    ):
        super().__init__(num_blocks)
        self.dim = _check_int('dim', dim, 1, 'a positive integer')
        self.growth = _check_int('growth', growth, 1, 'a positive integer')
        self.layout = _check_layout(layout, ('NHWC', 'NLC'))
        dd = dict(device=device, dtype=dtype)
        self.transition_weight = nn.ParameterList([
            nn.Parameter(torch.empty(growth, dim, **dd)) for _ in range(num_blocks)])
        self.transition_bias = nn.ParameterList([
            nn.Parameter(torch.empty(growth, **dd)) for _ in range(num_blocks)])
        self.fuse_weight = nn.ParameterList([
            nn.Parameter(torch.empty(dim, dim + (i + 1) * growth, **dd)) for i in range(num_blocks)])
        self.fuse_bias = nn.ParameterList([nn.Parameter(torch.empty(dim, **dd)) for _ in range(num_blocks)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for weight in self.transition_weight:
                trunc_normal_(weight, std=.02)
            for param in [*self.transition_bias, *self.fuse_weight, *self.fuse_bias]:
                param.zero_()

    def _truncate(self, depth: int) -> None:
        for name in ('transition_weight', 'transition_bias', 'fuse_weight', 'fuse_bias'):
            setattr(self, name, nn.ParameterList(list(getattr(self, name))[:depth]))

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        features = [x]
        for i in range(self.blocks_to_run(depth)):
            y = runner.run_block(i, x)
            features.append(F.linear(y, self.transition_weight[i], self.transition_bias[i]))
            widths = [self.dim] + [self.growth] * (i + 1)
            x = y + linear_over_chunks(features, widths, self.fuse_weight[i], self.fuse_bias[i])
            _tap(taps, i, x)
        return x

    def extra_repr(self) -> str:
        return f'num_blocks={self.num_blocks}, dim={self.dim}, growth={self.growth}'


class ReZero(StageConnection):
    """ReZero: x_i = x_{i-1} + alpha_i * f_i(x_{i-1}), f_i the block's residual branch B_i(x) - x.

    ``init`` is the initial alpha, 0 as in the paper (the stage then starts as the identity map); 1 starts as the
    plain stage.
    """
    kind = 'rezero'

    def __init__(self, num_blocks: int, init: float = 0., device=None, dtype=None):
        super().__init__(num_blocks)
        self.init = float(init)
        self.alpha = nn.Parameter(torch.empty(num_blocks, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.init)

    def no_weight_decay_names(self) -> List[str]:
        return ['alpha']

    def _truncate(self, depth: int) -> None:
        self.alpha = _leading(self.alpha, depth)

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        for i in range(self.blocks_to_run(depth)):
            x = torch.lerp(x, runner.run_block(i, x), self.alpha[i])
            _tap(taps, i, x)
        return x

    def extra_repr(self) -> str:
        return f'num_blocks={self.num_blocks}, init={self.init}'


class LAuReL(StageConnection):
    """LAuReL (Menghani et al., ICML 2025) on each block: x_i = alpha f(x) + beta (x + B A x), with x = x_{i-1}.

    f is the block's residual branch B_i(x) - x. ``variant`` 'rw+lr' (the paper's eq. 5, used for ResNet-50),
    'rw' (learned residual weights alpha, beta only) or 'lr' (alpha = beta = 1 fixed, low-rank term only). A maps
    D -> ``rank`` (Xavier init, as for the paper's vision runs), B maps ``rank`` -> D and starts at zero (as in the
    paper); alpha and beta start at 1, so the stage starts as the plain one. The paper suggests bounding alpha and
    beta with a softmax or sigmoid but gives no initial values; they are kept raw here so that the connected network
    starts exactly as the plain one, and are excluded from weight decay.
    """
    kind = 'laurel'

    def __init__(
            self,
            num_blocks: int,
            dim: int,
            rank: int = 16,
            variant: str = 'rw+lr',
            device=None,
            dtype=None,
    ):
        super().__init__(num_blocks)
        self.dim = _check_int('dim', dim, 1, 'a positive integer')
        if variant not in ('rw+lr', 'rw', 'lr'):
            raise ValueError(f"variant={variant!r} is not allowed; choose 'rw+lr', 'rw' or 'lr'")
        self.variant = variant
        dd = dict(device=device, dtype=dtype)
        self.rank = _check_int('rank', rank, 1, 'a positive integer') if 'lr' in variant else 0
        if 'rw' in variant:
            self.alpha = nn.Parameter(torch.empty(num_blocks, **dd))
            self.beta = nn.Parameter(torch.empty(num_blocks, **dd))
        else:
            self.register_parameter('alpha', None)
            self.register_parameter('beta', None)
        if self.rank:
            self.down = nn.ParameterList([nn.Parameter(torch.empty(rank, dim, **dd)) for _ in range(num_blocks)])
            self.up = nn.ParameterList([nn.Parameter(torch.empty(dim, rank, **dd)) for _ in range(num_blocks)])
        else:
            self.down, self.up = None, None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.alpha is not None:
                self.alpha.fill_(1.)
                self.beta.fill_(1.)
            if self.rank:
                for down, up in zip(self.down, self.up):
                    nn.init.xavier_uniform_(down)
                    up.zero_()

    def no_weight_decay_names(self) -> List[str]:
        return ['alpha', 'beta'] if self.alpha is not None else []

    def _truncate(self, depth: int) -> None:
        if self.alpha is not None:
            self.alpha, self.beta = _leading(self.alpha, depth), _leading(self.beta, depth)
        if self.rank:
            self.down = nn.ParameterList(list(self.down)[:depth])
            self.up = nn.ParameterList(list(self.up)[:depth])

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        for i in range(self.blocks_to_run(depth)):
            branch = runner.run_block(i, x) - x
            skip = x
            if self.rank:
                skip = x + F.linear(F.linear(x, self.down[i]), self.up[i])
            if self.alpha is not None:
                x = branch * self.alpha[i] + skip * self.beta[i]
            else:
                x = branch + skip
            _tap(taps, i, x)
        return x

    def extra_repr(self) -> str:
        return f'num_blocks={self.num_blocks}, dim={self.dim}, variant={self.variant!r}, rank={self.rank}'


class ValueResidual(StageConnection):
    """ResFormer's value residual: attention blocks after the first mix in the first block's values.

    Block i > 0 uses V_i <- (1 - lambda_i) V_i + lambda_i V_1 as its attention values, V_1 being the first block's
    value projection (before the head split). ``lambda_init`` = 0.5 is the official ResFormer setting
    (V_i <- 0.5 V_i + 0.5 V_1); with ``learnable`` the lambdas are trained from there (the paper's learnable
    variant), otherwise they stay fixed. The runner must provide ``run_block_values``. A single-block connection
    has no lambda to learn; its (empty) ``weights`` are then a buffer.
    """
    kind = 'value_residual'
    requires = 'values'

    def __init__(
            self,
            num_blocks: int,
            lambda_init: float = 0.5,
            learnable: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__(num_blocks)
        if not 0. <= lambda_init <= 1.:
            raise ValueError(f'lambda_init={lambda_init!r} is not allowed; it must lie in [0, 1]')
        self.lambda_init = float(lambda_init)
        self.learnable = bool(learnable)
        self._set_weights(torch.empty(num_blocks - 1, device=device, dtype=dtype))
        self.reset_parameters()

    def _set_weights(self, weights: torch.Tensor) -> None:
        """Hold the lambdas: a parameter when learnable (and not empty), else a buffer."""
        if 'weights' in self._parameters or 'weights' in self._buffers:
            delattr(self, 'weights')
        if self.learnable and weights.numel():
            self.weights = nn.Parameter(weights)
        else:
            self.register_buffer('weights', weights)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weights.fill_(self.lambda_init)

    def no_weight_decay_names(self) -> List[str]:
        return ['weights'] if isinstance(self.weights, nn.Parameter) else []

    def _truncate(self, depth: int) -> None:
        frozen = not self.weights.requires_grad
        self._set_weights(self.weights.detach()[:depth - 1].clone())
        if frozen and isinstance(self.weights, nn.Parameter):
            self.weights.requires_grad_(False)

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        x, first_values = runner.run_block_values(0, x, None, None)
        _tap(taps, 0, x)
        for i in range(1, self.blocks_to_run(depth)):
            x, _ = runner.run_block_values(i, x, first_values, self.weights[i - 1])
            _tap(taps, i, x)
        return x

    def extra_repr(self) -> str:
        return f'num_blocks={self.num_blocks}, lambda_init={self.lambda_init}, learnable={self.learnable}'


class DenseResidualInResidual(StageConnection):
    """Residual-in-residual groups over the concatenating blocks of a dense stage (RDNet's): ``rir`` there.

    The runner provides ``run_dense_block(index, features)``, the growth of block ``index`` on the concatenation of
    ``features``. After each group of ``group_size`` blocks, the features F the group read and the N it added
    become [F, 0] + s * P(N), with P a linear (1x1) or 3x3 projection that starts as [0; I / s]: the plain stage.
    The state after a block is the concatenation of the features at that point.

    Args:
        num_blocks: Blocks of the stage.
        in_chs: Channels of the stage input.
        growth: Channels each block adds.
        group_size: Blocks per group; must divide ``num_blocks``. None: the whole stage is one group.
        projection: ``'linear'`` (1x1 convolution) or ``'conv3x3'``.
        residual_scale: s in [F, 0] + s * P(N).
    """
    kind = 'rir'

    def __init__(
            self,
            num_blocks: int,
            in_chs: int,
            growth: int,
            group_size: Optional[int] = None,
            projection: str = 'linear',
            residual_scale: float = 1.0,
            device=None,
            dtype=None,
    ):
        super().__init__(num_blocks)
        group_size = num_blocks if group_size is None else group_size
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or num_blocks % group_size:
            divisors = [d for d in range(1, num_blocks + 1) if num_blocks % d == 0]
            raise ValueError(f'group_size={group_size!r} does not divide the {num_blocks} blocks of the stage; '
                             f'group_size must be one of {divisors} (or None for one group)')
        if projection not in ('linear', 'conv3x3'):
            raise ValueError(f"projection={projection!r} is not allowed; choose 'linear' or 'conv3x3'")
        if not residual_scale or not math.isfinite(residual_scale):
            raise ValueError(f'residual_scale={residual_scale!r} is not allowed; it must be a finite non-zero number')
        self.in_chs, self.growth, self.group_size = in_chs, growth, group_size
        self.projection, self.residual_scale = projection, float(residual_scale)
        kernel = (3, 3) if projection == 'conv3x3' else (1, 1)
        new = group_size * growth
        groups = num_blocks // group_size
        self.weight = nn.ParameterList([
            nn.Parameter(torch.empty(self.group_out_chs(k), new, *kernel, device=device, dtype=dtype))
            for k in range(groups)])
        self.bias = nn.ParameterList([
            nn.Parameter(torch.empty(self.group_out_chs(k), device=device, dtype=dtype)) for k in range(groups)])
        self.reset_parameters()

    def group_out_chs(self, group: int) -> int:
        """Channels of the features after group ``group``."""
        return self.in_chs + (group + 1) * self.group_size * self.growth

    def reset_parameters(self) -> None:
        with torch.no_grad():
            new = self.group_size * self.growth
            for weight, bias in zip(self.weight, self.bias):
                weight.zero_()
                centre = weight[-new:, :, weight.shape[2] // 2, weight.shape[3] // 2]
                centre.copy_(torch.eye(new, device=weight.device, dtype=weight.dtype) / self.residual_scale)
                bias.zero_()

    def _truncate(self, depth: int) -> None:
        groups = depth // self.group_size  # a group cut short keeps its blocks' features unprojected
        self.weight = nn.ParameterList(list(self.weight)[:groups])
        self.bias = nn.ParameterList(list(self.bias)[:groups])

    def _skip(self, group: int, read: torch.Tensor, new: torch.Tensor) -> List[torch.Tensor]:
        """[read, 0] + s * P(new), as the two pieces (read channels, new channels)."""
        padding = 1 if self.projection == 'conv3x3' else 0
        projected = F.conv2d(new, self.weight[group], self.bias[group], padding=padding)
        if self.residual_scale != 1.:
            projected = projected * self.residual_scale
        width = self.group_out_chs(group) - self.group_size * self.growth
        return [read + projected[:, :width], projected[:, width:]]

    def forward(self, x: torch.Tensor, runner, depth: Optional[int] = None, taps: Taps = None) -> torch.Tensor:
        features = [x]
        for i in range(self.blocks_to_run(depth)):
            features.append(runner.run_dense_block(i, features))
            if (i + 1) % self.group_size == 0 and i // self.group_size < len(self.weight):
                read, new = features[:-self.group_size], features[-self.group_size:]
                features = self._skip(i // self.group_size, torch.cat(read, 1), torch.cat(new, 1))
            if taps is not None and i in taps:
                taps[i] = torch.cat(features, 1)
        return torch.cat(features, 1)

    def extra_repr(self) -> str:
        return (f'num_blocks={self.num_blocks}, in_chs={self.in_chs}, growth={self.growth}, '
                f'group_size={self.group_size}, projection={self.projection!r}, residual_scale={self.residual_scale}')


_CONNECTIONS: Dict[str, type] = {
    cls.kind: cls for cls in (
        Residual, DepthWeightedAverage, MultiwayDynamicDense, ResidualInResidual, DenseConcat, LAuReL, ReZero,
        ValueResidual)
}
CONNECTION_KINDS: Tuple[str, ...] = tuple(_CONNECTIONS)

# arguments a family supplies from the stage it rewires, never set by users
_STAGE_ARGS = ('self', 'num_blocks', 'dim', 'layout', 'device', 'dtype')


def _connection_class(kind: str) -> type:
    if kind not in _CONNECTIONS:
        raise ValueError(f'unknown connection kind {kind!r}; choose one of {", ".join(CONNECTION_KINDS)}')
    return _CONNECTIONS[kind]


def connection_options(kind: str) -> Dict[str, object]:
    """User-settable options of connection ``kind`` with their defaults."""
    params = inspect.signature(_connection_class(kind).__init__).parameters
    return {name: p.default for name, p in params.items() if name not in _STAGE_ARGS}


def create_connection(
        kind: str,
        num_blocks: int,
        dim: int,
        layout: str = 'NHWC',
        device=None,
        dtype=None,
        **options,
) -> StageConnection:
    """Build the connection ``kind`` for a stage of ``num_blocks`` blocks of width ``dim``.

    Raises ``ValueError`` for an unknown kind, an option the kind does not take, or an option value it cannot use.
    """
    cls = _connection_class(kind)
    allowed = connection_options(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        choices = ', '.join(allowed) if allowed else 'none'
        raise ValueError(f'option {unknown[0]!r} does not apply to connection {kind!r}; its options are: {choices}')
    params = inspect.signature(cls.__init__).parameters
    stage_args = dict(num_blocks=num_blocks, dim=dim, layout=layout, device=device, dtype=dtype)
    kwargs = {name: value for name, value in stage_args.items() if name in params}
    return cls(**kwargs, **options)
