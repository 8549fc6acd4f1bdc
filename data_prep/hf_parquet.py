"""Hugging Face's `ILSVRC/imagenet-1k` (Parquet files) -> a Catalog, the same as the official archives'.

What `huggingface-cli download ILSVRC/imagenet-1k --repo-type dataset --local-dir DIR` stores:

    DIR/data/train-00000-of-00294.parquet ...   train, validation and test, NNNNN-of-NNNNN (the count
                                                varies by revision; a "-<hash>" may follow the count)
    DIR/classes.py                              IMAGENET2012_CLASSES: an OrderedDict of "<wnid>": "<words>"
    DIR/README.md                               the dataset card

Also accepted: the Hub's automatic conversion (DIR/default/train/0000.parquet, default/validation/...),
the `data` or `default` folder itself, and the download cache (`datasets--ILSVRC--imagenet-1k`,
whose single `snapshots/<revision>/` is used). Older revisions shipped tar.gz archives instead of
Parquet: not supported (one line says so). The test split has no labels and is not read.

Each row holds `image` (a struct: `bytes`, the JPEG file as the official archives hold it, and
`path`, its original file name) and `label` (int64, the class's index in sorted-WNID order).
The repository's files name an image after its original name with the class appended
(n01440764_10026_n01440764.JPEG, ILSVRC2012_val_00000293_n01440764.JPEG); the official name is
recovered by dropping the suffix, which must be the row's class. The file names matter: the
training order is a keyed hash of (seed, wnid, file name), and the shards record the names, so
the shards are byte-identical to the official archives' only with the same names. A conversion
without `image.path` is therefore refused in one line rather than given made-up names.

Classes (the dataset ships no synset list beside the data): the WordNet id of label L is the
prefix of its training file names (n01440764 of n01440764_10026.JPEG). Every label must map to
exactly one prefix, and the prefixes in label order must be sorted (labels are sorted-WNID
positions); otherwise the run stops with one line. Without classes.py every label 0..K-1 must have
a training image (else its WordNet id is unknown); with it (read as text, never run), its list
must be sorted and agree with the prefixes, and it gives the words. Otherwise words come from a
LOC_synset_mapping.txt or synset_words.txt beside the data, else they are empty. The ILSVRC-2012
ids are -1 unless the official devkit (ILSVRC2012_devkit_t12.tar.gz or its folder) lies beside
the data, as for an extracted tree (data_prep/sources.py).

Reading the images. A Parquet file stores the JPEGs inside compressed column chunks, read a row
group (about 100 images in the datasets library's files) at a time; the training order visits
the rows at random, so reading each image where it lies would read its whole row group, about 100
times the data. Instead `stage` copies the JPEG bytes of the images to be prepared, once and in
file order (row group by row group, never a whole file in memory), into one flat file per
Parquet file under OUT/.hf-staging/ (one task per Parquet file on the worker pool), and the
catalogue's items then point at byte ranges of those files: the workers read and decode them
exactly as they read the official archives, and the shard plan's digest names the staged file
(split and Parquet file name), the image's offset and size. The staged copy takes as much disk as
the images it holds (about 147 GB for ImageNet's train and validation), is reused by a resumed
run (if its Parquet file has the same files.identity: size, times, inode and device), and is
removed when prepare finishes.
"""
from __future__ import annotations

import ast
import bisect
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from data_prep import images, sources
from data_prep.sources import Catalog, ClassInfo, Item, Reject
from repro import files
from repro.errors import UserError

