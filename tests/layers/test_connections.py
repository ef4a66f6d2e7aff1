"""Connection semantics against direct, slow references written here from the definitions in the design.

Each reference keeps the stage's outputs in a Python list and evaluates the defining sums with explicit loops,
``torch.stack`` and ``torch.cat``; the library must agree with it for random (non-identity) connection parameters,
start exactly as the plain stage where the design says so, pass gradients to every connection parameter, have the
parameter counts given by formula, and never concatenate past outputs.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from densezoo.layers import connections as C
from densezoo.profile import TensorMemoryTracker

DIM = 16


class ToyAttentionBlock(nn.Module):
    """Pre-norm residual block with an attention whose query, key and value inputs may differ."""

    def __init__(self, dim: int = DIM):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def attention(self, q_in, k_in, v_in, first_values=None, weight=None):
        shape = q_in.shape
        q = self.q(self.norm1(q_in)).flatten(1, -2)
        k = self.k(self.norm1(k_in)).flatten(1, -2)
        values = self.v(self.norm1(v_in)).flatten(1, -2)
        v = values if first_values is None else torch.lerp(values, first_values, weight)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out).reshape(shape), values

    def forward_streams(self, q_in, k_in, v_in, residual):
        x = residual + self.attention(q_in, k_in, v_in)[0]
        return x + self.mlp(self.norm2(x))

    def forward_values(self, x, first_values, weight):
        attn, values = self.attention(x, x, x, first_values, weight)
        x = x + attn
        return x + self.mlp(self.norm2(x)), values

    def forward(self, x):
        return self.forward_streams(x, x, x, x)


class ToyStage(nn.Module):
    """A runner over toy blocks, counting which entry points the connection used."""

    def __init__(self, num_blocks: int, dim: int = DIM):
        super().__init__()
        self.blocks = nn.ModuleList(ToyAttentionBlock(dim) for _ in range(num_blocks))
        self.calls = []

    def run_block(self, index, x):
        self.calls.append(('block', index))
        return self.blocks[index](x)

    def run_block_streams(self, index, q, k, v, r):
        self.calls.append(('streams', index))
        return self.blocks[index].forward_streams(q, k, v, r)

    def run_block_values(self, index, x, first_values, weight):
        self.calls.append(('values', index))
        return self.blocks[index].forward_values(x, first_values, weight)

    def plain(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def make(kind, num_blocks=6, dim=DIM, **options):
    torch.manual_seed(0)
    stage = ToyStage(num_blocks, dim)
    connection = C.create_connection(kind, num_blocks=num_blocks, dim=dim, **options)
    return stage, connection


def randomize(module: nn.Module, std: float = 0.3) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


def x_input(dim=DIM, requires_grad=False):
    torch.manual_seed(2)
    return torch.randn(2, 3, 5, dim, requires_grad=requires_grad)


# ----------------------------------------------------------------------------------------------------------------
# direct references

def dwa_reference(stage, conn, x):
    outs, k, p = [x], conn.dilation, conn.period
    for i, block in enumerate(stage.blocks):
        outs.append(block(x))
        if (i + 1) % p:
            x = outs[-1]
            continue
        alphas = conn.alphas[str(i)]
        chosen = [j for j in range(i + 2) if j % k == (i + 1) % k]
        assert len(chosen) == alphas.numel()
        x = sum(alphas[n] * outs[j] for n, j in enumerate(chosen))
    return x


def mudd_reference(stage, conn, x):
    outs, streams = [x], [x]
    for i, block in enumerate(stage.blocks):
        y = block(streams[0]) if len(streams) == 1 else block.forward_streams(*streams)
        outs.append(y)
        normed = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + conn.eps)
        hidden = F.gelu(normed @ conn.w1[i].t())
        c, n = conn.bias[i].shape
        w = (hidden @ conn.w2[i].t()).reshape(*y.shape[:-1], c, n) + conn.bias[i]
        stacked = torch.stack(outs, -2)  # (..., n, D)
        streams = list(torch.einsum('...cn,...nd->c...d', w, stacked).unbind(0))
    return streams[0]


def rir_reference(stage, conn, x):
    def project(index, t):
        w, b = conn.weight[index], conn.bias[index]
        if w.dim() == 2:
            return t @ w.t() + b
        return F.conv2d(t.permute(0, 3, 1, 2), w, b, padding=1).permute(0, 2, 3, 1)

    stage_in, g, s = x, conn.group_size, conn.residual_scale
    for group in range(len(stage.blocks) // g):
        group_in = x
        for block in stage.blocks[group * g:(group + 1) * g]:
            x = block(x)
        x = group_in + s * project(group, x - group_in)
    if conn.long_skip:
        x = stage_in + s * project(len(conn.weight) - 1, x - stage_in)
    return x


def dense_reference(stage, conn, x):
    features = [x]
    for i, block in enumerate(stage.blocks):
        y = block(x)
        features.append(y @ conn.transition_weight[i].t() + conn.transition_bias[i])
        x = y + torch.cat(features, -1) @ conn.fuse_weight[i].t() + conn.fuse_bias[i]
    return x


def laurel_reference(stage, conn, x):
    for i, block in enumerate(stage.blocks):
        f = block(x) - x
        alpha = conn.alpha[i] if conn.alpha is not None else 1.
        beta = conn.beta[i] if conn.beta is not None else 1.
        low_rank = x @ conn.down[i].t() @ conn.up[i].t() if conn.rank else 0.
        x = alpha * f + beta * (x + low_rank)
    return x


def rezero_reference(stage, conn, x):
    for i, block in enumerate(stage.blocks):
        x = x + conn.alpha[i] * (block(x) - x)
    return x


def value_residual_reference(stage, conn, x):
    first = None
    for i, block in enumerate(stage.blocks):
        if i == 0:
            x, first = block.forward_values(x, None, None)
        else:
            lam = conn.weights[i - 1]
            x, _ = block.forward_values(x, first, lam)
    return x


REFERENCES = {
    'dwa': dwa_reference, 'mudd': mudd_reference, 'rir': rir_reference, 'dense': dense_reference,
    'laurel': laurel_reference, 'rezero': rezero_reference, 'value_residual': value_residual_reference,
}

CASES = [
    ('dwa', {}), ('dwa', dict(dilation=2)), ('dwa', dict(period=2)), ('dwa', dict(dilation=3, period=2)),
    ('dwa', dict(dilation=4, period=5)),
    ('mudd', {}), ('mudd', dict(num_streams=4)), ('mudd', dict(hidden_dim=8)),
    ('rir', {}), ('rir', dict(group_size=3, long_skip=True)), ('rir', dict(projection='conv3x3')),
    ('rir', dict(group_size=1, long_skip=True, residual_scale=0.2)),
    ('dense', {}), ('dense', dict(growth=8)),
    ('laurel', {}), ('laurel', dict(variant='rw')), ('laurel', dict(variant='lr', rank=4)),
    ('rezero', {}), ('rezero', dict(init=0.5)),
    ('value_residual', {}), ('value_residual', dict(learnable=False, lambda_init=0.25)),
]


def _case_id(case):
    kind, options = case
    return kind + ''.join(f'-{k}={v}' for k, v in options.items())


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_matches_reference(case):
    kind, options = case
    num_blocks = 10 if options.get('period') == 5 else 6
    stage, conn = make(kind, num_blocks=num_blocks, **options)
    randomize(conn)
    # float64: random mixing weights amplify rounding, and semantics are what is compared here
    stage, conn, x = stage.double(), conn.double(), x_input().double()
    with torch.no_grad():
        out = conn(x, stage)
        ref = REFERENCES[kind](stage, conn, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert (out - stage.plain(x)).abs().max() > 1e-3, 'random connection parameters must change the output'


@pytest.mark.parametrize('case', [c for c in CASES if c[0] not in ('rezero', 'value_residual')], ids=_case_id)
def test_starts_as_plain_stage(case):
    kind, options = case
    num_blocks = 10 if options.get('period') == 5 else 6
    stage, conn = make(kind, num_blocks=num_blocks, **options)
    x = x_input()
    with torch.no_grad():
        delta = (conn(x, stage) - stage.plain(x)).abs().max().item()
    assert delta <= 1e-6


def test_rezero_starts_as_identity_map_or_plain():
    stage, conn = make('rezero')
    x = x_input()
    with torch.no_grad():
        assert torch.equal(conn(x, stage), x)
        _, conn_one = make('rezero', init=1.)
        torch.testing.assert_close(conn_one(x, stage), stage.plain(x), rtol=0, atol=1e-6)


def test_value_residual_mixes_first_values_from_block_one_on():
    stage, conn = make('value_residual', num_blocks=4)
    x = x_input()
    with torch.no_grad():
        out = conn(x, stage)
    assert stage.calls == [('values', i) for i in range(4)]
    assert torch.allclose(conn.weights, torch.full((3,), 0.5))
    assert (out - stage.plain(x)).abs().max() > 1e-3  # ResFormer is not the plain network at initialisation


@pytest.mark.parametrize('kind', ['dwa', 'mudd', 'rir', 'dense', 'laurel'])
def test_identity_survives_reinitialisation(kind):
    """timm-style and user-style re-initialisation keep (or restore) the identity start."""
    stage, conn = make(kind)
    x = x_input()
    randomize(conn)

    def user_init(module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.5)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)

    conn.apply(user_init)
    with torch.no_grad():
        assert (conn(x, stage) - stage.plain(x)).abs().max() > 1e-3
    conn.reset_parameters()
    conn.apply(user_init)
    with torch.no_grad():
        assert (conn(x, stage) - stage.plain(x)).abs().max() <= 1e-6


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_gradients_reach_every_connection_parameter(case):
    kind, options = case
    stage, conn = make(kind, num_blocks=10 if options.get('period') == 5 else 6, **options)
    x = x_input(requires_grad=True)
    conn(x, stage).square().mean().backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None, f'{name} gets no gradient at initialisation'
    # away from the identity start every parameter receives a non-zero gradient
    conn.zero_grad(set_to_none=True)
    randomize(conn)
    conn(x, stage).square().mean().backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name
    assert x.grad is not None and torch.isfinite(x.grad).all()


class RecordingStage(ToyStage):
    """A toy runner that records the residual input each block receives."""

    def __init__(self, num_blocks: int, dim: int = DIM):
        super().__init__(num_blocks, dim)
        self.inputs = {}

    def run_block(self, index, x):
        self.inputs[index] = x
        return super().run_block(index, x)

    def run_block_streams(self, index, q, k, v, r):
        self.inputs[index] = r
        return super().run_block_streams(index, q, k, v, r)

    def run_block_values(self, index, x, first_values, weight):
        self.inputs[index] = x
        return super().run_block_values(index, x, first_values, weight)


def _case_blocks(options):
    return 10 if options.get('period') == 5 else 6


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_taps_are_the_states_passed_on_and_truncation_keeps_them(case):
    """The state after block i is the residual input of block i + 1 (MUDD: the residual stream) and the output of
    the connection run to depth i + 1 or truncated to i + 1 blocks; the last state is the stage output."""
    kind, options = case
    num_blocks = _case_blocks(options)
    _, conn = make(kind, num_blocks=num_blocks, **options)
    randomize(conn)
    torch.manual_seed(0)
    stage = RecordingStage(num_blocks)
    stage, conn, x = stage.double(), conn.double(), x_input().double()
    taps = dict.fromkeys(range(num_blocks))
    with torch.no_grad():
        out = conn(x, stage, taps=taps)
        assert torch.equal(out, conn(x, stage)) and torch.equal(taps[num_blocks - 1], out)
        for i in range(num_blocks - 1):
            assert torch.equal(taps[i], stage.inputs[i + 1]), i
        for depth in range(1, num_blocks + 1):
            short = conn.truncated(depth)
            assert short.num_blocks == depth and (short is conn) == (depth == num_blocks)
            torch.testing.assert_close(conn(x, stage, depth=depth), taps[depth - 1], rtol=0, atol=0)
            torch.testing.assert_close(short(x, stage), taps[depth - 1], rtol=1e-12, atol=1e-12)
            assert [c[1] for c in stage.calls[-depth:]] == list(range(depth))


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_truncation_shares_kept_parameters_and_every_one_is_used(case):
    kind, options = case
    stage, conn = make(kind, num_blocks=_case_blocks(options), **options)
    randomize(conn)
    full = {id(p) for p in conn.parameters()}
    short = conn.truncated(3)
    assert sum(id(p) in full for p in short.parameters()) >= len(list(short.parameters())) - 2
    short(x_input(), stage).square().mean().backward()
    for name, param in short.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert set(short.no_weight_decay_names()) <= {n for n, _ in short.named_parameters()}
    short.reset_parameters()  # re-initialisation keeps working on the truncated shapes


def test_truncated_shapes():
    mudd = C.MultiwayDynamicDense(5, DIM, num_streams=4).truncated(3)
    assert [tuple(b.shape) for b in mudd.bias] == [(4, 2), (4, 3), (1, 4)]
    assert [tuple(w.shape[:1]) for w in mudd.w2] == [(8,), (12,), (4,)]
    rir = C.ResidualInResidual(6, DIM, group_size=2, long_skip=True).truncated(5)
    assert len(rir.weight) == 2 and not rir.long_skip  # the trailing open group and the long skip are dropped
    dwa = C.DepthWeightedAverage(6, period=2).truncated(4)
    assert sorted(dwa.alphas.keys()) == ['1', '3']
    value = C.ValueResidual(4).truncated(1)
    assert value.weights.numel() == 0 and not list(value.parameters()) and value.no_weight_decay_names() == []


@pytest.mark.parametrize('depth', [0, 7, 2.0, True])
def test_depth_out_of_range_is_a_one_line_error(depth):
    stage, conn = make('dwa')
    for call in (lambda: conn(x_input(), stage, depth=depth), lambda: conn.truncated(depth)):
        with pytest.raises(ValueError, match=rf'^depth={depth!r} is not allowed; it must be an integer from 1 to '
                                             rf'6$') as info:
            call()
        assert '\n' not in str(info.value)


@pytest.mark.parametrize('num_blocks', [1, 2, 6, 12])
def test_dwa_parameter_count(num_blocks):
    conn = C.DepthWeightedAverage(num_blocks)
    assert sum(p.numel() for p in conn.parameters()) == num_blocks * (num_blocks + 3) // 2


@pytest.mark.parametrize('num_blocks, dilation, period, expected', [
    (12, 1, 1, 90), (12, 2, 1, 48), (24, 1, 1, 324), (48, 1, 1, 1224), (48, 2, 1, 624), (48, 4, 5, 62),
    (72, 1, 1, 2700)])
def test_dwa_parameter_count_matches_denseformer(num_blocks, dilation, period, expected):
    """Counts of DenseFormer's DWAModules(n_blocks, dilation, period) (anchors.md section 7)."""
    conn = C.DepthWeightedAverage(num_blocks, dilation=dilation, period=period)
    assert sum(p.numel() for p in conn.parameters()) == expected == C.dwa_num_weights(num_blocks, dilation, period)


