"""Where the images are: the official ILSVRC archives or an extracted tree -> a Catalog.

A Catalog lists, for each split, every image as an Item: its name, its label, and where its bytes
lie (a file and a byte range). Archives are only indexed here, never extracted: tar headers are
read (tarfile skips over the image data), and the workers later read each image's bytes in place.
Nothing is ever written under a name taken from an archive; members whose names are absolute or
climb out with "..", links, devices and other non-regular files are listed as rejects and never
read.

Labels (docs/fidelity.md, "Choices the paper leaves open"): classes are the devkit's leaf synsets (num_children == 0), indexed by
their position in the sorted list of WordNet ids. Validation (and ILSVRC-2010 test) labels come
from the ground-truth files, one ILSVRC id per image in file-name order, mapped to WordNet ids
through meta.mat; ILSVRC ids are not in sorted-WNID order.

ILSVRC-2010 ships patch_images.tar, the official replacements for images that are blank or show an
"image not available" banner in its archives: an image it replaces is read from it instead (same
name, label and split). It is required beside the 2010 archives and used if present beside an
extracted 2010 tree (otherwise the tree must already hold the patched images).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.io

from repro.errors import UserError

ARCHIVES = {
    2012: {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar",
           "devkit": "ILSVRC2012_devkit_t12.tar.gz"},
    # The 2010 names as public converters of the real files use them (see data_prep.fake_ilsvrc).
    # patch_images.tar holds the official replacements for images that are blank or show an
    # "image not available" banner in the three image archives.
    2010: {"train": "ILSVRC2010_images_train.tar", "val": "ILSVRC2010_images_val.tar",
           "test": "ILSVRC2010_images_test.tar", "devkit": "ILSVRC2010_devkit-1.0.tar.gz",
           "test_ground_truth": "ILSVRC2010_test_ground_truth.txt", "patches": "patch_images.tar"},
}
DEVKIT_DIRS = {2012: "ILSVRC2012_devkit_t12", 2010: "devkit-1.0"}
WORDS_FILES = ("synset_words.txt", "LOC_synset_mapping.txt")  # "n01440764 tench, Tinca tinca" per line
WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True, slots=True)  # 1.28 million of them for ILSVRC-2012: keep them small
class Item:
    name: str  # file name kept in the shard: member name in its tar, or path below the class folder
    label: int  # index in the sorted list of WordNet ids
    ilsvrc_id: int  # the devkit's id of that class (-1 without a devkit)
    path: str  # the file holding the bytes: an archive, or the image file itself
    offset: int  # where the bytes start in `path`
    size: int


@dataclass(frozen=True)
class Reject:
    split: str
    name: str
    reason: str


@dataclass(frozen=True)
class ClassInfo:
    wnid: str
    words: str
    ilsvrc_id: int


@dataclass
class Catalog:
    year: int
    layout: str  # "archives" or "tree"; "kaggle" or "hf-parquet" (data_prep/layouts.py, data_prep/hf_parquet.py)
    root: Path
    classes: list[ClassInfo]  # sorted by WordNet id
    splits: dict[str, list[Item]]  # train by (class, name); val and test in file-name order
    rejects: list[Reject] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)  # the archives, folders and files read
    patched: dict[str, int] = field(default_factory=dict)  # split -> images read from ILSVRC-2010's patch_images.tar
    subset: dict | None = None  # the classes selected by prepare --classes / --classes-file (data_prep/subsets.py)


@dataclass
class Devkit:
    synsets: list[tuple[int, str, str, int]]  # (ilsvrc_id, wnid, words, num_children), as in meta.mat
    val_ground_truth: list[int]
    test_ground_truth: list[int] | None = None

    def classes(self) -> list[ClassInfo]:
        leaves = sorted((wnid, words, i) for i, wnid, words, children in self.synsets if children == 0)
        wnids = [w for w, _, _ in leaves]
        if len(set(wnids)) != len(wnids):
            raise UserError("the devkit's meta.mat lists a WordNet id twice")
        return [ClassInfo(*leaf) for leaf in leaves]


# ------------------------------------------------------------------------------- the catalog

def catalog(root: str | Path, year: int = 2012, limit_per_class: int = 0, progress=None, run=None) -> Catalog:
    """Index the images under `root` (archives or a tree); raises UserError with one line.
    `progress.update(1)` is called per class archive or folder of the training set; `run`, if
    given, indexes the class archives in parallel (see index_train_archive)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"source {root} is not a directory")
    layout = find_layout(root, year)
    tick = progress.update if progress is not None else (lambda n: None)
    cat = _from_archives(root, year, tick, run) if layout == "archives" else _from_tree(root, year, tick)
    name = ARCHIVES[year].get("patches")  # required beside the archives (find_layout), optional beside a tree
    patches = root / name if name and (root / name).is_file() else None
    if patches:
        apply_patches(cat, patches)
    if limit_per_class:
        for split, items in cat.splits.items():
            cat.splits[split] = _limit(items, limit_per_class)
    if patches:
        cat.patched = {split: sum(it.path == str(patches) for it in items) for split, items in cat.splits.items()}
    return cat


