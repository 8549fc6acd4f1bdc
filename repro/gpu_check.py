"""`./run.sh bench --gpu`: one prepared command that proves this project's CUDA paths on a GPU and
measures its training speed there, writing `results/gpu/<gpu-name>.json` and printing one table.

Everything it needs is made on the spot: random-pixel shards (data_prep/synthetic.py) in a
temporary directory, models from the paper's config (paper_configs/alexnet_2gpu.toml). Two kinds
of rows:

Checks: a CUDA computation against a reference, with the largest error found and a tolerance
whose reason is stated beside it (repro/tolerance.py; the LRN's and the drift's below):
    lrn_*, same_map_norm_*    the fast LRN (both flavours) and code 145's same-map norm, forward
                              and backward, on the device in float32 against the float64 formula
                              (repro.lrn.lrn_reference, same_map_norm_reference) on the CPU
    model_*                   the trainer's model on the device (two towers on a GPU, grouped on a CPU; fast LRN) against the
                              plain two-tower model on the CPU: float64 logits, loss and every
                              gradient; float32 logits and loss with TF32 off
    conv_float32*             whether a float32 convolution is float32: TF32 off, and with torch's
                              own defaults (which allow TF32 in cuDNN's convolutions)
    grouped_vs_towers, two_devices_*, distributed_pair
                              the placements (repro/parallel.py) on the device: the grouped
                              emulation against two towers; TwoDevices with both towers on one GPU
                              and on two; Distributed over NCCL with two GPUs
    augment_device_*          repro.augment.Normalizer (mean, lighting) and the ten test views
                              on the device against the CPU: the module claims bit-identity
    train_bf16_vs_fp32, train_tf32_vs_fp32
                              the loss after each of a few training steps against float32
Speed: each a ratio measured in the same run, timings interleaved (repro.bench.interleaved_medians,
with CUDA synchronisation), batch 128:
    matmul_*                  the GPU's matrix rate in float32, TF32 and bfloat16
    step_*                    one training step (forward, backward, repro.optim.PaperSGD) of the
                              paper config as repro.train.build_model makes it, and of each speed
                              switch alone and combined (two towers, channels-last, TF32, bf16,
                              torch.compile, cudnn.benchmark), against the naive dense AlexNet
                              with torch.nn.LocalResponseNorm (repro/baseline.py)
    lrn_*                     the fast LRN, the plain one and a torch.compile'd (fused) one
                              against torch.nn.LocalResponseNorm
    step_host_sync, pipeline_*
                              repro.train's own train_step (each loss copied to the host
                              without waiting and checked a step late; loss and error counts
                              read at metrics lines) against the same step without host reads;
                              the whole path: shards -> loader workers -> Normalizer -> train_step
    memory_*                  peak GPU memory per tower (torch.cuda.max_memory_allocated)
    profile_*                 the share of a step the GPU is busy, and the top kernels (JSON)
    flops_*                   model FLOP/s (repro.estimate.train_flops) against the matrix rates
    epochs90_*                hours for 90 epochs of ILSVRC-2012 from the measured img/s, beside
                              `./run.sh bench --model`'s estimate for the same GPU
A step that fails (compile error, out of memory, no NCCL) becomes a row saying so; the JSON is
rewritten after every step, so a run that is killed still leaves what it measured. Speed steps
are skipped, with a note, once the time budget is spent.

Without a GPU the same command runs a reduced mode (a narrow model, batch 4, tiny shards): every
row is produced, CUDA-only ones computed on the CPU as a stand-in where that means anything and
marked "no CUDA" where it does not. tests/test_gpu_check.py runs that mode.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from repro import files, machine
from repro.config import DEFAULT_CONFIG, Config, SpeedConfig, load_config
from repro.model import set_precision
from repro.tolerance import FLOAT32_NET_TOL, FLOAT64_TOL, U32, rel_err

SCHEMA = 1
BUDGET_S = 270.0  # full mode: speed steps stop here, leaving time to finish within 5 minutes
QUICK_BUDGET_S = 80.0

# --------------------------------------------------------------------------- tolerances
# Why each comparison needs the tolerance it has (the rules of repro/tolerance.py; tests/test_lrn.py
# holds the CPU kernels to the LRN's bounds).

# Fast LRN forward, element-wise relative to the float64 formula: d = k + alpha' * (five squares)
# is a sum of six positive terms (within 6u); d^-3/4 through rsqrt and sqrt adds ~3 ulps (CUDA's
# rsqrtf is within 2 ulps, sqrtf is correctly rounded); the product one more: ~12u = 7e-7.
LRN_FORWARD_TOL = 1e-6
# Fast LRN input gradient, element-wise, relative to the sum of the magnitudes of its two terms
# |g d^-3/4| + 2 alpha' beta |a| window(|g a| d^-7/4): they cancel, so a bound relative to the
# result would not hold; each term is about ten roundings of q = d^-1/4, the window a sum of five.
LRN_BACKWARD_TOL = 64 * U32
# A whole network: FLOAT64_TOL in float64, FLOAT32_NET_TOL for float32 logits and loss
# (repro/tolerance.py, rule 2).
# Loss after each of a few training steps, relative to float32's: every conv and matmul rounds
# its inputs to the mode's mantissa (unit roundoff u); a forward pass of eight such layers moves
# the loss by a few u in practice (a bf16 run on this project's CPU moved it by at most 2u over
# 6 steps); 8u leaves room for the steps' weights drifting apart, and a broken path (a
# normalisation in bf16, a lost scale) is off by far more.
DRIFT_UNITS = 8
UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "tf32": 2.0 ** -11}

GTX580_BYTES = 3 * 2 ** 30  # the memory each tower had in 2012 (section 3.2)


# --------------------------------------------------------------------------- sizes per mode

# The paper config shrunk for a CPU (as tests/tiny_data.py's SMALL): the reduced mode's model.
REDUCED_MODEL = ["model.num_classes=10", "model.widths.conv1=16", "model.widths.conv2=32",
                 "model.widths.conv3=48", "model.widths.conv4=48", "model.widths.conv5=32",
                 "model.widths.fc6=64", "model.widths.fc7=64"]


@dataclass(frozen=True)
class Sizes:
    """How much each part does: the full GPU run, its --quick variant, the reduced CPU mode."""
    label: str
    batch: int  # the training step's batch (the paper's 128 on a GPU)
    steps_per_call: int  # training steps per timed call (consecutive steps overlap on a GPU)
    repeats: int  # interleaved timed calls per variant
    reduced: bool  # the narrow model of REDUCED_MODEL instead of the paper's widths
    check_batch: int  # images in the whole-model checks
    lrn_check: tuple  # [B, C, H, W] of the LRN checks (C: both towers' maps)
    rnorm_check: tuple
    lrn_speed: tuple  # (case, [B, C, H, W]) per LRN speed case: conv1's and conv2's maps
    drift_batch: int
    drift_steps: int
    images: int  # synthetic training images (enough for each pipeline run's steps)
    pipeline_warm: int  # steps not counted: loader start-up, first kernels
    pipeline_steps: int
    matmul_n: int
    budget_s: float
    compile: bool  # measure the torch.compile variants (each compiles for tens of seconds)
    extra_workers: int  # loader workers of the "more workers" pipeline run (0: from the cores)


FULL = Sizes("cuda", batch=128, steps_per_call=3, repeats=10, reduced=False, check_batch=4,
             lrn_check=(16, 96, 55, 55), rnorm_check=(8, 256, 27, 27),
             lrn_speed=(("conv1", (128, 96, 55, 55)), ("conv2", (128, 256, 27, 27))),
             drift_batch=128, drift_steps=6, images=5120, pipeline_warm=5, pipeline_steps=30,
             matmul_n=8192, budget_s=BUDGET_S, compile=True, extra_workers=0)
QUICK = dataclasses.replace(FULL, label="cuda, --quick", steps_per_call=2, repeats=5, drift_steps=4,
                            images=2560, pipeline_warm=3, pipeline_steps=15, budget_s=QUICK_BUDGET_S,
                            compile=False)
REDUCED = Sizes("cpu, reduced", batch=4, steps_per_call=1, repeats=2, reduced=True, check_batch=2,
                lrn_check=(2, 16, 9, 9), rnorm_check=(2, 8, 9, 9),
                lrn_speed=(("conv1", (4, 16, 55, 55)), ("conv2", (4, 32, 27, 27))),
                drift_batch=4, drift_steps=2, images=16, pipeline_warm=1, pipeline_steps=2,
                matmul_n=256, budget_s=600.0, compile=False, extra_workers=1)


# --------------------------------------------------------------------------- rows

def check_row(name: str, what: str, error: float, tolerance: float, note: str = "", **extra) -> dict:
    """A check: pass when the largest error found is finite and within the tolerance."""
    ok = error is not None and math.isfinite(error) and error <= tolerance
    return {"kind": "check", "name": name, "what": what, "error": float(error), "tolerance": tolerance,
            "status": "pass" if ok else "FAIL", "note": note, **extra}


def speed_row(name: str, what: str, unit: str, project: float, baseline: float | None,
              higher_is_better: bool = True, note: str = "", **extra) -> dict:
    """A measurement against a baseline of the same run; ratio > 1: the project is better."""
    ratio = None
    if baseline:
        ratio = project / baseline if higher_is_better else baseline / project
    return {"kind": "speed", "name": name, "what": what, "unit": unit, "project": project,
            "baseline": baseline, "ratio": ratio, "status": "ok", "note": note, **extra}


def skipped_row(kind: str, name: str, what: str, reason: str) -> dict:
    return {"kind": kind, "name": name, "what": what, "status": "skipped", "note": reason}


def error_row(kind: str, name: str, what: str, exc: BaseException) -> dict:
    return {"kind": kind, "name": name, "what": what, "status": "error", "note": one_line(exc)}


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


NO_CUDA = "no CUDA: not measured"


@dataclass
class Step:
    """One guarded unit of the check: the rows it produces, by name, in order."""
    kind: str  # "check" or "speed" (speed steps are skipped once the budget is spent)
    what: str
    names: tuple
    fn: Callable


STEPS: list[Step] = []


def step(kind: str, what: str, *names: str):
    """Register a function ctx -> list of rows as a step (the order of registration is the order
    of the run: checks first, the slow compiled variants and cudnn.benchmark last)."""
    def register(fn):
        STEPS.append(Step(kind, what, names, fn))
        return fn
    return register


# --------------------------------------------------------------------------- the run's state

class Context:
    """What the steps share: the device, the sizes, the clock, the data, and numbers measured by
    earlier steps that later ones derive from (`measured`)."""

    def __init__(self, sizes: Sizes, device: torch.device, tmp: Path, log=None):
        self.sizes, self.device, self.tmp = sizes, device, tmp
        self.cuda = device.type == "cuda"
        self.start = time.perf_counter()
        self.measured: dict[str, float] = {}
        self.profiles: dict[str, dict] = {}
        self.ninety_epochs: dict | None = None
        self.trace: Path | None = None  # --profile: where the Chrome trace goes
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.torch_defaults = torch_defaults()
        self._shards: Path | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self) -> bool:
        return self.elapsed() > self.sizes.budget_s

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def shards(self) -> Path:
        """Random-pixel training shards in the temporary directory, written once."""
        if self._shards is None:
            from data_prep.synthetic import random_shards
            t = time.perf_counter()
            self._shards = random_shards(self.tmp / "shards", self.sizes.images, self.config().model.num_classes)
            self.log(f"gpu check: {self.sizes.images} random images written as shards in "
                     f"{time.perf_counter() - t:.1f} s")
        return self._shards

    def config(self, **speed) -> Config:
        """The paper's config (the trainer's default), reduced on a CPU, with speed overrides."""
        cfg = load_config(DEFAULT_CONFIG, REDUCED_MODEL if self.sizes.reduced else [])
        cfg.speed = dataclasses.replace(cfg.speed, **speed)
        cfg.train.device = str(self.device)
        cfg.data.batch_size = self.sizes.batch
        return cfg

    def model(self, cfg: Config, device=None, dtype: torch.dtype = torch.float32, grouped: bool | None = None):
        """The model as the trainer builds it (repro.train.build_model) on one device, or with
        the grouped emulation on or off whatever the device (`grouped`)."""
        from repro.model import AlexNet
        from repro.parallel import OneDevice
        from repro.train import build_model

        place = OneDevice(device or self.device)
        if grouped is None:
            return build_model(cfg, place).to(dtype)
        return AlexNet.from_config(cfg, placement=place, grouped=grouped).to(dtype)

    def images(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-subtracted-like pixels in the loader's layout (an NCHW view of NHWC memory), on
        the CPU, and labels."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 224, 224, 3, generator=g) * 60
        return x.permute(0, 3, 1, 2), torch.randint(0, self.config().model.num_classes, (n,), generator=g)


PLAIN = dataclasses.asdict(SpeedConfig.plain())


@contextlib.contextmanager
def float32_precision(tf32: bool):
    """TF32 in cuDNN's convolutions and cuBLAS's matmuls on or off, restored afterwards."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    set_tf32(tf32)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def torch_defaults() -> dict:
    """The process-wide GPU settings as torch leaves them, read before this check sets any (the
    trainer sets its own through repro.model.set_precision: float32 unless speed.tf32)."""
    return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.benchmark": torch.backends.cudnn.benchmark}


