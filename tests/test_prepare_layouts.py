"""`./run.sh prepare` from the Kaggle download (data_prep/layouts.py) and subsets of the classes
(--classes, --classes-file: data_prep/subsets.py), against the official archives written from the
same images (data_prep/fake_ilsvrc.py): the same shards, byte for byte where the devkit is beside
the data, and one-line errors for what is missing or inconsistent."""
import hashlib
import os
import re
import shutil

import numpy as np
import pytest

from data_prep import fake_ilsvrc as fake
from data_prep import prepare, shards, subsets
from repro.errors import UserError
from tests.prepared import (
    dataset, error_line, manifest_except, prepared_archives, run, same_contents, shard_hashes,
    split_contents,
)


@pytest.fixture(scope="module")
def data():
    return dataset(31, per_class=2)


@pytest.fixture(scope="module")
def from_archives(data, tmp_path_factory):
    return prepared_archives(data, tmp_path_factory.mktemp("arch"))


# ------------------------------------------------------------------------------- Kaggle

def test_kaggle_with_the_devkit_gives_the_archives_shards(data, from_archives, tmp_path):
    train, val, words = data
    fake.write_kaggle(tmp_path / "src", train, val, words, test=[val[0][1]], devkit=True)
    assert run(tmp_path / "src", tmp_path / "out").complete
    for split in ("train", "val"):
        assert shard_hashes(tmp_path / "out", split) == shard_hashes(from_archives, split), split
    assert manifest_except(tmp_path / "out", "sources", "layout") == manifest_except(from_archives, "sources", "layout")
    manifest = shards.read_manifest(tmp_path / "out")
    assert manifest["layout"] == "kaggle" and manifest["subset"] is None
    assert {s["name"] for s in manifest["sources"]} == {"train", "val", "LOC_synset_mapping.txt", "LOC_val_solution.csv",
                                                          "ILSVRC2012_devkit_t12.tar.gz"}


def test_kaggle_without_a_devkit_has_the_words_of_the_mapping_and_no_ids(data, from_archives, tmp_path):
    train, val, words = data
    fake.write_kaggle(tmp_path / "src", train, val, words)
    assert run(tmp_path / "src", tmp_path / "out").complete
    manifest = shards.read_manifest(tmp_path / "out")
    assert [c["wnid"] for c in manifest["classes"]] == sorted(train)
    assert [c["words"] for c in manifest["classes"]] == [words[w] for w in sorted(train)]
    assert all(c["ilsvrc_id"] == -1 for c in manifest["classes"])
    for split in ("train", "val"):
        assert same_contents(tmp_path / "out", from_archives, split), split
        assert set(split_contents(tmp_path / "out", split)[1]) == {-1}


@pytest.mark.parametrize("given", ["ILSVRC", "ILSVRC/Data/CLS-LOC"])
def test_kaggle_source_may_be_the_ilsvrc_or_cls_loc_folder(data, from_archives, tmp_path, given):
    train, val, words = data
    fake.write_kaggle(tmp_path / "src", train, val, words)
    assert run(tmp_path / "src" / given, tmp_path / "out").complete
    assert same_contents(tmp_path / "out", from_archives, "val")


def test_kaggle_mapping_file_inside_the_ilsvrc_folder(data, from_archives, tmp_path):
    train, val, words = data
    d = fake.write_kaggle(tmp_path / "src", train, val, words)
    d.files["mapping"].rename(tmp_path / "src" / "ILSVRC" / "LOC_synset_mapping.txt")
    assert run(tmp_path / "src", tmp_path / "out").complete
    assert same_contents(tmp_path / "out", from_archives, "train")


def test_kaggle_val_rearranged_into_class_folders(data, from_archives, tmp_path):
    train, val, words = data
    d = fake.write_kaggle(tmp_path / "src", train, val, words)
    for name, (wnid, _) in zip(d.val_names, val):
        (d.files["val"] / wnid).mkdir(exist_ok=True)
        (d.files["val"] / name).rename(d.files["val"] / wnid / name)
    assert run(tmp_path / "src", tmp_path / "out").complete
    assert same_contents(tmp_path / "out", from_archives, "val")
    wrong = d.files["val"] / val[0][0] / d.val_names[0]
    other = next(w for w in sorted(train) if w != val[0][0])
    wrong.rename(d.files["val"] / other / d.val_names[0])
    message = f"lies in the folder {other} but LOC_val_solution.csv says {val[0][0]}"
    with pytest.raises(UserError, match=re.escape(message)):
        run(tmp_path / "src", tmp_path / "out2")


