"""The inputs prepare accepts besides the ILSVRC-2012 archives (extracted trees, ILSVRC-2010), the
fake-archive writer itself, and the pieces of the pipeline on their own."""
import errno
import io
import os
import re
import tarfile

import h5py
import numpy as np
import pytest
import scipy.io

from data_prep import fake_ilsvrc as fake
from data_prep import images, prepare, shards, sources
from data_prep.stats import Moments
from repro import files
from repro.errors import UserError
from tests.pixels import assert_as_resize_then_crop, resize_two_pass
from tests.prepared import dataset, prepared_archives, run, same_contents, shard_hashes, split_contents


@pytest.fixture(scope="module")
def data():
    return dataset(21, per_class=2)


@pytest.fixture(scope="module")
def from_archives(data, tmp_path_factory):
    return prepared_archives(data, tmp_path_factory.mktemp("arch"))


def test_tree_with_flat_val_and_devkit_gives_the_same_shards(data, from_archives, tmp_path):
    train, val, words = data
    fake.write_tree(tmp_path / "src", train, val, words, flat_val=True)
    run(tmp_path / "src", tmp_path / "out")
    for split in ("train", "val"):
        assert shard_hashes(tmp_path / "out", split) == shard_hashes(from_archives, split)
    assert shards.read_manifest(tmp_path / "out")["layout"] == "tree"


def test_tree_with_val_folders_and_no_devkit(data, from_archives, tmp_path):
    train, val, words = data
    fake.write_tree(tmp_path / "src", train, val, words)
    run(tmp_path / "src", tmp_path / "out")
    manifest = shards.read_manifest(tmp_path / "out")
    assert [c["wnid"] for c in manifest["classes"]] == sorted(train)
    assert [c["words"] for c in manifest["classes"]] == [words[w] for w in sorted(train)]
    assert all(c["ilsvrc_id"] == -1 for c in manifest["classes"])  # no devkit, no ids
    for split in ("train", "val"):
        assert same_contents(tmp_path / "out", from_archives, split)
    assert any(s["hash_of"] == "listing" for s in manifest["sources"])


def test_flat_val_without_a_devkit_is_a_clear_error(data, tmp_path):
    train, val, words = data
    fake.write_tree(tmp_path / "src", train, val, words, flat_val=True)
    (tmp_path / "src" / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(UserError, match="flat"):
        run(tmp_path / "src", tmp_path / "out")


def test_ilsvrc2010_train_val_and_test_with_the_patch_images(tmp_path):
    rng = np.random.default_rng(4)
    train, val, test, words = fake.random_dataset(rng, 3, 2, 1, size=(100, 80), test_per_class=2)
    # patch_images.tar replaces one image of each split (in the real archives: blank placeholders)
    blank = fake.encode(np.zeros((80, 100, 3), np.uint8))
    patched_train = next(iter(train.values()))[1][0]
    train = {w: [(n, blank if n == patched_train else b) for n, b in files] for w, files in train.items()}
    val = [(w, blank if i == 1 else b) for i, (w, b) in enumerate(val)]
    test = [(w, blank if i == 0 else b) for i, (w, b) in enumerate(test)]
    fixes = {k: fake.encode(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)) for k in ("train", "val", "test")}
    patches = {"train": [(patched_train, fixes["train"])], "val": [("ILSVRC2010_val_00000002.JPEG", fixes["val"])],
               "test": [("ILSVRC2010_test_00000001.JPEG", fixes["test"])]}
    d = fake.write_ilsvrc2010(tmp_path / "src", train, val, test, words, patches)
    assert run(tmp_path / "src", tmp_path / "out", year=2010).complete
    leaves = sorted(train)
    for split, given, names in (("val", val, d.val_names), ("test", test, d.test_names)):
        labels, _, got_names, _ = split_contents(tmp_path / "out", split)
        assert got_names == names
        assert labels == [leaves.index(w) for w, _ in given]
    for split, name in (("train", patched_train), ("val", d.val_names[1]), ("test", d.test_names[0])):
        _, _, got_names, imgs = split_contents(tmp_path / "out", split)
        got = imgs[got_names.index(name)]
        assert np.array_equal(got, images.load(fixes[split])) and got.any(), (split, name)
    manifest = shards.read_manifest(tmp_path / "out")
    assert manifest["year"] == 2010 and set(manifest["splits"]) == {"train", "val", "test"}
    assert manifest["patched"] == {"train": 1, "val": 1, "test": 1}
    assert {s["name"] for s in manifest["sources"]} == set(sources.ARCHIVES[2010].values())
    assert "patch_images.tar" in sources.ARCHIVES[2010].values()
    assert [c["ilsvrc_id"] for c in manifest["classes"]] == [d.ilsvrc_ids[w] for w in leaves]


