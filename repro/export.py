"""`./run.sh export RUN_DIR [--format F] [--out FILE]`: a trained run in the formats inference
users load, without this project's training code:

    torchscript  RUN.pt: one file, two methods, for plain torch (torch.jit.load); the default
    onnx         RUN.onnx (crops -> logits) and RUN.ten_view.onnx (images -> probabilities), for
                 onnxruntime and other ONNX runtimes; class list and config in the metadata
    safetensors  RUN.safetensors: the weights under the checkpoint's two-tower names
                 (towers.0.conv1.weight, ...), the mean image, and the class list and config as
                 metadata; this project's AlexNet.from_config rebuilds the model from it
    all          all three, side by side

TorchScript and ONNX take raw uint8 RGB, channels last, on the 0-255 scale, and subtract the mean
image inside. `forward` (RUN.onnx) subtracts the centre 224x224 crop of the mean image (exactly
what evaluation does for the centre view); `ten_view` (RUN.ten_view.onnx) takes the paper's ten
views of prepared 256x256 images (shorter side resized to 256, central crop; section 4.1),
subtracts the mean at each view's position as `./run.sh eval` does, and averages the ten softmax
outputs (section 6). The batch size is free in every format.

TorchScript:

    extra = {"classes.json": "", "about.json": ""}  # filled in by torch.jit.load
    model = torch.jit.load("alexnet.pt", _extra_files=extra)
    logits = model(crops)            # uint8 (B, 224, 224, 3) RGB crops -> logits (B, C)
    probs = model.ten_view(images)   # uint8 (B, 256, 256, 3) prepared images -> (B, C), 10 views averaged
    classes = json.loads(extra["classes.json"])   # [[wnid, words], ...] in class-index order

ONNX and safetensors: the snippets ONNX_SNIPPET and SAFETENSORS_SNIPPET below (tests/test_export.py
runs them as they are). ONNX has one function per graph, hence two files; each holds its own
copy of the weights (about 244 MB each at the paper's size). The exported graphs compute with
the plain layers: every [speed] switch off (the fast LRN hands its work to worker threads,
which tracing does not see; fast conv1 and fc are autograd Functions and oneDNN calls that no
exporter records), the same function within float32 rounding. An ONNX export is run with
onnxruntime, where installed, before it is written: the logits must agree with the model's
within FLOAT32_NET_TOL of the largest logit (repro/tolerance.py, rule 2).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data_prep import shards
from repro import augment, data, evaluate, files, rundir
from repro.config import Config, SpeedConfig, dumps_toml
from repro.errors import ArgumentParser, UserError
from repro.tolerance import FLOAT32_NET_TOL, rel_err, softmax_atol

CROP = augment.CROP
IMAGE = shards.IMAGE_SIZE  # prepared images: shorter side 256, central crop (data_prep/images.py)
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "safetensors": ".safetensors"}
FORMATS = (*SUFFIX, "all")
NEEDS = {"torchscript": (), "onnx": ("onnx", "onnxscript"), "safetensors": ("safetensors",)}  # import names
TEN_VIEW_SUFFIX = ".ten_view.onnx"

# Every [speed] switch off: the plain layers, which every exporter records (module docstring).
PLAIN = tuple(f"speed.{name}={'false' if value is False else value}"
              for name, value in dataclasses.asdict(SpeedConfig.plain()).items())

# An exported graph runs other kernels than the model: logits within FLOAT32_NET_TOL of the largest
# logit, probabilities within softmax_atol (repro/tolerance.py, rule 2).

ONNX_SNIPPET = '''\
import json
import onnxruntime as ort

forward = ort.InferenceSession("alexnet.onnx")             # uint8 crops -> logits
ten_view = ort.InferenceSession("alexnet.ten_view.onnx")   # uint8 images -> 10-view probabilities
classes = json.loads(forward.get_modelmeta().custom_metadata_map["classes"])  # [[wnid, words], ...]

# crops: numpy uint8 (B, 224, 224, 3) RGB; images: uint8 (B, 256, 256, 3), prepared as for training
logits = forward.run(None, {"crops": crops})[0]            # (B, C)
probs = ten_view.run(None, {"images": images})[0]          # (B, C)
print(classes[probs[0].argmax()])
'''

SAFETENSORS_SNIPPET = '''\
import json
import tomllib

import torch
from safetensors import safe_open

from repro.config import from_dict
from repro.model import AlexNet

with safe_open("alexnet.safetensors", "pt") as f:
    meta = f.metadata()
    weights = {name: f.get_tensor(name) for name in f.keys() if name.startswith("towers.")}
    mean = f.get_tensor("mean_image")          # float32 (256, 256, 3), RGB on the 0-255 scale
cfg = from_dict(tomllib.loads(meta["config.toml"]), where="alexnet.safetensors")
model = AlexNet.from_config(cfg).eval()        # the run's network, as it trained
model.load_state_dict(weights)
classes = json.loads(meta["classes"])          # [[wnid, words], ...] in class-index order

# crops: torch uint8 (B, 224, 224, 3) RGB, the centre 224x224 of images prepared as for training
x = (crops.float() - mean[16:240, 16:240]).permute(0, 3, 1, 2)
with torch.no_grad():
    logits = model(x)                          # (B, C)
print(classes[logits[0].argmax()])
'''


class Exported(nn.Module):
    """The network with its input preparation: uint8 in, logits or averaged probabilities out."""

    def __init__(self, model, normalizer):
        super().__init__()
        self.model = model.requires_grad_(False)  # inference only: outputs carry no autograd graph
        # The exchange log (repro/parallel.py) counts bytes for tests; under torch.export the
        # sizes are symbols of one trace, which must not be carried into the next.
        model.placement.log.enabled = False
        offsets = torch.as_tensor(data.view_offsets("ten"))
        self.register_buffer("mean_centre", normalizer.mean_centre.clone())  # (224, 224, 3)
        self.register_buffer("mean_views", normalizer.mean_crops(offsets).expand(len(offsets), CROP, CROP, 3).clone())
        self.offsets = [tuple(int(v) for v in row) for row in offsets.tolist()]

    def forward(self, crops: torch.Tensor) -> torch.Tensor:  # uint8 (B, 224, 224, 3) -> (B, C)
        x = crops.float() - self.mean_centre
        return self.model(x.permute(0, 3, 1, 2))

    def view_logits(self, images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 256, 256, 3) -> (B * 10, C)
        views = torch.stack([augment.crop_view(images, t, left, m, CROP) for t, left, m in self.offsets], 1)
        x = views.float() - self.mean_views  # (B, 10, 224, 224, 3)
        return self.model(x.reshape(-1, CROP, CROP, 3).permute(0, 3, 1, 2))

    def ten_view(self, images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 256, 256, 3) -> (B, C)
        return evaluate.average_views(self.view_logits(images), len(self.offsets))


class TenView(nn.Module):
    """Exported.ten_view as a module's forward: an ONNX graph has one function."""

    def __init__(self, exported: Exported):
        super().__init__()
        self.exported = exported

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.exported.ten_view(images)


