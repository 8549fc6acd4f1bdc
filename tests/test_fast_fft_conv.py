"""Convolutions by Fourier transforms (repro/fast/fft_conv.py) against torch's own convolution."""
import pytest
import torch
import torch.nn.functional as F

from repro import machine
from repro.config import Config, load_config
from repro.fast import fft_conv
from repro.fast.fft_conv import FFTConv2d, chosen, fft_size, transform_size
from repro.parallel import OneDevice
from repro.train import build_model
from tests.tolerance import assert_sums_close, fft_eps, gamma

# (batch, maps in, height, width, maps out, kernel, groups, padding): conv2 and conv3-5 as the
# grouped model has them, at a small batch; a padding wider than the kernel reaches (output
# larger than the input); 1 x 1 kernels; a kernel wider than the map; non-square maps
SHAPES = [(3, 96, 27, 27, 256, 5, 2, 2), (2, 256, 13, 13, 384, 3, 1, 1), (2, 384, 13, 13, 256, 3, 2, 1),
          (2, 4, 9, 9, 6, 3, 2, 2), (2, 3, 8, 8, 4, 1, 1, 0), (2, 2, 4, 4, 3, 5, 1, 2), (2, 6, 11, 7, 4, 3, 2, 1)]


def inputs(shape, dtype, layout, seed=0):
    b, c, h, w, o, k, g, p = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, dtype=dtype, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c // g, k, k, dtype=dtype, generator=gen)
    bias = torch.randn(o, dtype=dtype, generator=gen)
    out = (h + 2 * p - k + 1, w + 2 * p - k + 1)
    grad = torch.randn(b, o, *out, dtype=dtype, generator=gen)
    return x, weight, bias, grad


def forward_backward(conv, x, weight, bias, grad):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = conv(x, weight, bias)
    return (y, *torch.autograd.grad(y, (x, weight, bias), grad))