LAYOUT = "hf-parquet"
SPLITS = {"train": "train", "validation": "val"}  # the dataset's split -> ours (test: no labels, not read)
STAGING = ".hf-staging"
DATA_FILE = re.compile(r"^(?P<split>train|validation|test)-(?P<index>\d{5})-of-(?P<count>\d{5})(?:-[0-9a-f]+)?\.parquet$")
DEFAULT_FILE = re.compile(r"^(?P<index>\d+)\.parquet$")
TRAIN_NAME = re.compile(r"^(?P<stem>(?P<wnid>n\d{8})_.+?)(?:_(?P<suffix>n\d{8}))?\.JPEG$")
VAL_NAME = re.compile(r"^(?P<stem>ILSVRC2012_val_\d{8})(?:_(?P<suffix>n\d{8}))?\.JPEG$")
OLD_ARCHIVE = re.compile(r"^(train_images_\d+|val_images|test_images)\.tar\.gz$")  # revisions before Parquet
NAME_FORM = {"train": "<wnid>_<n>.JPEG", "val": "ILSVRC2012_val_NNNNNNNN.JPEG"}
INSTALL = "pyarrow is not installed: run ./run.sh setup again, or pip install -e '.[hf]' in the repository"


def pyarrow():
    """(pyarrow, pyarrow.parquet), or a one-line UserError saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading Hugging Face's Parquet files needs pyarrow; {INSTALL}") from None
    return pa, pq


# ----------------------------------------------------------------------------- the files

@dataclass
class HFData:
    root: Path  # the folder holding data/ (or default/), classes.py and perhaps a devkit
    files: dict[str, list[Path]]  # our split ("train", "val") -> its Parquet files, in index order
    classes_py: Path | None = None


def find(root: Path) -> HFData | None:
    """The Parquet files under `root` (see the module docstring), None if it holds none; a
    download that cannot be used (old tar revision, an incomplete or partial one) is a UserError."""
    root = _snapshot(Path(root))
    for folder, reader in ((root / "data", _data_files), (root / "default", _default_files),
                           (root, _data_files), (root, _default_files)):
        found = reader(folder) if folder.is_dir() else None
        if found is not None:
            base = root if folder != root else (root.parent if root.name in ("data", "default") else root)
            classes_py = base / "classes.py"
            return HFData(base, found, classes_py if classes_py.is_file() else None)
    old = [p.name for d in (root, root / "data") if d.is_dir() for p in d.iterdir() if OLD_ARCHIVE.match(p.name)]
    if old:
        raise UserError(f"{root} holds an older revision of Hugging Face's imagenet-1k ({old[0]}: tar.gz "
                        f"archives), which is not supported: download the current one (Parquet files under "
                        f"data/), or use the official archives")
    return None


def _snapshot(root: Path) -> Path:
    """The download cache's folder (datasets--ILSVRC--imagenet-1k) -> its one snapshot."""
    snapshots = root / "snapshots"
    if not (root.name.startswith("datasets--") and snapshots.is_dir()):
        return root
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise UserError(f"{snapshots} holds {len(found)} revisions ({', '.join(p.name[:12] for p in found) or 'none'}): "
                        f"pass the one to use, {snapshots}/<revision>")
    return found[0]


def _data_files(folder: Path) -> dict[str, list[Path]] | None:
    """data/<split>-NNNNN-of-NNNNN.parquet: every index of every split present, or a UserError."""
    by_split: dict[str, dict[int, Path]] = {}
    counts: dict[str, set[int]] = {}
    for p in folder.iterdir():
        m = DATA_FILE.match(p.name)
        if m and m.group("split") in SPLITS:
            by_split.setdefault(m.group("split"), {})[int(m.group("index"))] = p
            counts.setdefault(m.group("split"), set()).add(int(m.group("count")))
    if not by_split:
        return None
    out = {}
    for split in SPLITS:
        if split not in by_split:
            raise UserError(f"{folder} has no {split}-*.parquet files: an incomplete download? "
                            f"Both train and validation are needed")
        (count, *more) = sorted(counts[split])
        if more:
            raise UserError(f"{folder} mixes {split} files of two revisions (-of-{count:05d} and -of-{more[0]:05d})")
        missing = sorted(set(range(count)) - set(by_split[split]))
        if missing:
            raise UserError(f"{folder} lacks {split}-{missing[0]:05d}-of-{count:05d}.parquet"
                            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: an incomplete "
                            f"download? Run the download again")
        out[SPLITS[split]] = [by_split[split][i] for i in range(count)]
    return out


