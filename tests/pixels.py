"""Comparing prepared pixels with a direct resize-then-crop."""
import numpy as np


def assert_as_resize_then_crop(got: np.ndarray, direct: np.ndarray, what) -> None:
    """resize_crop computes only the kept pixels (Pillow's resize box), which shifts a pass's samples
    by ~1e-5 pixel: a few values in 10,000 may be off by one (rarely two: two neighbouring values of
    the first pass both moved, and the second pass's weights add up to more than 1 in absolute value)."""
    assert got.shape == direct.shape, what
    diff = np.abs(got.astype(np.int16) - direct.astype(np.int16))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.005, (what, int(diff.max()), float((diff > 0).mean()))