def set_tf32(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def autocast(ctx: Context, bf16: bool):
    """bfloat16 autocast on the device (on a CPU: the CPU's autocast, a stand-in)."""
    return torch.autocast(ctx.device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()


# =========================================================================== checks

def _activations(shape, scale: float, seed: int) -> torch.Tensor:
    """float64 activations big enough that alpha' * sum(a^2) is comparable to k: the
    normalisation is far from the identity and every term of the formula matters."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def _channel_window(groups: int):
    """window(t): the sum over 5 neighbouring maps of t [B, C, H, W], inside each group."""
    from repro.lrn import window_sum

    def window(t):
        b, c = t.shape[:2]
        return window_sum(t.reshape(b * groups, c // groups, -1, 1)).reshape(t.shape)
    return window


def _patch_window(t):
    """window(t): the sum over the 5x5 patch of each map position (zeros outside)."""
    return F.avg_pool2d(t, 5, stride=1, padding=2, count_include_pad=True) * 25


def _norm_rows(ctx: Context, name: str, what: str, fast, reference, k: float, alpha: float, window,
               shape, channels_last: bool) -> list[dict]:
    """Forward and backward of the fast normalisation `fast` on the device in float32 against
    `reference` in float64 on the CPU."""
    x64 = _activations(shape, 40.0, seed=1).requires_grad_()
    g64 = _activations(shape, 1.0, seed=2)
    want = reference(x64)
    (want_grad,) = torch.autograd.grad(want, x64, g64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x64.detach().float().to(ctx.device).contiguous(memory_format=fmt).requires_grad_()
    out = fast(x)
    (grad,) = torch.autograd.grad(out, x, g64.float().to(ctx.device).contiguous(memory_format=fmt))
    out, grad = out.detach().double().cpu(), grad.double().cpu()
    forward = ((out - want.detach()).abs() / want.detach().abs().clamp_min(1e-300)).max().item()
    with torch.no_grad():
        x0, d = x64.detach(), k + alpha * window(x64.detach() ** 2)
        magnitude = (g64 * d ** -0.75).abs() + 2 * alpha * 0.75 * x0.abs() * window((g64 * x0).abs() * d ** -1.75)
    backward = ((grad - want_grad).abs() / magnitude.clamp_min(1e-300)).max().item()
    dims = ", ".join(map(str, shape))
    layout = "channels-last" if channels_last else "NCHW"
    where = f"[{dims}] {layout} on {ctx.device.type}, float32 vs the float64 formula on the CPU"
    return [check_row(f"{name}_forward", f"{what} forward, {where}", forward, LRN_FORWARD_TOL,
                      "element-wise |diff| / |exact|"),
            check_row(f"{name}_backward", f"{what} input gradient, {where}", backward, LRN_BACKWARD_TOL,
                      "element-wise |diff| / (|term 1| + |term 2|)")]


def _lrn_rows(ctx: Context, flavour: str, channels_last: bool) -> list[dict]:
    from repro import lrn as L

    def reference(x):  # the formula, one tower's maps at a time
        return torch.cat([L.lrn_reference(h, flavour) for h in x.chunk(2, dim=1)], dim=1)

    return _norm_rows(ctx, f"lrn_{flavour}", f"fast LRN ({flavour}, both towers' maps, window kept in each)",
                      lambda x: L.lrn(x, flavour, fast=True, groups=2), reference, L.K,
                      L.ALPHA_PER_TERM[flavour], _channel_window(2), ctx.sizes.lrn_check, channels_last)


@step("check", "fast LRN (paper) vs the formula", "lrn_paper_forward", "lrn_paper_backward")
def check_lrn_paper(ctx: Context) -> list[dict]:
    return _lrn_rows(ctx, "paper", channels_last=False)  # the default config's layout


@step("check", "fast LRN (code 145) vs the formula", "lrn_code145_forward", "lrn_code145_backward")
def check_lrn_code145(ctx: Context) -> list[dict]:
    return _lrn_rows(ctx, "code145", channels_last=True)  # speed.channels_last's layout


@step("check", "fast same-map norm vs the formula", "same_map_norm_forward", "same_map_norm_backward")
def check_same_map_norm(ctx: Context) -> list[dict]:
    from repro import lrn as L

    return _norm_rows(ctx, "same_map_norm", "fast same-map 5x5 norm (code 145's rnorm)",
                      lambda x: L.same_map_norm(x, fast=True), L.same_map_norm_reference, L.RNORM_K,
                      L.RNORM_SCALE, _patch_window, ctx.sizes.rnorm_check, channels_last=False)


def _pass(model, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Logits, loss and every gradient (by two-tower name, on the CPU) of one pass in eval mode:
    dropout off, since the CPU's and CUDA's random streams differ by design."""
    from repro.grouped import from_grouped_state

    model.eval()
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y.to(logits.device))
    loss.backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    if model.grouped:
        grads = from_grouped_state(grads, model.m)
    return logits.detach().cpu(), loss.detach().cpu(), grads


def _net_error(result: tuple, reference: tuple, grads: bool = True) -> float:
    """The largest relative error over logits, loss and (if `grads`) every gradient."""
    logits, loss, g = result
    errors = [rel_err(logits, reference[0]), rel_err(loss, reference[1])]
    if grads:
        if set(g) - set(reference[2]) or not g:
            raise ValueError(f"gradients of {sorted(set(g) - set(reference[2]))} have no reference")
        errors += [rel_err(t, reference[2][n]) for n, t in g.items() if t.numel()]
    return max(errors)


def _reference(ctx: Context, x, y) -> tuple:
    """The plain two-tower model (every speed switch off) on the CPU in float64."""
    cfg = ctx.config(**PLAIN)
    return _pass(ctx.model(cfg, "cpu", torch.float64), x.double(), y)


@step("check", "the trainer's model on the device vs the plain model on the CPU", "model_float64", "model_float32")
def check_model(ctx: Context) -> list[dict]:
    x, y = ctx.images(ctx.sizes.check_batch)
    ref = _reference(ctx, x, y)
    cfg = ctx.config()
    dev = ctx.device.type
    what = f"the paper config as the trainer builds it (fast LRN; towers on a GPU, grouped on a CPU) on {dev}, vs the plain two-tower model on the CPU in float64"
    rows = [check_row("model_float64", f"{what}: float64 logits, loss, every gradient",
                      _net_error(_pass(ctx.model(cfg, dtype=torch.float64), x.double().to(ctx.device), y), ref),
                      FLOAT64_TOL)]
    with float32_precision(tf32=False):
        err = _net_error(_pass(ctx.model(cfg), x.to(ctx.device), y), ref, grads=False)
    rows.append(check_row("model_float32", f"{what}: float32 logits and loss, TF32 off", err, FLOAT32_NET_TOL))
    return rows


def _conv_error(ctx: Context, x64: torch.Tensor, w64: torch.Tensor) -> float:
    """max |conv(x, w) - exact| / exact over the outputs, float32 on the device against float64."""
    x, w = x64.float(), w64.float()
    exact = F.conv2d(x.double(), w.double())  # the exact sums of the float32 inputs' products
    got = F.conv2d(x.to(ctx.device), w.to(ctx.device)).double().cpu()
    return ((got - exact).abs() / exact).max().item()


@step("check", "float32 convolutions: TF32 off, and as the trainer sets them", "conv_float32", "conv_float32_trainer")
def check_conv_precision(ctx: Context) -> list[dict]:
    """Whether a float32 convolution is float32. The terms are positive, so each output is within
    gamma_n of exact in any order of summation (repro/tolerance.py, rule 1; here the sum is its
    own magnitude); TF32 rounds the inputs to 10 bits, errors of about 2^-11 per term, which a
    sum of 64 terms averages to ~1e-4: far past float32's 2 gamma_64 = 7.6e-6. (The logits of a
    whole network at the paper's initialisation are dominated by the biases and hide it.)"""
    g = torch.Generator().manual_seed(9)
    n = 64  # terms per output: a 1x1 convolution over 64 maps (no Winograd or FFT algorithm)
    x64 = torch.rand(32, n, 28, 28, generator=g, dtype=torch.float64) + 0.5
    w64 = torch.rand(128, n, 1, 1, generator=g, dtype=torch.float64) + 0.5
    tol = 2 * n * U32 / (1 - n * U32)
    what = (f"1x1 convolution over {n} maps, positive terms, float32 on {ctx.device.type} vs float64: "
            "max |diff| / exact")
    with float32_precision(tf32=False):
        rows = [check_row("conv_float32", f"{what}, TF32 off", _conv_error(ctx, x64, w64), tol)]
    name = "conv_float32_trainer"
    if not ctx.cuda:
        return rows + [skipped_row("check", name, f"{what}, as the trainer sets the flags", "no CUDA: TF32 is a GPU setting")]
    flags = ctx.torch_defaults
    with float32_precision(tf32=True):  # torch's own default for cuDNN; the trainer must turn it off
        set_precision(Config().speed)  # what repro/train.py and repro/evaluate.py do (speed.tf32 = false)
        err = _conv_error(ctx, x64, w64)
    note = (f"torch's default cudnn.allow_tf32 = {flags['cudnn.allow_tf32']}; repro.model.set_precision turns it "
            "off for the paper configs: a FAIL here means they would train their convolutions in TF32")
    return rows + [check_row(name, f"{what}, as the trainer sets the flags (speed.tf32 = false)", err, tol, note)]


@step("check", "the grouped emulation vs two towers on the device", "grouped_vs_towers")
def check_grouped(ctx: Context) -> list[dict]:
    x, y = ctx.images(ctx.sizes.check_batch, seed=3)
    x64 = x.double().to(ctx.device)
    towers = _pass(ctx.model(ctx.config(grouped=False), dtype=torch.float64), x64, y)
    grouped = _pass(ctx.model(ctx.config(), dtype=torch.float64, grouped=True), x64, y)
    return [check_row("grouped_vs_towers", f"grouped emulation vs two towers on {ctx.device.type}, both "
                      "float64: logits, loss, every gradient", _net_error(grouped, towers), FLOAT64_TOL)]


def _placed_model(ctx: Context, placement, dtype):
    from repro.model import AlexNet

    return AlexNet.from_config(ctx.config(grouped=False), placement=placement).to(dtype)


@step("check", "TwoDevices vs one device", "two_devices_one_gpu", "two_devices_two_gpus")
def check_two_devices(ctx: Context) -> list[dict]:
    from repro.parallel import OneDevice, TwoDevices

    x, y = ctx.images(ctx.sizes.check_batch, seed=4)
    first = ctx.device if not ctx.cuda else torch.device("cuda:0")
    one = {dt: _pass(_placed_model(ctx, OneDevice(first), dt), x.to(dt), y) for dt in (torch.float64, torch.float32)}
    rows = []
    pairs = [("two_devices_one_gpu", [first, first])]
    if ctx.cuda and torch.cuda.device_count() >= 2:
        pairs.append(("two_devices_two_gpus", [torch.device("cuda:0"), torch.device("cuda:1")]))
    for name, devices in pairs:
        two = {dt: _pass(_placed_model(ctx, TwoDevices(devices), dt), x.to(dt), y)
               for dt in (torch.float64, torch.float32)}
        identical = all(torch.equal(a, b) for a, b in zip(two[torch.float32][:2], one[torch.float32][:2]))
        where = " and ".join(map(str, devices))
        rows.append(check_row(name, f"TwoDevices on {where} vs OneDevice (two towers) on {first}: float64 "
                              "logits, loss, every gradient", _net_error(two[torch.float64], one[torch.float64]),
                              FLOAT64_TOL, f"float32 logits and loss bit-identical: {identical}"))
    if len(pairs) == 1:
        reason = (f"{torch.cuda.device_count()} GPU visible: needs two" if ctx.cuda
                  else "no CUDA: two_devices_one_gpu ran TwoDevices on two CPU 'devices' as a stand-in")
        rows.append(skipped_row("check", "two_devices_two_gpus", "TwoDevices on cuda:0 and cuda:1", reason))
    return rows


def _distributed_worker(rank: int, world: int, backend: str, store: str, cfg: Config, x, y, out: str):
    """One tower in its own process (repro.parallel.Distributed): float64 logits, loss and this
    tower's gradients, saved for the parent to compare."""
    import torch.distributed as dist
    from repro.model import AlexNet
    from repro.parallel import Distributed

    if backend == "gloo":
        torch.set_num_threads(1)
        device = "cpu"
    else:
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = AlexNet.from_config(cfg, placement=Distributed(cfg.model.towers, device)).double()
        torch.save(_pass(model, x.double(), y), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(fn, args: tuple, nprocs: int, timeout_s: float) -> None:
    """fn(rank, *args) in `nprocs` spawned processes; an exception or a hang past timeout_s
    (a stuck collective) ends them all and raises."""
    import torch.multiprocessing as mp

    procs = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.perf_counter() + timeout_s
    try:
        while not procs.join(timeout=1):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the {nprocs} processes did not finish in {timeout_s:.0f} s")
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()


@step("check", "Distributed: one tower per process", "distributed_pair")
def check_distributed(ctx: Context) -> list[dict]:
    import torch.distributed as dist

    what = "Distributed over {}: two processes, one tower each, vs OneDevice (two towers): float64 logits, loss, every gradient"
    if ctx.cuda:
        if torch.cuda.device_count() < 2:
            return [skipped_row("check", "distributed_pair", what.format("NCCL"),
                                f"{torch.cuda.device_count()} GPU visible: NCCL needs one GPU per process "
                                "(the reduced CPU mode and tests/test_parallel.py run the gloo stand-in)")]
        if not dist.is_nccl_available():
            return [skipped_row("check", "distributed_pair", what.format("NCCL"), "this torch has no NCCL")]
        backend, first = "nccl", torch.device("cuda:0")
    else:
        backend, first = "gloo", ctx.device
    from repro.parallel import OneDevice

    cfg = ctx.config(grouped=False)
    x, y = ctx.images(ctx.sizes.check_batch, seed=5)
    one = _pass(_placed_model(ctx, OneDevice(first), torch.float64), x.double(), y)
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as tmp:
        _spawn(_distributed_worker, (2, backend, f"{tmp}/store", cfg, x, y, tmp), nprocs=2, timeout_s=180)
        ranks = [torch.load(f"{tmp}/rank{r}.pt", weights_only=True) for r in range(2)]
    grads = {**ranks[0][2], **ranks[1][2]}
    err = max(_net_error((ranks[0][0], ranks[0][1], grads), one), rel_err(ranks[1][0], one[0]))
    note = "" if ctx.cuda else "no CUDA: gloo on the CPU as a stand-in for NCCL"
    return [check_row("distributed_pair", what.format(backend.upper()), err, FLOAT64_TOL, note)]


def _uint8_batch(ctx: Context, n: int, seed: int):
    """A training Batch of random crops with drawn offsets and lighting, as the loader makes it
    (pinned on a GPU machine, as train_batches(pin_memory=True) hands it over)."""
    from repro import augment, data

    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8))
    offsets = torch.from_numpy(augment.random_crop_params(rng, n))
    alphas = torch.from_numpy(rng.normal(0, 0.1, (n, 3)).astype(np.float32))
    batch = data.Batch(images, torch.zeros(n, dtype=torch.int64), offsets, alphas)
    return batch.pin_memory() if ctx.cuda else batch


