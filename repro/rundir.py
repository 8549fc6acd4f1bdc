"""A run directory: everything one training run leaves behind, in one place.

    runs/<name>/
        config.toml        the resolved config (loadable again: `./run.sh train --resume` reads it)
        provenance.json    git commit, library versions, devices, seeds, the shards' hashes, command
        metrics.jsonl      one JSON object per line: {"kind": "train" | "val" | "event", ...}
        checkpoints/       see repro.checkpoint
        eval/              results of ./run.sh eval (repro.evaluate)
"""
from __future__ import annotations

import datetime
import json
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
    header = f"# Resolved config of run {run_dir.name} (from {cfg.name}.toml), written {now()}\n"
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


def write_provenance(run_dir: Path, cfg: Config, data_root: Path, extra: dict) -> None:
    from data_prep import shards

    try:
        manifest = shards.read_manifest(data_root)
        data = {"root": str(data_root), "year": manifest.get("year"), "seed": manifest.get("seed"),
                "shards": {s: {x["name"]: x["sha256"] for x in v.get("shards", [])}
                           for s, v in manifest.get("splits", {}).items()}}
    except (FileNotFoundError, KeyError, ValueError):
        data = {"root": str(data_root)}
    record = {"started": now(), "config": cfg.name, "command": sys.argv, "git": git_commit(),
              "versions": versions(), "hardware": machine.hardware(), "seeds": {"train": cfg.train.seed,
              "data": cfg.data.seed}, "data": data, **extra}
    path = run_dir / PROVENANCE
    history = json.loads(path.read_text()).get("sessions", []) if path.is_file() else []
    history.append(record)
    files.atomic_write(path, json.dumps({**record, "sessions": history}, indent=1) + "\n")


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
