"""The two-tower AlexNet (paper section 3, Figure 2; docs/architecture.md, "Towers and shapes").

Each tower holds half of every layer (one GTX 580 each in 2012). The towers work apart except
where the paper connects them: conv3 reads both towers' conv2 maps, and fc6, fc7 and fc8 read
both towers' previous layer. `AlexNet.forward` shows those four exchanges line by line; the
exchange itself is supplied by a placement (repro.parallel), so this code is the same whether
both towers share one device, sit on two GPUs, or live in two processes.

Per-tower shapes for a 224x224 input (paper widths):
    conv1 [48, 55, 55] -> pool [48, 27, 27]      conv4 [192, 13, 13]
    conv2 [128, 27, 27] -> pool [128, 13, 13]    conv5 [128, 13, 13] -> pool [128, 6, 6]
    conv3 [192, 13, 13] (reads 256 maps)         fc6 [2048] (reads 9216), fc7 [2048], fc8 [500]

state_dict keys name the tower and the paper's layer: `towers.0.conv1.weight`, ...,
`towers.1.fc8.bias`. These keys are stable.
"""
from __future__ import annotations

import dataclasses
import warnings
import zlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from repro.config import LAYERS, Config, InitConfig, ModelConfig, SpeedConfig
from repro.fast import fft_conv
from repro.fast.conv1_grad import StridedConv2d
from repro.fast.fft_conv import FFTConv2d
from repro.fast.linear import Linear
from repro.grouped import pieces as grouped_pieces
from repro.lrn import LRN, SameMapNorm
from repro.parallel import OneDevice

CONV1_CEIL_PAD = 3  # 224 + 3 = 227 = 4 * 54 + 11: the 2012 code's last window hangs 3 pixels over