def test_kaggle_file_names_that_are_not_utf8_are_rejected_as_in_a_tree(data, tmp_path):
    """The same file, the same reject on every route that reads class folders: listed in
    rejects.tsv, so that the run stops unless rejects are allowed (not left out silently)."""
    train, val, words = data
    d = fake.write_kaggle(tmp_path / "src", train, val, words)
    w = sorted(train)[1]
    odd = os.fsencode(d.files["train"] / w) + b"/" + w.encode() + b"_\xff.JPEG"
    with open(odd, "wb") as f:
        f.write(train[w][0][1])
    assert not run(tmp_path / "src", tmp_path / "o").complete
    s = run(tmp_path / "src", tmp_path / "o2", allow_rejects=True)
    assert s.complete and s.rejects == 1
    assert f"train\t{w}/{w}_\\xff.JPEG\tfile name is not valid UTF-8" in (tmp_path / "o2" / "rejects.tsv").read_text()


def _drop_csv_row(d, image_id):
    lines = d.files["val_solution"].read_text().splitlines(keepends=True)
    d.files["val_solution"].write_text("".join(x for x in lines if not x.startswith(image_id + ",")))


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.files["val_solution"].unlink(), "lacks LOC_val_solution.csv"),
    (lambda d: d.files["mapping"].unlink(), "lacks LOC_synset_mapping.txt"),
    (lambda d: shutil.rmtree(d.files["train"]), "lacks ILSVRC/Data/CLS-LOC/train/"),
    (lambda d: _drop_csv_row(d, d.val_names[2][:-5]), "ILSVRC2012_val_00000003.JPEG has no row in LOC_val_solution.csv"),
    (lambda d: (d.files["val"] / d.val_names[1]).unlink(),
     "lists 1 image\\(s\\) that .* lacks \\(e.g. ILSVRC2012_val_00000002.JPEG\\)"),
    (lambda d: d.files["val_solution"].write_text(d.files["val_solution"].read_text() + "ILSVRC2012_val_00000099,n12345678 1 2 3 4\n"),
     "'n12345678' is not a class of LOC_synset_mapping.txt"),
    (lambda d: d.files["val_solution"].write_text("id,labels\n"), "expected the header ImageId,PredictionString"),
    (lambda d: d.files["mapping"].write_text(d.files["mapping"].read_text() + "tench n01440764\n"),
     "LOC_synset_mapping.txt line 4: expected '<wnid> <words>'"),
    (lambda d: (d.files["train"] / "n12345678").mkdir(), "'n12345678' is not among the 3 classes"),
    (lambda d: [p.unlink() for p in sorted(d.files["train"].iterdir())[0].iterdir()],
     "1 of 3 classes have no training image: n\\d+ \\(not in train/\\);.*: check .*ILSVRC/Data/CLS-LOC/train$"),
])
def test_kaggle_errors_are_one_line(data, tmp_path, capsys, damage, message):
    train, val, words = data
    d = fake.write_kaggle(tmp_path / "src", train, val, words)
    damage(d)
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", tmp_path / "out"])
    assert re.search(message, err), err


def test_kaggle_output_may_not_lie_among_its_images(data, tmp_path, capsys):
    train, val, words = data
    d = fake.write_kaggle(tmp_path / "src", train, val, words)
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", d.files["val"] / "shards"])
    assert "lies inside a folder of images of the source" in err
    assert not (d.files["val"] / "shards").exists()


def test_kaggle_is_ilsvrc_2012_only(data, tmp_path, capsys):
    train, val, words = data
    fake.write_kaggle(tmp_path / "src", train, val, words)
    err = error_line(capsys, ["--source", tmp_path / "src", "--out", tmp_path / "out", "--year", "2010"])
    assert "Kaggle download" in err and "--year 2010 needs the official files" in err


# ------------------------------------------------------------------------------ subsets

