"""conv1's space-to-depth weight gradient (repro/fast/conv1_grad.py) against torch's own convolution."""
import pytest
import torch
import torch.nn.functional as F

from repro.fast.conv1_grad import StridedConv2d, kernels_from_depth, kernels_to_depth, space_to_depth, weight_grad
from tests.tolerance import assert_sums_close


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_space_to_depth_places_every_pixel(layout):
    x = torch.arange(2 * 3 * 9 * 9, dtype=torch.float32).view(2, 3, 9, 9)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    s2d = space_to_depth(x, 4, 3)  # 9 -> 12: three zero rows and columns at the right and bottom
    assert s2d.shape == (2, 48, 3, 3)
    assert s2d.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    for dy, dx, c, i, j in [(0, 0, 0, 0, 0), (1, 2, 1, 1, 1), (3, 3, 2, 1, 1), (0, 3, 0, 1, 0), (0, 0, 2, 2, 2)]:
        y, xx = i * 4 + dy, j * 4 + dx
        assert s2d[1, (dy * 4 + dx) * 3 + c, i, j] == x[1, c, y, xx]
    assert s2d[:, :, 2, :].reshape(2, 4, 4, 3, 3)[:, 1:].eq(0).all()  # rows 9..11 are padding


def test_kernels_round_trip_and_match_the_conv():
    w = torch.randn(5, 3, 11, 11, dtype=torch.float64)
    assert torch.equal(kernels_from_depth(kernels_to_depth(w, 4), 4, 11, 3), w)
    x = torch.randn(2, 3, 227, 227, dtype=torch.float64)
    direct = F.conv2d(x, w, stride=4)
    torch.testing.assert_close(F.conv2d(space_to_depth(x, 4, 57), kernels_to_depth(w, 4)), direct)


@pytest.mark.parametrize("shape", [(3, 227, 11, 4), (2, 15, 5, 2), (2, 12, 3, 3), (1, 20, 6, 4)])
def test_weight_grad_equals_torch(shape):
    """Float64, so that both sides are exact to rounding: any indexing slip shows."""
    batch, size, k, s = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, dtype=torch.float64, generator=g)
    w = torch.randn(7, 3, k, k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    y = F.conv2d(x, w, b, stride=s)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=g)
    want_w, want_b = torch.autograd.grad(y, (w, b), gy)
    got_w, got_b = weight_grad(x, gy, w.shape, s, bias=True)
    torch.testing.assert_close(got_w, want_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_b, want_b, rtol=1e-12, atol=1e-12)


def conv_magnitudes(x, w, b, gy, stride, padding):
    """sum |terms| of every output, input-gradient, weight-gradient and bias-gradient element of
    y = conv2d(x, w, b): the same convolution (and its gradients) on absolute values, in float64."""
    xa, wa, ba = (t.detach().double().abs().requires_grad_() for t in (x, w, b))
    ya = F.conv2d(xa, wa, ba, stride=stride, padding=padding)
    return (ya, *torch.autograd.grad(ya, (xa, wa, ba), gy.double().abs()))


@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_strided_conv_equals_the_module_in_float32(padding, layout):
    """conv1 as the model uses it, against nn.Conv2d: forward and gradients within float32 rounding
    (tests/tolerance.py, rule 1). Without padding the forward runs the very same convolution, so it
    is bit-identical; with padding it pads first and convolves an unpadded input, a problem of
    another shape for which the library may pick another kernel (it does on AVX2-only CPUs)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 48, 11, stride=4, padding=padding)
    fast = StridedConv2d(3, 48, 11, stride=4, padding=padding)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(4, 3, 227 - 2 * padding, 227 - 2 * padding) * 50
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    ref = conv(x)
    out = fast(x)
    assert "StridedConv" in type(out.grad_fn).__name__  # the space-to-depth backward
    gy = torch.randn_like(ref)
    mags = conv_magnitudes(x, conv.weight, conv.bias, gy, 4, padding)
    if padding == 0:
        assert torch.equal(out, ref)
    # terms per element: output 3*11*11 products + bias; input gradient at most 48*11*11 taps;
    # weight and bias gradients one term per batch element and output position
    batch_terms = ref.shape[0] * ref.shape[2] * ref.shape[3]
    terms = (3 * 11 * 11 + 1, 48 * 11 * 11, batch_terms, batch_terms)
    assert_sums_close(out, ref, mags[0], terms[0], "output")
    want = torch.autograd.grad(ref, (x, conv.weight, conv.bias), gy)
    got = torch.autograd.grad(out, (x, fast.weight, fast.bias), gy)
    for name, a, b, mag, n in zip(("input", "weight", "bias"), got, want, mags[1:], terms[1:]):
        assert_sums_close(a, b, mag, n, f"{name} gradient")
    with torch.no_grad():  # evaluation takes the plain path: F.conv2d with the module's padding
        assert torch.equal(fast(x), ref)