def test_dwa_dilation_and_period_choose_the_averaged_outputs():
    conn = C.DepthWeightedAverage(6, dilation=2, period=3)
    # averaging after blocks 2 and 5 (0-based); after block 2 X_1, X_3 (odd), after block 5 X_0, X_2, X_4, X_6
    assert {k: v.numel() for k, v in conn.alphas.items()} == {'2': 2, '5': 4}


@pytest.mark.parametrize('dim, streams, expected_generators, expected_biases', [
    (768, 4, 610_368, 321), (384, 4, 315_456, 321)])
def test_mudd_parameter_count_matches_muddformer(dim, streams, expected_generators, expected_biases):
    """12-layer MUDDFormer overheads for ViT-B/ViT-S widths (anchors.md section 7, computed from the official code)."""
    conn = C.MultiwayDynamicDense(12, dim, num_streams=streams)
    generators = sum(p.numel() for n, p in conn.named_parameters() if not n.startswith('bias'))
    biases = sum(p.numel() for n, p in conn.named_parameters() if n.startswith('bias'))
    assert (generators, biases) == (expected_generators, expected_biases)


def test_mudd_streams_feed_query_key_value_and_residual():
    stage, conn = make('mudd', num_blocks=3, num_streams=4)
    conn(x_input(), stage)
    assert stage.calls == [('block', 0), ('streams', 1), ('streams', 2)]
    assert [tuple(b.shape) for b in conn.bias] == [(4, 2), (4, 3), (1, 4)]


