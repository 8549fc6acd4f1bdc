"""The work done per shard, in worker processes: build a shard, or check a finished one.

One shard is one task. A worker reads each image's bytes in place (os.pread at the offset the
catalog found in the archive; no extraction), decodes and resizes it (data_prep.images), writes
the shard through ShardWriter (temporary name, renamed when complete), and returns the shard's
hash, its per-class counts, its rejects and, for training shards, the exact integer sums that
the mean image and the covariance are computed from (data_prep.stats). The parent process never
touches pixels, so nothing large crosses a process boundary; it flushes each finished shard to
the disk (fsync) before recording it in the journal, so that no worker waits for the disk.

`parallel_map` runs tasks on a pool (or in this process when workers <= 1) and relays progress.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from data_prep import images, shards
from data_prep.sources import Item
from data_prep.stats import Moments
from repro import files

CHUNK = 32  # images decoded between two writes (and two progress reports)


@dataclass
class ShardTask:
    split: str
    index: int
    out: str
    items: list[Item]
    class_wnids: list[str]
    class_words: list[str]
    digest: str  # what the shard must hold (see prepare.plan_shards)
    expect: dict | None = None  # the journal's record of this shard when it was finished before

    @property
    def name(self) -> str:
        return shards.shard_name(self.split, self.index)

    @property
    def path(self) -> Path:
        return Path(self.out) / self.name


@dataclass
class ShardResult:
    name: str
    split: str
    index: int
    digest: str
    count: int
    bytes: int
    sha256: str
    per_class: list[int]
    rejects: list[tuple[str, str]]  # (file name, reason)
    moments: Moments | None = None  # training shards only
    kept: bool = False  # finished in an earlier run, checked and kept

    def journal_entry(self) -> dict:
        return {"name": self.name, "digest": self.digest, "count": self.count, "bytes": self.bytes,
                "sha256": self.sha256, "rejects": [list(r) for r in self.rejects]}


# ----------------------------------------------------------------------------- one shard

def run_shard(task: ShardTask, report=None) -> ShardResult:
    """Keep the shard if an earlier run finished it (same plan, same hash), else (re)build it."""
    if task.expect and task.expect.get("digest") == task.digest and task.path.is_file():
        kept = _check_finished(task)
        if kept is not None:
            if report:
                report(len(task.items))
            return kept
    return build_shard(task, report)


def _check_finished(task: ShardTask) -> ShardResult | None:
    try:
        sha = files.sha256(task.path)
        if sha != task.expect.get("sha256"):
            return None
        summary = summarize_shard(task.path, len(task.class_wnids), moments=task.split == "train")
    except (OSError, ValueError, KeyError):
        return None
    if summary["count"] != task.expect.get("count"):
        return None
    return ShardResult(task.name, task.split, task.index, task.digest, summary["count"],
                       task.path.stat().st_size, sha, summary["per_class"],
                       [tuple(r) for r in task.expect.get("rejects", [])], summary["moments"], kept=True)


def build_shard(task: ShardTask, report=None) -> ShardResult:
    n_classes = len(task.class_wnids)
    per_class = np.zeros(n_classes, np.int64)
    moments = Moments() if task.split == "train" else None
    rejects: list[tuple[str, str]] = []
    buf = np.empty((CHUNK, shards.IMAGE_SIZE, shards.IMAGE_SIZE, 3), np.uint8)
    with _Reader() as reader, shards.ShardWriter(task.path, len(task.items), task.class_wnids, task.class_words,
                                                 task.split, task.index, durable=False) as writer:
        for start in range(0, len(task.items), CHUNK):
            chunk = task.items[start:start + CHUNK]
            blobs = reader.read_all(chunk)
            good: list[Item] = []
            for it, blob in zip(chunk, blobs):
                try:
                    if isinstance(blob, images.BadImage):
                        raise blob
                    buf[len(good)] = images.load(blob)
                except images.BadImage as e:
                    rejects.append((it.name, str(e)))
                    continue
                good.append(it)
            batch = buf[:len(good)]
            writer.append(batch, [it.label for it in good], [it.ilsvrc_id for it in good], [it.name for it in good])
            for it in good:
                per_class[it.label] += 1
            if moments is not None and good:
                moments.add(batch)
            if report:
                report(len(chunk))
        count = writer.count
    return ShardResult(task.name, task.split, task.index, task.digest, count, task.path.stat().st_size,
                       files.sha256(task.path), per_class.tolist(), rejects, moments)


def summarize_shard(path: Path, n_classes: int, moments: bool) -> dict:
    """Count, images per class and (optionally) the moments of a finished shard, read back."""
    meta = shards.read_meta(path)
    labels = shards.read_labels(path)
    if len(labels) != meta.count:
        raise ValueError(f"{path.name}: {len(labels)} labels for {meta.count} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{path.name}: labels outside 0..{n_classes - 1}")
    out = {"count": meta.count, "per_class": np.bincount(labels, minlength=n_classes).tolist(), "moments": None}
    if moments:
        out["moments"] = Moments.of_shard(meta)
    return out


class _Reader:
    """Reads byte ranges of the source files, keeping each file open for the shard's duration."""

    def __init__(self):
        self._fds: dict[str, int] = {}

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def read_all(self, items: list[Item]) -> list:
        """The bytes of each item (or the BadImage saying why not), read in file-offset order:
        a shuffled shard's images lie all over the archive, so this spares the disk some seeks."""
        out: list = [None] * len(items)
        for i in sorted(range(len(items)), key=lambda i: (items[i].path, items[i].offset)):
            try:
                out[i] = self.read(items[i])
            except images.BadImage as e:
                out[i] = e
        return out

    def read(self, item: Item) -> bytes:
        fd = self._fds.get(item.path)
        if fd is None:
            try:
                fd = self._fds[item.path] = os.open(item.path, os.O_RDONLY)
            except OSError as e:
                raise images.BadImage(f"cannot open {item.path}: {e.strerror}") from None
        data = os.pread(fd, item.size, item.offset)
        if len(data) != item.size:
            raise images.BadImage(f"short read: {len(data)} of {item.size} bytes (file changed or cut short?)")
        return data


