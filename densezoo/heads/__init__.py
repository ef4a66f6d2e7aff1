"""Task heads that take a backbone's features (SR reconstruction; segmentation heads)."""
from densezoo.heads.upsample import (DenseUpsample, PixelShuffleDirect, PixelShuffleUpsample, SRReconstruction,
                                     check_upscale)

__all__ = ['DenseUpsample', 'PixelShuffleDirect', 'PixelShuffleUpsample', 'SRReconstruction', 'check_upscale']