AUGMENTS = (dict(mean="crop", lighting="paper"), dict(mean="centre", lighting="code145"),
            dict(mean="crop", lighting="none"))


@step("check", "Normalizer on the device vs the CPU", "augment_device_train", "augment_device_views")
def check_augment(ctx: Context) -> list[dict]:
    from data_prep import shards
    from repro import augment
    from repro.config import AugmentConfig

    stats = shards.read_stats(ctx.shards())
    batch = _uint8_batch(ctx, 8, seed=6)
    worst = 0.0
    for kw in AUGMENTS:  # the paper's, code 145's (centre mean, /1.1) and no lighting
        aug = AugmentConfig(**kw)
        on_device = augment.Normalizer(stats, aug, ctx.device).train(batch).cpu()
        on_cpu = augment.Normalizer(stats, aug, "cpu").train(batch)
        worst = max(worst, (on_device - on_cpu).abs().max().item())
    note = "" if ctx.cuda else "no CUDA: the CPU against itself (a stand-in)"
    rows = [check_row("augment_device_train", "Normalizer.train (mean at the crop or its centre, PCA lighting "
                      f"paper / code145 / none) on {ctx.device.type} vs the CPU: max |diff|, bit-identity claimed "
                      "by repro/augment.py", worst, 0.0, note)]
    rng = np.random.default_rng(7)
    full = torch.from_numpy(rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8))
    offsets = augment.ten_view_offsets()
    views_cpu = torch.from_numpy(augment.take_views(full.numpy(), offsets))  # numpy, as the loader
    views_dev = augment.take_views(full.to(ctx.device), offsets).cpu()  # torch on the device
    worst = (views_dev.int() - views_cpu.int()).abs().max().item()
    aug = AugmentConfig()
    x_dev = augment.Normalizer(stats, aug, ctx.device).views(views_cpu, offsets).cpu()
    x_cpu = augment.Normalizer(stats, aug, "cpu").views(views_cpu, offsets)
    worst = max(worst, (x_dev - x_cpu).abs().max().item())
    rows.append(check_row("augment_device_views", f"the ten test views (crops, mirrors) and their mean "
                          f"subtraction on {ctx.device.type} vs numpy and the CPU: max |diff|", worst, 0.0, note))
    return rows


