"""Training shards of random pixels, written straight through the shard schema (data_prep/shards.py):
what the GPU check (`./run.sh bench --gpu`, repro/gpu_check.py) feeds the real loader and trainer
with, on a machine that has no ImageNet and no network.

`./run.sh prepare` would need JPEG archives and decodes every image; timing the input pipeline
needs only shards of the right size and layout, so these are random uint8 images (a GB in
seconds) with labels spread over the classes, the mean image and RGB covariance of a sample of
them (`stats.h5`, on the 0-255 scale, as prepare writes it), and a `manifest.json` that the
readers accept. The images carry no signal: nothing trained on them learns anything.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep import shards
from data_prep.stats import Moments

SHARD_SIZE = 1024  # images per shard, as prepare writes them
STATS_SAMPLE = 64  # images the statistics are computed over (random pixels: more adds nothing)


def random_shards(root: str | Path, images: int, classes: int, seed: int = 0,
                  shard_size: int = SHARD_SIZE) -> Path:
    """Write train-00000.h5 ... (`images` random 256x256 RGB images, labels 0..classes-1),
    stats.h5 and manifest.json under root (created). Returns root as a Path."""
    if images < 1 or classes < 2:
        raise ValueError(f"need at least one image and two classes, got {images} and {classes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wnids = [f"n{90000000 + c:08d}" for c in range(classes)]
    words = [f"random class {c}" for c in range(classes)]
    labels = rng.integers(0, classes, images)
    entries, sample = [], None
    for index, lo in enumerate(range(0, images, shard_size)):
        hi = min(images, lo + shard_size)
        pixels = rng.integers(0, 256, (hi - lo, shards.IMAGE_SIZE, shards.IMAGE_SIZE, 3), dtype=np.uint8)
        if sample is None:
            sample = pixels[:STATS_SAMPLE]
        name = shards.shard_name("train", index)
        with shards.ShardWriter(root / name, hi - lo, wnids, words, "train", index, durable=False) as w:
            w.append(pixels, labels[lo:hi], labels[lo:hi] + 1, [f"random_{i:07d}.JPEG" for i in range(lo, hi)])
        entries.append({"name": name, "count": hi - lo, "bytes": (root / name).stat().st_size, "sha256": ""})
    shards.write_stats(root, _stats(sample))
    shards.write_manifest(root, {
        "schema_version": shards.SCHEMA_VERSION, "year": 2012, "seed": seed, "resize": "random pixels",
        "classes": [{"index": c, "wnid": wnids[c], "words": words[c], "ilsvrc_id": c + 1}
                    for c in range(classes)],
        "splits": {"train": {"count": images, "per_class": np.bincount(labels, minlength=classes).tolist(),
                             "shards": entries}},
        "sources": [], "rejects": {"count": 0, "file": ""}})
    return root


def _stats(images: np.ndarray) -> shards.Stats:
    """Mean image, RGB covariance and its eigen-decomposition, as prepare computes them."""
    moments = Moments()
    moments.add(images)
    return moments.to_stats()
