"""The work done per shard, in worker processes: build a shard, or check a finished one.

One shard is one task. A worker reads each image's bytes in place (os.pread at the offset the
catalog found in the archive; no extraction), decodes and resizes it (data_prep.images), writes
the shard through ShardWriter (temporary name, renamed when complete; streamed from the plan,
so the shard is hashed as it is written, unless an image is rejected, and its pages leave the
page cache as it grows), and returns the shard's hash, its per-class counts, its rejects and,
for training shards, the exact integer sums that the mean image and the covariance are
computed from (data_prep.stats). The parent process never touches pixels, so nothing large
crosses a process boundary; it flushes each finished shard to the disk (fsync) before recording
it in the journal, so that no worker waits for the disk.

What a finished shard was built from is recorded with it, so that a later run keeps it only if
it would read the same bytes again (not merely the same names and byte ranges):
- `inputs_sha256`, the SHA-256 of every image's bytes as read, in the shard's order (computed
  while building, at no extra read);
- `stamp`, a digest of the identity (repro.files.identity: size, mtime, ctime, inode, device) of
  each source file the images came from, taken before they were read.
A later run keeps the shard when its file still has the recorded hash and either the stamp is
unchanged (the same files, untouched: nothing to read) or, when any source file was touched,
copied or downloaded again, the bytes read now hash to `inputs_sha256`; else it rebuilds it.

`parallel_map` runs tasks on a pool (or in this process when workers <= 1) and relays progress.
"""
from __future__ import annotations

import collections
import errno
import hashlib
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from data_prep import images, shards
from data_prep.sources import Item
from data_prep.stats import Moments
from repro import files
from repro.errors import UserError

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
    stamp: str = ""  # identity of the source files, when the images were read (source_stamp)
    inputs_sha256: str = ""  # of the images' bytes as read (InputsHash)

    def journal_entry(self) -> dict:
        return {"name": self.name, "digest": self.digest, "count": self.count, "bytes": self.bytes,
                "sha256": self.sha256, "rejects": [list(r) for r in self.rejects], "stamp": self.stamp,
                "inputs_sha256": self.inputs_sha256}


# ------------------------------------------------------------------- what a shard is made of

def source_stamp(items: list[Item], cache: dict | None = None) -> str:
    """A digest of the identity of every file the items' bytes lie in (an archive or two, or one
    file per image in a tree); `cache` (path -> identity) saves stat calls across shards. Paths
    are not part of it (the device and inode name the file), so the same source named by a
    relative or an absolute path, or through a link, has the same stamp."""
    h = hashlib.sha256()
    for path in sorted({it.path for it in items}):
        ident = cache.get(path) if cache is not None else None
        if ident is None:
            try:
                ident = files.identity(path)
            except OSError as e:
                ident = f"unreadable: {e.strerror}"
            if cache is not None:
                cache[path] = ident
        h.update(f"{ident}\n".encode())
    return h.hexdigest()


class InputsHash:
    """SHA-256 of a shard's inputs: each image's bytes as read (or why they could not be), in
    the shard's order, each preceded by its length."""

    def __init__(self):
        self._h = hashlib.sha256()

    def add(self, blob) -> None:
        if isinstance(blob, images.BadImage):
            self._h.update(b"unreadable:" + str(blob).encode("utf-8", "surrogateescape") + b"\0")
        else:
            self._h.update(len(blob).to_bytes(8, "little"))
            self._h.update(blob)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def inputs_sha256(items: list[Item]) -> str:
    """What InputsHash gives when the shard is built now: its images' bytes read again."""
    h = InputsHash()
    with _Reader() as reader:
        for start in range(0, len(items), CHUNK):
            for blob in reader.read_all(items[start:start + CHUNK]):
                h.add(blob)
    return h.hexdigest()


# ----------------------------------------------------------------------------- one shard

def run_shard(task: ShardTask, report=None) -> ShardResult:
    """Keep the shard if an earlier run finished it from the same bytes (same plan, same hash,
    same inputs: see the module docstring), else (re)build it."""
    try:
        if task.expect and task.expect.get("digest") == task.digest and task.path.is_file():
            kept = _check_finished(task)
            if kept is not None:
                if report:
                    report(len(task.items))
                return kept
        return build_shard(task, report)
    except OSError as e:
        if disk_full(e):  # one plain ENOSPC for the parent, whatever error followed it here
            raise OSError(errno.ENOSPC, f"No space left on device (writing {task.name})") from None
        raise


def _check_finished(task: ShardTask) -> ShardResult | None:
    expect = task.expect
    try:
        stamp = source_stamp(task.items)  # before anything is read
        sha = files.sha256(task.path)
        if sha != expect.get("sha256") or not expect.get("inputs_sha256"):
            return None
        if stamp != expect.get("stamp") and inputs_sha256(task.items) != expect["inputs_sha256"]:
            return None  # a source file changed where this shard's images lie
        summary = summarize_shard(task.path, len(task.class_wnids), moments=task.split == "train")
    except (OSError, ValueError, KeyError):
        return None
    if summary["count"] != expect.get("count"):
        return None
    return ShardResult(task.name, task.split, task.index, task.digest, summary["count"],
                       task.path.stat().st_size, sha, summary["per_class"],
                       [tuple(r) for r in expect.get("rejects", [])], summary["moments"], kept=True,
                       stamp=stamp, inputs_sha256=expect["inputs_sha256"])


