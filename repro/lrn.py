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
    lrn(..., fast=True),  same_map_norm(..., fast=True)    (default) a hand-written backward
        that saves little and uses cheap passes; on a CPU the batch goes in cache-sized chunks
        to one single-threaded worker per core. See `_PowerNorm`; benchmarks/bench_lrn.py
        measures it against torch.nn.LocalResponseNorm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from repro.cpu_threads import run_parts

SIZE, K, ALPHA, BETA = 5, 2.0, 1e-4, 0.75
ALPHA_PER_TERM = {"paper": ALPHA, "code145": ALPHA / SIZE}

# code 145's extra normalisation after conv2's LRN: same map, 5x5 neighbourhood,
# scale 0.001 / 25, power 0.75, 1 in place of k.
RNORM_SIZE, RNORM_K, RNORM_SCALE, RNORM_POWER = 5, 1.0, 0.001 / 25, 0.75

# On a CPU the fast path works through the batch in chunks of about this many bytes per
# scratch tensor, so that its passes stay in the cache; the chunks are shared out among one
# single-threaded worker per core (repro.cpu_threads says why).
CPU_CHUNK_BYTES = 1 << 20  # about one core's L2 cache (measured: 0.5-2 MB best)


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

class _WindowSum:
    """Scratch for dst = k + alpha * window_sum(src) over chunks of `shape` = (rows, C, ...):
    over 5 channels (dims (1,)) or over a 5x5 patch of each map (dims (3, 2): along W, then H).

    Each stage along one dim reads a buffer with 2 extra entries on each side of that dim and
    sums 5 neighbours in 3 ops: pairs, pairs of pairs, plus the fifth. k is spread over the
    window: each input cell carries k / 5^len(dims) (as do the padding entries), so that the
    sum comes out as k + alpha * sum without a pass of its own."""

    def __init__(self, shape: tuple, dims: tuple, like: torch.Tensor, k: float):
        self.dims, self.share = dims, k / SIZE ** len(dims)
        self.bufs, self.tmps = [], []
        for stage, dim in enumerate(dims):
            n = shape[dim]
            buf = like.new_empty(_grown(shape, dim, 4))
            buf.narrow(dim, 0, 2).fill_(self.share * SIZE ** stage)  # the padding: zeros of
            buf.narrow(dim, n + 2, 2).fill_(self.share * SIZE ** stage)  # the sum, plus k's share
            self.bufs.append(buf)
            self.tmps.append(like.new_empty(_grown(shape, dim, 3)))
        self.out = like.new_empty(shape)

    def input(self, rows: int) -> torch.Tensor:
        """Where to write alpha * src (+ self.share) for the first `rows` rows."""
        dim = self.dims[0]
        return self.bufs[0][:rows].narrow(dim, 2, self.out.shape[dim])

    def __call__(self, rows: int) -> torch.Tensor:
        """The window sum of what was written to input(rows)."""
        for stage, dim in enumerate(self.dims):
            src, tmp, n = self.bufs[stage][:rows], self.tmps[stage][:rows], self.out.shape[dim]
            if stage + 1 < len(self.dims):
                nxt = self.dims[stage + 1]
                dst = self.bufs[stage + 1][:rows].narrow(nxt, 2, self.out.shape[nxt])
            else:
                dst = self.out[:rows]
            torch.add(src.narrow(dim, 0, n + 3), src.narrow(dim, 1, n + 3), out=tmp)  # j, j+1
            torch.add(tmp.narrow(dim, 0, n), tmp.narrow(dim, 2, n), out=dst)  # j .. j+3
            dst.add_(src.narrow(dim, 4, n))  # j .. j+4, i.e. i-2 .. i+2 in unpadded indices
        return self.out[:rows]


def _grown(shape: tuple, dim: int, by: int) -> tuple:
    return tuple(s + by if d == dim else s for d, s in enumerate(shape))