# ------------------------------------------------------------------------------- the run

@dataclass
class Source:
    """What every format is made from: the run's latest checkpoint and its prepared data."""
    wrapper: Exported  # the plain model (PLAIN) with its input preparation, in eval mode
    cfg: Config  # the run's own config (its speed settings), stored for rebuilding the model
    classes: list  # [[wnid, words], ...] in class-index order
    mean: torch.Tensor  # the mean image evaluation subtracts: float32 (256, 256, 3), RGB, 0-255
    about: dict


def load_source(run_dir: Path, data_override=None) -> Source:
    """The run's latest checkpoint in the plain model, its config, and its data's classes and mean
    image (the run's own prepared data, or `data_override`); one line if they do not fit."""
    ckpt = evaluate.latest_checkpoint(run_dir)  # chosen once: its files are hashed to choose it
    model, _ = evaluate.load_run(run_dir, "cpu", ckpt, overrides=PLAIN)
    cfg = rundir.read_config(run_dir)
    root = evaluate.data_root(run_dir, data_override)
    classes = data.class_names(root)
    if len(classes) != cfg.model.num_classes:
        raise UserError(f"{root} has {len(classes)} classes, the run {run_dir} {cfg.model.num_classes}: "
                        f"pass --data with the data it was trained on")
    normalizer = data.make_normalizer(root, cfg, "cpu")
    wrapper = Exported(model, normalizer).eval()
    about = {"run": run_dir.name, "checkpoint": str(ckpt), "config": cfg.description,
             "mean": cfg.augment.mean, "num_classes": cfg.model.num_classes,
             "forward": "uint8 (B, 224, 224, 3) RGB crops -> logits (B, C); centre crop of the mean image subtracted",
             "ten_view": "uint8 (B, 256, 256, 3) prepared RGB images -> probabilities (B, C), 10 views averaged"}
    return Source(wrapper, cfg, [list(c) for c in classes], normalizer.mean.contiguous(), about)


# --------------------------------------------------------------------------------- formats

