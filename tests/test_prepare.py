"""`./run.sh prepare` on tiny archives in the official ILSVRC-2012 layout (data_prep.fake_ilsvrc).

Checked: labels of every validation image (ILSVRC ids deliberately not in sorted-WNID order,
non-leaf synsets in meta.mat), pixels against a direct resize and crop, mean and PCA against
numpy, resume after an interruption, rejects, the traversal guard, the clear errors, --verify.
"""
import collections
import errno
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from data_prep import fake_ilsvrc as fake
from data_prep import prepare, shards
from data_prep.shards import ShardWriter
from data_prep.stats import Moments
from data_prep.verify import verify
from repro import cli, files
from repro.errors import UserError
from tests.pixels import assert_as_resize_then_crop, resize_two_pass

SHARD = 5  # small shards, so that every split has several


def run(src, out, **kw) -> prepare.Summary:
    opts = prepare.Options(Path(src), Path(out), workers=kw.pop("workers", 1), shard_size=kw.pop("shard_size", SHARD),
                           quiet=True, **kw)
    return prepare.prepare(opts)


def read_split(out, split):
    """All images, labels, ILSVRC ids and file names of a split, in shard order."""
    imgs, labels, ids, names = [], [], [], []
    for p in shards.list_shards(out, split):
        with h5py.File(p, "r") as f:
            imgs.append(f["images"][:])
            labels += f["labels"][:].tolist()
            ids += f["ilsvrc_ids"][:].tolist()
            names += [s.decode() for s in f["filenames"][:]]
    return np.concatenate(imgs), labels, ids, names


def file_hashes(out) -> dict:
    """SHA-256 of every visible file of a prepared directory."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(out).iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    rng = np.random.default_rng(12)
    train, val, words = fake.awkward_dataset(rng)
    root = tmp_path_factory.mktemp("src")
    data = fake.write_ilsvrc2012(root, train, val, words)
    return data, train, val, words


@pytest.fixture(scope="module")
def prepared(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = run(ds[0].root, out)
    assert summary.complete
    return out


# ------------------------------------------------------------------------------ labels

def test_classes_are_the_leaf_synsets_in_sorted_wnid_order(ds, prepared):
    data, train, val, words = ds
    leaves = sorted(train)
    # The fixture must really have ids out of WNID order and non-leaf synsets, or this proves nothing.
    assert [data.ilsvrc_ids[w] for w in leaves] != sorted(data.ilsvrc_ids[w] for w in leaves)
    assert any(s.children for s in data.synsets)
    classes = shards.read_manifest(prepared)["classes"]
    assert [c["wnid"] for c in classes] == leaves
    assert [c["ilsvrc_id"] for c in classes] == [data.ilsvrc_ids[w] for w in leaves]
    assert [c["words"] for c in classes] == [words[w] for w in leaves]
    assert shards.read_strings(shards.list_shards(prepared, "train")[0], "class_wnids") == leaves


def test_label_of_every_validation_image(ds, prepared):
    data, train, val, _ = ds
    leaves = sorted(train)
    _, labels, ids, names = read_split(prepared, "val")
    assert names == data.val_names  # file order
    assert labels == [leaves.index(w) for w, _ in val]
    assert ids == [data.ilsvrc_ids[w] for w, _ in val]


def test_train_labels_and_order(ds, prepared):
    _, train, _, _ = ds
    leaves = sorted(train)
    _, labels, ids, names = read_split(prepared, "train")
    expected = {name: leaves.index(w) for w, files in train.items() for name, _ in files}
    assert sorted(names) == sorted(expected)
    assert labels == [expected[n] for n in names]
    assert names != sorted(names)  # shuffled, not grouped by class
    manifest = shards.read_manifest(prepared)
    assert manifest["seed"] == 0 and "seed" in manifest["train_order"]


def test_the_seed_sets_the_training_order(ds, tmp_path):
    run(ds[0].root, tmp_path / "a", seed=1, limit_per_class=3)
    run(ds[0].root, tmp_path / "b", seed=2, limit_per_class=3)
    names_a = read_split(tmp_path / "a", "train")[3]
    names_b = read_split(tmp_path / "b", "train")[3]
    assert sorted(names_a) == sorted(names_b) and names_a != names_b
    assert read_split(tmp_path / "a", "val")[3] == read_split(tmp_path / "b", "val")[3]


# ------------------------------------------------------------------------------ pixels

def reference(data: bytes) -> np.ndarray:
    """A direct resize and crop: shorter side to 256 (rounded half up), centre 256x256."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    size = (256, int(h * s + 0.5)) if w <= h else (int(w * s + 0.5), 256)
    a = np.asarray(resize_two_pass(im, size))
    top, left = (a.shape[0] - 256) // 2, (a.shape[1] - 256) // 2
    return a[top:top + 256, left:left + 256]


