"""Reading and writing images as they are: grey, grey + alpha, RGB, RGBA, at 8 or 16 bits per channel.

``read_pixels`` returns a uint8 / uint16 array (H, W, C) with channels in RGB(A) order (C = 1, 2, 3 or 4), EXIF
orientation applied; ``write_pixels`` writes such an array (PNG, TIFF, WebP or JPEG, by the file's suffix) through a
temporary file, so a failed write leaves no partial image behind.
"""
import os
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps

from densezoo.datasets.folder import DataError, bit_depth

__all__ = ['read_pixels', 'write_pixels', 'WRITABLE']

#: suffix -> whether it holds 16-bit values
WRITABLE = {'.png': True, '.tif': True, '.tiff': True, '.webp': False, '.jpg': False, '.jpeg': False}


def _read_16bit(path: Path) -> np.ndarray:
    import cv2  # PIL cannot hold 16-bit colour
    pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise DataError(f'image {str(path)!r} cannot be decoded (16-bit image OpenCV cannot read)')
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    elif pixels.shape[2] == 3:
        pixels = pixels[..., ::-1]
    elif pixels.shape[2] == 4:
        pixels = pixels[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(pixels.astype(np.uint16) * 257 if pixels.dtype == np.uint8 else pixels)


def read_pixels(path) -> Tuple[np.ndarray, int]:
    """An image file's pixels (H, W, C) as uint8 or uint16 and its bit depth (8 or 16).

    Grey stays one channel, grey + alpha two, colour three, colour + alpha four; palette images become RGB or RGBA
    (with their transparency), CMYK and other modes RGB. A file that is not an image is a one-line ``DataError``.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if bit_depth(img) == 16:
                return _read_16bit(path), 16
            img = ImageOps.exif_transpose(img)
            if img.mode == 'P':
                img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
            elif img.mode not in ('L', 'LA', 'RGB', 'RGBA'):
                img = img.convert('RGBA' if 'A' in img.mode else 'RGB')
            pixels = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise DataError(f'image {str(path)!r} cannot be read ({first}); is it a damaged or unsupported file?') from None
    return (pixels[..., None] if pixels.ndim == 2 else pixels), 8


def _encode_16bit(pixels: np.ndarray, suffix: str) -> np.ndarray:
    import cv2
    channels = pixels.shape[2]
    if channels == 3:
        pixels = pixels[..., ::-1]
    elif channels == 4:
        pixels = pixels[..., [2, 1, 0, 3]]
    elif channels == 2:  # OpenCV writes no grey + alpha: BGRA with three equal colour channels
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, axis=-1), pixels[..., 1:]], axis=-1)
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(pixels))
    if not ok:
        raise DataError(f'OpenCV cannot encode a 16-bit {suffix} image')
    return encoded


def write_pixels(path, pixels: np.ndarray) -> Path:
    """Write uint8 / uint16 pixels (H, W, C) in RGB(A) order; the suffix picks the format (16-bit grey + alpha
    is written as 16-bit RGBA, which OpenCV can encode)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITABLE:
        raise DataError(f'cannot write {str(path)!r}: choose one of {", ".join(sorted(WRITABLE))}')
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype == np.uint16 and not WRITABLE[suffix]:
        raise DataError(f'{suffix} holds 8 bits per channel, but {path.name} has 16; write .png or .tiff')
    if suffix in ('.jpg', '.jpeg') and pixels.shape[2] in (2, 4):
        raise DataError(f'JPEG holds no alpha channel, but {path.name} has one; write .png, .tiff or .webp')
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f'.{path.name}.partial{suffix}')
    try:
        if pixels.dtype == np.uint16:
            _encode_16bit(pixels, suffix).tofile(temporary)
        else:
            image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels,
                                    {1: 'L', 2: 'LA', 3: 'RGB', 4: 'RGBA'}[pixels.shape[2]])
            image.save(temporary, **({'quality': 95} if suffix in ('.jpg', '.jpeg') else
                                     {'lossless': True} if suffix == '.webp' else {}))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