def _train_losses(ctx: Context, bf16: bool, tf32: bool) -> list[float]:
    """The loss of each of a few training steps on one fixed batch from the paper's
    initialisation (dropout masks drawn alike)."""
    from repro.optim import PaperSGD

    cfg = ctx.config()
    model = ctx.model(cfg).train()
    opt = PaperSGD.from_config(model, cfg.optim)
    x, y = ctx.images(ctx.sizes.drift_batch, seed=8)
    x, y = x.to(ctx.device), y.to(ctx.device)
    losses = []
    with float32_precision(tf32):
        for s in range(ctx.sizes.drift_steps):
            model.reseed_dropout(s)
            losses.append(_update(ctx, model, opt, x, y, bf16))
    return [float(v) for v in losses]


def _update(ctx: Context, forward, optimizer, x, y, bf16: bool):
    """One training step as repro.train.train_step takes it (autocast around the forward, a
    float32 loss, PaperSGD), without its host reads; returns the loss, still on the device."""
    with autocast(ctx, bf16):
        logits = forward(x)
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@step("check", "bf16 autocast and TF32 training vs float32", "train_bf16_vs_fp32", "train_tf32_vs_fp32")
def check_reduced_precision(ctx: Context) -> list[dict]:
    fp32 = _train_losses(ctx, bf16=False, tf32=False)
    rows = []
    for mode in ("bf16", "tf32"):
        name = f"train_{mode}_vs_fp32"
        what = (f"loss after each of {ctx.sizes.drift_steps} training steps (batch {ctx.sizes.drift_batch}), "
                f"{'bfloat16 autocast (speed.bf16)' if mode == 'bf16' else 'TF32 convolutions and matmuls'} vs "
                f"float32: max |diff| / loss")
        if mode == "tf32" and not ctx.cuda:
            rows.append(skipped_row("check", name, what, "no CUDA: TF32 is a GPU setting"))
            continue
        got = _train_losses(ctx, bf16=mode == "bf16", tf32=mode == "tf32")
        err = max(abs(a - b) / abs(b) for a, b in zip(got, fp32))
        note = f"losses float32 {', '.join(f'{v:.4f}' for v in fp32)}; {mode} {', '.join(f'{v:.4f}' for v in got)}"
        if not ctx.cuda:
            note += "; no CUDA: the CPU's bf16 autocast as a stand-in"
        rows.append(check_row(name, what, err, DRIFT_UNITS * UNIT_ROUNDOFF[mode], note,
                              losses={"fp32": fp32, mode: got}))
    return rows


# =========================================================================== speed

def _timed(ctx: Context, fns: dict, repeats: int | None = None) -> dict[str, float]:
    """Median seconds per call of each function, interleaved, synchronised with the device."""
    from repro.bench import interleaved_medians

    return interleaved_medians(fns, repeats or ctx.sizes.repeats, warmup=1, sync=ctx.sync)


def _matmul_fns(ctx: Context) -> dict[str, tuple[Callable, float]]:
    """Square matrix products on random data (zeros run faster than real data): float32 with TF32
    off, TF32 (GPU only) and bfloat16. {mode: (fn, FLOPs per call)}."""
    n = ctx.sizes.matmul_n
    g = torch.Generator(device=ctx.device).manual_seed(0)
    out = {}
    modes = [("fp32", torch.float32, False, 1), ("bf16", torch.bfloat16, False, 8 if ctx.cuda else 1)]
    if ctx.cuda:
        modes.insert(1, ("tf32", torch.float32, True, 4))
    for mode, dtype, tf32, reps in modes:
        a = torch.randn(n, n, device=ctx.device, generator=g).to(dtype)
        b = torch.randn(n, n, device=ctx.device, generator=g).to(dtype)

        def fn(a=a, b=b, tf32=tf32, reps=reps):
            set_tf32(tf32)
            for _ in range(reps):
                torch.mm(a, b)
            set_tf32(False)
        out[mode] = (fn, 2.0 * n ** 3 * reps)
    return out


def _peak_fp32(ctx: Context) -> float | None:
    """The data sheet's float32 rate of this GPU, as repro/estimate.py states it (None if unknown)."""
    from repro import estimate

    setup = estimate.one_gpu_setup(torch.cuda.get_device_name(ctx.device)) if ctx.cuda else None
    return setup.device.fp32 if setup else None


@step("speed", "matrix products", "matmul_fp32", "matmul_tf32", "matmul_bf16")
def speed_matmul(ctx: Context) -> list[dict]:
    fns = _matmul_fns(ctx)
    t = _timed(ctx, {k: fn for k, (fn, _) in fns.items()})
    rate = {k: work / t[k] / 1e12 for k, (_, work) in fns.items()}
    ctx.measured.update({f"matmul_{k}": v for k, v in rate.items()})
    n, peak = ctx.sizes.matmul_n, _peak_fp32(ctx)
    rows = [speed_row("matmul_fp32", f"float32 matmul {n}x{n}x{n} (TF32 off) vs the data sheet's fp32 rate "
                      "(repro/estimate.py)", "TFLOP/s", rate["fp32"], peak / 1e12 if peak else None,
                      note="" if peak else "no data-sheet figure for this device")]
    if "tf32" in rate:
        rows.append(speed_row("matmul_tf32", f"TF32 matmul {n}x{n}x{n} vs float32", "TFLOP/s", rate["tf32"], rate["fp32"]))
    else:
        rows.append(skipped_row("speed", "matmul_tf32", "TF32 matmul vs float32", "no CUDA: TF32 is a GPU setting"))
    rows.append(speed_row("matmul_bf16", f"bfloat16 matmul {n}x{n}x{n} vs float32", "TFLOP/s", rate["bf16"], rate["fp32"],
                          note="" if ctx.cuda else "on the CPU"))
    return rows


# --------------------------------------------------------------------------- the training step

@dataclass(frozen=True)
class Variant:
    """A way of running the paper config's training step: speed switches, process-wide precision
    flags, autocast, compile. `faithful`: computes the paper's float32 function (up to the order
    of summation), i.e. no TF32 and no bf16."""
    name: str
    what: str
    speed: dict = field(default_factory=dict)
    tf32: bool = False
    bf16: bool = False
    compile: bool = False
    grouped: bool | None = None  # the grouped emulation forced on or off; None: as the trainer builds it

    @property
    def faithful(self) -> bool:
        return not (self.tf32 or self.bf16)


EAGER = (
    Variant("default", "the paper config as repro.train.build_model makes it (two towers on a GPU, the "
            "grouped emulation on a CPU; fast LRN, NCHW), float32"),
    Variant("towers", "speed.grouped = false: the two towers as two modules", {"grouped": False}),
    Variant("grouped", "the grouped emulation of both towers, on this device too", grouped=True),
    Variant("plain_lrn", "speed.fast_lrn = false: the LRN by plain tensor ops and autograd", {"fast_lrn": False}),
    Variant("channels_last", "speed.channels_last = true", {"channels_last": True}),
    Variant("tf32", "TF32 in convolutions and matmuls (torch.backends allow_tf32)", tf32=True),
    Variant("bf16", "speed.bf16 = true: bfloat16 autocast", bf16=True),
    Variant("bf16_channels_last", "bf16 autocast + channels-last", {"channels_last": True}, bf16=True),
    Variant("towers_channels_last", "two towers + channels-last", {"grouped": False, "channels_last": True}),
    Variant("towers_tf32", "two towers + TF32", {"grouped": False}, tf32=True),
    Variant("towers_bf16_channels_last", "two towers + bf16 autocast + channels-last",
            {"grouped": False, "channels_last": True}, bf16=True),
)
COMPILED = (
    Variant("compile", "speed.compile = true: torch.compile of the model", compile=True),
    Variant("towers_compile", "two towers + torch.compile, float32", {"grouped": False}, compile=True),
    Variant("best", "two towers + bf16 autocast + channels-last + torch.compile",
            {"grouped": False, "channels_last": True}, bf16=True, compile=True),
)


def variant(name: str) -> Variant:
    return next(v for v in EAGER + COMPILED if v.name == name)


def _step_fn(ctx: Context, model, optimizer, x, y, tf32: bool = False, bf16: bool = False,
             forward=None, reseed: bool = True) -> Callable[[], None]:
    """ctx.sizes.steps_per_call training steps as repro.train.train_step takes them (dropout
    reseeded every step, autocast around the forward, float32 loss, PaperSGD), without its host
    reads (loss.item(), the error counts): consecutive steps queue up on the GPU."""
    forward = model if forward is None else forward  # (a compiled module's truth value raises)
    counter = itertools.count()

    def call():
        set_tf32(tf32)
        for _ in range(ctx.sizes.steps_per_call):
            if reseed:
                model.reseed_dropout(next(counter))
            _update(ctx, forward, optimizer, x, y, bf16)
        set_tf32(False)
    return call