@pytest.mark.parametrize('dim, num_blocks, group_size, long_skip, projection', [
    (16, 6, 2, False, 'linear'), (16, 6, 3, True, 'linear'), (8, 4, 2, True, 'conv3x3')])
def test_rir_parameter_count(dim, num_blocks, group_size, long_skip, projection):
    conn = C.ResidualInResidual(num_blocks, dim, group_size=group_size, long_skip=long_skip, projection=projection)
    per_projection = dim * dim * (9 if projection == 'conv3x3' else 1) + dim
    assert sum(p.numel() for p in conn.parameters()) == (num_blocks // group_size + long_skip) * per_projection


def test_dense_parameter_count():
    dim, growth, num_blocks = 16, 4, 5
    conn = C.DenseConcat(num_blocks, dim, growth=growth)
    transitions = num_blocks * (dim * growth + growth)
    fusions = sum(dim * (dim + (i + 1) * growth) + dim for i in range(num_blocks))
    assert sum(p.numel() for p in conn.parameters()) == transitions + fusions


def test_laurel_parameter_count():
    conn = C.LAuReL(4, 16, rank=3)
    assert sum(p.numel() for p in conn.parameters()) == 4 * (2 + 2 * 3 * 16)


def _allocated_elements(kind, num_blocks, **options):
    stage, conn = make(kind, num_blocks=num_blocks, **options)
    x = x_input()
    ops = []

    class Recorder(TensorMemoryTracker):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.__name__)
            return super().__torch_dispatch__(func, types, args, kwargs)

    with torch.no_grad():
        plain_tracker = Recorder()
        with plain_tracker:
            stage.plain(x)
        ops.clear()
        tracker = Recorder()
        with tracker:
            conn(x, stage)
    concatenations = [op for op in ops if op.split('.')[0] in ('cat', 'stack', '_cat')]
    return tracker._tracked, tracker.peak - plain_tracker.peak, concatenations


