"""The shard schema: the one place that knows how prepared data is laid out on disk.

Both the writer (data_prep.prepare) and the reader (repro.data) use this module.

A prepared directory holds:
    train-00000.h5, train-00001.h5, ...   one file per shard, training images in one shuffled order
    val-00000.h5, ...                     validation in file order (test-*.h5 for ILSVRC-2010 test)
    stats.h5                              mean image (float64) and the RGB covariance + eigen-decomposition
    manifest.json                         classes, counts, seed, hashes; written last (the "done" mark)

Each shard (HDF5) holds:
    images       uint8 [N, 256, 256, 3]   contiguous, no chunking or compression (memory-mappable);
                                          HWC is channels-last, so no transpose on the way to a GPU
    labels       int16 [N]                class index = position in the sorted list of WordNet ids
    ilsvrc_ids   int16 [N]                the ILSVRC id of the label's synset (from meta.mat; -1 if none)
    filenames    str   [N]                source file name of each image
    class_wnids  str   [C]                WordNet id of each class, sorted
    class_words  str   [C]                its words
    attrs: schema_version, split, index

manifest.json holds (JSON):
    schema_version, year, seed (of the training order), resize (the filter used),
    classes: [{"index", "wnid", "words", "ilsvrc_id"}]   sorted by WordNet id
    splits: {"train": {"count", "per_class": [C ints], "shards": [{"name", "count", "bytes", "sha256"}]}, ...}
    sources: [{"name", "bytes", "sha256"}]               the archives or folders read
    rejects: {"count", "file"}                           images that could not be decoded

Every file is written under a temporary name and renamed when complete, so a reader never sees a
half-written shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

SCHEMA_VERSION = 1
IMAGE_SIZE = 256
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
STATS = "stats.h5"
_STR = h5py.string_dtype(encoding="utf-8")
_SHARD_RE = re.compile(r"^(train|val|test)-(\d{5})\.h5$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.h5"


def tmp_name(path: Path) -> Path:
    """Where a file is written before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def list_shards(root: str | Path, split: str) -> list[Path]:
    """The complete shards of one split, in index order (temporary files are never listed)."""
    root = Path(root)
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        m = _SHARD_RE.match(p.name)
        if m and m.group(1) == split:
            found.append((int(m.group(2)), p))
    return [p for _, p in sorted(found)]


def write_shard(path: str | Path, images: np.ndarray, labels, ilsvrc_ids, filenames,
                class_wnids, class_words, split: str, index: int) -> None:
    """Write one complete shard atomically (temporary name, fsync, rename)."""
    path = Path(path)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n = len(images)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images must be [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.shape}")
    if not (len(labels) == len(ilsvrc_ids) == len(filenames) == n):
        raise ValueError("images, labels, ilsvrc_ids and filenames differ in length")
    tmp = tmp_name(path)
    with h5py.File(tmp, "w") as f:
        # No chunks, no compression: the dataset is one contiguous block that np.memmap can map.
        f.create_dataset("images", data=images)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int16))
        f.create_dataset("ilsvrc_ids", data=np.asarray(ilsvrc_ids, dtype=np.int16))
        f.create_dataset("filenames", data=list(filenames), dtype=_STR)
        f.create_dataset("class_wnids", data=list(class_wnids), dtype=_STR)
        f.create_dataset("class_words", data=list(class_words), dtype=_STR)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["split"] = split
        f.attrs["index"] = index
    _fsync_rename(tmp, path)


def _fsync_rename(tmp: Path, path: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class ShardMeta:
    path: Path
    split: str
    index: int
    count: int
    images_offset: int | None  # byte offset of the contiguous image block, None if not mappable


def read_meta(path: str | Path) -> ShardMeta:
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: shard schema {f.attrs.get('schema_version')} "
                             f"is not {SCHEMA_VERSION}; prepare the data again")
        ds = f["images"]
        offset = ds.id.get_offset() if ds.chunks is None and ds.compression is None else None
        return ShardMeta(Path(path), str(f.attrs["split"]), int(f.attrs["index"]),
                         int(ds.shape[0]), None if offset is None else int(offset))


def map_images(meta: ShardMeta) -> np.ndarray:
    """The shard's images as a read-only memory map [N, 256, 256, 3] (no h5py handle involved)."""
    if meta.images_offset is None:
        raise ValueError(f"{meta.path}: images are not stored contiguously")
    if meta.count == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return np.memmap(meta.path, dtype=np.uint8, mode="r", offset=meta.images_offset,
                     shape=(meta.count, IMAGE_SIZE, IMAGE_SIZE, 3))


def read_labels(path: str | Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["labels"][:].astype(np.int64)


def read_strings(path: str | Path, name: str) -> list[str]:
    """filenames, class_wnids or class_words of a shard."""
    with h5py.File(path, "r") as f:
        return [s.decode() if isinstance(s, bytes) else s for s in f[name][:]]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------ stats and manifest

@dataclass
class Stats:
    """Training-set statistics on the 0-255 scale (PAPER.md, Data and Augmentation)."""
    mean: np.ndarray  # float64 [256, 256, 3], the mean image
    covariance: np.ndarray  # float64 [3, 3], RGB covariance over all training pixels
    eigenvalues: np.ndarray  # float64 [3], descending
    eigenvectors: np.ndarray  # float64 [3, 3], column i belongs to eigenvalues[i]
    pixels: int  # number of pixels the covariance was computed over


def write_stats(root: str | Path, stats: Stats) -> None:
    path = Path(root) / STATS
    tmp = tmp_name(path)
    with h5py.File(tmp, "w") as f:
        f.create_dataset("mean", data=stats.mean.astype(np.float64))
        f.create_dataset("covariance", data=stats.covariance.astype(np.float64))
        f.create_dataset("eigenvalues", data=stats.eigenvalues.astype(np.float64))
        f.create_dataset("eigenvectors", data=stats.eigenvectors.astype(np.float64))
        f.attrs["pixels"] = stats.pixels
        f.attrs["scale"] = "0-255"
    _fsync_rename(tmp, path)


def read_stats(root: str | Path) -> Stats:
    with h5py.File(Path(root) / STATS, "r") as f:
        return Stats(f["mean"][:], f["covariance"][:], f["eigenvalues"][:], f["eigenvectors"][:],
                     int(f.attrs["pixels"]))


def write_manifest(root: str | Path, manifest: dict) -> None:
    path = Path(root) / MANIFEST
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    _fsync_rename(tmp, path)


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the directory holds no finished preparation")
    return json.loads(path.read_text())
