"""`./run.sh prepare --verify DIR [--source SRC]`: re-read every shard and check it, and everything
else manifest.json promises, against this code.

Checked, every mismatch reported (not only the first):
- manifest.json itself: its structure (shards.check_manifest: one line, status 2, when it is not
  valid JSON or lacks a key), its schema version, year, resize and training order against this
  code's (a directory prepared by another version of the code, or edited, is named as such), the
  splits its year has (train and val; test for ILSVRC-2010), each shard's size at most
  shard_size, the per-class counts at most limit_per_class, and every class with a training image;
- the shards: every listed shard exists and no other does (in any split, listed or not); each
  shard's size and SHA-256, image count, class list, labels (in range, and their ILSVRC ids those
  of their classes), that its images are stored contiguously and are all there (a shard cut
  short, even while it is read, is reported, never a crash); the training images in the order the
  seed gives (sorted by the keyed hash prepare uses), validation and test images in file order
  (for the official archives and extracted trees, whose order that is);
- the per-class counts against manifest.json and stats.h5; the mean image and covariance
  recomputed from the training shards against stats.h5; rejects.tsv's lines against the
  manifest's count and per-split counts;
- with --source SRC only: the sources, each archive's size and SHA-256 (read in full) or each
  folder's listing, against the manifest's `sources` (without --source they are not read: a
  line says so).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data_prep import images, shards, sources
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
    seed: int | None = None  # training shards: the seed of their order (None: not checked)
    file_order: bool = True  # validation and test shards: in file-name order (the official layouts)


def check_shard(task: _Task, report=None) -> dict:
    """Re-read one shard; returns its problems, per-class counts, (train) moments and the first
    and last of its sort keys (for the order across shards). A shard that cannot be read, or is
    cut short while it is read, is a problem, not an exception."""
    name = Path(task.path).name
    out = {"problems": [], "per_class": None, "moments": None, "first": None, "last": None}
    try:
        _check_shard(task, out)
    except (OSError, ValueError, KeyError, TypeError) as e:
        out["problems"].append(f"{name}: unreadable as a shard: {' '.join(str(e).split())[:200]}")
        out["per_class"] = out["moments"] = None
    if report:
        report(task.listed["count"])
    return out


def _check_shard(task: _Task, out: dict) -> None:
    p, name, listed = Path(task.path), Path(task.path).name, task.listed
    problems = out["problems"]
    size = p.stat().st_size
    if size != listed["bytes"]:
        problems.append(f"{name}: {size} bytes, manifest.json says {listed['bytes']}")
    sha = files.sha256(p)
    if sha != listed["sha256"]:
        problems.append(f"{name}: SHA-256 {sha[:16]}... differs from manifest.json's {listed['sha256'][:16]}...")
    meta = shards.read_meta(p)
    with h5py.File(p, "r") as f:
        labels = f["labels"][:].astype(np.int64)
        ids = f["ilsvrc_ids"][:].astype(np.int64)
        names = [s.decode() if isinstance(s, bytes) else s for s in f["filenames"][:]]
        wnids = [s.decode() if isinstance(s, bytes) else s for s in f["class_wnids"][:]]
        words = [s.decode() if isinstance(s, bytes) else s for s in f["class_words"][:]]
        split, index = str(f.attrs["split"]), int(f.attrs["index"])
    if (split, shards.shard_name(split, index)) != (task.split, name):
        problems.append(f"{name}: its attributes say split {split!r}, index {index}")
    if meta.images_offset is None:
        problems.append(f"{name}: images are not stored contiguously (cannot be memory-mapped)")
    if meta.count != listed["count"]:
        problems.append(f"{name}: {meta.count} images, manifest.json says {listed['count']}")
    if not (len(labels) == len(ids) == len(names) == meta.count):
        problems.append(f"{name}: {meta.count} images but {len(labels)} labels, {len(ids)} ILSVRC ids, "
                        f"{len(names)} file names")
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
    if not bad.any() and len(labels) == len(names):
        keys = _order_keys(task, labels, names)
        if keys is not None:
            if any(a > b for a, b in zip(keys, keys[1:])):
                problems.append(f"{name}: its images are not in the order "
                                + (f"seed {task.seed} gives" if task.split == "train" else "of their file names"))
            if keys:
                out["first"], out["last"] = keys[0], keys[-1]
    if meta.images_offset is not None and task.split == "train":  # (val and test shards: their
        out["moments"] = Moments.of_shard(meta)  # size and SHA-256 above say if one was cut short)


def _order_keys(task: _Task, labels, names: list[str]) -> list | None:
    """What the images of a shard are sorted by: training images by the keyed hash of the seed
    (prepare.train_order_key), validation and test images by file name (then label)."""
    if task.split != "train":
        return [(n, int(label)) for n, label in zip(names, labels)] if task.file_order else None
    if task.seed is None:
        return None
    from data_prep.prepare import train_order_key
    return [(train_order_key(task.seed, task.wnids[label], n), int(label), n) for n, label in zip(names, labels)]


def check_promises(manifest: dict) -> list[str]:
    """What the manifest says about how the data was made, against this code (see the module
    docstring); the shards themselves are checked by check_shard."""
    from data_prep.prepare import TRAIN_ORDER
    problems = []
    year = manifest["year"]
    if year not in sources.ARCHIVES:
        problems.append(f"manifest.json: year {year} is not one this code prepares ({', '.join(map(str, sources.ARCHIVES))})")
    else:
        need = ["train", "val"] + (["test"] if year == 2010 else [])
        for split in need:
            if split not in manifest["splits"]:
                problems.append(f"manifest.json: ILSVRC-{year} has a {split} split, the manifest lists none")
    if manifest["resize"] != images.DESCRIPTION:
        problems.append(f"manifest.json: images resized by {manifest['resize']!r}, not by this code's "
                        f"{images.DESCRIPTION!r}: prepare again with this code (or verify with the one that prepared it)")
    order = manifest.get("train_order")
    if order != TRAIN_ORDER:
        problems.append(f"manifest.json: training order {order!r}, not this code's {TRAIN_ORDER!r}")
    size = manifest.get("shard_size")
    limit = manifest.get("limit_per_class", 0)
    classes = manifest["classes"]
    for split, info in manifest["splits"].items():
        for s in info["shards"]:
            if size and s["count"] > size:
                problems.append(f"{s['name']}: {s['count']} images, more than the shard size {size}")
        if limit and max(info["per_class"], default=0) > limit:
            problems.append(f"{split}: more than limit_per_class = {limit} images in a class")
        names = [s["name"] for s in info["shards"]]
        if names != [shards.shard_name(split, k) for k in range(len(names))]:
            problems.append(f"{split}: the shards listed are not {split}-00000.h5 onwards, in order")
    train = manifest["splits"].get("train")
    if train is not None:
        empty = [c["wnid"] for c, n in zip(classes, train["per_class"]) if n == 0]
        if empty:
            more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            problems.append(f"train: {len(empty)} classes have no training image: {', '.join(empty[:5])}{more}")
    wnids = [c["wnid"] for c in classes]
    if wnids != sorted(wnids) or len(set(wnids)) != len(wnids):
        problems.append("manifest.json: the classes are not in sorted, distinct WordNet id order")
    return problems


def verify(out: Path, workers: int = 1, progress=None, source: Path | None = None) -> list[str]:
    """Every mismatch between the directory `out` and what its manifest.json promises (see the
    module docstring); with `source`, also between the sources there and the manifest's."""
    out = Path(out)
    manifest = load_manifest(out)
    classes = manifest["classes"]
    wnids, words = [c["wnid"] for c in classes], [c["words"] for c in classes]
    ids = [c["ilsvrc_id"] for c in classes]
    problems = check_promises(manifest)
    seed = manifest["seed"] if manifest.get("train_order") == _train_order() else None
    tasks: list[_Task] = []
    for split in shards.SPLITS:
        info = manifest["splits"].get(split, {"shards": []})
        listed = {s["name"] for s in info["shards"]}
        for p in shards.list_shards(out, split):
            if p.name not in listed:
                problems.append(f"{p.name}: on disk but not listed in manifest.json")
        for s in info["shards"]:
            if not (out / s["name"]).is_file():
                problems.append(f"{s['name']}: listed in manifest.json but missing")
            else:
                tasks.append(_Task(str(out / s["name"]), split, s, wnids, words, ids, seed,
                                   manifest.get("layout") in ("archives", "tree")))
    moments = Moments()

    def merge(r: dict) -> None:  # as results arrive, so that ImageNet's 1,252 sums are never held at once
        if r["moments"] is not None:
            moments.merge(r["moments"])
            r["moments"] = None

    results = parallel_map(check_shard, tasks, workers, progress, on_result=merge)
    per_class: dict[str, np.ndarray] = {}
    complete = True  # every shard read: the sums can be compared with stats.h5
    previous: dict[str, tuple] = {}
    for task, r in zip(tasks, results):
        problems += r["problems"]
        if r["per_class"] is not None:
            per_class[task.split] = per_class.get(task.split, 0) + r["per_class"]
        else:
            complete = False
        if r["first"] is not None:
            last = previous.get(task.split)
            if last is not None and last[1] > r["first"]:
                problems.append(f"{Path(task.path).name}: its images come before those of {last[0]} in the order "
                                + (f"seed {seed} gives" if task.split == "train" else "of their file names"))
            previous[task.split] = (Path(task.path).name, r["last"])
    for split, info in manifest["splits"].items():
        got = per_class.get(split, np.zeros(len(classes), np.int64))
        if list(got) != list(info["per_class"]):
            problems.append(f"{split}: images per class in the shards differ from manifest.json's per_class")
        if int(got.sum()) != info["count"]:
            problems.append(f"{split}: the shards hold {int(got.sum())} images, manifest.json says {info['count']}")
    problems += _check_stats(out, moments, per_class, manifest, complete)
    problems += _check_rejects(out, manifest)
    if source is not None:
        problems += check_sources(manifest, Path(source))
    return problems


