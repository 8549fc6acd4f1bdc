"""A run directory: everything one training run leaves behind, in one place.

    runs/<name>/
        config.toml        the resolved config (loadable again: `./run.sh train --resume` reads it)
        provenance.json    git commit, library versions, devices, seeds, the data's identity
                           (classes, every shard's hash), command; one entry per training session
        .train.lock        held by the process training in the run (RunLock)
        metrics.jsonl      one JSON object per line: {"kind": "train" | "val" | "event", ...}
        checkpoints/       see repro.checkpoint
        eval/              results of ./run.sh eval (repro.evaluate)
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from repro import files, machine
from repro.config import Config, dumps_toml, load_config

CONFIG, PROVENANCE, METRICS = "config.toml", "provenance.json", "metrics.jsonl"
REPO = Path(__file__).resolve().parent.parent


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_config(run_dir: Path, cfg: Config) -> None:
    names = "".join(c if c.isprintable() else "?" for c in f"{run_dir.name} (from {cfg.name}.toml)")
    header = f"# Resolved config of run {names}, written {now()}\n"  # one comment line, whatever the names
    files.atomic_write(run_dir / CONFIG, header + dumps_toml(cfg))


def read_config(run_dir: str | Path, overrides=()) -> Config:
    cfg = load_config(Path(run_dir) / CONFIG, list(overrides))
    cfg.name = Path(run_dir).name
    return cfg


def git_commit() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


def versions() -> dict:
    import h5py
    import numpy
    import PIL

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
            "h5py": h5py.__version__, "pillow": PIL.__version__}


def data_identity(data_root: str | Path) -> dict:
    """What identifies prepared data: where it is, its year and seed, its classes (count and a
    hash of the WordNet ids in class order), the subset it is (manifest "subset"), and the
    SHA-256 of every shard of every split, from its manifest.json."""
    from repro import data

    manifest = data.read_manifest(data_root)
    wnids = [wnid for wnid, _ in data.class_names(data_root)]
    listed = {s: {x["name"]: x["sha256"] for x in v["shards"]} for s, v in manifest["splits"].items()}  # checked
    return {"root": str(data_root), "year": manifest.get("year"), "seed": manifest.get("seed"),
            "classes": len(wnids), "classes_sha256": hashlib.sha256("\n".join(wnids).encode()).hexdigest(),
            "subset": manifest.get("subset"), "shards": listed}


def recorded_data(run_dir: str | Path) -> dict | None:
    """The data identity the run's last training session recorded (None if it recorded none)."""
    path = Path(run_dir) / PROVENANCE
    try:
        data = json.loads(path.read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return data if isinstance(data, dict) and "shards" in data else None


def data_differences(recorded: dict, current: dict, splits=None) -> list[str]:
    """How `current` data differs from what a run recorded: classes, and the shards of `splits`
    (None: every split either holds; [] none). Empty when they are the same data."""
    out = []
    if recorded.get("classes_sha256") and recorded["classes_sha256"] != current["classes_sha256"]:
        out.append(f"other classes ({current['classes']}, the run's {recorded.get('classes')}: "
                   f"{'another selection or order' if current['classes'] == recorded.get('classes') else 'another number'})")
    ours, theirs = recorded.get("shards", {}), current["shards"]
    for split in sorted(set(ours) | set(theirs)) if splits is None else splits:
        a, b = ours.get(split), theirs.get(split)
        if a is None and b is None:
            continue
        if a is None or b is None:
            out.append(f"the {split} split is {'missing' if b is None else 'not in the run'}")
        elif a != b:
            changed = sum(a.get(name) != digest for name, digest in b.items()) + len(set(a) - set(b))
            out.append(f"{changed} of the {len(a)} {split} shards differ")
    return out


def write_provenance(run_dir: Path, cfg: Config, data_root: Path, extra: dict) -> None:
    data = data_identity(data_root)
    record = {"started": now(), "config": cfg.name, "command": sys.argv, "git": git_commit(),
              "versions": versions(), "hardware": machine.hardware(), "seeds": {"train": cfg.train.seed,
              "data": cfg.data.seed}, "data": data, **extra}
    path = run_dir / PROVENANCE
    history = json.loads(path.read_text()).get("sessions", []) if path.is_file() else []
    history.append(record)
    files.atomic_write(path, json.dumps({**record, "sessions": history}, indent=1) + "\n")


class RunLock:
    """One training process at a time per run directory: an exclusive lock on R/.train.lock,
    held while training. The operating system drops it when the process ends, however it ends,
    so a lock left by a crash is stale by construction and the next run takes it; the file
    says who holds a live one (pid, host, start time)."""

    NAME = ".train.lock"

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / self.NAME
        self._file = None
        self.unsupported: str | None = None  # why this file system could not lock, if it could not

    def acquire(self) -> bool:
        """False if another process holds the lock. Where the file system cannot lock at all,
        True, with the reason in `unsupported` (files.try_lock)."""
        f = open(self.path, "a+")
        state = files.try_lock(f)
        if state == "busy":
            f.close()
            return False
        self.unsupported = None if state == "taken" else state
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}) + "\n")
        f.flush()
        self._file = f
        return True

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop metrics.jsonl lines from after global step `step` (written after the checkpoint a
    resumed run starts from, so they would be written again); returns how many were dropped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row_step = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):
            dropped += 1  # a line cut by a crash
            continue
        if isinstance(row_step, int) and row_step > step:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        files.atomic_write(path, "".join(kept))
    return dropped


class Metrics:
    """Appends JSON lines to metrics.jsonl (flushed per line, so a crash loses at most one)."""

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / METRICS, "a", buffering=1)

    def write(self, kind: str, **values) -> None:
        self.file.write(json.dumps({"kind": kind, "time": now(), **values}) + "\n")

    def close(self) -> None:
        self.file.close()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows
