"""Comparing prepared pixels with a direct resize-then-crop.

The resize is defined as Pillow's BICUBIC in two separable passes, horizontal first, each into 8
bits (what Pillow's one-call resize did for years; Pillow 13 runs the vertical pass first for some
tall images, which changes values by up to 20 levels on noise). The reference here runs the two
passes explicitly, so it does not depend on the Pillow version either."""
import numpy as np
from PIL import Image


def resize_two_pass(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow BICUBIC to `size`: the horizontal pass on every row, then the vertical pass."""
    w, h = size
    if w != im.width:
        im = im.resize((w, im.height), Image.Resampling.BICUBIC)
    if h != im.height:
        im = im.resize((w, h), Image.Resampling.BICUBIC)
    return im


def assert_as_resize_then_crop(got: np.ndarray, direct: np.ndarray, what) -> None:
    """resize_crop computes only the kept pixels (Pillow's resize box), which shifts a pass's samples
    by up to ~1e-5 pixel: about one value in 10,000 on photographs, up to one in 1,000 on noise, may
    be off by one (rarely two: two neighbouring values of the first pass both moved, and the second
    pass's weights add up to more than 1 in absolute value)."""
    assert got.shape == direct.shape, what
    diff = np.abs(got.astype(np.int16) - direct.astype(np.int16))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.005, (what, int(diff.max()), float((diff > 0).mean()))