def _train_order() -> str:
    from data_prep.prepare import TRAIN_ORDER
    return TRAIN_ORDER


def load_manifest(out: Path) -> dict:
    """manifest.json, or a UserError (one line) when there is none or it is damaged."""
    try:
        return shards.read_manifest(out)
    except FileNotFoundError as e:
        raise UserError(f"{e}: run './run.sh prepare' to finish it") from None
    except ValueError as e:
        raise UserError(str(e)) from None


def _check_stats(out: Path, moments: Moments, per_class: dict, manifest: dict, complete: bool) -> list[str]:
    if not (out / shards.STATS).is_file():
        return [f"{shards.STATS} is missing"]
    try:
        stats = shards.read_stats(out)
    except (OSError, KeyError, ValueError) as e:
        return [f"{shards.STATS} is unreadable: {' '.join(str(e).split())[:200]}"]
    problems = []
    if set(stats.counts or {}) != set(manifest["splits"]):
        problems.append(f"{shards.STATS}: counts for splits {sorted(stats.counts or {})}, manifest.json lists "
                        f"{sorted(manifest['splits'])}")
    for split, counts in per_class.items():
        have = (stats.counts or {}).get(split)
        if have is None or list(have) != list(counts):
            problems.append(f"{shards.STATS}: counts/{split} differ from the images per class in the shards")
    if not complete:
        return problems  # some shard unreadable (reported): its sums are missing, nothing to compare
    if moments.images == 0:
        return problems + [f"{shards.STATS}: no training images to compare it with"]
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
    return problems


