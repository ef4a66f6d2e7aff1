"""Reduced sizes per family for numerical tests: the same family, connection and options as a registered model,
at a width and depth that run in milliseconds on a CPU.

``REDUCED`` is matched by name prefix, most specific first; a reduced model keeps every argument of its registered
configuration (scale, channels, upsampler, connection options) that the table does not set. Registered models that
differ only in arguments the table sets are the same reduced model: ``representatives`` keeps one of each.
"""

import timm
import torch

from tests.helpers import perturb_connections, perturb_norms, scale_preserving_weights

_WINDOW_SR = dict(img_size=16, window_size=4, depths=(2, 2), num_heads=(2, 2), embed_dim=16, mlp_ratio=2,
                  drop_path_rate=0.)

#: (name prefix, family, reduced arguments, input size for numerics)
REDUCED = (
    ('swinv2_', 'SwinV2', dict(img_size=64, embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 1, 2, 4),
                               window_size=4), 64),
    ('swin_', 'Swin', dict(img_size=64, embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 1, 2, 4)), 64),
    ('vit_', 'ViT', dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2), 32),
    ('pvt_v2_', 'PVTv2', dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(2, 2, 2, 2)), 64),
    ('pvt_', 'PVT', dict(img_size=64, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(2, 2, 2, 2)),
     64),
    ('rdnet_', 'RDNet', dict(num_init_features=16, growth_rates=(8, 8, 16, 16), num_blocks_list=(3, 2, 3, 3),
                             is_downsample_block=(None, True, True, True),
                             block_type=('Block', 'Block', 'BlockESE', 'BlockESE'), ls_init_value=1.0), 64),
    ('lookupvit_', 'LookupViT', dict(img_size=64, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                     compressed_grid=3), 64),
    ('swinir_', 'SwinIR', _WINDOW_SR, 16),
    ('drct_', 'DRCT', dict(_WINDOW_SR, embed_dim=24, num_heads=(6, 6), gc=8), 16),
    ('hat_', 'HAT', dict(_WINDOW_SR, embed_dim=24, compress_ratio=3, squeeze_factor=2), 16),
    ('rcan_', 'RCAN', dict(num_feat=16, num_group=2, num_block=2, squeeze_factor=4), 16),
    ('rdn_', 'RDN', dict(num_features=16, growth_rate=8, num_blocks=2, num_layers=2), 16),
)


#: families of image-to-image (super-resolution) models
SR_FAMILIES = ('SwinIR', 'DRCT', 'HAT', 'RCAN', 'RDN')


def reduced_args(name: str):
    """``(family, reduced arguments, input size)`` of registered model ``name``."""
    for prefix, family, args, size in REDUCED:
        if name.startswith(prefix):
            return family, dict(args), size
    raise KeyError(f'no reduced size for {name}; add its family to REDUCED in tests/models/reduced.py')


def reduced_model(name: str, seed: int = 0, perturb: bool = True, connection_std: float = 0.05,
                  **kwargs) -> torch.nn.Module:
    """Registered model ``name`` at its family's reduced size (``kwargs`` override), with norms and connection
    parameters (by ``connection_std``) moved away from their initial values unless ``perturb`` is false."""
    family, args, _ = reduced_args(name)
    torch.manual_seed(seed)
    model = timm.create_model(name, **{**args, **kwargs})
    if not perturb:
        return model
    if family in SR_FAMILIES:  # weights that keep the residual stream's scale through a deep body
        model = scale_preserving_weights(model, seed)
    return perturb_connections(perturb_norms(model, seed=seed), std=connection_std, seed=seed)


def reduced_input(name: str, model: torch.nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """An input batch for the reduced ``model`` of registered model ``name``."""
    _, _, size = reduced_args(name)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, model.in_chans, size, size, generator=generator)


def reduced_construction(name: str):
    """What registered model ``name`` is built from at its reduced size: its family, connection kind and options,
    and its architecture's arguments after the reduction (with the channels and classes its cfg gives the builder).

    Read from the entrypoint's ``arch_args`` / ``connection_kind`` / ``connection_args`` (set by
    ``densezoo.models._common.register_models``), without building the model; ``None`` for an entrypoint without them.
    """
    entrypoint = timm.models.model_entrypoint(name)
    if not hasattr(entrypoint, 'arch_args'):
        return None
    family, args, _ = reduced_args(name)
    cfg = timm.models.get_pretrained_cfg(name)
    built = dict(in_chans=cfg.input_size[0], num_classes=cfg.num_classes)  # timm's builder takes these from the cfg
    if cfg.fixed_input_size and 'img_size' not in args:
        built['img_size'] = cfg.input_size[-2:]
    arguments = {**built, **entrypoint.arch_args, **args}
    return (family, entrypoint.connection_kind, repr(sorted(entrypoint.connection_args.items())),
            repr(sorted(arguments.items())))


def representatives(names):
    """One name (the first) per distinct reduced construction of ``names``: the registered models that differ
    only in arguments the reduction sets (width, depth, heads, window or patch size) are one model there."""
    seen = {}
    for name in names:
        seen.setdefault(reduced_construction(name) or name, name)
    return list(seen.values())
