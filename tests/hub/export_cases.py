"""The models the export tests run (``test_program.py``, ``test_onnx.py``): every SR family with each SwinIR
upsampler, and every classification family, plain and connected, at the reduced sizes of tests/models/reduced.py,
with random weights in eval mode. Each is exported once per test process (``exported``) at dynamic sizes and run
at two input sizes (``sizes``)."""
import functools
from typing import List, Tuple

import torch

from densezoo.hub.program import export, input_sizes
from tests.models.reduced import reduced_model

#: one model per SR family and SwinIR upsampler, and connected ones (RCAN and RDN have no registered connections)
SR_MODELS = (
    'swinir_classical_x2',  # upsampler 'pixelshuffle'
    'swinir_light_x2',  # 'pixelshuffledirect'
    'swinir_real_x4',  # 'nearest+conv'
    'swinir_denoise_color',  # '' (same size)
    'swinir_denoise_gray',  # '' with one channel
    'swinir_classical_x2_dwa',
    'swinir_light_x2_mudd',
    'drct_x2', 'drct_x2_mudd',
    'hat_x2', 'hat_x2_dwa',
    'rcan_x2',
    'rdn_x2',
)
#: every classification family, plain (timm's own model where densezoo registers only connected ones) and connected
CLASSIFICATION_MODELS = (
    'swin_tiny_patch4_window7_224', 'swin_tiny_patch4_window7_224_dwa',
    'swinv2_tiny_window8_256', 'swinv2_tiny_window8_256_mudd',
    'pvt_tiny', 'pvt_tiny_mudd',
    'pvt_v2_b0', 'pvt_v2_b0_dwa',
    'vit_tiny_patch16_224', 'vit_tiny_patch16_224_mudd',
    'lookupvit_tiny_patch16_224', 'lookupvit_tiny_patch16_224_dwa',
    'rdnet_tiny', 'rdnet_tiny_dwa',
)
MODELS = SR_MODELS + CLASSIFICATION_MODELS

#: families that take their img_size only unless built with dynamic_img_size=True
_FIXED_SIZE = ('swin_', 'swinv2_', 'vit_', 'lookupvit_')


def build(name: str) -> torch.nn.Module:
    """Registered model ``name`` at its reduced size, random weights, eval mode, ready for any accepted size."""
    kwargs = dict(dynamic_img_size=True) if name.startswith(_FIXED_SIZE) else {}
    return reduced_model(name, **kwargs).eval()


def sizes(name: str, model: torch.nn.Module) -> List[Tuple[int, int]]:
    """Two input sizes: for SR models 12x16 and 20x9 (not multiples of the window: the model pads); for
    classification the smallest accepted size and a larger, non-square one."""
    if name in SR_MODELS:
        return [(12, 16), (20, 9)]
    accepted = input_sizes(model)
    return [(accepted.minimum,) * 2, (accepted.minimum + accepted.multiple, accepted.minimum + 2 * accepted.multiple)]


def image(model: torch.nn.Module, size: Tuple[int, int], seed: int = 0) -> torch.Tensor:
    channels = getattr(model, 'in_chans', 3)
    return torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(seed))


def eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own output (eval, no gradients, densezoo's fast paths as configured)."""
    with torch.no_grad():
        return model(x)


@functools.lru_cache(maxsize=None)
def exported(name: str):
    """(model, its ``torch.export`` program with dynamic height and width), made once per process."""
    model = build(name)
    return model, export(model)
