"""Files written whole or not at all, and their hashes: the one helper every writer uses
(prepare's shards, stats, manifest and lists; a run's config, provenance, eval records, reports;
checkpoints).

A file is written under a temporary name beside its final one (".<name>.partial", which readers
never list), flushed to the disk, and renamed into place: a reader sees the old file or the new
one, never half of one, and a crash leaves at most a .partial file, which the next writer
replaces. `durable=False` skips the flush (the rename is still atomic): for files whose loss in
a power failure costs nothing but a rerun.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from repro.errors import UserError


def check_dir(path: str | Path, option: str, must_exist: bool = True) -> Path:
    """A directory the user named (`option`, e.g. "--verify"): a file there, or (`must_exist`)
    nothing there, is a UserError (one line), said before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a directory: pass a directory"
                        + ("" if must_exist else " (created if missing)"))
    if must_exist and not path.exists():
        raise UserError(f"{option} {path}: no such directory")
    return path


def make_dir(path: str | Path, option: str) -> Path:
    """A directory the user named (`option`, e.g. "--out"), created with its parents if missing;
    a file there, or a place where no directory can be made, is a UserError (one line)."""
    path = check_dir(path, option, must_exist=False)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {option} {path}: {e.strerror}") from None
    return path


def tmp_name(path: str | Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def fsync(path: str | Path, uncache: bool = False) -> None:
    """Flush a file's data, or a directory's entries (its renames), to the disk.

    uncache: then drop the file from the page cache (its pages are clean now), for data written
    once and not read again soon (prepare's shards: 140 GB and more for ImageNet). Its pages go
    back to the free lists, where the next writes find them: on this project's 2-core virtual
    machine, writing a new file took 0.04 ms of kernel time per 196 KB image into pages just
    freed, 0.38 ms into pages not in use recently (`python benchmarks/bench_prepare.py
    --writes`). No-op where the OS lacks posix_fadvise (macOS), and the advice's own errors are
    ignored (it is advice).

    Some file systems cannot flush a directory at all and say so with EINVAL (SMB/CIFS mounts on
    Linux before 4.17, some Ceph volumes; ENOTSUP and EBADF elsewhere). Those errors are ignored
    for a directory, as PostgreSQL and borg do, and its renames are then as durable as that file
    system makes them; EIO and every other error is raised, and for a file every error is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.fsync(fd)
        except OSError as e:
            if not (e.errno in _NO_DIRECTORY_FSYNC and stat.S_ISDIR(os.fstat(fd).st_mode)):
                raise
        if uncache and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_NO_DIRECTORY_FSYNC = {errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP}


def replace(tmp: str | Path, path: str | Path, durable: bool = True) -> None:
    """Rename a finished temporary file into place, after flushing it if `durable`."""
    if durable:
        fsync(tmp)
    os.replace(tmp, path)


def atomic_write(path: str | Path, content: str | bytes | Callable[[BinaryIO], object],
                 durable: bool = True) -> Path:
    """Write `content` (text, bytes, or a function that writes to a binary file) to `path` whole."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
        replace(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def try_lock(f) -> str:
    """An exclusive lock (flock) on the open file `f`, without waiting; the system drops it when
    the file is closed or the process ends, however it ends. Returns "taken", "busy" (another
    process holds it), or, where the file system cannot lock at all, the system's reason, e.g.
    "Function not implemented" (Lustre mounted without its flock option: ENOSYS) or "No locks
    available" (NFS without its lock service: ENOLCK; also ENOTSUP, EINVAL); any other error is
    raised. Callers go on without the lock then, and say so: a tool that refused to run on such a
    file system would stop its users for nothing, and one that reported another process would
    send them looking for one that does not exist."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return "this system has no flock"
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return "busy"
        if e.errno in _NO_LOCKS:
            return e.strerror or str(e)
        raise
    return "taken"


_NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL}


def identity(path: str | Path) -> list[int]:
    """What changes whenever a file's content may have: [size, mtime_ns, ctime_ns, inode, device].

    A write, a truncation, a copy or a download over the file, or a new file under its name,
    changes the ctime or the inode; unlike the mtime, the ctime cannot be set back by a user (only
    by setting the system clock back). Equal identities mean the same bytes (up to the file
    system's timestamp granularity); unequal ones say nothing: check the content then."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read into one reused buffer (no new memory to fault in per block)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def size_text(n: int) -> str:
    """A size in bytes as people read it: '1.3 GB', or '45.0 MB' below 0.1 GB."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
