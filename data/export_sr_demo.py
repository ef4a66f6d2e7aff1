#!/usr/bin/env python
"""Export crops of scikit-learn's two sample photographs to data/sr_demo/{train,val}/HR/*.png (run once; the PNGs
are committed, so densezoo itself never needs scikit-learn).

The photographs are ``china.jpg`` and ``flower.jpg`` (427x640 JPEG, CC BY 2.0, see data/README.md) as shipped by
scikit-learn (``sklearn.datasets.load_sample_images``). The held-out crop is the lower right 256x256 corner of
china.jpg (trees, water, the lake shore); the training crops cover the rest of china.jpg (a pagoda, sky, trees)
without touching it, and three 256x256 crops of flower.jpg (a dahlia and blurred leaves).
"""
from pathlib import Path

from PIL import Image
from sklearn.datasets import load_sample_images

ROOT = Path(__file__).resolve().parent / 'sr_demo'
# (image, top, left, height, width) of each crop; china.jpg and flower.jpg are 427x640
TRAIN = [('china', 0, left, 160, 160) for left in (0, 160, 320, 480)] + \
        [('china', 171, left, 256, 192) for left in (0, 192)] + \
        [('flower', top, left, 256, 256) for top, left in ((0, 0), (90, 184), (171, 384))]
VAL = [('china', 171, 384, 256, 256)]


def main() -> None:
    images = dict(zip(('china', 'flower'), load_sample_images().images))
    for split, crops in (('train', TRAIN), ('val', VAL)):
        folder = ROOT / split / 'HR'
        folder.mkdir(parents=True, exist_ok=True)
        for name, top, left, height, width in crops:
            pixels = images[name][top:top + height, left:left + width]
            Image.fromarray(pixels).save(folder / f'{name}_{top:03d}_{left:03d}.png', optimize=True)


if __name__ == '__main__':
    main()
