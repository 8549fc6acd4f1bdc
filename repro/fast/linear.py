"""Fully-connected layers through oneDNN's matrix product on CPUs (speed.fast_fc).

torch's F.linear on a CPU calls MKL's sgemm; on this project's AMD CPU MKL ran at about half
the rate of oneDNN, the library torch already uses for the convolutions
(benchmarks/bench_train_step.py measures both), and fc6-fc8 took a fifth of a training step.
`Linear` is nn.Linear (same parameters, keys and hooks) whose products forward and backward go
through oneDNN's matmul primitive, `torch.ops.mkldnn._linear_pointwise` (the op torch's own
compiler uses on CPUs; not public API, so everything falls back to F.linear without it):

    forward   y  = x W^T + b
    backward  dx = dy W,  dW = dy^T x,  db = sum of dy over the batch

The same products as F.linear's, summed in another order: equal within float32 rounding
(tests/test_speed.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_matmul = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias=None) -> torch.Tensor:
    """a @ b_t^T (+ bias) by oneDNN."""
    return _matmul(a, b_t, bias, "none", [], "")


def available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN takes it: a 2-D float32 product on a CPU, and not while tracing (an exported
    model must hold plain operations only: ./run.sh export)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _matmul is None:
        return False
    return (torch.backends.mkldnn.is_available() and x.device.type == "cpu" and x.dim() == 2
            and x.dtype == weight.dtype == torch.float32 and weight.numel() > 0)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = _mm(grad, weight.t()) if ctx.needs_input_grad[0] else None  # dy W
        gw = _mm(grad.t(), x.t()) if ctx.needs_input_grad[1] else None  # dy^T x
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), by oneDNN where it can (2-D float32 input on a CPU)."""
    if not available(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _Linear.apply(x, weight, bias)
    return _mm(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear computed by oneDNN on CPUs (see the module docstring)."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