def _default_files(folder: Path) -> dict[str, list[Path]] | None:
    """default/<split>/NNNN.parquet (the Hub's conversion): indices 0.. without a gap."""
    if not any((folder / s).is_dir() and any((folder / s).glob("*.parquet")) for s in SPLITS):
        if (folder / "partial-train").is_dir():
            raise UserError(f"{folder} holds a partial conversion (partial-train/: only the first gigabytes of "
                            f"the training set): download the dataset's own data/ files instead")
        return None
    out = {}
    for split in SPLITS:
        found = {}
        for p in (folder / split).glob("*.parquet") if (folder / split).is_dir() else ():
            m = DEFAULT_FILE.match(p.name)
            if m:
                found[int(m.group("index"))] = p
        if not found:
            raise UserError(f"{folder} has no {split}/NNNN.parquet files: an incomplete download? "
                            f"Both train and validation are needed")
        gap = next((i for i in range(len(found)) if i not in found), None)
        if gap is not None:
            raise UserError(f"{folder / split} lacks file number {gap} (it has {len(found)} others): an "
                            f"incomplete download?")
        out[SPLITS[split]] = [found[i] for i in range(len(found))]
    return out


# ----------------------------------------------------------------------------- the index

@dataclass
class FileIndex:
    """What one Parquet file holds: per row its official file name (None if not one), the WordNet
    id its name carries (train: the prefix; validation: the suffix, if any) and its label."""
    path: str
    split: str
    names: list[str | None] = field(default_factory=list)
    name_wnids: list[str | None] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (row, name in the file, reason)


def open_parquet(path: str | Path, **kw):
    _, pq = pyarrow()
    try:
        return pq.ParquetFile(str(path), **kw)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{path} is not a readable Parquet file ({images.one_line(e)}): an incomplete download? "
                        f"Download it again") from None


def check_schema(pf, path: str | Path) -> None:
    """image: struct<bytes, path>, label: an integer; else one line saying what is there."""
    pa, _ = pyarrow()
    schema = pf.schema_arrow
    what = f"{Path(path).name} has columns {', '.join(f'{f.name} ({f.type})' for f in schema)}"
    if "image" not in schema.names or "label" not in schema.names:
        raise UserError(f"{what}; expected image (a struct of bytes and path) and label, as in ILSVRC/imagenet-1k")
    image = schema.field("image").type
    if not pa.types.is_struct(image) or image.get_field_index("bytes") < 0:
        raise UserError(f"{what}; expected image to be a struct holding the file's bytes and path")
    if image.get_field_index("path") < 0:
        raise UserError(f"{what}: image has no path, the original file names, without which the training order "
                        f"and the shards cannot be those of the official archives; use ILSVRC/imagenet-1k's own "
                        f"data/ files or the official archives")
    if not pa.types.is_integer(schema.field("label").type):
        raise UserError(f"{what}; expected label to be an integer")


def index_file(task: tuple[str, str], report=None) -> FileIndex:
    """One Parquet file's names and labels, reading only those two columns (a few MB per file)."""
    path, split = task
    pf = open_parquet(path)
    check_schema(pf, path)
    out = FileIndex(path, split)
    pattern = TRAIN_NAME if split == "train" else VAL_NAME
    row = 0
    for batch in pf.iter_batches(batch_size=1 << 16, columns=["image.path", "label"], use_threads=False):
        names = batch.column(0).field("path").to_pylist()
        labels = batch.column(1).to_pylist()
        for name, label in zip(names, labels):
            if name is None or label is None:
                raise UserError(f"{path}: row {row} has no {'image.path' if name is None else 'label'}: "
                                f"{'the original file names are needed' if name is None else 'every image needs one'}")
            base = re.split(r"[\\/]", name)[-1]
            m = pattern.match(base)
            wnid = (m.group("wnid") if split == "train" else m.group("suffix")) if m else None
            if m is None:
                out.bad.append((row, base, f"not an ILSVRC-2012 {'training' if split == 'train' else 'validation'} "
                                           f"file name ({NAME_FORM[split]}, perhaps with _<wnid> before .JPEG)"))
            elif split == "train" and m.group("suffix") not in (None, wnid):
                out.bad.append((row, base, f"its name ends in another class ({m.group('suffix')}) than it begins with"))
                m = wnid = None
            out.names.append(f"{m.group('stem')}.JPEG" if m else None)
            out.name_wnids.append(wnid)
            out.labels.append(int(label))
            row += 1
    return out