def test_pixels_match_a_direct_resize_and_crop(ds, prepared):
    data, train, val, _ = ds
    originals = {name: b for files in train.values() for name, b in files}
    originals.update(zip(data.val_names, (b for _, b in val)))
    checked = 0
    for split in ("train", "val"):
        imgs, _, _, names = read_split(prepared, split)
        for img, name in zip(imgs, names):
            assert_as_resize_then_crop(img, reference(originals[name]), name)
            checked += 1
    assert checked == len(originals)  # the CMYK, greyscale, palette and PNG files too


def test_awkward_files_come_out_rgb(ds, prepared):
    _, train, _, _ = ds
    modes = {name: Image.open(io.BytesIO(b)).mode for files in train.values() for name, b in files}
    assert {"CMYK", "L", "P", "RGB"} <= set(modes.values())
    assert any(Image.open(io.BytesIO(b)).format == "PNG" for files in train.values()
               for name, b in files if name.endswith(".JPEG"))
    imgs, _, _, names = read_split(prepared, "train")
    grey = imgs[names.index(next(n for n, m in modes.items() if m == "L"))]
    assert grey.shape == (256, 256, 3)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


# ------------------------------------------------------------------------------- stats

def test_mean_and_pca_against_numpy(prepared):
    imgs, labels, _, _ = read_split(prepared, "train")
    st = shards.read_stats(prepared)
    np.testing.assert_allclose(st.mean, imgs.mean(axis=0, dtype=np.float64), rtol=1e-12)
    pixels = imgs.reshape(-1, 3).astype(np.float64)
    cov = np.cov(pixels.T, bias=True)
    np.testing.assert_allclose(st.covariance, cov, rtol=1e-9)
    evals = np.linalg.eigvalsh(cov)[::-1]
    np.testing.assert_allclose(st.eigenvalues, evals, rtol=1e-9)
    assert np.all(np.diff(st.eigenvalues) <= 0)
    np.testing.assert_allclose(cov @ st.eigenvectors, st.eigenvectors * st.eigenvalues, rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(st.eigenvectors.T @ st.eigenvectors, np.eye(3), atol=1e-12)
    assert st.pixels == len(imgs) * 256 * 256 and st.images == len(imgs)
    assert st.counts["train"].tolist() == np.bincount(labels, minlength=4).tolist()
    manifest = shards.read_manifest(prepared)
    for split, info in manifest["splits"].items():
        assert st.counts[split].tolist() == info["per_class"]
        assert sum(s["count"] for s in info["shards"]) == info["count"] == st.counts[split].sum()


def test_the_exact_sums_do_not_overflow_their_small_integer_types():
    """Moments sums pixels in uint16 over blocks of 257 images (257 * 255 = 65,535) and products
    in uint32 over an image's 65,536 pixels: all-white images, the largest values, over more than
    one block, give the exact sums (a block of 258 would wrap around)."""
    white = np.full((300, 256, 256, 3), 255, np.uint8)
    m = Moments()
    m.add(white)
    assert m.images == 300 and (m.pixel_sum == 300 * 255).all()
    assert (m.outer == 300 * 256 * 256 * 255 * 255).all()


# ------------------------------------------------------------------------------ resume

def test_resume_after_an_interruption_gives_identical_files(ds, prepared, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    append = ShardWriter.append

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # in the third shard, after its images are written
            append(self, *a, **kw)
            raise KeyboardInterrupt
        return append(self, *a, **kw)

    monkeypatch.setattr(ShardWriter, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(ds[0].root, out)
    monkeypatch.setattr(ShardWriter, "append", append)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.list_shards(out, "train")}
    assert len(finished) == 2 and not (out / shards.MANIFEST).exists()
    # What a killed process leaves behind: a half-written shard under its temporary name.
    (out / ".train-00002.h5.partial").write_bytes(b"\x89HDF half written")

    assert run(ds[0].root, out).complete
    assert file_hashes(out) == file_hashes(prepared)
    for p in shards.list_shards(out, "train")[:2]:  # kept, not rewritten
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == finished[p.name]
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial"))


def test_a_finished_preparation_run_again_says_there_is_nothing_to_build(ds, prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    stream = io.StringIO()
    opts = prepare.Options(ds[0].root, out, workers=1, shard_size=SHARD)
    summary = prepare.prepare(opts, stream)
    assert summary.complete and summary.built == 0
    assert "nothing to build: every shard was already there" in stream.getvalue()
    assert "images decoded" not in stream.getvalue() and file_hashes(out) == file_hashes(prepared)


def test_a_finished_preparation_is_not_replaced_by_one_of_other_settings(ds, prepared, tmp_path):
    """prepare into a finished preparation with another seed, shard size or class subset stops in
    one line naming the difference, before touching a file; the same settings keep it (above)."""
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    before = file_hashes(out)
    for kw, words in (({"seed": 3}, "--seed 0 there, 3 now"), ({"shard_size": SHARD + 1}, f"--shard-size {SHARD} there"),
                      ({"classes": 2}, "all classes there, 2 of")):
        with pytest.raises(UserError, match="holds a finished preparation made with other settings") as e:
            run(ds[0].root, out, **kw)
        assert words in str(e.value) and "delete" in str(e.value), str(e.value)
        assert file_hashes(out) == before and (out / shards.MANIFEST).is_file()


def test_a_damaged_finished_shard_is_rewritten(ds, prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    victim = out / "train-00001.h5"
    meta = shards.read_meta(victim)
    with open(victim, "r+b") as f:
        f.seek(meta.images_offset + 1000)
        byte = f.read(1)
        f.seek(meta.images_offset + 1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert verify(out)  # the damage is seen
    assert run(ds[0].root, out).complete
    assert file_hashes(out) == file_hashes(prepared)


def test_two_workers_write_the_same_bytes(ds, prepared, tmp_path):
    assert run(ds[0].root, tmp_path / "out", workers=2).complete
    assert file_hashes(tmp_path / "out") == file_hashes(prepared)


def test_each_shard_built_is_synced_then_dropped_from_the_page_cache(ds, prepared, tmp_path, monkeypatch):
    """The parent makes each built shard durable, then drops its pages (files.fsync(uncache=True)):
    shards are written once and read much later, and the next ones are written into the pages
    freed (README, "Preparing ImageNet")."""
    synced = []
    real = files.fsync
    monkeypatch.setattr(files, "fsync", lambda path, uncache=False: synced.append((Path(path).name, uncache))
                        or real(path, uncache))
    assert run(ds[0].root, tmp_path / "out").complete
    built = {p.name for p in (tmp_path / "out").glob("*.h5") if p.name != "stats.h5"}
    assert built and {name for name, uncache in synced if uncache} == built
    assert file_hashes(tmp_path / "out") == file_hashes(prepared)


def test_fsync_uncache_advises_the_kernel_to_drop_that_files_pages(tmp_path, monkeypatch):
    advice = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, what: advice.append(
        (os.fstat(fd).st_ino, offset, length, what)), raising=False)
    monkeypatch.setattr(os, "POSIX_FADV_DONTNEED", getattr(os, "POSIX_FADV_DONTNEED", 4), raising=False)
    path = tmp_path / "shard.h5"
    path.write_bytes(b"x" * 10000)
    files.fsync(path)
    assert advice == []
    files.fsync(path, uncache=True)
    assert advice == [(path.stat().st_ino, 0, 0, os.POSIX_FADV_DONTNEED)]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EBADF, errno.ENOTSUP])
def test_a_file_system_that_cannot_flush_directories_still_prepares(tmp_path, monkeypatch, code):
    """Some file systems answer fsync on a directory with EINVAL (SMB/CIFS mounts on Linux before
    4.17, some Ceph volumes), or EBADF or ENOTSUP: prepare goes on there (the renames are as
    durable as that file system makes them), while the same error flushing a file still stops it,
    as does any other error on a directory."""
    real = os.fsync
    refused = []

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            refused.append(fd)
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rng = np.random.default_rng(5)
    train, val, words = fake.awkward_dataset(rng, n_classes=2, per_class=3, val_per_class=1)
    src = tmp_path / "src"
    fake.write_ilsvrc2012(src, train, val, words)
    summary = prepare.prepare(prepare.Options(src, tmp_path / "out", workers=1, quiet=True, allow_rejects=True))
    assert summary.complete and refused  # it did meet the refusal, on the output directory
    assert (tmp_path / "out" / "manifest.json").is_file()

    with pytest.raises(OSError) as e:  # a file that cannot be flushed is an error
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
        files.fsync(tmp_path / "out" / "manifest.json")
    assert e.value.errno == code
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, os.strerror(errno.EIO))))
    with pytest.raises(OSError) as e:  # and so is another error on a directory: the disk failed
        files.fsync(tmp_path / "out")
    assert e.value.errno == errno.EIO