def _baseline_fn(ctx: Context) -> Callable[[], None]:
    """The naive dense AlexNet (repro/baseline.py) at the same widths, contiguous NCHW input."""
    from repro.baseline import naive_alexnet
    from repro.optim import PaperSGD

    cfg = ctx.config()
    net = naive_alexnet(cfg.model).to(ctx.device).train()
    x, y = ctx.images(ctx.sizes.batch)
    return _step_fn(ctx, net, PaperSGD(net.parameters(), cfg.optim.lr), x.contiguous().to(ctx.device),
                    y.to(ctx.device), reseed=False)


def _variant_fn(ctx: Context, v: Variant) -> Callable[[], None]:
    from repro.optim import PaperSGD

    cfg = ctx.config(**v.speed)
    model = ctx.model(cfg, grouped=v.grouped).train()
    x, y = ctx.images(ctx.sizes.batch)  # the loader's layout: NCHW view of NHWC memory
    forward = torch.compile(model) if v.compile else model
    return _step_fn(ctx, model, PaperSGD.from_config(model, cfg.optim), x.to(ctx.device), y.to(ctx.device),
                    v.tf32, v.bf16, forward)


def _images_per_s(ctx: Context, seconds: float) -> float:
    return ctx.sizes.batch * ctx.sizes.steps_per_call / seconds


def _step_what(ctx: Context, v: Variant) -> str:
    return f"train step, batch {ctx.sizes.batch}: {v.what}; vs the naive dense AlexNet, float32"


def _step_rows(ctx: Context, variants, times: dict, failed: dict, note: str = "") -> list[dict]:
    base = _images_per_s(ctx, times["baseline"])
    default = _images_per_s(ctx, times["default"]) if "default" in times else None
    ctx.measured.setdefault("step_baseline", base)
    rows = []
    for v in variants:
        name = f"step_{v.name}"
        if v.name in failed:
            rows.append(failed[v.name])
            continue
        rate = _images_per_s(ctx, times[v.name])
        ctx.measured[name] = rate
        rows.append(speed_row(name, _step_what(ctx, v), "img/s", rate, base, note=note,
                              vs_default=rate / default if default else None, faithful=v.faithful))
    return rows


def _build_variants(ctx: Context, variants) -> tuple[dict, dict]:
    """{name: step fn} of the variants that built and ran once (compiling, for compiled ones),
    and {name: row} saying why each of the others did not."""
    fns, failed = {}, {}
    for v in variants:
        name, what = f"step_{v.name}", _step_what(ctx, v)
        if not ctx.cuda and v.tf32:
            failed[v.name] = skipped_row("speed", name, what, "no CUDA: TF32 is a GPU setting")
            continue
        if v.compile and ctx.over_budget():
            failed[v.name] = skipped_row("speed", name, what, f"time budget of {ctx.sizes.budget_s:.0f} s spent")
            continue
        try:
            fn = _variant_fn(ctx, v)
            t = time.perf_counter()
            fn()  # builds cuDNN plans; compiles the compiled variants
            ctx.sync()
            if v.compile:
                ctx.measured[f"compile_s_{v.name}"] = time.perf_counter() - t
                ctx.log(f"gpu check: {name}: compiled and ran in {time.perf_counter() - t:.0f} s")
            fns[v.name] = fn
        except Exception as e:  # noqa: BLE001 - a variant that fails is a row, not the end of the run
            failed[v.name] = error_row("speed", name, what, e)
            del e  # its traceback holds the failed step's tensors
            _free(ctx)
    return fns, failed


@step("speed", "training step variants", *(f"step_{v.name}" for v in EAGER))
def speed_steps(ctx: Context) -> list[dict]:
    fns, failed = _build_variants(ctx, EAGER)
    fns["baseline"] = _baseline_fn(ctx)
    times = _timed(ctx, fns)
    return _step_rows(ctx, EAGER, times, failed)


def _free(ctx: Context) -> None:
    """Drop what the last step left on the GPU (models, activations, a failed allocation's debris)."""
    if ctx.cuda:
        gc.collect()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the trainer, end to end

class _NoStop:
    requested = False


def _pipeline_config(ctx: Context, root: Path, **data_or_augment) -> Config:
    cfg = ctx.config()
    cfg.data.shards = str(root)
    cfg.train.placement, cfg.train.checkpoint_every = "single", 0
    for key, value in data_or_augment.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def _trainer_fn(ctx: Context, run, x, y) -> Callable[[], None]:
    """repro.train.train_step as the trainer calls it, with its metrics window: each step's loss is
    copied to the host without waiting and checked in the next step; the window's loss and error
    counts are read once per call, as at a metrics line."""
    from repro import train

    stop = _NoStop()

    def call():
        window = train._Window()
        for _ in range(ctx.sizes.steps_per_call):
            loss, logits, _ = train.train_step(run, x, y, stop)
            window.add(loss, logits, y, len(y), 0.0, 0.0)
        window.flush()
    return call


def _run_pipeline(ctx: Context, run, cfg: Config, epoch: int) -> tuple[float, float]:
    """The trainer's loop (repro.train.train_epoch's) over the shards: images per second and the
    share of the time spent waiting for data (metrics.jsonl's data_wait_s: from the end of a step
    to its next batch being ready on the device), after the warm-up steps."""
    from repro import data, train

    run = dataclasses.replace(run, cfg=cfg, normalizer=data.make_normalizer(cfg.data.shards, cfg, run.device))
    warm, steps = ctx.sizes.pipeline_warm, ctx.sizes.pipeline_steps
    waited = total = 0.0
    images = 0
    stop = _NoStop()
    batches = data.train_batches(cfg.data.shards, cfg, epoch, pin_memory=ctx.cuda)
    window = train._Window()  # as the trainer keeps it (read at its metrics lines; here at the end)
    try:
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            x, y = train.inputs(run, batch)
            ready = time.perf_counter()
            loss, logits, _ = train.train_step(run, x, y, stop)
            window.add(loss, logits, y, len(y), 0.0, 0.0)
            if i + 1 >= warm + steps:
                window.flush()  # a metrics line's read: waits for the last update
            end = time.perf_counter()
            if i >= warm:
                waited, total, images = waited + ready - start, total + end - start, images + len(y)
            start = end
            if i + 1 >= warm + steps:
                break
    finally:
        del batches  # stops the loader's workers
    if not images:
        raise RuntimeError(f"the shards gave {warm} steps or fewer: nothing was timed")
    return images / total, waited / total


@step("speed", "the trainer end to end", "step_host_sync", "pipeline_paper", "pipeline_more_workers",
      "pipeline_augment_cpu")
def speed_pipeline(ctx: Context) -> list[dict]:
    from repro import train

    root = ctx.shards()
    cfg = _pipeline_config(ctx, root)
    run = train.set_up(cfg, root, ctx.tmp / "run", resume=False)
    try:
        return _pipeline_rows(ctx, run, root, cfg)
    finally:
        run.close()


def _pipeline_rows(ctx: Context, run, root: Path, cfg: Config) -> list[dict]:
    from repro import data, train

    batch = next(iter(data.train_batches(root, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=0)), 0)))
    x, y = train.inputs(run, batch)
    fns = {"trainer": _trainer_fn(ctx, run, x, y),
           "free": _step_fn(ctx, run.model, run.optimizer, x, y)}
    t = _timed(ctx, fns)
    alone = _images_per_s(ctx, t["trainer"])
    ctx.measured["step_trainer"] = alone
    rows = [speed_row("step_host_sync", f"train step, batch {ctx.sizes.batch}, paper config: without host reads "
                      "vs repro.train.train_step (each loss checked a step late, the window read once per call)",
                      "img/s", _images_per_s(ctx, t["free"]), alone,
                      note="ratio > 1: what the trainer's host reads cost")]
    cores = machine.usable_cores()
    more = ctx.sizes.extra_workers or max(cfg.data.workers + 1, min(12, cores - 2))
    first = 0 if ctx.sizes.reduced else cfg.data.workers  # reduced: read in the main process
    runs = [("pipeline_paper", dict(data__workers=first), f"the paper config as it is ({first} loader workers, "
             f"augment.on = '{cfg.augment.on}')"),
            ("pipeline_more_workers", dict(data__workers=more), f"{more} loader workers ({cores} cores)"),
            ("pipeline_augment_cpu", dict(data__workers=first, augment__on="cpu"),
             f"augment.on = 'cpu': the float work in the main process ({first} workers)")]
    for epoch, (name, changes, what) in enumerate(runs):
        full = (f"trainer end to end, batch {ctx.sizes.batch}: shards (page cache) -> loader -> Normalizer -> "
                f"train_step, {what}; vs the trainer's step alone on a batch already on the device")
        if name == "pipeline_augment_cpu" and not ctx.cuda:
            rows.append(skipped_row("speed", name, full, "no CUDA: the device is the CPU, so this is pipeline_paper"))
            continue
        if ctx.over_budget():
            rows.append(skipped_row("speed", name, full, f"time budget of {ctx.sizes.budget_s:.0f} s spent"))
            continue
        try:
            rate, wait = _run_pipeline(ctx, run, _pipeline_config(ctx, root, **changes), epoch)
        except Exception as e:  # noqa: BLE001
            rows.append(error_row("speed", name, full, e))
            continue
        ctx.measured[name] = rate
        ctx.measured[f"{name}_wait"] = wait
        rows.append(speed_row(name, full, "img/s", rate, alone, wait_share=wait,
                              note=f"waiting for data {wait:.0%} of the time"))
    return rows


# --------------------------------------------------------------------------- LRN