def small_2010(root, patches=None):
    rng = np.random.default_rng(5)
    train, val, test, words = fake.random_dataset(rng, 2, 1, 1, size=(60, 50), test_per_class=1)
    return fake.write_ilsvrc2010(root, train, val, test, words, patches), train


def test_ilsvrc2010_needs_the_patch_images(tmp_path):
    d, _ = small_2010(tmp_path)
    d.files["patches"].unlink()
    with pytest.raises(UserError, match="missing archive .*patch_images.tar"):
        sources.catalog(tmp_path, 2010)


@pytest.mark.parametrize("patches, message", [
    ({"val": [("ILSVRC2010_val_00000099.JPEG", b"x")]}, "1 of its 1 replacement images match no image"),
    ({"other": [("ILSVRC2010_val_00000001.JPEG", b"x")]}, "not <train|val|test>/<file name>")])
def test_a_patch_archive_that_does_not_fit_the_archives_is_refused(tmp_path, patches, message):
    small_2010(tmp_path, patches)
    with pytest.raises(UserError, match=message):
        sources.catalog(tmp_path, 2010)


def test_a_patch_for_an_image_already_rejected_is_not_an_error(tmp_path):
    (tmp_path / "patch_images.tar").write_bytes(fake.tar_bytes([("patch_images/train/n1_1.JPEG", b"x")]))
    cat = sources.Catalog(2010, "archives", tmp_path, [], {"train": []},
                          rejects=[sources.Reject("train", "n1.tar/n1_1.JPEG", "not a regular file")])
    sources.apply_patches(cat, tmp_path / "patch_images.tar")  # the reject already says why it is missing
    cat.rejects.clear()
    with pytest.raises(UserError, match="match no image"):
        sources.apply_patches(cat, tmp_path / "patch_images.tar")


def extract_files(tar: tarfile.TarFile, dest) -> None:
    """The regular files of one of our generated archives, under dest (no extractall: its safe
    `filter=` argument needs Python 3.11.4, and these archives hold nothing else anyway)."""
    for m in tar:
        if m.isreg():
            assert sources.unsafe_name(m.name) is None, m.name
            path = dest / m.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar.extractfile(m).read())


def test_an_extracted_2010_tree_uses_the_patch_images_beside_it(tmp_path):
    src, tree = tmp_path / "src", tmp_path / "tree"
    d, train = small_2010(src, {"test": [("ILSVRC2010_test_00000002.JPEG", b"new")]})
    (tree / "train").mkdir(parents=True)
    with tarfile.open(d.files["train"]) as outer:
        for m in outer:
            with tarfile.open(fileobj=outer.extractfile(m)) as inner:
                extract_files(inner, tree / "train" / m.name[:-4])
    for split in ("val", "test"):
        with tarfile.open(d.files[split]) as t:
            extract_files(t, tree)
    for key in ("devkit", "test_ground_truth"):
        (tree / d.files[key].name).write_bytes(d.files[key].read_bytes())
    assert sources.catalog(tree, 2010).patched == {}  # no patch archive beside the tree: none applied
    (tree / "patch_images.tar").write_bytes(d.files["patches"].read_bytes())
    cat = sources.catalog(tree, 2010)
    assert cat.patched == {"train": 0, "val": 0, "test": 1}
    it = cat.splits["test"][1]
    assert it.name == "ILSVRC2010_test_00000002.JPEG" and it.path == str(tree / "patch_images.tar")
    with open(it.path, "rb") as f:
        f.seek(it.offset)
        assert f.read(it.size) == b"new"
    assert tree / "patch_images.tar" in cat.sources


def test_the_wrong_year_is_named(data, tmp_path):
    train, val, words = data
    fake.write_ilsvrc2012(tmp_path, train, val, words)
    with pytest.raises(UserError, match="--year 2012"):
        sources.catalog(tmp_path, 2010)


