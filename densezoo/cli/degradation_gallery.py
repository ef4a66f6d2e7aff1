"""Example images of the real-world degradation pipelines (docs/degradations.md).

    python tools/degradation_gallery.py --out docs/images/degradations [--seed 0]

Writes ``<pipeline>.png`` per pipeline (an HR crop of a bundled photograph, then LR samples, each made with
``numpy.random.default_rng(seed)`` for the seed under it and nearest-upscaled to the HR size) and ``kernels.png``
(blur kernels of each kind, scaled to their peak; the sinc kernel's negative lobes are darker than its grey zero).
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from densezoo.datasets.degradations import DEGRADATION_PIPELINES
from densezoo.datasets.kernels import KERNEL_KINDS, random_kernel, sinc_kernel
from densezoo.datasets.sr import load_image

LABEL = 14  # pixels of caption under each tile
DEFAULT_IMAGE = Path('data/sr_demo/train/HR/china_171_000.png')  # a bundled photograph, from a clone


def to_pil(img: np.ndarray) -> Image.Image:
    pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def strip(tiles, captions) -> Image.Image:
    """Tiles side by side (2 px apart) with a caption under each."""
    w, h = tiles[0].size
    out = Image.new('RGB', (len(tiles) * (w + 2) - 2, h + LABEL), 'white')
    draw = ImageDraw.Draw(out)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        out.paste(tile.convert('RGB'), (i * (w + 2), 0))
        draw.text((i * (w + 2) + 3, h + 1), caption, fill='black')
    return out


def pipeline_panel(name: str, hr: np.ndarray, scale: int, seeds) -> Image.Image:
    degrade = DEGRADATION_PIPELINES[name](scale)
    size = hr.shape[1], hr.shape[0]
    tiles = [to_pil(hr)] + [to_pil(degrade(hr, np.random.default_rng(s))).resize(size, Image.NEAREST) for s in seeds]
    return strip(tiles, ['HR'] + [f'{name} seed {s}' for s in seeds])


def kernel_panel(seed: int, size: int = 21, zoom: int = 6) -> Image.Image:
    rng = np.random.default_rng(seed)
    kernels = [(kind, random_kernel(rng, size, [kind], [1.])[0]) for kind in KERNEL_KINDS]
    kernels.append(('sinc', sinc_kernel(rng.uniform(math.pi / 5, math.pi / 2), size)))
    tiles = []
    for kind, k in kernels:
        scaled = k / np.abs(k).max()
        shown = 0.5 + 0.5 * scaled if kind == 'sinc' else scaled  # sinc: zero is mid-grey
        tile = Image.fromarray(np.round(np.clip(shown, 0, 1) * 255).astype(np.uint8))
        tiles.append(tile.resize((size * zoom, size * zoom), Image.NEAREST))
    return strip(tiles, [kind.replace('generalized', 'gen.') for kind, _ in kernels])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, required=True, help='folder for the PNGs')
    parser.add_argument('--seed', type=int, default=0, help='first seed (samples use seed, seed + 1, ...)')
    parser.add_argument('--image', type=Path, default=DEFAULT_IMAGE, help='an 8-bit RGB photograph')
    parser.add_argument('--crop', type=int, default=160, help='HR crop size (centre), a multiple of the scale')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--samples', type=int, default=5)
    args = parser.parse_args(argv)
    if not args.image.is_file():
        parser.error(f'--image {args.image} does not exist; give an 8-bit RGB photograph (or run from a clone)')
    img = load_image(args.image)
    c = args.crop - args.crop % args.scale
    top, left = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
    if min(top, left) < 0:
        parser.error(f'--crop {args.crop} is larger than the image {img.shape[1]}x{img.shape[0]}')
    hr = img[top:top + c, left:left + c]
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.seed, args.seed + args.samples)
    for name in DEGRADATION_PIPELINES:
        pipeline_panel(name, hr, args.scale, seeds).save(args.out / f'{name}.png', optimize=True)
        print(args.out / f'{name}.png')
    kernel_panel(args.seed).save(args.out / 'kernels.png', optimize=True)
    print(args.out / 'kernels.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
