"""Benchmark: one training step of AlexNet (forward, backward, update; batch 128; float32; CPU)
as this project's trainer runs it on one device, against a naive faithful baseline, in one run.

    python benchmarks/bench_train_step.py [--quick] [--json] [--batch N] [--switches [NAME ...]]

- project: the paper's two-tower model as repro.train.build_model makes it with the default
  config plus speed.channels_last (off by default, as the paper's recipe comes first; on in
  paper_configs/demo.toml): the grouped emulation of both towers, channels-last, fast LRN,
  space-to-depth conv1 gradient, conv2 by Fourier transforms, fc layers through oneDNN; fed
  the loader's channels-last batch; PaperSGD;
- baseline: a plain dense single-tower AlexNet, the usual way to write it (repro/baseline.py):
  nn.Sequential, 96-256-384-384-256 maps (conv2, conv4, conv5 read all maps, so 1.57x the
  multiply-adds of the two-tower net), torch.nn.LocalResponseNorm, fc 4096-4096-1000, contiguous
  NCHW input, the same initialisation and update;
- plain: the project's own two-tower model with every speed switch off (towers apart, NCHW, the
  plain LRN, conv1 and fc), i.e. the same arithmetic as the project, so the ratio is the speed
  work alone;
- matmul: the CPU's matrix rate, measured interleaved with the steps: the fastest of float32
  matrix products through MKL (torch.mm) and oneDNN (its matmul; a 1x1 convolution), each of
  about the work of half a step. (On this project's AMD CPU, oneDNN ran at twice MKL's rate.)

--switches times each CPU speed switch alone instead (the step as above against the same step
with that one switch flipped), so that a claim about one switch can be checked on any machine.

Model FLOP/s counts the two-tower model's training FLOPs from the layer shapes (repro.estimate:
2 FLOPs per multiply-add; backward = 2 x forward, conv1 without its input gradient), not the
elementwise layers or the update; conv2 by Fourier transforms (speed.fft_conv2) does fewer, so
the rate is that of an equivalent direct computation. All variants run in one process, so
process settings the trainer makes (speed.keep_freed_memory) help the baseline too. Times are medians of interleaved
repetitions. run() returns the rows for `./run.sh bench`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from repro import estimate, machine  # noqa: E402
from repro.baseline import naive_alexnet  # noqa: E402
from repro.bench import interleaved_medians  # noqa: E402
from repro.config import Config, SpeedConfig  # noqa: E402
from repro.fast import fft_conv  # noqa: E402
from repro.fast.memory import keep_freed_memory  # noqa: E402
from repro.optim import PaperSGD  # noqa: E402
from repro.parallel import OneDevice  # noqa: E402
from repro.train import build_model  # noqa: E402

CLASSES = 1000


def plain_config() -> Config:
    cfg = Config()  # the process setting keep_freed_memory stays as it is for all variants
    cfg.speed = dataclasses.replace(SpeedConfig.plain(), keep_freed_memory=cfg.speed.keep_freed_memory)
    return cfg


def step_fn(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, reseed):
    def step():
        model.train()
        reseed()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def matmul_fns(work: float) -> dict:
    """Float32 matrix products of about `work` FLOPs each, by the CPU libraries torch uses:
    MKL's sgemm (torch.mm, n x n by n x n), oneDNN's matmul primitive where torch exposes it,
    and oneDNN's 1x1 convolution ([b, 1024, 64, 64] channels-last: a (b * 4096) x 1024 by
    1024 x 1024 product). Returns {name: (fn, flops)}; the fastest is the CPU's matrix rate."""
    n = 1024
    while 2 * (2 * n) ** 3 <= work and n < 4096:
        n *= 2
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    reps = max(1, round(work / (2 * n ** 3)))
    fns = {"MKL sgemm": (lambda: [torch.mm(a, b, out=c) for _ in range(reps)], 2 * n ** 3 * reps)}
    linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)  # not public API: optional
    if linear is not None and torch.backends.mkldnn.is_available():
        fns["oneDNN matmul"] = (lambda: [linear(a, b, None, "none", [], "") for _ in range(reps)],
                                2 * n ** 3 * reps)
    images = max(1, round(work / (2 * 4096 * 1024 ** 2)))
    x = torch.randn(images, 64, 64, 1024).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    w = torch.randn(1024, 1024, 1, 1)
    fns["oneDNN 1x1 conv"] = (lambda: F.conv2d(x, w), 2 * images * 4096 * 1024 ** 2)
    return fns