def test_a_compressed_image_archive_is_refused_clearly(data, tmp_path):
    train, val, words = data
    d = fake.write_ilsvrc2012(tmp_path, train, val, words)
    d.files["val"].write_bytes(fake.tar_bytes([(n, b) for n, (_, b) in zip(d.val_names, val)], compress=True))
    with pytest.raises(UserError, match="uncompressed"):
        sources.catalog(tmp_path, 2012)


def test_a_class_archive_not_in_the_devkit_is_refused(data, tmp_path):
    train, val, words = data
    d = fake.write_ilsvrc2012(tmp_path, train, val, words)
    extra = dict(train, n99999999=train[sorted(train)[0]])
    d.files["train"].write_bytes(fake._train_tar(extra))
    with pytest.raises(UserError, match="n99999999.tar"):
        sources.catalog(tmp_path, 2012)


def test_a_cut_short_archive_is_a_clear_error(data, tmp_path):
    train, val, words = data
    d = fake.write_ilsvrc2012(tmp_path, train, val, words)
    raw = d.files["train"].read_bytes()
    with tarfile.open(d.files["train"]) as t:
        last = t.getmembers()[-1]
    d.files["train"].write_bytes(raw[:last.offset_data + last.size // 2])  # an interrupted download
    with pytest.raises(UserError, match=f"cut short.*{re.escape(last.name)}"):
        sources.catalog(tmp_path, 2012)


@pytest.mark.parametrize("workers", [0, 2])  # class archives indexed here, or on a pool (as prepare does)
def test_a_cut_short_or_broken_class_archive_rejects_what_it_cannot_read(data, tmp_path, workers):
    train, val, words = data
    d = fake.write_ilsvrc2012(tmp_path, train, val, words)
    w, broken, *rest = sorted(train)
    inner = fake.tar_bytes(train[w])
    with tarfile.open(fileobj=io.BytesIO(inner)) as t:
        cut = t.getmembers()[-1]
    inner = inner[:cut.offset_data + 10]
    others = [(f"{x}.tar", fake.tar_bytes(train[x])) for x in rest]
    d.files["train"].write_bytes(fake.tar_bytes([(f"{w}.tar", inner), (f"{broken}.tar", b"not a tar" * 100)] + others))
    cat = sources.catalog(tmp_path, 2012, run=prepare._pool_runner(workers, min_tasks=1) if workers else None)
    assert [r.name for r in cat.rejects] == [f"{w}.tar/{cut.name}", f"{broken}.tar"]
    assert "cut short" in cat.rejects[0].reason and "unreadable" in cat.rejects[1].reason
    assert len(cat.splits["train"]) == sum(len(train[x]) for x in [w] + rest) - 1
    with open(d.files["train"], "rb") as f:  # each item's byte range holds that very image
        for it in cat.splits["train"]:
            f.seek(it.offset)
            assert f.read(it.size) == dict(train[sorted(train)[it.label]])[it.name]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_header_inside_a_class_archive_is_a_reject_not_a_silent_stop(data, tmp_path, workers):
    train, val, words = data
    d = fake.write_ilsvrc2012(tmp_path, train, val, words)
    w, *rest = sorted(train)
    inner = bytearray(fake.tar_bytes(train[w]))
    with tarfile.open(fileobj=io.BytesIO(bytes(inner))) as t:
        second = t.getmembers()[1]
    inner[second.offset:second.offset + 512] = b"x" * 512  # tarfile would just stop iterating here
    others = [(f"{x}.tar", fake.tar_bytes(train[x])) for x in rest]
    d.files["train"].write_bytes(fake.tar_bytes([(f"{w}.tar", bytes(inner))] + others))
    cat = sources.catalog(tmp_path, 2012, run=prepare._pool_runner(workers, min_tasks=1) if workers else None)
    assert [r.name for r in cat.rejects] == [f"{w}.tar"] and "damaged header" in cat.rejects[0].reason
    assert [it.name for it in cat.splits["train"] if it.label == 0] == [train[w][0][0]]


def test_a_damaged_header_in_an_archive_is_a_clear_error(data, tmp_path):
    train, val, words = data
    d = fake.write_ilsvrc2012(tmp_path, train, val, words)
    raw = bytearray(d.files["val"].read_bytes())
    with tarfile.open(d.files["val"]) as t:
        third = t.getmembers()[2]
    raw[third.offset:third.offset + 512] = b"x" * 512
    d.files["val"].write_bytes(bytes(raw))
    with pytest.raises(UserError, match="unreadable after .*damaged header"):
        sources.catalog(tmp_path, 2012)


# ------------------------------------------------------------------------- fake writer

def test_fake_meta_mat_has_the_devkit_structure(data, tmp_path):
    train, val, words = data
    d = fake.write_ilsvrc2012(tmp_path, train, val, words)
    with tarfile.open(d.files["devkit"]) as t:
        names = t.getnames()
        meta = scipy.io.loadmat(io.BytesIO(t.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()))
        truth = t.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read().split()
    assert "ILSVRC2012_devkit_t12/data/meta.mat" in names
    syn = meta["synsets"]
    assert syn.shape == (len(d.synsets), 1)
    assert syn.dtype.names == ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
                               "wordnet_height", "num_train_images")
    ids = [int(s["ILSVRC2012_ID"][0, 0]) for s in syn[:, 0]]
    assert ids == list(range(1, len(ids) + 1))
    leaves = [s for s in syn[:, 0] if int(s["num_children"][0, 0]) == 0]
    assert len(leaves) == len(train) < len(ids)
    assert [str(s["WNID"][0]) for s in leaves] != sorted(str(s["WNID"][0]) for s in leaves)
    assert [int(x) for x in truth] == [d.ilsvrc_ids[w] for w, _ in val]
    with tarfile.open(d.files["train"]) as t:
        assert t.getnames() == [f"{w}.tar" for w in sorted(train)]


def test_fake_archives_are_reproducible(data, tmp_path):
    train, val, words = data
    a = fake.write_ilsvrc2012(tmp_path / "a", train, val, words)
    b = fake.write_ilsvrc2012(tmp_path / "b", train, val, words)
    for role in a.files:
        assert a.files[role].read_bytes() == b.files[role].read_bytes()


# ----------------------------------------------------------------------------- pieces

@pytest.mark.parametrize("name, bad", [
    ("n01440764_1.JPEG", False), ("val/ILSVRC2010_val_00000001.JPEG", False), ("a/../b.JPEG", True),
    ("../x.JPEG", True), ("/etc/passwd", True), ("C:/x.JPEG", True), ("\\\\server\\x", True), ("", True),
    ("..x.JPEG", False)])
def test_unsafe_names(name, bad):
    assert (sources.unsafe_name(name) is not None) == bad


@pytest.mark.parametrize("size, expected", [((500, 375), (341, 256)), ((375, 500), (256, 341)),
                                            ((256, 256), (256, 256)), ((100, 50), (512, 256)),
                                            ((3, 2), (384, 256)), ((1000, 1), (256000, 256))])
def test_resized_size_rounds_half_up(size, expected):
    assert images.resized_size(*size) == expected


def test_gzipped_image_is_decoded(data):
    import gzip
    jpeg = data[1][0][1]
    assert np.array_equal(images.load(gzip.compress(jpeg)), images.load(jpeg))


def test_moments_are_exact_and_order_free():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 256, 256, 3), dtype=np.uint8)
    a, b = Moments(), Moments()
    a.add(imgs)
    b.add(imgs[3:])
    part = Moments()
    part.add(imgs[:3])
    b.merge(part)
    assert np.array_equal(a.pixel_sum, b.pixel_sum) and np.array_equal(a.outer, b.outer)
    x = imgs.reshape(-1, 3).astype(np.int64)
    assert np.array_equal(a.outer, x.T @ x)
    assert np.array_equal(a.pixel_sum, imgs.sum(axis=0, dtype=np.int64))


