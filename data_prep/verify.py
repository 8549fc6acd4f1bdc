"""`./run.sh prepare --verify DIR`: re-read every shard and compare it with manifest.json and stats.h5.

Checked: every listed shard exists and no other does; each shard's size and SHA-256, its image
count, its class list, its labels (in range, and their ILSVRC ids those of their classes), that
its images are stored contiguously; the per-class counts against manifest.json and stats.h5; the
mean image and covariance recomputed from the training shards against stats.h5; the number of
lines in rejects.tsv against manifest.json. Every mismatch is reported, not only the first.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data_prep import shards
from data_prep.stats import Moments, compute_stats
from data_prep.workers import parallel_map
from repro import files
from repro.errors import UserError
from repro.progress import Progress


@dataclass
class _Task:
    path: str
    split: str
    listed: dict  # the manifest's record of this shard
    wnids: list[str]
    words: list[str]
    ilsvrc_ids: list[int]


def check_shard(task: _Task, report=None) -> dict:
    """Re-read one shard; returns its problems, per-class counts and (train) moments."""
    p, name, listed = Path(task.path), Path(task.path).name, task.listed
    problems: list[str] = []
    out = {"problems": problems, "per_class": None, "moments": None}
    size = p.stat().st_size
    if size != listed["bytes"]:
        problems.append(f"{name}: {size} bytes, manifest.json says {listed['bytes']}")
    sha = files.sha256(p)
    if sha != listed["sha256"]:
        problems.append(f"{name}: SHA-256 {sha[:16]}... differs from manifest.json's {listed['sha256'][:16]}...")
    try:
        meta = shards.read_meta(p)
        with h5py.File(p, "r") as f:
            labels = f["labels"][:].astype(np.int64)
            ids = f["ilsvrc_ids"][:].astype(np.int64)
            n_names = len(f["filenames"])
            wnids = [s.decode() if isinstance(s, bytes) else s for s in f["class_wnids"][:]]
            words = [s.decode() if isinstance(s, bytes) else s for s in f["class_words"][:]]
            split, index = str(f.attrs["split"]), int(f.attrs["index"])
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"{name}: unreadable as a shard: {e}")
        return out
    if (split, shards.shard_name(split, index)) != (task.split, name):
        problems.append(f"{name}: its attributes say split {split!r}, index {index}")
    if meta.images_offset is None:
        problems.append(f"{name}: images are not stored contiguously (cannot be memory-mapped)")
    if meta.count != listed["count"]:
        problems.append(f"{name}: {meta.count} images, manifest.json says {listed['count']}")
    if not (len(labels) == len(ids) == n_names == meta.count):
        problems.append(f"{name}: {meta.count} images but {len(labels)} labels, {len(ids)} ILSVRC ids, "
                        f"{n_names} file names")
    if wnids != task.wnids or words != task.words:
        problems.append(f"{name}: its class list differs from manifest.json's")
    n_classes = len(task.wnids)
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        problems.append(f"{name}: {int(bad.sum())} labels outside 0..{n_classes - 1}")
        labels = labels[~bad]
        ids = ids[~bad] if len(ids) == len(bad) else ids
    elif len(ids) == len(labels):
        wrong = int((ids != np.asarray(task.ilsvrc_ids, np.int64)[labels]).sum())
        if wrong:
            problems.append(f"{name}: {wrong} ILSVRC ids are not those of their labels' classes")
    out["per_class"] = np.bincount(labels, minlength=n_classes)
    if task.split == "train" and meta.images_offset is not None:
        out["moments"] = Moments.of_shard(meta)
    if report:
        report(meta.count)
    return out


def verify(out: Path, workers: int = 1, progress=None) -> list[str]:
    """Every mismatch between the shards in `out` and its manifest.json and stats.h5."""
    out = Path(out)
    try:
        manifest = shards.read_manifest(out)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    classes = manifest["classes"]
    wnids, words = [c["wnid"] for c in classes], [c["words"] for c in classes]
    ids = [c["ilsvrc_id"] for c in classes]
    problems: list[str] = []
    tasks: list[_Task] = []
    for split, info in manifest["splits"].items():
        listed = {s["name"] for s in info["shards"]}
        for p in shards.list_shards(out, split):
            if p.name not in listed:
                problems.append(f"{p.name}: on disk but not listed in manifest.json")
        for s in info["shards"]:
            if not (out / s["name"]).is_file():
                problems.append(f"{s['name']}: listed in manifest.json but missing")
            else:
                tasks.append(_Task(str(out / s["name"]), split, s, wnids, words, ids))
    moments = Moments()

    def merge(r: dict) -> None:  # as results arrive, so that ImageNet's 1,252 sums are never held at once
        if r["moments"] is not None:
            moments.merge(r["moments"])
            r["moments"] = None

    results = parallel_map(check_shard, tasks, workers, progress, on_result=merge)
    per_class: dict[str, np.ndarray] = {}
    for task, r in zip(tasks, results):
        problems += r["problems"]
        if r["per_class"] is not None:
            per_class[task.split] = per_class.get(task.split, 0) + r["per_class"]
    for split, info in manifest["splits"].items():
        got = per_class.get(split, np.zeros(len(classes), np.int64))
        if list(got) != list(info["per_class"]):
            problems.append(f"{split}: images per class in the shards differ from manifest.json's per_class")
        if int(got.sum()) != info["count"]:
            problems.append(f"{split}: the shards hold {int(got.sum())} images, manifest.json says {info['count']}")
    problems += _check_stats(out, moments, per_class)
    problems += _check_rejects(out, manifest)
    return problems


def _check_stats(out: Path, moments: Moments, per_class: dict) -> list[str]:
    if not (out / shards.STATS).is_file():
        return [f"{shards.STATS} is missing"]
    try:
        stats = shards.read_stats(out)
    except (OSError, KeyError) as e:
        return [f"{shards.STATS} is unreadable: {e}"]
    problems = []
    if moments.images == 0:
        return [f"{shards.STATS}: no training images to compare it with"]
    want = compute_stats(moments.pixel_sum, moments.outer, moments.images)
    if stats.images != moments.images or stats.pixels != want.pixels:
        problems.append(f"{shards.STATS}: says {stats.images} images / {stats.pixels} pixels, the training "
                        f"shards hold {moments.images} / {want.pixels}")
    if stats.mean.shape != want.mean.shape or not np.array_equal(stats.mean, want.mean):
        diff = np.abs(stats.mean - want.mean).max() if stats.mean.shape == want.mean.shape else "shape"
        problems.append(f"{shards.STATS}: the mean image differs from the training shards' (max difference {diff})")
    for name in ("covariance", "eigenvalues"):
        got, ref = getattr(stats, name), getattr(want, name)
        if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-9, atol=1e-9):
            problems.append(f"{shards.STATS}: the {name} differ from the training shards'")
    if stats.eigenvectors.shape != (3, 3) or not np.allclose(np.abs(stats.eigenvectors), np.abs(want.eigenvectors),
                                                             rtol=1e-6, atol=1e-9):
        problems.append(f"{shards.STATS}: the eigenvectors differ from the training shards'")
    for split, counts in per_class.items():
        have = (stats.counts or {}).get(split)
        if have is None or list(have) != list(counts):
            problems.append(f"{shards.STATS}: counts/{split} differ from the images per class in the shards")
    return problems


def _check_rejects(out: Path, manifest: dict) -> list[str]:
    info = manifest.get("rejects", {})
    path = out / info.get("file", "rejects.tsv")
    if not path.is_file():
        return [f"{path.name} is missing"]
    lines = path.read_text().splitlines()[1:]
    if len(lines) != info.get("count", 0):
        return [f"{path.name} lists {len(lines)} rejects, manifest.json says {info.get('count', 0)}"]
    return []


def verify_main(out: Path, workers: int, quiet: bool = False) -> int:
    manifest = None
    try:
        manifest = shards.read_manifest(out)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    total = sum(info["count"] for info in manifest["splits"].values())
    with (Progress(total, "verify", stream=sys.stderr) if not quiet else _Null()) as bar:
        problems = verify(out, workers, None if quiet else bar)
    for p in problems:
        print(f"verify: {p}")
    n_shards = sum(len(info["shards"]) for info in manifest["splits"].values())
    if problems:
        print(f"verify: {len(problems)} mismatch(es) in {out}")
        return 1
    print(f"verify: OK: {n_shards} shards, {total:,} images in {out} match manifest.json and stats.h5")
    return 0


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None