def _norm_step(fn, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def call():
        x.grad = None
        fn(x).backward(g)
    return call


@step("speed", "LRN forward + backward", "lrn_conv1_fast", "lrn_conv1_plain", "lrn_conv1_fused",
      "lrn_conv1_channels_last", "lrn_conv2_fast", "same_map_norm_conv2")
def speed_lrn(ctx: Context) -> list[dict]:
    """The LRN of the default config (paper flavour, both towers' maps, window inside each)
    forward and backward, each implementation against torch.nn.LocalResponseNorm on the same
    tensor (which normalises across the tower boundary: the same work, for timing only)."""
    from repro import lrn as L

    torch_lrn = torch.nn.LocalResponseNorm(L.SIZE, alpha=L.ALPHA_PER_TERM["paper"] * L.SIZE, beta=L.BETA, k=L.K)
    impls = {"fast": lambda t: L.lrn(t, "paper", fast=True, groups=2),
             "plain": lambda t: L.lrn(t, "paper", fast=False, groups=2)}
    rows = []
    for case, shape in ctx.sizes.lrn_speed:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(shape, generator=g) * 40).to(ctx.device)
        grad = torch.randn(shape, generator=g).to(ctx.device)
        dims = ", ".join(map(str, shape))
        if case == "conv1":
            rows += _lrn_case_conv1(ctx, impls, torch_lrn, x, grad, dims)
        else:
            rows += _lrn_case_conv2(ctx, impls, torch_lrn, x, grad, dims)
    return rows


def _lrn_case_conv1(ctx: Context, impls: dict, torch_lrn, x, grad, dims: str) -> list[dict]:
    from repro import lrn as L

    fns = {name: _norm_step(fn, x.clone().requires_grad_(), grad) for name, fn in impls.items()}
    fns["torch"] = _norm_step(torch_lrn, x.clone().requires_grad_(), grad)
    cl = x.contiguous(memory_format=torch.channels_last)
    gcl = grad.contiguous(memory_format=torch.channels_last)
    fns["fast_cl"] = _norm_step(impls["fast"], cl.clone().requires_grad_(), gcl)
    fns["torch_cl"] = _norm_step(torch_lrn, cl.clone().requires_grad_(), gcl)
    fused_note, fused_error = "", None
    fused_what = f"LRN fwd+bwd [{dims}] float32 on {ctx.device.type}, the plain formula through torch.compile (fused) vs torch.nn.LocalResponseNorm"
    if ctx.cuda:
        try:  # the formula compiled into fused kernels (inductor): a candidate for the CUDA path
            fused = torch.compile(impls["plain"], dynamic=False)
            with torch.no_grad():
                fused_diff = rel_err(fused(x), L.lrn(x, "paper", fast=True, groups=2))
            fns["fused"] = _norm_step(fused, x.clone().requires_grad_(), grad)
            fns["fused"]()
            fused_note = f"max |fused - fast| / max |fast| = {fused_diff:.2g}"
        except Exception as e:  # noqa: BLE001 - a compile error is this row's result
            fused_error = error_row("speed", "lrn_conv1_fused", fused_what, e)
            fns.pop("fused", None)
    ms = {k: 1000 * v for k, v in _timed(ctx, fns).items()}
    what = f"LRN fwd+bwd [{dims}] float32 on {ctx.device.type}, " + "{} vs torch.nn.LocalResponseNorm"
    rows = [speed_row("lrn_conv1_fast", what.format("fast (repro/fast/lrn.py)"), "ms", ms["fast"], ms["torch"], False),
            speed_row("lrn_conv1_plain", what.format("plain (repro/lrn.py, fast=False)"), "ms", ms["plain"], ms["torch"], False)]
    if "fused" in ms:
        rows.append(speed_row("lrn_conv1_fused", fused_what, "ms", ms["fused"], ms["torch"], False, fused_note,
                              vs_fast=ms["fast"] / ms["fused"]))
    elif fused_error is not None:
        rows.append(fused_error)
    else:
        rows.append(skipped_row("speed", "lrn_conv1_fused", fused_what, "no CUDA: torch.compile is measured on GPUs only"))
    rows.append(speed_row("lrn_conv1_channels_last", what.format("fast, channels-last input").replace(
        "vs torch.nn.LocalResponseNorm", "vs torch.nn.LocalResponseNorm on the same channels-last input"),
        "ms", ms["fast_cl"], ms["torch_cl"], False))
    return rows


def _lrn_case_conv2(ctx: Context, impls: dict, torch_lrn, x, grad, dims: str) -> list[dict]:
    from repro import lrn as L

    fns = {"fast": _norm_step(impls["fast"], x.clone().requires_grad_(), grad),
           "torch": _norm_step(torch_lrn, x.clone().requires_grad_(), grad),
           "rnorm_fast": _norm_step(lambda t: L.same_map_norm(t, fast=True), x.clone().requires_grad_(), grad),
           "rnorm_plain": _norm_step(lambda t: L.same_map_norm(t, fast=False), x.clone().requires_grad_(), grad)}
    ms = {k: 1000 * v for k, v in _timed(ctx, fns).items()}
    where = f"[{dims}] float32 on {ctx.device.type}"
    return [speed_row("lrn_conv2_fast", f"LRN fwd+bwd {where}, fast vs torch.nn.LocalResponseNorm", "ms",
                      ms["fast"], ms["torch"], False),
            speed_row("same_map_norm_conv2", f"same-map 5x5 norm fwd+bwd {where}, fast vs the plain avg_pool2d "
                      "formulation", "ms", ms["rnorm_fast"], ms["rnorm_plain"], False)]


# --------------------------------------------------------------------------- memory

def _peak_memory(ctx: Context, v: Variant, placement=None) -> tuple[list[int], int]:
    """Peak bytes allocated during a training step on each GPU the model uses, and the bytes
    that stay between steps (weights, gradients, velocities), both over what was there before."""
    from repro.model import AlexNet
    from repro.optim import PaperSGD

    _free(ctx)
    devices = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] if placement else [ctx.device]
    base = [torch.cuda.memory_allocated(d) for d in devices]
    cfg = ctx.config(**v.speed)
    if placement is None:
        model = ctx.model(cfg, grouped=v.grouped).train()
    else:
        model = AlexNet.from_config(cfg, placement=placement).train()
    x, y = ctx.images(ctx.sizes.batch)
    first = model.placement.output_device
    fn = _step_fn(ctx, model, PaperSGD.from_config(model, cfg.optim), x.to(first), y.to(first), v.tf32, v.bf16)
    fn()  # velocities and gradients now exist
    for d in devices:
        torch.cuda.synchronize(d)
        torch.cuda.reset_peak_memory_stats(d)
    kept = sum(torch.cuda.memory_allocated(d) - b for d, b in zip(devices, base))
    fn()
    peaks = []
    for d, b in zip(devices, base):
        torch.cuda.synchronize(d)
        peaks.append(torch.cuda.max_memory_allocated(d) - b)
    return peaks, kept


@step("speed", "peak GPU memory of a training step", "memory_fp32", "memory_bf16", "memory_two_gpus")
def speed_memory(ctx: Context) -> list[dict]:
    what = (f"peak GPU memory per tower in a training step, batch {ctx.sizes.batch}, {{}}: weights, gradients, "
            "velocities, activations (torch.cuda.max_memory_allocated); vs a GTX 580's 3 GiB")
    names = [("memory_fp32", "float32", variant("default")),
             ("memory_bf16", "bf16 autocast + channels-last", variant("bf16_channels_last"))]
    if not ctx.cuda:
        return [skipped_row("speed", n, what.format(label), NO_CUDA) for n, label, _ in names] + [
            skipped_row("speed", "memory_two_gpus", what.format("one tower per GPU"), NO_CUDA)]
    rows = []
    gib = 2 ** 30
    for name, label, v in names:
        (peak,), kept = _peak_memory(ctx, v)
        per_tower = peak / 2 / gib  # both towers on one GPU: half each
        rows.append(speed_row(name, what.format(label + ", both towers on one GPU, halved"), "GiB", per_tower,
                              GTX580_BYTES / gib, higher_is_better=False, total_gib=peak / gib,
                              kept_gib=kept / gib, note=f"both towers: {peak / gib:.2f} GiB, of which "
                              f"{kept / gib:.2f} GiB stay between steps"))
    if torch.cuda.device_count() >= 2:
        from repro.parallel import TwoDevices

        peaks, kept = _peak_memory(ctx, variant("towers"), TwoDevices(["cuda:0", "cuda:1"]))
        rows.append(speed_row("memory_two_gpus", what.format("float32, TwoDevices, the larger tower"), "GiB",
                              max(peaks[:2]) / gib, GTX580_BYTES / gib, higher_is_better=False,
                              per_device_gib=[p / gib for p in peaks]))
    else:
        rows.append(skipped_row("speed", "memory_two_gpus", what.format("one tower per GPU"),
                                f"{torch.cuda.device_count()} GPU visible: needs two"))
    return rows


# --------------------------------------------------------------------------- profile

