"""`./run.sh prepare`: ImageNet as downloaded (official archives, an extracted tree, the Kaggle
download, Hugging Face's Parquet files) -> HDF5 shards + stats.

    ./run.sh prepare --source DIR --out DIR [--year 2012|2010] [--workers N] [--limit-per-class N]
                     [--classes N | --classes-file F] [--allow-rejects] [--seed N] [--shard-size N]
    ./run.sh prepare --verify DIR [--source DIR]

What happens (paper section 2; the formats: docs/architecture.md, "Shards and statistics"):
1. Index: data_prep.layouts finds the layout; for the archives data_prep.sources reads the devkit
   and the tar headers (never extracting anything). --classes / --classes-file keep some classes
   (data_prep/subsets.py). Hugging Face's Parquet files are then staged: the JPEG bytes of the
   images to prepare are copied once, in file order, to flat files the workers read like an
   archive (data_prep/hf_parquet.py says why; removed at the end).
2. Plan: training images in one order shuffled by the seed (sorted by a keyed hash of their
   names, so the order is a pure function of the seed and the file list), validation and test in
   file order; each split cut into shards of --shard-size images. Each shard has a digest of
   what it must hold.
3. Build: one task per shard on a pool of --workers processes (data_prep.workers). A shard is
   written under a temporary name and renamed when complete. After each shard the journal
   (.prepare-journal.jsonl) records its digest and hash.
4. Finish: rejects.tsv, stats.h5 (mean image and RGB covariance over the training shards) and
   manifest.json, written last as the "done" mark.

Run again after an interruption, it continues: a shard is kept when its journal entry has the
same digest, its file has the recorded hash, and the bytes it was built from are still what the
sources hold (the same files untouched, or, for a source file touched, copied or downloaded
again, the same bytes read again: data_prep.workers); anything else is rewritten. The result is
byte-for-byte that of an uninterrupted run from the sources as they are now. Images that cannot be
decoded are listed with the reason in rejects.tsv; unless --allow-rejects is given, the run then
stops before stats.h5 and manifest.json and exits with status 1 (running again with
--allow-rejects keeps every shard). A class with no training image is always an error (status 2).
What prepare does with each kind of bad input or fault, and the test that shows it: docs/faults.md.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_prep import hf_parquet, images, layouts, shards, sources, subsets
from data_prep.sources import Catalog, Item
from data_prep.stats import Moments
from data_prep.workers import ShardResult, ShardTask, disk_full, parallel_map, run_shard, source_stamp
from repro import files, machine
from repro.errors import ArgumentParser, UserError
from repro.progress import Progress

SHARD_SIZE = 1024  # images per shard: 1024 x 196,608 bytes = 201 MB
REJECTS = "rejects.tsv"
JOURNAL = ".prepare-journal.jsonl"
LOCK = ".prepare.lock"
SOURCE_CACHE = ".sources-cache.json"
FULL_BELOW = 16 << 20  # bytes free under which an error writing the output is taken for a full disk
TRAIN_ORDER = "training images sorted by BLAKE2b-64 of '<seed>\\0<wnid>\\0<file name>'"
DOWNLOAD = {
    2012: "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz",
    2010: "ILSVRC2010_images_train.tar, ILSVRC2010_images_val.tar, ILSVRC2010_images_test.tar, "
          "patch_images.tar, ILSVRC2010_devkit-1.0.tar.gz and ILSVRC2010_test_ground_truth.txt",
}


@dataclass
class Options:
    source: Path
    out: Path
    year: int = 2012
    workers: int = field(default_factory=lambda: default_workers())
    limit_per_class: int = 0  # 0: every image
    allow_rejects: bool = False
    seed: int = 0
    shard_size: int = SHARD_SIZE
    quiet: bool = False  # no progress or summary lines (tests, the demo)
    classes: int = 0  # --classes N: the first N classes in sorted-WNID order (0: all)
    classes_file: Path | None = None  # --classes-file: the classes' WordNet ids, one per line


@dataclass
class Summary:
    complete: bool  # stats.h5 and manifest.json written
    counts: dict[str, int]  # images per split, in the shards
    shards: dict[str, int]  # shards per split
    rejects: int
    built: int  # images decoded in this run (kept shards not counted)
    seconds: float
    out: Path

    @property
    def images_per_second(self) -> float:
        return self.built / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------------- plan

def default_workers() -> int:
    """The cores this process may use: its CPU affinity (taskset, a scheduler) and its control
    group's CPU limit (docker run --cpus, a Kubernetes limit): repro.machine.usable_cores."""
    return max(1, machine.usable_cores())