@pytest.mark.parametrize('kind', ['dwa', 'mudd', 'dense'])
def test_past_outputs_are_never_concatenated(kind):
    """No cat/stack, and the extra memory grows linearly with depth: L=16 costs about twice L=8."""
    _, extra_8, cats = _allocated_elements(kind, 8)
    _, extra_16, cats_16 = _allocated_elements(kind, 16)
    assert cats == cats_16 == []
    # storing the past outputs costs O(L); a concatenation per step would cost O(L^2) (ratio near 4)
    assert extra_16 <= 2.3 * extra_8, (extra_8, extra_16)


@pytest.mark.parametrize('kind, options, message', [
    ('dwa', dict(dilation=0), r"dilation=0 is not allowed; dilation must be a positive integer"),
    ('dwa', dict(period=-1), r"period=-1 is not allowed; period must be a positive integer"),
    ('dwa', dict(dilation=1.5), r"dilation=1.5 is not allowed"),
    ('rir', dict(group_size=4), r"group_size=4 does not divide the 6 blocks of the stage; group_size must be one "
                                r"of \[1, 2, 3, 6\]"),
    ('rir', dict(projection='conv5'), r"projection='conv5' is not allowed; choose 'linear' or 'conv3x3'"),
    ('rir', dict(residual_scale=0), r"residual_scale=0 is not allowed"),
    ('mudd', dict(num_streams=3), r"num_streams=3 is not allowed; num_streams must be 1 or 4"),
    ('dense', dict(growth=0), r"growth=0 is not allowed; growth must be a positive integer"),
    ('laurel', dict(variant='pa'), r"variant='pa' is not allowed"),
    ('value_residual', dict(lambda_init=2.), r"lambda_init=2.0 is not allowed; it must lie in \[0, 1\]"),
    ('dwa', dict(group_size=2), r"option 'group_size' does not apply to connection 'dwa'; its options are: "
                                r"dilation, period"),
    ('residual', dict(dilation=2), r"option 'dilation' does not apply to connection 'residual'; its options are: "
                                   r"none"),
    ('dwaa', {}, r"unknown connection kind 'dwaa'; choose one of residual, dwa, mudd, rir, dense, laurel, rezero, "
                 r"value_residual"),
])
def test_bad_options_raise_one_line_value_errors(kind, options, message):
    with pytest.raises(ValueError, match=message) as info:
        C.create_connection(kind, num_blocks=6, dim=DIM, **options)
    assert '\n' not in str(info.value)