def measure(batch: int, repeats: int, with_plain: bool = True) -> list[dict]:
    cfg = Config()
    cfg.speed.channels_last = True  # the fastest faithful configuration on a CPU
    if cfg.speed.keep_freed_memory:
        keep_freed_memory()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 224, 224, 3, generator=gen) * 60  # mean-subtracted pixels
    labels = torch.randint(0, CLASSES, (batch,), generator=gen)
    loader_view = images.permute(0, 3, 1, 2)  # what repro.data hands over: NCHW view, NHWC memory
    nchw = loader_view.contiguous()

    project = build_model(cfg, OneDevice("cpu"))
    fns = {"project": step_fn(project, PaperSGD.from_config(project, cfg.optim), loader_view, labels,
                              lambda: project.reseed_dropout(1))}
    baseline = naive_alexnet()
    fns["baseline"] = step_fn(baseline, PaperSGD(baseline.parameters(), cfg.optim.lr), nchw, labels,
                              lambda: None)
    if with_plain:
        plain_cfg = plain_config()
        plain = build_model(plain_cfg, OneDevice("cpu"))
        with torch.no_grad():  # same weights, same function (tests/test_parallel.py, test_speed.py)
            check = nchw[:2]
            torch.testing.assert_close(project.eval()(check), plain.eval()(check), rtol=1e-4, atol=1e-5)
        fns["plain"] = step_fn(plain, PaperSGD.from_config(plain, plain_cfg.optim), nchw, labels,
                               lambda: plain.reseed_dropout(1))
    flops = estimate.train_flops(cfg.model) * batch
    mm = matmul_fns(flops / 2)
    fns.update({name: fn for name, (fn, _) in mm.items()})
    t = interleaved_medians(fns, repeats=repeats)

    img_s = {k: batch / t[k] for k in ("project", "baseline", "plain") if k in t}
    rates = {name: work / t[name] for name, (_, work) in mm.items()}
    best = max(rates, key=rates.get)
    matrix = rates[best]
    model_rate = flops / t["project"]
    shape = f"batch {batch}, fp32, CPU"
    rows = [{"name": "train_step", "unit": "img/s", "project": img_s["project"], "baseline": img_s["baseline"],
             "ratio": img_s["project"] / img_s["baseline"], "repeats": repeats,
             "what": f"train step ({shape}) vs dense nn.Sequential AlexNet, torch LRN"}]
    if with_plain:
        rows.append({"name": "train_step_plain", "unit": "img/s", "project": img_s["project"],
                     "baseline": img_s["plain"], "ratio": img_s["project"] / img_s["plain"],
                     "repeats": repeats, "what": f"train step ({shape}) vs same model, speed.* off"})
    rows.append({"name": "train_step_flops", "unit": "GFLOP/s", "project": model_rate / 1e9,
                 "baseline": matrix / 1e9, "ratio": model_rate / matrix, "repeats": repeats,
                 "what": f"model FLOP/s vs best matmul FLOP/s ({best}; the model's FLOPs counted as "
                         "direct convolutions, so a layer by Fourier transforms, which does fewer, counts "
                         "at its direct equivalent)", "matmul_gflop_s": {
                     k: v / 1e9 for k, v in rates.items()},
                 "model_gflop_per_image": estimate.train_flops(cfg.model) / 1e9})
    rows += breakdown_rows(fns["project"], fns["baseline"], shape, (t["project"], t["baseline"]))
    return rows


def convolution_seconds(step, repeats: int = 3) -> float:
    """Seconds in convolutions, forward and backward, of one step, from torch.profiler's own CPU
    time per operator (the convolutions' kernels are oneDNN's; a convolution by Fourier
    transforms, speed.fft_conv2, counts with everything it calls), in the quickest of `repeats`
    profiled steps. (The profiler slows some steps' other operators: the baseline's profiled
    steps ran up to 50% over its timed median, all of it outside the convolutions.)"""
    from torch.profiler import ProfilerActivity, profile

    # A CUDA build of torch on a machine without a GPU (PyPI's, on Linux) has its profiler (kineto)
    # print start and stop markers and a failed GPU count to stderr at every profiled step; above
    # its highest level (5) it prints nothing. A KINETO_LOG_LEVEL of the user's own wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    best = None
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = prof.key_averages()
        conv = (sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
                + sum(e.cpu_time_total for e in events if e.key in FFT_CONV_EVENTS)) / 1e6
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        if best is None or total < best[1]:
            best = conv, total
    return best[0]


FFT_CONV_EVENTS = ("_FFTConv", "_FFTConvBackward")  # repro/fast/fft_conv.py's autograd function


def breakdown_rows(project, baseline, shape: str, steps: tuple[float, float]) -> list[dict]:
    """Where each step's time goes: in the convolutions, whose work the two-tower model cuts by
    its 1.57x fewer multiply-adds (all a faster CPU kernel can also speed up), and in the rest
    (LRN, pooling, fc, the update), where the speed paths act. A step's ratio lies between the
    two, weighted by the convolutions' share: what limits it on CPUs with narrower vectors.
    `steps`: the timed median step of each (s); the rest is that minus the convolutions."""
    (pt, bt), pc, bc = steps, convolution_seconds(project), convolution_seconds(baseline)
    if pc >= pt or bc >= bt:  # two measurements that cannot both be right: say so, not a ratio
        raise RuntimeError(f"the profiled convolutions ({pc:.3f} s, {bc:.3f} s) exceed the timed step "
                           f"({pt:.3f} s, {bt:.3f} s): the machine was too busy to split the step; run again")
    return [{"name": "train_step_convolutions", "unit": "s/step", "project": pc, "baseline": bc, "ratio": bc / pc,
             "what": f"time in convolutions, fwd+bwd ({shape}; {pc / pt:.0%} of the project's step, "
                     f"{bc / bt:.0%} of the baseline's)", "share_project": pc / pt, "share_baseline": bc / bt},
            {"name": "train_step_rest", "unit": "s/step", "project": pt - pc, "baseline": bt - bc,
             "ratio": (bt - bc) / (pt - pc), "what": f"the rest of the step: LRN, pooling, fc, update ({shape})"}]


