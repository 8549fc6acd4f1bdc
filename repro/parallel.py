"""Where the towers run, and how they exchange activations (paper section 3.2; docs/architecture.md,
"The four exchanges" and "Placements").

A placement answers four questions for AlexNet.forward, which is the same code for all of them:
    towers_here(T)      which towers this process holds
    scatter(x, n)       the input image for each local tower (every tower sees the whole image)
    exchange(h, point)  each local tower's view of ALL towers' activations, concatenated along
                        dim 1 in tower order; called at conv3, fc6, fc7 and fc8 only
    collect(logits)     the full (B, num_classes) logits from each tower's share

OneDevice    both towers on one device: the exchange is a concatenation.
TwoDevices   tower i on device i of one process (cuda:0, cuda:1): the exchange copies the other
             tower's activation across, as the two GTX 580s did.
Distributed  one tower per process, pairs of processes form one model (torch.distributed; NCCL on
             GPUs, gloo on CPUs); the exchange is an autograd-aware all-gather inside the pair.
             Several pairs train on different parts of each batch (data parallelism); gradients
             are averaged across the pairs, per tower.

Every placement keeps `log`, which counts exchange calls and the bytes each tower receives from
the others, so tests can check that the towers meet exactly where the paper says.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class ExchangeLog:
    """Exchange calls per point and bytes received from other towers (summed over local towers).

    Not counted inside a torch.compile'd model (speed.compile): counts read and written in the
    traced code would be guarded on, and the model compiled again every step."""
    calls: dict = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)
    enabled: bool = True

    def record(self, point: str, received: int) -> None:
        if self.enabled and not torch.compiler.is_compiling():
            self.calls[point] = self.calls.get(point, 0) + 1
            self.bytes[point] = self.bytes.get(point, 0) + received

    def clear(self) -> None:
        self.calls.clear()
        self.bytes.clear()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Placement:
    log: ExchangeLog

    def towers_here(self, towers: int) -> list[int]:
        raise NotImplementedError

    def place(self, model) -> None:
        """Move each local tower to its device."""

    def scatter(self, x, n: int) -> list:
        raise NotImplementedError

    def exchange(self, acts: list, point: str) -> list:
        raise NotImplementedError

    def collect(self, logits: list):
        raise NotImplementedError

    @property
    def output_device(self) -> torch.device:
        raise NotImplementedError

    def sync_gradients(self, model) -> None:
        """Average gradients over data-parallel replicas (nothing to do in one process)."""


class OneDevice(Placement):
    """Both towers (or the grouped emulation) on one device."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.log = ExchangeLog()

    def towers_here(self, towers):
        return list(range(towers))

    def place(self, model):
        model.to(self.device)

    @property
    def output_device(self):
        return self.device

    def scatter(self, x, n):
        return [x.to(self.device)] * n

    def exchange(self, acts, point):
        if len(acts) == 1:  # one tower, or the grouped emulation: nothing to exchange
            self.log.record(point, 0)
            return acts
        both = torch.cat(acts, dim=1)
        self.log.record(point, (len(acts) - 1) * sum(map(_nbytes, acts)))
        return [both] * len(acts)

    def collect(self, logits):
        return logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)


class TwoDevices(Placement):
    """Tower i on devices[i], one process (the paper's two GPUs). Output on devices[0]."""

    def __init__(self, devices=("cuda:0", "cuda:1")):
        self.devices = [torch.device(d) for d in devices]
        self.log = ExchangeLog()

    def towers_here(self, towers):
        if towers != len(self.devices):
            raise ValueError(f"{towers} tower(s) cannot be placed on {len(self.devices)} devices")
        return list(range(towers))

    def place(self, model):
        for i, tower in enumerate(model.towers.values()):
            tower.to(self.devices[i])

    @property
    def output_device(self):
        return self.devices[0]

    def scatter(self, x, n):
        return [x.to(d, non_blocking=True) for d in self.devices]

    def exchange(self, acts, point):
        out = [torch.cat([a.to(dev, non_blocking=True) for a in acts], dim=1) for dev in self.devices]
        self.log.record(point, (len(acts) - 1) * sum(map(_nbytes, acts)))  # each gets the others'
        return out

    def collect(self, logits):
        return torch.cat([l.to(self.devices[0], non_blocking=True) for l in logits], dim=1)


# -------------------------------------------------------------------------- distributed

class _AllGather(torch.autograd.Function):
    """Forward: every tower's activation, concatenated along dim 1 in tower order.
    Backward: each tower's share of the gradient, summed over the towers that read it
    (every tower's downstream layers use the gathered tensor)."""

    @staticmethod
    def forward(ctx, x, group, rank, size):
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x, group=group)
        ctx.group, ctx.rank, ctx.size = group, rank, size
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd's own tensor: not in place
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.size, dim=1)[ctx.rank].contiguous(), None, None, None