def find_layout(root: Path, year: int) -> str:
    names = ARCHIVES[year]
    present = [n for n in names.values() if (root / n).exists()]
    if (root / "train").is_dir() and not (root / names["train"]).exists():
        return "tree"  # possibly with the devkit archive beside it
    if present:
        missing = [n for n in names.values() if not (root / n).is_file()]
        if missing:
            raise UserError(f"missing archive {root / missing[0]}: ILSVRC-{year} needs "
                            f"{', '.join(names.values())} in one directory")
        return "archives"
    other = 2010 if year == 2012 else 2012
    if any((root / n).exists() for n in ARCHIVES[other].values()):
        raise UserError(f"{root} holds ILSVRC-{other} archives; pass --year {other}")
    raise UserError(f"{root} is in no known layout: expected the official archives "
                    f"({', '.join(names.values())}), an extracted tree (train/<wnid>/*.JPEG and val/), the Kaggle "
                    f"download (ILSVRC/Data/CLS-LOC/ and LOC_*.csv) or Hugging Face's imagenet-1k (data/*.parquet)")


def require_training_images(cat: Catalog) -> None:
    """Every class has at least one training image, or a UserError names those without (and why,
    from what their class archive or folder gave). Never accepted, not even with --allow-rejects:
    a class the network never sees in training changes the task the paper's numbers are for."""
    counts = np.bincount([it.label for it in cat.splits.get("train", [])], minlength=len(cat.classes))
    empty = [c.wnid for c, n in zip(cat.classes, counts) if n == 0]
    if not empty:
        return
    if cat.layout == "archives":
        where = ARCHIVES[cat.year]["train"]
    else:  # the first source read: the train folder (a tree, Kaggle's) or a train Parquet file
        train = cat.sources[0]
        where = f"{train.name}/" if train.is_dir() else f"the train Parquet files in {train.parent}"
    why = {}
    for r in cat.rejects:
        wnid = re.split(r"[/.]", r.name, maxsplit=1)[0] if r.split == "train" else None
        if wnid in empty and wnid not in why:
            why[wnid] = f"{r.name}: {r.reason}"
    shown = ", ".join(f"{w} ({why.get(w, f'not in {where}')})" for w in empty[:3])
    more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
    todo = f"download {where} again" if cat.layout == "archives" else f"check {train if train.is_dir() else where}"
    raise UserError(f"{len(empty)} of {len(cat.classes)} classes have no training image: {shown}{more}; the "
                    f"training data is incomplete or damaged: {todo}")


def _limit(items: list[Item], n: int) -> list[Item]:
    taken: dict[int, int] = {}
    out = []
    for it in items:
        if taken.get(it.label, 0) < n:
            taken[it.label] = taken.get(it.label, 0) + 1
            out.append(it)
    return out


