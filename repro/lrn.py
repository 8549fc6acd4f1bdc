"""Local response normalisation (paper section 3.3) and code 145's same-map normalisation.

    b_i = a_i / (k + alpha' * sum_{j = i-n/2 .. i+n/2} a_j^2) ^ beta,   k = 2, n = 5, beta = 0.75

over the maps of ONE tower (the window never crosses into the other tower's maps; each tower
calls this on its own tensor). The two flavours differ only in alpha':
    "paper"   alpha' = 1e-4, as printed in the paper
    "code145" alpha' = 1e-4 / 5, because cuda-convnet's parser divides the scale by the window
              size (this is also what torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2) computes)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIZE, K, ALPHA, BETA = 5, 2.0, 1e-4, 0.75
ALPHA_PER_TERM = {"paper": ALPHA, "code145": ALPHA / SIZE}

# code 145's extra normalisation after conv2's LRN: same map, 5x5 neighbourhood,
# scale 0.001 / 25, power 0.75, 1 in place of k.
RNORM_SIZE, RNORM_K, RNORM_SCALE, RNORM_POWER = 5, 1.0, 0.001 / 25, 0.75


def window_sum(sq: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Sum of `sq` over a window of `size` neighbouring channels (zeros past the ends)."""
    half = size // 2
    padded = F.pad(sq, (0, 0, 0, 0, half, size - 1 - half))
    channels = sq.shape[1]
    out = padded[:, 0:channels].clone()
    for j in range(1, size):
        out += padded[:, j:j + channels]
    return out


def lrn(x: torch.Tensor, flavour: str) -> torch.Tensor:
    """Cross-map LRN of one tower's activations x: [B, C, H, W]."""
    alpha = ALPHA_PER_TERM[flavour]
    return x * (K + alpha * window_sum(x * x)).pow(-BETA)


def same_map_norm(x: torch.Tensor) -> torch.Tensor:
    """Code 145's `rnorm`: each map normalised by the activity in a 5x5 patch of itself."""
    sq_sum = F.avg_pool2d(x * x, RNORM_SIZE, stride=1, padding=RNORM_SIZE // 2,
                          count_include_pad=True) * (RNORM_SIZE * RNORM_SIZE)
    return x * (RNORM_K + RNORM_SCALE * sq_sum).pow(-RNORM_POWER)


class LRN(nn.Module):
    def __init__(self, flavour: str):
        super().__init__()
        if flavour not in ALPHA_PER_TERM:
            raise ValueError(f"LRN flavour must be one of {list(ALPHA_PER_TERM)}, got {flavour!r}")
        self.flavour = flavour

    def forward(self, x):
        return lrn(x, self.flavour)

    def extra_repr(self):
        return f"flavour={self.flavour}, size={SIZE}, k={K}, alpha'={ALPHA_PER_TERM[self.flavour]:g}, beta={BETA}"


class SameMapNorm(nn.Module):
    def forward(self, x):
        return same_map_norm(x)