def catalog(hf: HFData, tick=lambda n: None, run=None) -> Catalog:
    """Index the train and validation Parquet files (run: prepare's pool, one task per file)."""
    pyarrow()  # before any work: the one-line install hint
    tasks = [(str(p), split) for split, paths in hf.files.items() for p in paths]
    results = sources.map_tasks(index_file, tasks, tick, run)
    by_split = {split: [r for r in results if r.split == split] for split in hf.files}
    classes, extra_sources = _classes(hf, by_split["train"])
    cat = Catalog(2012, LAYOUT, hf.root, classes, {},
                  sources=[p for paths in hf.files.values() for p in paths] + extra_sources)
    for split, indexes in by_split.items():
        cat.splits[split] = _items(split, indexes, classes, cat.rejects)
    return cat


def _classes(hf: HFData, train: list[FileIndex]) -> tuple[list[ClassInfo], list[Path]]:
    """The classes in label order (see the module docstring), and the files they were read from."""
    prefix: dict[int, tuple[str, str]] = {}  # label -> (wnid, where it was seen)
    for ix in train:
        for row, (wnid, label) in enumerate(zip(ix.name_wnids, ix.labels)):
            if wnid is None:
                continue
            seen = prefix.setdefault(label, (wnid, f"{Path(ix.path).name} row {row}"))
            if seen[0] != wnid:
                raise UserError(f"label {label} is {seen[0]} in {seen[1]} but {wnid} in {Path(ix.path).name} row {row}: "
                                f"the labels do not follow the file names")
    listed = read_classes_py(hf.classes_py) if hf.classes_py else None
    used: list[Path] = [hf.classes_py] if listed else []
    if listed is not None:
        wnids = [w for w, _ in listed]
        for label, (wnid, where) in sorted(prefix.items()):
            if not 0 <= label < len(wnids):
                raise UserError(f"{where}: label {label} is outside 0..{len(wnids) - 1} (classes.py lists {len(wnids)})")
            if wnids[label] != wnid:
                raise UserError(f"{where}: label {label} is {wnid} by its file name but {wnids[label]} in classes.py")
        words = dict(listed)
    else:
        labels = sorted(prefix)
        if labels != list(range(len(labels))):
            gap = next(i for i in range(len(labels) + 1) if i not in prefix)
            raise UserError(f"label {gap} has no training image, so its WordNet id is unknown: put the dataset's "
                            f"classes.py beside {hf.root / 'data'}")
        wnids = [prefix[label][0] for label in labels]
        words, words_file = sources._read_words(hf.root)
        used += [words_file] if words_file else []
    for i in range(1, len(wnids)):
        if wnids[i - 1] >= wnids[i]:
            raise UserError(f"labels {i - 1} and {i} are {wnids[i - 1]} and {wnids[i]}: not in sorted-WordNet-id "
                            f"order, so they are not ILSVRC-2012's class indices")
    devkit = sources.devkit_classes(hf.root, wnids, "the Parquet files'")
    if devkit:
        classes, devkit_path = devkit
        return classes, used + [devkit_path]
    return [ClassInfo(w, words.get(w, ""), -1) for w in wnids], used