def test_the_page_cache_advice_failing_is_not_an_error(tmp_path, monkeypatch):
    def refuse(fd, offset, length, what):
        raise OSError(errno.ESPIPE, os.strerror(errno.ESPIPE))

    monkeypatch.setattr(os, "posix_fadvise", refuse, raising=False)
    monkeypatch.setattr(os, "POSIX_FADV_DONTNEED", getattr(os, "POSIX_FADV_DONTNEED", 4), raising=False)
    path = tmp_path / "shard.h5"
    path.write_bytes(b"x" * 100)
    files.fsync(path, uncache=True)
    assert path.read_bytes() == b"x" * 100


# ----------------------------------------------------------------------------- rejects

def test_rejects_are_listed_and_fail_the_run_unless_allowed(tmp_path, capsys):
    rng = np.random.default_rng(3)
    train, val, words = fake.awkward_dataset(rng, n_classes=2, per_class=2, val_per_class=1)
    w = sorted(train)[1]
    train[w].append((f"{w}_cut.JPEG", fake.odd_images(rng)["truncated"]))
    val[0] = (val[0][0], b"this is not an image")
    fake.write_ilsvrc2012(tmp_path / "src", train, val, words)
    args = ["prepare", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "1"]

    assert cli.main(args) == 1
    assert not (tmp_path / "out" / shards.MANIFEST).exists()
    lines = (tmp_path / "out" / "rejects.tsv").read_text().splitlines()
    assert lines[0] == "split\tname\treason"
    assert any(line.startswith(f"train\t{w}_cut.JPEG\t") and "truncated" in line for line in lines)
    assert any(line.startswith("val\tILSVRC2012_val_00000001.JPEG\t") and "identify" in line for line in lines)
    assert "2 image(s) rejected" in capsys.readouterr().out

    assert cli.main(args + ["--allow-rejects"]) == 0
    out = tmp_path / "out"
    manifest = shards.read_manifest(out)
    assert manifest["rejects"] == {"count": 2, "file": "rejects.tsv", "per_split": {"train": 1, "val": 1}}
    n_train = sum(len(v) for v in train.values())
    assert manifest["splits"]["train"]["count"] == n_train - 1
    assert manifest["splits"]["val"]["count"] == len(val) - 1
    st = shards.read_stats(out)
    for split in ("train", "val"):
        assert st.counts[split].tolist() == np.bincount(read_split(out, split)[1], minlength=2).tolist()
    assert verify(out) == []


