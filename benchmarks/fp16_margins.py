"""float16 margins and PSNR of the SR fixtures on the bundled photograph (256x256 LR): the table of
docs/sr-models.md ("float16"). Run from the repository root: ``PYTHONPATH=. python benchmarks/fp16_margins.py``."""
import copy

import numpy as np
import torch
from PIL import Image

import densezoo
from densezoo.metrics.sr import psnr
from densezoo.tasks.sr_inference import half_precision
from tests.helpers import load_fixture

photo = torch.from_numpy(np.asarray(Image.open('data/sr_demo/val/HR/china_171_384.png'), np.float32) / 255)
photo = photo.permute(2, 0, 1)[None].contiguous()
rows = []
for name in ('swinir_classical_x2', 'swinir_lightweight_x3', 'swinir_realsr_x4', 'swinir_denoise_3conv', 'drct_x2',
             'hat_x4', 'rcan_x4'):
    model = densezoo.load_sr(load_fixture(f'{name}.pt')['state_dict'])
    with torch.no_grad():
        reference = model(photo)[0].clamp(0, 1)
    for inflate in (0, 14):
        if inflate and not hasattr(model, 'scale_stream_'):
            continue
        net = copy.deepcopy(model).scale_stream_(2.0 ** inflate) if inflate else model
        with torch.no_grad():
            plain = copy.deepcopy(net).half()(photo.half()).float()[0]
        prepared = half_precision(net, photo[..., 96:160, 96:160])
        with torch.no_grad():
            out = prepared.model(photo.half()).float()[0].clamp(0, 1)
        plain_psnr = psnr(plain.clamp(0, 1), reference, 0, False) if torch.isfinite(plain).all() else float('nan')
        rows.append((name, inflate, f'{prepared.peak:.4g}', f'{65504 / prepared.peak:.3g}',
                     f'{plain_psnr:.1f}' if plain_psnr == plain_psnr else 'non-finite', prepared.shift,
                     f'{prepared.margin:.3g}', f'{psnr(out, reference, 0, False):.1f}'))
print('| fixture | stream x2^k | float32 peak | `.half()` margin | `.half()` PSNR | shift | margin | PSNR |')
print('|---|---:|---:|---:|---:|---:|---:|---:|')
for r in rows:
    print('| ' + ' | '.join(map(str, r)) + ' |')
