"""`./run.sh prepare` from Hugging Face's ILSVRC/imagenet-1k Parquet files (data_prep/hf_parquet.py),
against the official archives written from the same images (data_prep/fake_ilsvrc.py): the same
shards byte for byte with the devkit beside the data, the staged JPEG bytes (reused on resume,
removed at the end), the source forms a download takes, and one-line errors."""
import collections
import io
import os
import re
import shutil
import sys

import numpy as np

import pytest

pa = pytest.importorskip("pyarrow", reason="Hugging Face's Parquet files need pyarrow (in the test and hf extras)")

from data_prep import fake_ilsvrc as fake  # noqa: E402
from data_prep import hf_parquet, prepare, shards  # noqa: E402
from data_prep.shards import ShardWriter  # noqa: E402
from repro.errors import UserError  # noqa: E402
from tests.prepared import (  # noqa: E402
    dataset, error_line, manifest_except, prepared_archives, run, same_contents, shard_hashes,
    split_contents,
)

SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def data():
    return dataset(41, per_class=3)


@pytest.fixture(scope="module")
def from_archives(data, tmp_path_factory):
    return prepared_archives(data, tmp_path_factory.mktemp("arch"))


def test_parquet_with_the_devkit_gives_the_archives_shards(data, from_archives, tmp_path):
    train, val, words = data
    d = fake.write_hf_parquet(tmp_path / "src", train, val, words, test=[val[0][1]], devkit=True)
    assert len(d.parquet["train"]) == 3 and len(d.parquet["validation"]) == 2
    assert run(tmp_path / "src", tmp_path / "out").complete
    for split in SPLITS:
        assert shard_hashes(tmp_path / "out", split) == shard_hashes(from_archives, split), split
    assert manifest_except(tmp_path / "out", "sources", "layout") == manifest_except(from_archives, "sources", "layout")
    manifest = shards.read_manifest(tmp_path / "out")
    assert manifest["layout"] == "hf-parquet"
    assert {s["name"] for s in manifest["sources"]} == {p.name for p in d.parquet["train"] + d.parquet["validation"]} | {
        "classes.py", "ILSVRC2012_devkit_t12.tar.gz"}  # the test split is not read
    assert not (tmp_path / "out" / hf_parquet.STAGING).exists()  # removed once the shards are complete


def test_the_hubs_conversion_with_plain_names_and_no_class_list(data, from_archives, tmp_path):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words, layout="default", suffix_names=False,
                          classes_py=False, files=(2, 1), rows_per_group=2)
    assert run(tmp_path / "src", tmp_path / "out").complete
    manifest = shards.read_manifest(tmp_path / "out")
    assert [c["wnid"] for c in manifest["classes"]] == sorted(train)  # from the training file names
    assert [(c["words"], c["ilsvrc_id"]) for c in manifest["classes"]] == [("", -1)] * 3  # nothing says more
    for split in SPLITS:
        assert same_contents(tmp_path / "out", from_archives, split), split
        assert set(split_contents(tmp_path / "out", split)[1]) == {-1}


def test_words_from_classes_py(data, tmp_path):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words)
    assert run(tmp_path / "src", tmp_path / "out").complete
    manifest = shards.read_manifest(tmp_path / "out")
    assert [c["words"] for c in manifest["classes"]] == [words[w] for w in sorted(train)]
    assert shards.read_strings(shards.list_shards(tmp_path / "out", "train")[0], "class_words") == \
        [words[w] for w in sorted(train)]


def test_classes_py_is_read_not_run(tmp_path):
    (tmp_path / "classes.py").write_text('import os\nos.system("touch ran")\nfrom collections import OrderedDict\n'
                                         'IMAGENET2012_CLASSES = OrderedDict({"n00000001": "a \\"quoted\\" word",\n'
                                         '    "n00000002": "b, c"})\n')
    assert hf_parquet.read_classes_py(tmp_path / "classes.py") == [("n00000001", 'a "quoted" word'), ("n00000002", "b, c")]
    assert not (tmp_path / "ran").exists()


def hf_cache(src, tmp_path):
    """What huggingface-cli download leaves in its cache: snapshots/<revision>/... linking to blobs/."""
    cache = tmp_path / "datasets--ILSVRC--imagenet-1k"
    snap = cache / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    (cache / "blobs").mkdir(parents=True)
    for k, p in enumerate(sorted(q for q in src.rglob("*") if q.is_file())):
        blob = cache / "blobs" / f"{k:064x}"
        shutil.copy(p, blob)
        link = snap / p.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    return cache


