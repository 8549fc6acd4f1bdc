"""Data augmentation and test-time views (paper section 4.1; docs/fidelity.md, "PCA lighting" and
"Mean subtraction").

Two kinds of work, kept apart on purpose (docs/architecture.md, "Data flow"):
- crops and mirrors are uint8 index arithmetic on the 256x256 images (in the loader workers):
  `random_crop_params`, `crop_view`, `take_views`, `centre_crop`, `ten_view`;
- the float work (uint8 -> float, mean subtraction, PCA lighting) is `Normalizer`, which runs on
  whatever device it is built for: the training device (`augment.on = "device"`) or the CPU.
  The same code runs on both, using only element-wise float32 operations with tensor operands
  (no matmul, no division by a CPU scalar, which CUDA turns into a multiplication by its
  reciprocal), so both give bit-identical tensors for the same draws.

Pixel scale: the model input is on the 0-255 scale minus the mean image, as in cuda-convnet;
there is no division by a standard deviation. The stats (data_prep.shards.Stats) are on the
0-255 scale too.

PCA lighting, two flavours (docs/fidelity.md, "PCA lighting"); p_i, lambda_i are the eigenvectors and
eigenvalues of the RGB covariance, alpha_i ~ N(0, std) drawn afresh each time an image is used:
- "paper" (the paper's text, which leaves the scale unstated): lambda is read on the [0, 1] pixel
  scale, lambda01_i = lambda255_i / 255^2, and the colour P (alpha * lambda01) * 255 is added on the
  0-255 scale, i.e. a multiplier of lambda255_i / 255 per component. On ImageNet this moves a
  pixel by about 5.5 levels (docs/fidelity.md works the scales out).
      x = crop - mean + P (alpha * lambda255 / 255)
- "code145": the multiplier is the standard deviation sqrt(lambda255_i), added after mean
  subtraction, then the whole input is divided by 1 + std (1.1), "so that the overall scale of the
  training data doesn't become too different from the test data". Only while lighting is on: when
  code 145 turns the noise off (its last ~20 epochs) the division goes with it.
      x = (crop - mean + P (alpha * sqrt(lambda255))) / 1.1
"""
from __future__ import annotations

import numpy as np
import torch

from data_prep.shards import IMAGE_SIZE, Stats

CROP = 224


# ------------------------------------------------------------------ crops and mirrors (uint8)

def random_crop_params(rng: np.random.Generator, n: int, size: int = IMAGE_SIZE, crop: int = CROP,
                       flip: bool = True) -> np.ndarray:
    """int64 [n, 3] = (top, left, mirrored) of n training crops (section 4.1: "extracting random
    224x224 patches (and their horizontal reflections) from the 256x256 images").

    top and left are uniform over 0 .. size - crop inclusive (0..32: 33 positions per axis);
    mirrored is 1 with probability 1/2 (always 0 when flip is False).
    """
    out = np.zeros((n, 3), np.int64)
    out[:, :2] = rng.integers(0, size - crop + 1, size=(n, 2))
    mirrored = rng.integers(0, 2, size=n)
    if flip:
        out[:, 2] = mirrored
    return out


def crop_view(image, top: int, left: int, mirrored, crop: int = CROP):
    """The crop of image [..., H, W, 3] at (top, left), mirrored left-right if asked.

    A numpy view (a negative stride when mirrored, no copy); torch tensors are flipped by copy.
    """
    patch = image[..., top:top + crop, left:left + crop, :]
    if mirrored:
        patch = patch.flip(-2) if torch.is_tensor(patch) else patch[..., ::-1, :]
    return patch


def copy_crop(dst: np.ndarray, image: np.ndarray, top: int, left: int, mirrored) -> None:
    """dst[...] = crop_view(image, top, left, mirrored) for numpy uint8 [..., H, W, 3] arrays.

    A mirrored copy moves whole 3-byte pixels (a void view) rather than single bytes, which makes
    it about 3x faster than numpy's byte-wise reversed copy; the result is the same.
    """
    crop = dst.shape[-2]
    if not mirrored:
        np.copyto(dst, image[..., top:top + crop, left:left + crop, :])
        return
    pixels = np.dtype((np.void, 3))
    src = image[..., top:top + crop, :, :].view(pixels)[..., 0]  # [..., crop, W] whole pixels
    np.copyto(dst.view(pixels)[..., 0], src[..., left + crop - 1:(left - 1 if left else None):-1])


