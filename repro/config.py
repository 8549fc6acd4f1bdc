"""Configs are data: TOML files in paper_configs/ loaded into the dataclasses below.

The defaults are the paper's text (docs/fidelity.md); every file states which row of which table it
reproduces. A file may start with `extends = "other.toml"` (relative to itself) and then
give only what differs. Loading rejects, with one line naming the file and the key: an
unknown section or key, a wrong type, a value outside its range or choices, and widths that
do not divide between the towers.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import tomllib

from repro.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "paper_configs"
DEFAULT_CONFIG = CONFIG_DIR / "alexnet_2gpu.toml"

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def opt(default, *, choices=None, lo=None, hi=None):
    """A config field with its allowed values (checked on load)."""
    meta = {"choices": choices, "lo": lo, "hi": hi}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value):
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)


FFT_CHOICES = ("auto", "on", "off")  # speed.fft_conv2, speed.fft_conv3_5 (repro/fast/fft_conv.py, chosen)


@dataclass
class Widths:
    """Maps (conv) or units (fc) of each layer summed over the towers (docs/architecture.md)."""
    conv1: int = opt(96, lo=1)
    conv2: int = opt(256, lo=1)
    conv3: int = opt(384, lo=1)
    conv4: int = opt(384, lo=1)
    conv5: int = opt(256, lo=1)
    fc6: int = opt(4096, lo=1)
    fc7: int = opt(4096, lo=1)


@dataclass
class ModelConfig:
    towers: int = opt(2, lo=1, hi=2)
    num_classes: int = opt(1000, lo=2)
    widths: Widths = field(default_factory=Widths)
    # "paper": alpha = 1e-4 on the plain sum; "code145": 1e-4 / 5 (= torch.nn.LocalResponseNorm)
    lrn: str = opt("paper", choices=("paper", "code145", "none"))
    # "paper": conv1 -> ReLU -> LRN -> pool; "code145": conv1 -> LRN -> pool -> ReLU
    conv1_order: str = opt("paper", choices=("paper", "code145"))
    # "ceil": no padding, 3 zero pixels past the right/bottom edge (the 2012 code);
    # "symmetric": 2 pixels on every side (the usual PyTorch shortcut). Both give 55x55.
    conv1_padding: str = opt("ceil", choices=("ceil", "symmetric"))
    conv2_rnorm: bool = opt(False)  # code 145's extra same-map 5x5 normalisation after conv2
    pool: str = opt("overlap", choices=("overlap", "nonoverlap"))  # 3/2 or 2/2
    cross_links: bool = opt(True)  # False: towers meet only at fc8 (code 150)
    fc8: str = opt("split", choices=("split", "tower0"))  # half the logits per tower, or all on tower 0
    dropout: float = opt(0.5, lo=0.0, hi=0.99)
    # "test": the paper's dropout (no scaling in training, outputs x (1 - p) at test);
    # "train": inverted dropout (x 1/(1 - p) in training), equal in expectation.
    dropout_scaling: str = opt("test", choices=("test", "train"))

    def logit_range(self, tower: int) -> range:
        """The logits computed by one tower: half each ("split"), or all on tower 0 ("tower0",
        code 145's fc8 on GPU 0)."""
        c, t = self.num_classes, self.towers
        if self.fc8 == "tower0":
            return range(0, c) if tower == 0 else range(0, 0)
        return range(tower * c // t, (tower + 1) * c // t)


@dataclass
class PerLayer:
    conv1: float = 0.0
    conv2: float = 0.0
    conv3: float = 0.0
    conv4: float = 0.0
    conv5: float = 0.0
    fc6: float = 0.0
    fc7: float = 0.0
    fc8: float = 0.0


@dataclass
class InitConfig:
    """Section 5 of the paper: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7."""
    weight_std: PerLayer = field(default_factory=lambda: PerLayer(*(0.01,) * 8))
    bias: PerLayer = field(default_factory=lambda: PerLayer(0, 1, 0, 1, 1, 1, 1, 0))


@dataclass
class DataConfig:
    shards: str = opt("data/shards")  # directory written by `./run.sh prepare`
    source: str = opt("")  # where prepare finds the archives ("" -> $ILSVRC_ROOT)
    year: int = opt(2012, choices=(2010, 2012))
    # validation after every epoch (feeds the plateau schedule): never the test set
    val_split: str = opt("val", choices=("val",))
    eval_split: str = opt("val", choices=("val", "test"))  # the split `./run.sh eval` and reports use
    batch_size: int = opt(128, lo=1)
    workers: int = opt(2, lo=0)
    seed: int = opt(0, lo=0)  # shuffling of the shard stream


@dataclass
class AugmentConfig:
    crop: int = opt(224, lo=1)
    flip: bool = opt(True)
    # "crop": subtract the mean image at the crop's position; "centre": its centre crop (code 145)
    mean: str = opt("crop", choices=("crop", "centre"))
    # "paper": alpha_i * lambda_i with lambda on the [0, 1] pixel scale;
    # "code145": alpha_i * sqrt(lambda_i) on 0-255 after mean subtraction, then / 1.1
    lighting: str = opt("paper", choices=("paper", "code145", "none"))
    lighting_std: float = opt(0.1, lo=0.0)
    lighting_off_epoch: int = opt(0, lo=0)  # 0: never; code 145 turns it off from epoch 67
    on: str = opt("cpu", choices=("cpu", "device"))  # where the float work runs


@dataclass
class OptimConfig:
    """v <- momentum v - weight_decay lr w - lr g ; w <- w + v (section 5)."""
    lr: float = opt(0.01, lo=0.0)
    momentum: float = opt(0.9, lo=0.0, hi=1.0)
    weight_decay: float = opt(0.0005, lo=0.0)
    bias_lr_mult: float = opt(1.0, lo=0.0)  # code 145 trains biases at twice the rate
    # the decay term on biases too ("every parameter"); cuda-convnet, which code 145 descends
    # from, builds its biases with weight decay 0 (layer.cu: new Weights(..., epsB, 0, momB, ...))
    bias_weight_decay: bool = opt(True)
    rule: str = opt("paper", choices=("paper", "torch"))  # "torch": torch.optim.SGD's form


@dataclass
class ScheduleConfig:
    # "plateau": /factor when validation error has not improved for `patience` epochs,
    # at most `max_reductions` times (the paper); "epochs": at `drop_epochs` (code 145)
    kind: str = opt("plateau", choices=("plateau", "epochs"))
    epochs: int = opt(90, lo=1)
    factor: float = opt(10.0, lo=1.0)
    patience: int = opt(4, lo=1)
    max_reductions: int = opt(3, lo=0)
    drop_epochs: list = opt([])
    # conv1's weights alone divided by `factor` again at these epochs (code 145's log: "epoch 67:
    # set epsw to 0.00001 from 0.0001 on conv1"), on top of the schedule above
    conv1_drop_epochs: list = opt([])
    freeze_conv1_epoch: int = opt(0, lo=0)  # 0: never; code 145 froze conv1 from about 72
    # "scheduled": the biases' rate follows the weights' (times optim.bias_lr_mult), the paper's
    # one rate for all layers; "constant": optim.lr * bias_lr_mult for the whole run, as code
    # 145's log changed epsW only (layer-params-145.cfg ends with epsW 0.00001, epsB 0.02)
    bias_lr: str = opt("scheduled", choices=("scheduled", "constant"))


@dataclass
class TrainConfig:
    # "auto": distributed under torchrun, two devices when two GPUs are visible, else one device
    placement: str = opt("auto", choices=("auto", "single", "two_devices", "distributed"))
    device: str = opt("auto")  # "auto", "cpu", "cuda", "cuda:1", ...
    seed: int = opt(0, lo=0)  # initialisation, dropout, augmentation
    max_steps: int = opt(0, lo=0)  # 0: no limit (smoke runs set a few)
    log_every: int = opt(20, lo=1)
    checkpoint_every: int = opt(1000, lo=0)  # steps; 0: only at each epoch end
    keep_checkpoints: int = opt(3, lo=1)
    # "float64": train and validate in double precision, for checks only (tests compare
    # placements and launches with it exactly); the paper's precision is float32
    dtype: str = opt("float32", choices=("float32", "float64"))
    # TensorBoard event files in RUN_DIR/tensorboard/ when the tensorboard package is installed
    # (repro/watch.py); metrics.jsonl is written either way
    tensorboard: bool = opt(True)


@dataclass
class SpeedConfig:
    """How the same float32 function is computed. The paper's recipe comes first: the switches
    that change the arithmetic or its repeatability (channels-last, bf16 autocast, compile, TF32,
    cudnn_benchmark) are off by default; the others compute the same function as the plain
    reference within float32 rounding (tests hold each against it) and are on.
    benchmarks/bench_train_step.py measures them; on a CPU turn channels_last on
    (paper_configs/demo.toml does)."""
    bf16: bool = opt(False)  # autocast on GPUs
    # torch.compile of the model; it made every setting slower on an H100 and an H200
    # (results/gpu/: 4,861 img/s against 5,200 uncompiled, float32 on the H100)
    compile: bool = opt(False)
    # activations stored [B, H, W, C] (the loader's layout): faster convolutions and pooling on
    # CPUs (tests/test_speed.py: same logits and gradients as contiguous NCHW)
    channels_last: bool = opt(False)
    # one device on a CPU: the single-module emulation of both towers with grouped convolutions
    # (AlexNet(grouped=True); tests/test_parallel.py). Checkpoints keep the two-tower form. On a
    # GPU the towers run apart, which cuDNN does faster (results/gpu/: 1.11x on an H100, 1.06x on
    # an H200).
    grouped: bool = opt(True)
    # GPUs: TF32 in cuDNN's convolutions and cuBLAS's matmuls (inputs rounded to a 10-bit
    # mantissa). Off: the paper's float32, whatever torch's own default (cuDNN allows TF32 unless
    # told not to; repro.model.set_precision tells it)
    tf32: bool = opt(False)
    # GPUs: let cuDNN time its algorithms and keep the fastest (over the default step: 1.17x on an
    # H100, 1.15x on an H200, results/gpu/); the choice can differ between runs, so float32
    # results are no longer repeatable bit for bit
    cudnn_benchmark: bool = opt(False)
    fast_lrn: bool = opt(True)  # equal to the reference LRN within 1e-6 (tests/test_lrn.py)
    # conv1's weight gradient by space-to-depth (repro/fast/conv1_grad.py); forward unchanged, gradient
    # equal within float32 rounding (tests/test_fast_conv1_grad.py)
    fast_conv1: bool = opt(True)
    # fc6-fc8 through oneDNN's matmul on CPUs (repro/fast/linear.py; MKL's sgemm ran at half its rate
    # on this project's AMD CPU); equal within float32 rounding (tests/test_speed.py)
    fast_fc: bool = opt(True)
    # conv2 by Fourier transforms on CPUs (repro/fast/fft_conv.py): 9.5x fewer multiply-adds in
    # its products; equal to nn.Conv2d within float32 rounding (tests/test_fast_fft_conv.py).
    # "auto": where oneDNN's convolutions run without AVX-512 on an x86 CPU, where it made the
    # step faster; with AVX-512 it was no faster (README, performance; fft_conv.chosen)
    fft_conv2: str = opt("auto", choices=FFT_CHOICES)
    # conv3-5 likewise; off: under AVX2 it made the step faster at batch 128 and slower at 32
    # (their kernels' spectra, computed every step, are large), with AVX-512 slower at both
    fft_conv3_5: str = opt("off", choices=FFT_CHOICES)
    # CPU: keep freed memory in the process instead of handing it back to the OS and faulting
    # it in again for the next batch (repro/fast/memory.py; glibc only)
    keep_freed_memory: bool = opt(True)

    @classmethod
    def plain(cls) -> "SpeedConfig":
        """Every switch off: the plain layers, the reference each speed path is tested against,
        and what export records (every exporter knows them)."""
        return cls(**{f.name: "off" if isinstance(f.default, str) else False for f in dataclasses.fields(cls)})


@dataclass
class EvalConfig:
    batch_size: int = opt(128, lo=1)


@dataclass
class Config:
    description: str = opt("")
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = field(default="", metadata={"internal": True})  # the file's stem


# ---------------------------------------------------------------------------------- loading

def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a TOML config (following `extends`), apply `section.key=value` overrides, check it."""
    path = Path(path)
    raw = _read_toml(path, seen=())
    given = frozenset(_apply_override(raw, item) for item in overrides)
    cfg = from_dict(raw, where=str(path), given=given)
    cfg.name = path.stem
    check(cfg, where=str(path))
    return cfg


def _read_toml(path: Path, seen: tuple) -> dict:
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a config file (the paper's configs are in {CONFIG_DIR})")
    if not path.is_file():
        raise UserError(f"config file {path} not found (the paper's configs are in {CONFIG_DIR})")
    if path.resolve() in seen:
        raise UserError(f"{path}: 'extends' goes round in a circle")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"{path}: 'extends' must be a file name")
    merged = _read_toml(path.parent / base, seen + (path.resolve(),))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _apply_override(raw: dict, item: str) -> str:
    """`section.key=value`, the value read as a TOML literal (a bare word is taken as a string).
    Returns the dotted name."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.001")
    dotted, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    *sections, key = dotted.strip().split(".")
    node = raw
    for s in sections:
        node = node.setdefault(s, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {s} is not a section")
    node[key] = value
    return ".".join([*sections, key])


def from_dict(data: dict, where: str, cls=Config, prefix: str = "", given: frozenset = frozenset()):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types. An error in a
    dotted name in `given` (set by --set) names --set, not the file `where`."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        source = _source(name, given, where)
        if key not in fields:
            what = "section" if isinstance(value, dict) else "key"
            known = ", ".join(fields)
            raise UserError(f"{source}: unknown {what} '{name}' (known here: {known})")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{name}' must be a section [{name}]")
            kwargs[key] = from_dict(value, where, kind, prefix=f"{name}.", given=given)
        else:
            kwargs[key] = _checked(value, kind, fields[key], name, source)
    return cls(**kwargs)


def _source(name: str, given: frozenset, where: str) -> str:
    """Where a value came from: `--set NAME` if that option set it, a key under it (a whole section
    given as a TOML table) or a section holding it, else the file."""
    hit = next((g for g in given if g == name or g.startswith(name + ".") or name.startswith(g + ".")), None)
    return f"--set {hit}" if hit else where


def _checked(value: Any, kind, f: dataclasses.Field, name: str, where: str):
    base = get_origin(kind) or kind
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
    if base is list and ok:
        ok = all(isinstance(v, (int, float, str)) for v in value)
    if not ok:
        raise UserError(f"{where}: '{name}' must be {_type_name(base)}, got {value!r}")
    if base is float and not math.isfinite(value):  # TOML has nan and inf; no setting takes them
        raise UserError(f"{where}: '{name}' = {value!r} must be a finite number")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        allowed = ", ".join(map(str, meta["choices"]))
        raise UserError(f"{where}: '{name}' = {value!r} is not one of {allowed}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise UserError(f"{where}: '{name}' = {value!r} is below its minimum {meta['lo']}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise UserError(f"{where}: '{name}' = {value!r} is above its maximum {meta['hi']}")
    return value


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a list"}.get(t, t.__name__)


def check(cfg: Config, where: str = "config") -> None:
    """Rules that involve more than one key."""
    m = cfg.model
    for layer, width in dataclasses.asdict(m.widths).items():
        if width % m.towers:
            raise UserError(f"{where}: 'model.widths.{layer}' = {width} does not divide "
                            f"between {m.towers} towers")
    for key in ("drop_epochs", "conv1_drop_epochs"):
        for value in getattr(cfg.schedule, key):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{where}: 'schedule.{key}' must list epochs >= 1, got {value!r}")
    if cfg.schedule.kind == "epochs" and not cfg.schedule.drop_epochs:
        raise UserError(f"{where}: 'schedule.kind' = 'epochs' needs 'schedule.drop_epochs'")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.train.device):
        raise UserError(f"{where}: 'train.device' = {cfg.train.device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.augment.crop > 256:
        raise UserError(f"{where}: 'augment.crop' = {cfg.augment.crop} is larger than the 256 images")
    for layer in LAYERS:
        if getattr(cfg.init.weight_std, layer) <= 0:
            raise UserError(f"{where}: 'init.weight_std.{layer}' must be positive")


def to_dict(cfg) -> dict:
    """The resolved config as plain data (written into every run directory)."""
    return dataclasses.asdict(cfg)


def flat(cfg) -> dict:
    """{"section.key": value} of a config (or a dict), e.g. {"model.widths.conv1": 96, ...}."""
    out = {}
    for k, v in (cfg if isinstance(cfg, dict) else to_dict(cfg)).items():
        out.update({f"{k}.{kk}": vv for kk, vv in flat(v).items()} if isinstance(v, dict) else {k: v})
    return out


def dumps_toml(cfg: Config) -> str:
    """The resolved config as TOML, loadable again by load_config."""
    lines = []

    def emit(table: dict, header: str):
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if header and scalars:
            lines.append(f"\n[{header}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        for k, v in table.items():
            if isinstance(v, dict):
                emit(v, f"{header}.{k}" if header else k)

    data = to_dict(cfg)
    data.pop("name")
    emit(data, "")
    return "\n".join(lines).lstrip() + "\n"


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and every control character escaped, so that any
    text (a description over several lines, say) reads back unchanged."""
    return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
