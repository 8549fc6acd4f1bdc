"""Local response normalisation (paper section 3.3) and code 145's same-map normalisation.

    b_i = a_i / (k + alpha' * sum_{j = i-n/2 .. i+n/2} a_j^2) ^ beta,   k = 2, n = 5, beta = 0.75

over the maps of ONE tower (the window never crosses into the other tower's maps; each tower
calls this on its own tensor). The two flavours differ only in alpha':
    "paper"   alpha' = 1e-4, as printed in the paper
    "code145" alpha' = 1e-4 / 5, because cuda-convnet's parser divides the scale by the window
              size (this is also what torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2) computes)

Three implementations of each normalisation, all with the same semantics:
    lrn_reference, same_map_norm_reference   the formula written out as a loop; slow; tests only
    lrn(..., fast=False), same_map_norm(..., fast=False)   plain tensor ops, autograd does the rest
    lrn(..., fast=True),  same_map_norm(..., fast=True)    (default) repro/fast/lrn.py: a kernel
        with a hand-written backward (a speed path; benchmarks/bench_lrn.py measures it against
        torch.nn.LocalResponseNorm, tests/test_lrn.py holds it against the formula)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from repro.fast import lrn as fast_lrn

SIZE, K, ALPHA, BETA = 5, 2.0, 1e-4, 0.75
ALPHA_PER_TERM = {"paper": ALPHA, "code145": ALPHA / SIZE}

# code 145's extra normalisation after conv2's LRN: same map, 5x5 neighbourhood,
# scale 0.001 / 25, power 0.75, 1 in place of k.
RNORM_SIZE, RNORM_K, RNORM_SCALE, RNORM_POWER = 5, 1.0, 0.001 / 25, 0.75

if {SIZE, RNORM_SIZE} != {fast_lrn.SIZE} or {BETA, RNORM_POWER} != {fast_lrn.BETA}:
    raise ImportError("repro/fast/lrn.py computes windows of 5 and the power 3/4 only")

# --------------------------------------------------------------------------- the reference

def lrn_reference(x: torch.Tensor, flavour: str) -> torch.Tensor:
    """Section 3.3's formula, one output map at a time: the obviously-right version that
    the tests hold the other two against. x: [B, C, ...] activations of one tower."""
    alpha, half, channels = ALPHA_PER_TERM[flavour], SIZE // 2, x.shape[1]
    maps = []
    for i in range(channels):
        lo, hi = max(0, i - half), min(channels - 1, i + half)  # maps past the ends count as 0
        sum_sq = (x[:, lo:hi + 1] ** 2).sum(dim=1)
        maps.append(x[:, i] / (K + alpha * sum_sq) ** BETA)
    return torch.stack(maps, dim=1)


def same_map_norm_reference(x: torch.Tensor) -> torch.Tensor:
    """Code 145's `rnorm` written out: each map divided by (1 + 0.001/25 * sum of its squares
    over the 5x5 patch centred on each position, zeros outside) ^ 0.75. x: [B, C, H, W]."""
    half, (height, width) = RNORM_SIZE // 2, x.shape[-2:]
    sq = F.pad(x * x, (half, half, half, half))
    sum_sq = torch.zeros_like(x)
    for dy in range(RNORM_SIZE):
        for dx in range(RNORM_SIZE):
            sum_sq = sum_sq + sq[..., dy:dy + height, dx:dx + width]
    return x / (RNORM_K + RNORM_SCALE * sum_sq) ** RNORM_POWER


# --------------------------------------------------------------------------- plain

def window_sum(sq: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Sum of `sq` over a window of `size` neighbouring channels (zeros past the ends)."""
    half = size // 2
    padded = F.pad(sq, (0, 0, 0, 0, half, size - 1 - half))
    channels = sq.shape[1]
    out = padded[:, 0:channels].clone()
    for j in range(1, size):
        out += padded[:, j:j + channels]
    return out


def _lrn_plain(x: torch.Tensor, flavour: str) -> torch.Tensor:
    x4 = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]), 1)
    out = x4 * (K + ALPHA_PER_TERM[flavour] * window_sum(x4 * x4)).pow(-BETA)
    return out.view(x.shape)


def _same_map_norm_plain(x: torch.Tensor) -> torch.Tensor:
    sq_sum = F.avg_pool2d(x * x, RNORM_SIZE, stride=1, padding=RNORM_SIZE // 2,
                          count_include_pad=True) * (RNORM_SIZE * RNORM_SIZE)
    return x * (RNORM_K + RNORM_SCALE * sq_sum).pow(-RNORM_POWER)


# --------------------------------------------------------------------------- public

def _compiling() -> bool:
    """True while torch.compile traces the model (then the plain formula is traced and fused)."""
    return torch.compiler.is_compiling()


def lrn(x: torch.Tensor, flavour: str, fast: bool = True, groups: int = 1) -> torch.Tensor:
    """Cross-map LRN (section 3.3) of x: [B, C, ...], the window running along dim 1.

    `groups` > 1: the C maps are that many towers' maps side by side (the grouped emulation);
    the window stays inside each group. fast=True: repro/fast/lrn.py's kernel (the same
    function, within float32 rounding), which keeps x's memory layout (channels-last stays so);
    under torch.compile (speed.compile) the plain formula instead, which the compiler fuses
    (the kernel's worker threads and out= passes cannot be traced: each would break the graph).
    """
    b, c = x.shape[:2]
    if groups > 1 and c % groups:
        raise ValueError(f"{c} maps do not split into {groups} groups")
    if fast and not _compiling():
        return fast_lrn.cross_map(x, K, ALPHA_PER_TERM[flavour], groups)
    parts = x.reshape(b * groups, c // groups, *x.shape[2:])
    return _lrn_plain(parts, flavour).reshape(x.shape)


def same_map_norm(x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Code 145's `rnorm` (not in the paper): each map normalised by the activity in a 5x5
    patch of itself. x: [B, C, H, W] (NCHW or channels-last; the result has x's layout)."""
    if x.dim() != 4:
        raise ValueError(f"same_map_norm expects [B, C, H, W], got shape {tuple(x.shape)}")
    if fast and not _compiling():
        return fast_lrn.same_map(x, RNORM_K, RNORM_SCALE)
    return _same_map_norm_plain(x)


class LRN(nn.Module):
    """Section 3.3's local response normalisation over one tower's maps."""

    def __init__(self, flavour: str, fast: bool = True):
        super().__init__()
        if flavour not in ALPHA_PER_TERM:
            raise ValueError(f"LRN flavour must be one of {list(ALPHA_PER_TERM)}, got {flavour!r}")
        self.flavour, self.fast = flavour, fast

    def forward(self, x, groups: int = 1):
        return lrn(x, self.flavour, self.fast, groups)

    def extra_repr(self):
        return (f"flavour={self.flavour}, size={SIZE}, k={K}, "
                f"alpha'={ALPHA_PER_TERM[self.flavour]:g}, beta={BETA}, fast={self.fast}")


class SameMapNorm(nn.Module):
    """Code 145's same-map 5x5 normalisation after conv2's LRN (not in the paper)."""

    def __init__(self, fast: bool = True):
        super().__init__()
        self.fast = fast

    def forward(self, x):
        return same_map_norm(x, self.fast)

    def extra_repr(self):
        return (f"size={RNORM_SIZE}x{RNORM_SIZE}, k={RNORM_K:g}, "
                f"alpha'={RNORM_SCALE:g}, beta={RNORM_POWER}, fast={self.fast}")
