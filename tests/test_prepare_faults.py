"""`./run.sh prepare` against damaged, missing and hostile input and failing machines: each case
ends right, or as one line saying what to do (status 2; status 1 only for "images rejected, see
rejects.tsv"). docs/faults.md lists each case with the test that shows it.

Every source here is generated (data_prep.fake_ilsvrc): a few classes of small JPEGs, small shards.
"""
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import fake_ilsvrc as fake
from data_prep import images, prepare, shards, sources, verify, workers
from data_prep.shards import ShardWriter
from repro import cli, files
from repro.errors import UserError

SHARD = 4


def run(src, out, **kw) -> prepare.Summary:
    opts = prepare.Options(Path(src), Path(out), workers=kw.pop("workers", 1), shard_size=kw.pop("shard_size", SHARD),
                           quiet=True, **kw)
    return prepare.prepare(opts)


def visible(out) -> dict:
    """SHA-256 of every visible file of a prepared directory (shards, stats, manifest, rejects)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(out).iterdir()) if not p.name.startswith(".")}


def stamps(out) -> dict:
    """Each shard file's inode and mtime: unchanged when a run keeps the shard."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for split in shards.SPLITS
            for p in shards.list_shards(out, split)}


def one_line_error(capsys, args: list[str]) -> str:
    """Run the CLI, expecting exit status 2 and exactly one line on stderr; returns that line.
    (--shard-size applies to building only: --verify refuses it.)"""
    building = [] if "--verify" in args else ["--shard-size", str(SHARD)]
    assert cli.main(["prepare", "--workers", "1", "--quiet", *building] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(31)
    train, val, _, words = fake.random_dataset(rng, 3, 4, 2, size=(80, 60))
    return train, val, words


@pytest.fixture
def src(data, tmp_path):
    """A fresh copy of the ILSVRC-2012 archives (each test may damage its own)."""
    return fake.write_ilsvrc2012(tmp_path / "src", *data)


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory):
    """The output of an undisturbed run on the intact archives, to compare with."""
    root = tmp_path_factory.mktemp("clean")
    fake.write_ilsvrc2012(root / "src", *data)
    assert run(root / "src", root / "out").complete
    return root / "out"


