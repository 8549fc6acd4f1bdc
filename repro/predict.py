"""`./run.sh predict RUN_DIR IMAGE...`: the top-5 classes of any image file with a trained run.

Each image is prepared as the training data was (decoded to RGB whatever its mode: greyscale,
CMYK, palette, PNG; the shorter side resized to 256 with Pillow's antialiased bicubic filter, the
other side rounded half up; the central 256x256 crop; paper section 2), then the paper's 10 views
are taken and the softmax outputs of the ten averaged (section 6). Class names and the mean
image come from the run's prepared data (manifest.json and stats.h5 are all that is needed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from data_prep import images as image_prep
from repro import augment, data, evaluate
from repro.errors import ArgumentParser, UserError, at_least, device


def prepare_image(path: str | Path) -> np.ndarray:
    """An image file -> uint8 [256, 256, 3], exactly as `prepare` wrote the training shards."""
    try:
        return image_prep.load(Path(path).read_bytes())
    except IsADirectoryError:
        raise UserError(f"{path} is a folder: give the image files in it (e.g. {Path(path) / '*.JPEG'})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except image_prep.BadImage as e:
        raise UserError(f"cannot read image {path}: {e}") from None


@torch.no_grad()
def ten_view_probs(model, normalizer, images: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """uint8 [N, 256, 256, 3] -> the softmax outputs of the ten views, averaged: [N, C]."""
    offsets = data.view_offsets("ten")
    out = []
    for lo in range(0, len(images), batch_size):
        views = torch.from_numpy(augment.ten_view(images[lo:lo + batch_size]))  # [B, 10, 224, 224, 3]
        x = normalizer.views(views, offsets).to(model.placement.output_device)
        out.append(evaluate.average_views(model(x), len(offsets)).cpu())
    return torch.cat(out)


def parse_args(argv):
    p = ArgumentParser(
        prog="./run.sh predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The top-5 classes of image files with a trained run: each image prepared as the "
                    "training data was (RGB, shorter side to 256, central 256x256 crop), then 10 views "
                    "with their softmax outputs averaged.",
        epilog="Any image file Pillow reads (JPEG, PNG, greyscale, CMYK, ...). A file that cannot be read is "
               "named on stderr and skipped; the exit status is then 1 (2 if no file could be read).\n\n"
               "Example:\n  ./run.sh predict runs/alexnet_2gpu cat.jpg dog.png")
    p.add_argument("run_dir", help="a trained run (runs/<name>)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--data", help="prepared data with manifest.json and stats.h5 (default: the run's own)")
    p.add_argument("--top", type=at_least(1), default=5, help="classes shown per image (default 5)")
    p.add_argument("--device", type=device, default="auto", help="cpu, cuda, ... (default: a GPU if any)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    model, cfg = evaluate.load_run(args.run_dir, args.device)
    root = evaluate.data_root(args.run_dir, args.data)
    evaluate.check_data(Path(args.run_dir), root, None)  # the class names must be the run's classes
    names = data.class_names(root)
    normalizer = data.make_normalizer(root, cfg, model.placement.output_device)
    read, paths, skipped = [], [], []
    for path in args.images:  # an unreadable file is named and skipped, the others predicted
        try:
            read.append(prepare_image(path))
            paths.append(path)
        except UserError as e:
            skipped.append(str(e))
    if not read:
        raise UserError(skipped[0] if len(skipped) == 1 else f"none of the {len(skipped)} files could be read "
                        f"(the first: {skipped[0]})")
    for reason in skipped:
        print(f"predict: skipped: {reason}", file=sys.stderr)
    probs = ten_view_probs(model, normalizer, np.stack(read))
    results = []
    for path, p in zip(paths, probs):
        values, classes = p.topk(min(args.top, len(p)))
        results.append({"image": str(path), "top": [
            {"class": int(c), "wnid": names[c][0], "words": names[c][1], "prob": float(v)}
            for v, c in zip(values, classes.tolist())]})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["image"])
            for i, t in enumerate(r["top"], 1):
                print(f"  {i}. {t['prob']:6.1%}  {t['words']} ({t['wnid']})")
    if skipped:
        print(f"predict: {len(skipped)} of {len(args.images)} files skipped (above)", file=sys.stderr)
        return 1
    return 0