def test_transform_sizes():
    assert [fft_size(n) for n in (1, 7, 14, 29, 31, 33, 49)] == [1, 8, 15, 30, 32, 36, 50]
    # nothing may wrap around onto data: >= map + padding, >= output, >= kernel
    assert transform_size(27, 27, 5, 2) == 30  # conv2: 27 + 2 = 29 -> 30
    assert transform_size(13, 13, 3, 1) == 15  # conv3-5: 14 -> 15
    assert transform_size(9, 11, 3, 2) == 12  # map 9, padding 2: 11 (also the output) -> 12
    assert transform_size(4, 4, 5, 2) == 6  # a kernel wider than the map: 4 + 2 -> 6


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_conv2d_in_float64(shape, layout):
    """Float64, where both are exact to rounding (~1e-15): any wrong tap, shift, group or
    wrapped-around term would be off by O(1)."""
    _, _, _, _, _, _, g, p = shape
    x, weight, bias, grad = inputs(shape, torch.float64, layout)
    want = forward_backward(lambda a, w, b: F.conv2d(a, w, b, 1, p, 1, g), x, weight, bias, grad)
    got = forward_backward(lambda a, w, b: fft_conv.conv2d(a, w, b, p, g), x, weight, bias, grad)
    for name, a, b in zip(("output", "input gradient", "weight gradient", "bias gradient"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item(), msg=name)
    y, gx, gw, _ = got
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    assert gx.stride() == x.stride()  # the input gradient in the input's layout
    assert gw.stride() == weight.stride()


def within_groups(a, b, groups):
    """sum_j a[i, group j] b[r, j] over the maps j of r's group: a [n, groups * ka],
    b [groups * m, ka] -> [n, groups * m]."""
    ka, m = a.shape[1] // groups, b.shape[0] // groups
    return torch.cat([a[:, i * ka:(i + 1) * ka] @ b[i * m:(i + 1) * m].t() for i in range(groups)], 1)


def swap_groups(w, groups):
    """[groups * m, ka] -> [groups * ka, m]: each group's block transposed."""
    m = w.shape[0] // groups
    return torch.cat([w[i * m:(i + 1) * m].t() for i in range(groups)], 0)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_float32_within_the_fft_rounding_bound(shape):
    """Float32 against the exact (float64) convolution, every element within rule 3's bound
    (repro/tolerance.py): the output and the input gradient per map, the weight gradient per
    tap; the bias gradient, a plain sum, within rule 1's."""
    b, c, h, w, o, k, g, p = shape
    x, weight, bias, grad = inputs(shape, torch.float32, "channels_last")
    x = x * 50  # the scale of the model's activations
    exact = forward_backward(lambda a, w_, b_: F.conv2d(a, w_, b_, 1, p, 1, g),
                             *(t.double() for t in (x, weight, bias, grad)))
    got = forward_backward(lambda a, w_, b_: fft_conv.conv2d(a, w_, b_, p, g), x, weight, bias, grad)
    ho, wo = exact[0].shape[2:]
    points = transform_size(h, ho, k, p) * transform_size(w, wo, k, p)
    x2, g2 = x.double().norm(dim=(2, 3)), grad.double().norm(dim=(2, 3))  # [b, c], [b, o]: 2-norms of maps
    w1 = weight.double().abs().sum((2, 3))  # [o, c / g]: 1-norms of kernels
    transforms = 2 * fft_eps(points)
    kernels = gamma(2 * k * k + 2)  # the kernels' spectra from k*k taps (complex)
    output = (transforms + kernels + gamma(2 * (c // g) + 4)) * within_groups(x2, w1, g)  # [b, o]
    inputs_ = (transforms + kernels + gamma(2 * (o // g) + 4)) * within_groups(g2, swap_groups(w1, g), g)  # [b, c]
    og, cg = o // g, c // g  # sum over the batch of ||g_bo|| ||x_bc||, c in o's group: [o, c / g]
    pairs = torch.cat([g2[:, i * og:(i + 1) * og].t() @ x2[:, i * cg:(i + 1) * cg] for i in range(g)], 0)
    taps = (transforms + gamma(2 * b + 4) + gamma(2 * points + 4)) * pairs
    bounds = {"output": output[:, :, None, None] + gamma(1) * bias.double().abs()[:, None, None],
              "input gradient": inputs_[:, :, None, None],
              "weight gradient": taps[:, :, None, None]}
    for (name, bound), value, want in zip(bounds.items(), got, exact):
        diff = (value.double() - want).abs()
        assert (diff <= bound).all(), f"{name}: max |diff| / bound {(diff / bound).max().item():.3g}"
        assert diff.max() > 0  # float32 did round: the check compared two computations
    assert_sums_close(got[3], exact[3], grad.double().abs().sum((0, 2, 3)), b * ho * wo, "bias gradient")


def test_module_uses_the_fft_where_it_applies_and_conv2d_elsewhere():
    torch.manual_seed(0)
    fast = FFTConv2d(6, 4, 3, padding=1, groups=2)
    plain = torch.nn.Conv2d(6, 4, 3, padding=1, groups=2)
    plain.load_state_dict(fast.state_dict())  # the same parameters and keys
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    assert "FFTConv" in type(fast(x).grad_fn).__name__
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    for conv in (FFTConv2d(6, 4, 3, stride=2), FFTConv2d(6, 4, 3, dilation=2), FFTConv2d(6, 4, 3, padding="same")):
        assert "FFTConv" not in type(conv(x).grad_fn).__name__, conv
    assert fast(x[:0]).shape == (0, 4, 9, 9)  # an empty batch: F.conv2d's empty output
    with pytest.raises(RuntimeError, match="[Kk]ernel size"):  # F.conv2d's own error, not the FFT's
        FFTConv2d(6, 4, 11, groups=2)(x)
    traced = torch.jit.trace(fast, x.detach())  # export records plain operations
    assert "aten::_convolution" in str(traced.graph) and "aten::fft" not in str(traced.graph)


@pytest.mark.parametrize("isa, auto", [("avx512f", False), ("avx2", True), ("avx", True), ("sse4_1", True), ("", False)])
def test_auto_chooses_the_fft_where_onednn_has_no_avx512(isa, auto, monkeypatch):
    monkeypatch.setattr(machine, "onednn_vector_isa", lambda: isa)
    assert chosen("auto") is auto
    assert chosen("on") is True and chosen("off") is False
    cfg = Config()  # fft_conv2 "auto" by default; fft_conv3_5 "off"
    cfg.speed.fft_conv3_5 = "auto"
    tower = build_model(cfg, OneDevice("cpu")).towers["grouped"]  # grouped on a CPU
    assert [isinstance(getattr(tower, f"conv{i}"), FFTConv2d) for i in range(1, 6)] == [False] + [auto] * 4
    with pytest.raises(ValueError, match="auto, on or off"):
        chosen("yes")


def test_the_switches_take_auto_on_or_off_from_a_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[speed]\nfft_conv2 = "on"\n')
    cfg = load_config(path, ["speed.fft_conv3_5=off"])
    assert (cfg.speed.fft_conv2, cfg.speed.fft_conv3_5) == ("on", "off")
    path.write_text("[speed]\nfft_conv2 = true\n")
    with pytest.raises(Exception, match="fft_conv2"):
        load_config(path)