def flip(path: Path, offset: int, n: int = 8) -> None:
    """Invert n bytes of a file in place (same size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        block = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in block))


def train_item(root, k: int = 5) -> sources.Item:
    return sources.catalog(root, 2012).splits["train"][k]


# -------------------------------------------------------- 1. what a shard was built from

def test_an_archive_damaged_then_downloaded_again_is_read_again(src, clean, tmp_path):
    """The hostile review's case: damage an image inside the training archive (same size), prepare
    with --allow-rejects, put the good archive back with the damaged file's mtime, prepare again:
    the shard built from the bad bytes is rebuilt (and only it), the manifest records the good
    archive's hash, verify says OK."""
    out, archive = tmp_path / "out", src.files["train"]
    good = archive.read_bytes()
    it = train_item(src.root)
    flip(archive, it.offset + it.size // 2)
    run(src.root, out, allow_rejects=True)
    assert visible(out) != visible(clean)  # the damage reached the shards (or the test proves nothing)
    damaged = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert {s["name"]: s["sha256"] for s in shards.read_manifest(out)["sources"]}[archive.name] == damaged
    before, mtime = stamps(out), archive.stat().st_mtime_ns

    with open(archive, "r+b") as f:  # the good bytes back, in place, and the mtime set back too
        f.write(good)
    os.utime(archive, ns=(mtime, mtime))
    summary = run(src.root, out, allow_rejects=True)
    assert visible(out) == visible(clean)
    assert {s["name"]: s["sha256"] for s in shards.read_manifest(out)["sources"]}[archive.name] == \
        hashlib.sha256(good).hexdigest()
    rebuilt = {name for name, st in stamps(out).items() if before.get(name) != st}
    assert len(rebuilt) == 1 and summary.built <= SHARD  # the one shard holding that image
    assert verify.verify(out) == [] and verify.verify(out, source=src.root) == []


def test_sources_copied_elsewhere_keep_every_shard(src, clean, tmp_path):
    """New files with the same bytes (a copy, a move to another disk): every shard is checked
    against the bytes it was built from and kept; nothing is decoded again."""
    out = tmp_path / "out"
    run(src.root, out)
    before = stamps(out)
    shutil.copytree(src.root, tmp_path / "elsewhere")
    summary = run(tmp_path / "elsewhere", out)
    assert summary.complete and summary.built == 0
    assert stamps(out) == before and visible(out) == visible(clean)


@pytest.mark.slow
def test_untouched_sources_are_not_read_again_however_they_are_named(src, tmp_path, monkeypatch):
    """Identity, not path: a rerun naming the same directory by a relative path or a link checks
    no image bytes again (reading 140 GB of archives to resume would defeat resuming)."""
    run(src.root, tmp_path / "out")
    (tmp_path / "link").symlink_to(src.root)

    def no_reading(items):
        raise AssertionError("image bytes read again")

    monkeypatch.setattr(workers, "inputs_sha256", no_reading)
    monkeypatch.chdir(src.root.parent)
    for name in (Path(src.root.name), tmp_path / "link"):
        assert run(name, tmp_path / "out").built == 0


def test_an_image_edited_in_place_in_a_tree_rebuilds_its_shard(data, tmp_path):
    """An extracted tree: one file per image, each file's identity checked."""
    tree = fake.write_tree(tmp_path / "tree", *data, flat_val=True)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    run(tree.root, out)
    before = stamps(out)
    victim = sorted((tree.root / "train").rglob("*.JPEG"))[2]
    flip(victim, victim.stat().st_size // 2, 16)
    run(tree.root, out, allow_rejects=True)
    run(tree.root, fresh, allow_rejects=True)
    assert visible(out) == visible(fresh)
    changed = {name for name, st in stamps(out).items() if before[name] != st}
    assert len(changed) == 1 and changed < {p.name for p in shards.list_shards(out, "train")}


def test_a_source_changed_during_the_run_is_an_error_and_the_rerun_is_right(src, clean, tmp_path, monkeypatch):
    """An archive written to while prepare reads it (a download still running): the run stops with
    one line before the manifest; once the file is complete, the same command gives the right result."""
    out, archive = tmp_path / "out", src.files["train"]
    good = archive.read_bytes()
    it = train_item(src.root, 0)
    build, calls = prepare.run_shard, []

    def meanwhile(task, report=None):
        calls.append(task.name)
        if len(calls) == 2:
            flip(archive, it.offset + it.size // 2)  # after the first shard was read
        return build(task, report)

    monkeypatch.setattr(prepare, "run_shard", meanwhile)
    with pytest.raises(UserError, match="changed while prepare was reading"):
        run(src.root, out, allow_rejects=True)
    assert not (out / shards.MANIFEST).exists()
    monkeypatch.setattr(prepare, "run_shard", build)
    with open(archive, "r+b") as f:
        f.write(good)
    assert run(src.root, out).complete and visible(out) == visible(clean)


@pytest.mark.slow
def test_verify_checks_the_sources_only_when_given(src, tmp_path, capsys):
    out = tmp_path / "out"
    run(src.root, out)
    assert cli.main(["prepare", "--verify", str(out), "--quiet"]) == 0
    assert "sources not read" in capsys.readouterr().out
    assert cli.main(["prepare", "--verify", str(out), "--source", str(src.root), "--quiet"]) == 0
    assert f"the sources in {src.root}" in capsys.readouterr().out
    flip(src.files["val"], 2000)
    src.files["devkit"].unlink()
    assert cli.main(["prepare", "--verify", str(out), "--source", str(src.root), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "source ILSVRC2012_img_val.tar: SHA-256 differs" in text
    assert f"source ILSVRC2012_devkit_t12.tar.gz: not in {src.root}" in text


# ------------------------------------------------------------- 5. classes without images

def write_train(src, members) -> None:
    src.files["train"].write_bytes(fake.tar_bytes(members))


def class_archives(train) -> list[tuple[str, bytes]]:
    return [(f"{w}.tar", fake.tar_bytes(train[w])) for w in sorted(train)]


@pytest.mark.parametrize("damage", ["zeros", "empty tar", "empty file", "missing"])
def test_a_class_without_training_images_is_an_error_naming_it(data, src, tmp_path, capsys, damage):
    train = data[0]
    members = class_archives(train)
    w, inner = members[1]
    if damage == "zeros":
        members[1] = (w, bytes(len(inner)))
    elif damage == "empty tar":
        members[1] = (w, fake.tar_bytes([]))
    elif damage == "empty file":
        members[1] = (w, b"")
    else:
        del members[1]
    write_train(src, members)
    wnid = w[:-4]
    for allow in ([], ["--allow-rejects"]):  # never accepted: the task would not be the paper's
        err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")] + allow)
        assert f"1 of 3 classes have no training image: {wnid}" in err and "download" in err
    assert not (tmp_path / "o" / shards.MANIFEST).exists()


def test_a_class_whose_every_image_is_rejected_is_an_error(data, src, tmp_path, capsys):
    train = {w: list(v) for w, v in data[0].items()}
    w = sorted(train)[2]
    train[w] = [(name, b"not an image") for name, _ in train[w]]
    write_train(src, class_archives(train))
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o"), "--allow-rejects"])
    assert f"no training image left, every one was rejected: {w}" in err and "rejects.tsv" in err
    rejects = (tmp_path / "o" / "rejects.tsv").read_text()
    assert rejects.count(f"train\t{w}_") == len(train[w])
    assert not (tmp_path / "o" / shards.MANIFEST).exists()


def test_a_class_archive_present_twice_is_read_once_and_listed(data, src, clean, tmp_path, capsys):
    members = class_archives(data[0])
    members.append(members[0])
    write_train(src, members)
    args = ["prepare", "--source", str(src.root), "--out", str(tmp_path / "o"), "--workers", "1", "--quiet",
            "--shard-size", str(SHARD)]
    assert cli.main(args) == 1
    lines = (tmp_path / "o" / "rejects.tsv").read_text().splitlines()
    assert lines[1:] == [f"train\t{members[0][0]}\ta second class archive for {members[0][0][:-4]} "
                         f"(the first, '{members[0][0]}', is read); not read"]
    assert cli.main(args + ["--allow-rejects"]) == 0
    manifest, want = shards.read_manifest(tmp_path / "o"), shards.read_manifest(clean)
    assert manifest["splits"]["train"]["per_class"] == want["splits"]["train"]["per_class"]  # not doubled
    for split in ("train", "val"):
        assert [visible(tmp_path / "o")[p.name] for p in shards.list_shards(tmp_path / "o", split)] == \
            [visible(clean)[p.name] for p in shards.list_shards(clean, split)]


def test_a_second_file_of_the_same_name_in_a_class_archive_is_not_read(data, src):
    train = data[0]
    w = sorted(train)[0]
    members = class_archives(train)
    members[0] = (f"{w}.tar", fake.tar_bytes(train[w] + [train[w][0]]))
    write_train(src, members)
    cat = sources.catalog(src.root, 2012)
    assert [(r.name, r.reason) for r in cat.rejects] == [
        (f"{w}.tar/{train[w][0][0]}", "a second file with this name in its class archive; not read")]
    assert sum(it.label == 0 for it in cat.splits["train"]) == len(train[w])


def test_verify_fails_on_a_class_with_no_training_image(clean):
    manifest = shards.read_manifest(clean)
    assert not verify.check_promises(manifest)
    manifest["splits"]["train"]["per_class"][1] = 0
    problems = verify.check_promises(manifest)
    assert problems == [f"train: 1 classes have no training image: {manifest['classes'][1]['wnid']}"]


# ------------------------------------------------------------------ 7. deeper than 8 bits

def grey_picture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return fake.synthetic_image(rng, 90, 70)[..., 1]  # uint8 [70, 90], a smooth picture with texture


def encoded(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def deep_files(g: np.ndarray) -> dict[str, bytes]:
    """The same picture as 16-bit PNG (mode I;16), big-endian 16-bit TIFF (I;16B), int32 TIFF
    holding 16-bit and 8-bit values (I), and float TIFF on the 0..1 and 0..255 scales (F)."""
    g16 = g.astype(np.uint16) * 257
    return {
        "png16": encoded(Image.fromarray(g16), "PNG"),
        "tiff16be": encoded(Image.frombytes("I;16B", (g.shape[1], g.shape[0]), g16.astype(">u2").tobytes()), "TIFF"),
        "int32_16bit": encoded(Image.fromarray(g16.astype(np.int32)), "TIFF"),
        "int32_8bit": encoded(Image.fromarray(g.astype(np.int32)), "TIFF"),
        "float_0_1": encoded(Image.fromarray(g.astype(np.float32) / 255), "TIFF"),
        "float_0_255": encoded(Image.fromarray(g.astype(np.float32)), "TIFF"),
    }


@pytest.mark.parametrize("kind", ["png16", "tiff16be", "int32_16bit", "int32_8bit", "float_0_1", "float_0_255"])
def test_deep_greyscale_images_come_out_as_the_8bit_picture(kind):
    g = grey_picture()
    data = deep_files(g)[kind]
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I;16B", "I", "F")
    want = images.load(encoded(Image.fromarray(g, "L"), "PNG"))
    got = images.load(data)
    assert np.array_equal(got, want)
    assert (got == 255).mean() < 0.05  # not the white picture convert("RGB") gives


def raw_png(pixels: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes none with colour): big-endian samples."""
    import struct
    import zlib

    h, w = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16bit_colour_and_grey_with_alpha_pngs_come_out_as_their_8bit_picture():
    """Multi-channel 16-bit files: Pillow reduces them to 8 bits itself (the module docstring says so)."""
    rgb = fake.synthetic_image(np.random.default_rng(2), 90, 70)
    rgb48 = raw_png(rgb.astype(np.uint16) * 257, colour_type=2)
    assert np.array_equal(images.load(rgb48), images.load(encoded(Image.fromarray(rgb), "PNG")))
    grey = rgb[..., 0].astype(np.uint16) * 257
    la = raw_png(np.stack([grey, np.full_like(grey, 65535)], -1), colour_type=4)
    assert np.array_equal(images.load(la), images.load(encoded(Image.fromarray(rgb[..., 0], "L"), "PNG")))


def test_to_8bit_follows_the_stated_rule():
    def l8(a, mode=None):
        return np.asarray(images.to_8bit(Image.fromarray(a, mode)))
    assert l8(np.array([[0, 257, 32896, 65535]], np.uint16)).tolist() == [[0, 1, 128, 255]]
    assert l8(np.array([[-5, 0, 255]], np.int32)).tolist() == [[0, 0, 255]]  # fits 8 bits: as is
    assert l8(np.array([[0, 256, 65535]], np.int32)).tolist() == [[0, 1, 255]]  # 16 bits
    assert l8(np.array([[0, 2 ** 31 - 1]], np.int32)).tolist() == [[0, 255]]  # 31 bits
    assert l8(np.array([[np.nan, 0.5, 1.0]], np.float32)).tolist() == [[0, 128, 255]]  # 0..1
    assert l8(np.array([[-1.0, 2.0, 300.0]], np.float32)).tolist() == [[0, 2, 255]]  # 0..255, clipped


@pytest.mark.slow
def test_a_16bit_png_named_jpeg_is_prepared_and_predicted_as_its_picture(data, src, tmp_path):
    from repro.predict import prepare_image

    g = grey_picture(1)
    png16 = deep_files(g)["png16"]
    train = {w: list(v) for w, v in data[0].items()}
    w = sorted(train)[0]
    train[w].append((f"{w}_deep.JPEG", png16))
    write_train(src, class_archives(train))
    assert run(src.root, tmp_path / "o").complete
    want = images.load(encoded(Image.fromarray(g, "L"), "PNG"))
    for p in shards.list_shards(tmp_path / "o", "train"):
        names = shards.read_strings(p, "filenames")
        if f"{w}_deep.JPEG" in names:
            got = shards.map_images(shards.read_meta(p))[names.index(f"{w}_deep.JPEG")]
            assert np.array_equal(got, want)
            break
    else:
        raise AssertionError("the 16-bit image is in no shard")
    (tmp_path / "photo.JPEG").write_bytes(png16)
    assert np.array_equal(prepare_image(tmp_path / "photo.JPEG"), want)


# ---------------------------------------------------------------------- 8. one line, not a traceback

def test_out_is_an_existing_file(src, tmp_path, capsys):
    (tmp_path / "o").write_text("not a directory")
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")])
    assert "is a file, not a directory" in err
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o" / "sub")])
    assert "cannot create --out" in err


def test_out_where_nothing_may_be_written(src, tmp_path, capsys, monkeypatch):
    """The lock file is the first thing written; refused as in a read-only directory (simulated:
    the tests may run as root, who may write anywhere)."""
    def refuse(path, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(prepare, "open", refuse, raising=False)
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")])
    assert "cannot write in --out" in err and "Permission denied" in err


def test_out_in_a_read_only_directory(src, tmp_path, capsys):
    """--out in a directory this user cannot write in, or under one. Whether a mode of 0o555 stops
    this user is probed, not assumed from the uid: root, a user with CAP_DAC_OVERRIDE, or a file
    system that ignores mode bits writes there anyway, and the test is skipped."""
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        try:
            (tmp_path / "ro" / "probe").touch()
        except PermissionError:
            pass
        else:
            (tmp_path / "ro" / "probe").unlink()
            pytest.skip("this user or file system writes into read-only directories")
        err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "ro")])
        assert "cannot write in --out" in err
        err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "ro" / "sub")])
        assert "cannot create --out" in err
    finally:
        (tmp_path / "ro").chmod(0o755)


def failing_append(make_error, at_index: int = 2):
    """ShardWriter.append raising make_error() in the shard of this index (in whichever process writes it)."""
    append = ShardWriter.append

    def patched(self, *a, **kw):
        if self.index == at_index and self.split == "train":
            raise make_error()
        return append(self, *a, **kw)
    return patched


def enospc():
    return OSError(errno.ENOSPC, "No space left on device")


def hidden_enospc():
    """A disk-full error followed by another one while handling it (as h5py's close does)."""
    try:
        raise enospc()
    except OSError:
        raise OSError(errno.EIO, "Can't close file (file write failed)")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("error", [enospc, hidden_enospc], ids=["enospc", "hidden"])
def test_a_full_disk_is_one_line_and_the_rerun_finishes(src, clean, tmp_path, capsys, monkeypatch, workers, error):
    monkeypatch.setattr(ShardWriter, "append", failing_append(error))
    args = ["--source", str(src.root), "--out", str(tmp_path / "o"), "--workers", str(workers)]
    err = one_line_error(capsys, args)
    assert f"the disk holding {tmp_path / 'o'} is full" in err and "run the same command again" in err
    assert not (tmp_path / "o" / shards.MANIFEST).exists()
    journal = (tmp_path / "o" / prepare.JOURNAL).read_text().splitlines()
    kept = {name: st for name, st in stamps(tmp_path / "o").items() if any(f'"{name}"' in line for line in journal)}
    assert kept or workers == 2  # one worker: the shards before the failing one were recorded
    monkeypatch.undo()
    summary = run(src.root, tmp_path / "o", workers=workers)
    assert summary.complete and visible(tmp_path / "o") == visible(clean)
    assert all(stamps(tmp_path / "o")[name] == st for name, st in kept.items())  # finished shards kept


def test_any_write_error_on_an_almost_full_disk_is_called_full(src, tmp_path, capsys, monkeypatch):
    """An error that does not say ENOSPC (h5py's own texts, EIO) while almost nothing is free."""
    monkeypatch.setattr(ShardWriter, "append", failing_append(lambda: OSError(errno.EIO, "Can't write data")))
    usage, calls = shutil.disk_usage, []

    def nearly_full(path):
        calls.append(path)
        real = usage(path)
        return real if len(calls) == 1 else real._replace(free=1 << 20)  # room at the start, 1 MB at the error

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")])
    assert "is full (1.0 MB free; [Errno 5] Can't write data)" in err


def _die_on_three(task, report=None):
    if task == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does
    return task


@pytest.mark.slow
def test_parallel_map_reports_a_worker_that_died_instead_of_waiting_for_ever():
    with pytest.raises(workers.WorkerDied, match="died while working on task 3"):
        workers.parallel_map(_die_on_three, list(range(6)), 2)


@pytest.mark.slow
def test_a_worker_killed_during_prepare_is_one_line_and_the_rerun_finishes(src, clean, tmp_path, capsys,
                                                                           monkeypatch):
    build = workers.build_shard

    def killed(task, report=None):
        if task.name == "train-00001.h5":
            os.kill(os.getpid(), signal.SIGKILL)
        return build(task, report)

    monkeypatch.setattr(workers, "build_shard", killed)
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o"), "--workers", "2"])
    assert "a worker process died while working on train-00001.h5" in err
    monkeypatch.undo()
    assert run(src.root, tmp_path / "o", workers=2).complete and visible(tmp_path / "o") == visible(clean)


def test_a_full_disk_while_writing_the_lists_is_one_line(src, tmp_path, capsys, monkeypatch):
    def full(*a, **kw):
        raise enospc()

    monkeypatch.setattr(prepare, "_write_rejects", full)
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")])
    assert "is full" in err
    monkeypatch.undo()
    assert run(src.root, tmp_path / "o").built == 0  # every shard was finished and is kept


def non_utf8(name: str) -> str:
    """`name` with the byte 0xFF in it, as tarfile and os hand such names over."""
    return name.replace("X", b"\xff".decode("utf-8", "surrogateescape"))


def tar_with_names(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_member_names_that_are_not_utf8_are_rejected_and_listed_readably(data, src, tmp_path, capsys):
    train = data[0]
    w = sorted(train)[0]
    members = class_archives(train)
    members[0] = (f"{w}.tar", tar_with_names(train[w] + [(non_utf8(f"{w}_X.JPEG"), train[w][0][1])]))
    write_train(src, members)
    val_members = list(zip(src.val_names, (b for _, b in data[1])))
    src.files["val"].write_bytes(tar_with_names(val_members + [(non_utf8("ILSVRC2012_val_X.JPEG"), b"x")]))
    args = ["prepare", "--source", str(src.root), "--out", str(tmp_path / "o"), "--workers", "1", "--quiet"]
    assert cli.main(args) == 1
    lines = (tmp_path / "o" / "rejects.tsv").read_bytes().decode("utf-8").splitlines()  # valid UTF-8
    reason = "member name is not valid UTF-8; never read"
    assert lines[1:] == [f"train\t{w}.tar/{w}_\\xff.JPEG\t{reason}", f"val\tILSVRC2012_val_\\xff.JPEG\t{reason}"]
    assert cli.main(args + ["--allow-rejects"]) == 0
    assert shards.read_manifest(tmp_path / "o")["rejects"]["count"] == 2


def test_file_names_that_are_not_utf8_in_a_tree_are_rejected(data, tmp_path):
    tree = fake.write_tree(tmp_path / "tree", *data, flat_val=True)
    w = sorted(data[0])[1]
    odd = os.fsencode(tree.root / "train" / w) + b"/" + w.encode() + b"_\xff.JPEG"
    with open(odd, "wb") as f:
        f.write(data[0][w][0][1])
    s = run(tree.root, tmp_path / "o", allow_rejects=True)
    assert s.complete and s.rejects == 1
    assert f"train\t{w}/{w}_\\xff.JPEG\tfile name is not valid UTF-8" in (tmp_path / "o" / "rejects.tsv").read_text()


BAD_MANIFESTS = {
    "not JSON": ("{\"schema_version\": 1,", "is not valid JSON"),
    "empty object": ("{}", "'schema_version' is missing"),
    "no splits": (lambda m: m.pop("splits"), "'splits' is missing"),
    "a class without wnid": (lambda m: m["classes"][0].pop("wnid"), "'classes[0].wnid' is missing"),
    "a hash that is a number": (lambda m: m["splits"]["val"]["shards"][0].update(sha256=7),
                                "'splits.val.shards[0].sha256' is not a string"),
    "per_class too short": (lambda m: m["splits"]["train"]["per_class"].pop(), "'splits.train.per_class' is not 3"),
    "another schema": (lambda m: m.update(schema_version=99), "'schema_version' is 99, not this code's 1"),
    "a list": ("[1, 2]", "the file is not a JSON object"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_damaged_manifest_is_one_line_naming_the_key(clean, tmp_path, capsys, case):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    edit, message = BAD_MANIFESTS[case]
    if callable(edit):
        manifest = json.loads((out / shards.MANIFEST).read_text())
        edit(manifest)
        edit = json.dumps(manifest)
    (out / shards.MANIFEST).write_text(edit)
    with pytest.raises(ValueError, match=re.escape(str(out / shards.MANIFEST))) as e:
        shards.read_manifest(out)
    assert message in str(e.value)
    assert cli.main(["prepare", "--verify", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_verify_of_a_directory_without_a_manifest(tmp_path, capsys):
    err = one_line_error(capsys, ["--verify", str(tmp_path)])
    assert "manifest.json not found" in err


def test_a_shard_cut_short_while_verify_reads_it_is_reported(clean, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    victim = out / "train-00001.h5"
    read_images = shards.read_images

    def cut_first(meta, start, stop):
        if meta.path == victim and start == 0:
            os.truncate(victim, meta.images_offset + 1000)  # after its hash, header and labels were read
        return read_images(meta, start, stop)

    monkeypatch.setattr(shards, "read_images", cut_first)
    assert cli.main(["prepare", "--verify", str(out), "--workers", "1", "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "train-00001.h5: unreadable as a shard: train-00001.h5: cut short" in text
    monkeypatch.undo()
    problems = verify.verify(out)  # cut short before verify starts: size, hash, and unreadable
    assert any(p.startswith("train-00001.h5: ") and "bytes, manifest.json says" in p for p in problems)
    assert any(p.startswith("train-00001.h5: unreadable as a shard") for p in problems)


# ---------------------------------------------------------------------------------- 9. smaller

@pytest.mark.slow
def test_rejects_tsv_is_the_same_for_the_same_bad_inputs(data, src, tmp_path):
    train = {w: list(v) for w, v in data[0].items()}
    w = sorted(train)[0]
    whole = train[w][0][1]
    train[w] += [(f"{w}_text.JPEG", b"this is not an image"), (f"{w}_cut.JPEG", whole[:len(whole) // 2])]
    write_train(src, class_archives(train))
    run(src.root, tmp_path / "a", allow_rejects=True)
    _ = [io.BytesIO() for _ in range(100)]  # other objects, other addresses
    run(src.root, tmp_path / "b", allow_rejects=True, workers=2)
    a, b = (tmp_path / "a" / "rejects.tsv").read_bytes(), (tmp_path / "b" / "rejects.tsv").read_bytes()
    assert a == b and a.count(b"\n") == 3
    assert b" at 0x" not in a and b"cannot identify image file" in a


def test_reasons_never_hold_object_addresses():
    with pytest.raises(images.BadImage) as e:
        images.load(b"this is not an image")
    assert str(e.value) == "not an image file Pillow can read (cannot identify image file)"
    assert images.deterministic("cannot read <_io.BytesIO object at 0x7f3a2c1d9e50>") == "cannot read <_io.BytesIO object>"


def edit_manifest(out, fn) -> None:
    manifest = json.loads((out / shards.MANIFEST).read_text())
    fn(manifest)
    (out / shards.MANIFEST).write_text(json.dumps(manifest))


def reverse_names(shard: Path) -> None:
    import h5py

    with h5py.File(shard, "r+") as f:
        f["filenames"][...] = f["filenames"][:][::-1]


VERIFY_CASES = {
    "another year": (lambda out: edit_manifest(out, lambda m: m.update(year=2011)),
                     "manifest.json: year 2011 is not one this code prepares"),
    "another resize": (lambda out: edit_manifest(out, lambda m: m.update(resize="bilinear")),
                       "manifest.json: images resized by 'bilinear', not by this code's"),
    "another seed": (lambda out: edit_manifest(out, lambda m: m.update(seed=7)), "not in the order seed 7 gives"),
    "another training order": (lambda out: edit_manifest(out, lambda m: m.update(train_order="by name")),
                               "manifest.json: training order 'by name', not this code's"),
    "val dropped from the manifest": (lambda out: edit_manifest(out, lambda m: m["splits"].pop("val")),
                                      "manifest.json: ILSVRC-2012 has a val split, the manifest lists none"),
    "val shards deleted": (lambda out: [p.unlink() for p in shards.list_shards(out, "val")],
                           "val-00000.h5: listed in manifest.json but missing"),
    "val out of file order": (lambda out: reverse_names(out / "val-00000.h5"),
                              "val-00000.h5: its images are not in the order of their file names"),
    "a stray shard": (lambda out: shutil.copy(out / "val-00000.h5", out / "test-00000.h5"),
                      "test-00000.h5: on disk but not listed in manifest.json"),
    "shards beyond the shard size": (lambda out: edit_manifest(out, lambda m: m.update(shard_size=2)),
                                     "more than the shard size 2"),
    "rejects per split": (lambda out: edit_manifest(out, lambda m: m["rejects"].update(per_split={"val": 0})),
                          "rejects.tsv: rejects per split {}, manifest.json says {'val': 0}"),
}


@pytest.mark.parametrize("case", VERIFY_CASES)
def test_verify_checks_what_the_manifest_promises(clean, tmp_path, case):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    assert verify.verify(out) == []
    damage, message = VERIFY_CASES[case]
    damage(out)
    problems = verify.verify(out)
    assert any(message in p for p in problems), problems


def test_the_val_label_count_error_names_the_members_refused(data, src, capsys, tmp_path):
    val = list(zip(src.val_names, (b for _, b in data[1])))
    link = tarfile.TarInfo("ILSVRC2012_val_00000099.JPEG")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, b in val[:-1] + [("README.txt", b"hello")]:
            info = tarfile.TarInfo(name)
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))
        tar.addfile(link)
    src.files["val"].write_bytes(buf.getvalue())
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")])
    assert f"lists {len(val)} labels but ILSVRC2012_img_val.tar holds {len(val) - 1} val images" in err
    assert "2 member(s) were not usable: " in err
    assert "'README.txt' (not a val image name" in err
    assert "'ILSVRC2012_val_00000099.JPEG' (not a regular file (symbolic link" in err


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height greyscale pixels and that holds almost nothing."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_not_decoded():
    with pytest.raises(images.BadImage, match="^too large: Image size \\(900000000 pixels\\) exceeds limit"):
        images.load(png_header_claiming(30000, 30000))


def test_out_inside_a_split_folder_of_a_tree_is_refused(data, tmp_path, capsys):
    tree = fake.write_tree(tmp_path / "tree", *data)
    err = one_line_error(capsys, ["--source", str(tree.root), "--out", str(tree.root / "train" / "shards")])
    assert "lies inside a folder of images of the source" in err


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_prepares_and_says_it_could_not_lock(src, tmp_path, capsys, monkeypatch,
                                                                        code):
    """Lustre mounted without its flock option answers flock with ENOSYS, NFS without its lock
    service with ENOLCK: prepare goes on, saying once that it runs without the guard, instead of
    reporting another prepare that does not exist. A lock held by another process still stops it
    (the test below)."""
    import fcntl

    def flock(f, how):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    with open(tmp_path / "f", "w") as f:
        assert files.try_lock(f) == os.strerror(code)
    assert cli.main(["prepare", "--workers", "1", "--quiet", "--shard-size", str(SHARD), "--source", str(src.root),
                     "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err  # even with --quiet
    assert err == (f"prepare: cannot lock {tmp_path / 'o' / prepare.LOCK} ({os.strerror(code)}: this file system "
                   f"does not support locks); going on without the guard against a second prepare writing to "
                   f"{tmp_path / 'o'} at the same time\n")
    assert (tmp_path / "o" / "manifest.json").is_file()


def test_try_lock_tells_a_held_lock_from_a_free_one(tmp_path, monkeypatch):
    import fcntl

    with open(tmp_path / "f", "w") as first, open(tmp_path / "f", "w") as second:
        assert files.try_lock(first) == "taken"
        assert files.try_lock(second) == "busy"  # two opens: two holders, as two processes would be
        first.close()
        assert files.try_lock(second) == "taken"

        def failing(f, how):  # an error that says nothing about locks is not taken for "no locks here"
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(fcntl, "flock", failing)
        with pytest.raises(OSError) as e:
            files.try_lock(second)
        assert e.value.errno == errno.EIO


def test_a_second_prepare_on_the_same_output_is_refused(src, tmp_path, capsys):
    import fcntl

    (tmp_path / "o").mkdir()
    with open(tmp_path / "o" / prepare.LOCK, "w") as held:  # as a prepare still running would hold it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")])
    assert "another prepare is writing to" in err
    assert not shards.list_shards(tmp_path / "o", "train")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd (Linux)")
def test_a_tree_source_prepares_within_a_low_open_file_limit(tmp_path):
    """An extracted tree (or Kaggle's layout) has a file per image, and a shard of 1,024 images
    held all of them open, past a common limit of 1,024 open files. Here: 240 files in one shard,
    in a process allowed 100 more open files than it starts with. Every image is kept."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    train, val, _, words = fake.random_dataset(rng, 4, 60, 2, size=(80, 60))
    tree = fake.write_tree(tmp_path / "tree", train, val, words)
    code = f"""
import os, resource
from data_prep import prepare
open_now = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
s = prepare.prepare(prepare.Options({str(tree.root)!r}, {str(tmp_path / "out")!r}, workers=1, shard_size=240,
                                    quiet=True))
print(s.complete, s.counts["train"], s.rejects)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "240", "0"]


def test_running_out_of_open_files_is_one_line_not_a_rejected_image(src, tmp_path, capsys, monkeypatch):
    """EMFILE opening a source file is the process's limit, not the image's fault: one line naming
    the limit, and no image recorded as rejected."""
    real = os.open

    def no_more(path, flags, *args, **kwargs):
        if str(path).startswith(str(src.root)):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(workers.os, "open", no_more)
    err = one_line_error(capsys, ["--source", str(src.root), "--out", str(tmp_path / "o")])
    assert "too many open files" in err and "ulimit -n" in err and "finished shards are kept" in err
    assert not (tmp_path / "o" / prepare.REJECTS).exists()
