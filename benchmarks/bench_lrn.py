"""Benchmark: forward + backward of the fast LRN (repro.lrn; paper section 3.3) against
torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2), which computes the same function (code 145's
flavour), on one tower's activations in float32 on this machine's CPU.

    python benchmarks/bench_lrn.py [--quick] [--json]

Rows: conv1's LRN [128, 48, 55, 55] (the paper's per-tower shape), [128, 96, 55, 55] (both
towers' maps in one tensor, i.e. twice the work) and conv2's [128, 128, 27, 27]; and code 145's
same-map 5x5 normalisation, fast against the plain formulation (F.avg_pool2d; torch has no such
layer). Each time is the median of interleaved repetitions of one step: forward, backward with a
fixed output gradient. The outputs are checked to agree before anything is timed.
run() returns the rows for `./run.sh bench`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from repro.bench import interleaved_medians  # noqa: E402
from repro.lrn import lrn, same_map_norm  # noqa: E402

# (row name, shape, which op, what the baseline is)
CASES = [
    ("lrn_conv1", (128, 48, 55, 55), "lrn"),
    ("lrn_conv1_96", (128, 96, 55, 55), "lrn"),
    ("lrn_conv2", (128, 128, 27, 27), "lrn"),
    ("same_map_norm_conv2", (128, 128, 27, 27), "rnorm"),
]


def _step(fn, x: torch.Tensor, g: torch.Tensor):
    def step():
        x.grad = None
        fn(x).backward(g)
    return step


def measure(name: str, shape: tuple, op: str, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    # conv1-like activations: large enough that the normalisation is far from the identity
    x = (torch.randn(shape, generator=gen) * 50).requires_grad_()
    g = torch.randn(shape, generator=gen)
    if op == "lrn":
        project = lambda t: lrn(t, "code145")  # noqa: E731
        baseline = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        against = "torch.nn.LocalResponseNorm"
        label = "LRN"
    else:
        project = same_map_norm
        baseline = lambda t: same_map_norm(t, fast=False)  # noqa: E731
        against = "plain avg_pool2d formulation"
        label = "same-map norm"
    with torch.no_grad():
        torch.testing.assert_close(project(x), baseline(x), rtol=1e-5, atol=1e-6)
    times = interleaved_medians({"project": _step(project, x, g), "baseline": _step(baseline, x, g)},
                                repeats=repeats)
    ms = {k: 1000 * v for k, v in times.items()}
    dims = ", ".join(map(str, shape))
    return {"name": name, "what": f"{label} fwd+bwd [{dims}] fp32 vs {against}", "unit": "ms",
            "project": ms["project"], "baseline": ms["baseline"],
            "ratio": ms["baseline"] / ms["project"], "repeats": repeats}


def run(quick: bool = False) -> list[dict]:
    cases = CASES[:1] if quick else CASES
    return [measure(name, shape, op, repeats=3 if quick else 7) for name, shape, op in cases]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="conv1's shape only, 3 repetitions")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = run(args.quick)
    if args.json:
        print(json.dumps(rows, indent=1))
    for r in rows if not args.json else []:
        print(f"{r['what']}: project {r['project']:.1f} ms, baseline {r['baseline']:.1f} ms, "
              f"ratio {r['ratio']:.2f}x (median of {r['repeats']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