def disk_full(e: BaseException) -> bool:
    """Whether an error, or one it was raised while handling, is a full disk or quota (errno, or
    h5py's text), so that a later error (e.g. a failed close) does not hide it."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(e) for text in ("No space left on device", "errno = 28", "Disk quota exceeded")):
            return True
        e = e.__cause__ or e.__context__
    return False


def build_shard(task: ShardTask, report=None) -> ShardResult:
    n_classes = len(task.class_wnids)
    per_class = np.zeros(n_classes, np.int64)
    moments = Moments() if task.split == "train" else None
    rejects: list[tuple[str, str]] = []
    buf = np.empty((CHUNK, shards.IMAGE_SIZE, shards.IMAGE_SIZE, 3), np.uint8)
    stamp, inputs = source_stamp(task.items), InputsHash()  # the stamp before any byte is read
    planned = ([it.label for it in task.items], [it.ilsvrc_id for it in task.items], [it.name for it in task.items])
    with _Reader() as reader, shards.ShardWriter(task.path, len(task.items), task.class_wnids, task.class_words,
                                                 task.split, task.index, durable=False, planned=planned) as writer:
        for start in range(0, len(task.items), CHUNK):
            chunk = task.items[start:start + CHUNK]
            blobs = reader.read_all(chunk)
            good: list[Item] = []
            for it, blob in zip(chunk, blobs):
                inputs.add(blob)
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
                       writer.sha256, per_class.tolist(), rejects, moments, stamp=stamp,
                       inputs_sha256=inputs.hexdigest())


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


# Source files a worker keeps open at once. An archive holds thousands of images and is read
# through one descriptor; an extracted tree (or Kaggle's layout) has a file per image, and a
# shard's 1,024 of them held open together would pass a common per-process limit of 1,024 open
# files (`ulimit -n`). Items are read grouped by file, so a few recent descriptors suffice.
OPEN_FILES = 32


class _Reader:
    """Reads byte ranges of the source files, keeping the OPEN_FILES used last open until the
    shard is done."""

    def __init__(self):
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()

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
            while len(self._fds) >= OPEN_FILES:  # the least recently used file is closed
                os.close(self._fds.popitem(last=False)[1])
            try:
                fd = self._fds[item.path] = os.open(item.path, os.O_RDONLY)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):  # the process's limit, not this image's fault
                    raise
                raise images.BadImage(f"cannot open {item.path}: {e.strerror}") from None
        else:
            self._fds.move_to_end(item.path)
        try:
            data = os.pread(fd, item.size, item.offset)
        except OSError as e:  # e.g. a bad sector: this image is lost, not the run
            raise images.BadImage(f"read error: {e.strerror}") from None
        if len(data) != item.size:
            raise images.BadImage(f"short read: {len(data)} of {item.size} bytes (file changed or cut short?)")
        return data


# ------------------------------------------------------------------------- running tasks

_progress_queue = None
_started = None  # shared array: task index -> pid of the worker that took it (written at once, no queue)


def _init_worker(q, started) -> None:
    global _progress_queue, _started
    _progress_queue, _started = q, started
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool


class WorkerDied(UserError):
    """A worker process ended without finishing its task (killed: by the kernel's out-of-memory
    killer, a signal, or a crash in a decoder). multiprocessing.Pool would wait for that task for
    ever; parallel_map notices and raises this instead, one line for the user."""


def _call(fn, task, i: int):
    """fn(task, report) in a worker; returns its result and the progress it reported in all, so
    that the parent knows how much is still on its way (the queue's thread sends it later).
    First it says which process runs task i, so that the parent can name it if the process dies."""
    _started[i] = os.getpid()
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
    started = ctx.Array("q", len(tasks), lock=False)
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(q, started)) as pool:
        if before_start:
            before_start()

        def finished(i, _) -> None:  # in the pool's result thread: tell the loop below which task ended
            q.put(("done", i))

        pending = {i: pool.apply_async(_call, (fn, task, i), callback=partial(finished, i),
                                       error_callback=partial(finished, i))
                   for i, task in enumerate(tasks)}
        alive = _Watch(pool, tasks, started)
        sent = received = 0
        while pending or received < sent:  # until every result and every progress report is in
            alive.check(pending)
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


class _Watch:
    """Notices a pool worker that died (Pool starts another in its place and forgets the task):
    the processes the pool started with are checked about once a second."""

    def __init__(self, pool, tasks: list, started):
        self.pool, self.tasks = pool, tasks
        self.pids = self._pids()
        self.started = started  # task index -> pid of the process that took it (0: not yet)
        self.last = time.monotonic()

    def _pids(self) -> set[int]:
        return {p.pid for p in getattr(self.pool, "_pool", ())}  # (a private list: no check without it)

    def check(self, pending: dict) -> None:
        if time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        gone = self.pids - self._pids()
        gone |= {p.pid for p in getattr(self.pool, "_pool", ()) if p.exitcode is not None}
        if not gone:
            return
        lost = [i for i in sorted(pending) if self.started[i] in gone]
        names = ", ".join(_task_name(self.tasks[i], i) for i in lost[:3]) or "a task"
        raise WorkerDied(f"a worker process died while working on {names} (killed by the system: out of "
                         f"memory? or a crash in a decoder); what was finished is kept: run the same command "
                         f"again, with fewer --workers if memory is short")


def _task_name(task, i: int) -> str:
    return str(getattr(task, "name", None) or getattr(task, "path", None) or f"task {i}")
