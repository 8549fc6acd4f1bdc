"""`./run.sh export RUN_DIR [--out FILE]`: a trained run as one TorchScript file that plain
PyTorch loads and runs, without this project:

    extra = {"classes.json": "", "about.json": ""}  # filled in by torch.jit.load
    model = torch.jit.load("alexnet.pt", _extra_files=extra)
    logits = model(crops)            # uint8 (B, 224, 224, 3) RGB crops -> logits (B, C)
    probs = model.ten_view(images)   # uint8 (B, 256, 256, 3) prepared images -> (B, C), 10 views averaged
    classes = json.loads(extra["classes.json"])   # [[wnid, words], ...] in class-index order

Inputs are raw uint8 RGB, channels last, on the 0-255 scale; the mean image is subtracted inside.
`forward` subtracts the centre 224x224 crop of the mean image (exactly what evaluation does for
the centre view); `ten_view` takes the paper's ten views of prepared 256x256 images (shorter
side resized to 256, central crop) and subtracts the mean at each view's position, as
`./run.sh eval` does, and averages the ten softmax outputs.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from repro import augment, data, evaluate
from repro.errors import ArgumentParser

CROP = augment.CROP


class Exported(nn.Module):
    """The network with its input preparation: uint8 in, logits or averaged probabilities out."""

    def __init__(self, model, normalizer):
        super().__init__()
        self.model = model.requires_grad_(False)  # inference only: outputs carry no autograd graph
        offsets = torch.as_tensor(data.view_offsets("ten"))
        self.register_buffer("mean_centre", normalizer.mean_centre.clone())  # (224, 224, 3)
        self.register_buffer("mean_views", normalizer.mean_crops(offsets).expand(len(offsets), CROP, CROP, 3).clone())
        self.offsets = [tuple(int(v) for v in row) for row in offsets.tolist()]

    def forward(self, crops: torch.Tensor) -> torch.Tensor:  # uint8 (B, 224, 224, 3) -> (B, C)
        x = crops.float() - self.mean_centre
        return self.model(x.permute(0, 3, 1, 2))

    def ten_view(self, images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 256, 256, 3) -> (B, C)
        views = torch.stack([augment.crop_view(images, t, left, m, CROP) for t, left, m in self.offsets], 1)
        x = views.float() - self.mean_views  # (B, 10, 224, 224, 3)
        logits = self.model(x.reshape(-1, CROP, CROP, 3).permute(0, 3, 1, 2))  # (B * 10, C)
        return torch.softmax(logits, dim=1).reshape(-1, len(self.offsets), logits.shape[1]).mean(dim=1)


def export(run_dir: str | Path, out: str | Path, data_override=None) -> Path:
    """Trace the run's latest checkpoint into a TorchScript file (methods forward and ten_view)."""
    # The plain LRN: tracing records only the operations run in this thread, and the fast LRN
    # hands its work to worker threads (repro.lrn).
    model, cfg = evaluate.load_run(run_dir, "cpu", overrides=["speed.fast_lrn=false"])
    root = evaluate.data_root(run_dir, data_override)
    wrapper = Exported(model, data.make_normalizer(root, cfg, "cpu")).eval()
    examples = {"forward": torch.zeros(2, CROP, CROP, 3, dtype=torch.uint8),
                "ten_view": torch.zeros(2, 256, 256, 3, dtype=torch.uint8)}
    # TorchScript: one file with both methods and the class list, loaded by torch.jit.load in any
    # torch version. torch 2.13 marks it deprecated in favour of torch.export (one program per
    # file); the warnings say nothing the user can act on here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        traced = torch.jit.trace_module(wrapper, examples, check_trace=False)
    ckpt = evaluate.latest_checkpoint(Path(run_dir))
    about = {"run": Path(run_dir).name, "checkpoint": str(ckpt), "config": cfg.description,
             "mean": cfg.augment.mean, "num_classes": cfg.model.num_classes,
             "forward": "uint8 (B, 224, 224, 3) RGB crops -> logits (B, C); centre crop of the mean image subtracted",
             "ten_view": "uint8 (B, 256, 256, 3) prepared RGB images -> probabilities (B, C), 10 views averaged"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.save(traced, str(out), _extra_files={
            "classes.json": json.dumps(data.class_names(root)), "about.json": json.dumps(about, indent=1)})
    return out


def parse_args(argv):
    p = ArgumentParser(
        prog="./run.sh export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A trained run as one TorchScript file for use outside this project "
                    "(plain torch.jit.load; no repro code needed).", epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run_dir", help="a trained run (runs/<name>)")
    p.add_argument("--out", help="output file (default RUN_DIR/export/<run name>.pt)")
    p.add_argument("--data", help="prepared data with manifest.json and stats.h5 (default: the run's own)")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    out = export(run_dir, args.out or run_dir / "export" / f"{run_dir.name}.pt", args.data)
    print(f"written {out} ({out.stat().st_size / 1e6:.1f} MB): forward(uint8 crops (B, 224, 224, 3)) -> logits; "
          f"ten_view(uint8 images (B, 256, 256, 3)) -> probabilities")
    return 0