def _from_archives(root: Path, year: int, tick, run=None) -> Catalog:
    names = ARCHIVES[year]
    devkit = read_devkit(root / names["devkit"], year)
    if year == 2010:
        devkit.test_ground_truth = read_ground_truth((root / names["test_ground_truth"]).read_bytes(),
                                                     names["test_ground_truth"])
    classes = devkit.classes()
    cat = Catalog(year, "archives", root, classes, {},
                  sources=[root / n for n in names.values()])
    cat.splits["train"] = index_train_archive(root / names["train"], classes, cat.rejects, tick, run)
    cat.splits["val"] = index_eval_archive(root / names["val"], "val", year, devkit.val_ground_truth,
                                           devkit, cat.rejects)
    if year == 2010:
        cat.splits["test"] = index_eval_archive(root / names["test"], "test", year,
                                                devkit.test_ground_truth, devkit, cat.rejects)
    return cat


def _from_tree(root: Path, year: int, tick) -> Catalog:
    devkit_path = _find_devkit(root, year)
    devkit = read_devkit(devkit_path, year) if devkit_path else None
    sources = [root / "train"]
    if devkit:
        classes = devkit.classes()
        sources.append(devkit_path)
    else:
        wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
        words, words_file = _read_words(root)
        if words_file:
            sources.append(words_file)
        classes = [ClassInfo(w, words.get(w, ""), -1) for w in wnids]
    if not classes:
        raise UserError(f"{root / 'train'} holds no class folders (train/<wnid>/*.JPEG)")
    cat = Catalog(year, "tree", root, classes, {}, sources=sources)
    by_wnid = {c.wnid: (i, c) for i, c in enumerate(classes)}
    cat.splits["train"] = _index_class_folders(root / "train", "train", by_wnid, cat.rejects, tick)
    eval_splits = ("val", "test") if year == 2010 else ("val",)
    for split in eval_splits:
        folder = root / split
        if not folder.is_dir():
            raise UserError(f"{root} has train/ but no {split}/ folder")
        cat.sources.append(folder)
        if any(p.is_dir() for p in folder.iterdir()):
            items = _index_class_folders(folder, split, by_wnid, cat.rejects)
            cat.splits[split] = sorted(items, key=lambda it: (it.name, it.label))  # file order
            continue
        truth = None
        if devkit and split == "val":
            truth = devkit.val_ground_truth
        elif devkit and split == "test":
            truth = devkit.test_ground_truth
            gt_file = root / ARCHIVES[2010]["test_ground_truth"]
            if truth is None and gt_file.is_file():
                truth = read_ground_truth(gt_file.read_bytes(), gt_file.name)
                cat.sources.append(gt_file)
        if truth is None:
            raise UserError(f"{folder} is flat (no class folders): its labels come from the devkit; put "
                            f"{ARCHIVES[year]['devkit']} in {root}")
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
        entries = [(p.name, str(p), 0, p.stat().st_size) for p in files]
        cat.splits[split] = _label_eval(entries, split, year, truth, devkit, str(folder), cat.rejects)
    return cat


def map_tasks(fn, tasks: list, tick, run=None) -> list:
    """fn(task) for each task, in order, ticking once per task: here, or through `run` (prepare's
    worker pool: run(fn, tasks, on_result))."""
    if run is not None:
        return run(fn, tasks, lambda result: tick(1))
    results = []
    for task in tasks:
        results.append(fn(task))
        tick(1)
    return results


def devkit_classes(root: Path, wnids: list[str], theirs: str) -> tuple[list[ClassInfo], Path] | None:
    """The ILSVRC-2012 devkit's classes and its path, when a devkit lies under root; None when
    none does. A devkit whose classes are not `wnids` (the ones `theirs` names) is a UserError."""
    path = _find_devkit(root, 2012)
    if path is None:
        return None
    classes = read_devkit(path, 2012).classes()
    if [c.wnid for c in classes] != wnids:
        raise UserError(f"the classes of {path.name} ({len(classes)}) differ from {theirs} "
                        f"({len(wnids)}): is it the ILSVRC-2012 devkit?")
    return classes, path


