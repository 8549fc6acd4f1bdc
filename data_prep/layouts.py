"""Every way ImageNet arrives -> one Catalog: the official archives and extracted trees
(data_prep/sources.py), the Kaggle download (here) and Hugging Face's Parquet files
(data_prep/hf_parquet.py). Each gives the same classes in the same order (sorted WordNet ids),
the same labels and the same file names for the same images, so the shards are byte-identical
whichever route the images came by (with the devkit beside the data for the ILSVRC ids, which
only the devkit knows; without it they are -1, as for an extracted tree).

The Kaggle download ("ImageNet Object Localization Challenge": kaggle competitions download -c
imagenet-object-localization-challenge, unzipped) holds:

    ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG    the official training files and names
    ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_%08d.JPEG   flat
    ILSVRC/Data/CLS-LOC/test/...                        no labels; not read
    ILSVRC/Annotations/, ILSVRC/ImageSets/              boxes and lists; not read
    LOC_synset_mapping.txt    "n01440764 tench, Tinca tinca": the 1000 classes and their words
    LOC_val_solution.csv      ImageId,PredictionString: "<wnid> x0 y0 x1 y1" per box; the image's
                              class is the first WordNet id
    LOC_train_solution.csv, LOC_sample_submission.csv   not read

--source may name the download folder, its ILSVRC folder (the LOC_ files then in it or beside it)
or ILSVRC/Data/CLS-LOC. A val/ rearranged into class folders (as some scripts do) is accepted,
its folders checked against LOC_val_solution.csv.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from data_prep import hf_parquet, sources
from data_prep.sources import Catalog, ClassInfo, Item, Reject
from repro.errors import UserError

KAGGLE = "kaggle"
MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
VAL_NAME = re.compile(r"^(ILSVRC2012_val_\d{8})\.JPEG$")


def catalog(root: str | Path, year: int = 2012, limit_per_class: int = 0, progress=None, run=None) -> Catalog:
    """Index the images under `root`, in whichever layout; raises UserError with one line.
    progress.update(1) per class folder or archive (Parquet: per file) indexed."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"source {root} is not a directory")
    tick = progress.update if progress is not None else (lambda n: None)
    kaggle = find_kaggle(root)
    hf = None if kaggle else hf_parquet.find(root)
    if kaggle is None and hf is None:
        return sources.catalog(root, year, limit_per_class, progress, run)
    if year != 2012:
        what = "the Kaggle download" if kaggle else "Hugging Face's imagenet-1k"
        raise UserError(f"{root} holds {what}, which is ILSVRC-2012; --year {year} needs the official files")
    cat = kaggle_catalog(kaggle, tick) if kaggle else hf_parquet.catalog(hf, tick, run)
    if limit_per_class:
        for split, items in cat.splits.items():
            cat.splits[split] = sources._limit(items, limit_per_class)
    return cat


def index_unit(root: str | Path) -> str:
    """What the indexing progress counts for this source: Parquet files, else class folders or archives."""
    try:
        return "files" if find_kaggle(Path(root)) is None and hf_parquet.find(Path(root)) else "classes"
    except (UserError, OSError):
        return "classes"


# ------------------------------------------------------------------------------- Kaggle

@dataclass
class KaggleData:
    root: Path  # the download folder (holding ILSVRC/)
    cls_loc: Path  # ILSVRC/Data/CLS-LOC
    mapping: Path
    val_solution: Path


def find_kaggle(root: Path) -> KaggleData | None:
    """The Kaggle download at or around `root`, None if it is not one; one line naming what is
    missing from one that is incomplete."""
    root = Path(root)
    if (root / "ILSVRC" / "Data" / "CLS-LOC").is_dir():
        base = root
    elif root.name == "ILSVRC" and (root / "Data" / "CLS-LOC").is_dir():
        base = root.parent
    elif root.name == "CLS-LOC" and root.parent.name == "Data" and root.parent.parent.name == "ILSVRC":
        base = root.parents[2]
    else:
        return None
    cls_loc = base / "ILSVRC" / "Data" / "CLS-LOC"
    found = {}
    for name in (MAPPING, VAL_SOLUTION):
        found[name] = next((d / name for d in (base, base / "ILSVRC") if (d / name).is_file()), None)
    missing = [f"ILSVRC/Data/CLS-LOC/{d}/" for d in ("train", "val") if not (cls_loc / d).is_dir()]
    missing += [name for name, p in found.items() if p is None]
    if missing:
        raise UserError(f"the Kaggle download in {base} lacks {' and '.join(missing)} (expected beside ILSVRC/ "
                        f"or in it: an incomplete download or unzip?)")
    return KaggleData(base, cls_loc, found[MAPPING], found[VAL_SOLUTION])


