"""Crops, mirrors, test views, PCA lighting and the Normalizer (paper section 4.1) against direct
slices and a plain numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep import shards
from repro import augment, data
from repro.config import AugmentConfig, Config

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# ImageNet's eigenvalues on the 0-255 scale (cuda-convnet2's metadata; docs/fidelity.md, "PCA lighting").
IMAGENET_EIGENVALUES = np.array([122.0, 37.0, 20.0]) ** 2


def _direct_ten(img):
    """The ten views written out by hand: corners, centre, then their mirrors."""
    five = [img[0:224, 0:224], img[0:224, 32:256], img[32:256, 0:224], img[32:256, 32:256],
            img[16:240, 16:240]]
    return five + [v[:, ::-1] for v in five]


def test_random_crop_params_cover_every_offset_and_mirror_half_the_time():
    p = augment.random_crop_params(np.random.default_rng(0), 20000)
    assert p.dtype == np.int64 and p.shape == (20000, 3)
    assert set(p[:, 0]) == set(range(33)) and set(p[:, 1]) == set(range(33))
    assert 0.48 < p[:, 2].mean() < 0.52
    assert not augment.random_crop_params(np.random.default_rng(0), 1000, flip=False)[:, 2].any()


@pytest.mark.parametrize("top,left", [(0, 0), (0, 32), (32, 0), (7, 19), (32, 32)])
def test_copy_crop_equals_the_sliced_and_mirrored_image(top, left):
    image = np.random.default_rng(6).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for mirrored in (0, 1):
        dst = np.zeros((224, 224, 3), np.uint8)
        augment.copy_crop(dst, image, top, left, mirrored)
        expected = image[top:top + 224, left:left + 224]
        np.testing.assert_array_equal(dst, expected[:, ::-1] if mirrored else expected)


def test_ten_view_pixels_are_direct_slices_of_the_256_image():
    images = np.random.default_rng(1).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    views = augment.ten_view(images)
    assert views.shape == (2, 10, 224, 224, 3)
    for b in range(2):
        for v, expected in enumerate(_direct_ten(images[b])):
            np.testing.assert_array_equal(views[b, v], expected)
    # The same on torch tensors (torch cannot slice with a negative step: flip is a copy).
    tviews = augment.ten_view(torch.from_numpy(images))
    assert torch.equal(tviews, torch.from_numpy(views))
    # The offsets name the views: (top, left, mirrored).
    off = augment.ten_view_offsets()
    assert off.tolist() == [[0, 0, 0], [0, 32, 0], [32, 0, 0], [32, 32, 0], [16, 16, 0],
                            [0, 0, 1], [0, 32, 1], [32, 0, 1], [32, 32, 1], [16, 16, 1]]


def test_centre_crop_is_the_middle_224():
    images = np.random.default_rng(2).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(augment.centre_crop(images), images[:, 16:240, 16:240])
    np.testing.assert_array_equal(augment.centre_crop(images[0]), images[0, 16:240, 16:240])


def test_lighting_scale_states_the_pixel_scale():
    # Paper text, lambda read on [0, 1]: lambda01 * 255 = lambda255 / 255, about 58 levels per
    # unit alpha along p1, so about 5.8 levels at alpha std 0.1 (docs/fidelity.md: "about 5.5").
    np.testing.assert_allclose(augment.lighting_scale(IMAGENET_EIGENVALUES, "paper"),
                               [122 ** 2 / 255, 37 ** 2 / 255, 20 ** 2 / 255])
    # Code 145: the standard deviations on 0-255, about 12 levels at alpha std 0.1.
    np.testing.assert_allclose(augment.lighting_scale(IMAGENET_EIGENVALUES, "code145"), [122, 37, 20])


@pytest.mark.parametrize("flavour", ["paper", "code145"])
def test_pca_lighting_component_magnitudes_and_span(flavour):
    rng = np.random.default_rng(3)
    vectors, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    values = np.array([9000.0, 800.0, 0.0])  # rank 2: the colour must stay in span(p1, p2)
    alphas = torch.from_numpy(rng.normal(0, 0.1, (64, 3)).astype(np.float32))
    shift = augment.pca_lighting(alphas, values, vectors, flavour).double().numpy()
    components = shift @ vectors  # coordinates along p1, p2, p3
    expected = alphas.double().numpy() * augment.lighting_scale(values, flavour)
    np.testing.assert_allclose(components, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(components[:, 2]).max() < 1e-5 and np.abs(components[:, :2]).min() > 0


def test_lighting_colour_averages_to_zero_over_many_draws():
    cfg = Config()
    alphas = np.concatenate([data.augment_draws(cfg, 0, s)[1] for s in range(100)])  # 12,800 draws
    shift = augment.pca_lighting(torch.from_numpy(alphas), IMAGENET_EIGENVALUES, np.eye(3)).numpy()
    sem = shift.std(0) / np.sqrt(len(shift))
    assert np.all(np.abs(shift.mean(0)) < 4 * sem)
    np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.05)


# --------------------------------------------------------------------------------- Normalizer

def _reference(stats, aug, images, offsets, alphas, on):
    """A per-image numpy version of Normalizer.train, in the same float32 operation order."""
    mean32, c = stats.mean.astype(np.float32), aug.crop
    scale = augment.lighting_scale(stats.eigenvalues, aug.lighting).astype(np.float32) \
        if aug.lighting != "none" else None
    vec = stats.eigenvectors.astype(np.float32)
    out = []
    for img, (top, left, mirrored), a in zip(images, offsets, alphas):
        if aug.mean == "crop":
            m = mean32[top:top + c, left:left + c]
            m = m[:, ::-1] if mirrored else m
        else:
            m = mean32[16:16 + c, 16:16 + c]
        x = img.astype(np.float32) - m
        if scale is not None and on:
            t = a * scale
            x = x + (t[0] * vec[:, 0] + t[1] * vec[:, 1] + t[2] * vec[:, 2])
            if aug.lighting == "code145":
                x = x * np.float32(1.0 / (1.0 + aug.lighting_std))
        out.append(x.transpose(2, 0, 1))
    return np.stack(out)


def _batch(n=6, seed=4, on=True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    offsets = augment.random_crop_params(rng, n)
    alphas = rng.normal(0, 0.1, (n, 3)).astype(np.float32)
    return data.Batch(torch.from_numpy(images), torch.zeros(n, dtype=torch.int64),
                      torch.from_numpy(offsets), torch.from_numpy(alphas), lighting=on)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", ["crop", "centre"])
@pytest.mark.parametrize("lighting", ["paper", "code145", "none"])
def test_normalizer_train_equals_the_numpy_reference_exactly(tiny_shards, device, mean, lighting):
    stats = shards.read_stats(tiny_shards)
    aug = AugmentConfig(mean=mean, lighting=lighting)
    batch = _batch()
    x = augment.Normalizer(stats, aug, device).train(batch.to(device))
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and x.device.type == device
    assert x.is_contiguous(memory_format=torch.channels_last)  # NCHW view of NHWC data
    expected = _reference(stats, aug, batch.images.numpy(), batch.offsets.numpy(),
                          batch.alphas.numpy(), True)
    assert torch.equal(x.cpu(), torch.from_numpy(expected))


@pytest.mark.parametrize("flavour", ["paper", "code145"])
def test_normalizer_adds_one_constant_colour_per_image(tiny_shards, flavour):
    stats = shards.read_stats(tiny_shards)
    norm = augment.Normalizer(stats, AugmentConfig(lighting=flavour, lighting_std=0.1))
    batch = _batch()
    plain = norm.train(data.Batch(batch.images, batch.labels, batch.offsets,
                                  torch.zeros_like(batch.alphas)))
    diff = (norm.train(batch) - plain).double()  # [B, 3, H, W]
    colour = diff.mean((2, 3))
    assert torch.allclose(diff, colour[:, :, None, None], atol=2e-3)  # the same at every pixel
    if flavour == "code145":
        colour = colour * 1.1  # the /1.1 scales the whole input, colour included
    expected = stats.eigenvectors @ (batch.alphas.double().numpy()
                                     * augment.lighting_scale(stats.eigenvalues, flavour)).T
    np.testing.assert_allclose(colour.numpy(), expected.T, atol=2e-3)


def test_code145_divides_only_while_lighting_is_on(tiny_shards):
    stats = shards.read_stats(tiny_shards)
    norm = augment.Normalizer(stats, AugmentConfig(lighting="code145", mean="centre"))
    off = _batch(on=False)
    off.alphas.zero_()
    expected = off.images.float() - torch.from_numpy(stats.mean[16:240, 16:240].astype(np.float32))
    assert torch.equal(norm.train(off), expected.permute(0, 3, 1, 2))
    on = _batch(on=True)
    on.alphas.zero_()
    assert torch.allclose(norm.train(on), expected.permute(0, 3, 1, 2) / 1.1, atol=1e-4)


@pytest.mark.parametrize("mean", ["crop", "centre"])
def test_normalizer_views_subtract_the_mean_under_each_view(tiny_shards, mean):
    stats = shards.read_stats(tiny_shards)
    norm = augment.Normalizer(stats, AugmentConfig(mean=mean))
    full = np.random.default_rng(5).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    offsets = augment.ten_view_offsets()
    x = norm.views(torch.from_numpy(augment.ten_view(full)), offsets)
    assert x.shape == (20, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)
    mean32 = stats.mean.astype(np.float32)
    for b in range(2):
        for v in range(10):
            if mean == "crop":  # subtracting the mean before taking the view
                expected = _direct_ten(full[b].astype(np.float32) - mean32)[v]
            else:
                expected = _direct_ten(full[b].astype(np.float32))[v] - mean32[16:240, 16:240]
            np.testing.assert_array_equal(x[b * 10 + v].permute(1, 2, 0).numpy(), expected)