def take_views(images, offsets, crop: int = CROP, out=None):
    """Crops of every image at every (top, left, mirrored) row of offsets [V, 3].

    images [..., H, W, 3] -> [..., V, crop, crop, 3] (numpy or torch, same kind as images).
    """
    offsets = np.asarray(offsets).reshape(-1, 3)
    if out is None:
        shape = (*images.shape[:-3], len(offsets), crop, crop, images.shape[-1])
        out = (images.new_empty(shape) if torch.is_tensor(images)
               else np.empty(shape, images.dtype))
    for v, (top, left, mirrored) in enumerate(offsets):
        if torch.is_tensor(images):
            out[..., v, :, :, :] = crop_view(images, int(top), int(left), mirrored, crop)
        else:
            copy_crop(out[..., v, :, :, :], images, int(top), int(left), mirrored)
    return out


def centre_offsets(size: int = IMAGE_SIZE, crop: int = CROP) -> np.ndarray:
    """int64 [1, 3]: the centre patch, not mirrored."""
    c = (size - crop) // 2
    return np.array([[c, c, 0]], np.int64)


def ten_view_offsets(size: int = IMAGE_SIZE, crop: int = CROP) -> np.ndarray:
    """int64 [10, 3] (section 4.1, test time): the four corner patches flush with the image edges
    (top-left, top-right, bottom-left, bottom-right), the centre patch, then the mirror of each in
    the same order."""
    e, c = size - crop, (size - crop) // 2
    five = np.array([[0, 0], [0, e], [e, 0], [e, e], [c, c]], np.int64)
    return np.concatenate([np.c_[five, np.zeros(5, np.int64)], np.c_[five, np.ones(5, np.int64)]])


def centre_crop(images, crop: int = CROP):
    """The single centre view: images [..., 256, 256, 3] -> [..., crop, crop, 3] (a view)."""
    size = images.shape[-2]
    top, left, _ = centre_offsets(size, crop)[0]
    return crop_view(images, int(top), int(left), False, crop)


def ten_view(images, crop: int = CROP):
    """The paper's ten test views: images [..., 256, 256, 3] -> [..., 10, crop, crop, 3], in the
    order of `ten_view_offsets`. The network's softmax outputs over the ten are averaged."""
    return take_views(images, ten_view_offsets(images.shape[-2], crop), crop)


# ---------------------------------------------------------------------------- PCA lighting

def lighting_scale(eigenvalues, flavour: str) -> np.ndarray:
    """float64 [3]: the multiplier of alpha_i along eigenvector p_i, in 0-255 pixel levels.

    "paper": lambda01_i * 255 = lambda255_i / 255 (lambda read on the [0, 1] scale);
    "code145": sqrt(lambda255_i). See the module docstring.
    """
    lam = np.asarray(eigenvalues, np.float64)
    if flavour == "paper":
        return lam / 255.0
    if flavour == "code145":
        return np.sqrt(np.maximum(lam, 0.0))
    raise ValueError(f"unknown PCA lighting flavour {flavour!r}")


