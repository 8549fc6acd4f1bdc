"""Helpers for tests that prepare generated data by several routes and compare the results:
run prepare quietly, read a split back, hash the shards, and the one-line error of a failed run."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from data_prep import fake_ilsvrc as fake
from data_prep import prepare, shards
from repro import cli, files


def run(src, out, **kw) -> prepare.Summary:
    """prepare on one worker in small shards (4 images), quietly."""
    kw.setdefault("workers", 1)
    kw.setdefault("shard_size", 4)
    return prepare.prepare(prepare.Options(Path(src), Path(out), quiet=True, **kw))


def dataset(seed: int, per_class: int):
    """Three awkward classes (CMYK, greyscale, odd sizes, ...; data_prep/fake_ilsvrc.py) with
    `per_class` training and 2 validation images each: (train, val, words)."""
    return fake.awkward_dataset(np.random.default_rng(seed), n_classes=3, per_class=per_class, val_per_class=2)


def prepared_archives(data, root: Path) -> Path:
    """`data` written as the official ILSVRC-2012 archives under root/src and prepared into
    root/out: the reference the other routes must give byte for byte."""
    train, val, words = data
    fake.write_ilsvrc2012(root / "src", train, val, words)
    assert run(root / "src", root / "out").complete
    return root / "out"


def shard_hashes(out, split) -> list[str]:
    return [files.sha256(p) for p in shards.list_shards(out, split)]


def split_contents(out, split) -> tuple[list[int], list[int], list[str], np.ndarray]:
    """Labels, ILSVRC ids, file names and images of a split, in shard order."""
    labels, ids, names, imgs = [], [], [], [np.zeros((0, 256, 256, 3), np.uint8)]
    for p in shards.list_shards(out, split):
        with h5py.File(p, "r") as f:
            labels += f["labels"][:].tolist()
            ids += f["ilsvrc_ids"][:].tolist()
            names += [s.decode() for s in f["filenames"][:]]
            imgs.append(f["images"][:])
    return labels, ids, names, np.concatenate(imgs)


def same_contents(a, b, split) -> bool:
    """The same labels, file names and pixels in the same order (ILSVRC ids aside)."""
    (la, _, na, ia), (lb, _, nb, ib) = split_contents(a, split), split_contents(b, split)
    return la == lb and na == nb and np.array_equal(ia, ib)


def manifest_except(out, *keys) -> dict:
    manifest = shards.read_manifest(out)
    for k in keys:
        manifest.pop(k)
    return manifest


def error_line(capsys, args) -> str:
    """The one line `./run.sh prepare ARGS` prints as it exits with status 2."""
    assert cli.main(["prepare", "--workers", "1", "--quiet"] + [str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err