def _check_rejects(out: Path, manifest: dict) -> list[str]:
    info = manifest["rejects"]
    path = out / (info["file"] or "rejects.tsv")
    if not path.is_file():
        return [f"{path.name} is missing"]
    lines = path.read_text(errors="replace").splitlines()[1:]
    if len(lines) != info["count"]:
        return [f"{path.name} lists {len(lines)} rejects, manifest.json says {info['count']}"]
    per_split: dict[str, int] = {}
    for line in lines:
        split = line.split("\t", 1)[0]
        per_split[split] = per_split.get(split, 0) + 1
    if "per_split" in info and per_split != info["per_split"]:
        return [f"{path.name}: rejects per split {per_split}, manifest.json says {info['per_split']}"]
    return []


def check_sources(manifest: dict, root: Path, say=lambda text: None) -> list[str]:
    """Each source the manifest names, in `root`: an archive's size and SHA-256 (read in full),
    a folder's listing hash."""
    problems = []
    if not root.is_dir():
        raise UserError(f"--source {root} is not a directory")
    for s in manifest["sources"]:
        p = root / s["name"]
        if not p.exists():
            problems.append(f"source {s['name']}: not in {root}")
            continue
        if s["hash_of"] == "listing":
            if not p.is_dir() or sources.listing_sha256(p)[1] != s["sha256"]:
                problems.append(f"source {s['name']}: its listing (file names and sizes) differs from the one "
                                f"the shards were made from")
            continue
        size = p.stat().st_size if p.is_file() else -1
        if size != s["bytes"]:
            problems.append(f"source {s['name']}: {size} bytes, manifest.json says {s['bytes']}")
            continue
        say(f"hashing {p} ({size / 1e9:.1f} GB)")
        if files.sha256(p) != s["sha256"]:
            problems.append(f"source {s['name']}: SHA-256 differs from manifest.json's (the shards were made "
                            f"from other bytes)")
    return problems


def verify_main(out: Path, workers: int, quiet: bool = False, source: Path | None = None) -> int:
    manifest = load_manifest(out)
    total = sum(info["count"] for info in manifest["splits"].values())
    say = (lambda text: None) if quiet else (lambda text: print(f"verify: {text}", file=sys.stderr, flush=True))
    with (Progress(total, "verify", stream=sys.stderr) if not quiet else _Null()) as bar:
        problems = verify(out, workers, None if quiet else bar)
    if source is not None:
        problems += check_sources(manifest, source, say)
    for p in problems:
        print(f"verify: {p}")
    n_shards = sum(len(info["shards"]) for info in manifest["splits"].values())
    if problems:
        print(f"verify: {len(problems)} mismatch(es) in {out}")
        return 1
    checked = f" and the sources in {source}" if source is not None else ""
    print(f"verify: OK: {n_shards} shards, {total:,} images in {out}{checked} match manifest.json and stats.h5"
          + ("" if source is not None else " (sources not read: add --source DIR to check them too)"))
    return 0


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None
