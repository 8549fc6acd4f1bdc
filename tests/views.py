"""The paper's ten test views written out by hand (section 4.1), to hold the evaluation, predict
and export paths against; and the tolerance for probabilities computed by other kernels."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data_prep import shards
from repro import data
from tests.tolerance import softmax_atol

CROP = 224


def explicit_views(image: np.ndarray, mean: np.ndarray):
    """The paper's ten views written out by hand: the four corner patches, the centre patch, and
    the mirror of each; the mean image is taken at the same place (and mirrored with the crop)."""
    e, c = image.shape[0] - CROP, (image.shape[0] - CROP) // 2
    out = []
    for mirrored in (False, True):
        for top, left in ((0, 0), (0, e), (e, 0), (e, e), (c, c)):
            crop = image[top:top + CROP, left:left + CROP].astype(np.float32)
            m = mean[top:top + CROP, left:left + CROP].astype(np.float32)
            if mirrored:
                crop, m = crop[:, ::-1], m[:, ::-1]
            out.append(crop - m)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)  # (10, 3, 224, 224); row 4 = centre


@torch.no_grad()
def explicit_ten_view(model, images: np.ndarray, mean: np.ndarray) -> torch.Tensor:
    """Mean over the ten explicit views of the softmax of each, per image: (N, C)."""
    return torch.stack([F.softmax(model(explicit_views(im, mean)), dim=1).mean(0) for im in images])


@torch.no_grad()
def views_atol(model, images: np.ndarray, mean: np.ndarray) -> float:
    """softmax_atol of the model's logits over the explicit views of these images: the tolerance
    for probabilities computed by other kernels (other batch compositions, layouts)."""
    return softmax_atol(torch.cat([model(explicit_views(im, mean)) for im in images]))


def val_images(root) -> np.ndarray:
    return np.concatenate([np.asarray(shards.map_images(m)) for m in data.open_split(root, "val").metas])
