"""The fast LRN and same-map normalisation against the formulas written out (paper section 3.3;
code 145's `rnorm`), against torch.nn.LocalResponseNorm, and by finite differences.

Tolerances (tests/tolerance.py says why each comparison needs one). Float32 results are held
against the float64 formula:
- forward, element by element, rtol 1e-6: d = k + alpha' * (five squares) is a sum of six
  positive terms, within 6u of exact (u = 2^-24); d^-3/4 through rsqrt and sqrt adds at most
  ~3 ulps (vectorised rsqrt is within 1-2 ulps on every instruction set torch uses), and the
  product with a one more: ~12u = 7e-7 in all;
- input gradient, element by element, within 64u of the sum of the magnitudes of its two terms,
  |g d^-3/4| + 2 alpha' beta |a| window(|g a| d^-7/4) (`backward_bound`): the terms cancel, so a
  bound relative to the result would not hold; each term is a product of about ten roundings of
  q = d^-1/4 (itself within ~4u), the window a sum of five (measured: at most 15u on AVX-512,
  AVX2 and SSE4.1).
Float64 results are held to 1e-12, near float64's own rounding."""
import pytest
import torch

from repro import lrn as L
from repro.fast import lrn as fast_lrn
from tests.tolerance import U32

FLAVOURS = ["paper", "code145"]


