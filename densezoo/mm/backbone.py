"""``DenseZooBackbone``: any densezoo / timm model with a feature pyramid as an mmsegmentation / mmdetection backbone.

Registered in mmengine's root ``MODELS`` registry, so mmseg and mmdet configs find it by name
(``backbone=dict(type='DenseZooBackbone', model_name=..., out_indices=(0, 1, 2, 3))``); the forward returns a
tuple of NCHW maps, one per entry of ``out_indices``.

Details and a config example: docs/segmentation.md.
"""
import os
from typing import List, Optional, Sequence, Tuple

import timm
import torch
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import densezoo  # noqa: F401  (registers the densezoo models with timm)
from densezoo.checkpoint_io import check_weights_file

__all__ = ['DenseZooBackbone']


def _feature_levels(model_name: str, model_kwargs: dict) -> List[dict]:
    """timm ``feature_info`` (one dict per pyramid level) of ``model_name``, read from a meta-device instance."""
    try:
        with torch.device('meta'):
            probe = timm.create_model(model_name, pretrained=False, device='meta', **model_kwargs)
    except RuntimeError as error:
        if not timm.is_model(model_name):
            raise ValueError(f'unknown model {model_name!r}; pick a name from densezoo.list_models() or '
                             f'timm.list_models()') from error
        raise
    levels = list(getattr(probe, 'feature_info', None) or [])
    reductions = {level.get('reduction') for level in levels}
    if len(levels) < 2 or len(reductions) < 2 or not hasattr(probe, 'forward_intermediates'):
        raise ValueError(f'model {model_name!r} has no feature pyramid (feature strides: {sorted(reductions)}); '
                         f'use a hierarchical backbone such as Swin, PVT v2 or RDNet')
    return levels


class DenseZooBackbone(BaseModule):
    """A densezoo / timm model returning its pyramid features, for mmseg and mmdet configs.

    Args:
        model_name: registered timm / densezoo model with a feature pyramid.
        out_indices: pyramid levels to return (0 = highest resolution).
        frozen_stages: -1 trains everything; N >= 0 freezes the stem and the first N stages (no gradient, eval mode).
        norm_eval: keep batch-norm layers in eval mode (running statistics fixed) while training.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads a densezoo / timm checkpoint (safetensors or
            .pth) through the model's own timm checkpoint filter when ``init_weights`` runs.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``strict_img_size=False``).
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, init_cfg: Optional[dict] = None, **model_kwargs):
        super().__init__(init_cfg=init_cfg)
        levels = _feature_levels(model_name, model_kwargs)
        out_indices = tuple(out_indices)
        if not out_indices or any(not -len(levels) <= i < len(levels) for i in out_indices):
            raise ValueError(f'out_indices {out_indices} out of range for {model_name!r}, which has {len(levels)} '
                             f'feature levels; use indices in 0..{len(levels) - 1}')
        if not -1 <= frozen_stages <= len(levels):
            raise ValueError(f'frozen_stages={frozen_stages} out of range for {model_name!r}; use -1 (train all) '
                             f'up to {len(levels)} (its number of stages)')
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs)
        self.out_indices = tuple(i % len(levels) for i in out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.levels = levels
        self.features = self._create(pretrained_file=None)
        self.channels = [levels[i]['num_chs'] for i in self.out_indices]
        self.strides = [levels[i]['reduction'] for i in self.out_indices]
        self._freeze_stages()

    def _create(self, pretrained_file: Optional[str]) -> nn.Module:
        pretrained = dict(pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file)) if pretrained_file else {}
        return timm.create_model(self.model_name, features_only=True, feature_cls='getter',
                                 out_indices=self.out_indices, **pretrained, **self.model_kwargs)

    def frozen_modules(self) -> List[nn.Module]:
        """Modules of the stem and the first ``frozen_stages`` stages, in registration order."""
        if self.frozen_stages < 0:
            return []
        model = self.features.model
        named = list(model.named_modules())
        if self.frozen_stages == 0:
            boundary, inclusive = self.levels[0]['module'], False
        else:
            boundary, inclusive = self.levels[self.frozen_stages - 1]['module'], True
        names = [name for name, _ in named]
        if boundary not in names:  # stages after the last requested level were pruned: everything left is frozen
            end = len(named)
        else:
            end = names.index(boundary)
            if inclusive:
                end += 1 + sum(name.startswith(boundary + '.') for name in names[end + 1:])
        ancestors = {name for name in names if name == '' or boundary.startswith(name + '.')}
        return [module for name, module in named[:end] if name not in ancestors]

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        # parameters held directly by the model (position embeddings, class tokens) belong to the stem
        params = list(self.features.model.parameters(recurse=False))
        for module in self.frozen_modules():
            module.eval()
            params += list(module.parameters(recurse=False))
        for param in params:
            param.requires_grad = False

    def train(self, mode: bool = True) -> 'DenseZooBackbone':
        """Set training mode, keeping frozen stages (and, with ``norm_eval``, batch norms) in eval mode."""
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self

    def init_weights(self) -> None:
        """Load ``init_cfg``'s pretrained checkpoint, if any; otherwise keep the model's own timm initialisation."""
        cfg = self.init_cfg or {}
        if cfg.get('type') == 'Pretrained':
            checkpoint = cfg.get('checkpoint')
            if not checkpoint or not os.path.isfile(checkpoint):
                raise ValueError(f"init_cfg checkpoint {checkpoint!r} is not a file; give the path of a densezoo / "
                                 f"timm checkpoint (.safetensors or .pth)")
            check_weights_file(checkpoint)  # a damaged or unsafe file is reported on one line naming it
            # build a twin through timm's pretrained path, so the family's checkpoint filter adapts the weights
            loaded = self._create(pretrained_file=checkpoint)
            self.features.load_state_dict(loaded.state_dict())
        elif cfg:
            raise ValueError(f"init_cfg type {cfg.get('type')!r} is not supported by DenseZooBackbone; use "
                             f"dict(type='Pretrained', checkpoint=PATH) or leave init_cfg unset")
        self._is_init = True
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Feature maps (N, C_i, H / stride_i, W / stride_i) for each of ``out_indices``."""
        return tuple(self.features(x))


MODELS.register_module(module=DenseZooBackbone, force=True)
