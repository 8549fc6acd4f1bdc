"""The model's arithmetic, and an ESTIMATE of its training speed on GPUs (`./run.sh bench --model`).

Arithmetic (exact, from the layer shapes of docs/architecture.md; tests/test_estimate.py
holds it against the model itself):
    forward multiply-adds per image, per layer (conv1 ... fc8; about 0.72 G in all)
    training FLOPs per image = 2 x multiply-adds x 3 (forward, and a backward pass of twice the
        forward: gradients of the input and of the weights), except conv1, whose input gradient
        is never needed (x 2 only). Normalisation, pooling, ReLU, dropout and the update are not
        counted: they are memory traffic, estimated separately below.
    bytes each tower receives from the other at the exchange points (conv3, fc6, fc7, fc8)

The estimate is arithmetic on top of stated device characteristics and assumed utilisations,
not a measurement: per step, with no overlap of computation and communication,
    compute        FLOPs / (peak fp32 rate x utilisation of the layer type)
    memory-bound   bytes of activation traffic and of the update / (memory bandwidth x utilisation)
    exchange       the bytes a tower receives, forward and backward / link bandwidth (two GPUs)
    all-reduce     ring all-reduce of each tower's gradients over its data-parallel group
The input pipeline is assumed to keep up.
"""
from __future__ import annotations

from dataclasses import dataclass

from repro.config import ModelConfig

TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training set
EPOCHS = 90
BATCH = 128
FLOAT = 4  # bytes: float32 throughout, the paper's precision
CROP = 224


@dataclass(frozen=True)
class Layer:
    """One weight layer of the whole net (both towers), per image."""
    name: str
    kind: str  # "conv" or "fc"
    macs: int  # forward multiply-adds
    params: int
    out_maps: int  # channels (conv) or units (fc) of its output
    out_size: int  # spatial size of its output (1 for fc)

    @property
    def train_flops(self) -> int:
        """2 FLOPs per multiply-add; backward = 2 x forward, but conv1 computes no input gradient."""
        return 2 * self.macs * (2 if self.name == "conv1" else 3)