class _GatherOutput(torch.autograd.Function):
    """Forward: the full logits from each tower's share (shares may differ in width; code 145
    puts all of fc8 on tower 0). Backward: every process computes the same loss from the same
    full logits, so each keeps only the gradient of its own share: no sum."""

    @staticmethod
    def forward(ctx, x, group, rank, widths):
        widest = max(widths)
        padded = torch.zeros(x.shape[0], widest, dtype=x.dtype, device=x.device)
        padded[:, : x.shape[1]] = x
        parts = [torch.empty_like(padded) for _ in widths]
        dist.all_gather(parts, padded, group=group)
        ctx.start, ctx.width = sum(widths[:rank]), widths[rank]
        return torch.cat([p[:, :w] for p, w in zip(parts, widths)], dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad[:, ctx.start: ctx.start + ctx.width].contiguous(), None, None, None


class Distributed(Placement):
    """One tower per process; ranks 2p and 2p+1 form pair p (for two towers).

    Pairs are data-parallel replicas: each gets its part of every batch (repro.data), and
    `sync_gradients` averages each tower's gradients over the pairs. All processes must create
    this object together (it creates process groups).
    """

    def __init__(self, towers: int, device: str | torch.device | None = None):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised (launch with torchrun)")
        rank, world = dist.get_rank(), dist.get_world_size()
        if world % towers:
            raise ValueError(f"{world} processes do not form pairs of {towers} towers")
        self.towers, self.rank, self.world = towers, rank, world
        self.tower, self.pair, self.pairs = rank % towers, rank // towers, world // towers
        # Every process creates every group, in the same order (torch.distributed requires it).
        pair_groups = [dist.new_group(list(range(p * towers, (p + 1) * towers))) for p in range(self.pairs)]
        tower_groups = [dist.new_group(list(range(t, world, towers))) for t in range(towers)]
        self.pair_group, self.tower_group = pair_groups[self.pair], tower_groups[self.tower]
        if device is None:
            device = (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.log = ExchangeLog()
        self._widths: list[int] | None = None

    def towers_here(self, towers):
        if towers != self.towers:
            raise ValueError(f"placement made for {self.towers} towers, model has {towers}")
        return [self.tower]

    def place(self, model):
        model.to(self.device)
        self._widths = [len(model.m.logit_range(i)) for i in range(self.towers)]

    @property
    def output_device(self):
        return self.device

    def scatter(self, x, n):
        return [x.to(self.device, non_blocking=True)]

    def exchange(self, acts, point):
        (a,) = acts
        self.log.record(point, (self.towers - 1) * _nbytes(a))
        return [_AllGather.apply(a, self.pair_group, self.tower, self.towers)]

    def collect(self, logits):
        (x,) = logits
        return _GatherOutput.apply(x, self.pair_group, self.tower, self._widths)

    def sync_gradients(self, model):
        """Average this tower's gradients over the data-parallel pairs (one flat all-reduce)."""
        if self.pairs == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.tower_group)
        flat /= self.pairs
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def is_main(self) -> bool:
        return self.rank == 0


def make_placement(kind: str, towers: int, device: str = "auto") -> Placement:
    """The placement named by train.placement ("auto" picks the natural one for the hardware)."""
    import argparse

    from repro import errors
    from repro.errors import UserError

    try:
        errors.device(device)  # a GPU that is there (cuda:5 on a machine with two is one line too)
    except argparse.ArgumentTypeError as e:
        raise UserError(f"train.device = {e}: set train.device = 'cpu' or 'auto'") from None
    if kind == "auto":
        if dist.is_initialized():
            kind = "distributed"
        elif towers == 2 and torch.cuda.device_count() >= 2 and device in ("auto", "cuda"):
            kind = "two_devices"
        else:
            kind = "single"
    if kind == "distributed":
        if not dist.is_initialized():
            raise UserError("train.placement = 'distributed' needs one process per tower: start with "
                            "'./run.sh train --nproc 2' or torchrun")
        return Distributed(towers, None if device == "auto" else device)
    if kind == "two_devices":
        if towers != 2:
            raise UserError(f"train.placement = 'two_devices' needs two towers, the model has {towers}")
        if device not in ("auto", "cuda"):
            return TwoDevices([device] * towers)  # e.g. "cpu": two towers, two "devices", one CPU
        if torch.cuda.device_count() < 2:
            raise UserError(f"train.placement = 'two_devices' needs two GPUs, {torch.cuda.device_count()} "
                            f"visible: use train.placement = 'single' (or 'auto')")
        return TwoDevices([f"cuda:{i}" for i in range(towers)])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return OneDevice(device)
