"""How far apart two computations of the same function may be when they run different kernels.

The tests compare a speed path with its plain reference, one layout or placement with another,
on CPUs with other instruction sets and thread counts, where the libraries pick other kernels;
the GPU check (repro/gpu_check.py) compares CUDA's kernels with the CPU's, and export
(repro/export.py) an exported graph under another runtime with the model. Two rules, used by all
three:

1. One operation (a convolution, a matrix product, their gradients): bound the difference
   element by element. A float32 sum of n products, computed in ANY order (blocked, vectorised,
   with fused multiply-adds, split across threads), lies within gamma_n * sum_i |a_i b_i| of the
   exact sum, gamma_n = n u / (1 - n u), u = 2^-24 (Higham, "Accuracy and Stability of
   Numerical Algorithms", 2nd ed., 2002, section 3.1, the error bound for inner products). Two
   such computations are therefore within 2 gamma_n sum_i |a_i b_i| of each other, whatever the
   CPU. `assert_sums_close` (tests/tolerance.py) checks exactly that, with sum_i |a_i b_i|
   computed in float64 by the same operation applied to absolute values. It is a worst case:
   typical differences are 10-1000 times smaller, yet any slip in indexing (a wrong tap, a
   missing term) still shows, as the float64 tests of the same operations check to 1e-12.

2. A whole network (logits, loss, gradients): compare in float64, where rule 1's bound for the
   largest sum here (n = 9216, fc6) is gamma_n = 1e-12 of the magnitudes, so `FLOAT64_TOL` holds
   on any machine and still exposes any difference in the function (a changed constant, a window
   crossing the tower boundary: 1e-4 and more). In float32, only the logits and the loss are
   compared, with `FLOAT32_NET_TOL`: gradients are not, because a max-pool window whose two
   largest inputs differ by less than float32 rounding may pick the other one and send its whole
   gradient elsewhere (the pooling's own discontinuity, not an error; seen once on this
   project's machine: 1 window in 9216 moved conv3's weight gradient by 1%).

3. A convolution by Fourier transforms (repro/fast/fft_conv.py) is not a sum of the same
   products in another order, so rule 1 does not cover it; the FFT's own error analysis does.
   A computed n-point FFT is within log2(n) eta / (1 - log2(n) eta) of the exact transform in
   the 2-norm, eta = mu + gamma_4 (sqrt(2) + mu), mu the error of the twiddle factors, here u
   (Higham, section 24.1, Theorem 24.2, proved for radix 2; `fft_eps` doubles it, a margin of
   this project's choosing for the radix-3 and -5 stages of the sizes used, which the theorem
   does not cover). With Parseval (||X||_2 = sqrt(n) ||x||_2) and |W(k)| <= ||w||_1,
   one output map y = sum_c x_c (*) w_c, computed as transform, products summed over c (an
   inner product: rule 1), inverse transform, is within
       (2 fft_eps(n) + gamma_kernel + gamma_sum) * sum_c ||x_c||_2 ||w_c||_1
   of the exact map in the 2-norm, hence every element is; gamma_kernel is the error of the
   kernels' spectra (k*k taps) and gamma_sum that of the sum over c. The input gradient is the
   same with the output gradient for x; a weight-gradient tap, a sum over the batch evaluated
   from the spectra, is within (2 fft_eps(n) + gamma_batch + gamma_freq) * sum_b ||g_b||_2
   ||x_b||_2 (and the output adds the bias's own rounding, u |bias|). A worst case again:
   measured differences are 300 to 30,000 times smaller
   (tests/test_fast_fft_conv.py), and a wrong tap, shift or wrapped-around term, far larger,
   is what the float64 test of the same path catches (to 1e-12).
"""
from __future__ import annotations

import math

import torch

U32 = 2.0 ** -24  # float32 unit roundoff

# float64, max |a - b| / max |b| per tensor (rule 2): rule 1's worst case per layer is 1e-12 of
# the sums' magnitudes (u = 1.1e-16, n <= 9216); 1e-10 leaves room for cancellation and eight
# layers in a row (measured differences: ~1e-15).
FLOAT64_TOL = 1e-10

# float32 logits and loss of a network, max |a - b| / max |b|: each layer's sums carry a relative
# rounding error of about sqrt(n) u in practice (n <= 9216 here: 6e-6), eight layers in a row and
# two kernels: 1e-4 covers that with room, while a wrong function is off by O(1) (TF32, whose
# u = 2^-11, is off by ~1e-3).
FLOAT32_NET_TOL = 1e-4


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term inner product."""
    if n * u >= 1:
        raise ValueError(f"{n} terms: no useful float32 bound")
    return n * u / (1 - n * u)


def fft_eps(points: int, u: float = U32) -> float:
    """Rule 3: the relative 2-norm error bound of one computed FFT of `points` points (Higham's
    Theorem 24.2, doubled for mixed radices 2, 3 and 5)."""
    eta = u + gamma(4, u) * (2 ** 0.5 + u)
    t = 2 * math.ceil(math.log2(max(points, 2))) * eta
    if t >= 1:
        raise ValueError(f"{points} points: no useful bound")
    return t / (1 - t)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero), in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def softmax_atol(logits: torch.Tensor) -> float:
    """How far two float32 computations of the same softmax outputs may differ: a softmax output
    moves by at most half the largest change of the logits (sum_j |dp_i/dz_j| = 2 p_i (1 - p_i)
    <= 1/2), and the logits agree within FLOAT32_NET_TOL of their largest magnitude (rule 2);
    plus float32 rounding of the outputs themselves, which lie in [0, 1]."""
    return 0.5 * FLOAT32_NET_TOL * logits.detach().abs().max().item() + 4 * U32