@pytest.mark.parametrize("form", ["data folder", "download cache"])
def test_other_forms_of_the_download(data, from_archives, tmp_path, form):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words, devkit=True)
    source = tmp_path / "src" / "data" if form == "data folder" else hf_cache(tmp_path / "src", tmp_path)
    assert run(source, tmp_path / "out").complete
    for split in SPLITS:
        assert same_contents(tmp_path / "out", from_archives, split), split
    if form == "download cache":  # the devkit beside data/ is found there too
        assert shard_hashes(tmp_path / "out", "train") == shard_hashes(from_archives, "train")


def test_two_snapshots_in_the_cache_are_a_question(data, tmp_path, capsys):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words)
    cache = hf_cache(tmp_path / "src", tmp_path)
    (cache / "snapshots" / "fedcba").mkdir()
    err = error_line(capsys, ["--source", cache, "--out", tmp_path / "out"])
    assert "holds 2 revisions" in err and "snapshots/<revision>" in err


def test_resume_reuses_the_staged_bytes_and_the_finished_shards(data, from_archives, tmp_path, monkeypatch):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words, devkit=True)
    out = tmp_path / "out"
    append, calls = ShardWriter.append, {"n": 0}

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return append(self, *a, **kw)

    monkeypatch.setattr(ShardWriter, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "src", out)
    monkeypatch.setattr(ShardWriter, "append", append)
    staged = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / hf_parquet.STAGING).iterdir()}
    finished = {p.name: p.stat().st_mtime_ns for p in shards.list_shards(out, "train")}
    assert len(finished) == 2 and len(staged) == 2 * 5  # a .bytes and a .json per Parquet file

    stream = io.StringIO()
    summary = prepare.prepare(prepare.Options(tmp_path / "src", out, workers=1, shard_size=4), stream=stream)
    assert summary.complete
    assert "already staged" in stream.getvalue() and "removed the staged JPEG bytes" in stream.getvalue()
    for split in SPLITS:
        assert shard_hashes(out, split) == shard_hashes(from_archives, split)
    assert {p.name: p.stat().st_mtime_ns for p in shards.list_shards(out, "train")[:2]} == finished


def test_a_changed_parquet_file_is_staged_again(data, tmp_path, monkeypatch):
    train, val, words = data
    d = fake.write_hf_parquet(tmp_path / "src", train, val, words)
    cat = prepare.layouts.catalog(tmp_path / "src")
    hf_parquet.stage(cat, tmp_path / "out")
    staged = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / hf_parquet.STAGING).glob("*.bytes")}
    victim = d.parquet["train"][1]
    victim.write_bytes(victim.read_bytes())  # same bytes, a new modification time
    quiet = d.parquet["train"][0]
    st = quiet.stat()
    quiet.write_bytes(quiet.read_bytes())
    os.utime(quiet, ns=(st.st_atime_ns, st.st_mtime_ns))  # rewritten, its modification time set back
    cat = prepare.layouts.catalog(tmp_path / "src")
    hf_parquet.stage(cat, tmp_path / "out")
    again = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / hf_parquet.STAGING).glob("*.bytes")}
    changed = {name for name in staged if staged[name] != again[name]}
    assert changed == {f"train--{victim.name}.bytes", f"train--{quiet.name}.bytes"}


def test_progress_while_indexing_and_staging(data, tmp_path):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words)
    stream = io.StringIO()
    prepare.prepare(prepare.Options(tmp_path / "src", tmp_path / "out", workers=1, shard_size=4), stream=stream)
    text = stream.getvalue()
    n = sum(map(len, train.values())) + len(val)
    assert re.search(r"index: 5 files", text) and re.search(rf"stage: {n}/{n} img", text), text
    assert f"copying the JPEG bytes of {n} images out of 5 Parquet files" in text