class Dropout(nn.Module):
    """Dropout with its own random stream (section 4.2).

    Each tower draws its masks from a generator seeded by `reseed`, so that every placement
    (one device, two devices, two processes) draws the same masks for the same tower. The
    grouped emulation passes one seed per tower: its units are the towers' side by side, and
    each tower's share of the mask comes from that tower's own stream. With data-parallel pairs,
    `rows` = (first, stop, total): each pair draws the whole batch's mask and keeps its own rows,
    so that any number of pairs trains exactly as one pair would (on the same batches: an epoch's
    last, partial batch is one pair's and is dropped with several, repro/data.py).
    scaling "test": the paper's form, units zeroed in training and outputs x (1 - p) at test;
    scaling "train": inverted dropout, x 1 / (1 - p) in training, equal in expectation.
    """

    def __init__(self, p: float, scaling: str):
        super().__init__()
        self.p, self.scaling = p, scaling
        self.seeds: tuple[int, ...] = ()
        self.rows: tuple[int, int, int] | None = None
        self._gens: list[torch.Generator] = []

    def reseed(self, *seeds: int, rows: tuple[int, int, int] | None = None) -> None:
        self.seeds, self.rows, self._gens = seeds, rows, []

    def forward(self, x):
        if self.p == 0:
            return x
        if not self.training:
            return x * (1 - self.p) if self.scaling == "test" else x
        x = x * self._keep(x)
        return x / (1 - self.p) if self.scaling == "train" else x

    # Left out of torch.compile's graph (speed.compile): traced, the seeds that change every step
    # would be guarded on and the model recompiled every step, until dynamo gives up on it
    # (repro/gpu_check.py's step_compile showed it). Run eagerly, it draws the same masks.
    @torch.compiler.disable
    def _keep(self, x):
        """The mask of units kept: x's shape, True where the drawn uniform is >= p."""
        if self.seeds and (not self._gens or self._gens[0].device != x.device):
            self._gens = [torch.Generator(device=x.device).manual_seed(s) for s in self.seeds]
        first, stop, total = self.rows or (0, x.shape[0], x.shape[0])
        if stop - first != x.shape[0]:
            raise ValueError(f"dropout rows {first}:{stop} do not fit a batch of {x.shape[0]}")
        if len(self._gens) > 1:  # one tower's share of the units from each stream
            share = (total, x.shape[1] // len(self._gens)) + tuple(x.shape[2:])
            keep = torch.cat([torch.rand(share, generator=g, device=x.device) for g in self._gens], 1)
        else:
            gen = self._gens[0] if self._gens else None
            keep = torch.rand((total,) + tuple(x.shape[1:]), generator=gen, device=x.device)
        return keep[first:stop] >= self.p

    def extra_repr(self):
        return f"p={self.p}, scaling={self.scaling}"


class GroupedLinear(nn.Module):
    """`groups` independent fully-connected layers side by side (the no-cross-links fc6/fc7 of
    the grouped emulation). weight [out, in / groups], like a grouped convolution's."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, x):  # (B, in) -> (B, out)
        b, g = x.shape[0], self.groups
        w = self.weight.view(g, -1, self.weight.shape[1])  # (g, out/g, in/g)
        y = torch.baddbmm(self.bias.view(g, 1, -1), x.view(b, g, -1).transpose(0, 1), w.transpose(1, 2))
        return y.transpose(0, 1).reshape(b, -1)


class Tower(nn.Module):
    """One tower: half of every layer. With `groups` > 1 it is instead the single-module
    emulation of all towers at once (grouped convolutions, LRN kept inside each group)."""

    def __init__(self, m: ModelConfig, index: int | None, groups: int = 1,
                 speed: SpeedConfig | None = None):
        super().__init__()
        speed = speed or SpeedConfig()
        t, w, g = m.towers, m.widths, groups
        per = {k: v // t * g for k, v in dataclasses.asdict(w).items()}  # this module's widths
        # how many towers' maps conv3, fc6 and fc7 read (the grouped module already holds them all)
        cross = t if m.cross_links and g == 1 else 1
        self.m, self.groups = m, g
        self._fc = Linear if speed.fast_fc else nn.Linear  # the same layer; see repro/fast/linear.py
        conv1 = StridedConv2d if speed.fast_conv1 else nn.Conv2d  # the same layer; see repro/fast/conv1_grad.py
        self.conv1 = skip_init(conv1, 3, per["conv1"], 11, stride=4,
                               padding=2 if m.conv1_padding == "symmetric" else 0)
        # the same layers by Fourier transforms on CPUs; see repro/fast/fft_conv.py
        conv2 = FFTConv2d if fft_conv.chosen(speed.fft_conv2) else nn.Conv2d
        conv3_5 = FFTConv2d if fft_conv.chosen(speed.fft_conv3_5) else nn.Conv2d
        self.conv2 = skip_init(conv2, per["conv1"], per["conv2"], 5, padding=2, groups=g)
        self.conv3 = skip_init(conv3_5, per["conv2"] * cross, per["conv3"], 3, padding=1,
                               groups=1 if m.cross_links else g)
        self.conv4 = skip_init(conv3_5, per["conv3"], per["conv4"], 3, padding=1, groups=g)
        self.conv5 = skip_init(conv3_5, per["conv4"], per["conv5"], 3, padding=1, groups=g)
        self.fc6 = self._linear(per["conv5"] * 6 * 6 * cross, per["fc6"], m.cross_links)
        self.fc7 = self._linear(per["fc6"] * cross, per["fc7"], m.cross_links)
        n_logits = m.num_classes if g > 1 else len(m.logit_range(index))
        with warnings.catch_warnings():  # code 145: tower 1 holds an empty share of fc8
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.fc8 = skip_init(self._fc, w.fc7, n_logits)  # fc8 always reads every tower
        self.lrn = LRN(m.lrn, fast=speed.fast_lrn) if m.lrn != "none" else None
        self.rnorm = SameMapNorm(fast=speed.fast_lrn) if m.conv2_rnorm else None
        self.pool = nn.MaxPool2d(3, 2) if m.pool == "overlap" else nn.MaxPool2d(2, 2)
        self.drop6 = Dropout(m.dropout, m.dropout_scaling)
        self.drop7 = Dropout(m.dropout, m.dropout_scaling)

    def _linear(self, n_in, n_out, cross):
        if self.groups == 1 or cross:
            return skip_init(self._fc, n_in, n_out)
        return GroupedLinear(n_in, n_out, self.groups)

    def _norm(self, x, norm):
        """Apply a normalisation within each tower's own maps (never across the tower boundary)."""
        if norm is None:
            return x
        if isinstance(norm, LRN):  # across maps: the window stays inside each group's maps
            return norm(x, groups=self.groups)
        return norm(x)  # SameMapNorm: within each map, so groups cannot mix

    # Each stage reads this tower's own maps unless AlexNet.forward has exchanged them before.
    # ReLU works in place: no layer before it needs its own output for the backward pass.

    def conv1_stage(self, x):  # (B, 3, 224, 224) -> (B, 48, 27, 27)
        if self.m.conv1_padding == "ceil":
            x = F.pad(x, (0, CONV1_CEIL_PAD, 0, CONV1_CEIL_PAD))
        x = self.conv1(x)  # (B, 48, 55, 55)
        if self.m.conv1_order == "paper":  # ReLU, LRN, pool (section 3.5)
            return self.pool(self._norm(F.relu(x, inplace=True), self.lrn))
        return F.relu(self.pool(self._norm(x, self.lrn)), inplace=True)  # code 145: LRN on the pre-activation

    def conv2_stage(self, x):  # (B, 48, 27, 27) -> (B, 128, 13, 13)
        x = self._norm(F.relu(self.conv2(x), inplace=True), self.lrn)
        x = self._norm(x, self.rnorm)  # code 145 only: same-map 5x5 normalisation
        return self.pool(x)

    def conv3_to_5(self, x):  # (B, 256 or 128, 13, 13) -> (B, 128 * 6 * 6)
        x = F.relu(self.conv3(x), inplace=True)  # (B, 192, 13, 13)
        x = F.relu(self.conv4(x), inplace=True)  # (B, 192, 13, 13)
        x = self.pool(F.relu(self.conv5(x), inplace=True))  # (B, 128, 6, 6)
        return torch.flatten(x, 1)  # channel-major, so concatenating towers then flattening is the same

    def fc6_stage(self, x):  # (B, 9216 or 4608) -> (B, 2048)
        return self.drop6(F.relu(self.fc6(x), inplace=True))

    def fc7_stage(self, x):  # (B, 4096 or 2048) -> (B, 2048)
        return self.drop7(F.relu(self.fc7(x), inplace=True))


class AlexNet(nn.Module):
    """The network of Figure 2. `model(x)` with x (B, 3, 224, 224) gives logits (B, num_classes).

    Build with `AlexNet.from_config(cfg)`; pass `placement=` (repro.parallel) to put the towers
    on two devices or in two processes, or `grouped=True` for the single-module emulation with
    grouped convolutions (same function, different parameter layout: see repro/grouped.py).
    """

    def __init__(self, m: ModelConfig, placement=None, grouped: bool = False,
                 speed: SpeedConfig | None = None):
        super().__init__()
        self.m = m
        self.grouped = grouped
        self.placement = placement or OneDevice()
        if grouped:
            if not isinstance(self.placement, OneDevice):
                raise ValueError("the grouped emulation is a single module on one device")
            self.towers = nn.ModuleDict({"grouped": Tower(m, None, groups=m.towers, speed=speed)})
        else:
            here = self.placement.towers_here(m.towers)
            self.towers = nn.ModuleDict({str(i): Tower(m, i, speed=speed) for i in here})
        # The layout activations are computed in: the input is brought to it (a no-op for the
        # loader's channels-last batches when speed.channels_last; one copy otherwise).
        self.memory_format = torch.channels_last if speed and speed.channels_last else torch.contiguous_format
        self.placement.place(self)
        self.to(memory_format=self.memory_format)

    @classmethod
    def from_config(cls, cfg: Config | ModelConfig, placement=None, grouped: bool = False,
                    init: InitConfig | None = None, seed: int | None = None) -> "AlexNet":
        """The model of `cfg`, initialised as cfg.init says (the paper's section 5 by default)."""
        full = cfg if isinstance(cfg, Config) else Config(model=cfg)
        model = cls(full.model, placement, grouped, speed=full.speed)
        init_weights(model, init or full.init, full.train.seed if seed is None else seed)
        return model

    def forward(self, x, fc7: bool = False):
        """Logits (B, num_classes); with fc7=True also the fc7 activations of all towers
        (B, 4096), the features of the paper's Figure 4 (nearest neighbours)."""
        place, cross = self.placement, self.m.cross_links
        towers = list(self.towers.values())
        x = x.contiguous(memory_format=self.memory_format)
        xs = place.scatter(x, len(towers))  # every tower sees the whole image
        h = [t.conv2_stage(t.conv1_stage(xi)) for t, xi in zip(towers, xs)]  # own tower only
        if cross:
            h = place.exchange(h, "conv3")  # conv3 reads both towers' conv2 maps
        h = [t.conv3_to_5(hi) for t, hi in zip(towers, h)]  # conv4, conv5: own tower only
        if cross:
            h = place.exchange(h, "fc6")  # fc6 reads both towers
        h = [t.fc6_stage(hi) for t, hi in zip(towers, h)]
        if cross:
            h = place.exchange(h, "fc7")  # fc7 reads both towers
        h = [t.fc7_stage(hi) for t, hi in zip(towers, h)]
        h = place.exchange(h, "fc8")  # fc8 reads both towers, even without cross links
        logits = place.collect([t.fc8(hi) for t, hi in zip(towers, h)])  # (B, num_classes)
        return (logits, h[0].to(logits.device)) if fc7 else logits

    def reseed_dropout(self, seed: int, rows: tuple[int, int, int] | None = None) -> None:
        """Seed each tower's dropout masks from (seed, tower, layer): same masks in every placement.
        The trainer calls this every step with a seed derived from (run seed, step); `rows` =
        (first, stop, total) when this process holds rows first:stop of a batch of total."""
        for key, tower in self.towers.items():
            keys = [str(i) for i in range(self.m.towers)] if key == "grouped" else [key]
            for name in ("drop6", "drop7"):
                getattr(tower, name).reseed(*(_mix(seed, k, name) for k in keys), rows=rows)


def set_precision(speed: SpeedConfig) -> None:
    """The process's GPU arithmetic as the config says: float32 convolutions and matmuls unless
    speed.tf32 (torch lets cuDNN use TF32 by default: the paper's configs must say no), and
    cuDNN's algorithm search only with speed.cudnn_benchmark. Called by the trainer and the
    evaluator before they compute; it does nothing on a CPU."""
    torch.backends.cudnn.allow_tf32 = speed.tf32
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark


def _mix(seed: int, *parts) -> int:
    """A stable 63-bit seed from a seed and some names (the same in every process)."""
    text = ":".join(map(str, (seed,) + parts)).encode()
    return (zlib.crc32(text) << 31 | zlib.crc32(text[::-1])) & (2**63 - 1)


# ------------------------------------------------------------------------ initialisation

@torch.no_grad()
def init_weights(model: AlexNet, init: InitConfig, seed: int) -> None:
    """Section 5: weights from N(0, std) and constant biases, per layer as `init` says.

    The paper: std 0.01 everywhere; biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere.
    Code 145: std 0.03 in conv3-5. Each tower's draws come from its own generator seeded by
    (seed, tower, layer), so every placement (and the grouped emulation) gets the same weights.
    """
    m = model.m
    for key, tower in model.towers.items():
        for layer in LAYERS:
            mod = getattr(tower, layer)
            std, bias = getattr(init.weight_std, layer), getattr(init.bias, layer)
            if key == "grouped":  # the concatenation of every tower's own draw
                pieces = grouped_pieces(m, layer, mod.weight.shape)
                w = torch.cat([_normal(shape, std, seed, str(i), layer) for i, shape in pieces])
            else:
                w = _normal(mod.weight.shape, std, seed, key, layer)
            mod.weight.copy_(w)
            mod.bias.fill_(bias)


def _normal(shape, std, seed, tower_key, layer):
    gen = torch.Generator().manual_seed(_mix(seed, tower_key, layer))
    return torch.randn(shape, generator=gen) * std


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