def torchscript(src: Source, staging: "Staging", out: Path) -> None:
    """One TorchScript file: methods forward and ten_view, the class list and about.json."""
    examples = {"forward": torch.zeros(2, CROP, CROP, 3, dtype=torch.uint8),
                "ten_view": torch.zeros(2, IMAGE, IMAGE, 3, dtype=torch.uint8)}
    # Loaded by torch.jit.load in any torch version. torch 2.13 marks TorchScript deprecated in
    # favour of torch.export; the warnings say nothing the user can act on here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        traced = torch.jit.trace_module(src.wrapper, examples, check_trace=False)
        extra = {"classes.json": json.dumps(src.classes), "about.json": json.dumps(src.about, indent=1)}
        staging.write(out, lambda f: torch.jit.save(traced, f, _extra_files=extra))


def onnx_graphs(src: Source, staging: "Staging", out: Path) -> None:
    """Two ONNX files (one function each), batch size free, checked with onnxruntime if present.
    Metadata: the class list, about, the run's config, and which initializer holds the mean image
    the graph subtracts (the centre crop; or the crop under each of the ten views)."""
    meta = {"classes": json.dumps(src.classes), "about": json.dumps(src.about), "config.toml": dumps_toml(src.cfg)}
    graphs = [(out, src.wrapper, "crops", CROP, "logits", "mean_centre"),
              (ten_view_path(out), TenView(src.wrapper).eval(), "images", IMAGE, "probs", "mean_views")]
    for path, module, name, size, output, mean in graphs:
        proto = onnx_model(module, name, size, output)
        described = {**meta, "function": output}
        held = next((i for i in proto.graph.initializer if i.name.split(".")[-1] == mean), None)
        if held is not None:
            described["mean_image"] = (f"initializer {held.name}: float32 {tuple(held.dims)}, RGB on the "
                                       f"0-255 scale, subtracted from the input inside the graph")
        for key, value in described.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        staging.write(path, proto.SerializeToString())
    print(f"  {check_onnx(src.wrapper, staging.tmp(out), staging.tmp(ten_view_path(out)))}", file=sys.stderr)


# The largest batch the ONNX graphs promise. A bound, not infinity: torch 2.5-2.7's torch.export
# refuses an unbounded batch dimension of the ten-view model (its guard "batch != 2**63 - 1" does
# not hold over the whole default range); 2**20 images is far beyond any one call of the files.
BATCH_MAX = 2 ** 20


def onnx_model(module: nn.Module, input_name: str, size: int, output_name: str):
    """torch.export's graph of `module` on uint8 (batch, size, size, 3) as an onnx.ModelProto (the
    opset of torch's exporter; the weights inside: a model under 2 GB needs no external data)."""
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)  # 2: torch.export fixes sizes 0 and 1
    if not {"dynamo", "dynamic_shapes", "external_data"} <= set(inspect.signature(torch.onnx.export).parameters):
        raise UserError(f"--format onnx needs torch's torch.export-based ONNX exporter, which torch "
                        f"{torch.__version__} lacks: upgrade torch")
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, (example,), dynamo=True, external_data=False, verbose=False,
                                        input_names=[input_name], output_names=[output_name],
                                        dynamic_shapes=({0: torch.export.Dim("batch", max=BATCH_MAX)},))
    except ImportError as e:  # an onnxscript older than this torch's exporter
        raise UserError(f"torch {torch.__version__}'s ONNX exporter cannot use the installed onnxscript "
                        f"{_version('onnxscript')} ({e}): {sys.executable} -m pip install -U onnxscript") from None
    return _name_batch_axis(program.model_proto)