def read_mapping(path: Path) -> dict[str, str]:
    """LOC_synset_mapping.txt: wnid -> words, one "<wnid> <words>" line per class."""
    words: dict[str, str] = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, text = line.strip().partition(" ")
        if not sources.WNID.match(wnid):
            raise UserError(f"{path.name} line {n}: expected '<wnid> <words>', got {line.strip()[:60]!r}")
        if wnid in words:
            raise UserError(f"{path.name} line {n}: {wnid} is listed twice")
        words[wnid] = text.strip()
    if not words:
        raise UserError(f"{path} lists no classes")
    return words


def read_val_solution(path: Path, classes: set[str]) -> dict[str, str]:
    """LOC_val_solution.csv: image id (file name without .JPEG) -> its class, the first WordNet id
    of its PredictionString."""
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise UserError(f"{path.name}: expected the header ImageId,PredictionString, got {','.join(header or [])!r}")
        for n, row in enumerate(rows, 2):
            if not row or not "".join(row).strip():
                continue
            boxes = row[1].split() if len(row) > 1 else []
            if not boxes:
                raise UserError(f"{path.name} line {n}: no class for {row[0]!r} (expected '<wnid> x0 y0 x1 y1 ...')")
            image, wnid = row[0].strip(), boxes[0]
            if wnid not in classes:
                raise UserError(f"{path.name} line {n}: {wnid!r} is not a class of {MAPPING}")
            if image in out:
                raise UserError(f"{path.name} line {n}: {image} has a second row")
            out[image] = wnid
    return out


def kaggle_catalog(k: KaggleData, tick=lambda n: None) -> Catalog:
    words = read_mapping(k.mapping)
    wnids = sorted(words)
    used = [k.mapping, k.val_solution]
    devkit = sources.devkit_classes(k.root, wnids, f"{MAPPING}'s")
    if devkit:
        classes, devkit_path = devkit
        used.append(devkit_path)
    else:
        classes = [ClassInfo(w, words[w], -1) for w in wnids]
    train_dir, val_dir = k.cls_loc / "train", k.cls_loc / "val"
    cat = Catalog(2012, KAGGLE, k.root, classes, {}, sources=[train_dir, val_dir] + used)
    by_wnid = {c.wnid: (i, c) for i, c in enumerate(classes)}
    cat.splits["train"] = sources._index_class_folders(train_dir, "train", by_wnid, cat.rejects, tick)
    truth = read_val_solution(k.val_solution, set(wnids))
    cat.splits["val"] = _kaggle_val(val_dir, truth, by_wnid, cat.rejects, k.val_solution.name)
    return cat


def _kaggle_val(folder: Path, truth: dict[str, str], by_wnid: dict, rejects: list[Reject], csv_name: str) -> list[Item]:
    """Validation images, flat (labels from the CSV) or in class folders (checked against it), in
    file-name order; every image needs a row and every row an image."""
    if any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        found = sources._index_class_folders(folder, "val", by_wnid, rejects)
        entries = [(it.name.rsplit("/", 1)[-1], it) for it in found]
    else:
        entries = [(p.name, Item(p.name, -1, -1, str(p), 0, p.stat().st_size)) for p in sorted(folder.iterdir())
                   if p.is_file() and not p.name.startswith(".")]
    wnid_of = {i: c.wnid for i, c in by_wnid.values()}
    items, seen = [], set()
    for name, it in entries:
        m = VAL_NAME.match(name)
        if not m:
            rejects.append(Reject("val", it.name, "not a val image name (ILSVRC2012_val_NNNNNNNN.JPEG)"))
            continue
        image = m.group(1)
        if image not in truth:
            raise UserError(f"{folder}: {it.name} has no row in {csv_name}")
        if image in seen:
            rejects.append(Reject("val", it.name, "a second file with this name"))
            continue
        seen.add(image)
        label, cls = by_wnid[truth[image]]
        if it.label not in (-1, label):
            raise UserError(f"{folder}: {it.name} lies in the folder {wnid_of[it.label]} but {csv_name} says "
                            f"{cls.wnid}")
        items.append(Item(name, label, cls.ilsvrc_id, it.path, it.offset, it.size))
    missing = sorted(set(truth) - seen)
    if missing:
        raise UserError(f"{csv_name} lists {len(missing)} image(s) that {folder} lacks (e.g. {missing[0]}.JPEG): an "
                        f"incomplete download or unzip?")
    items.sort(key=lambda it: it.name)
    return items
