"""Rule 1 of repro/tolerance.py as an assertion, for the tests of single operations; the rules,
their reasons and the constants live there and are re-exported here for the tests."""
from __future__ import annotations

import torch

from repro.tolerance import FLOAT32_NET_TOL, FLOAT64_TOL, U32, fft_eps, gamma, rel_err, softmax_atol  # noqa: F401


def assert_sums_close(got: torch.Tensor, want: torch.Tensor, magnitude: torch.Tensor, terms: int,
                      what: str = "") -> None:
    """|got - want| <= 2 gamma_terms * magnitude, element by element (rule 1), where `magnitude`
    is sum_i |a_i b_i| of each element's sum (float64) and `terms` the most terms any element has."""
    bound = 2 * gamma(terms) * magnitude.double()
    diff = (got.double() - want.double()).abs()
    over = diff > bound
    if over.any():
        i = int(over.flatten().nonzero()[0])
        raise AssertionError(
            f"{what or 'tensor'}: {int(over.sum())} of {diff.numel()} elements differ by more than "
            f"2 gamma_{terms} sum|terms|; first at flat index {i}: |diff| {diff.flatten()[i].item():.3g} > "
            f"bound {bound.flatten()[i].item():.3g}")