def test_staging_copies_the_rows_asked_for_across_row_groups_and_batches(tmp_path):
    rows = [(bytes([k]) * (k + 1), f"n00000001_{k}.JPEG", 0) for k in range(70)]
    path = fake.write_parquet(tmp_path / "x.parquet", fake.hf_table(rows), rows_per_group=50)  # batches of 32 inside
    wanted = [0, 31, 32, 33, 49, 50, 69]
    task = hf_parquet.StageTask(str(path), str(tmp_path / "train--x.parquet.bytes"), wanted)
    got_rows, offsets, sizes, pack = hf_parquet.stage_file(task)
    data = open(pack, "rb").read()
    assert got_rows == wanted
    assert [data[o:o + n] for o, n in zip(offsets, sizes)] == [rows[k][0] for k in wanted]
    assert len(data) == sum(k + 1 for k in wanted)


def test_undecodable_images_are_listed_as_rejects(data, tmp_path, capsys):
    train, val, words = data
    train = {w: list(v) for w, v in train.items()}
    w = sorted(train)[0]
    train[w].append((f"{w}_99.JPEG", fake.odd_images(np.random.default_rng(1))["truncated"]))
    val = [(val[0][0], b"not an image")] + list(val[1:])
    fake.write_hf_parquet(tmp_path / "src", train, val, words)
    s = run(tmp_path / "src", tmp_path / "out")
    assert not s.complete and s.rejects == 2
    rejects = (tmp_path / "out" / "rejects.tsv").read_text()
    assert f"train\t{w}_99.JPEG\t" in rejects and "val\tILSVRC2012_val_00000001.JPEG\t" in rejects
    assert run(tmp_path / "src", tmp_path / "out", allow_rejects=True).complete


def rewrite(path, edit, rows_per_group=3):
    """Rewrite one Parquet file with edit(rows) applied to its (bytes, path, label) rows."""
    t = pa.parquet.read_table(path)
    rows = [(r["image"]["bytes"], r["image"]["path"], r["label"]) for r in t.to_pylist()]
    fake.write_parquet(path, fake.hf_table(edit(rows)), rows_per_group)


def first_train_label(rows, label):
    return [(rows[0][0], rows[0][1], label)] + rows[1:]


@pytest.mark.parametrize("damage, message", [
    (lambda d: fake.write_parquet(d.parquet["train"][0], pa.table({"img": [b"x"], "label": [0]}), 1),
     r"train-00000-of-00003.parquet has columns img \(binary\), label \(int64\); expected image"),
    (lambda d: fake.write_parquet(d.parquet["train"][0], fake.hf_table([(b"x", None, 0)], path_column=False), 1),
     "image has no path, the original file names"),
    (lambda d: rewrite(d.parquet["train"][0], lambda rows: [(rows[0][0], None, rows[0][2])] + rows[1:]),
     "train-00000-of-00003.parquet: row 0 has no image.path"),
    (lambda d: rewrite(d.parquet["validation"][0], lambda rows: first_train_label(rows, 7)),
     r"row 0 has label 7, outside 0..2"),
    (lambda d: rewrite(d.parquet["validation"][1], lambda rows: [(b, p, (lab + 1) % 3) for b, p, lab in rows]),
     "has label .* but its file name says .*: the labels do not follow the file names"),
    (lambda d: rewrite(d.parquet["train"][1], lambda rows: [(b, p, (lab + 1) % 3) for b, p, lab in rows]),
     "label . is n9000000. in .* but n9000000. in .*: the labels do not follow the file names"),
    (lambda d: d.parquet["train"][2].unlink(), "lacks train-00002-of-00003.parquet: an incomplete download"),
    (lambda d: d.parquet["train"][2].write_bytes(b"PAR1 cut short"), "is not a readable Parquet file"),
    (lambda d: [p.unlink() for p in d.parquet["validation"]], "has no validation-\\*.parquet files"),
])
def test_parquet_errors_are_one_line(data, tmp_path, capsys, damage, message):
    train, val, words = data
    d = fake.write_hf_parquet(tmp_path / "src", train, val, words)
    damage(d)
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", tmp_path / "out"])
    assert re.search(message, err), err


def test_labels_not_in_sorted_wnid_order_are_refused(data, tmp_path, capsys):
    train, val, words = data
    d = fake.write_hf_parquet(tmp_path / "src", train, val, words, classes_py=False)
    swap = {0: 1, 1: 0, 2: 2}  # the first two classes' labels exchanged everywhere
    for p in d.parquet["train"] + d.parquet["validation"]:
        rewrite(p, lambda rows: [(b, path, swap[lab]) for b, path, lab in rows])
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", tmp_path / "out"])
    assert "labels 0 and 1 are n90000001 and n90000000: not in sorted-WordNet-id order" in err


