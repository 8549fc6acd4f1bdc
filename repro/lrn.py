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
    lrn(..., fast=True),  same_map_norm(..., fast=True)    (default) a hand-written backward,
        batch processed in cache-sized chunks on a CPU; see `_PowerNorm`. About 5-8x faster than
        torch.nn.LocalResponseNorm for forward + backward (benchmarks/bench_lrn.py measures it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

SIZE, K, ALPHA, BETA = 5, 2.0, 1e-4, 0.75
ALPHA_PER_TERM = {"paper": ALPHA, "code145": ALPHA / SIZE}

# code 145's extra normalisation after conv2's LRN: same map, 5x5 neighbourhood,
# scale 0.001 / 25, power 0.75, 1 in place of k.
RNORM_SIZE, RNORM_K, RNORM_SCALE, RNORM_POWER = 5, 1.0, 0.001 / 25, 0.75

# On a CPU the fast path works through the batch in chunks of about this many bytes per
# scratch tensor, so that its intermediate passes stay in the cache (measured: 1-4 MB is best).
CPU_CHUNK_BYTES = 2 << 20


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


# --------------------------------------------------------------------------- fast

def _window_sum_1d(src: torch.Tensor, dst: torch.Tensor, dim: int, base: float) -> None:
    """dst = base + sum of src over the 5 positions centred on each index along `dim`
    (zeros past the ends), as one copy and four shifted in-place adds."""
    length = src.shape[dim]
    torch.add(src, base, out=dst)
    for shift in range(1, SIZE // 2 + 1):
        if shift >= length:
            break
        n = length - shift
        dst.narrow(dim, shift, n).add_(src.narrow(dim, 0, n))  # neighbour below
        dst.narrow(dim, 0, n).add_(src.narrow(dim, shift, n))  # neighbour above


def _window_sum(src: torch.Tensor, dst: torch.Tensor, tmp: torch.Tensor, base: float,
                spatial: bool) -> None:
    """dst = base + window sum of src: over 5 channels (dim 1), or over a 5x5 patch of each
    map (separable: along W into tmp, then along H). src may be overwritten."""
    if spatial:
        _window_sum_1d(src, tmp, 3, 0.0)
        _window_sum_1d(tmp, dst, 2, base)
    else:
        _window_sum_1d(src, dst, 1, base)


def _chunks(x: torch.Tensor, n_scratch: int):
    """Yield (batch slice, scratch tensors) covering the batch of x. On a CPU a chunk is a few
    samples, so the scratch stays in the cache; elsewhere (CUDA) the whole batch at once."""
    batch = x.shape[0]
    per_sample = max(1, math.prod(x.shape[1:]) * x.element_size())
    rows = batch if x.device.type != "cpu" else max(1, min(batch, CPU_CHUNK_BYTES // per_sample))
    scratch = [x.new_empty((rows,) + x.shape[1:]) for _ in range(n_scratch)]
    for start in range(0, batch, rows):
        stop = min(start + rows, batch)
        yield slice(start, stop), [s[:stop - start] for s in scratch]


def _forward(x: torch.Tensor, k: float, alpha: float, spatial: bool,
             save: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out = x * d^-3/4 with d = k + alpha * window_sum(x^2); also q = d^-1/4 if `save`.

    d^-3/4 is computed as rsqrt(d) * sqrt(rsqrt(d)): three cheap passes instead of a pow with
    a fractional exponent (2x slower here), and about as exact (within 4e-7 relative of a
    float64 computation in float32)."""
    out = torch.empty_like(x)
    q = torch.empty_like(x) if save else None
    zero = x.new_zeros(())
    for rows, (a, b, c) in _chunks(x, 3):
        xc = x[rows]
        torch.addcmul(zero, xc, xc, value=alpha, out=a)  # alpha * x^2
        _window_sum(a, b, c, k, spatial)                 # b = d
        torch.rsqrt(b, out=a)                            # a = d^-1/2
        qc = q[rows] if save else c
        torch.sqrt(a, out=qc)                            # d^-1/4
        a.mul_(qc)                                       # a = d^-3/4
        torch.mul(xc, a, out=out[rows])
    return out, q


def _backward(g: torch.Tensor, x: torch.Tensor, q: torch.Tensor, alpha: float,
              spatial: bool) -> torch.Tensor:
    """grad_x = g d^-3/4 - 2 alpha beta x window_sum(g x d^-7/4), the window being symmetric.

    From b_i = a_i d_i^-beta, d_i = k + alpha sum_{j in N(i)} a_j^2:
    dL/da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i in N(j)} g_i a_i d_i^(-beta-1)."""
    gx = torch.empty_like(x)
    for rows, (a, b, c) in _chunks(x, 3):
        qc, xc, gxc = q[rows], x[rows], gx[rows]
        torch.mul(qc, qc, out=a)                  # d^-1/2
        torch.mul(a, qc, out=b)                   # d^-3/4
        torch.mul(g[rows], b, out=gxc)            # g d^-3/4
        a.mul_(a)                                 # d^-1
        torch.mul(gxc, xc, out=b).mul_(a)         # g x d^-7/4
        _window_sum(b, a, c, 0.0, spatial)
        gxc.addcmul_(a, xc, value=-2.0 * alpha * BETA)
    return gx


class _PowerNorm(torch.autograd.Function):
    """b = a (k + alpha * window_sum(a^2))^-3/4 with a hand-written backward. Saves the input
    and d^-1/4 only (from which the backward rebuilds d^-3/4 and d^-7/4 by multiplication).
    Not twice differentiable: use fast=False for double backward."""

    @staticmethod
    def forward(ctx, x, k, alpha, spatial):
        out, q = _forward(x, k, alpha, spatial, save=True)
        ctx.save_for_backward(x, q)
        ctx.alpha, ctx.spatial = alpha, spatial
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, q = ctx.saved_tensors
        return _backward(g, x, q, ctx.alpha, ctx.spatial), None, None, None


def _power_norm_fast(x: torch.Tensor, k: float, alpha: float, spatial: bool) -> torch.Tensor:
    if BETA != 0.75 or RNORM_POWER != 0.75:  # the rsqrt/sqrt trick is for beta = 3/4 only
        raise NotImplementedError("the fast path computes d^-3/4; use fast=False")
    x = x.contiguous()
    if torch.is_grad_enabled() and x.requires_grad:
        return _PowerNorm.apply(x, k, alpha, spatial)
    return _forward(x, k, alpha, spatial, save=False)[0]


# --------------------------------------------------------------------------- public

def lrn(x: torch.Tensor, flavour: str, fast: bool = True) -> torch.Tensor:
    """Cross-map LRN (section 3.3) of one tower's activations x: [B, C, ...]."""
    if fast:
        shape = x.shape
        out = _power_norm_fast(x.reshape(shape[0], shape[1], math.prod(shape[2:])), K, ALPHA_PER_TERM[flavour],
                               spatial=False)
        return out.view(shape)
    return _lrn_plain(x, flavour)


def same_map_norm(x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Code 145's `rnorm` (not in the paper): each map normalised by the activity in a 5x5
    patch of itself. x: [B, C, H, W]."""
    if x.dim() != 4:
        raise ValueError(f"same_map_norm expects [B, C, H, W], got shape {tuple(x.shape)}")
    if fast:
        return _power_norm_fast(x, RNORM_K, RNORM_SCALE, spatial=True)
    return _same_map_norm_plain(x)


class LRN(nn.Module):
    """Section 3.3's local response normalisation over one tower's maps."""

    def __init__(self, flavour: str, fast: bool = True):
        super().__init__()
        if flavour not in ALPHA_PER_TERM:
            raise ValueError(f"LRN flavour must be one of {list(ALPHA_PER_TERM)}, got {flavour!r}")
        self.flavour, self.fast = flavour, fast

    def forward(self, x):
        return lrn(x, self.flavour, self.fast)

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