@pytest.mark.parametrize("planned", [None, ([0, 0], [1, 1], ["a", "b"])], ids=["h5py", "streamed"])
def test_shard_writer_leaves_nothing_on_failure(tmp_path, planned):
    path = tmp_path / "train-00000.h5"
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(path, 2, ["n1"], ["one"], "train", 0, planned=planned) as w:
            w.append(np.zeros((1, 256, 256, 3), np.uint8), [0], [1], ["a"])
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def _open_fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


@pytest.mark.parametrize("where", ["pwrite", "fsync", "replace", "exact copy"])
def test_a_streamed_shard_failing_anywhere_leaves_no_file_and_no_descriptor(tmp_path, monkeypatch, where):
    """A disk error while appending, flushing, renaming or copying into the exact file: the error
    reaches the caller, no temporary file stays behind, no file descriptor stays open, and there
    is no SHA-256 to read."""
    path = tmp_path / "train-00000.h5"
    planned = ([0, 0], [1, 1], ["a", "b"])
    full = OSError(errno.ENOSPC, "No space left on device")

    def fail(*args, **kwargs):
        raise full

    if where == "exact copy":  # the reject's fallback: its new file fails to be created
        real = h5py.File
        monkeypatch.setattr(shards.h5py, "File", lambda name, *a, **k: fail() if ".exact." in str(name)
                            else real(name, *a, **k))
    before = _open_fds()
    with pytest.raises(OSError) as caught:
        with shards.ShardWriter(path, 2, ["n1"], ["one"], "train", 0, planned=planned) as w:
            if where == "pwrite":
                monkeypatch.setattr(os, "pwrite", fail)
            w.append(np.zeros((1, 256, 256, 3), np.uint8), [0], [1], ["a"])
            if where != "exact copy":
                w.append(np.zeros((1, 256, 256, 3), np.uint8), [0], [1], ["b"])
            if where in ("fsync", "replace"):
                monkeypatch.setattr(os, where, fail)
    assert caught.value is full
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [] and _open_fds() == before
    with pytest.raises(ValueError, match="close"):
        w.sha256


