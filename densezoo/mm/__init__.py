"""mmsegmentation / mmdetection integration: the ``DenseZooBackbone`` type for OpenMMLab configs.

Use it from a config with ``custom_imports=dict(imports=['densezoo.mm'], allow_failed_imports=False)``. Importing
this package first gives ``mmcv._ext`` a torchvision-backed stand-in when mmcv has no compiled ops (mmcv-lite),
then registers the backbone. densezoo itself never imports this package.
"""
from densezoo.mm.ops import fallback_active, install_ext_fallback

install_ext_fallback()

from densezoo.mm.backbone import DenseZooBackbone  # noqa: E402

__all__ = ['DenseZooBackbone', 'install_ext_fallback', 'fallback_active']