# The [speed] switches that act on a CPU step and can be flipped inside one process
# (keep_freed_memory is a process setting, so it would help both sides; bf16, compile, tf32 and
# cudnn_benchmark act on GPUs: `./run.sh bench --gpu` measures those).
CPU_SWITCHES = ("grouped", "channels_last", "fast_lrn", "fast_conv1", "fast_fc", "fft_conv2", "fft_conv3_5")


def switch_rows(names, batch: int, repeats: int) -> list[dict]:
    """Each [speed] switch on its own: the project's step as measure() configures it, against the
    same step with only that switch flipped, timed interleaved in one run (ratio > 1: the
    benchmark's setting of the switch is the faster one on this machine)."""
    unknown = [n for n in names if n not in CPU_SWITCHES]
    if unknown:
        raise ValueError(f"unknown switch {unknown[0]!r}: choose from {', '.join(CPU_SWITCHES)}")
    cfg = Config()
    cfg.speed.channels_last = True  # as measure()
    if cfg.speed.keep_freed_memory:
        keep_freed_memory()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 224, 224, 3, generator=gen) * 60
    labels = torch.randint(0, CLASSES, (batch,), generator=gen)
    loader_view = images.permute(0, 3, 1, 2)

    def step_of(c: Config):
        model = build_model(c, OneDevice("cpu"))
        return step_fn(model, PaperSGD.from_config(model, c.optim), loader_view, labels,
                       lambda: model.reseed_dropout(1))

    rows = []
    for name in names:
        setting, other = switch_settings(getattr(cfg.speed, name))
        flipped = dataclasses.replace(cfg, speed=dataclasses.replace(cfg.speed, **{name: other}))
        t = interleaved_medians({"project": step_of(cfg), "flipped": step_of(flipped)}, repeats=repeats)
        rows.append({"name": f"switch_{name}", "unit": "img/s", "project": batch / t["project"],
                     "baseline": batch / t["flipped"], "ratio": t["flipped"] / t["project"],
                     "repeats": repeats,
                     "what": f"train step (batch {batch}, fp32, CPU) with speed.{name} = {setting} "
                             f"vs the same with speed.{name} = {other}"})
    return rows


def switch_settings(value) -> tuple[str | bool, str | bool]:
    """A switch's setting as the rows name it, and its flip: a boolean's negation; for the
    Fourier-transform switches (auto, on, off) what auto chose here, e.g. ("auto (on here)", "off")."""
    if isinstance(value, bool):
        return value, not value
    on = fft_conv.chosen(value)
    shown = f"{value} ({'on' if on else 'off'} here)" if value == "auto" else value
    return shown, "off" if on else "on"


def run(quick: bool = False) -> list[dict]:
    if quick:  # a smoke run for CI: small batch, two timed repetitions
        return measure(batch=16, repeats=2, with_plain=False)
    return measure(batch=128, repeats=5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 16, 2 repetitions, no 'plain' row")
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch", type=int, default=128, metavar="N",
                   help="images per step (default 128, the paper's; --quick: 16)")
    p.add_argument("--switches", nargs="*", metavar="NAME",
                   help="instead: each [speed] switch alone, the step with it as set here against "
                        f"the step with it flipped (default: all of {', '.join(CPU_SWITCHES)})")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be at least 1, got {args.batch}")
    batch, repeats = (16, 2) if args.quick else (args.batch, 5)
    if args.switches is not None:
        try:
            rows = switch_rows(args.switches or CPU_SWITCHES, batch, repeats)
        except ValueError as e:
            p.error(str(e))
    elif args.quick:
        rows = run(quick=True)
    else:
        rows = measure(batch=batch, repeats=repeats)
    header = machine.describe()
    if args.json:
        print(json.dumps([{**r, "machine": header} for r in rows], indent=1))
        return 0
    print(f"machine: {header}")
    for r in rows:
        print(f"{r['what']}: project {r['project']:.1f} {r['unit']}, baseline {r['baseline']:.1f} "
              f"{r['unit']}, ratio {r['ratio']:.2f}x" + (f" (median of {r['repeats']})" if 'repeats' in r else " (convolutions: quickest of 3 profiled steps)"))
        if "matmul_gflop_s" in r:
            print("  matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in r["matmul_gflop_s"].items())
                  + f"; model: {r['model_gflop_per_image']:.2f} GFLOP per image (repro.estimate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
