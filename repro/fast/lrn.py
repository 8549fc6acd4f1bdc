"""The fast LRN kernel: local response normalisation and code 145's same-map normalisation with a
hand-written backward (a speed path; repro/lrn.py holds the formula and the plain version).

Both normalisations are b = a * d^-3/4 with d = k + alpha * window_sum(a^2), the window running
over 5 neighbouring maps (LRN) or over a 5x5 patch of each map (same-map). This kernel:
- saves only the input and q = d^-1/4 for the backward pass (autograd would keep four tensors of
  the layer's size), and rebuilds d^-3/4 and d^-7/4 from q by multiplication;
- computes d^-3/4 as rsqrt(d) * sqrt(rsqrt(d)): three cheap passes instead of a pow with a
  fractional exponent (far more work per element), in float32 within 5e-7 relative of a float64
  computation (tests/test_lrn.py states the bound);
- sums the 5-wide window in 3 adds (pairs, pairs of pairs, plus the fifth) over a buffer padded
  with k's share, so that k + alpha * sum needs no pass of its own;
- on a CPU works through the batch in cache-sized chunks, shared out among one single-threaded
  worker per core (repro/fast/threads.py says why); on CUDA the whole batch is one chunk.
benchmarks/bench_lrn.py measures it against torch.nn.LocalResponseNorm.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from repro.fast.threads import run_parts

# The kernel is written for the paper's window of 5 and power 3/4 (LRN, section 3.3) and code
# 145's 5x5 patch with the same power: repro/lrn.py checks its constants against these.
SIZE, BETA = 5, 0.75

# On a CPU the fast path works through the batch in chunks of about this many bytes per
# scratch tensor, so that its passes stay in the cache; the chunks are shared out among one
# single-threaded worker per core (repro/fast/threads.py says why).
CPU_CHUNK_BYTES = 1 << 20  # about one core's L2 cache (measured: 0.5-2 MB best)


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


def cross_map(x: torch.Tensor, k: float, alpha: float, groups: int = 1) -> torch.Tensor:
    """x * (k + alpha * sum over 5 neighbouring maps of x^2)^-3/4 for x [B, C, ...], the window
    inside each of `groups` blocks of maps, in x's own memory layout: on an NHWC (channels-last)
    tensor the maps are the innermost dim, and the result is NHWC too."""
    b, c = x.shape[:2]
    if is_channels_last(x):
        h, w = x.shape[2:]
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h * w, groups, c // groups)  # a view
        out = _power_norm(nhwc, k, alpha, (3,))
        return out.view(b, h, w, c).permute(0, 3, 1, 2)  # [B, C, H, W], NHWC in memory
    flat = x.reshape(b, groups, c // groups, math.prod(x.shape[2:]))  # any trailing dims
    return _power_norm(flat, k, alpha, (2,)).view(x.shape)


def same_map(x: torch.Tensor, k: float, alpha: float) -> torch.Tensor:
    """x * (k + alpha * sum over the 5x5 patch of each map position of x^2)^-3/4, x [B, C, H, W]
    in either layout (the result keeps it)."""
    if is_channels_last(x):  # [B, H, W, C] in memory: the patch runs along W (dim 2), then H
        out = _power_norm(x.permute(0, 2, 3, 1), k, alpha, (2, 1))
        return out.permute(0, 3, 1, 2)
    return _power_norm(x, k, alpha, (3, 2))  # along W, then H


def _power_norm(x: torch.Tensor, k: float, alpha: float, dims: tuple) -> torch.Tensor:
    """x * (k + alpha * window_sum(x^2))^-3/4 with the window along `dims`: (d,) for 5 neighbours
    along dim d, (w, h) for the 5x5 patch along dims w then h. float16/bfloat16 inputs are
    normalised in float32 (k + alpha' * sum would lose too much)."""
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
