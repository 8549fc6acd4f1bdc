"""The shard schema: the one place that knows how prepared data is laid out on disk.

Both the writer (data_prep.prepare) and the reader (repro.data) use this module.

A prepared directory holds:
    train-00000.h5, train-00001.h5, ...   one file per shard, training images in one shuffled order
    val-00000.h5, ...                     validation in file order (test-*.h5 for ILSVRC-2010 test)
    stats.h5                              mean image (float64) and the RGB covariance + eigen-decomposition
    manifest.json                         classes, counts, seed, hashes; written last (the "done" mark)
    rejects.tsv                           split, name, reason of every image that is not in the shards
    .prepare-journal.jsonl, ...           prepare's own bookkeeping for resuming (hidden; readers ignore it)

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
    sources: [{"name", "bytes", "sha256", "hash_of"}]    the archives or folders read; hash_of is
                                                         "content" (an archive's bytes) or "listing"
                                                         (a folder: sorted "path<TAB>size" lines)
    rejects: {"count", "file", "per_split"}              images that could not be used (rejects.tsv)
    layout ("archives", "tree", "kaggle" or "hf-parquet"), shard_size, limit_per_class,
    train_order (how the seed is used)
    subset: null (all classes) or {"classes", "of", "selected_by", "wnids_sha256"} (data_prep/subsets.py)
read_manifest checks this structure (check_manifest) for every reader: a damaged file is a
ValueError naming the file and the key.

stats.h5 holds: mean float64 [256, 256, 3]; covariance, eigenvectors float64 [3, 3]; eigenvalues
float64 [3] (descending); attrs pixels, images (training images), scale = "0-255"; and
counts/<split> int64 [C], the images per class of each split (equal to what the shards hold).

Every file is written under a temporary name and renamed when complete (repro/files.py), so a
running reader never sees a half-written shard. (After a power failure, a shard renamed but not yet flushed to the disk
could be: prepare flushes each shard before recording it as done, checks recorded shards by hash
when it resumes, and writes the manifest, which readers start from, only after every shard is
flushed.) ShardWriter writes a shard a chunk of images at a time; write_shard is the
same for a shard held in memory. No timestamps are stored (track_times=False), so the same
images give byte-identical files.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from repro import files

SCHEMA_VERSION = 1
IMAGE_SIZE = 256
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
STATS = "stats.h5"
_STR = h5py.string_dtype(encoding="utf-8")
_SHARD_RE = re.compile(r"^(train|val|test)-(\d{5})\.h5$")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.h5"


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
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if not (len(labels) == len(ilsvrc_ids) == len(filenames) == len(images)):
        raise ValueError("images, labels, ilsvrc_ids and filenames differ in length")
    with ShardWriter(path, len(images), class_wnids, class_words, split, index) as w:
        w.append(images, labels, ilsvrc_ids, filenames)


class ShardWriter:
    """Write one shard a chunk of images at a time, under a temporary name until close().

        with ShardWriter(path, capacity, class_wnids, class_words, "train", 3) as w:
            w.append(images, labels, ilsvrc_ids, filenames)   # as often as needed
        # renamed into place here; on an exception the temporary file is removed instead

    `capacity` is the number of images planned. A contiguous dataset cannot shrink, so if fewer
    are appended (some images rejected), close() copies them into a file of the exact size.

    durable=False skips the fsync before the rename (the file is still renamed only once complete):
    prepare's workers leave it to the parent process, so that they never wait for the disk.
    """

    def __init__(self, path: str | Path, capacity: int, class_wnids, class_words, split: str, index: int,
                 durable: bool = True):
        self.path = Path(path)
        self.durable = durable
        self.capacity = int(capacity)
        self.class_wnids, self.class_words = list(class_wnids), list(class_words)
        self.split, self.index = split, index
        self.count = 0
        self._labels, self._ids, self._names = [], [], []
        self._tmp = files.tmp_name(self.path)
        self._file = h5py.File(self._tmp, "w")
        # No chunks, no compression: the dataset is one contiguous block that np.memmap can map.
        self._images = self._file.create_dataset(
            "images", shape=(self.capacity, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8, track_times=False)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def append(self, images: np.ndarray, labels, ilsvrc_ids, filenames) -> None:
        images = np.asarray(images, dtype=np.uint8)
        k = len(images)
        if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"images must be [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.shape}")
        if not (len(labels) == len(ilsvrc_ids) == len(filenames) == k):
            raise ValueError("images, labels, ilsvrc_ids and filenames differ in length")
        if self.count + k > self.capacity:
            raise ValueError(f"{self.path.name}: more than the {self.capacity} images planned")
        if k:
            self._images[self.count:self.count + k] = images
        self.count += k
        self._labels.extend(int(x) for x in labels)
        self._ids.extend(int(x) for x in ilsvrc_ids)
        self._names.extend(str(x) for x in filenames)

    def close(self) -> None:
        if self._file is None:
            raise ValueError(f"{self.path.name}: already closed")
        if self.count < self.capacity:
            self._shrink()
        f = self._file
        f.create_dataset("labels", data=np.asarray(self._labels, dtype=np.int16), track_times=False)
        f.create_dataset("ilsvrc_ids", data=np.asarray(self._ids, dtype=np.int16), track_times=False)
        f.create_dataset("filenames", data=self._names, dtype=_STR, track_times=False)
        f.create_dataset("class_wnids", data=self.class_wnids, dtype=_STR, track_times=False)
        f.create_dataset("class_words", data=self.class_words, dtype=_STR, track_times=False)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["split"] = self.split
        f.attrs["index"] = self.index
        f.close()
        self._file = None
        files.replace(self._tmp, self.path, self.durable)

    def abort(self) -> None:
        """Drop the temporary file (nothing appears under the final name). Closing may fail in
        turn (on a full disk h5py's last flush does): that must not hide the first error."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self._tmp.unlink(missing_ok=True)

    def _shrink(self) -> None:
        old_tmp, old = self._tmp, self._file
        self._tmp = self.path.with_name(f".{self.path.name}.exact.partial")
        new = h5py.File(self._tmp, "w")
        images = new.create_dataset("images", shape=(self.count, IMAGE_SIZE, IMAGE_SIZE, 3),
                                    dtype=np.uint8, track_times=False)
        for start in range(0, self.count, 64):
            stop = min(start + 64, self.count)
            images[start:stop] = self._images[start:stop]
        old.close()
        old_tmp.unlink()
        self._file, self._images = new, images


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


def read_images(meta: ShardMeta, start: int, stop: int) -> np.ndarray:
    """Images [start, stop) of a shard, read with pread rather than mapped: a file cut short
    (even while it is read) gives a ValueError here, where a memory map would kill the process
    with SIGBUS."""
    if meta.images_offset is None:
        raise ValueError(f"{meta.path}: images are not stored contiguously")
    per_image = IMAGE_SIZE * IMAGE_SIZE * 3
    want = (stop - start) * per_image
    fd = os.open(meta.path, os.O_RDONLY)
    try:
        data = os.pread(fd, want, meta.images_offset + start * per_image)
    finally:
        os.close(fd)
    if len(data) != want:
        raise ValueError(f"{meta.path.name}: cut short (images {start}..{stop - 1} of {meta.count} "
                         f"end {want - len(data)} bytes past the end of the file)")
    return np.frombuffer(data, np.uint8).reshape(stop - start, IMAGE_SIZE, IMAGE_SIZE, 3)


def read_labels(path: str | Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["labels"][:].astype(np.int64)


def read_strings(path: str | Path, name: str) -> list[str]:
    """filenames, class_wnids or class_words of a shard."""
    with h5py.File(path, "r") as f:
        return [s.decode() if isinstance(s, bytes) else s for s in f[name][:]]


# ------------------------------------------------------------------------ stats and manifest

@dataclass
class Stats:
    """Training-set statistics on the 0-255 scale (paper sections 2 and 4.1)."""
    mean: np.ndarray  # float64 [256, 256, 3], the mean image
    covariance: np.ndarray  # float64 [3, 3], RGB covariance over all training pixels
    eigenvalues: np.ndarray  # float64 [3], descending
    eigenvectors: np.ndarray  # float64 [3, 3], column i belongs to eigenvalues[i]
    pixels: int  # number of pixels the covariance was computed over
    images: int = 0  # number of training images the mean is over
    counts: dict | None = None  # split -> int64 [C], images per class in the shards


def write_stats(root: str | Path, stats: Stats) -> None:
    path = Path(root) / STATS
    tmp = files.tmp_name(path)
    with h5py.File(tmp, "w") as f:
        for name in ("mean", "covariance", "eigenvalues", "eigenvectors"):
            f.create_dataset(name, data=np.asarray(getattr(stats, name), dtype=np.float64), track_times=False)
        for split, counts in sorted((stats.counts or {}).items()):
            f.create_dataset(f"counts/{split}", data=np.asarray(counts, dtype=np.int64), track_times=False)
        f.attrs["pixels"] = stats.pixels
        f.attrs["images"] = stats.images
        f.attrs["scale"] = "0-255"
    files.replace(tmp, path)


def read_stats(root: str | Path) -> Stats:
    with h5py.File(Path(root) / STATS, "r") as f:
        counts = {split: f["counts"][split][:] for split in f["counts"]} if "counts" in f else None
        return Stats(f["mean"][:], f["covariance"][:], f["eigenvalues"][:], f["eigenvectors"][:],
                     int(f.attrs["pixels"]), int(f.attrs.get("images", 0)), counts)


def write_manifest(root: str | Path, manifest: dict) -> None:
    files.atomic_write(Path(root) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(root: str | Path) -> dict:
    """manifest.json, its structure checked (check_manifest): FileNotFoundError when there is
    none, ValueError naming the file and the key when it is not valid JSON or lacks a key."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the directory holds no finished preparation")
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not valid JSON ({' '.join(str(e).split())})") from None
    check_manifest(manifest, path)
    return manifest


# key -> the type it must have; the keys every reader may rely on ...
_MANIFEST_KEYS = {"schema_version": int, "year": int, "seed": int, "resize": str, "classes": list,
                  "splits": dict, "sources": list, "rejects": dict}
# ... and those prepare also writes, checked when present (small test sets leave them out)
_MANIFEST_OPTIONAL = {"layout": str, "shard_size": int, "limit_per_class": int, "train_order": str,
                      "patched": dict}
_CLASS_KEYS = {"index": int, "wnid": str, "words": str, "ilsvrc_id": int}
_SPLIT_KEYS = {"count": int, "per_class": list, "shards": list}
_SHARD_KEYS = {"name": str, "count": int, "bytes": int, "sha256": str}
_SOURCE_KEYS = {"name": str, "bytes": int, "sha256": str, "hash_of": str}
_REJECT_KEYS = {"count": int, "file": str}


def check_manifest(manifest, path: str | Path = MANIFEST) -> None:
    """The one check of a manifest's structure (prepare --verify, and every reader): each key
    readers use is there with its type, the class indices run 0..C-1, each split's per_class has
    C entries and its shards are that split's. Raises ValueError naming the file and the key."""
    def fail(key: str, problem: str):
        raise ValueError(f"{path}: {key} {problem}; prepare the data again (or restore the file)")

    def fields(obj, spec: dict, where: str, optional: dict | None = None) -> None:
        if not isinstance(obj, dict):
            fail(where or "the file", "is not a JSON object")
        for key, kind in list(spec.items()) + list((optional or {}).items()):
            name = f"{where}.{key}" if where else key
            if key not in obj:
                if optional is None or key in spec:
                    fail(f"'{name}'", "is missing")
                continue
            value = obj[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                fail(f"'{name}'", f"is not {'an integer' if kind is int else 'a ' + _JSON_NAMES[kind]}")
            if kind is int and value < 0 and key not in ("ilsvrc_id", "seed"):
                fail(f"'{name}'", "is negative")

    fields(manifest, _MANIFEST_KEYS, "", _MANIFEST_OPTIONAL)
    if manifest["schema_version"] != SCHEMA_VERSION:
        fail("'schema_version'", f"is {manifest['schema_version']}, not this code's {SCHEMA_VERSION}")
    classes = manifest["classes"]
    if not classes:
        fail("'classes'", "is empty")
    for i, c in enumerate(classes):
        fields(c, _CLASS_KEYS, f"classes[{i}]")
        if c["index"] != i:
            fail(f"'classes[{i}].index'", f"is {c['index']}, not {i}")
    fields(manifest["rejects"], _REJECT_KEYS, "rejects")
    for i, source in enumerate(manifest["sources"]):
        fields(source, _SOURCE_KEYS, f"sources[{i}]")
    if not manifest["splits"]:
        fail("'splits'", "is empty")
    for split, info in manifest["splits"].items():
        if split not in SPLITS:
            fail(f"'splits.{split}'", f"is not a split ({', '.join(SPLITS)})")
        fields(info, _SPLIT_KEYS, f"splits.{split}")
        per_class = info["per_class"]
        if len(per_class) != len(classes) or not all(type(n) is int and n >= 0 for n in per_class):
            fail(f"'splits.{split}.per_class'", f"is not {len(classes)} counts (one per class)")
        for k, shard in enumerate(info["shards"]):
            fields(shard, _SHARD_KEYS, f"splits.{split}.shards[{k}]")
            m = _SHARD_RE.match(shard["name"])
            if not m or m.group(1) != split:
                fail(f"'splits.{split}.shards[{k}].name'", f"({shard['name']!r}) is not a {split} shard's name")


_JSON_NAMES = {str: "string", list: "list", dict: "JSON object"}
