"""Write small datasets in the official ILSVRC layouts, from images you give it, and in the layouts
of the other download routes (the Kaggle download: write_kaggle; Hugging Face's Parquet files:
write_hf_parquet) from the same images, so that tests can compare what prepare makes of each.

Used by the tests, the prepare benchmark and the demo (`./run.sh demo`): whatever reads the real
archives reads these the same way.

    from data_prep import fake_ilsvrc as fake
    train = {"n01440764": [("n01440764_1.JPEG", jpeg_bytes), ...], ...}
    val = [("n01440764", jpeg_bytes), ...]          # ILSVRC2012_val_00000001.JPEG, ... in this order
    fake.write_ilsvrc2012(out_dir, train, val, words={"n01440764": "tench, Tinca tinca"})

ILSVRC-2012 (as image-net.org serves it; docs/reproducing.md, "1. Download ILSVRC"):
    ILSVRC2012_img_train.tar       one tar per class, <wnid>.tar, holding <wnid>_<n>.JPEG
    ILSVRC2012_img_val.tar         flat ILSVRC2012_val_00000001.JPEG ...
    ILSVRC2012_devkit_t12.tar.gz   ILSVRC2012_devkit_t12/data/meta.mat (struct array `synsets`:
                                   ILSVRC2012_ID, WNID, words, gloss, num_children, children,
                                   wordnet_height, num_train_images) and
                                   ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt
                                   (one ILSVRC2012_ID per validation image, in file-name order)

ILSVRC-2010. The official readme was not at hand; this layout follows the names used by public
converters of the real files (e.g. the Fuel project's ilsvrc2010 converter) and is an assumption:
    ILSVRC2010_images_train.tar    one tar per class, <wnid>.tar
    ILSVRC2010_images_val.tar      val/ILSVRC2010_val_00000001.JPEG ...
    ILSVRC2010_images_test.tar     test/ILSVRC2010_test_00000001.JPEG ...
    ILSVRC2010_devkit-1.0.tar.gz   devkit-1.0/data/meta.mat (field ILSVRC2010_ID instead of
                                   ILSVRC2012_ID) and devkit-1.0/data/ILSVRC2010_validation_ground_truth.txt
    ILSVRC2010_test_ground_truth.txt   released separately, beside the archives
    patch_images.tar               replacements for images that are blank or show an "image not
                                   available" banner: patch_images/<train|val|test>/<file name>
                                   (prepare reads the folder right above the file, as Fuel does)

As in the real devkits, the leaf synsets (num_children == 0, the classes) come first with ids
1..C, followed by non-leaf synsets. The leaf ids are deliberately NOT in sorted-WNID order (they
run in reverse), so that code which confuses "ILSVRC id - 1" with the class index fails.
Archives are written deterministically (fixed mtimes and owners), so equal inputs give equal bytes.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

MTIME = 1_336_000_000  # a fixed time in May 2012: archives are byte-for-byte reproducible

# Non-leaf synsets added above the classes (real WordNet ids; never used as classes).
NON_LEAF = (("n00001740", "entity", "that which is perceived or known or inferred to have its own distinct existence"),
            ("n00021939", "artifact, artefact", "a man-made object taken as a whole"),
            ("n00015388", "animal, animate being, beast, brute, creature, fauna", "a living organism"))


@dataclass
class Synset:
    ilsvrc_id: int
    wnid: str
    words: str
    gloss: str = ""
    children: list[int] = field(default_factory=list)
    wordnet_height: int = 0
    num_train_images: int = 0


@dataclass
class FakeDataset:
    """What was written: file paths, and the facts a test checks against."""
    root: Path
    files: dict[str, Path]  # role ("train", "val", "test", "devkit", "test_ground_truth") -> path
    synsets: list[Synset]  # in meta.mat order
    ilsvrc_ids: dict[str, int]  # class wnid -> ILSVRC id
    val_names: list[str]  # file names in the order of `val`
    test_names: list[str] = field(default_factory=list)
    parquet: dict[str, list[Path]] = field(default_factory=dict)  # write_hf_parquet: split -> its files


# --------------------------------------------------------------------------- synthetic images

def synthetic_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random RGB picture with some texture (compresses like a photo, not like noise)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(2, 12), rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
        c = 128 + 70 * np.sin(2 * np.pi * fx * x / width + phase) * np.cos(2 * np.pi * fy * y / height)
        c += rng.uniform(-40, 40) + rng.normal(0, 12, size=c.shape)
        channels.append(c)
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", quality: int = 90) -> bytes:
    """Encode an RGB uint8 array as `fmt`, after converting it to `mode` (RGB, CMYK, L, P)."""
    im = Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB")
    if mode == "P":
        im = im.quantize(colors=64)
    elif mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def odd_images(rng: np.random.Generator, width: int = 150, height: int = 110) -> dict[str, bytes]:
    """The awkward files ImageNet holds (a PNG and CMYK JPEGs named .JPEG, greyscale), each named by what it is:
    cmyk, grey, palette (a GIF-style palette PNG), png (a PNG that will be named .JPEG),
    truncated (a JPEG cut short: must be rejected, not silently dropped)."""
    def pic():
        return synthetic_image(rng, width, height)
    whole = encode(pic())
    return {
        "cmyk": encode(pic(), mode="CMYK"),
        "grey": encode(pic(), mode="L"),
        "palette": encode(pic(), fmt="PNG", mode="P"),
        "png": encode(pic(), fmt="PNG"),
        "truncated": whole[: len(whole) // 2],
    }


def awkward_dataset(rng: np.random.Generator, n_classes: int = 4, per_class: int = 3, val_per_class: int = 2):
    """A small set for tests: (train, val, words) with images of several shapes (landscape,
    portrait, larger than 256 and smaller), and in the first classes the CMYK, greyscale, palette
    and PNG-named-.JPEG files; none is broken (add odd_images(rng)["truncated"] for that)."""
    wnids = random_classes(n_classes)
    shapes = [(120, 90), (90, 130), (400, 300), (256, 300), (333, 500), (64, 48)]
    k = iter(range(10 ** 6))

    def img():
        return encode(synthetic_image(rng, *shapes[next(k) % len(shapes)]))

    train = {w: [(f"{w}_{j + 1}.JPEG", img()) for j in range(per_class)] for w in wnids}
    odd = odd_images(rng)
    for j, kind in enumerate(("cmyk", "grey", "palette", "png")):
        w = wnids[j % n_classes]
        train[w].append((f"{w}_{kind}.JPEG", odd[kind]))
    val = [(w, img()) for _ in range(val_per_class) for w in wnids]
    val.insert(1, (wnids[-1], odd_images(rng)["cmyk"]))
    words = {w: f"awkward class {i}, synthetic" for i, w in enumerate(wnids)}
    return train, val, words


def random_classes(n: int) -> list[str]:
    """n made-up WordNet ids, n90000000, n90000001, ..."""
    return [f"n{90000000 + i:08d}" for i in range(n)]


def random_dataset(rng: np.random.Generator, n_classes: int, train_per_class: int, val_per_class: int,
                   size: tuple[int, int] = (500, 375), quality: int = 90, test_per_class: int = 0):
    """Synthetic images for write_ilsvrc2012 / write_ilsvrc2010: (train, val, test, words).
    Sizes alternate between landscape and portrait around `size`."""
    wnids = random_classes(n_classes)
    w0, h0 = size

    def img():
        w, h = (w0, h0) if rng.random() < 0.7 else (h0, w0)
        return encode(synthetic_image(rng, w, h), quality=quality)

    train = {w: [(f"{w}_{j + 1}.JPEG", img()) for j in range(train_per_class)] for w in wnids}
    val = [(w, img()) for j in range(val_per_class) for w in wnids]
    test = [(w, img()) for j in range(test_per_class) for w in wnids]
    order = rng.permutation(len(val))
    val = [val[i] for i in order]
    words = {w: f"synthetic class {i}" for i, w in enumerate(wnids)}
    return train, val, test, words


# ------------------------------------------------------------------------------ the devkits

def make_synsets(wnids, words: dict | None = None, train_counts: dict | None = None) -> list[Synset]:
    """Leaves (the classes) with ids 1..C in reverse sorted-WNID order, then non-leaf synsets."""
    classes = sorted(wnids)
    if len(set(classes)) != len(classes):
        raise ValueError("duplicate WordNet ids")
    clash = {w for w, _, _ in NON_LEAF} & set(classes)
    if clash:
        raise ValueError(f"{sorted(clash)} are used here as non-leaf synsets")
    words = words or {}
    train_counts = train_counts or {}
    c = len(classes)
    leaves = [Synset(c - i, w, words.get(w, w), f"gloss of {w}", num_train_images=train_counts.get(w, 0))
              for i, w in enumerate(classes)]
    leaves.sort(key=lambda s: s.ilsvrc_id)
    half = [s.ilsvrc_id for s in leaves[: (c + 1) // 2]]
    rest = [s.ilsvrc_id for s in leaves[(c + 1) // 2:]]
    (w0, t0, g0), (w1, t1, g1), (w2, t2, g2) = NON_LEAF
    groups = [Synset(c + 2, w1, t1, g1, children=half, wordnet_height=1),
              Synset(c + 3, w2, t2, g2, children=rest, wordnet_height=1)]
    root = Synset(c + 1, w0, t0, g0, children=[g.ilsvrc_id for g in groups if g.children], wordnet_height=2)
    return leaves + [root] + [g for g in groups if g.children]


def meta_mat_bytes(synsets: list[Synset], year: int = 2012) -> bytes:
    """meta.mat as the devkit has it: a struct array `synsets` [N, 1] of MATLAB doubles and chars."""
    id_field = f"ILSVRC{year}_ID"
    names = [id_field, "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    arr = np.zeros((len(synsets), 1), dtype=[(n, object) for n in names])
    for i, s in enumerate(synsets):
        arr[i, 0] = (np.array([[s.ilsvrc_id]], float), s.wnid, s.words, s.gloss,
                     np.array([[len(s.children)]], float),
                     np.array([s.children], float).reshape(1, len(s.children)),
                     np.array([[s.wordnet_height]], float), np.array([[s.num_train_images]], float))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": arr}, format="5")
    # The MAT-file's 116-byte text header carries the time of writing ("Created on: ..."):
    # replace it, so that equal synsets always give equal bytes.
    header = b"MATLAB 5.0 MAT-file, written by data_prep.fake_ilsvrc"
    return header.ljust(116, b" ") + buf.getvalue()[116:]


# -------------------------------------------------------------------------------- tar files

def tar_bytes(members: list[tuple[str, bytes]], compress: bool = False) -> bytes:
    """A tar (or .tar.gz) holding regular files; parent directories get their own entries."""
    buf = io.BytesIO()
    gz = gzip.GzipFile(fileobj=buf, mode="wb", mtime=MTIME) if compress else None
    with tarfile.open(fileobj=gz or buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        seen = set()
        for name, data in members:
            parts = name.split("/")[:-1]
            for k in range(1, len(parts) + 1):
                d = "/".join(parts[:k])
                if d and d not in seen:
                    seen.add(d)
                    tar.addfile(_info(d + "/", 0, tarfile.DIRTYPE))
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
    if gz:
        gz.close()
    return buf.getvalue()


def _info(name: str, size: int, kind=tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _train_tar(train: dict) -> bytes:
    return tar_bytes([(f"{wnid}.tar", tar_bytes(list(train[wnid]))) for wnid in sorted(train)])


def _ground_truth(labels: list[str], ids: dict[str, int]) -> bytes:
    return "".join(f"{ids[w]}\n" for w in labels).encode()


def _synsets_for(train: dict, words: dict | None, extra=()) -> list[Synset]:
    wnids = set(train) | set(extra)
    return make_synsets(wnids, words, {w: len(v) for w, v in train.items()})


# ------------------------------------------------------------------------------ the writers

def write_ilsvrc2012(out_dir, train: dict[str, list[tuple[str, bytes]]], val: list[tuple[str, bytes]],
                     words: dict[str, str] | None = None, classes=()) -> FakeDataset:
    """The three official ILSVRC-2012 files in `out_dir`.

    train: wnid -> [(file name, bytes)]; val: [(wnid, bytes)], named ILSVRC2012_val_%08d.JPEG in
    this order; words: wnid -> "words" of the synset. Classes are the union of both and of
    `classes` (more classes for the devkit, e.g. 1000 of which only some have images)."""
    out = Path(out_dir)
    synsets = _synsets_for(train, words, [w for w, _ in val] + list(classes))
    ids = {s.wnid: s.ilsvrc_id for s in synsets if not s.children}
    val_names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(val))]
    files = {
        "train": _write(out / "ILSVRC2012_img_train.tar", _train_tar(train)),
        "val": _write(out / "ILSVRC2012_img_val.tar", tar_bytes(list(zip(val_names, (b for _, b in val))))),
        "devkit": _write(out / "ILSVRC2012_devkit_t12.tar.gz", _devkit_2012(synsets, val, ids)),
    }
    return FakeDataset(out, files, synsets, ids, val_names)


def _devkit_2012(synsets: list[Synset], val: list[tuple[str, bytes]], ids: dict[str, int]) -> bytes:
    return tar_bytes([
        ("ILSVRC2012_devkit_t12/readme.txt", b"Synthetic ILSVRC2012 development kit (data_prep.fake_ilsvrc).\n"),
        ("ILSVRC2012_devkit_t12/data/meta.mat", meta_mat_bytes(synsets, 2012)),
        ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", _ground_truth([w for w, _ in val], ids)),
        ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_blacklisted.txt", b""),
    ], compress=True)


def write_ilsvrc2010(out_dir, train: dict[str, list[tuple[str, bytes]]], val: list[tuple[str, bytes]],
                     test: list[tuple[str, bytes]], words: dict[str, str] | None = None,
                     patches: dict[str, list[tuple[str, bytes]]] | None = None) -> FakeDataset:
    """The ILSVRC-2010 files (layout as assumed in the module docstring) in `out_dir`.

    patches: split -> [(file name, bytes)], the replacements patch_images.tar holds (val and test
    names are ILSVRC2010_<split>_%08d.JPEG, numbered in the order given)."""
    out = Path(out_dir)
    synsets = _synsets_for(train, words, [w for w, _ in val] + [w for w, _ in test])
    ids = {s.wnid: s.ilsvrc_id for s in synsets if not s.children}
    val_names = [f"ILSVRC2010_val_{i + 1:08d}.JPEG" for i in range(len(val))]
    test_names = [f"ILSVRC2010_test_{i + 1:08d}.JPEG" for i in range(len(test))]
    devkit = tar_bytes([
        ("devkit-1.0/readme.txt", b"Synthetic ILSVRC2010 development kit (data_prep.fake_ilsvrc).\n"),
        ("devkit-1.0/data/meta.mat", meta_mat_bytes(synsets, 2010)),
        ("devkit-1.0/data/ILSVRC2010_validation_ground_truth.txt", _ground_truth([w for w, _ in val], ids)),
    ], compress=True)
    files = {
        "train": _write(out / "ILSVRC2010_images_train.tar", _train_tar(train)),
        "val": _write(out / "ILSVRC2010_images_val.tar",
                      tar_bytes([(f"val/{n}", b) for n, (_, b) in zip(val_names, val)])),
        "test": _write(out / "ILSVRC2010_images_test.tar",
                       tar_bytes([(f"test/{n}", b) for n, (_, b) in zip(test_names, test)])),
        "devkit": _write(out / "ILSVRC2010_devkit-1.0.tar.gz", devkit),
        "test_ground_truth": _write(out / "ILSVRC2010_test_ground_truth.txt",
                                    _ground_truth([w for w, _ in test], ids)),
        "patches": _write(out / "patch_images.tar", tar_bytes(
            [(f"patch_images/{split}/{name}", b) for split, files in (patches or {}).items() for name, b in files])),
    }
    return FakeDataset(out, files, synsets, ids, val_names, test_names)


def write_tree(out_dir, train: dict[str, list[tuple[str, bytes]]], val: list[tuple[str, bytes]],
               words: dict[str, str] | None = None, flat_val: bool = False) -> FakeDataset:
    """An extracted ILSVRC-2012 tree: train/<wnid>/<name>, and val/<wnid>/<val name> folders,
    or (flat_val) val/<val name> with the devkit archive beside it for the labels; with `words`,
    a synset_words.txt ("<wnid> <words>" lines)."""
    out = Path(out_dir)
    synsets = _synsets_for(train, words, (w for w, _ in val))
    ids = {s.wnid: s.ilsvrc_id for s in synsets if not s.children}
    val_names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(val))]
    for wnid, images in train.items():
        for name, data in images:
            _write(out / "train" / wnid / name, data)
    for name, (wnid, data) in zip(val_names, val):
        _write(out / "val" / ("" if flat_val else wnid) / name, data)
    files = {"train": out / "train", "val": out / "val"}
    if words:  # Caffe's synset_words.txt: the words of each class without a devkit
        files["words"] = _write(out / "synset_words.txt",
                                "".join(f"{w} {words.get(w, '')}\n" for w in sorted(ids)).encode())
    if flat_val:
        files["devkit"] = _write(out / "ILSVRC2012_devkit_t12.tar.gz", tar_bytes([
            ("ILSVRC2012_devkit_t12/data/meta.mat", meta_mat_bytes(synsets, 2012)),
            ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
             _ground_truth([w for w, _ in val], ids)),
        ], compress=True))
    return FakeDataset(out, files, synsets, ids, val_names)


# --------------------------------------------------------------- the other download routes

def _words_of(wnids, words: dict | None) -> dict[str, str]:
    """The words every writer gives a class (make_synsets' rule: the WordNet id when none given)."""
    return {w: (words or {}).get(w, w) for w in wnids}


def _class_list(train: dict, val: list, classes=()) -> list[str]:
    return sorted(set(train) | {w for w, _ in val} | set(classes))


def write_kaggle(out_dir, train: dict[str, list[tuple[str, bytes]]], val: list[tuple[str, bytes]],
                 words: dict[str, str] | None = None, classes=(), test: list[bytes] = (), devkit: bool = False,
                 seed: int = 0) -> FakeDataset:
    """The Kaggle download of ILSVRC-2012 (the "ImageNet Object Localization Challenge"), unzipped,
    from the same inputs as write_ilsvrc2012 (same file names, classes and words):

        ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG
        ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_%08d.JPEG      flat, numbered in the order of `val`
        ILSVRC/Data/CLS-LOC/test/ILSVRC2012_test_%08d.JPEG    no labels
        LOC_synset_mapping.txt     "<wnid> <words>" per class, in sorted-WNID order
        LOC_val_solution.csv       "ImageId,PredictionString"; per image "<wnid> x0 y0 x1 y1" per box (the
                                   class is the first WordNet id); rows in no particular order
        LOC_train_solution.csv, LOC_sample_submission.csv   boxes and a submission example (not read)

    devkit: the official devkit beside the download as well (the source of the ILSVRC ids)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    wnids = _class_list(train, val, classes)
    word = _words_of(wnids, words)
    cls_loc = out / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid, images in train.items():
        for name, data in images:
            _write(cls_loc / "train" / wnid / name, data)
    val_names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(val))]
    for name, (_, data) in zip(val_names, val):
        _write(cls_loc / "val" / name, data)
    for i, data in enumerate(test):
        _write(cls_loc / "test" / f"ILSVRC2012_test_{i + 1:08d}.JPEG", data)

    def boxes(wnid: str) -> str:
        return " ".join(f"{wnid} {' '.join(str(v) for v in rng.integers(0, 300, 4))}"
                        for _ in range(int(rng.integers(1, 3))))

    rows = [f"{name[:-5]},{boxes(wnid)}\n" for name, (wnid, _) in zip(val_names, val)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    files = {
        "train": cls_loc / "train", "val": cls_loc / "val",
        "mapping": _write(out / "LOC_synset_mapping.txt", "".join(f"{w} {word[w]}\n" for w in wnids).encode()),
        "val_solution": _write(out / "LOC_val_solution.csv", ("ImageId,PredictionString\n" + "".join(rows)).encode()),
        "train_solution": _write(out / "LOC_train_solution.csv", ("ImageId,PredictionString\n" + "".join(
            f"{name[:-5]},{boxes(w)}\n" for w in sorted(train) for name, _ in train[w][:1])).encode()),
        "sample_submission": _write(out / "LOC_sample_submission.csv", ("ImageId,PredictionString\n" + "".join(
            f"ILSVRC2012_test_{i + 1:08d},1 2 3 4 5\n" for i in range(len(test)))).encode()),
    }
    synsets = _synsets_for(train, words, [w for w, _ in val] + list(classes))
    ids = {s.wnid: s.ilsvrc_id for s in synsets if not s.children}
    if devkit:
        files["devkit"] = _write(out / "ILSVRC2012_devkit_t12.tar.gz", _devkit_2012(synsets, val, ids))
    return FakeDataset(out, files, synsets, ids, val_names)


def hf_table(rows: list[tuple[bytes | None, str | None, int]], path_column: bool = True):
    """A pyarrow Table as Hugging Face's imagenet-1k Parquet files hold it: `image` (a struct of
    `bytes`, the image file, and `path`, its original file name) and `label` (int64)."""
    import pyarrow as pa

    fields = [pa.array([b for b, _, _ in rows], pa.binary())]
    names = ["bytes"]
    if path_column:
        fields.append(pa.array([p for _, p, _ in rows], pa.string()))
        names.append("path")
    image = pa.StructArray.from_arrays(fields, names=names)
    return pa.table({"image": image, "label": pa.array([label for _, _, label in rows], pa.int64())})


def write_parquet(path, table, rows_per_group: int) -> Path:
    """`table` as one Parquet file (snappy, as pyarrow and the datasets library write by default)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def write_hf_parquet(out_dir, train: dict[str, list[tuple[str, bytes]]], val: list[tuple[str, bytes]],
                     words: dict[str, str] | None = None, classes=(), test: list[bytes] = (),
                     files: tuple[int, int] = (3, 2), rows_per_group: int = 3, layout: str = "data",
                     suffix_names: bool = True, classes_py: bool = True, devkit: bool = False,
                     seed: int = 0) -> FakeDataset:
    """Hugging Face's `ILSVRC/imagenet-1k` as `huggingface-cli download ... --local-dir out_dir`
    stores it, from the same inputs as write_ilsvrc2012 (needs pyarrow):

        data/train-00000-of-00003.parquet ...        layout="data" (the repository's own files), or
        default/train/0000.parquet ...               layout="default" (the Hub's automatic conversion);
                                                     likewise validation and test
        classes.py                                   IMAGENET2012_CLASSES = OrderedDict({"<wnid>": "<words>", ...})
                                                     in sorted-WNID order (classes_py)
        README.md                                    the dataset card

    Rows: image = {bytes, path}, label = the class's index in sorted-WNID order (-1 in test).
    The original file names carry the class as a suffix, as the repository's files do
    (suffix_names): n01440764_10026_n01440764.JPEG for n01440764_10026.JPEG,
    ILSVRC2012_val_00000001_n01751748.JPEG; test images are ILSVRC2012_test_%08d.JPEG. Rows are
    shuffled (seed) and cut into `files` = (train, validation) files of `rows_per_group` rows per
    row group. devkit: the official devkit beside the data as well."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    wnids = _class_list(train, val, classes)
    label = {w: i for i, w in enumerate(wnids)}

    def hf_name(name: str, wnid: str) -> str:
        return f"{name[:-5]}_{wnid}.JPEG" if suffix_names else name

    val_names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(val))]
    splits = {
        "train": [(data, hf_name(name, w), label[w]) for w in sorted(train) for name, data in train[w]],
        "validation": [(data, hf_name(name, w), label[w]) for name, (w, data) in zip(val_names, val)],
        "test": [(data, f"ILSVRC2012_test_{i + 1:08d}.JPEG", -1) for i, data in enumerate(test)],
    }
    written: dict[str, list[Path]] = {}
    for split, rows in splits.items():
        if not rows:
            continue
        rows = [rows[i] for i in rng.permutation(len(rows))]
        n = {"train": files[0], "validation": files[1]}.get(split, 1)
        for i, part in enumerate(np.array_split(np.arange(len(rows)), n)):
            name = (f"data/{split}-{i:05d}-of-{n:05d}.parquet" if layout == "data"
                    else f"default/{split}/{i:04d}.parquet")
            table = hf_table([rows[k] for k in part])
            written.setdefault(split, []).append(write_parquet(out / name, table, rows_per_group))
    word = _words_of(wnids, words)
    paths = {"data": out / ("data" if layout == "data" else "default")}
    paths["readme"] = _write(out / "README.md", b"---\npretty_name: ImageNet (synthetic, data_prep.fake_ilsvrc)\n---\n")
    if classes_py:
        entries = "".join(f"        {json.dumps(w)}: {json.dumps(word[w])},\n" for w in wnids)
        paths["classes"] = _write(out / "classes.py", (
            "# coding=utf-8\n# Synthetic (data_prep.fake_ilsvrc), in the form of the dataset's own classes.py.\n"
            "from collections import OrderedDict\n\nIMAGENET2012_CLASSES = OrderedDict(\n    {\n"
            f"{entries}    }}\n)\n").encode())
    synsets = _synsets_for(train, words, [w for w, _ in val] + list(classes))
    ids = {s.wnid: s.ilsvrc_id for s in synsets if not s.children}
    if devkit:
        paths["devkit"] = _write(out / "ILSVRC2012_devkit_t12.tar.gz", _devkit_2012(synsets, val, ids))
    return FakeDataset(out, paths, synsets, ids, val_names, parquet=written)
