"""The naive baseline that the project's training-step speed is measured against
(benchmarks/bench_train_step.py on CPUs, repro/gpu_check.py on GPUs).

The usual way to write AlexNet: a dense single-tower nn.Sequential (conv2, conv4 and conv5 read
all maps of the layer below, so 1.57x the multiply-adds of the two-tower net at the paper's
widths), torch.nn.LocalResponseNorm, the paper's order (ReLU, LRN, pool), conv1 padded by 2
(224 -> 55), dropout after fc6 and fc7, and the paper's initialisation (section 5).
"""
from __future__ import annotations

import torch
from torch import nn

from repro.config import ModelConfig


def naive_alexnet(m: ModelConfig | None = None) -> nn.Sequential:
    """Dense AlexNet at the widths and number of classes of `m` (default: the paper's), with
    torch's LRN (alpha 1e-4 / 5: code 145's). Weights N(0, 0.01) from generator seed 0; biases
    1 in conv2, conv4, conv5, fc6 and fc7, 0 elsewhere."""
    w = (m or ModelConfig()).widths
    classes = (m or ModelConfig()).num_classes
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)  # noqa: E731
    net = nn.Sequential(
        nn.Conv2d(3, w.conv1, 11, stride=4, padding=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(w.conv1, w.conv2, 5, padding=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(w.conv2, w.conv3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w.conv3, w.conv4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w.conv4, w.conv5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(w.conv5 * 6 * 6, w.fc6), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(w.fc6, w.fc7), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(w.fc7, classes))
    gen = torch.Generator().manual_seed(0)
    weighted = [mod for mod in net if isinstance(mod, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():  # section 5: N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7
        for mod, bias in zip(weighted, (0, 1, 0, 1, 1, 1, 1, 0)):
            mod.weight.normal_(0, 0.01, generator=gen)
            mod.bias.fill_(bias)
    return net
