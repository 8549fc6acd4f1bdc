"""Stride-1 convolutions by Fourier transforms on CPUs (speed.fft_conv2, speed.fft_conv3_5;
`chosen` says where "auto" uses them).

The same function as nn.Conv2d (a correlation of each input map with each kernel, summed over
the input maps of the group), computed with fewer multiplications: a correlation is a product
of spectra, so

    y[b, o] = sum_c x[b, c] (*) w[o, c]     becomes     Y[b, o] = sum_c X[b, c] conj(W[o, c])

at every frequency, i.e. one complex [batch x maps_in] by [maps_in x maps_out] matrix product
per frequency, between transforms in and out. For conv2 (5 x 5 kernels on 27 x 27 maps, 48 maps
in and 128 out per tower) a 30 x 30 transform has 480 frequencies (the other half of the
spectrum mirrors them), so each pair of maps costs 480 complex multiply-adds, four real ones
each, against the direct convolution's 27 x 27 x 25: 9.5x fewer, plus the transforms, which
cost less than they save. For conv3-5 (3 x 3 kernels on 13 x 13 maps, 15 x 15 transforms) the
saving is smaller and whether it wins depends on the CPU. The README's performance section has
the measurements; `python benchmarks/bench_train_step.py --switches fft_conv2 fft_conv3_5`
repeats them on any machine.

How it is laid out (N x M: the transform size; F = N * (M/2 + 1) frequencies, real input):

- The padding is not written out: the input maps are transformed as they are (zero-filled to
  N x M by the transform), and the kernels' taps are placed at offsets -p .. k-1-p instead of
  0 .. k-1. A circular correlation equals the padded linear one when nothing wraps around onto
  data, which holds for N >= H + p and N >= the output size (and likewise M).
- The kernels' spectra come from their k x k taps by two small products with the DFT matrices
  (their entries computed in float64, the products in the transform's precision), not from an
  N x M transform of mostly zeros.
- The inputs' spectra are laid out frequency-major, [F, groups, batch, maps], so the products
  are one batched matrix product (torch.bmm).
- Backward: the input gradient is the transposed product (conj(conj(W)) = W) and an inverse
  transform; the weight gradient is sum over the batch of conj(X) G per frequency, brought
  back to the k x k taps by two small inverse DFT products; the bias gradient is the plain sum.

Floating point: the transforms round differently from a direct sum, so the result equals
F.conv2d within float32 rounding, not bit for bit. tests/test_fast_fft_conv.py holds it, its
input gradient and its weight gradient against float64 within the bound that follows from the
FFT's error analysis (repro/tolerance.py, rule 3), and in float64 to 1e-12 (any wrong tap,
shift or wrapped-around term would be far outside that).

Used only where it applies: a float32 or float64 CPU tensor, stride 1, no dilation, zero
padding, not under tracing or compiling (their graphs hold the plain layers); elsewhere it is
F.conv2d. Its backward is not differentiable again (no second derivatives, which training never
takes). Under CPU bf16 autocast it computes in float32 (the project's bf16 is for GPUs).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from repro import machine
from repro.config import FFT_CHOICES


def fft_size(n: int) -> int:
    """The smallest m >= n whose prime factors are 2, 3 and 5 (sizes the FFT libraries do fast)."""
    m = max(1, n)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def transform_size(size: int, out: int, k: int, pad: int) -> int:
    """The transform length along one axis: nothing wraps around onto data (see the module
    docstring) for any length >= size + pad, >= the output size and >= the kernel."""
    return fft_size(max(size + pad, out, k))


@functools.lru_cache(maxsize=64)  # the same few matrices every step: made once per process
def _dft(n: int, k: int, pad: int, sign: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """[count, k]: exp(sign * 2 pi i * f * t / n) for f < count and the taps t = -pad .. k-1-pad,
    computed in float64. Shared between calls: read it, never write into it."""
    f = torch.arange(count, dtype=torch.float64).view(-1, 1)
    taps = torch.arange(k, dtype=torch.float64).view(1, -1) - pad
    angle = torch.remainder(f * taps, n) * (sign * 2 * math.pi / n)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


@functools.lru_cache(maxsize=16)
def _inverse_at_taps(m: int, k: int, pad: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[k, m/2 + 1]: the inverse DFT along the half-spectrum axis at the taps -pad .. k-1-pad,
    scaled by 1 / (n m), each column other than 0 and m/2 counted twice (it stands for its
    mirror image too); the real part of its product is the inverse of a real signal's spectrum."""
    cols = m // 2 + 1
    twice = torch.full((cols,), 2.0, dtype=torch.float64)
    twice[0] = 1.0
    if m % 2 == 0:
        twice[-1] = 1.0
    return (_dft(m, k, pad, -1, cols, torch.complex128).t() * twice / (n * m)).to(dtype)


