#!/usr/bin/env python
"""Write scikit-image's four colour photographs to data/sr_photos/HR/*.png: a held-out test set for the SR models
trained on data/sr_demo (the connection study scores its runs on it with tools/eval_sr.py). Not committed: run
``pip install scikit-image`` and this script once.

The photographs (``skimage.data``; public domain or CC0, see data/README.md): ``astronaut`` (512x512, NASA),
``chelsea`` (300x451, a cat), ``coffee`` (400x600, a cup on wood), ``rocket`` (427x640, a launch).
Each is cut to a multiple of 4 pixels (bottom and right) so that x2, x3 and x4 inputs have exact sizes.
"""
from pathlib import Path

from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent / 'sr_photos'
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket')


def main() -> None:
    folder = ROOT / 'HR'
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        pixels = getattr(data, name)()
        height, width = (s - s % 4 for s in pixels.shape[:2])
        Image.fromarray(pixels[:height, :width]).save(folder / f'{name}.png')
        print(f'{folder / name}.png: {width}x{height}')


if __name__ == '__main__':
    main()