def _name_batch_axis(proto):
    """The input's first axis is called "batch" in the graph, whatever symbol torch's exporter gave
    it (torch 2.7 keeps the Dim's name, 2.5 writes "s0"), in every shape that uses it, derived
    ones too (the ten-view model's "10*s0")."""
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if symbol and symbol != "batch":
        g = proto.graph
        uses = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(symbol)}(?![A-Za-z0-9_])")
        for value in (*g.input, *g.output, *g.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = uses.sub("batch", dim.dim_param)
    return proto


@contextlib.contextmanager
def _quiet_exporter():
    """torch's ONNX exporter logs every torchvision op it cannot register and warns about its own
    deprecated internals; neither concerns the user."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        log.setLevel(level)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def check_onnx(wrapper: Exported, forward_file: Path, ten_view_file: Path) -> str:
    """Run both ONNX files with onnxruntime on a batch of 3 (not the 2 exported with) and compare
    with the model (FLOAT32_NET_TOL); UserError if they differ. Returns what was checked."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        if importlib.util.find_spec("onnxruntime") is None:
            return f"not checked: onnxruntime is not installed ({sys.executable} -m pip install onnxruntime)"
        return f"not checked: onnxruntime {_version('onnxruntime')} is installed but cannot be imported {e}".rstrip()
    gen = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (3, CROP, CROP, 3), generator=gen, dtype=torch.uint8)
    images = torch.randint(0, 256, (3, IMAGE, IMAGE, 3), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        logits, views = wrapper(crops), wrapper.view_logits(images)
        probs = evaluate.average_views(views, len(wrapper.offsets))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    run = {}
    for key, path, x in (("logits", forward_file, crops), ("probs", ten_view_file, images)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        run[key] = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    err = rel_err(run["logits"], logits)
    perr = (run["probs"] - probs).abs().max().item()
    atol = softmax_atol(views)
    if not (err <= FLOAT32_NET_TOL and perr <= atol):
        raise UserError(f"the ONNX graphs do not compute the model's function under onnxruntime {ort.__version__} "
                        f"(logits off by {err:.2g} of the largest, tolerance {FLOAT32_NET_TOL:g}; probabilities by "
                        f"{perr:.2g}, tolerance {atol:.2g}): nothing written")
    return (f"checked with onnxruntime {ort.__version__}, batch of 3: logits within {err:.1e} of the largest "
            f"(tolerance {FLOAT32_NET_TOL:g}), 10-view probabilities within {perr:.1e} (tolerance {atol:.1e})")


def safetensors_file(src: Source, staging: "Staging", out: Path) -> None:
    """The checkpoint's parameters under their two-tower names, the mean image, and as metadata
    the class list and the run's config (SAFETENSORS_SNIPPET rebuilds the model from them)."""
    from safetensors.torch import save

    tensors = {name: p.detach().contiguous() for name, p in src.wrapper.model.named_parameters()}
    tensors["mean_image"] = src.mean
    meta = {"format": "pt", "classes": json.dumps(src.classes), "about": json.dumps(src.about),
            "config.toml": dumps_toml(src.cfg)}
    staging.write(out, save(tensors, metadata=meta))



WRITERS = {"torchscript": torchscript, "onnx": onnx_graphs, "safetensors": safetensors_file}


# ----------------------------------------------------------------------------- the files

def ten_view_path(out: Path) -> Path:
    """The ten-view graph beside the forward one: RUN.onnx -> RUN.ten_view.onnx."""
    stem = out.name[:-len(SUFFIX["onnx"])] if out.name.endswith(SUFFIX["onnx"]) else out.name
    return out.with_name(stem + TEN_VIEW_SUFFIX)


def named_format(out: Path | None) -> str | None:
    """The format whose suffix `out` has (alexnet.onnx -> "onnx"), if any."""
    return next((f for f, s in SUFFIX.items() if out is not None and out.name.endswith(s)), None)


def choose_format(fmt: str | None, out: Path | None) -> str:
    """--format as given, else the one --out's suffix names, else TorchScript (as before there
    was a choice). An --out named for another format than --format is a mistake: say so."""
    named = named_format(out)
    if fmt is None:
        return named or "torchscript"
    if named and fmt != "all" and named != fmt:
        raise UserError(f"--out {out} is named for {named}, not --format {fmt}: "
                        f"name it {out.with_name(out.name[:-len(SUFFIX[named])] + SUFFIX[fmt])}")
    return fmt


def outputs(fmt: str, out: Path) -> dict[str, Path]:
    """{format: file}. For "all", `out` is the common name, each format adding its suffix."""
    if fmt != "all":
        return {fmt: out}
    named = named_format(out)
    stem = out.name[:-len(SUFFIX[named])] if named else out.name
    return {f: out.with_name(stem + s) for f, s in SUFFIX.items()}


def all_files(paths: dict[str, Path]) -> list[Path]:
    return [p for f, path in paths.items() for p in ([path, ten_view_path(path)] if f == "onnx" else [path])]


def require(fmt: str) -> None:
    """The optional packages a format needs (the `export` extra of setup.py), or one line naming them."""
    needed = [m for f in (SUFFIX if fmt == "all" else [fmt]) for m in NEEDS[f]]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--format {fmt} needs {' and '.join(missing)}, not installed: "
                        f"{sys.executable} -m pip install {' '.join(missing)} "
                        f"(or pip install -e '.[export]' in this repository)")


def check_out(paths: list[Path]) -> None:
    """Every output can be written: not a directory, under directories (made here if missing)
    where a file can be created. Checked before the slow work, in one line."""
    for path in paths:
        if path.is_dir():
            raise UserError(f"{path} is a directory: choose another --out")
        above = next(p for p in path.parents if p.exists())
        if not above.is_dir():
            raise UserError(f"--out {path}: {above} is a file, not a directory")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = files.tmp_name(path)
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise UserError(f"--out {path} cannot be written: {e.strerror or e}") from None


class Staging:
    """Files written under their temporary names (repro.files.tmp_name) and renamed into place
    together when every format is written and checked: a failure anywhere leaves no partial file
    and any earlier export as it was."""

    def __init__(self):
        self.paths: list[Path] = []

    def tmp(self, path: Path) -> Path:
        return files.tmp_name(path)

    def write(self, path: Path, content) -> None:
        """`content`: bytes, or a function that writes to a binary file."""
        self.paths.append(path)
        try:
            with open(self.tmp(path), "wb") as f:
                content(f) if callable(content) else f.write(content)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        done = 0
        try:
            if kind is None:
                for path in self.paths:
                    files.replace(self.tmp(path), path)
                    done += 1
        finally:
            for path in self.paths[done:]:
                self.tmp(path).unlink(missing_ok=True)


def export(run_dir: str | Path, out: str | Path | None = None, data_override=None,
           fmt: str | None = None) -> list[Path]:
    """Write the run's latest checkpoint in `fmt` (one of FORMATS; None: choose_format) to `out`
    (default RUN_DIR/export/<run name> plus the format's suffix); returns the files written."""
    run_dir = Path(run_dir)
    fmt = choose_format(fmt, Path(out) if out else None)
    require(fmt)
    name = run_dir.name + SUFFIX.get(fmt, "")
    out = Path(out) if out else run_dir / "export" / name
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: name a file in it, e.g. {out / name}"
                        + (" (each format adds its suffix)" if fmt == "all" else ""))
    src = load_source(run_dir, data_override)
    paths = outputs(fmt, out)
    check_out(all_files(paths))
    with Staging() as staging:
        for kind, path in paths.items():
            start = time.monotonic()
            print(f"export: {kind} -> {path}", file=sys.stderr, flush=True)
            WRITERS[kind](src, staging, path)
            print(f"  {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    return all_files(paths)


# ----------------------------------------------------------------------------------- CLI

def describe(path: Path, fmt: str) -> str:
    """What a written file holds; `fmt`: the format asked for (a file named without a format's
    suffix still holds it)."""
    if path.name.endswith(TEN_VIEW_SUFFIX):
        return "images uint8 (B, 256, 256, 3) -> probs (B, C), 10 views averaged"
    return {"torchscript": "forward(uint8 crops (B, 224, 224, 3)) -> logits; ten_view(uint8 images "
                           "(B, 256, 256, 3)) -> probabilities",
            "onnx": "crops uint8 (B, 224, 224, 3) -> logits (B, C)",
            "safetensors": "weights (towers.0.conv1.weight, ...) and mean_image; classes and "
                           "config.toml in the metadata"}[named_format(path) or fmt]


def parse_args(argv):
    p = ArgumentParser(
        prog="./run.sh export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A trained run as files for use outside this project: TorchScript (plain "
                    "torch.jit.load), ONNX (onnxruntime) or safetensors (weights, class list, "
                    "mean image and config).",
        epilog=__doc__.split("\n\n", 1)[1] + "\nONNX_SNIPPET:\n\n" + _indent(ONNX_SNIPPET)
        + "\nSAFETENSORS_SNIPPET (this project's repro.config and repro.model rebuild the model):\n\n"
        + _indent(SAFETENSORS_SNIPPET))
    p.add_argument("run_dir", help="a trained run (runs/<name>)")
    p.add_argument("--format", choices=FORMATS,
                   help="torchscript, onnx, safetensors or all (default: the one --out's suffix names "
                        "(.pt, .onnx, .safetensors), else torchscript)")
    p.add_argument("--out", help="output file (default RUN_DIR/export/<run name>.pt, .onnx or "
                                 ".safetensors); onnx writes NAME.ten_view.onnx beside it; with "
                                 "--format all, the common name to which each format adds its suffix; "
                                 "a file already there is replaced, once the new one is complete")
    p.add_argument("--data", help="prepared data with manifest.json and stats.h5 (default: the run's own)")
    return p.parse_args(argv)


def _indent(text: str) -> str:
    return "".join(f"    {line}" if line.strip() else line for line in text.splitlines(True))


def main(argv) -> int:
    args = parse_args(argv)
    fmt = choose_format(args.format, Path(args.out) if args.out else None)
    for path in export(args.run_dir, args.out, args.data, args.format):
        print(f"written {path} ({path.stat().st_size / 1e6:.1f} MB): {describe(path, fmt)}")
    return 0
