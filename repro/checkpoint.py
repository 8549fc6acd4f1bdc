"""Checkpoints: one directory per checkpoint, one file per tower, written atomically.

    checkpoints/step-00001234/
        tower0.pt    {"params": {towers.0.* tensors}, "velocity": {same keys}}
        tower1.pt
        state.pt     {"step", "epoch", "step_in_epoch", "schedule", "config", ...}
        sha256.json  {"state.pt": ..., "tower0.pt": ..., "tower1.pt": ...}  (written last)

One file per tower lets each process of a model-parallel pair write and read only its own tower.
The directory is written under a temporary name and renamed when complete, so a crash never
leaves a half-written checkpoint that looks finished. Every file's SHA-256 is recorded and
checked when the file is loaded: a checkpoint damaged on disk (a flipped bit, a truncated copy)
is reported, never loaded, and `load_newest` falls back to the previous sound one, saying so.
Files are read with torch.load(weights_only=True): plain tensors and numbers only, no pickled code.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from repro import files
from repro.errors import UserError
from repro.grouped import from_grouped_state, to_grouped_state

_CKPT = re.compile(r"^step-(\d{8})$")
DIGESTS = "sha256.json"


class DamagedCheckpoint(UserError):
    """A checkpoint file that is missing, unreadable, or not what was written."""


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else ())
             if (m := _CKPT.match(p.name)) and (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def tower_state(model, optimizer=None) -> dict[int, dict]:
    """{tower: {"params": ..., "velocity": ...}} in two-tower keys, for the towers held here."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    velocity = {}
    if optimizer is not None:
        for n, p in model.named_parameters():
            v = optimizer.state.get(p, {}).get("velocity")
            if v is not None:
                velocity[n] = v
    if model.grouped:
        params = from_grouped_state(params, model.m)
        velocity = from_grouped_state(velocity, model.m) if velocity else {}
    out: dict[int, dict] = {}
    for n, t in params.items():
        tower = int(n.split(".")[1])
        entry = out.setdefault(tower, {"params": {}, "velocity": {}})
        entry["params"][n] = t.cpu()
        if n in velocity:
            entry["velocity"][n] = velocity[n].cpu()
    return out


def save(run_dir: str | Path, step: int, model, optimizer, state: dict, keep: int,
         write_state: bool = True, barrier=None) -> Path:
    """Write this process's towers (and, if `write_state`, state.pt, then rename into place).

    In a distributed run every process of pair 0 calls this with the same `step`; `barrier` is
    called between the phases so that the one process with write_state=True renames last.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.partial"
    if write_state:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    for tower, entry in tower_state(model, optimizer).items():
        torch.save(entry, tmp / f"tower{tower}.pt")
    if barrier:
        barrier()
    if write_state:
        torch.save(state, tmp / "state.pt")
        digests = {f.name: files.sha256(f) for f in sorted(tmp.glob("*.pt"))}
        (tmp / DIGESTS).write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            files.fsync(f)
        replaced = root / f".step-{step:08d}.replaced"
        if final.exists():  # the same step saved again: the new one in place before the old one goes
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
        shutil.rmtree(replaced, ignore_errors=True)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def digests(ckpt: str | Path) -> dict[str, str]:
    """The SHA-256 of each file as written ({} for a checkpoint from before digests were kept)."""
    path = Path(ckpt) / DIGESTS
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        raise DamagedCheckpoint(f"checkpoint {ckpt} is damaged ({DIGESTS} is not readable)") from None


_hashed: dict[str, tuple[list[int], str]] = {}  # path -> (files.identity, SHA-256) of files checked
SETTLED_NS = 2_000_000_000  # a file last changed this long before it was hashed: see _sha256


def _sha256(path: Path) -> str:
    """files.sha256, computed once per file and process: choosing a checkpoint (newest_sound)
    and loading it (load_into) both check it, and a tower file of the paper's model is ~250 MB.
    A file written, replaced or copied over since has another identity and is read again. The
    identity's times tick coarsely on some file systems (up to 2 s), so a file changed less than
    SETTLED_NS before it was hashed is not remembered: a change after the hash might not show."""
    key, identity = str(path.resolve()), files.identity(path)
    if key in _hashed and _hashed[key][0] == identity:
        return _hashed[key][1]
    started = time.time_ns()
    digest = files.sha256(path)
    if max(identity[1], identity[2]) < started - SETTLED_NS:  # mtime and ctime settled
        _hashed[key] = identity, digest
    return digest


def check(ckpt: str | Path, names: list[str]) -> None:
    """Raise DamagedCheckpoint unless each named file is there with the SHA-256 it was written with."""
    ckpt = Path(ckpt)
    recorded = digests(ckpt)
    for name in names:
        path = ckpt / name
        if not path.is_file():
            raise DamagedCheckpoint(f"checkpoint {ckpt} is damaged ({name} is missing)")
        if recorded and _sha256(path) != recorded.get(name):
            raise DamagedCheckpoint(f"checkpoint {ckpt} is damaged ({name} differs from what was written: "
                                    f"its SHA-256 is not the one in {DIGESTS})")


def _load(path: Path, device="cpu"):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DamagedCheckpoint(f"checkpoint file {path} is missing") from None
    except Exception as e:  # a truncated or foreign file
        raise DamagedCheckpoint(f"checkpoint file {path} cannot be read ({type(e).__name__}: {e})") from None


def read_state(ckpt: str | Path) -> dict:
    check(ckpt, ["state.pt"])
    return _load(Path(ckpt) / "state.pt")


def load_into(ckpt: str | Path, model, optimizer=None) -> dict:
    """Load the towers this model holds (and their velocities) from a checkpoint, each file
    checked against its recorded SHA-256 first; return state.pt."""
    ckpt = Path(ckpt)
    towers = range(model.m.towers) if model.grouped else [int(k) for k in model.towers]
    check(ckpt, [f"tower{t}.pt" for t in towers] + ["state.pt"])
    params, velocity = {}, {}
    for t in towers:
        entry = _load(ckpt / f"tower{t}.pt")
        params.update(entry["params"])
        velocity.update(entry["velocity"])
    if model.grouped:
        params = to_grouped_state(params, model.m)
        velocity = to_grouped_state(velocity, model.m) if velocity else {}
    missing = set(dict(model.named_parameters())) - set(params)
    if missing:
        raise UserError(f"{ckpt}: checkpoint does not fit this model (missing {sorted(missing)[0]})")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if params[n].shape != p.shape:
                raise UserError(f"{ckpt}: {n} has shape {tuple(params[n].shape)}, the model {tuple(p.shape)}")
            p.copy_(params[n])
            if optimizer is not None and n in velocity:
                optimizer.state[p]["velocity"] = velocity[n].to(p.device).clone()
    return _load(ckpt / "state.pt")


def newest_sound(run_dir: str | Path, say=None) -> Path | None:
    """The newest checkpoint of a run whose every file is as written (None if there is none). A
    damaged newer one is reported with `say` (default: a line on stderr), never used silently."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    dirs = checkpoint_dirs(run_dir)
    for k, ckpt in enumerate(reversed(dirs)):
        try:
            check(ckpt, sorted(set(digests(ckpt)) | {p.name for p in ckpt.glob("*.pt")}))
        except DamagedCheckpoint as e:
            say(f"warning: {e}; " + ("trying the previous checkpoint" if k + 1 < len(dirs) else "it was the oldest"))
            continue
        if k:
            say(f"warning: using {ckpt}, the newest sound checkpoint of {run_dir}")
        return ckpt
    return None