def _chunks(x: torch.Tensor) -> tuple[int, list[slice]]:
    """Split the batch: on a CPU into chunks of a few samples, so that each worker's scratch
    stays in the cache (and is not freshly paged in for every pass); elsewhere (CUDA) the
    whole batch is one chunk."""
    batch = x.shape[0]
    if x.device.type != "cpu":
        rows = max(1, batch)
    else:
        per_sample = max(1, math.prod(x.shape[1:]) * x.element_size())
        rows = max(1, min(batch, CPU_CHUNK_BYTES // per_sample))
    return rows, [slice(start, start + rows) for start in range(0, batch, rows)]


def _forward(x: torch.Tensor, k: float, alpha: float, dims: tuple,
             save: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out = x * d^-3/4 with d = k + alpha * window_sum(x^2); also q = d^-1/4 if `save`.

    d^-3/4 is computed as rsqrt(d) * sqrt(rsqrt(d)): three cheap passes instead of a pow with
    a fractional exponent (far more work per element), and about as exact: in float32 within
    5e-7 relative of a float64 computation (tests/test_lrn.py holds it to 1e-6)."""
    out = torch.empty_like(x)
    q = torch.empty_like(x) if save else None
    rows, chunks = _chunks(x)

    def work(mine: list[slice]) -> None:
        window = _WindowSum((rows,) + x.shape[1:], dims, x, k)
        share = x.new_full((), window.share)
        for chunk in mine:
            xc = x[chunk]
            m = xc.shape[0]
            a = window.input(m)
            torch.addcmul(share, xc, xc, value=alpha, out=a)  # alpha x^2 (+ k's share)
            d = window(m)                                     # k + alpha window_sum(x^2)
            torch.rsqrt(d, out=a)                             # d^-1/2
            qc = q[chunk] if save else d
            torch.sqrt(a, out=qc)                             # d^-1/4
            a.mul_(qc)                                        # d^-3/4
            torch.mul(xc, a, out=out[chunk])

    run_parts(work, chunks)
    return out, q


def _backward(g: torch.Tensor, x: torch.Tensor, q: torch.Tensor, alpha: float,
              dims: tuple) -> torch.Tensor:
    """grad_x = g d^-3/4 - 2 alpha beta x window_sum(g x d^-7/4), the window being symmetric.

    From b_i = a_i d_i^-beta, d_i = k + alpha sum_{j in N(i)} a_j^2:
    dL/da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i in N(j)} g_i a_i d_i^(-beta-1)."""
    gx = torch.empty_like(x)
    rows, chunks = _chunks(x)

    def work(mine: list[slice]) -> None:
        window = _WindowSum((rows,) + x.shape[1:], dims, x, 0.0)
        e = x.new_empty((rows,) + x.shape[1:])
        for chunk in mine:
            qc, xc, gxc = q[chunk], x[chunk], gx[chunk]
            m = xc.shape[0]
            u, ec = window.input(m), e[:m]
            torch.mul(qc, qc, out=ec)                 # d^-1/2
            torch.mul(ec, qc, out=u)                  # d^-3/4
            torch.mul(g[chunk], u, out=gxc)           # g d^-3/4
            ec.mul_(ec)                               # d^-1
            torch.mul(gxc, xc, out=u).mul_(ec)        # g x d^-7/4
            gxc.addcmul_(window(m), xc, value=-2.0 * alpha * BETA)

    run_parts(work, chunks)
    return gx


class _PowerNorm(torch.autograd.Function):
    """b = a (k + alpha * window_sum(a^2))^-3/4 with a hand-written backward. Saves the input
    and d^-1/4 only (from which the backward rebuilds d^-3/4 and d^-7/4 by multiplication).
    Not twice differentiable: use fast=False for double backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # bf16 would lose alpha' sum
    def forward(ctx, x, k, alpha, dims):
        out, q = _forward(x, k, alpha, dims, save=True)
        ctx.save_for_backward(x, q)
        ctx.alpha, ctx.dims = alpha, dims
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):
        x, q = ctx.saved_tensors
        return _backward(g, x, q, ctx.alpha, ctx.dims), None, None, None


def _power_norm_fast(x: torch.Tensor, k: float, alpha: float, dims: tuple) -> torch.Tensor:
    if BETA != 0.75 or RNORM_POWER != 0.75:  # the rsqrt/sqrt trick is for beta = 3/4 only
        raise NotImplementedError("the fast path computes d^-3/4; use fast=False")
    x = x.contiguous()
    if x.dtype in (torch.float16, torch.bfloat16):  # always normalise in float32 (k + alpha' sum)
        x = x.float()
    if torch.is_grad_enabled() and x.requires_grad:
        return _PowerNorm.apply(x, k, alpha, dims)
    return _forward(x, k, alpha, dims, save=False)[0]


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor stored as [B, H, W, C] (NHWC) and not also as [B, C, H, W]."""
    return (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous())


# --------------------------------------------------------------------------- public

def lrn(x: torch.Tensor, flavour: str, fast: bool = True, groups: int = 1) -> torch.Tensor:
    """Cross-map LRN (section 3.3) of x: [B, C, ...], the window running along dim 1.

    `groups` > 1: the C maps are that many towers' maps side by side (the grouped emulation);
    the window stays inside each group. The fast path works in x's own memory layout: on an
    NHWC (channels-last) tensor the maps are the innermost dim, and the result is NHWC too.
    """
    b, c = x.shape[:2]
    if groups > 1 and c % groups:
        raise ValueError(f"{c} maps do not split into {groups} groups")
    alpha = ALPHA_PER_TERM[flavour]
    if not fast:
        parts = x.reshape(b * groups, c // groups, *x.shape[2:])
        return _lrn_plain(parts, flavour).reshape(x.shape)
    if is_channels_last(x):
        h, w = x.shape[2:]
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h * w, groups, c // groups)  # a view
        out = _power_norm_fast(nhwc, K, alpha, (3,))
        return out.view(b, h, w, c).permute(0, 3, 1, 2)  # [B, C, H, W], NHWC in memory
    flat = x.reshape(b, groups, c // groups, math.prod(x.shape[2:]))  # any trailing dims
    return _power_norm_fast(flat, K, alpha, (2,)).view(x.shape)


def same_map_norm(x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Code 145's `rnorm` (not in the paper): each map normalised by the activity in a 5x5
    patch of itself. x: [B, C, H, W] (NCHW or channels-last; the result has x's layout)."""
    if x.dim() != 4:
        raise ValueError(f"same_map_norm expects [B, C, H, W], got shape {tuple(x.shape)}")
    if not fast:
        return _same_map_norm_plain(x)
    if is_channels_last(x):  # [B, H, W, C] in memory: the patch runs along W (dim 2), then H
        out = _power_norm_fast(x.permute(0, 2, 3, 1), RNORM_K, RNORM_SCALE, (2, 1))
        return out.permute(0, 3, 1, 2)
    return _power_norm_fast(x, RNORM_K, RNORM_SCALE, (3, 2))  # along W, then H


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