def _event_time(e, *names: str) -> float:
    """A profiler event's time in microseconds under whichever name this torch uses."""
    for name in names:
        value = getattr(e, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _profile(ctx: Context, fn: Callable[[], None], trace: Path | None = None) -> dict:
    """One call of `fn` under torch.profiler: the top kernels by GPU time (on a CPU: operators by
    self CPU time), their count, and the total."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # quiet, as in benchmarks/bench_train_step.py
    fn()
    ctx.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with profile(activities=activities) as prof:
        fn()
        ctx.sync()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    events = prof.key_averages()
    if ctx.cuda:
        kernels = [(e.key, _event_time(e, "self_device_time_total", "self_cuda_time_total"), e.count)
                   for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    else:
        kernels = [(e.key, _event_time(e, "self_cpu_time_total"), e.count) for e in events]
    kernels = sorted((k for k in kernels if k[1] > 0), key=lambda k: -k[1])
    busy = sum(k[1] for k in kernels)
    steps = ctx.sizes.steps_per_call
    return {"busy_ms_per_step": busy / 1000 / steps,
            "launches_per_step": sum(k[2] for k in kernels) / steps,
            "top": [{"name": name, "ms_per_step": t / 1000 / steps, "calls_per_step": n / steps,
                     "share": t / busy if busy else 0.0} for name, t, n in kernels[:15]],
            "what": "CUDA kernels by GPU time" if ctx.cuda else "CPU operators by self CPU time (a stand-in)"}


@step("speed", "profile of one training step", "profile_default", "profile_towers_bf16_channels_last")
def speed_profile(ctx: Context) -> list[dict]:
    rows = []
    for v in (variant("default"), variant("towers_bf16_channels_last")):
        name = f"profile_{v.name}"
        fn = _variant_fn(ctx, v)
        trace = ctx.trace.with_name(f"{ctx.trace.stem}.{v.name}.json") if ctx.trace else None
        prof = _profile(ctx, fn, trace)
        ctx.profiles[v.name] = prof
        rate = ctx.measured.get(f"step_{v.name}")  # img/s of the timed steps (speed_steps)
        wall = ctx.sizes.batch / rate * 1000 if rate else None
        top = prof["top"][0] if prof["top"] else {"name": "-", "share": 0.0}
        busy = prof["busy_ms_per_step"]
        top_note = f"top: {top['name'][:60]} {top['share']:.0%}"
        if not ctx.cuda:  # threads' self times overlap and include waiting: no share of the step
            rows.append(speed_row(name, f"operator self CPU time per step (torch.profiler), {v.what}", "ms", busy,
                                  None, note=f"no CUDA: CPU operators as a stand-in for kernels; {top_note}"))
            continue
        if wall:
            ctx.measured[f"busy_share_{v.name}"] = busy / wall
        rows.append(speed_row(name, f"GPU busy time per step (torch.profiler: kernels, copies) vs the step's "
                              f"measured time, {v.what}", "ms", busy, wall,
                              note=f"ratio: the share of the step the GPU is busy; {prof['launches_per_step']:.0f} "
                                   f"kernels per step; {top_note}", busy_share=busy / wall if wall else None))
        _free(ctx)
    return rows


# --------------------------------------------------------------------------- compiled, cudnn.benchmark

@step("speed", "torch.compile variants", *(f"step_{v.name}" for v in COMPILED))
def speed_compiled(ctx: Context) -> list[dict]:
    if not ctx.cuda or not ctx.sizes.compile:
        reason = ("no CUDA: torch.compile is measured on GPUs only (on this CPU it would take minutes)"
                  if not ctx.cuda else "--quick: the compiled variants take a minute or more to compile")
        return [skipped_row("speed", f"step_{v.name}", v.what, reason) for v in COMPILED]
    fns, failed = _build_variants(ctx, COMPILED)
    fns["baseline"] = _baseline_fn(ctx)
    fns["default"] = _variant_fn(ctx, variant("default"))
    graphs = _compiled_graphs()
    times = _timed(ctx, fns)
    more = _compiled_graphs() - graphs
    note = f"compiled again {more} time(s) while timed" if more else ""
    rows = _step_rows(ctx, COMPILED, times, failed, note)
    for r in rows:
        seconds = ctx.measured.get(f"compile_s_{r['name'][5:]}")
        if seconds is not None:
            r["compile_s"] = seconds
    return rows


def _compiled_graphs() -> int:
    """How many graphs dynamo has compiled so far (0 where this torch does not say)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a private counter: absent is not an error
        return 0


def _benchmark_worker(rank: int, sizes: Sizes, out: str) -> None:
    """step_default's img/s with cudnn.benchmark = True, in a fresh process (so that no
    algorithm chosen by the heuristics is cached yet), written to out/rate.json."""
    torch.backends.cudnn.benchmark = True
    ctx = Context(sizes, torch.device("cuda:0"), Path(out), log=lambda text: None)
    set_tf32(False)
    fn = _variant_fn(ctx, variant("default"))
    fn()  # cuDNN times its algorithms for every convolution here
    rate = _images_per_s(ctx, _timed(ctx, {"default": fn})["default"])
    Path(out, "rate.json").write_text(json.dumps(rate))


@step("speed", "cudnn.benchmark", "step_cudnn_benchmark")
def speed_cudnn_benchmark(ctx: Context) -> list[dict]:
    """cuDNN keeps the algorithm it first chose for a shape, by its heuristics or by timing them
    (cudnn.benchmark), whichever came first: so the benchmarked step runs in a process of its
    own, against step_default measured here (not interleaved)."""
    what = (f"train step, batch {ctx.sizes.batch}, paper config, float32, torch.backends.cudnn.benchmark = True "
            "(in a fresh process) vs cuDNN's heuristics (step_default)")
    if not ctx.cuda:
        return [skipped_row("speed", "step_cudnn_benchmark", what, "no CUDA: cuDNN is a GPU library")]
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as tmp:
        _spawn(_benchmark_worker, (ctx.sizes, tmp), nprocs=1, timeout_s=240)
        rate = json.loads(Path(tmp, "rate.json").read_text())
    ctx.measured["step_cudnn_benchmark"] = rate
    return [speed_row("step_cudnn_benchmark", what, "img/s", rate, ctx.measured.get("step_default"), faithful=True,
                      note="measured in another process after the others, not interleaved")]


# --------------------------------------------------------------------------- derived

@step("speed", "model FLOP/s against the matrix rates", "flops_fp32", "flops_tf32", "flops_bf16")
def speed_flops(ctx: Context) -> list[dict]:
    from repro import estimate

    flops = estimate.train_flops(ctx.config().model)
    rows = []
    for mode, variant in (("fp32", "default"), ("tf32", "tf32"), ("bf16", "bf16_channels_last")):
        name = f"flops_{mode}"
        what = f"model FLOP/s of step_{variant} (repro.estimate.train_flops) vs the {mode} matmul rate of this run"
        rate, matmul = ctx.measured.get(f"step_{variant}"), ctx.measured.get(f"matmul_{mode}")
        if rate is None or matmul is None:
            missing = f"step_{variant}" if rate is None else f"matmul_{mode}"
            reason = NO_CUDA if not ctx.cuda and mode == "tf32" else f"{missing} was not measured"
            rows.append(skipped_row("speed", name, what, reason))
            continue
        ctx.measured[name] = rate * flops / 1e12
        rows.append(speed_row(name, what, "TFLOP/s", ctx.measured[name], matmul, gflop_per_image=flops / 1e9))
    return rows


def fastest(measured: dict) -> dict:
    """The fastest training-step setting measured ("any") and the fastest faithful one ("faithful":
    float32, no TF32 or bf16), as step_* names."""
    variants = {f"step_{v.name}": v.faithful for v in EAGER + COMPILED} | {"step_cudnn_benchmark": True}
    steps = {k: v for k, v in measured.items() if k in variants and v}
    out = {}
    if steps:
        out["any"] = max(steps, key=steps.get)
    faithful = [k for k in steps if variants[k]]
    if faithful:
        out["faithful"] = max(faithful, key=steps.get)
    return out


EPOCHS90 = {"epochs90_default": "the paper config's float32 step",
            "epochs90_fastest_faithful": "the fastest float32 (faithful) setting",
            "epochs90_fastest": "the fastest setting measured",
            "epochs90_trainer": "the trainer end to end, the paper config as it is"}


def ninety_epochs(measured: dict, gpu_name: str) -> dict:
    """Hours for 90 epochs of ILSVRC-2012 at the img/s measured for each setting, repro/estimate.py's
    estimate for this GPU and the figures it assumes, and a sentence on why they differ."""
    from repro import estimate
    from repro.config import ModelConfig

    picks = fastest(measured)
    settings = {"epochs90_default": "step_default", "epochs90_fastest_faithful": picks.get("faithful"),
                "epochs90_fastest": picks.get("any"), "epochs90_trainer": "pipeline_paper"}
    hours = {name: estimate.TRAIN_IMAGES * estimate.EPOCHS / measured[key] / 3600
             for name, key in settings.items() if key and measured.get(key)}
    out = {"images": estimate.TRAIN_IMAGES, "epochs": estimate.EPOCHS, "settings": settings, "hours": hours,
           "estimate": None}
    setup = estimate.one_gpu_setup(gpu_name)
    if setup is None:
        out["explanation"] = f"repro/estimate.py has no figures for {gpu_name!r}: nothing to compare with."
        return out
    e, d = estimate.estimate(setup, ModelConfig()), setup.device
    out["estimate"] = {"setup": setup.name, "img_per_s": e["img_per_s"], "hours": e["days_90_epochs"] * 24,
                       "assumes": f"{d.fp32 / 1e12:.0f} TFLOP/s fp32 and {d.memory / 1e9:.0f} GB/s ({d.source}); "
                                  f"utilisation conv {d.util['conv']:.0%}, fc {d.util['fc']:.0%}, "
                                  f"memory {d.util['memory']:.0%}; no gaps between kernels; the loader keeps up"}
    out["explanation"] = _explain(measured, e["img_per_s"], d)
    return out


def _explain(measured: dict, estimate_img_s: float, d) -> str:
    """One sentence on the estimate against the measurement, with a clause per number measured."""
    text = (f"The estimate ({estimate_img_s:,.0f} img/s) is arithmetic: {d.util['conv']:.0%} of the data sheet's "
            f"{d.fp32 / 1e12:.0f} TFLOP/s float32 on the convolutions, {d.util['fc']:.0%} on the fc layers, "
            f"{d.util['memory']:.0%} of {d.memory / 1e12:.2f} TB/s for the memory-bound layers, no gaps between "
            "kernels, a loader that keeps up")
    step = measured.get("step_default")
    if step:
        text += f"; the float32 step measured {step:,.0f} img/s, {step / estimate_img_s:.2f}x the estimate"
        flops, matmul = measured.get("flops_fp32"), measured.get("matmul_fp32")
        if flops and matmul:
            text += (f", its model FLOP/s {flops / matmul:.0%} of the float32 matmul rate measured in the same run "
                     f"({matmul:.1f} TFLOP/s, {matmul * 1e12 / d.fp32:.0%} of the data sheet)")
        busy = measured.get("busy_share_default")
        if busy:  # the profiler's kernel times run a little long: a fully busy GPU can show > 100%
            text += f", the GPU busy {min(busy, 1.0):.0%} of the step (torch.profiler)"
    trainer = measured.get("pipeline_paper")
    if trainer:
        text += (f"; the trainer end to end reached {trainer:,.0f} img/s, waiting for data "
                 f"{measured.get('pipeline_paper_wait', 0):.0%} of the time")
    return text + "."


@step("speed", "90 epochs of ILSVRC-2012", *EPOCHS90)
def speed_ninety_epochs(ctx: Context) -> list[dict]:
    what = ("hours for 90 epochs of ILSVRC-2012 (1,281,167 images) at {}, vs ./run.sh bench --model's estimate "
            "for this GPU (repro/estimate.py)")
    if ctx.sizes.reduced:
        return [skipped_row("speed", name, what.format(label), "reduced mode: a narrow model on a CPU is not the "
                            "paper's network") for name, label in EPOCHS90.items()]
    summary = ninety_epochs(ctx.measured, torch.cuda.get_device_name(ctx.device))
    ctx.ninety_epochs = summary
    est = summary["estimate"]["hours"] if summary["estimate"] else None
    rows = []
    for name, label in EPOCHS90.items():
        key = summary["settings"][name]
        full = what.format(f"{label} ({key})" if key else label)
        if name not in summary["hours"]:
            rows.append(skipped_row("speed", name, full, f"{key or 'no setting'} was not measured"))
            continue
        rows.append(speed_row(name, full, "h", summary["hours"][name], est, higher_is_better=False, setting=key))
    return rows


# =========================================================================== the runner

def device_info(device: torch.device) -> dict:
    """What the rows ran on: the GPU (or the CPU), torch, CUDA, cuDNN, NCCL."""
    info = {"type": device.type, "torch": torch.__version__, "machine": machine.describe()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=p.total_memory / 2 ** 30,
                    multiprocessors=p.multi_processor_count, count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(Exception):
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    else:
        info.update(name=machine.cpu_name(), cores=machine.usable_cores())
    return info


def default_out(info: dict, quick: bool) -> Path:
    """results/gpu/<device name>.json, the name reduced to letters, digits, '.', '_' and '-'."""
    name = info["name"] if info["type"] == "cuda" else f"cpu-{info['name']}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "device"
    return Path("results") / "gpu" / f"{safe}{'.quick' if quick else ''}.json"


def pick_device(requested: str) -> torch.device:
    from repro.errors import UserError

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch "
                        f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    return torch.device("cuda:0")


def run(device: torch.device, quick: bool, out: Path, tmp_root: str | None = None, trace: bool = False,
        budget_s: float | None = None, log=None, steps=None) -> dict:
    """Run every step (or `steps`), writing `out` after each; returns the result."""
    sizes = REDUCED if device.type == "cpu" else (QUICK if quick else FULL)
    if budget_s is not None:
        sizes = dataclasses.replace(sizes, budget_s=budget_s)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="repro-gpu-check-", dir=tmp_root) as tmp:
        ctx = Context(sizes, device, Path(tmp), log)
        ctx.trace = out.with_suffix(".trace.json") if trace else None
        result = {"schema": SCHEMA, "complete": False, "mode": sizes.label, "quick": quick,
                  "device": device_info(device), "torch_defaults": ctx.torch_defaults,
                  "budget_s": sizes.budget_s, "rows": []}
        ctx.log(f"gpu check: {sizes.label} on {result['device']['name']}; writing {out}")
        set_tf32(False)  # float32 is float32 unless a row says otherwise
        try:
            for s in steps or STEPS:
                result["rows"] += run_step(ctx, s)
                _finish(ctx, result)
                write(out, result)
            result["complete"] = True
        finally:
            torch.backends.cudnn.allow_tf32 = ctx.torch_defaults["cudnn.allow_tf32"]
            torch.backends.cuda.matmul.allow_tf32 = ctx.torch_defaults["cuda.matmul.allow_tf32"]
            torch.backends.cudnn.benchmark = ctx.torch_defaults["cudnn.benchmark"]
            _finish(ctx, result)
            write(out, result)
    return result


def run_step(ctx: Context, s: Step) -> list[dict]:
    """The rows of one step; whatever goes wrong becomes rows that say so, one per name."""
    if s.kind == "speed" and ctx.over_budget():
        rows = [skipped_row(s.kind, n, s.what, f"time budget of {ctx.sizes.budget_s:.0f} s spent") for n in s.names]
    else:
        t = time.perf_counter()
        try:
            rows = list(s.fn(ctx))
        except Exception as e:  # noqa: BLE001 - an OOM, a compile error, a missing library: a row
            detail = traceback.format_exc(limit=-3)
            rows = [dict(error_row(s.kind, n, s.what, e), traceback=detail) for n in s.names]
        finally:
            _free(ctx)
        done = {r["name"] for r in rows}
        rows += [skipped_row(s.kind, n, s.what, "not produced by its step") for n in s.names if n not in done]
        ctx.log(f"gpu check: [{ctx.elapsed():5.0f} s] {s.what} ({time.perf_counter() - t:.1f} s): "
                + ", ".join(f"{r['name']} {r['status']}" for r in rows))
    return rows


def _finish(ctx: Context, result: dict) -> None:
    """The parts of the result derived from the rows: summary, fastest settings, profiles."""
    rows = result["rows"]
    result["elapsed_s"] = ctx.elapsed()
    result["profiles"] = ctx.profiles
    result["ninety_epochs"] = ctx.ninety_epochs
    counts = {}
    for r in rows:
        key = f"{r['kind']}s_{r['status']}"
        counts[key] = counts.get(key, 0) + 1
    result["summary"] = {**counts, **{f"fastest_{k}": v for k, v in fastest(ctx.measured).items()}}


def write(out: Path, result: dict) -> None:
    files.atomic_write(out, json.dumps(_plain(result), indent=1) + "\n", durable=False)


def _plain(value):
    """JSON-safe: numpy scalars as numbers, NaN and infinities as strings, anything else as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# =========================================================================== the table

def _num(v) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.4g}"


def table(result: dict, out: Path) -> str:
    """One table: a row per check and per measurement, with the notes that matter below it."""
    d = result["device"]
    head = [f"machine: {d['machine']}"]
    if d["type"] == "cuda":
        head.append(f"device: {d['name']}, compute capability {d['capability']}, {d['memory_gib']:.1f} GiB, "
                    f"{d['count']} visible; CUDA {d['cuda']}, cuDNN {d['cudnn']}, NCCL {d.get('nccl', '?')}")
    t = result["torch_defaults"]
    head.append(f"mode: {result['mode']}; torch's defaults: cudnn.allow_tf32 = {t['cudnn.allow_tf32']}, "
                f"cuda.matmul.allow_tf32 = {t['cuda.matmul.allow_tf32']}; every row runs with TF32 off "
                f"unless it says TF32; {result['elapsed_s']:.0f} s")
    cells = [("row", "what", "result", "against", "ratio", "status")]
    for r in result["rows"]:
        if r["kind"] == "check" and r["status"] in ("pass", "FAIL"):
            cells.append((r["name"], r["what"], _num(r["error"]), f"tol {_num(r['tolerance'])}", "", r["status"]))
        elif r["status"] == "ok":
            ratio = f"{r['ratio']:.2f}x" if isinstance(r.get("ratio"), float) else ""
            against = f"{_num(r['baseline'])} {r['unit']}" if r.get("baseline") is not None else ""
            cells.append((r["name"], r["what"], f"{_num(r['project'])} {r['unit']}", against, ratio, "ok"))
        else:
            cells.append((r["name"], r["what"], "", "", "", r["status"]))
    widths = [max(len(c[i]) for c in cells) for i in range(6)]
    widths[1] = min(widths[1], 90)
    lines = []
    for n, c in enumerate(cells):
        what = c[1] if len(c[1]) <= widths[1] else c[1][:widths[1] - 3] + "..."
        row = (c[0], what) + c[2:]
        lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r['name']}: {r['note']}" for r in result["rows"] if r.get("note")]
    tail = _summary_lines(result, out)
    return "\n".join(head + lines + (["notes:"] + notes if notes else []) + tail)


def _summary_lines(result: dict, out: Path) -> list[str]:
    s = result["summary"]
    checks = ", ".join(f"{s[k]} {k.split('_', 1)[1]}" for k in ("checks_pass", "checks_FAIL", "checks_error",
                                                                 "checks_skipped") if s.get(k))
    speed = ", ".join(f"{s[k]} {k.split('_', 1)[1]}" for k in ("speeds_ok", "speeds_error", "speeds_skipped") if s.get(k))
    lines = [f"checks: {checks or 'none'}; measurements: {speed or 'none'}"]
    if s.get("fastest_any"):
        lines.append(f"fastest training step: {s['fastest_any']}; fastest float32 (faithful): "
                     f"{s.get('fastest_faithful', '-')}")
    n = result.get("ninety_epochs")
    if n and n.get("explanation"):
        lines.append(f"90 epochs: {n['explanation']}")
    lines.append(f"written: {out}" + ("" if result["complete"] else " (incomplete)"))
    return lines


def failures(result: dict) -> list[str]:
    return [r["name"] for r in result["rows"] if r["status"] in ("FAIL", "error")]


def main(args) -> int:
    """./run.sh bench --gpu (argument parsing is repro/bench.py's)."""
    from repro.errors import UserError

    device = pick_device(args.device)
    out = Path(args.out) if args.out else default_out(device_info(device), args.quick)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: name the JSON file to write, e.g. {out / 'gpu.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror}): choose another --out") from None
    if args.tmp:
        files.check_dir(args.tmp, "--tmp")
    result = run(device, args.quick, out, args.tmp, args.profile, args.budget)
    if args.json:
        print(json.dumps(_plain(result), indent=1))
    else:
        print(table(result, out))
    bad = failures(result)
    if bad:
        print(f"gpu check: {len(bad)} row(s) failed or broke: {', '.join(bad)} (details in {out})", file=sys.stderr)
        return 1
    return 0