def test_a_label_without_training_images_needs_classes_py(data, tmp_path, capsys):
    train, val, words = data
    gone = sorted(train)[1]
    fake.write_hf_parquet(tmp_path / "src", {w: v for w, v in train.items() if w != gone}, val, words, classes_py=False)
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", tmp_path / "out"])
    assert "label 1 has no training image, so its WordNet id is unknown: put the dataset's classes.py beside" in err


def test_download_forms_that_cannot_be_used(tmp_path, capsys):
    (tmp_path / "old" / "data").mkdir(parents=True)
    (tmp_path / "old" / "data" / "train_images_0.tar.gz").write_bytes(b"")
    err = error_line(capsys, ["--source", tmp_path / "old", "--out", tmp_path / "out"])
    assert "older revision" in err and "not supported" in err
    (tmp_path / "partial" / "default" / "partial-train").mkdir(parents=True)
    err = error_line(capsys, ["--source", tmp_path / "partial", "--out", tmp_path / "out"])
    assert "partial conversion" in err


def test_without_pyarrow_the_error_says_how_to_install_it(data, tmp_path, capsys, monkeypatch):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", tmp_path / "out"])
    assert "needs pyarrow" in err and "pip install -e '.[hf]'" in err


def test_parquet_is_ilsvrc_2012_only(data, tmp_path, capsys):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words)
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", tmp_path / "out", "--year", "2010"])
    assert "Hugging Face's imagenet-1k" in err and "--year 2010 needs the official files" in err


@pytest.mark.slow
def test_a_subset_stages_only_its_images_and_equals_the_archives_subset(tmp_path):
    rng = np.random.default_rng(5)
    classes = fake.random_classes(1000)
    have = [classes[i] for i in (0, 1, 2, 600)]  # every class of the subset has images (else an error)
    train = {w: [(f"{w}_{j}.JPEG", fake.encode(fake.synthetic_image(rng, 64, 48))) for j in range(3)] for w in have}
    val = [(w, fake.encode(fake.synthetic_image(rng, 48, 64))) for w in have]
    arch = fake.write_ilsvrc2012(tmp_path / "arch", train, val, classes=classes)
    fake.write_hf_parquet(tmp_path / "hf", train, val, classes=classes, devkit=True)
    run(arch.root, tmp_path / "a", classes=3)
    stream = io.StringIO()
    prepare.prepare(prepare.Options(tmp_path / "hf", tmp_path / "h", workers=1, shard_size=4, classes=3), stream=stream)
    assert "copying the JPEG bytes of 12 images" in stream.getvalue()  # the first 3 classes, 3 + 1 each, not class 600's
    for split in SPLITS:
        assert shard_hashes(tmp_path / "h", split) == shard_hashes(tmp_path / "a", split)
    assert manifest_except(tmp_path / "h", "sources", "layout") == manifest_except(tmp_path / "a", "sources", "layout")


def test_the_catalogue_before_staging_names_rows_not_bytes(data, tmp_path, monkeypatch):
    train, val, words = data
    d = fake.write_hf_parquet(tmp_path / "src", train, val, words)
    cat = prepare.layouts.catalog(tmp_path / "src")
    it = cat.splits["train"][0]
    assert it.size == -1 and it.path in {str(p) for p in d.parquet["train"]}
    usage = collections.namedtuple("usage", "total used free")  # shutil.disk_usage's; stage reads .free
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 12, 10 ** 12 - 10, 10))
    with pytest.raises(UserError, match="not enough disk space .* to stage the images' JPEG bytes"):
        hf_parquet.stage(cat, tmp_path / "out")


@pytest.mark.slow
def test_two_workers_index_stage_and_write_the_same_bytes(data, from_archives, tmp_path):
    train, val, words = data
    fake.write_hf_parquet(tmp_path / "src", train, val, words, devkit=True)
    hf = hf_parquet.find(tmp_path / "src")
    pooled = hf_parquet.catalog(hf, run=prepare._pool_runner(2, min_tasks=1))
    assert pooled.splits == hf_parquet.catalog(hf).splits and pooled.rejects == []
    assert run(tmp_path / "src", tmp_path / "out", workers=2).complete
    for split in SPLITS:
        assert shard_hashes(tmp_path / "out", split) == shard_hashes(from_archives, split)
