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
flushed.) ShardWriter writes a shard a chunk of images at a time (streamed, when the plan is
known: see its docstring); write_shard is the same for a shard held in memory. No timestamps
are stored (track_times=False), so the same images written the same way (prepare always
streams) give byte-identical files.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
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
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3  # one image in a shard
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
    with ShardWriter(path, len(images), class_wnids, class_words, split, index,
                     planned=(labels, ilsvrc_ids, filenames)) as w:
        w.append(images, labels, ilsvrc_ids, filenames)


class ShardWriter:
    """Write one shard a chunk of images at a time, under a temporary name until close().

        with ShardWriter(path, capacity, class_wnids, class_words, "train", 3) as w:
            w.append(images, labels, ilsvrc_ids, filenames)   # as often as needed
        # renamed into place here; on an exception the temporary file is removed instead
        w.sha256   # the file's SHA-256

    `capacity` is the number of images planned. A contiguous dataset cannot shrink, so if fewer
    are appended (some images rejected), close() copies them into a file of the exact size.

    planned=(labels, ilsvrc_ids, filenames) of the `capacity` images, in order (prepare knows
    them before it decodes anything): then the file is written streamed. Every dataset but the
    images' bytes is written first (h5py, then closed), with the image block allocated but not
    filled; the images then go straight to their place with pwrite, in order, hashed on the way,
    so the file's SHA-256 needs no second read; and the pages written are dropped from the page
    cache as the next ones are written (posix_fadvise DONTNEED starts the write-back of pages
    WRITE_BEHIND bytes behind the last write and frees those already clean; the next call frees the
    rest; the last few megabytes stay until prepare's parent process flushes and drops the whole
    file), so a worker keeps reusing a few megabytes of just-freed pages instead of filling the
    cache with fresh ones (on a virtual machine, pages not in use recently cost several times
    more to write into: `python benchmarks/bench_prepare.py --writes`). Appending anything but
    the plan (a rejected image shifts the rest) falls back to copying into an exact file, which
    is then hashed by reading it.
    Without a plan, h5py writes the images and sha256 reads the file back.

    durable=False skips the fsync before the rename (the file is still renamed only once complete):
    prepare's workers leave it to the parent process, so that they never wait for the disk.
    """

    WRITE_BEHIND = 8 << 20  # bytes behind the last write that stay cached (about 40 images)

    def __init__(self, path: str | Path, capacity: int, class_wnids, class_words, split: str, index: int,
                 durable: bool = True, planned: tuple | None = None):
        self.path = Path(path)
        self.durable = durable
        self.capacity = int(capacity)
        self.class_wnids, self.class_words = list(class_wnids), list(class_words)
        self.split, self.index = split, index
        self.count = 0
        self._labels, self._ids, self._names = [], [], []
        self._sha256 = None
        self._fd = None
        self._hash = self._tail = None
        self._planned = None
        self._file = None
        self._closed = False
        self._tmp = files.tmp_name(self.path)
        self._exact_tmp = self.path.with_name(f".{self.path.name}.exact.partial")  # see _exact_copy
        try:
            self._file = h5py.File(self._tmp, "w")
            if planned is not None and self.capacity > 0:
                self._start_streamed(planned)
            else:
                # No chunks, no compression: the dataset is one contiguous block that np.memmap can map.
                self._images = self._file.create_dataset(
                    "images", shape=(self.capacity, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8,
                    track_times=False)
        except BaseException:
            self.abort()
            raise

    def _start_streamed(self, planned: tuple) -> None:
        labels, ids, names = [int(x) for x in planned[0]], [int(x) for x in planned[1]], [str(x) for x in planned[2]]
        if not (len(labels) == len(ids) == len(names) == self.capacity):
            raise ValueError(f"{self.path.name}: the plan lists {len(labels)} images, not {self.capacity}")
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # the block gets its place now, at a known offset
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # and is not filled with zeros first
        images = self._file.create_dataset("images", shape=(self.capacity, IMAGE_SIZE, IMAGE_SIZE, 3),
                                           dtype=np.uint8, track_times=False, dcpl=dcpl)
        self._offset = int(images.id.get_offset())
        self._write_meta(self._file, labels, ids, names)
        self._file.close()
        self._file = None
        self._planned = (labels, ids, names)
        self._fd = os.open(self._tmp, os.O_RDWR)
        end = self._offset + self.capacity * IMAGE_BYTES
        size = os.fstat(self._fd).st_size
        if size < end:  # HDF5 extends the file over the block it allocated when it closes it
            raise OSError(f"{self._tmp}: {size} bytes, but the image block ends at byte {end}")
        self._hash = hashlib.sha256(_pread_all(self._fd, self._offset, 0))
        self._tail = _pread_all(self._fd, size - end, end)
        self._behind = (self._offset, self._offset)  # where the last two posix_fadvise calls ended

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    @property
    def sha256(self) -> str:
        """SHA-256 of the finished file (computed while streaming, else read back once)."""
        if not self._closed:
            raise ValueError(f"{self.path.name}: no SHA-256 before close() has finished")
        if self._sha256 is None:
            self._sha256 = files.sha256(self.path)
        return self._sha256

    def append(self, images: np.ndarray, labels, ilsvrc_ids, filenames) -> None:
        images = np.asarray(images, dtype=np.uint8)
        k = len(images)
        if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"images must be [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {images.shape}")
        if not (len(labels) == len(ilsvrc_ids) == len(filenames) == k):
            raise ValueError("images, labels, ilsvrc_ids and filenames differ in length")
        if self.count + k > self.capacity:
            raise ValueError(f"{self.path.name}: more than the {self.capacity} images planned")
        labels, ids, names = [int(x) for x in labels], [int(x) for x in ilsvrc_ids], [str(x) for x in filenames]
        if k and self._fd is not None:
            self._write_streamed(np.ascontiguousarray(images), labels, ids, names)
        elif k:
            self._images[self.count:self.count + k] = images
        self.count += k
        self._labels.extend(labels)
        self._ids.extend(ids)
        self._names.extend(names)

    def _write_streamed(self, images: np.ndarray, labels, ids, names) -> None:
        at = self._offset + self.count * IMAGE_BYTES
        view = memoryview(images).cast("B")
        done = 0
        while done < len(view):
            n = os.pwrite(self._fd, view[done:], at + done)
            if n <= 0:  # (a regular file writes something or raises; never loop on nothing)
                raise OSError(errno.EIO, f"{self._tmp}: pwrite wrote nothing at byte {at + done}")
            done += n
        a, b = self.count, self.count + len(images)
        if self._hash is not None:
            if (labels, ids, names) == tuple(x[a:b] for x in self._planned):
                self._hash.update(view)
            else:
                self._hash = None  # not what was planned: close() copies into an exact file
        behind = at + len(view) - self.WRITE_BEHIND
        if hasattr(os, "posix_fadvise") and behind > self._behind[1]:
            # Starts the write-back of the bytes older than WRITE_BEHIND and frees them once clean:
            # those this call reaches first are still being written back, so the next call covers
            # them again (a page under write-back is not freed, and DONTNEED does not wait for it).
            with contextlib.suppress(OSError):  # advice only: the images are written either way
                os.posix_fadvise(self._fd, self._behind[0], behind - self._behind[0], os.POSIX_FADV_DONTNEED)
            self._behind = (self._behind[1], behind)

    def close(self) -> None:
        if self._closed or (self._file is None and self._fd is None):
            raise ValueError(f"{self.path.name}: already closed")
        try:
            durable = self.durable
            if self._fd is not None and self._hash is not None and self.count == self.capacity:
                self._hash.update(self._tail)  # as planned: the file is complete, and hashed
                self._sha256 = self._hash.hexdigest()
                if durable:
                    os.fsync(self._fd)
                    durable = False  # (done)
                os.close(self._fd)
                self._fd = None
            elif self._fd is not None:
                self._exact_copy()
            else:
                if self.count < self.capacity:
                    self._exact_copy()
                self._write_meta(self._file, self._labels, self._ids, self._names)
                self._file.close()
                self._file = None
            files.replace(self._tmp, self.path, durable)
        except BaseException:
            self._sha256 = None
            self.abort()
            raise
        self._closed = True

    def _write_meta(self, f, labels, ids, names) -> None:
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int16), track_times=False)
        f.create_dataset("ilsvrc_ids", data=np.asarray(ids, dtype=np.int16), track_times=False)
        f.create_dataset("filenames", data=names, dtype=_STR, track_times=False)
        f.create_dataset("class_wnids", data=self.class_wnids, dtype=_STR, track_times=False)
        f.create_dataset("class_words", data=self.class_words, dtype=_STR, track_times=False)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["split"] = self.split
        f.attrs["index"] = self.index

    def abort(self) -> None:
        """Drop the temporary files (nothing appears under the final name). Closing may fail in
        turn (on a full disk h5py's last flush does): that must not hide the first error."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        for tmp in (self._tmp, self._exact_tmp):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _exact_copy(self) -> None:
        """The images appended so far into a new file of exactly that many (h5py; its metadata
        written by close(), or here for a streamed file), which becomes the temporary file. On an
        error the new file is removed and the old one left for abort()."""
        new = None
        try:
            new = h5py.File(self._exact_tmp, "w")
            images = new.create_dataset("images", shape=(self.count, IMAGE_SIZE, IMAGE_SIZE, 3),
                                        dtype=np.uint8, track_times=False)
            for start in range(0, self.count, 64):
                stop = min(start + 64, self.count)
                if self._fd is not None:
                    data = _pread_all(self._fd, (stop - start) * IMAGE_BYTES, self._offset + start * IMAGE_BYTES)
                    images[start:stop] = np.frombuffer(data, np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 3)
                else:
                    images[start:stop] = self._images[start:stop]
            if self._fd is not None:
                self._write_meta(new, self._labels, self._ids, self._names)
                new.close()
                os.close(self._fd)
                self._fd = None
            else:
                self._file.close()
                self._file, self._images = new, images
        except BaseException:
            if new is not None:
                with contextlib.suppress(Exception):
                    new.close()
            with contextlib.suppress(OSError):
                self._exact_tmp.unlink(missing_ok=True)
            raise
        self._tmp.unlink()
        self._tmp = self._exact_tmp


def _pread_all(fd: int, n: int, at: int) -> bytes:
    """n bytes at offset `at` (pread may return fewer at a time); fewer only at the end of the file."""
    parts, got = [], 0
    while got < n:
        data = os.pread(fd, n - got, at + got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


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
    per_image = IMAGE_BYTES
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