# ---------------------------------------------------------------------- traversal guard

def _member(name, data=b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _crafted_tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, f in members:
            tar.addfile(info, f)
    return buf.getvalue()


def test_no_archive_member_is_written_outside_the_output(tmp_path):
    rng = np.random.default_rng(5)
    train, val, words = fake.awkward_dataset(rng, n_classes=2, per_class=2, val_per_class=1)
    data = fake.write_ilsvrc2012(tmp_path / "src", train, val, words)
    jpeg = val[0][1]
    escape = tmp_path / "escaped"
    evil = [
        _member("../../escaped/up.JPEG", jpeg),
        _member(str(escape / "absolute.JPEG"), jpeg),
        _member("ILSVRC2012_val_00000099.JPEG", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        _member("ILSVRC2012_val_00000098.JPEG", kind=tarfile.LNKTYPE, link="../../etc/passwd"),
    ]
    w = sorted(train)[0]
    inner = _crafted_tar([_member(n, b) for n, b in train[w]] + [_member("../../../escaped/t.JPEG", jpeg)])
    outer = _crafted_tar([_member(f"{w}.tar", inner), _member(f"{sorted(train)[1]}.tar",
                          fake.tar_bytes(train[sorted(train)[1]])), _member("../escaped.tar", inner)])
    data.files["train"].write_bytes(outer)
    val_members = [_member(n, b) for n, (_, b) in zip(data.val_names, val)]
    data.files["val"].write_bytes(_crafted_tar(val_members[:1] + evil + val_members[1:]))

    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "a" / "b" / "out"
    summary = run(tmp_path / "src", out, allow_rejects=True)
    assert summary.complete
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents or p in out.parents for p in created)
    assert not escape.exists() and not (tmp_path.parent / "escaped").exists()
    rejects = (out / "rejects.tsv").read_text()
    for name in ("../../escaped/up.JPEG", str(escape / "absolute.JPEG"), "ILSVRC2012_val_00000099.JPEG",
                 "ILSVRC2012_val_00000098.JPEG", "../../../escaped/t.JPEG", "../escaped.tar"):
        assert name in rejects
    assert summary.counts == {"train": sum(len(v) for v in train.values()), "val": len(val)}


# ------------------------------------------------------------------------ clear errors

def _error_line(capsys, args) -> str:
    assert cli.main(["prepare", "--workers", "1", "--quiet"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def small_src(tmp_path):
    rng = np.random.default_rng(9)
    train, val, words = fake.awkward_dataset(rng, n_classes=2, per_class=1, val_per_class=1)
    return fake.write_ilsvrc2012(tmp_path / "src", train, val, words), val


def test_error_missing_archive(small_src, tmp_path, capsys):
    small_src[0].files["val"].unlink()
    err = _error_line(capsys, ["--source", str(small_src[0].root), "--out", str(tmp_path / "o")])
    assert "missing archive" in err and "ILSVRC2012_img_val.tar" in err


def test_error_unknown_layout(tmp_path, capsys):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "photos.zip").write_bytes(b"PK")
    err = _error_line(capsys, ["--source", str(tmp_path / "odd"), "--out", str(tmp_path / "o")])
    assert "no known layout" in err


def test_error_ground_truth_count(small_src, tmp_path, capsys):
    data, val = small_src
    data.files["val"].write_bytes(fake.tar_bytes(list(zip(data.val_names, (b for _, b in val)))[:-1]))
    err = _error_line(capsys, ["--source", str(data.root), "--out", str(tmp_path / "o")])
    assert f"lists {len(val)} labels" in err and f"holds {len(val) - 1} val images" in err


def test_error_no_room_on_disk(small_src, tmp_path, capsys, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")  # shutil.disk_usage's; prepare reads .free
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 12, 10 ** 12 - 1000, 1000))
    err = _error_line(capsys, ["--source", str(small_src[0].root), "--out", str(tmp_path / "o")])
    assert "not enough disk space" in err
    assert not shards.list_shards(tmp_path / "o", "train")


def test_error_no_source_says_what_to_download(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ILSVRC_ROOT", raising=False)
    monkeypatch.setattr(prepare, "_config_data", lambda path: __import__("repro.config").config.DataConfig())
    err = _error_line(capsys, ["--out", str(tmp_path / "o")])
    assert "ILSVRC2012_img_train.tar" in err and "ILSVRC_ROOT" in err and "./run.sh demo" in err


def test_source_from_the_environment(small_src, tmp_path, monkeypatch):
    monkeypatch.setenv("ILSVRC_ROOT", str(small_src[0].root))
    monkeypatch.setattr(prepare, "_config_data", lambda path: __import__("repro.config").config.DataConfig())
    assert cli.main(["prepare", "--out", str(tmp_path / "o"), "--workers", "1", "--quiet"]) == 0
    assert shards.read_manifest(tmp_path / "o")["splits"]["val"]["count"] == len(small_src[1])


# ------------------------------------------------------------------------------ verify

def test_verify_reports_every_mismatch(prepared, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    assert cli.main(["prepare", "--verify", str(out), "--workers", "1", "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out
    with h5py.File(out / "val-00000.h5", "r+") as f:
        f["labels"][0] = (f["labels"][0] + 1) % 4
    st = shards.read_stats(out)
    st.mean[0, 0, 0] += 1
    shards.write_stats(out, st)
    (out / "train-00001.h5").unlink()
    problems = verify(out)
    text = "\n".join(problems)
    assert "val-00000.h5: SHA-256" in text
    assert "val: images per class" in text
    assert "train-00001.h5: listed in manifest.json but missing" in text
    assert "mean image differs" in text
    assert cli.main(["prepare", "--verify", str(out), "--workers", "1", "--quiet"]) == 1
    assert capsys.readouterr().out.count("\n") == len(problems) + 1


def test_limit_per_class(ds, tmp_path):
    s = run(ds[0].root, tmp_path / "o", limit_per_class=1)
    manifest = shards.read_manifest(tmp_path / "o")
    assert manifest["splits"]["train"]["per_class"] == [1, 1, 1, 1]
    assert manifest["splits"]["val"]["per_class"] == [1, 1, 1, 1]
    assert s.counts == {"train": 4, "val": 4}


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        prepare.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--source", "--out", "--year", "--workers", "--limit-per-class", "--allow-rejects", "--verify"):
        assert flag in text
    assert f"the {prepare.default_workers()} cores this process may use" in text