ALL = fake.random_classes(1000)  # the devkit's 1000 classes; images in a few of them only
# every class a subset below selects has images (a class left without a training image is an
# error: tests/test_prepare_faults.py), the others mostly not, to keep the fixture small
WITH_IMAGES = [ALL[i] for i in (*range(12), 400, 999)]


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    """A 1000-class devkit with two training and one validation image in 14 classes (enough to tell
    the kept classes from the others; 1000 classes with images would only make the test slow)."""
    rng = np.random.default_rng(8)
    train = {w: [(f"{w}_{j + 1}.JPEG", fake.encode(fake.synthetic_image(rng, 90, 70))) for j in range(2)]
             for w in WITH_IMAGES}
    val = [(w, fake.encode(fake.synthetic_image(rng, 70, 90))) for w in reversed(WITH_IMAGES)]
    root = tmp_path_factory.mktemp("thousand")
    d = fake.write_ilsvrc2012(root / "src", train, val, classes=ALL)
    return d, train, val


def test_first_n_classes_of_the_1000_class_devkit(thousand, tmp_path):
    d, train, val = thousand
    s = run(d.root, tmp_path / "out", classes=10)
    manifest = shards.read_manifest(tmp_path / "out")
    first = ALL[:10]
    assert [c["wnid"] for c in manifest["classes"]] == first
    assert [c["index"] for c in manifest["classes"]] == list(range(10))
    assert [c["ilsvrc_id"] for c in manifest["classes"]] == [d.ilsvrc_ids[w] for w in first]
    assert manifest["subset"] == {"classes": 10, "of": 1000, "selected_by": "--classes 10",
                                  "wnids_sha256": hashlib.sha256("".join(w + "\n" for w in first).encode()).hexdigest()}
    kept = [w for w in WITH_IMAGES if w in first]
    assert s.counts == {"train": 2 * len(kept), "val": len(kept)}
    for split in ("train", "val"):
        labels, ids, names, _ = split_contents(tmp_path / "out", split)
        assert {first[label] for label in labels} == set(kept)
        assert ids == [d.ilsvrc_ids[first[label]] for label in labels]
        assert all(n.startswith(first[label]) for label, n in zip(labels, names) if split == "train")
        assert manifest["splits"][split]["per_class"] == [(2 if split == "train" else 1) * (w in kept) for w in first]
    assert shards.read_strings(shards.list_shards(tmp_path / "out", "val")[0], "class_wnids") == first


def test_a_subset_holds_what_those_classes_alone_would(thousand, tmp_path):
    d, train, val = thousand
    chosen = [ALL[2], ALL[400], ALL[999]]
    listing = tmp_path / "chosen.txt"
    listing.write_text(f"# three classes\n{chosen[2]} the last one\n\n{chosen[0]}\n  {chosen[1]}\t words\n")
    run(d.root, tmp_path / "out", classes_file=listing)
    alone = fake.write_ilsvrc2012(tmp_path / "alone", {w: train[w] for w in chosen}, [v for v in val if v[0] in chosen])
    run(alone.root, tmp_path / "out_alone")
    assert same_contents(tmp_path / "out", tmp_path / "out_alone", "train")
    (labels, _, names, imgs), (labels_alone, _, _, imgs_alone) = (split_contents(tmp_path / o, "val") for o in ("out", "out_alone"))
    assert labels == labels_alone and np.array_equal(imgs, imgs_alone)  # (the alone set numbers its files 1, 2, 3)
    assert names == [n for n, (w, _) in zip(d.val_names, val) if w in chosen]
    manifest = shards.read_manifest(tmp_path / "out")
    assert [c["wnid"] for c in manifest["classes"]] == chosen  # sorted, whatever the file's order
    assert manifest["subset"]["selected_by"] == "--classes-file chosen.txt"
    assert manifest["subset"]["classes"] == 3 and manifest["subset"]["of"] == 1000


def test_a_subset_with_a_limit_per_class(thousand, tmp_path):
    d, _, _ = thousand
    s = run(d.root, tmp_path / "out", classes=3, limit_per_class=1)
    manifest = shards.read_manifest(tmp_path / "out")
    assert s.counts == {"train": 3, "val": 3}  # one image of each of the first three classes
    assert manifest["splits"]["train"]["per_class"] == [1, 1, 1] and manifest["limit_per_class"] == 1


