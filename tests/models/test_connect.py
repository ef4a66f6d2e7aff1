"""``connect(plain, kind)`` gives the registered ``<plain>_<kind>`` model, for every family that connects.

Same class, parameters (names, shapes), ``no_weight_decay()``, ``group_matcher()``, input checks, truncation and,
loaded with the same weights, the same outputs (bitwise: the two run the same code).
"""
import copy

import pytest
import timm
import torch
from timm.models.rdnet import RDNet
from timm.models.vision_transformer import VisionTransformer

import densezoo
from densezoo.layers.connections import StageConnection
from densezoo.models.connect import ConnectedModel
from tests.helpers import one_line
from tests.models.reduced import reduced_args, reduced_input, reduced_model

#: (plain registered or timm model, a registered connection of its family): one per family
FAMILIES = [
    ('swin_tiny_patch4_window7_224', 'mudd'),
    ('swinv2_tiny_window8_256', 'rir'),
    ('vit_tiny_patch16_224', 'value_residual'),
    ('vit_small_patch16_224', 'mudd'),
    ('pvt_tiny', 'rir'),
    ('pvt_v2_b0', 'dense'),
    ('rdnet_tiny', 'rir'),
    ('rdnet_tiny', 'dwa'),
    ('lookupvit_tiny_patch16_224', 'mudd'),
    ('swinir_light_x2', 'dwa'),
    ('drct_x2', 'mudd'),
    ('hat_s_x2', 'dwa'),
]


def _pair(plain_name, kind):
    """The registered variant (moved connections) and ``connect`` applied to the plain model, same weights."""
    registered = reduced_model(f'{plain_name}_{kind}')
    _, args, _ = reduced_args(plain_name)
    torch.manual_seed(0)
    plain = timm.create_model(plain_name, **args)
    assert not isinstance(plain, ConnectedModel)
    connected = densezoo.connect(plain, kind, **registered.connection_args)
    connected.load_state_dict(registered.state_dict())
    return registered.eval(), connected.eval()


@pytest.mark.parametrize('plain_name, kind', FAMILIES)
def test_connect_gives_the_registered_model(plain_name, kind):
    registered, connected = _pair(plain_name, kind)
    assert type(connected) is type(registered)
    assert connected.connection_kind == registered.connection_kind == kind
    assert connected.connection_args == registered.connection_args
    assert [(n, p.shape) for n, p in connected.named_parameters()] == \
        [(n, p.shape) for n, p in registered.named_parameters()]
    assert connected.no_weight_decay() == registered.no_weight_decay()
    for coarse in (False, True):
        try:
            expected = registered.group_matcher(coarse)
        except AssertionError:  # timm's RDNet has no coarse grouping
            with pytest.raises(AssertionError):
                connected.group_matcher(coarse)
            continue
        assert connected.group_matcher(coarse) == expected
    x = reduced_input(plain_name, registered)
    with torch.no_grad():
        assert torch.equal(connected(x), registered(x))


@pytest.mark.parametrize('plain_name, kind', FAMILIES)
def test_connect_installs_the_input_checks(plain_name, kind):
    registered, connected = _pair(plain_name, kind)
    bad = torch.rand(1, registered.in_chans + 1, 32, 32)
    messages = []
    for model in (registered, connected):
        with pytest.raises(ValueError) as info:
            model(bad)
        messages.append(one_line(info))
    assert messages[0] == messages[1] and f'{registered.in_chans} input channels' in messages[0]


@pytest.mark.parametrize('plain_name, kind', [f for f in FAMILIES if f[0].startswith(('vit_', 'lookupvit_'))])
def test_connect_truncates_with_the_blocks(plain_name, kind):
    registered, connected = _pair(plain_name, kind)
    x = reduced_input(plain_name, registered)
    with torch.no_grad():
        full = registered.forward_intermediates(x, indices=[1], intermediates_only=True)
    for model in (registered, connected):
        model.prune_intermediate_layers(indices=[1])
        assert model.connection.num_blocks == len(model.blocks) == 2
        with torch.no_grad():
            assert torch.equal(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], full[0])


def test_connect_refuses_what_it_cannot_rewire():
    with pytest.raises(ValueError, match=r'^connect\(\) does not know how to rewire a ResNet; it supports: ') as info:
        densezoo.connect(timm.create_model('resnet18'), 'dwa')
    one_line(info)

    class Subclass(VisionTransformer):
        pass

    with pytest.raises(ValueError, match=r'^connect\(\) rewires models of class VisionTransformer, not the '
                                         r'subclass Subclass; '):
        densezoo.connect(Subclass(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), 'dwa')
    plain = timm.create_model('rdnet_tiny', **reduced_args('rdnet_tiny')[1])
    before = copy.deepcopy(plain.state_dict())
    with pytest.raises(ValueError, match=r"^RDNet takes no connection 'mudd'; choose one of residual, dwa, rir$"):
        densezoo.connect(plain, 'mudd')
    assert type(plain) is RDNet and plain.state_dict().keys() == before.keys()
    assert not any(isinstance(m, StageConnection) for m in plain.modules())
