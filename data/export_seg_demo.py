#!/usr/bin/env python
"""Draw the synthetic segmentation demo set data/seg_demo (deterministic; the PNGs are committed).

ADE20K layout: ``images/{train,val}/<n>.png`` (64x64 RGB) and ``annotations/{train,val}/<n>.png`` (grey label maps).
Each image has a smooth two-colour gradient background (class 0) and two to four shapes: discs (class 1), squares
(class 2) and triangles (class 3), each filled with a colour of its class's family (reddish, greenish, bluish, with
random jitter, so colour alone does not always decide) and outlined in the label map by a one-pixel ring of 255
(ignored, as VOC's object boundaries). Run ``python data/export_seg_demo.py`` to redraw it.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent / 'seg_demo'
SIZE = 64
COUNTS = dict(train=48, val=16)
CLASSES = ('background', 'disc', 'square', 'triangle')
FAMILIES = {1: (200, 70, 60), 2: (70, 190, 80), 3: (70, 90, 200)}  # base colour of each shape class
JITTER = 60


def draw_shape(draw: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, radius: float, fill) -> None:
    """Disc, axis-aligned square or upright triangle of ``radius`` around (cx, cy)."""
    if kind == 1:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif kind == 2:
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)


def make_sample(rng: np.random.Generator):
    """One (image, labels) pair as uint8 arrays (H, W, 3) and (H, W)."""
    top, bottom = rng.integers(30, 226, 3), rng.integers(30, 226, 3)
    ramp = np.linspace(0, 1, SIZE)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp) * np.ones((SIZE, SIZE, 1))
    image = Image.fromarray(np.round(background).astype(np.uint8))
    labels = Image.new('L', (SIZE, SIZE), 0)
    paint, mark = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for _ in range(rng.integers(2, 5)):
        kind = int(rng.integers(1, 4))
        radius = float(rng.uniform(6, 14))
        cx, cy = rng.uniform(radius, SIZE - radius, 2)
        colour = np.clip(np.array(FAMILIES[kind]) + rng.integers(-JITTER, JITTER + 1, 3), 0, 255)
        draw_shape(paint, kind, cx, cy, radius, tuple(int(c) for c in colour))
        draw_shape(mark, kind, cx, cy, radius + 1, 255)  # boundary ring: ignored
        draw_shape(mark, kind, cx, cy, radius - 1, kind)
    return np.asarray(image), np.asarray(labels)


def main() -> None:
    rng = np.random.default_rng(2024)
    for split, count in COUNTS.items():
        for folder in ('images', 'annotations'):
            (ROOT / folder / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, labels = make_sample(rng)
            Image.fromarray(image).save(ROOT / 'images' / split / f'{index:03d}.png', optimize=True)
            Image.fromarray(labels, mode='L').save(ROOT / 'annotations' / split / f'{index:03d}.png', optimize=True)


if __name__ == '__main__':
    main()