def read_classes_py(path: Path) -> list[tuple[str, str]]:
    """IMAGENET2012_CLASSES from the dataset's classes.py, parsed as text (never run): its
    (wnid, words) in file order."""
    try:
        tree = ast.parse(path.read_text(errors="replace"))
        value = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == "IMAGENET2012_CLASSES" for t in node.targets))
        if isinstance(value, ast.Call):  # OrderedDict({...}) or OrderedDict([(...), ...])
            value = value.args[0]
        pairs = list(ast.literal_eval(value).items()) if isinstance(value, ast.Dict) else list(ast.literal_eval(value))
    except (SyntaxError, StopIteration, ValueError, IndexError, TypeError, AttributeError):
        raise UserError(f"{path}: expected IMAGENET2012_CLASSES = OrderedDict({{\"<wnid>\": \"<words>\", ...}})") from None
    bad = next((w for w, _ in pairs if not sources.WNID.match(str(w))), None)
    if bad is not None or len({w for w, _ in pairs}) != len(pairs):
        raise UserError(f"{path}: {'not a WordNet id: ' + repr(bad) if bad is not None else 'a WordNet id is listed twice'}")
    return [(str(w), str(t)) for w, t in pairs]


def _items(split: str, indexes: list[FileIndex], classes: list[ClassInfo], rejects: list[Reject]) -> list[Item]:
    """The rows of one split as Items at (Parquet file, row) (size -1 until `stage` places them)."""
    items, seen = [], set()
    for ix in indexes:
        where = Path(ix.path).name
        for row, name, reason in ix.bad:
            rejects.append(Reject(split, f"{where} row {row}: {name}", reason))
        for row, (name, wnid, label) in enumerate(zip(ix.names, ix.name_wnids, ix.labels)):
            if not 0 <= label < len(classes):
                raise UserError(f"{ix.path}: row {row} has label {label}, outside 0..{len(classes) - 1}")
            if name is None:
                continue
            cls = classes[label]
            if split == "val" and wnid not in (None, cls.wnid):
                raise UserError(f"{ix.path}: row {row} ({name}) has label {label} ({cls.wnid}) but its file name says "
                                f"{wnid}: the labels do not follow the file names")
            if (label, name) in seen:
                rejects.append(Reject(split, f"{where} row {row}: {name}", "a second image with this name"))
                continue
            seen.add((label, name))
            items.append(Item(name, label, cls.ilsvrc_id, ix.path, row, -1))
    items.sort(key=(lambda it: (it.label, it.name)) if split == "train" else (lambda it: (it.name, it.label)))
    return items


# --------------------------------------------------------------------------- staging

@dataclass
class StageTask:
    source: str  # the Parquet file
    pack: str  # the staged file
    rows: list[int]  # its rows to copy, ascending


def staging_dir(out: Path) -> Path:
    return Path(out) / STAGING


def _pack_name(split: str, source: Path) -> str:
    return f"{split}--{source.name}.bytes"


def _source_id(path: Path) -> dict:
    """The Parquet file a pack was staged from, as files.identity sees it (a file rewritten, even
    with its mtime set back, no longer matches: its pack is staged again)."""
    return {"name": Path(path).name, "identity": files.identity(path)}


def stage(cat: Catalog, out: Path, workers: int = 1, progress=None, say=lambda text: None) -> None:
    """Copy the JPEG bytes of the catalogue's images into OUT/.hf-staging (reusing what a previous
    run staged from unchanged files) and point each item at its byte range there."""
    from data_prep.workers import parallel_map

    folder = staging_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    wanted: dict[tuple[str, str], list[int]] = {}
    for split, items in cat.splits.items():
        for it in items:  # not yet staged: at (Parquet file, row), size -1
            wanted.setdefault((split, it.path), []).append(it.offset)
    tasks, placed = [], {}
    for (split, source), rows in sorted(wanted.items()):
        rows = sorted(set(rows))
        pack = folder / _pack_name(split, Path(source))
        done = _read_stage_index(pack, source, rows)
        if done is None:
            tasks.append(StageTask(source, str(pack), rows))
        else:
            placed[(split, source)] = done
            if progress is not None:
                progress.update(len(rows))
    keep = {folder / _pack_name(split, Path(source)) for split, source in wanted}
    for p in folder.iterdir():  # another selection's files, and leftovers of a killed run
        if p.with_suffix(".bytes") not in keep and p not in keep:
            p.unlink()
    if tasks:
        need = sum(_estimate(t) for t in tasks)
        free = shutil.disk_usage(folder).free
        if need > free:
            raise UserError(f"not enough disk space in {out} to stage the images' JPEG bytes: about "
                            f"{files.size_text(need)} needed, {files.size_text(free)} free")
        n = sum(len(t.rows) for t in tasks)
        say(f"copying the JPEG bytes of {n:,} images out of {len(tasks)} Parquet files into {folder} (about "
            f"{files.size_text(need)}; removed when prepare finishes), so that the shuffled training order does not "
            f"read a whole row group per image")
        for task, result in zip(tasks, parallel_map(stage_file, tasks, workers, progress)):
            placed[(_split_of(task.pack), task.source)] = result
    elif wanted:
        say(f"the JPEG bytes of every image are already staged in {folder}")
    for split, items in cat.splits.items():
        located = {}
        for (s, source), (rows, offsets, sizes, pack) in placed.items():
            if s == split:
                located[source] = (pack, {r: (o, n) for r, o, n in zip(rows, offsets, sizes)})
        for k, it in enumerate(items):
            pack, where = located[it.path]
            offset, size = where[it.offset]
            items[k] = Item(it.name, it.label, it.ilsvrc_id, pack, offset, size)


