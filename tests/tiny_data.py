"""A tiny prepared dataset for tests: a few classes, a few dozen 256x256 images, written through
the shard schema (data_prep.shards) exactly as `./run.sh prepare` writes ImageNet; the small
config that trains on it in seconds; and a run directory holding an untrained model.

Each class has its own colour and stripe orientation (plus noise), so a tiny training run can
learn something. Generation is fast (well under a second for the defaults).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep import shards
from data_prep.stats import fix_signs
from repro import files

SIZE = shards.IMAGE_SIZE
REPO = Path(__file__).resolve().parent.parent

# The paper's config shrunk to train in seconds on a CPU on make_tiny_shards' data (4 classes).
SMALL = ["model.num_classes=4", "data.batch_size=8", "data.workers=0", "eval.batch_size=16",
         "train.log_every=1", "train.placement=single", "train.device=cpu",
         "model.widths.conv1=16", "model.widths.conv2=32", "model.widths.conv3=48",
         "model.widths.conv4=48", "model.widths.conv5=32", "model.widths.fc6=64", "model.widths.fc7=64"]

# At the SMALL widths N(0, 0.01) and biases of 1 leave the output almost constant whatever the
# image; these make a few steps of training (and tests of views and neighbours) meaningful.
SIGNAL = [f"init.weight_std.{layer}=0.05" for layer in
          ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")] + \
         [f"init.bias.{layer}=0.1" for layer in ("conv2", "conv4", "conv5", "fc6", "fc7")] + ["optim.lr=0.02"]


def small_config(*extra, config: str = "alexnet_2gpu.toml"):
    """A paper config (paper_configs/<config>) with the SMALL overrides and any `extra` ones."""
    from repro.config import load_config

    return load_config(REPO / "paper_configs" / config, SMALL + list(extra))


def _images(rng: np.random.Generator, labels: np.ndarray, classes: int) -> np.ndarray:
    """uint8 [N, 256, 256, 3]: a class colour, class-oriented stripes, a random shift and noise."""
    hues = np.linspace(0, 2 * np.pi, classes, endpoint=False)
    colours = 128 + 80 * np.stack([np.cos(hues), np.cos(hues - 2.1), np.cos(hues + 2.1)], 1)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.empty((len(labels), SIZE, SIZE, 3), np.uint8)
    for i, c in enumerate(labels):
        angle = np.pi * c / classes
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / 6.0 + phase)  # [256, 256]
        noise = rng.normal(0, 20, (SIZE, SIZE, 3)).astype(np.float32)
        img = colours[c].astype(np.float32) + 40 * stripes[..., None] + noise
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _stats(images: np.ndarray) -> shards.Stats:
    """Mean image and RGB covariance on the 0-255 scale, the eigenvectors' signs fixed as prepare
    fixes them (data_prep.stats.fix_signs), so that the tiny runs' lighting noise does not depend
    on the machine's LAPACK."""
    x = images.astype(np.float64)
    mean = x.mean(0)
    pixels = x.reshape(-1, 3)
    cov = np.cov(pixels, rowvar=False, bias=True)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1]
    return shards.Stats(mean, cov, values[order], fix_signs(vectors[:, order]), len(pixels))


def make_tiny_shards(root: str | Path, n_train: int = 40, n_val: int = 12, classes: int = 4,
                     seed: int = 0, train_shards: int = 3) -> Path:
    """Write train-0000{0..train_shards-1}.h5, val-00000.h5, stats.h5 and manifest.json under root.

    Train shards get uneven sizes (so readers cannot assume equal shards); the last may be
    smaller. Returns root as a Path.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wnids = [f"n{10000000 + 1111 * c:08d}" for c in range(classes)]
    words = [f"class {c}" for c in range(classes)]
    manifest_splits = {}
    train_images = None
    for split, n, parts in (("train", n_train, train_shards), ("val", n_val, 1)):
        labels = np.arange(n) % classes
        if split == "train":
            labels = rng.permutation(labels)  # shuffled once, as the writer does
        images = _images(rng, labels, classes)
        if split == "train":
            train_images = images
        # Uneven split points: e.g. 40 over 3 shards -> 16, 13, 11.
        weights = np.arange(parts, 0, -1) + parts
        bounds = np.concatenate([[0], np.cumsum(weights) * n // weights.sum()])
        entries = []
        for index in range(parts):
            lo, hi = int(bounds[index]), int(bounds[index + 1])
            name = shards.shard_name(split, index)
            shards.write_shard(root / name, images[lo:hi], labels[lo:hi],
                               ilsvrc_ids=labels[lo:hi] + 1,
                               filenames=[f"{split}_{i:05d}.JPEG" for i in range(lo, hi)],
                               class_wnids=wnids, class_words=words, split=split, index=index)
            entries.append({"name": name, "count": hi - lo, "bytes": (root / name).stat().st_size,
                            "sha256": files.sha256(root / name)})
        manifest_splits[split] = {"count": n, "per_class": np.bincount(labels, minlength=classes)
                                  .tolist(), "shards": entries}
    shards.write_stats(root, _stats(train_images))
    shards.write_manifest(root, {
        "schema_version": shards.SCHEMA_VERSION, "year": 2012, "seed": seed, "resize": "synthetic",
        "classes": [{"index": c, "wnid": wnids[c], "words": words[c], "ilsvrc_id": c + 1}
                    for c in range(classes)],
        "splits": manifest_splits, "sources": [], "rejects": {"count": 0, "file": ""},
    })
    return root


def fake_run(root, run_dir, seed: int) -> Path:
    """A run directory holding an untrained small model (initialised from `seed`) as its checkpoint."""
    from repro import checkpoint, rundir
    from repro.model import AlexNet

    cfg = small_config(*SIGNAL, f"train.seed={seed}")
    run_dir.mkdir(parents=True)
    rundir.write_config(run_dir, cfg)
    rundir.write_provenance(run_dir, cfg, root, {})
    checkpoint.save(run_dir, 1, AlexNet.from_config(cfg), None, {"step": 1, "epoch": 0}, keep=1)
    return run_dir