def channel_window(groups=1):
    """window(t): the sum over 5 neighbouring maps of t [B, C, ...], inside each of `groups`."""
    def window(t):
        b, c = t.shape[:2]
        parts = t.reshape(b * groups, c // groups, -1, 1)
        return L.window_sum(parts).reshape(t.shape)
    return window


def patch_window(t):
    """window(t): the sum over the 5x5 patch of each map position (zeros outside)."""
    return torch.nn.functional.avg_pool2d(t, 5, stride=1, padding=2, count_include_pad=True) * 25


def backward_bound(x, g, k, alpha, window):
    """Element-wise bound on a float32 input gradient's distance from the exact one (see above)."""
    x, g = x.double(), g.double()
    d = k + alpha * window(x * x)
    magnitude = (g * d ** -0.75).abs() + 2 * alpha * 0.75 * x.abs() * window((g * x).abs() * d ** -1.75)
    return 64 * U32 * magnitude


def assert_within(got, want, bound):
    diff = (got.double() - want.double()).abs()
    assert (diff <= bound).all(), f"{int((diff > bound).sum())} elements off; worst {(diff / bound).max().item():.1f}x the bound"


def activations(shape, scale, seed=0, dtype=torch.float32, relu=False):
    """Activations big enough that alpha' * sum(a^2) is comparable to k, so that the
    normalisation is far from the identity and every term of the formula matters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    return (x.clamp_min(0) if relu else x).to(dtype)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """One sample per CPU chunk, so that the chunk boundaries are exercised."""
    monkeypatch.setattr(fast_lrn, "CPU_CHUNK_BYTES", 1)


def test_normalisation_is_far_from_identity():
    x = activations((2, 8, 5, 5), 100.0)
    for flavour in FLAVOURS:
        ratio = (L.lrn_reference(x.double(), flavour) / x.double()).flatten()
        assert ratio.min() < 0.7, flavour  # else the tests below would not test much
    ratio = L.same_map_norm_reference(x.double()) / x.double()
    assert ratio.min() < 0.7


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("shape", [(3, 48, 6, 7), (2, 3, 4, 4), (2, 1, 3, 3), (4, 9, 5)])
@pytest.mark.parametrize("relu", [False, True])
def test_fast_lrn_equals_formula(flavour, shape, relu, tiny_chunks):
    x = activations(shape, 100.0, relu=relu)
    expected = L.lrn_reference(x.double(), flavour)
    torch.testing.assert_close(L.lrn(x, flavour).double(), expected, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(L.lrn(x, flavour, fast=False).double(), expected, rtol=1e-6, atol=1e-30)
    x64 = x.double()
    torch.testing.assert_close(L.lrn(x64, flavour), expected, rtol=1e-13, atol=0)


def test_constants_are_the_papers():
    """Literal numbers from section 3.3 and code 145, independent of the module's constants."""
    x = activations((2, 7, 3, 3), 100.0).double()
    sq = torch.nn.functional.pad(x * x, (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, j:j + 7] for j in range(5))
    torch.testing.assert_close(L.lrn(x, "paper"), x / (2 + 1e-4 * window) ** 0.75, rtol=1e-13, atol=0)
    torch.testing.assert_close(L.lrn(x, "code145"), x / (2 + 2e-5 * window) ** 0.75, rtol=1e-13, atol=0)
    sq = torch.nn.functional.pad(x * x, (2, 2, 2, 2))
    patch = sum(sq[..., i:i + 3, j:j + 3] for i in range(5) for j in range(5))
    torch.testing.assert_close(L.same_map_norm(x), x / (1 + 0.001 / 25 * patch) ** 0.75, rtol=1e-13, atol=0)


@pytest.mark.parametrize("shape", [(2, 48, 13, 13), (3, 10, 55, 55)])
def test_code145_equals_torch_local_response_norm(shape):
    torch_lrn = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    x = activations(shape, 100.0)
    torch.testing.assert_close(L.lrn(x, "code145"), torch_lrn(x), rtol=1e-6, atol=1e-30)
    # input gradient, in float64 so that both sides are exact to rounding
    x64 = x.double().requires_grad_()
    g = activations(shape, 1.0, seed=1).double()
    (ours,) = torch.autograd.grad(L.lrn(x64, "code145"), x64, g)
    (theirs,) = torch.autograd.grad(torch_lrn(x64), x64, g)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    # and in float32, within float32 rounding of the exact gradient
    x32 = x.clone().requires_grad_()
    (ours32,) = torch.autograd.grad(L.lrn(x32, "code145"), x32, g.float())
    assert_within(ours32, theirs, backward_bound(x, g, L.K, L.ALPHA_PER_TERM["code145"], channel_window()))


@pytest.mark.parametrize("shape", [(2, 5, 9, 11), (2, 3, 27, 27), (1, 2, 2, 3)])
def test_fast_same_map_norm_equals_formula(shape, tiny_chunks):
    x = activations(shape, 40.0)
    expected = L.same_map_norm_reference(x.double())
    torch.testing.assert_close(L.same_map_norm(x).double(), expected, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(L.same_map_norm(x, fast=False).double(), expected, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lrn_gradcheck(flavour, tiny_chunks):
    scale = {"paper": 60.0, "code145": 130.0}[flavour]
    x = activations((2, 8, 3, 4), scale, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: L.lrn(t, flavour), (x,))
    xr = activations((2, 8, 3, 4), scale, seed=2, dtype=torch.float64, relu=True).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: L.lrn(t, flavour), (xr,))


def test_same_map_norm_gradcheck(tiny_chunks):
    x = activations((2, 3, 7, 6), 40.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(L.same_map_norm, (x,))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("c", [0, 1, 5, 11])
def test_window_spans_two_maps_each_side(c, fast):
    """Section 3.3: n = 5 adjacent maps, i.e. channels c-2 .. c+2, and no further."""
    channels = 12
    x = activations((2, channels, 4, 4), 100.0)
    bumped = x.clone()
    bumped[:, c] += 50.0
    changed = (L.lrn(bumped, "paper", fast) != L.lrn(x, "paper", fast)).flatten(2).any(2).any(0)
    expected = [max(0, c - 2) <= i <= min(channels - 1, c + 2) for i in range(channels)]
    assert changed.tolist() == expected
    # the backward's window is the same: output map c depends on input maps c-2 .. c+2 only
    xg = x.clone().requires_grad_()
    L.lrn(xg, "paper", fast)[:, c].sum().backward()
    assert (xg.grad != 0).flatten(2).any(2).any(0).tolist() == expected


def test_same_map_window_is_5x5_of_one_map():
    x = activations((1, 3, 11, 11), 40.0)
    bumped = x.clone()
    bumped[0, 1, 5, 5] += 50.0
    changed = L.same_map_norm(bumped) != L.same_map_norm(x)
    expected = torch.zeros_like(changed)
    expected[0, 1, 3:8, 3:8] = True
    assert torch.equal(changed, expected)


def test_no_grad_and_non_contiguous_inputs():
    x = activations((2, 6, 5, 5), 100.0)
    expected = L.lrn_reference(x.double(), "paper")
    with torch.no_grad():  # forward-only branch
        torch.testing.assert_close(L.lrn(x, "paper").double(), expected, rtol=1e-6, atol=1e-30)
    channels_last = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(L.lrn(channels_last, "paper").double(), expected, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(L.same_map_norm(channels_last).double(),
                               L.same_map_norm_reference(x.double()), rtol=1e-6, atol=1e-30)
    xg = x.clone().requires_grad_()
    g = activations((2, 6, 5, 5), 1.0, seed=3)
    (dense,) = torch.autograd.grad(L.lrn(xg, "paper"), xg, g)
    (strided,) = torch.autograd.grad(L.lrn(xg, "paper"), xg, g.to(memory_format=torch.channels_last))
    torch.testing.assert_close(strided, dense, rtol=0, atol=0)


def test_fast_path_refuses_double_backward():
    x = activations((1, 6, 3, 3), 100.0, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(L.lrn(x, "paper").sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()
    assert torch.autograd.gradgradcheck(lambda t: L.lrn(t, "paper", fast=False), (x,))


def test_modules():
    x = activations((2, 6, 4, 4), 100.0)
    assert torch.equal(L.LRN("code145")(x), L.lrn(x, "code145"))
    assert torch.equal(L.LRN("paper", fast=False)(x), L.lrn(x, "paper", fast=False))
    assert torch.equal(L.SameMapNorm()(x), L.same_map_norm(x))
    assert torch.equal(L.SameMapNorm(fast=False)(x), L.same_map_norm(x, fast=False))
    assert "alpha'=2e-05" in repr(L.LRN("code145"))
    with pytest.raises(ValueError, match="flavour"):
        L.LRN("caffe")


def test_inference_mode_and_one_thread(tiny_chunks):
    x = activations((3, 8, 4, 4), 100.0)
    expected = L.lrn_reference(x.double(), "code145")
    with torch.inference_mode():
        torch.testing.assert_close(L.lrn(x, "code145").double(), expected, rtol=1e-6, atol=1e-30)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # everything inline in the calling thread
    try:
        torch.testing.assert_close(L.lrn(x, "code145").double(), expected, rtol=1e-6, atol=1e-30)
        xg = x.double().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: L.lrn(t, "code145"), (xg,))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("fast", [True, False])
def test_groups_keep_each_towers_window_and_the_layout(layout, fast, tiny_chunks):
    """groups=2 (the grouped emulation): each half normalised on its own, as two towers would be;
    a channels-last input is normalised in place in its layout and comes out channels-last."""
    x = activations((3, 12, 5, 4), 100.0, relu=True)
    expected = torch.cat([L.lrn_reference(h.double(), "paper") for h in x.chunk(2, dim=1)], dim=1)
    g = activations((3, 12, 5, 4), 1.0, seed=2).double()
    x64 = x.double().requires_grad_()
    halves = torch.cat([L.lrn_reference(h, "paper") for h in x64.chunk(2, dim=1)], dim=1)
    (expected_grad,) = torch.autograd.grad(halves, x64, g)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    xi = x.contiguous(memory_format=fmt).requires_grad_()
    out = L.lrn(xi, "paper", fast=fast, groups=2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-30)
    if fast:
        assert out.is_contiguous(memory_format=fmt)
    (grad,) = torch.autograd.grad(out, xi, g.float().contiguous(memory_format=fmt))
    assert_within(grad, expected_grad, backward_bound(x, g, L.K, L.ALPHA_PER_TERM["paper"], channel_window(2)))
    (grad64,) = torch.autograd.grad(L.lrn(x64, "paper", fast=fast, groups=2), x64, g)
    torch.testing.assert_close(grad64, expected_grad, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(L.lrn(x, "paper", groups=1), L.lrn(x, "paper", groups=2))  # it matters
    with pytest.raises(ValueError, match="groups"):
        L.lrn(x, "paper", groups=5)


def test_same_map_norm_channels_last_gradient(tiny_chunks):
    x = activations((2, 5, 9, 7), 40.0)
    x64 = x.double().requires_grad_()
    g = activations((2, 5, 9, 7), 1.0, seed=4).double()
    (expected,) = torch.autograd.grad(L.same_map_norm_reference(x64), x64, g)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = L.same_map_norm(xc)
    assert out.is_contiguous(memory_format=torch.channels_last)
    (grad,) = torch.autograd.grad(out, xc, g.float())
    assert_within(grad, expected, backward_bound(x, g, L.RNORM_K, L.RNORM_SCALE, patch_window))