def _sizes(m: ModelConfig, crop: int = CROP) -> tuple[int, int, int, int]:
    """Spatial sizes of conv1's output and of the three pooled maps: 55, 27, 13, 6."""
    k, s = (3, 2) if m.pool == "overlap" else (2, 2)
    conv1 = (crop + (3 if m.conv1_padding == "ceil" else 4) - 11) // 4 + 1
    sizes = [conv1]
    for _ in range(3):
        sizes.append((sizes[-1] - k) // s + 1)
    return tuple(sizes)


def layers(m: ModelConfig, crop: int = CROP) -> list[Layer]:
    """conv1 ... fc8 of the model `m` (both towers together), per image."""
    t, w = m.towers, m.widths
    cross = t if m.cross_links else 1  # conv3, fc6 and fc7 read this many towers' maps
    s1, s2, s3, s6 = _sizes(m, crop)  # 55, 27, 13, 6

    def conv(name, maps, size, k, in_per_tower):
        fan_in = k * k * in_per_tower
        return Layer(name, "conv", size * size * maps * fan_in, maps * (fan_in + 1), maps, size)

    def fc(name, units, n_in):
        return Layer(name, "fc", units * n_in, units * (n_in + 1), units, 1)

    return [
        conv("conv1", w.conv1, s1, 11, 3),
        conv("conv2", w.conv2, s2, 5, w.conv1 // t),
        conv("conv3", w.conv3, s3, 3, w.conv2 // t * cross),
        conv("conv4", w.conv4, s3, 3, w.conv3 // t),
        conv("conv5", w.conv5, s3, 3, w.conv4 // t),
        fc("fc6", w.fc6, w.conv5 // t * cross * s6 * s6),
        fc("fc7", w.fc7, w.fc6 // t * cross),
        fc("fc8", m.num_classes, w.fc7),
    ]


def forward_macs(m: ModelConfig) -> int:
    return sum(layer.macs for layer in layers(m))


def train_flops(m: ModelConfig) -> int:
    """Training FLOPs per image under the counting rule of Layer.train_flops."""
    return sum(layer.train_flops for layer in layers(m))


def exchange_bytes(m: ModelConfig) -> dict[str, int]:
    """Forward bytes per image that all towers together receive from the others, per exchange
    point (what repro.parallel's ExchangeLog records); the backward sends as much back."""
    t, w = m.towers, m.widths
    _, _, s3, s6 = _sizes(m)
    per_tower = {"conv3": w.conv2 // t * s3 * s3, "fc6": w.conv5 // t * s6 * s6,
                 "fc7": w.fc6 // t, "fc8": w.fc7 // t}
    points = per_tower if m.cross_links else {"fc8": per_tower["fc8"]}
    return {p: n * FLOAT * (t - 1) * t for p, n in points.items()}


def activation_bytes(m: ModelConfig) -> int:
    """Bytes per image of the activations the memory-bound layers pass over: conv1 and conv2
    outputs (ReLU, LRN, pool), conv3-5 outputs (ReLU; pool after conv5), fc6/fc7 (ReLU, dropout).

    Passes, forward and backward together (a rough count, stated): ReLU 5 (read and write
    forward; read output and gradient, write gradient backward), LRN 8, max-pool 3 on its input,
    dropout 6."""
    ls = {layer.name: layer for layer in layers(m)}

    def size(name):
        return ls[name].out_maps * ls[name].out_size ** 2 * FLOAT

    lrn = 8 if m.lrn != "none" else 0
    return (size("conv1") * (5 + lrn + 3) + size("conv2") * (5 + lrn + 3)
            + size("conv3") * 5 + size("conv4") * 5 + size("conv5") * (5 + 3)
            + (size("fc6") + size("fc7")) * (5 + 6))


def update_bytes(m: ModelConfig) -> int:
    """Bytes per step of the paper's update: read weight, velocity and gradient, write velocity
    and weight (repro.optim.PaperSGD)."""
    return 5 * FLOAT * sum(layer.params for layer in layers(m))


# ------------------------------------------------------------------------------ the estimate

@dataclass(frozen=True)
class Device:
    name: str
    fp32: float  # peak FLOP/s in float32 (no TF32: the paper's precision)
    memory: float  # bytes/s
    util: dict  # assumed achieved fraction of `fp32` per layer kind, and of `memory` ("memory")
    source: str


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth: float  # bytes/s each way, as achieved (assumed)
    source: str


# Peak rates are the vendors' data sheets. Utilisations are ASSUMPTIONS (not measured here):
# 2012's hand-written cuda-convnet kernels at half of peak on convolutions, GEMM libraries of
# today at 60-70% of fp32 peak, memory-bound layers at 60-70% of bandwidth.
GTX580 = Device("GTX 580 (2012)", 1.581e12, 192.4e9, {"conv": 0.5, "fc": 0.6, "memory": 0.6},
                "512 cores x 1544 MHz x 2; 192.4 GB/s GDDR5")
A100 = Device("A100 SXM", 19.5e12, 1555e9, {"conv": 0.6, "fc": 0.7, "memory": 0.7},
              "fp32 (non-tensor-core) 19.5 TFLOP/s; HBM2 1555 GB/s")
H100 = Device("H100 SXM", 67e12, 3350e9, {"conv": 0.6, "fc": 0.7, "memory": 0.7},
              "fp32 (non-tensor-core) 67 TFLOP/s; HBM3 3350 GB/s")
H100_PCIE = Device("H100 PCIe", 51e12, 2000e9, {"conv": 0.6, "fc": 0.7, "memory": 0.7},
                   "fp32 (non-tensor-core) 51 TFLOP/s; HBM2e 2000 GB/s")
H200 = Device("H200 SXM", 67e12, 4800e9, {"conv": 0.6, "fc": 0.7, "memory": 0.7},
              "fp32 (non-tensor-core) 67 TFLOP/s; HBM3e 4800 GB/s")
PCIE2 = Link("PCIe 2.0 x16", 6e9, "8 GB/s each way on paper, about 6 achieved")
NVLINK3 = Link("NVLink 3", 250e9, "A100: 300 GB/s each way on paper, 250 assumed achieved")


@dataclass(frozen=True)
class Setup:
    name: str
    device: Device
    gpus_per_model: int  # 1: both towers on one GPU; 2: one tower per GPU
    replicas: int = 1  # data-parallel copies of the model; the batch of 128 is split among them
    link: Link | None = None  # between the two GPUs of a model
    dp_link: Link | None = None  # for the gradient all-reduce between replicas

    @property
    def gpus(self) -> int:
        return self.gpus_per_model * self.replicas


SETUPS = [
    Setup("paper: 2 x GTX 580, one tower each", GTX580, 2, link=PCIE2),
    Setup("1 x A100, both towers", A100, 1),
    Setup("2 x A100, one tower each", A100, 2, link=NVLINK3),
    Setup("8 x A100: 4 pairs, data parallel", A100, 2, replicas=4, link=NVLINK3, dp_link=NVLINK3),
    Setup("1 x H100 SXM, both towers", H100, 1),
    Setup("1 x H200, both towers", H200, 1),
]


def one_gpu_setup(gpu_name: str) -> Setup | None:
    """The one-GPU setup (both towers on it) for a CUDA device name such as torch reports it
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"), or
    None for a GPU this module has no figures for. The GPU check (repro/gpu_check.py) sets its
    measured time beside this estimate."""
    name = gpu_name.upper()
    for key, device in (("H200", H200), ("H100", H100_PCIE if "PCIE" in name else H100), ("A100", A100)):
        if key in name:
            return Setup(f"1 x {device.name}, both towers", device, 1)
    return None


def step_seconds(setup: Setup, m: ModelConfig, batch: int = BATCH) -> dict[str, float]:
    """Seconds per step of `batch` images, by part (compute, memory, exchange, allreduce)."""
    d, g = setup.device, setup.gpus_per_model
    images = batch / setup.replicas  # per model replica, i.e. per GPU pair (or single GPU)
    compute = images * sum(layer.train_flops / g / (d.fp32 * d.util[layer.kind]) for layer in layers(m))
    memory = (images * activation_bytes(m) + update_bytes(m)) / g / (d.memory * d.util["memory"])
    parts = {"compute": compute, "memory": memory, "exchange": 0.0, "allreduce": 0.0}
    if g > 1:  # each GPU receives its share forward and sends as much back in the backward pass
        received = sum(exchange_bytes(m).values()) / g
        parts["exchange"] = 2 * images * received / setup.link.bandwidth
    if setup.replicas > 1:  # ring all-reduce of one tower's gradients among the replicas
        r, grads = setup.replicas, FLOAT * sum(layer.params for layer in layers(m)) / g
        parts["allreduce"] = 2 * (r - 1) / r * grads / setup.dp_link.bandwidth
    return parts


def estimate(setup: Setup, m: ModelConfig, batch: int = BATCH) -> dict:
    parts = step_seconds(setup, m, batch)
    step = sum(parts.values())
    img_s = batch / step
    days = TRAIN_IMAGES * EPOCHS / img_s / 86400
    return {"setup": setup.name, "gpus": setup.gpus, "img_per_s": img_s, "days_90_epochs": days,
            "step_ms": {k: 1000 * v for k, v in parts.items()}}


def report(m: ModelConfig | None = None) -> str:
    m = m or ModelConfig()
    ls = layers(m)
    lines = ["ESTIMATE (arithmetic, not a measurement): training AlexNet (two towers, float32, batch "
             f"{BATCH}) on GPUs", "",
             "The model's arithmetic, per 224x224 image (exact, from the layer shapes):",
             f"  {'layer':6} {'fwd MACs':>12} {'train FLOPs':>12} {'params':>11}"]
    for layer in ls:
        lines.append(f"  {layer.name:6} {layer.macs:12,} {layer.train_flops:12,} {layer.params:11,}")
    lines += [f"  {'all':6} {forward_macs(m):12,} {train_flops(m):12,} {sum(x.params for x in ls):11,}",
              "  training FLOPs = 2 x MACs x 3 (backward = 2 x forward), conv1 x 2 (no input gradient)",
              "  exchanged between towers, forward, bytes per image: "
              + ", ".join(f"{k} {v:,}" for k, v in exchange_bytes(m).items()) + " (as much again backward)",
              f"  memory-bound traffic: {activation_bytes(m) / 1e6:.1f} MB per image (ReLU, LRN, pool, "
              f"dropout), update {update_bytes(m) / 1e6:.0f} MB per step", "",
              "Assumptions:"]
    for d in {setup.device.name: setup.device for setup in SETUPS}.values():
        lines.append(f"  {d.name}: {d.fp32 / 1e12:.2f} TFLOP/s fp32, {d.memory / 1e9:.0f} GB/s ({d.source}); "
                     f"assumed utilisation conv {d.util['conv']:.0%}, fc {d.util['fc']:.0%}, "
                     f"memory {d.util['memory']:.0%}")
    for link in (PCIE2, NVLINK3):
        lines.append(f"  {link.name}: {link.bandwidth / 1e9:.0f} GB/s each way ({link.source})")
    lines += ["  no overlap of compute and communication; input pipeline keeps up; data-parallel "
              f"replicas split the batch of {BATCH} (the paper's recipe unchanged)", "",
              f"  {'setup':38} {'GPUs':>4} {'img/s':>8} {'90 epochs':>10}   step: compute / memory / exchange / all-reduce (ms)"]
    for setup in SETUPS:
        e = estimate(setup, m)
        p = e["step_ms"]
        lines.append(f"  {setup.name:38} {setup.gpus:4d} {e['img_per_s']:8,.0f} {_duration(e['days_90_epochs']):>10}"
                     f"   {p['compute']:.1f} / {p['memory']:.1f} / {p['exchange']:.1f} / {p['allreduce']:.1f}")
    paper_img_s = TRAIN_IMAGES * EPOCHS / (5.5 * 86400)
    e = estimate(SETUPS[0], m)
    lines += ["", f"The paper: 90 epochs in five to six days on two GTX 580s, i.e. about {paper_img_s:,.0f} img/s, "
              f"{paper_img_s * train_flops(m) / 2 / GTX580.fp32:.0%} of the two GPUs' fp32 peak on the counted FLOPs "
              f"(the estimate above: {e['img_per_s']:,.0f} img/s, {_duration(e['days_90_epochs'])})."]
    return "\n".join(lines)


def _duration(days: float) -> str:
    return f"{days:.1f} days" if days >= 1 else f"{days * 24:.1f} h"
