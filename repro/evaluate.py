"""Top-1 / top-5 error with the centre crop or 10 views (paper section 6; PAPER.md "Test time").

10 views: the four corner patches, the centre patch and the mirror of each; the network's softmax
outputs over the ten are averaged. Ensembles average the softmax outputs of several networks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from repro import data


def topk_errors(probs: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is not among the k highest scores, for each k."""
    k_max = min(max(ks), probs.shape[1])
    top = probs.topk(k_max, dim=1).indices
    hit = top == labels[:, None]
    return {k: 1.0 - hit[:, :min(k, k_max)].any(dim=1).float().mean().item() for k in ks}


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Softmax of each view, averaged over the `views` consecutive rows of each image."""
    probs = F.softmax(logits.float(), dim=1)
    return probs.view(-1, views, probs.shape[1]).mean(dim=1)


@torch.no_grad()
def predict(model, root, split: str, views: str, batch_size: int, workers: int, normalizer,
            progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs (averaged over the views) and labels for every image of a split, in file order."""
    model.eval()
    device = model.placement.output_device
    n_views = len(data.view_offsets(views))
    probs, labels = [], []
    for images, y, offsets in data.eval_batches(root, split, views, batch_size, workers,
                                                pin_memory=device.type == "cuda"):
        x = normalizer.views(images, offsets).to(device, non_blocking=True)
        probs.append(average_views(model(x), n_views).cpu())
        labels.append(y)
        if progress is not None:
            progress.update(len(y))
    return torch.cat(probs), torch.cat(labels)


@dataclass
class Errors:
    top1: float
    top5: float
    loss: float  # mean negative log of the averaged probability of the true class
    images: int

    def as_dict(self) -> dict:
        return {"top1_error": self.top1, "top5_error": self.top5, "loss": self.loss, "images": self.images}


def errors(probs: torch.Tensor, labels: torch.Tensor) -> Errors:
    e = topk_errors(probs, labels)
    nll = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item()
    return Errors(e[1], e[5], nll, len(labels))


def per_class_errors(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """float [C, 2]: top-1 and top-5 error of each class (nan for a class with no images)."""
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
    miss1 = (top5[:, 0] != labels).float()
    miss5 = 1.0 - (top5 == labels[:, None]).any(dim=1).float()
    out = np.full((num_classes, 2), np.nan)
    for c in labels.unique().tolist():
        rows = labels == c
        out[c] = [miss1[rows].mean().item(), miss5[rows].mean().item()]
    return out