def train_order_key(seed: int, wnid: str, name: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{wnid}\0{name}".encode(), digest_size=8).digest()


def plan_shards(cat: Catalog, out: Path, seed: int, shard_size: int) -> list[ShardTask]:
    wnids = [c.wnid for c in cat.classes]
    words = [c.words for c in cat.classes]
    classes_json = [(c.wnid, c.words, c.ilsvrc_id) for c in cat.classes]
    tasks = []
    for split in shards.SPLITS:
        items = cat.splits.get(split)
        if not items:
            continue
        if split == "train":
            items = sorted(items, key=lambda it: (train_order_key(seed, wnids[it.label], it.name), it.label, it.name))
        for index, start in enumerate(range(0, len(items), shard_size)):
            chunk = items[start:start + shard_size]
            tasks.append(ShardTask(split, index, str(out), chunk, wnids, words,
                                   _digest(split, index, cat.year, classes_json, chunk)))
    return tasks


def _digest(split: str, index: int, year: int, classes, items: list[Item]) -> str:
    """What a shard must hold: the schema, the resize, its classes and its images and their bytes."""
    what = [shards.SCHEMA_VERSION, images.DESCRIPTION, year, split, index, classes,
            [(it.name, it.label, it.ilsvrc_id, os.path.basename(it.path), it.offset, it.size) for it in items]]
    return hashlib.sha256(json.dumps(what, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------ run

def prepare(opts: Options, stream=None) -> Summary:
    """Everything `./run.sh prepare` does; raises UserError for bad input."""
    t0 = time.monotonic()
    say = (lambda text: None) if opts.quiet else (lambda text: print(f"prepare: {text}", file=stream, flush=True))
    if opts.shard_size < 1:
        raise UserError("--shard-size must be at least 1")
    say(f"indexing {opts.source} (ILSVRC-{opts.year})")
    with _progress(None, opts, stream, desc="index", unit=layouts.index_unit(opts.source)) as bar:
        cat = layouts.catalog(opts.source, opts.year, opts.limit_per_class, bar, _pool_runner(opts.workers))
    selection = subsets.choose(cat, opts.classes, opts.classes_file)
    if selection:
        subsets.select(cat, *selection)
        say(f"a subset ({selection[1]}): {len(cat.classes)} of {cat.subset['of']} classes, re-indexed "
            f"0..{len(cat.classes) - 1}" if cat.subset else f"{selection[1]} selects every class: the full data")
    if not cat.splits.get("train"):
        raise UserError(f"{opts.source}: no training images found")
    sources.require_training_images(cat)
    out = Path(opts.out)
    if cat.layout in ("tree", layouts.KAGGLE) and any(_inside(out, p) for p in cat.sources if p.is_dir()):
        raise UserError(f"--out {out} lies inside a folder of images of the source {opts.source}")
    _check_settings(out, opts, cat)
    files.make_dir(out, "--out")
    with _lock(out), _os_errors(out):  # one lock over staging and building; a full disk is one line in both
        if cat.layout == hf_parquet.LAYOUT:
            with _progress(sum(map(len, cat.splits.values())), opts, stream, desc="stage") as bar:
                hf_parquet.stage(cat, out, opts.workers, bar, say)
        tasks = plan_shards(cat, out, opts.seed, opts.shard_size)
        counts = {s: len(v) for s, v in cat.splits.items()}
        say(", ".join(f"{s} {n:,} images" for s, n in counts.items()) + f", {len(cat.classes)} classes: "
            f"{len(tasks)} shards of up to {opts.shard_size} images"
            + (f"; {len(cat.rejects)} archive members unusable (see {REJECTS})" if cat.rejects else ""))
        if any(cat.patched.values()):
            say("read from patch_images.tar (the official replacements for blank images): "
                + ", ".join(f"{s} {n:,}" for s, n in cat.patched.items()))
        _check_space(out, tasks)
        journal = _read_journal(out)
        _clear(out, tasks)
        for t in tasks:
            entry = journal.get(t.name)
            t.expect = entry if entry and entry.get("digest") == t.digest else None
        todo = sum(len(t.items) for t in tasks)  # finished shards count as they are checked
        hasher = _SourceHasher(out, cat.sources)
        results, moments = _build(tasks, opts, out, hasher, todo, stream)
        _write_journal(out, results)
        rejects = [(r.split, r.name, r.reason) for r in cat.rejects]
        rejects += [(res.split, name, reason) for res in results for name, reason in res.rejects]
        _write_rejects(out, rejects)
        source_info = hasher.result()
        _check_unchanged(tasks, results, hasher)
        _require_training_images(results, cat, out)
        summary = Summary(False, _split_counts(results), _split_shards(results), len(rejects),
                          sum(r.count + len(r.rejects) for r in results if not r.kept), 0.0, out)
        if rejects and not opts.allow_rejects:
            summary.seconds = time.monotonic() - t0
            say(f"{len(rejects)} image(s) rejected, listed with the reason in {out / REJECTS}; "
                f"stats.h5 and manifest.json not written. Run again with --allow-rejects to accept "
                f"(finished shards are kept)")
            return summary
        # The "done" marks, last: the statistics of what the shards hold, then the manifest.
        if moments.images == 0:
            raise UserError("every training image was rejected: no mean image or covariance to compute")
        stats = moments.to_stats(_per_class(results, len(cat.classes)))
        files.fsync(out)  # the shards' renames
        shards.write_stats(out, stats)
        shards.write_manifest(out, _manifest(cat, opts, results, source_info, rejects))
        freed = hf_parquet.remove_staging(out)
    if freed:
        say(f"removed the staged JPEG bytes ({files.size_text(freed)}): the shards are complete")
    summary.complete = True
    summary.seconds = time.monotonic() - t0
    size = sum(r.bytes for r in results)
    say(", ".join(f"{s} {n:,} images in {summary.shards[s]} shards" for s, n in summary.counts.items())
        + f"; {len(rejects)} rejected; {files.size_text(size)} in {out}")
    if summary.built:
        say(f"{summary.built:,} images decoded in {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s, "
            f"{opts.workers} workers)")
    else:
        say(f"nothing to build: every shard was already there, checked against the bytes it was made from; "
            f"{out} is complete (./run.sh prepare --verify {out} re-reads it all)")
    return summary


def _pool_runner(workers: int, min_tasks: int = 64):
    """run(fn, tasks, on_result) on `workers` processes, for sources.catalog; in this process when
    there are fewer than `min_tasks` tasks (starting a pool costs more than a few class archives)."""
    def run(fn, tasks, on_result):
        return parallel_map(fn, tasks, workers if len(tasks) >= min_tasks else 1, on_result=on_result)
    return run


def _build(tasks: list[ShardTask], opts: Options, out: Path, hasher, todo: int, stream):
    """Every shard built or checked, on the pool; each finished shard recorded in the journal.
    Returns the results and the training moments, summed as results arrive (1.5 MB a shard:
    holding them all for ImageNet would take 2 GB)."""
    moments = Moments()
    with open(out / JOURNAL, "a") as journal, _progress(todo, opts, stream) as bar:
        def record(r: ShardResult) -> None:
            if not r.kept:
                # here, not in the worker: the workers never wait for the disk; then out of the page
                # cache, whose freed pages the workers' next shards are written into (files.fsync)
                files.fsync(out / r.name, uncache=True)
            journal.write(json.dumps(r.journal_entry(), sort_keys=True) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
            if r.moments is not None:
                moments.merge(r.moments)  # exact integer sums: the order of arrival does not matter
                r.moments = None
        return parallel_map(run_shard, tasks, opts.workers, bar, record, hasher.start), moments


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _progress(total: int | None, opts: Options, stream, desc: str = "prepare", unit: str = "img"):
    if opts.quiet:
        return contextlib.nullcontext(None)
    return Progress(total, desc, unit=unit, stream=stream)


@contextlib.contextmanager
def _os_errors(out: Path):
    """The file-system errors a run can meet in the output directory, as one line each: a full
    disk (in a worker, while writing the journal or the lists; also when a later error hides
    it, or when little room is left) and no permission to write. What was finished stays
    recorded in the journal, so the same command continues once the cause is removed."""
    try:
        yield
    except OSError as e:
        text = " ".join(str(e).split())[:160]
        try:
            free = shutil.disk_usage(out).free
        except OSError:
            free = None
        if disk_full(e) or (free is not None and free < FULL_BELOW):
            left = f"{files.size_text(free)} free; " if free is not None else ""
            raise UserError(f"the disk holding {out} is full ({left}{text}): free some space there and run the "
                            f"same command again (finished shards are kept)") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write in {out} ({text}): make it writable or pass another --out "
                            f"(finished shards are kept)") from None
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise UserError(f"too many open files ({text}): raise the limit (ulimit -n; it is "
                            f"{_open_file_limit()} here) or use fewer --workers, and run the same command "
                            f"again (finished shards are kept)") from None
        raise


def _open_file_limit() -> str:
    try:
        import resource

        return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, OSError, ValueError):
        return "unknown"


@contextlib.contextmanager
def _lock(out: Path):
    """One prepare at a time per output directory (where the file system can lock)."""
    try:
        f = open(out / LOCK, "w")
    except OSError as e:
        raise UserError(f"cannot write in --out {out} ({e.strerror}): make it writable or pass another "
                        f"directory") from None
    with f:
        state = files.try_lock(f)
        if state == "busy":
            raise UserError(f"another prepare is writing to {out}")
        if state != "taken":  # on stderr, even with --quiet: the user should know the guard is off
            print(f"prepare: cannot lock {out / LOCK} ({state}: this file system does not support locks); going "
                  f"on without the guard against a second prepare writing to {out} at the same time",
                  file=sys.stderr, flush=True)
        yield  # closing the file drops the lock


def _check_space(out: Path, tasks: list[ShardTask]) -> None:
    """Before starting: room for every shard not yet on disk (estimate: 196,608 bytes per image
    plus 64 KB and 200 bytes per image of metadata per shard), and 4 MB for stats and lists."""
    need = sum(len(t.items) * (shards.IMAGE_BYTES + 200) + (64 << 10) for t in tasks if not t.path.is_file())
    need += 4 << 20
    free = shutil.disk_usage(out).free
    if need > free:
        raise UserError(f"not enough disk space in {out}: the shards need about {files.size_text(need)}, "
                        f"{files.size_text(free)} free")


def _check_settings(out: Path, opts: Options, cat: Catalog) -> None:
    """A finished preparation in `out` made with other settings (year, training order, shard size,
    images or classes per class) is not replaced silently: that may be days of work. (One made
    with the same settings is checked shard by shard and kept, or rebuilt where the sources'
    bytes changed; an unfinished one is continued under the new settings.)"""
    try:
        old = json.loads((out / shards.MANIFEST).read_text())
    except (OSError, ValueError):
        return  # none, or damaged: nothing finished to keep
    if not isinstance(old, dict):
        return

    def classes(subset) -> str:
        return f"{subset.get('classes')} of {subset.get('of')} classes" if isinstance(subset, dict) else "all classes"

    def same_classes(a, b) -> bool:
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return a is None and b is None
        return a.get("wnids_sha256") == b.get("wnids_sha256")

    def every(n) -> str:
        return "all" if not n else str(n)

    differs = [f"--{name} {show(before)} there, {show(now)} now"
               for name, before, now, show in (
                   ("year", old.get("year"), cat.year, str), ("seed", old.get("seed"), opts.seed, str),
                   ("shard-size", old.get("shard_size"), opts.shard_size, str),
                   ("limit-per-class", old.get("limit_per_class"), opts.limit_per_class, every))
               if before != now]
    if not same_classes(old.get("subset"), cat.subset):
        differs.append(f"{classes(old.get('subset'))} there, {classes(cat.subset)} now")
    if differs:
        raise UserError(f"{out} holds a finished preparation made with other settings ({'; '.join(differs)}); "
                        f"this would replace it: choose another --out, or delete {out} first to replace it")


def _clear(out: Path, tasks: list[ShardTask]) -> None:
    """Take away the "done" marks, leftovers of interrupted runs, and shards beyond the plan."""
    for name in (shards.MANIFEST, shards.STATS):
        (out / name).unlink(missing_ok=True)
    planned = {t.name for t in tasks}
    for split in shards.SPLITS:
        for p in shards.list_shards(out, split):
            if p.name not in planned:
                p.unlink()
    ours = {shards.MANIFEST, shards.STATS, REJECTS, JOURNAL, SOURCE_CACHE}
    for p in out.glob(".*.partial"):
        inner = p.name[1:-len(".partial")].removesuffix(".exact")
        if inner in ours or shards._SHARD_RE.match(inner):
            p.unlink()
    files.fsync(out)  # the manifest's removal is on the disk before any shard is replaced


def _read_journal(out: Path) -> dict[str, dict]:
    entries = {}
    path = out / JOURNAL
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
                entries[e["name"]] = e
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
    return entries


def _write_journal(out: Path, results: list[ShardResult]) -> None:
    files.atomic_write(out / JOURNAL, "".join(json.dumps(r.journal_entry(), sort_keys=True) + "\n" for r in results))


def _tsv(text: str) -> str:
    """One TSV field: tabs, newlines and backslashes escaped, object addresses taken out
    (images.deterministic), and the bytes of a name that is not UTF-8 shown as \\xNN."""
    text = images.deterministic(text)
    text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _write_rejects(out: Path, rejects: list[tuple[str, str, str]]) -> None:
    lines = ["split\tname\treason\n"] + [f"{_tsv(s)}\t{_tsv(n)}\t{_tsv(r)}\n" for s, n, r in rejects]
    files.atomic_write(out / REJECTS, "".join(lines))


def _check_unchanged(tasks: list[ShardTask], results: list[ShardResult], hasher: "_SourceHasher") -> None:
    """No source file changed while this run read it: the identity of each file a shard's images
    came from, and of each archive when it was hashed, is still that of the file there now.
    Otherwise a shard, or a hash in the manifest, may be of bytes that are gone; the journal
    keeps what was read, and the next run checks it against the new bytes."""
    changed = [Path(p).name for p, ident in hasher.identities.items() if _identity(p) != ident]
    cache: dict = {}
    shards_ = [r.name for t, r in zip(tasks, results) if source_stamp(t.items, cache) != r.stamp]
    if changed or shards_:
        what = ", ".join(changed) if changed else f"files that {shards_[0]} was built from"
        raise UserError(f"source files changed while prepare was reading them ({what}): is a download or copy "
                        f"still writing there? Once it is complete, run the same command again (what was built "
                        f"from the old bytes is checked against the new ones)")


def _identity(path) -> list | None:
    try:
        return files.identity(path)
    except OSError:
        return None


def _require_training_images(results: list[ShardResult], cat: Catalog, out: Path) -> None:
    """Every class keeps at least one training image after decoding (sources.require_training_images
    checked the catalogue; here all of a class's images may have been rejected)."""
    counts = _per_class(results, len(cat.classes)).get("train")
    empty = [c.wnid for c, n in zip(cat.classes, counts) if n == 0] if counts is not None else []
    if empty:
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise UserError(f"{len(empty)} of {len(cat.classes)} classes have no training image left, every one "
                        f"was rejected: {', '.join(empty[:5])}{more} (reasons in {out / REJECTS}); the training "
                        f"data is damaged: download it again")


def _split_counts(results: list[ShardResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.split] = counts.get(r.split, 0) + r.count
    return counts


def _split_shards(results: list[ShardResult]) -> dict[str, int]:
    n: dict[str, int] = {}
    for r in results:
        n[r.split] = n.get(r.split, 0) + 1
    return n


def _per_class(results: list[ShardResult], n_classes: int) -> dict:
    import numpy as np
    out = {}
    for r in results:
        out.setdefault(r.split, np.zeros(n_classes, np.int64))
        out[r.split] += np.asarray(r.per_class, np.int64)
    return out


def _manifest(cat: Catalog, opts: Options, results: list[ShardResult], source_info: list[dict],
              rejects: list) -> dict:
    per_class = _per_class(results, len(cat.classes))
    splits = {}
    for r in results:
        s = splits.setdefault(r.split, {"count": 0, "per_class": per_class[r.split].tolist(), "shards": []})
        s["count"] += r.count
        s["shards"].append({"name": r.name, "count": r.count, "bytes": r.bytes, "sha256": r.sha256})
    per_split: dict[str, int] = {}
    for split, _, _ in rejects:
        per_split[split] = per_split.get(split, 0) + 1
    return {
        "schema_version": shards.SCHEMA_VERSION,
        "year": cat.year,
        "layout": cat.layout,
        "seed": opts.seed,
        "train_order": TRAIN_ORDER,
        "shard_size": opts.shard_size,
        "limit_per_class": opts.limit_per_class,
        "subset": cat.subset,
        "resize": images.DESCRIPTION,
        "classes": [{"index": i, "wnid": c.wnid, "words": c.words, "ilsvrc_id": c.ilsvrc_id}
                    for i, c in enumerate(cat.classes)],
        "splits": splits,
        "sources": source_info,
        "patched": cat.patched,
        "rejects": {"count": len(rejects), "file": REJECTS, "per_split": per_split},
    }


class _SourceHasher:
    """SHA-256 of each source archive, in a thread while the workers decode (an archive's hash is
    remembered in .sources-cache.json with its identity, repro.files.identity: size, mtime, ctime,
    inode and device, so a resumed run does not read 150 GB again, and a file edited in place,
    even with its mtime set back, or downloaded again is hashed again). A folder's hash is of its
    listing (sorted "path<TAB>size" lines). `identities`: each archive's identity when hashed."""

    def __init__(self, out: Path, paths: list[Path]):
        self.out, self.paths = out, paths
        self.identities: dict[str, list] = {}
        self._thread = None
        self._result: list[dict] | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hash-sources", daemon=True)
        self._thread.start()

    def result(self) -> list[dict]:
        if self._thread is None:
            self._run()
        else:
            self._thread.join()
        if self._error:
            raise self._error
        return self._result

    def _run(self) -> None:
        try:
            cache_path = self.out / SOURCE_CACHE
            try:
                cache = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                cache = {}
            out = []
            for p in self.paths:
                if p.is_dir():
                    size, digest = sources.listing_sha256(p)
                    out.append({"name": p.name, "bytes": size, "sha256": digest, "hash_of": "listing"})
                    continue
                before = files.identity(p)
                key = f"{p.resolve()}"
                hit = cache.get(key)
                if not (isinstance(hit, dict) and hit.get("identity") == before and "sha256" in hit):
                    digest = files.sha256(p)
                    if files.identity(p) != before:
                        raise UserError(f"{p} changed while it was being hashed: is a download or copy still "
                                        f"writing it? Once it is complete, run the same command again")
                    hit = cache[key] = {"identity": before, "sha256": digest}
                self.identities[str(p)] = before
                out.append({"name": p.name, "bytes": before[0], "sha256": hit["sha256"], "hash_of": "content"})
            files.atomic_write(cache_path, json.dumps(cache, indent=1, sort_keys=True))
            self._result = out
        except BaseException as e:  # re-raised in the main thread by result()
            self._error = e


# ------------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="./run.sh prepare",
        description="Turn ImageNet as you downloaded it (image-net.org's archives, an extracted tree, the "
                    "Kaggle download or Hugging Face's Parquet files) into the HDF5 shards and mean/PCA "
                    "statistics the trainer reads; the same images give the same shards whichever route "
                    "they came by. Safe to interrupt: run it again and it continues where it stopped, "
                    "keeping a finished shard only if the sources still hold the bytes it was built from.",
        epilog="Sources (the layout is recognised by itself): the official ILSVRC-2012 files in one directory "
               "(ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz); the "
               "ILSVRC-2010 files (--year 2010: ILSVRC2010_images_{train,val,test}.tar, "
               "ILSVRC2010_devkit-1.0.tar.gz and ILSVRC2010_test_ground_truth.txt; a layout taken from public "
               "converters of the real files, not checked against them here); an extracted tree: "
               "train/<wnid>/*.JPEG and val/ as <wnid>/ folders, or flat with the devkit beside it; the Kaggle "
               "download (kaggle competitions download -c imagenet-object-localization-challenge, unzipped: "
               "the folder holding ILSVRC/ and LOC_synset_mapping.txt, LOC_val_solution.csv); Hugging Face's "
               "ILSVRC/imagenet-1k (huggingface-cli download ILSVRC/imagenet-1k --repo-type dataset "
               "--local-dir DIR: the folder holding data/*.parquet and classes.py; needs pyarrow, "
               "pip install -e '.[hf]'; the images' bytes are staged under --out while it runs). Kaggle and "
               "Hugging Face carry no ILSVRC ids: put ILSVRC2012_devkit_t12.tar.gz beside the data to get them "
               "(and shards byte-identical to the archives'). Exit status: 0 done; 1 images rejected (see "
               "rejects.tsv; --allow-rejects accepts them) or --verify found mismatches; 2 bad input (including "
               "a class with no training image, a full disk, an unwritable --out; one line says what to do). "
               "docs/faults.md lists every case.")
    p.add_argument("--source", metavar="DIR",
                   help="the directory holding the download: the archives, a tree, the Kaggle download or Hugging "
                        "Face's files (default: data.source in the config, else $ILSVRC_ROOT)")
    p.add_argument("--out", metavar="DIR", help="where the shards go (default: data.shards in the config, data/shards)")
    p.add_argument("--year", type=int, choices=(2012, 2010), help="ILSVRC year (default: data.year in the config, 2012)")
    p.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                   help="worker processes (default: the %(default)s cores this process may use, after taskset and "
                        "a container's CPU limit; 1 runs in this process)")
    p.add_argument("--limit-per-class", type=int, default=0, metavar="N",
                   help="only the first N images of each class in each split (small trials; default 0: all)")
    subset = p.add_mutually_exclusive_group()
    subset.add_argument("--classes", type=int, default=0, metavar="N",
                        help="only the first N classes in class-index order, i.e. sorted WordNet ids (n01440764 "
                             "tench, n01443537 goldfish, ...), re-indexed 0..N-1 in both splits; manifest.json "
                             "records the subset (default 0: all classes)")
    subset.add_argument("--classes-file", metavar="FILE",
                        help="only the classes whose WordNet ids FILE lists, one per line (words after the id, "
                             "blank lines and # comments ignored), re-indexed 0..N-1 in sorted-WordNet-id order")
    p.add_argument("--allow-rejects", action="store_true",
                   help="finish (stats.h5, manifest.json) and exit 0 even if some images cannot be decoded or "
                        "some archive members are unusable (all listed in rejects.tsv); a class left with no "
                        "training image is an error all the same")
    p.add_argument("--seed", type=int, default=0, help="seed of the training-set order (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, metavar="N",
                   help="images per shard (default: %(default)s, about 201 MB)")
    p.add_argument("--config", metavar="FILE", help="config whose [data] section gives the defaults "
                   "(default: paper_configs/alexnet_2gpu.toml when present)")
    p.add_argument("--verify", metavar="DIR", help="re-read the shards in DIR, compare them with manifest.json "
                   "and stats.h5 and check what the manifest promises (classes, splits, year, resize, training "
                   "order), reporting every mismatch; the sources are checked too (size and SHA-256 of each "
                   "archive against the manifest, read in full) only when --source DIR is given")
    p.add_argument("--quiet", action="store_true", help="no progress or summary lines")
    return p


def _config_data(path: str | None):
    from repro.config import DEFAULT_CONFIG, DataConfig, load_config
    if path:
        return load_config(path).data
    if DEFAULT_CONFIG.is_file():
        return load_config(DEFAULT_CONFIG).data
    return DataConfig()


def no_source_message(year: int) -> str:
    return (f"no ImageNet given: download {DOWNLOAD[year]} from https://image-net.org/download-images "
            f"(free account) into one directory (or use the Kaggle download or Hugging Face's ILSVRC/imagenet-1k: "
            f"./run.sh prepare --help), then pass --source DIR or set ILSVRC_ROOT=DIR; "
            f"`./run.sh demo` runs the whole pipeline without them")


# options of building shards: with --verify, a value other than the default is a mistake
VERIFY_IGNORES = ("out", "year", "limit_per_class", "classes", "classes_file", "allow_rejects", "seed",
                  "shard_size", "config")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify:
        from data_prep.verify import verify_main
        ignored = [f"--{name.replace('_', '-')}" for name in VERIFY_IGNORES if getattr(args, name) != parser.get_default(name)]
        if ignored:
            raise UserError(f"{ignored[0]} does not apply to --verify, which checks the finished preparation in "
                            f"{args.verify} as its manifest.json describes it: drop {ignored[0]}")
        files.check_dir(args.verify, "--verify")
        if args.source:
            files.check_dir(args.source, "--source")
        return verify_main(Path(args.verify), args.workers, quiet=args.quiet,
                           source=Path(args.source) if args.source else None)
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.limit_per_class < 0:
        raise UserError("--limit-per-class must be 0 (all) or more")
    if args.classes < 0:
        raise UserError("--classes must be 0 (all) or more")
    data = _config_data(args.config)
    year = args.year or data.year
    source = args.source or data.source or os.environ.get("ILSVRC_ROOT", "")
    if not source:
        raise UserError(no_source_message(year))
    if not Path(source).is_dir():
        raise UserError(f"source {source} is not a directory ({no_source_message(year)})")
    opts = Options(Path(source), Path(args.out or data.shards), year, args.workers, args.limit_per_class,
                   args.allow_rejects, args.seed, args.shard_size, args.quiet, classes=args.classes,
                   classes_file=Path(args.classes_file) if args.classes_file else None)
    try:
        summary = prepare(opts)
    except KeyboardInterrupt:
        print("prepare: interrupted; run the same command again to continue (finished shards are kept)",
              file=sys.stderr)
        raise
    return 0 if summary.complete else 1