def _split_of(pack: str) -> str:
    return Path(pack).name.split("--", 1)[0]


def _estimate(task: StageTask) -> int:
    """Bytes the staged file will take: the Parquet file's share for those rows, plus 1 MB."""
    pf = open_parquet(task.source)
    total = max(1, pf.metadata.num_rows)
    return Path(task.source).stat().st_size * len(task.rows) // total + (1 << 20)


def _read_stage_index(pack: Path, source: str, rows: list[int]):
    """(rows, offsets, sizes, pack) of a finished staged file for exactly these rows of an unchanged
    source, else None."""
    try:
        info = json.loads(pack.with_suffix(".json").read_text())
        if info["source"] != _source_id(Path(source)) or info["rows"] != rows:
            return None
        if pack.stat().st_size != sum(info["sizes"]):
            return None
        return info["rows"], info["offsets"], info["sizes"], str(pack)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage_file(task: StageTask, report=None):
    """In a worker: copy the bytes of `task.rows` of one Parquet file, row group by row group (in
    batches of 32 rows, so that a large row group is never whole in memory), into its staged file."""
    pf = open_parquet(task.source, buffer_size=1 << 22, pre_buffer=False)
    starts, total = [], 0
    for g in range(pf.metadata.num_row_groups):
        starts.append(total)
        total += pf.metadata.row_group(g).num_rows
    by_group: dict[int, list[int]] = {}
    for r in task.rows:
        if not 0 <= r < total:
            raise UserError(f"{task.source} has {total} rows, not {r + 1}: did it change while prepare ran?")
        by_group.setdefault(bisect.bisect_right(starts, r) - 1, []).append(r)
    pack = Path(task.pack)
    offsets, sizes, pos = [], [], 0

    def write(f) -> None:
        nonlocal pos
        for g, rows in sorted(by_group.items()):
            wanted = set(rows)
            first = starts[g]
            for batch in pf.iter_batches(batch_size=32, row_groups=[g], columns=["image.bytes"], use_threads=False):
                column = batch.column(0).field("bytes")
                for j in range(len(column)):
                    if first + j in wanted:
                        data = column[j].as_py() or b""  # a missing image: an empty file, rejected by the worker
                        f.write(data)
                        offsets.append(pos)
                        sizes.append(len(data))
                        pos += len(data)
                first += len(column)
            if report:
                report(len(rows))

    files.atomic_write(pack, write)
    info = {"source": _source_id(Path(task.source)), "rows": task.rows, "offsets": offsets, "sizes": sizes}
    files.atomic_write(pack.with_suffix(".json"), json.dumps(info))
    return task.rows, offsets, sizes, str(pack)


def remove_staging(out: Path) -> int:
    """Remove OUT/.hf-staging (once the shards are complete); returns the bytes freed."""
    folder = staging_dir(out)
    if not folder.is_dir():
        return 0
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    shutil.rmtree(folder)
    return size
