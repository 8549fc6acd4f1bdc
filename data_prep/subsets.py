"""`prepare --classes N` / `--classes-file F`: the shards of some of the classes, to try the recipe
on (say) 100 classes before a multi-day run on all 1000.

The selected classes keep their sorted-WordNet-id order and are re-indexed 0..N-1 in both splits;
their ILSVRC ids (the devkit's) are kept. `--classes N` takes the first N classes in that order
(n01440764 tench, n01443537 goldfish, ... for ILSVRC-2012); `--classes-file F` names them, one
WordNet id per line (anything after the id on a line, blank lines and lines starting with # are
ignored, so LOC_synset_mapping.txt or synset_words.txt lines serve too).

manifest.json records the selection under "subset", so that later commands can tell a subset from
the full data: null for all classes, else
    {"classes": N, "of": 1000, "selected_by": "--classes 100" or "--classes-file NAME",
     "wnids_sha256": SHA-256 of the selected WordNet ids, one per line, each ending in a newline}
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from data_prep import sources
from data_prep.sources import Catalog
from repro.errors import UserError


def read_classes_file(path: str | Path) -> list[str]:
    """The WordNet ids a --classes-file lists, in file order."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"--classes-file {path}: {e.strerror}") from None
    wnids, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        token = line.split()[0] if line.split() else ""
        if not token or token.startswith("#"):
            continue
        if not sources.WNID.match(token):
            raise UserError(f"--classes-file {path.name} line {n}: {token[:40]!r} is not a WordNet id (n + 8 digits)")
        if token in seen:
            raise UserError(f"--classes-file {path.name} line {n}: {token} is listed twice")
        seen.add(token)
        wnids.append(token)
    if not wnids:
        raise UserError(f"--classes-file {path} lists no WordNet ids")
    return wnids


def choose(cat: Catalog, first: int = 0, classes_file: str | Path | None = None) -> tuple[list[str], str] | None:
    """(the selected WordNet ids, how they were selected), or None for all classes."""
    names = [c.wnid for c in cat.classes]
    if classes_file:
        wanted = read_classes_file(classes_file)
        known = set(names)
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise UserError(f"--classes-file {Path(classes_file).name}: {unknown[0]}"
                            f"{f' and {len(unknown) - 1} more' if len(unknown) > 1 else ''} not among the "
                            f"{len(names)} classes of {cat.root}")
        return wanted, f"--classes-file {Path(classes_file).name}"
    if first:
        if first > len(names):
            raise UserError(f"--classes {first}: {cat.root} has {len(names)} classes")
        return names[:first], f"--classes {first}"
    return None


def select(cat: Catalog, wnids: list[str], selected_by: str) -> Catalog:
    """Keep the classes `wnids` (re-indexed in sorted-WNID order) and their images; set cat.subset.
    A selection of every class is the full data (subset None)."""
    chosen = set(wnids)
    total = len(cat.classes)
    if chosen == {c.wnid for c in cat.classes}:
        cat.subset = None
        return cat
    new_label, kept = {}, []
    for i, c in enumerate(cat.classes):
        if c.wnid in chosen:
            new_label[i] = len(kept)
            kept.append(c)
    cat.classes = kept
    for split, items in cat.splits.items():
        cat.splits[split] = [replace(it, label=new_label[it.label]) for it in items if it.label in new_label]
    cat.rejects = [r for r in cat.rejects if _reject_class(r.name) in chosen or _reject_class(r.name) is None]
    if cat.patched:
        patch = next((str(p) for p in cat.sources if p.name == sources.ARCHIVES[2010]["patches"]), None)
        cat.patched = {split: sum(it.path == patch for it in items) for split, items in cat.splits.items()}
    listing = "".join(f"{c.wnid}\n" for c in kept)
    cat.subset = {"classes": len(kept), "of": total, "selected_by": selected_by,
                  "wnids_sha256": hashlib.sha256(listing.encode()).hexdigest()}
    return cat


def _reject_class(name: str) -> str | None:
    """The class an unusable archive member or file belongs to, when its name says (n01440764.tar/...,
    n01440764_123.JPEG, n01440764/...); None when it does not (validation files)."""
    head = name.split("/", 1)[0].split(" ", 1)[0]
    wnid = head[:9]
    return wnid if sources.WNID.match(wnid) and head[9:10] in ("", ".", "_") else None
