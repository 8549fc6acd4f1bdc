"""conv1's weight gradient by space-to-depth (a speed path: the same function, computed faster).

conv1 (section 3.5: 11x11 kernels, stride 4, on the 3 colour channels) is the layer whose
weight gradient CPU libraries have computed badly: on this project's 2-core CPU an earlier
measurement found oneDNN taking 0.4-2 s for it at batch 128 where the forward takes 0.15 s.
With torch 2.13 the library's own routine is about as fast: this path gains 2% of a training
step with AVX-512 and nothing under AVX2 (`python benchmarks/bench_train_step.py --switches
fast_conv1`; results/bench/amd-epyc-2core-*.switches.json). It stays on: it costs nothing
measurable here and guards against a library that is slow at it, as that earlier one was.
Rearranged, the same sum is an ordinary convolution:

    a stride-s convolution with k x k kernels over C channels equals a stride-1 convolution
    with ceil(k/s) x ceil(k/s) kernels over s*s*C channels, the input cut into s x s blocks
    ("space to depth") and each kernel padded with zeros to a multiple of s.

For conv1: [B, 3, 228, 228] -> [B, 48, 57, 57], kernels [96, 3, 11, 11] -> [96, 48, 3, 3]
(12 x 12 with one row and column of zeros). Only the backward pass uses it: the forward is
the plain F.conv2d (without padding, the very call nn.Conv2d makes, so bit-identical; with
padding the input is padded first, which may select another kernel: equal within float32
rounding), and the weight gradient is the same sum of products in another order (equal within
float32 rounding; tests/test_fast_conv1_grad.py states the bound).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def space_to_depth(x: torch.Tensor, s: int, size: int) -> torch.Tensor:
    """x [B, C, H, W] -> [B, s*s*C, size, size]: channel (dy*s + dx)*C + c at (i, j) holds
    x[c, i*s + dy, j*s + dx]. x is cut or zero-padded at the right and bottom to size * s
    first. The result keeps x's memory layout (channels-last in, channels-last out)."""
    b, c = x.shape[:2]
    n = size * s
    x = x[:, :, :n, :n]
    if x.shape[2] < n or x.shape[3] < n:
        x = F.pad(x, (0, n - x.shape[3], 0, n - x.shape[2]))
    blocks = x.unflatten(2, (size, s)).unflatten(4, (size, s))  # [B, C, i, dy, j, dx], a view
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = blocks.permute(0, 2, 4, 3, 5, 1).reshape(b, size, size, s * s * c)
        return nhwc.permute(0, 3, 1, 2)
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(b, s * s * c, size, size)


def kernels_to_depth(w: torch.Tensor, s: int) -> torch.Tensor:
    """Kernels [O, C, k, k] -> [O, s*s*C, ceil(k/s), ceil(k/s)] to match space_to_depth."""
    o, c, k = w.shape[0], w.shape[1], w.shape[-1]
    kk = -(-k // s)
    w = F.pad(w, (0, kk * s - k, 0, kk * s - k))
    return w.view(o, c, kk, s, kk, s).permute(0, 3, 5, 1, 2, 4).reshape(o, s * s * c, kk, kk)


def kernels_from_depth(g: torch.Tensor, s: int, k: int, c: int) -> torch.Tensor:
    """The inverse of kernels_to_depth (the zero padding dropped): [O, s*s*C, kk, kk] -> [O, C, k, k]."""
    o, kk = g.shape[0], g.shape[-1]
    return g.view(o, s, s, c, kk, kk).permute(0, 3, 4, 1, 5, 2).reshape(o, c, kk * s, kk * s)[..., :k, :k]


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, weight_shape, stride: int,
                bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dL/dweight (and dL/dbias) of y = conv2d(x, w, stride=stride) (no padding: pad x first),
    computed as the weight gradient of the equivalent stride-1 convolution."""
    o, c, k = weight_shape[0], weight_shape[1], weight_shape[-1]
    s, kk = stride, -(-weight_shape[-1] // stride)
    size = grad_out.shape[-1] - 1 + kk  # blocks of input that the output's windows reach
    if grad_out.shape[-2] != grad_out.shape[-1] or x.shape[-2] != x.shape[-1]:
        raise ValueError("square inputs and outputs only")
    xs = space_to_depth(x, s, size)
    w_shape = [o, s * s * c, kk, kk]
    _, gw, gb = torch.ops.aten.convolution_backward(
        grad_out, xs, x.new_empty(w_shape), [o] if bias else None, [1, 1], [0, 0], [1, 1],
        False, [0, 0], 1, [False, True, bias])
    return kernels_from_depth(gw, s, k, c), gb


class _StridedConv(torch.autograd.Function):
    """F.conv2d(x, w, b, stride) forward; its backward computes the weight gradient by
    space-to-depth (the input gradient, if ever needed, by the library's own routine)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # under bf16 autocast
    def forward(ctx, x, weight, bias, stride):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv2d(x, weight, bias, stride)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        s = ctx.stride
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride=s)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            gw, gb = weight_grad(x, grad_out, weight.shape, s, ctx.has_bias)
        return gx, gw, gb, None


class StridedConv2d(torch.nn.Conv2d):
    """nn.Conv2d (same parameters, state_dict keys and hooks) whose weight gradient is computed
    by space-to-depth. For conv1: square kernels, equal strides, no groups or dilation."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias,
                         device=device, dtype=dtype)
        if (self.stride[0] != self.stride[1] or self.kernel_size[0] != self.kernel_size[1]
                or not isinstance(self.padding, tuple) or self.padding[0] != self.padding[1]):
            raise ValueError("StridedConv2d: square kernels, equal strides and paddings only")

    def _conv_forward(self, x, weight, bias):
        p, s = self.padding[0], self.stride[0]
        if (not torch.is_grad_enabled() or not (weight.requires_grad or x.requires_grad)
                or x.device.type != "cpu"):  # evaluation; or a GPU, whose own routine is fine
            return F.conv2d(x, weight, bias, s, p)  # exactly nn.Conv2d's call
        if p:
            x = F.pad(x, (p, p, p, p))
        return _StridedConv.apply(x, weight, bias, s)