def _find_devkit(root: Path, year: int) -> Path | None:
    for p in (root / ARCHIVES[year]["devkit"], root / DEVKIT_DIRS[year]):
        if p.exists():
            return p
    return None


def _read_words(root: Path) -> tuple[dict[str, str], Path | None]:
    for name in WORDS_FILES:
        p = root / name
        if p.is_file():
            words = {}
            for line in p.read_text(errors="replace").splitlines():
                wnid, _, text = line.strip().partition(" ")
                if WNID.match(wnid):
                    words[wnid] = text.strip()
            return words, p
    return {}, None


def _index_class_folders(folder: Path, split: str, by_wnid: dict, rejects: list[Reject],
                         tick=lambda n: None) -> list[Item]:
    items = []
    for d in sorted(folder.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        tick(1)
        if d.name not in by_wnid:
            raise UserError(f"{d} is not a class: {d.name!r} is not among the {len(by_wnid)} classes")
        label, cls = by_wnid[d.name]
        for p in sorted(d.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                name = p.relative_to(d).as_posix()
                if not utf8(name):  # listed, on every route that reads class folders
                    rejects.append(Reject(split, f"{d.name}/{name}", "file name is not valid UTF-8; not read"))
                    continue
                items.append(Item(name, label, cls.ilsvrc_id, str(p), 0, p.stat().st_size))
    items.sort(key=lambda it: (it.label, it.name))
    return items


# ------------------------------------------------------------------------------ the archives

def member_problem(m: tarfile.TarInfo) -> str | None:
    """Why a tar member is not used as an image ('directory' for plain directories), or None."""
    if m.isdir():
        return "directory"
    if not utf8(m.name):
        return "member name is not valid UTF-8; never read"
    unsafe = unsafe_name(m.name)
    if unsafe:
        return f"unsafe member name ({unsafe}); never read"
    if m.issym():
        return f"not a regular file (symbolic link to {m.linkname!r}); never read"
    if m.islnk():
        return f"not a regular file (hard link to {m.linkname!r}); never read"
    if m.issparse():
        return "sparse member; not read"
    if not m.isreg():
        return "not a regular file (device, fifo or other); never read"
    return None


def utf8(name: str) -> bool:
    """Whether a name read from an archive or a folder is text (tarfile and os hand over the
    bytes of other names as surrogate escapes, which no UTF-8 file, shard or list can hold)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def unsafe_name(name: str) -> str | None:
    """Why `name` could point outside a directory it were extracted to, or None."""
    if not name or "\x00" in name:
        return "empty or NUL"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "'..' component"
    return None


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")  # image archives are plain tars, read in place
    except tarfile.ReadError as e:
        raise UserError(f"{path} is not a readable (uncompressed) tar archive: {e}") from None


def _members(tar: tarfile.TarFile, path: Path):
    """The members of an archive read in place; a cut-short or damaged archive is a clear error."""
    size, last = path.stat().st_size, None
    while True:
        try:
            m = tar.next()
        except tarfile.TarError as e:
            raise UserError(f"{path} is unreadable after {last.name if last else 'its start'!r} ({e}): "
                            f"an incomplete download? Download it again") from None
        if m is None:  # tarfile also stops, silently, at a damaged header: what follows must be zeros
            if not _zeros(tar.fileobj.fileno(), tar.offset, size):
                raise UserError(f"{path} is unreadable after {last.name if last else 'its start'!r} (a damaged "
                                f"header): an incomplete or damaged download? Download it again")
            return
        if m.offset_data + m.size > size:
            raise UserError(f"{path} is cut short (it ends inside {m.name!r}): an incomplete download? "
                            f"Download it again")
        last = m
        yield m


def _zeros(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of a file are all zero (a tar's end: zero blocks and padding)."""
    while start < end:
        block = os.pread(fd, min(1 << 20, end - start), start)
        if not block:
            return True
        if block.count(0) != len(block):
            return False
        start += len(block)
    return True


def _usable(m: tarfile.TarInfo, split: str, rejects: list[Reject], where: str, end: int | None = None) -> bool:
    problem = member_problem(m)
    if problem == "directory":
        return False
    if problem is None and end is not None and m.offset_data + m.size > end:
        problem = "cut short: its class archive ends inside it"
    if problem:
        rejects.append(Reject(split, f"{where}{m.name}", problem))
        return False
    return True


def index_patches(path: Path) -> dict[tuple[str, str], tuple[str, int, int]]:
    """ILSVRC-2010's patch_images.tar: (split, file name) -> (path, offset, size) of the replacement.
    A member's split is the folder right above it (.../train/n01440764_123.JPEG, .../val/..., .../test/...)."""
    patches = {}
    with _open_tar(path) as tar:
        for m in _members(tar, path):
            problem = member_problem(m)
            if problem == "directory" or (problem is None and not m.name.upper().endswith(".JPEG")):
                continue
            parts = m.name.split("/")
            if problem is None and (len(parts) < 2 or parts[-2] not in ("train", "val", "test")):
                problem = "not <train|val|test>/<file name>"
            if problem:
                raise UserError(f"{path}: member {m.name!r}: {problem}; is it ILSVRC-2010's patch archive?")
            patches[(parts[-2], parts[-1])] = (str(path), m.offset_data, m.size)
    return patches


def apply_patches(cat: Catalog, path: Path) -> None:
    """Read each image that patch_images.tar replaces from there (same name, label and split).
    Every replacement must find its image: otherwise the archives are not the ones it patches."""
    patches = index_patches(path)
    used = set()
    for split, items in cat.splits.items():
        for k, it in enumerate(items):
            key = (split, it.name.rsplit("/", 1)[-1])
            if key in patches:
                p, offset, size = patches[key]
                items[k] = replace(it, path=p, offset=offset, size=size)
                used.add(key)
    rejected = {(r.split, r.name.rsplit("/", 1)[-1]) for r in cat.rejects}  # listed as such already
    unused = sorted(set(patches) - used - rejected)
    if unused:
        raise UserError(f"{path}: {len(unused)} of its {len(patches)} replacement images match no image of "
                        f"the {cat.year} data (e.g. {'/'.join(unused[0])})")
    if path not in cat.sources:
        cat.sources.append(path)


@dataclass(frozen=True)
class ClassArchive:
    """One <wnid>.tar inside a training archive: where its bytes lie, and its class."""
    path: str
    name: str
    offset: int
    size: int
    label: int
    ilsvrc_id: int


def index_train_archive(path: Path, classes: list[ClassInfo], rejects: list[Reject], tick=lambda n: None,
                        run=None) -> list[Item]:
    """ILSVRC*_img_train.tar: one <wnid>.tar per class, each holding that class's JPEGs.

    The class archives are indexed by run(index_class_archive, tasks, on_result) when given
    (prepare's worker pool: ImageNet's 1.28 million tar headers take about 25 s of one core),
    else here, one after another."""
    by_wnid = {c.wnid: (i, c) for i, c in enumerate(classes)}
    tasks = []
    first: dict[str, str] = {}  # wnid -> the member read for it
    with _open_tar(path) as outer:
        for m in _members(outer, path):
            if not _usable(m, "train", rejects, ""):
                continue
            base = m.name.rsplit("/", 1)[-1]
            wnid = base[:-4] if base.endswith(".tar") else None
            if wnid not in by_wnid:
                raise UserError(f"{path.name} holds {m.name!r}, which is not <wnid>.tar for a class of the devkit")
            if wnid in first:  # its images would be counted twice
                rejects.append(Reject("train", m.name, f"a second class archive for {wnid} (the first, "
                                      f"{first[wnid]!r}, is read); not read"))
                continue
            first[wnid] = m.name
            label, cls = by_wnid[wnid]
            tasks.append(ClassArchive(str(path), m.name, m.offset_data, m.size, label, cls.ilsvrc_id))
    results = map_tasks(index_class_archive, tasks, tick, run)
    items = []
    for found, problems in results:
        items += found
        rejects += problems
    items.sort(key=lambda it: (it.label, it.name))
    return items


def index_class_archive(task: ClassArchive, report=None) -> tuple[list[Item], list[Reject]]:
    """The images of one class archive, read through a window on the training archive, and the
    members that are not used (with the reason)."""
    items, rejects = [], []
    names = set()
    with open(task.path, "rb") as f:
        try:
            with tarfile.open(fileobj=_Window(f.fileno(), task.offset, task.size), mode="r:") as inner:
                for im in inner:
                    if not _usable(im, "train", rejects, f"{task.name}/", end=task.size):
                        continue
                    if im.name in names:
                        rejects.append(Reject("train", f"{task.name}/{im.name}", "a second file with this name in "
                                              "its class archive; not read"))
                        continue
                    names.add(im.name)
                    items.append(Item(im.name, task.label, task.ilsvrc_id, task.path,
                                      task.offset + im.offset_data, im.size))
                stop = inner.offset  # where tarfile stopped: at the end, or silently at a damaged header
            if stop < task.size and not _zeros(f.fileno(), task.offset + stop, task.offset + task.size):
                rejects.append(Reject("train", task.name, f"class archive unreadable after byte {stop} (a damaged "
                                      f"header): the rest of it is not read"))
        except tarfile.TarError as e:
            if not (rejects and rejects[-1].reason.startswith("cut short")):  # (that one says why nothing follows)
                rejects.append(Reject("train", task.name, f"class archive unreadable from here on: {e}"))
    if not items and not rejects:  # all zeros, or a tar with nothing in it
        rejects.append(Reject("train", task.name, "class archive holds no image"))
    return items, rejects


class _Window(io.RawIOBase):
    """Bytes [offset, offset + size) of an open file, as a read-only file of their own."""

    def __init__(self, fd: int, offset: int, size: int):
        super().__init__()
        self._fd, self._offset, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        data = os.pread(self._fd, n, self._offset + self._pos) if n else b""
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def index_eval_archive(path: Path, split: str, year: int, truth: list[int], devkit: Devkit,
                       rejects: list[Reject]) -> list[Item]:
    """A flat archive of ILSVRC<year>_<split>_%08d.JPEG (possibly under a folder)."""
    entries = []
    spath = str(path)
    first_reject = len(rejects)
    with _open_tar(path) as tar:
        for m in _members(tar, path):
            if _usable(m, split, rejects, ""):
                entries.append((m.name.rsplit("/", 1)[-1], spath, m.offset_data, m.size))
    return _label_eval(entries, split, year, truth, devkit, path.name, rejects, first_reject)


def _label_eval(entries, split: str, year: int, truth: list[int], devkit: Devkit | None, where: str,
                rejects: list[Reject], first_reject: int | None = None) -> list[Item]:
    """Label flat validation/test files from the ground truth (line k <-> file number k).
    rejects[first_reject:] are the members of this archive or folder refused before (named when
    the count is wrong); by default those refused here."""
    first_reject = len(rejects) if first_reject is None else first_reject
    pattern = re.compile(rf"^ILSVRC{year}_{split}_(\d{{8}})\.JPEG$")
    classes = devkit.classes()
    index = {c.ilsvrc_id: (i, c) for i, c in enumerate(classes)}
    numbered = {}
    for name, path, offset, size in entries:
        m = pattern.match(name)
        if not m:
            rejects.append(Reject(split, name, f"not a {split} image name (ILSVRC{year}_{split}_NNNNNNNN.JPEG)"))
            continue
        number = int(m.group(1))
        if number in numbered:
            rejects.append(Reject(split, name, "a second file with this name"))
            continue
        numbered[number] = (name, path, offset, size)
    if len(numbered) != len(truth):
        refused = [r for r in rejects[first_reject:] if r.split == split]
        named = "; ".join(f"{r.name!r} ({r.reason})" for r in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise UserError(f"the devkit's {split} ground truth lists {len(truth)} labels but {where} holds "
                        f"{len(numbered)} {split} images"
                        + (f"; {len(refused)} member(s) were not usable: {named}{more}" if refused else "")
                        + f": is it the ILSVRC-{year} {split} archive, complete?")
    items = []
    for number in sorted(numbered):
        name, path, offset, size = numbered[number]
        if not 1 <= number <= len(truth):
            raise UserError(f"{where}: {name} has no line in the {split} ground truth ({len(truth)} lines)")
        ilsvrc_id = truth[number - 1]
        if ilsvrc_id not in index:
            raise UserError(f"{split} ground truth line {number}: ILSVRC id {ilsvrc_id} is not a class "
                            f"(a leaf synset) of the devkit's meta.mat")
        label, cls = index[ilsvrc_id]
        items.append(Item(name, label, cls.ilsvrc_id, path, offset, size))
    return items


# ------------------------------------------------------------------------------- the devkit

def read_devkit(path: Path, year: int) -> Devkit:
    """meta.mat and the validation ground truth, from the devkit .tar.gz or its extracted folder."""
    gt_name = f"ILSVRC{year}_validation_ground_truth.txt"
    wanted = {"meta.mat": None, gt_name: None, f"ILSVRC{year}_test_ground_truth.txt": None}
    if path.is_dir():
        for name in wanted:
            p = path / "data" / name
            if p.is_file():
                wanted[name] = p.read_bytes()
    else:
        try:
            with tarfile.open(path, mode="r:*") as tar:
                for m in tar:
                    parts = m.name.split("/")
                    if m.isreg() and len(parts) >= 2 and parts[-2] == "data" and parts[-1] in wanted:
                        wanted[parts[-1]] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{path} is not a readable devkit archive: {e}") from None
    for name in ("meta.mat", gt_name):
        if wanted[name] is None:
            raise UserError(f"{path} has no data/{name}: is it the ILSVRC-{year} devkit?")
    test = wanted[f"ILSVRC{year}_test_ground_truth.txt"]
    return Devkit(read_meta(wanted["meta.mat"], path.name), read_ground_truth(wanted[gt_name], gt_name),
                  read_ground_truth(test, "test ground truth") if test is not None else None)


def read_meta(data: bytes, where: str = "meta.mat") -> list[tuple[int, str, str, int]]:
    """(ilsvrc_id, wnid, words, num_children) of every synset in meta.mat."""
    try:
        synsets = scipy.io.loadmat(io.BytesIO(data))["synsets"].ravel()
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"{where}: meta.mat has no readable 'synsets' struct: {e}") from None
    names = synsets.dtype.names or ()
    id_field = next((n for n in names if re.fullmatch(r"ILSVRC\d{4}_ID", n)), None)
    if id_field is None or not {"WNID", "words", "num_children"} <= set(names):
        raise UserError(f"{where}: meta.mat 'synsets' lacks ILSVRC*_ID, WNID, words or num_children")
    return [(int(_scalar(s[id_field])), str(_scalar(s["WNID"], "")), str(_scalar(s["words"], "")),
             int(_scalar(s["num_children"]))) for s in synsets]


def _scalar(value, empty=0):
    a = np.asarray(value).ravel()
    return a[0] if a.size else empty


def read_ground_truth(data: bytes, where: str) -> list[int]:
    try:
        return [int(line) for line in data.decode("ascii").split()]
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{where}: expected one ILSVRC id (an integer) per line") from None


def listing_lines(folder: Path) -> list[str]:
    """Sorted "relative/path<TAB>size" lines of a folder's files (what a folder's hash is of)."""
    lines = []
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            lines.append(f"{p.relative_to(folder).as_posix()}\t{p.stat().st_size}")
    return sorted(lines)


def listing_sha256(folder: Path) -> tuple[int, str]:
    """(total bytes, SHA-256 of the listing_lines) of a folder: what the manifest records of it.
    Names that are not UTF-8 enter as their own bytes."""
    lines = listing_lines(folder)
    size = sum(int(line.rsplit("\t", 1)[1]) for line in lines)
    text = "".join(line + "\n" for line in lines)
    return size, hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
