"""Training-set statistics: the mean image and the RGB covariance with its eigen-decomposition.

the paper's section 2 (mean subtraction) and 4.1 (PCA lighting), on the 0-255 scale.

The sums are of integers (uint8 pixels and their products), so they are kept in int64, where
they are exact and independent of the order of addition: shards can be summed in any order,
by any number of workers, and a resumed run gives the very same bytes. The float64 mean,
covariance and eigen-decomposition are computed from the exact sums at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_prep import shards
from data_prep.shards import IMAGE_SIZE, Stats

PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE
_PAIRS = (np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 1, 2, 2]))  # the six (i, j), i <= j, of x x^T


@dataclass
class Moments:
    """Sums over images: count, per-pixel sum (the mean image), sum of x x^T over RGB pixels."""
    images: int = 0
    pixel_sum: np.ndarray = field(default_factory=lambda: np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.int64))
    outer: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), np.int64))

    def add(self, images: np.ndarray) -> None:
        """Add uint8 images [k, 256, 256, 3]."""
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"expected uint8 [k, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.dtype} {images.shape}")
        for start in range(0, len(images), 257):  # keeps the uint16 pixel sums below from overflowing
            self._add(images[start:start + 257])

    def _add(self, images: np.ndarray) -> None:
        # Small integer types where they are exact, for speed (this runs on every training image):
        # a pixel's sum over <= 257 images fits in uint16 (257 * 255 = 65,535); a product of two
        # values <= 255 fits in uint16, and its sum over one image's 65,536 pixels in uint32. No
        # float, no BLAS (whose threads spin between calls and take CPU from the other workers).
        pixel_sum = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint16)
        planes = np.empty((3, PIXELS_PER_IMAGE), np.uint8)  # one image's R, G and B planes
        x = np.empty((3, PIXELS_PER_IMAGE), np.uint16)
        products = np.empty((len(_PAIRS[0]), PIXELS_PER_IMAGE), np.uint16)  # in _PAIRS order
        pairs = np.zeros(len(_PAIRS[0]), np.int64)
        for im in images:
            np.add(pixel_sum, im, out=pixel_sum)
            np.copyto(planes, im.reshape(-1, 3).T)  # transposed as bytes, then widened: the faster way
            np.copyto(x, planes)
            np.multiply(x, x[0], out=products[0:3])  # RR, GR, BR
            np.multiply(x[1:], x[1], out=products[3:5])  # GG, BG
            np.multiply(x[2], x[2], out=products[5])  # BB
            pairs += products.sum(axis=1, dtype=np.uint32)
        self.pixel_sum += pixel_sum
        self.outer[_PAIRS] += pairs
        self.outer[_PAIRS[1], _PAIRS[0]] += np.where(_PAIRS[0] != _PAIRS[1], pairs, 0)
        self.images += len(images)

    @classmethod
    def of_shard(cls, meta) -> "Moments":
        """The moments of one finished shard (data_prep.shards.ShardMeta), read in blocks of 64
        images (with pread, not a memory map: a shard cut short is a ValueError, not SIGBUS)."""
        m = cls()
        for start in range(0, meta.count, 64):
            m.add(shards.read_images(meta, start, min(start + 64, meta.count)))
        return m

    def merge(self, other: "Moments") -> None:
        self.images += other.images
        self.pixel_sum += other.pixel_sum
        self.outer += other.outer

    def to_stats(self, counts: dict | None = None) -> Stats:
        if self.images == 0:
            raise ValueError("no training images: the mean and covariance are undefined")
        return compute_stats(self.pixel_sum, self.outer, self.images, counts)


def compute_stats(pixel_sum: np.ndarray, outer: np.ndarray, images: int, counts: dict | None = None) -> Stats:
    pixels = images * PIXELS_PER_IMAGE
    mean = pixel_sum.astype(np.float64) / images
    mu = pixel_sum.sum(axis=(0, 1), dtype=np.int64).astype(np.float64) / pixels
    covariance = outer.astype(np.float64) / pixels - np.outer(mu, mu)  # population covariance
    covariance = (covariance + covariance.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], fix_signs(eigenvectors[:, order])
    return Stats(mean=mean, covariance=covariance, eigenvalues=eigenvalues, eigenvectors=eigenvectors,
                 pixels=pixels, images=images, counts=counts)


def fix_signs(eigenvectors: np.ndarray) -> np.ndarray:
    """The eigenvectors (columns) with their arbitrary signs fixed: each one's largest component
    positive. LAPACK may return either sign (it differs between builds, e.g. OpenBLAS and MKL),
    and the PCA lighting noise depends on it (the same random draws move pixels the other way)."""
    columns = np.arange(eigenvectors.shape[1])
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), columns])
    return eigenvectors * np.where(signs == 0, 1.0, signs)