def colour_shift(alphas: torch.Tensor, eigenvectors: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 [B, 3]: P (alpha * scale) per image, written element-wise in a fixed order so that
    every device rounds it the same way (a matmul may not)."""
    t = alphas * scale  # [B, 3]
    return (t[:, 0:1] * eigenvectors[:, 0] + t[:, 1:2] * eigenvectors[:, 1]
            + t[:, 2:3] * eigenvectors[:, 2])


def pca_lighting(alphas: torch.Tensor, eigenvalues, eigenvectors, flavour: str = "paper") -> torch.Tensor:
    """The colour added to every pixel of each image (section 4.1, "altering the intensities of
    the RGB channels"): float32 [B, 3] on the 0-255 scale, for alphas [B, 3] ~ N(0, 0.1).

    flavour "paper": P (alpha * lambda255 / 255); "code145": P (alpha * sqrt(lambda255)), to which
    code 145 then applies its 1/1.1 (done by Normalizer.train, since it scales the whole input).
    """
    dev = alphas.device
    scale = torch.as_tensor(lighting_scale(eigenvalues, flavour), dtype=torch.float32, device=dev)
    vectors = torch.as_tensor(np.asarray(eigenvectors), dtype=torch.float32, device=dev)
    return colour_shift(alphas.to(torch.float32), vectors, scale)


# ------------------------------------------------------------------------------ float work

class Normalizer:
    """uint8 crops -> the network's float32 input, on one device.

    Mean subtraction (section 2, "subtracting the mean activity over the training set from each
    pixel"): `augment.mean = "crop"` subtracts the mean image at the crop's own position (mirrored
    with the crop), which equals subtracting the mean before cropping; "centre" subtracts the
    centre crop of the mean image from every crop, as code 145 does.
    Then PCA lighting per `augment.lighting` (see the module docstring for the scales).

    Outputs are NCHW views of NHWC data: channels-last memory format, no copy.
    """

    def __init__(self, stats: Stats, aug, device="cpu"):
        self.device = torch.device(device)
        self.crop = aug.crop
        self.mean_mode = aug.mean
        self.lighting = aug.lighting
        f32 = dict(dtype=torch.float32, device=self.device)
        self.mean = torch.as_tensor(stats.mean, **f32)  # [256, 256, 3]
        self.mean_centre = centre_crop(self.mean, self.crop).contiguous()  # [crop, crop, 3]
        self.eigenvectors = torch.as_tensor(stats.eigenvectors, **f32)  # [3, 3], columns p_i
        self.scale = (torch.as_tensor(lighting_scale(stats.eigenvalues, aug.lighting), **f32)
                      if aug.lighting != "none" else None)
        # code 145 divides by 1 + std, applied as a multiplication by a float32 tensor.
        self.code145_factor = torch.tensor(1.0 / (1.0 + aug.lighting_std), **f32)
        # Every crop of the mean image and of its mirror, as one strided view (no copy):
        # windows[m, top, left] = crop at (top, left) of the mean (m = 0) or of its mirror (m = 1).
        both = torch.stack([self.mean, self.mean.flip(1)]).contiguous()  # [2, 256, 256, 3]
        h, w, _ = self.mean.shape
        self.mean_windows = both.as_strided(
            (2, h - self.crop + 1, w - self.crop + 1, self.crop, self.crop, 3),
            (h * w * 3, w * 3, 3, w * 3, 3, 1))

    def mean_crops(self, offsets: torch.Tensor) -> torch.Tensor:
        """The mean image under each crop: [N, crop, crop, 3] for offsets [N, 3] = (top, left,
        mirrored), or the centre crop [crop, crop, 3] (broadcast) when the config says "centre"."""
        if self.mean_mode == "centre":
            return self.mean_centre
        # non_blocking: a blocking copy would wait for every kernel queued before it (a host sync
        # per step); the offsets come pinned from the loader, so the copy queues like the images'.
        top, left, mirrored = offsets.to(self.device, non_blocking=True).unbind(1)
        # The mirror of the crop at `left` is the crop of the mirrored mean at width - crop - left.
        left = torch.where(mirrored.bool(), self.mean.shape[1] - self.crop - left, left)
        return self.mean_windows[mirrored, top, left]  # [N, crop, crop, 3]

    def train(self, batch) -> torch.Tensor:
        """A training Batch (repro.data) -> float32 [B, 3, crop, crop], channels-last."""
        x = batch.images.to(self.device, non_blocking=True).to(torch.float32)  # [B, H, W, 3]
        x -= self.mean_crops(batch.offsets)
        if self.scale is not None and batch.lighting:
            alphas = batch.alphas.to(self.device, non_blocking=True)
            x += colour_shift(alphas, self.eigenvectors, self.scale)[:, None, None, :]
            if self.lighting == "code145":
                x *= self.code145_factor
        return x.permute(0, 3, 1, 2)  # [B, 3, H, W] view, channels-last in memory

    def views(self, images: torch.Tensor, view_offsets) -> torch.Tensor:
        """Test views uint8 [B, V, crop, crop, 3] -> float32 [B * V, 3, crop, crop] (row b * V + v),
        channels-last. No lighting at test time."""
        b, v = images.shape[:2]
        x = images.to(self.device, non_blocking=True).to(torch.float32)
        x -= self.mean_crops(torch.as_tensor(view_offsets).reshape(v, 3))
        return x.reshape(b * v, *x.shape[2:]).permute(0, 3, 1, 2)