def test_every_class_selected_is_not_a_subset(data, from_archives, tmp_path):
    train, val, words = data
    fake.write_ilsvrc2012(tmp_path / "src", train, val, words)
    run(tmp_path / "src", tmp_path / "out", classes=3)
    assert shards.read_manifest(tmp_path / "out")["subset"] is None
    assert shard_hashes(tmp_path / "out", "train") == shard_hashes(from_archives, "train")


def test_a_subset_into_a_directory_of_the_full_data_rewrites_it_only_if_unfinished(data, from_archives, tmp_path):
    """A finished full preparation is not replaced by a subset (one line, nothing touched: see
    test_prepare.py::test_a_finished_preparation_is_not_replaced_by_one_of_other_settings); an
    unfinished one is continued as the subset, equal to a subset prepared afresh."""
    train, val, words = data
    src = tmp_path / "src"
    fake.write_ilsvrc2012(src, train, val, words)
    shutil.copytree(from_archives, tmp_path / "out")
    with pytest.raises(UserError, match="all classes there, 2 of"):
        run(src, tmp_path / "out", classes=2)
    (tmp_path / "out" / shards.MANIFEST).unlink()  # as a preparation interrupted before its end
    assert run(src, tmp_path / "out", classes=2).complete
    run(src, tmp_path / "fresh", classes=2)
    for split in ("train", "val"):
        assert shard_hashes(tmp_path / "out", split) == shard_hashes(tmp_path / "fresh", split)
    assert shards.read_manifest(tmp_path / "out") == shards.read_manifest(tmp_path / "fresh")


def test_a_kaggle_subset_equals_the_archives_subset(thousand, tmp_path):
    d, train, val = thousand
    fake.write_kaggle(tmp_path / "kaggle", train, val, classes=ALL, devkit=True)
    run(d.root, tmp_path / "a", classes=10)
    run(tmp_path / "kaggle", tmp_path / "k", classes=10)
    for split in ("train", "val"):
        assert shard_hashes(tmp_path / "k", split) == shard_hashes(tmp_path / "a", split)
    assert manifest_except(tmp_path / "k", "sources", "layout") == manifest_except(tmp_path / "a", "sources", "layout")


@pytest.mark.parametrize("args, message", [
    (["--classes", "1001"], "--classes 1001: .* has 1000 classes"),
    (["--classes", "-1"], "--classes must be 0"),
    (["--classes", "3", "--classes-file", "x.txt"], "not allowed with argument"),
    (["--classes-file", "{unknown}"], "n99999999 not among the 1000 classes"),
    (["--classes-file", "{not_wnid}"], "line 2: 'tench' is not a WordNet id"),
    (["--classes-file", "{twice}"], "n90000001 is listed twice"),
    (["--classes-file", "{missing}"], "--classes-file .*missing.txt: No such file"),
])
def test_subset_errors_are_one_line(thousand, tmp_path, capsys, args, message):
    d, _, _ = thousand
    lists = {"unknown": "n90000001\nn99999999\n", "not_wnid": "n90000001\ntench\n", "twice": "n90000001\nn90000001\n"}
    for name, text in lists.items():
        (tmp_path / f"{name}.txt").write_text(text)
    args = [a.format(**{k: tmp_path / f"{k}.txt" for k in list(lists) + ["missing"]}) for a in args]
    err = error_line(capsys, ["--source", d.root, "--out", tmp_path / "out"] + args)
    assert re.search(message, err), err


def test_help_says_how_classes_are_chosen(capsys):
    with pytest.raises(SystemExit):
        prepare.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--classes N" in text and "--classes-file FILE" in text
    assert "sorted WordNet ids" in text and "re-indexed 0..N-1" in text
    assert "Kaggle" in text and "Hugging Face" in text and "pip install -e '.[hf]'" in text


def test_a_reject_outside_the_subset_does_not_stop_it():
    assert subsets._reject_class("n90000001.tar/x.JPEG") == "n90000001"
    assert subsets._reject_class("n90000001_12.JPEG") == "n90000001"
    assert subsets._reject_class("ILSVRC2012_val_00000001.JPEG") is None
    assert subsets._reject_class("n900000012.tar") is None