def _shard_contents(path):
    meta = shards.read_meta(path)
    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k] for k in f.attrs}
        ids = f["ilsvrc_ids"][:].tolist()
    return (np.array(shards.map_images(meta)), shards.read_labels(path).tolist(), ids,
            shards.read_strings(path, "filenames"), shards.read_strings(path, "class_wnids"),
            shards.read_strings(path, "class_words"), attrs)


def _same_shard(a, b):
    return np.array_equal(a[0], b[0]) and a[1:] == b[1:]


def test_a_streamed_shard_hashes_itself_drops_its_pages_and_holds_what_h5py_writes(tmp_path, monkeypatch):
    """With the plan known, ShardWriter writes the metadata first and streams the images with
    pwrite, hashing them on the way: its sha256 must be the file's, its contents those of the
    plain h5py path, the same bytes every time, and the pages it asks the kernel to drop only
    images written at least WRITE_BEHIND bytes before (each range twice at most)."""
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
    labels, ids, names = [2, 0, 1, 1, 0], [5, 3, 4, 4, 3], [f"n{i}_{i}.JPEG" for i in range(5)]
    classes = (["n0", "n1", "n2"], ["zero", "one", "two"])
    advice = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise",
                        lambda fd, at, n, what: advice.append((at, n, what)) or real(fd, at, n, what))
    monkeypatch.setattr(shards.ShardWriter, "WRITE_BEHIND", shards.IMAGE_BYTES)

    def write(path, planned):
        path.parent.mkdir()
        with shards.ShardWriter(path, 5, *classes, "train", 4, planned=planned) as w:
            for a, b in ((0, 2), (2, 4), (4, 5)):
                w.append(imgs[a:b], labels[a:b], ids[a:b], names[a:b])
        return w

    plain = write(tmp_path / "plain" / "train-00004.h5", None)
    assert advice == []
    streamed = write(tmp_path / "streamed" / "train-00004.h5", (labels, ids, names))
    again = write(tmp_path / "again" / "train-00004.h5", (labels, ids, names))
    for w in (plain, streamed, again):
        assert w.sha256 == files.sha256(w.path)
        assert sorted(p.name for p in w.path.parent.iterdir()) == ["train-00004.h5"]
    assert _same_shard(_shard_contents(streamed.path), _shard_contents(plain.path))
    assert streamed.sha256 == again.sha256
    offset = shards.read_meta(streamed.path).images_offset
    first = advice[:len(advice) // 2]  # the streamed shard's calls (the second one's are the same)
    assert first == advice[len(advice) // 2:]
    assert [(at - offset, n) for at, n, _ in first] == [(0, shards.IMAGE_BYTES), (0, 3 * shards.IMAGE_BYTES),
                                                          (shards.IMAGE_BYTES, 3 * shards.IMAGE_BYTES)]
    assert {what for _, _, what in first} == {os.POSIX_FADV_DONTNEED}


def test_a_streamed_shard_that_departs_from_its_plan_is_copied_into_an_exact_file(tmp_path):
    """A rejected image (fewer appended than planned) or anything appended other than the plan:
    the file holds exactly what was appended, and sha256 is the file's."""
    rng = np.random.default_rng(4)
    imgs = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    planned = ([0, 1, 1], [7, 8, 8], ["a.JPEG", "b.JPEG", "c.JPEG"])
    cases = {"rejected": ([0, 2], [0, 1], [7, 8], ["a.JPEG", "c.JPEG"]),
             "other": ([0, 1, 2], [0, 0, 1], [7, 7, 8], ["a.JPEG", "b.JPEG", "c.JPEG"])}
    for case, (keep, labels, ids, names) in cases.items():
        path = tmp_path / case / "val-00000.h5"
        path.parent.mkdir()
        with shards.ShardWriter(path, 3, ["n1", "n2"], ["one", "two"], "val", 0, planned=planned) as w:
            for i, k in enumerate(keep):
                w.append(imgs[k:k + 1], labels[i:i + 1], ids[i:i + 1], names[i:i + 1])
        got = _shard_contents(path)
        assert np.array_equal(got[0], imgs[keep]) and got[1:4] == (labels, ids, names), case
        assert w.sha256 == files.sha256(path), case
        assert sorted(p.name for p in path.parent.iterdir()) == ["val-00000.h5"], case


def test_a_shard_with_fewer_images_than_planned_is_exact_and_mappable(tmp_path):
    path = tmp_path / "val-00000.h5"
    img = np.arange(256 * 256 * 3, dtype=np.int64).reshape(1, 256, 256, 3).astype(np.uint8)
    with shards.ShardWriter(path, 3, ["n1"], ["one"], "val", 0) as w:
        w.append(img, [0], [7], ["a.JPEG"])
    meta = shards.read_meta(path)
    assert meta.count == 1 and meta.images_offset is not None
    assert np.array_equal(shards.map_images(meta)[0], img[0])
    assert shards.read_strings(path, "filenames") == ["a.JPEG"]
    assert list(tmp_path.iterdir()) == [path]


def test_resize_crop_is_resize_then_crop_for_many_shapes():
    from PIL import Image
    rng = np.random.default_rng(1)
    shapes = [(500, 375), (375, 500), (500, 333), (257, 256), (256, 257), (300, 257), (1000, 300),
              (255, 100), (100, 255), (256, 256), (640, 480), (299, 1), (3, 700),
              (257, 2000), (350, 713), (3000, 400), (1200, 2600), (4000, 257)]  # tall ones: Pillow 13 goes
    # vertical first; the panorama's kept columns lie far from the origin (float32 box coordinates)
    shapes += [tuple(int(v) for v in rng.integers(1, 700, 2)) for _ in range(12)]
    for w, h in shapes:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        W, H = images.resized_size(w, h)
        direct = np.asarray(resize_two_pass(im, (W, H)))
        top, left = (H - 256) // 2, (W - 256) // 2
        assert_as_resize_then_crop(images.resize_crop(im), direct[top:top + 256, left:left + 256], (w, h))
    im = Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))  # square: no box, exact
    assert np.array_equal(images.resize_crop(im), np.asarray(resize_two_pass(im, (256, 256))))


def _square_reporting(task, report):
    if task == "boom":
        raise ValueError("task failed")
    report(1)
    return task * task


def test_parallel_map_keeps_task_order_relays_progress_and_reraises(capsys):
    from data_prep.workers import parallel_map

    class Count:
        n = 0

        def update(self, k):
            self.n += k

    seen, count = [], Count()
    assert parallel_map(_square_reporting, list(range(7)), 2, count, seen.append) == [i * i for i in range(7)]
    assert sorted(seen) == [i * i for i in range(7)] and count.n == 7
    with pytest.raises(ValueError, match="task failed"):
        parallel_map(_square_reporting, [1, "boom", 2], 2)