# ------------------------------------------------------------------------- running tasks

_progress_queue = None


def _init_worker(q) -> None:
    global _progress_queue
    _progress_queue = q
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool


def _call(fn, task):
    """fn(task, report) in a worker; returns its result and the progress it reported in all, so
    that the parent knows how much is still on its way (the queue's thread sends it later)."""
    sent = 0

    def report(n: int) -> None:
        nonlocal sent
        sent += n
        _progress_queue.put(n)

    return fn(task, report), sent


def parallel_map(fn, tasks: list, workers: int, progress=None, on_result=None, before_start=None):
    """Run fn(task, report) for every task; results in task order.

    workers <= 1 runs in this process. `progress.update(n)` receives the counts that tasks report;
    `on_result(result)` is called as each result arrives (in completion order); `before_start()`
    runs once the worker processes exist (threads started there are never forked)."""
    results = [None] * len(tasks)
    update = progress.update if progress is not None else (lambda n: None)
    if workers <= 1 or len(tasks) <= 1:
        if before_start:
            before_start()
        for i, task in enumerate(tasks):
            results[i] = fn(task, update)
            if on_result:
                on_result(results[i])
        return results
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    q = ctx.Queue()
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(q,)) as pool:
        if before_start:
            before_start()

        def finished(i, _) -> None:  # in the pool's result thread: tell the loop below which task ended
            q.put(("done", i))

        pending = {i: pool.apply_async(_call, (fn, task), callback=partial(finished, i),
                                       error_callback=partial(finished, i))
                   for i, task in enumerate(tasks)}
        sent = received = 0
        while pending or received < sent:  # until every result and every progress report is in
            try:
                message = q.get(timeout=1.0)  # a worker's progress count, or ("done", task index)
            except queue.Empty:
                if not pending:
                    break  # a worker gone before sending its last report: the count stays short
                continue
            if isinstance(message, tuple):
                i = message[1]
                results[i], n = pending.pop(i).get()  # re-raises a worker's exception here
                sent += n
                if on_result:
                    on_result(results[i])
            else:
                received += message
                update(message)
    return results