def _kernel_spectrum(w: torch.Tensor, groups: int, n: int, m: int, pad: int, sign: int,
                     layout: str, dtype: torch.dtype) -> torch.Tensor:
    """The n x m spectrum (m/2 + 1 columns) of each kernel with its taps at -pad .. k-1-pad:
    sign -1 the spectrum W, sign +1 its conjugate. layout: the output's axes, from a (row
    frequency), b (column frequency), g (group), o (map out), c (map in)."""
    o, c, kh, kw = w.shape
    rows = _dft(n, kh, pad, sign, n, dtype)
    cols = _dft(m, kw, pad, sign, m // 2 + 1, dtype)
    taps = w.view(groups, o // groups, c, kh, kw).to(dtype)
    return torch.einsum(f"ai,bj,gocij->{layout}", rows, cols, taps)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels-last if x is stored so (the loader's layout, speed.channels_last), else NCHW."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class _FFTConv(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # under bf16 autocast
    def forward(ctx, x, weight, bias, pad: int, groups: int):
        b, c, h, w_ = x.shape
        o, cg, kh, kw = weight.shape
        g, og = groups, o // groups
        ho, wo = h + 2 * pad - kh + 1, w_ + 2 * pad - kw + 1
        n, m = transform_size(h, ho, kh, pad), transform_size(w_, wo, kw, pad)
        freqs, cdtype = n * (m // 2 + 1), _complex(x.dtype)
        spectra = torch.fft.rfft2(x, s=(n, m))  # [b, c, n, m/2+1]
        spectra = spectra.view(b, g, cg, freqs).permute(3, 1, 0, 2).contiguous()  # [F, g, b, cg]
        kernels = _kernel_spectrum(weight, g, n, m, pad, +1, "abgco", cdtype).reshape(freqs * g, cg, og)
        out = torch.bmm(spectra.view(freqs * g, b, cg), kernels).view(n, m // 2 + 1, g, b, og)
        out = torch.fft.irfft2(out, s=(n, m), dim=(0, 1))[:ho, :wo]  # [ho, wo, g, b, og]
        y = torch.empty(b, o, ho, wo, dtype=x.dtype, memory_format=_layout(x))
        into = y.permute(2, 3, 1, 0).unflatten(2, (g, og))  # [ho, wo, g, og, b], a view of y
        if bias is None:
            into.copy_(out.transpose(3, 4))
        else:
            torch.add(out.transpose(3, 4), bias.view(g, og, 1), out=into)
        ctx.save_for_backward(spectra, weight)
        ctx.shape = (x.shape, pad, g, n, m, bias is not None, _layout(x))
        return y

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        spectra, weight = ctx.saved_tensors
        (b, c, h, w_), pad, g, n, m, has_bias, layout = ctx.shape
        o, cg, kh, kw = weight.shape
        og, cols = o // g, m // 2 + 1
        freqs, cdtype = n * cols, spectra.dtype
        gf = torch.fft.rfft2(grad, s=(n, m))  # [b, o, n, m/2+1]
        gf = gf.view(b, g, og, freqs).permute(3, 1, 0, 2).contiguous().view(freqs * g, b, og)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # a convolution of the gradient with the kernels
            kernels = _kernel_spectrum(weight, g, n, m, pad, -1, "abgoc", cdtype).reshape(freqs * g, og, cg)
            dx = torch.bmm(gf, kernels).view(n, cols, g, b, cg)
            dx = torch.fft.irfft2(dx, s=(n, m), dim=(0, 1))[:h, :w_]  # [h, w, g, b, cg]
            gx = torch.empty(b, c, h, w_, dtype=grad.dtype, memory_format=layout)
            gx.permute(2, 3, 1, 0).unflatten(2, (g, cg)).copy_(dx.transpose(3, 4))
        if ctx.needs_input_grad[1]:
            # sum over the batch of conj(X) G, the conjugate of the spectrum of the correlation
            # of each gradient map with each input map; its taps -pad .. k-1-pad are the kernel's
            # gradient: the inverse DFT at those taps (real part)
            corr = torch.bmm(spectra.conj().resolve_conj().view(freqs * g, b, cg).transpose(1, 2), gf)
            corr = corr.view(n, cols, g, cg, og)
            rows = _dft(n, kh, pad, -1, n, cdtype).t()
            colm = _inverse_at_taps(m, kw, pad, n, cdtype)
            taps = torch.einsum("ia,jb,abgco->gocij", rows, colm, corr).real.reshape(o, cg, kh, kw)
            gw = torch.empty_like(weight).copy_(taps)  # in the weight's own layout
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None


def chosen(setting: str) -> bool:
    """Whether a layer whose [speed] switch says `setting` runs by Fourier transforms: "on",
    "off", or "auto": on where oneDNN's convolutions run without AVX-512 on an x86 CPU
    (repro.machine.onednn_vector_isa: the CPU's, held to ONEDNN_MAX_CPU_ISA). On this project's
    machine held to AVX2 this path made the training step faster at batch 128 and 32; with
    AVX-512 it was no faster at either, and slower in the demo's training at 32 (README,
    performance). For the narrower AVX and SSE4.1, where the direct kernels are slower still,
    on is an extrapolation. Off on CPUs not measured (not x86)."""
    if setting not in FFT_CHOICES:
        raise ValueError(f"expected {', '.join(FFT_CHOICES[:-1])} or {FFT_CHOICES[-1]}, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    return machine.onednn_vector_isa() in ("avx2", "avx", "sse4_1")


def available(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """The FFT path applies: a float32/float64 CPU input, stride 1, no dilation, zero padding
    given as numbers, a non-empty batch and an output of at least one pixel, and not while
    tracing, scripting or compiling (exported and compiled graphs hold the plain layers)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    if not (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and conv.weight.dtype == x.dtype and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and conv.padding[0] == conv.padding[1] and x.shape[0] > 0):
        return False
    pad, (kh, kw) = conv.padding[0], conv.kernel_size  # an output of at least one pixel (else
    return x.shape[2] + 2 * pad >= kh and x.shape[3] + 2 * pad >= kw  # F.conv2d's own error)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int,
           groups: int) -> torch.Tensor:
    """F.conv2d(x, weight, bias, 1, pad, 1, groups) by Fourier transforms (float32/float64, CPU)."""
    return _FFTConv.apply(x, weight, bias, pad, groups)


class FFTConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, state_dict keys and hooks) computed by Fourier transforms
    where `available` says it applies, and by F.conv2d elsewhere."""

    def _conv_forward(self, x, weight, bias):
        if not available(x, self):
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.padding[0], self.groups)
