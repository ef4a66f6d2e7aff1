#!/usr/bin/env python
"""Export scikit-learn's digits images to data/digits/{train,val}/<digit>/<index>.png (run once; the PNGs are
committed, so densezoo itself never needs scikit-learn).

The images are the UCI "Optical Recognition of Handwritten Digits" test set as bundled by scikit-learn:
1,797 grey 8x8 images of the digits 0-9 with values 0-16, stored here scaled to 0-255. Every fifth image of each
digit (in the order scikit-learn lists them) goes to val/, the rest to train/.
"""
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent / 'digits'


def main() -> None:
    digits = load_digits()
    counts = {}
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        seen = counts.get(label, 0)
        counts[label] = seen + 1
        split = 'val' if seen % 5 == 4 else 'train'
        folder = ROOT / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode='L').save(folder / f'{index:04d}.png', optimize=True)


if __name__ == '__main__':
    main()