def test_rir_conv_projection_needs_a_map():
    with pytest.raises(ValueError, match="projection='conv3x3' needs a 2-D feature map"):
        C.create_connection('rir', num_blocks=2, dim=DIM, layout='NLC', projection='conv3x3')


def test_weighted_sum_and_linear_over_chunks_helpers():
    torch.manual_seed(0)
    xs = [torch.randn(2, 3, 4, requires_grad=True) for _ in range(3)]
    per_position = torch.randn(2, 3, 3)
    scalars = torch.randn(3)
    torch.testing.assert_close(C.weighted_sum(xs, scalars), sum(s * x for s, x in zip(scalars, xs)))
    torch.testing.assert_close(
        C.weighted_sum(xs, per_position, per_position=True), sum(per_position[..., j:j + 1] * x for j, x in enumerate(xs)))
    chunks = [torch.randn(2, 3, 4), torch.randn(2, 3, 2), torch.randn(2, 3, 2)]
    weight, bias = torch.randn(5, 8), torch.randn(5)
    torch.testing.assert_close(C.linear_over_chunks(chunks, [4, 2, 2], weight, bias),
                               F.linear(torch.cat(chunks, -1), weight, bias))
    assert math.isclose(C.dwa_num_weights(6), 27)


def test_mixing_macs_count_one_multiply_add_per_term_and_element():
    assert C.DepthWeightedAverage(6).mixing_macs(10) == 10 * 27
    assert C.DepthWeightedAverage(6, dilation=2, period=3).mixing_macs(10) == 10 * (2 + 4)
    assert C.MultiwayDynamicDense(3, 8, num_streams=4).mixing_macs(10) == 10 * (4 * 2 + 4 * 3 + 1 * 4)
    assert C.ResidualInResidual(4, 8).mixing_macs(10) == 0  # its projections are matrix products
