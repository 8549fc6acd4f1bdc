"""The report: the paper's tables beside runs (repro/tables.py, repro/report.py) and its figures
(repro/figures.py: learning curves, Figure 3, Figure 4). Tiny scale (tests/tiny_data.py)."""
import functools
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from repro import checkpoint, figures, report, tables
from tests.tiny_data import small_config as _small_config


@pytest.fixture(scope="module")
def tiny_report(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert report.main([str(tiny_run), "--out", str(out), "--name", "tiny", "--workers", "0",
                        "--figure4-images", "3", "--neighbours", "4"]) == 0
    return out / "tiny"


def test_report_end_to_end_writes_every_figure(tiny_report, tiny_run):
    md = (tiny_report / "report.md").read_text()
    rep = json.loads((tiny_report / "report.json").read_text())
    figs = rep["figures"]
    files = [figs["curves"], figs["figure4"]["file"], *(f["file"] for f in figs["figure3"].values())]
    assert len(files) == 3
    for name in files:
        with Image.open(tiny_report / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
            assert np.asarray(im.convert("L")).std() > 1  # something is drawn
        assert f"]({name})" in md
    # The numbers are this run's evaluation, nothing else.
    ten = json.loads((tiny_run / "eval" / "val-ten.json").read_text())
    run = next(r for r in rep["runs"] if r["name"] == "tiny")
    assert run["results"]["ten"]["top1"] == pytest.approx(100 * ten["top1_error"])
    assert f"{100 * ten['top1_error']:.2f} / {100 * ten['top5_error']:.2f}" in md
    # Figure 3's numbers are the colour specificity of the checkpoint's conv1 kernels.
    params = [torch.load(f, weights_only=True)["params"] for f in sorted(checkpoint.latest(tiny_run).glob("tower*.pt"))]
    kernels = [p[f"towers.{i}.conv1.weight"].numpy() for i, p in enumerate(params)]
    assert figs["figure3"]["tiny"]["colour_specificity"] == pytest.approx(
        [figures.colour_specificity(k).mean() for k in kernels])
    # Figure 4: nearest neighbours over the whole (tiny) training split, sorted by distance.
    f4 = figs["figure4"]
    assert f4["searched"] == f4["train_images"] == 40 and len(f4["images"]) == 3
    for shown in f4["images"]:
        d = [n["distance"] for n in shown["neighbours"]]
        assert len(d) == 4 and d == sorted(d)
    # Provenance.
    run = rep["runs"][0]
    assert run["git"]["commit"] and run["hardware"]["cpu"] and run["started"]
    assert run["fidelity"].startswith("paper text (except 3 points")  # SIGNAL's init of conv3-5
    assert "## Provenance" in md and run["git"]["commit"][:12] in md


def _md_rows(md: str, title: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the markdown table under `## {title}`."""
    block = md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def test_report_shows_no_number_for_a_row_no_run_produced(tiny_report):
    md = (tiny_report / "report.md").read_text()
    rep = json.loads((tiny_report / "report.json").read_text())
    published = tables.load_published()
    ran = 0
    for t in published["tables"]:
        header, rows = _md_rows(md, t["title"])
        ours = [i for i, h in enumerate(header) if h.startswith(("this project", "Δ"))]
        assert len(rows) == len(t["rows"]) and len(ours) == 4
        for row, pub in zip(rows, t["rows"]):
            assert row[0] == pub["model"]
            for i, (split, key, _) in enumerate(t["columns"], 1):  # the paper's numbers, as published
                assert row[i] == str((pub["paper"].get(split) or {}).get(key) or "—")
            if "run here: tiny" in row[-1]:
                ran += 1
            assert all(row[i] == "—" for i in ours), row
            assert "not run here" in row[-1] or "paper only" in row[-1]
    assert ran == 0  # the tiny run has 4 classes, not ILSVRC's 1000: no row of Tables 1-2 is its
    header, rows = _md_rows(md, "Runs")
    assert rows[0][0].startswith("tiny") and re.fullmatch(r"\d+\.\d\d / \d+\.\d\d", rows[0][-1])
    header, rows = _md_rows(md, "Known reproductions")
    assert all(row[3] == "—" for row in rows)
    header, rows = _md_rows(md, "Ablations")
    assert len(rows) == len(published["ablations"])
    for row in rows:
        assert row[3] == row[4] == row[5] == "—" and "not run here" in row[-1]
    for t in rep["tables"]:
        for ln in t["lines"]:
            assert (ln["run"] is None) == (not ln["ours"]) == (ln["delta_paper"] is None)
    assert all(ln["run"] is None and ln["ours"] is None and ln["delta"] is None for ln in rep["ablations"])
    assert "tiny †" in md  # a 6-step, small-width run is marked as not comparable with the paper


def records(split: str, year: int, top1: float, epoch: int = 90) -> dict:
    """Eval records as repro.evaluate writes them (the fields the tables read)."""
    return {v: {"split": split, "top1_error": top1 + (0.01 if v == "centre" else 0), "top5_error": top1 / 2,
                "images": 50000, "data": {"year": year}, "checkpoint": {"step": 1, "epoch": epoch}}
            for v in ("ten", "centre")}


def test_runs_fill_the_rows_their_configs_reproduce():
    published = tables.load_published()
    small_config = functools.partial(_small_config, "model.num_classes=1000")  # ILSVRC's classes
    paper = tables.describe("full", small_config(), records("val", 2012, 0.40), published)
    code = tables.describe("c145", small_config(config="alexnet_2gpu_code145.toml"), records("val", 2012, 0.41), published)
    no_lrn = tables.describe("nolrn", small_config(config="ablation_no_lrn.toml"), records("val", 2012, 0.42), published)
    half = tables.describe("half", small_config(config="alexnet_1gpu_half.toml"), records("test", 2010, 0.39), published)
    y2010 = tables.describe("t1", small_config(config="alexnet_2gpu_2010.toml"), records("test", 2010, 0.375), published)
    assert (paper.variant, code.variant, no_lrn.changes, half.changes) == ("paper text", "code 145", ["no_lrn"], ["one_tower_half"])
    runs = [paper, code, no_lrn, half, y2010]
    t1, t2 = (tables.table_lines(t, runs) for t in published["tables"])
    assert [(ln["row"], ln["run"]) for ln in t1] == [("sparse_coding", None), ("sift_fvs", None), ("cnn", "t1")]
    assert [(ln["row"], ln["run"]) for ln in t2 if ln["run"]] == [("one_cnn", "full"), ("one_cnn", "c145")]
    assert t1[2]["delta_paper"] == pytest.approx({"top1": 0.0, "top5": 18.75 - 17.0})
    assert t1[2]["delta_code145"]["centre"]["top1"] == pytest.approx(38.5 - 39.02)
    ab = {ln["ablation"]: ln for ln in tables.ablation_lines(published, runs)}
    assert ab["no_lrn"]["baseline"] == "full" and ab["no_lrn"]["delta"] == pytest.approx({"top1": 2.0, "top5": 1.0})
    assert ab["one_tower_half"]["baseline"] == "t1"  # the full-model run on the same data (2010)
    assert ab["one_tower_half"]["delta"] == pytest.approx({"top1": 1.5, "top5": 0.75})
    for key in ("nonoverlap_pool", "no_pca", "no_cross_links"):
        assert ab[key]["run"] is None and ab[key]["ours"] is None and ab[key]["delta"] is None
    # A run with only centre-crop results shows only those.
    centre_only = tables.describe("c", small_config(), {"centre": records("val", 2012, 0.4)["centre"]}, published)
    line = next(ln for ln in tables.table_lines(published["tables"][1], [centre_only]) if ln["run"])
    assert set(line["ours"]) == {"centre"} and line["delta_paper"] is None
    # A run on other data (the demo's classes) fills no row of the paper's tables.
    demo = tables.describe("demo", _small_config(), records("val", 2012, 0.3), published)
    assert not any(ln["run"] for t in published["tables"] for ln in tables.table_lines(t, [demo]))
    assert not any(ln["run"] for ln in tables.reproduction_lines(published, [demo]))


def test_colour_specificity_of_known_kernels():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(20, 1, 11, 11))
    grey = np.repeat(pattern, 3, axis=1)  # the same pattern in R, G and B
    chromatic = np.concatenate([pattern, -pattern, np.zeros_like(pattern)], axis=1)  # R - G
    np.testing.assert_allclose(figures.colour_specificity(grey), 0, atol=1e-12)
    np.testing.assert_allclose(figures.colour_specificity(chromatic), 1, atol=1e-12)
    mixed = grey + 0.5 * chromatic  # |grey|^2 = 3, |chroma|^2 = 0.5 per unit pattern -> 0.5 / 3.5
    np.testing.assert_allclose(figures.colour_specificity(mixed), 0.5 / 3.5, rtol=0.05)
    assert figures.colour_specificity(rng.normal(size=(2000, 3, 11, 11))).mean() == pytest.approx(2 / 3, abs=0.01)


def test_a_subset_run_is_shown_as_a_subset_never_beside_the_papers_numbers():
    """Data prepared with `prepare --classes N` records its selection (manifest "subset"); a run
    on it is a check of the recipe, listed with its note, and fills no row of Tables 1 and 2."""
    published = tables.load_published()
    subset = {"classes": 100, "of": 1000, "selected_by": "--classes 100", "wnids_sha256": "x"}
    recs = records("val", 2012, 0.40)
    for rec in recs.values():
        rec["data"]["subset"] = subset
    for classes in (100, 1000):  # even a (hand-made) 1000-class selection is not ILSVRC itself
        run = tables.describe("sub", _small_config(f"model.num_classes={classes}"), recs, published)
        assert not run.ilsvrc and not run.comparable
        assert "subset: 100 of ILSVRC's 1000 classes (--classes 100): never set beside the paper's numbers" in run.notes
        assert all(ln["run"] is None for t in published["tables"] for ln in tables.table_lines(t, [run]))
    full = tables.describe("full", _small_config("model.num_classes=1000"), records("val", 2012, 0.40), published)
    assert full.ilsvrc and any(ln["run"] == "full" for t in published["tables"] for ln in tables.table_lines(t, [full]))


@pytest.mark.slow
def test_an_ensemble_is_reported_only_while_its_record_stands_for_its_runs(tiny_run, tmp_path, capsys):
    """`eval A --ensemble B` records the ensemble in A; the report shows it beside A, also once A
    and B have moved together. Once B is gone (or A or B trained on), the record no longer stands
    for the runs: left out, and said."""
    import shutil

    from repro import cli, rundir

    a, b = (shutil.copytree(tiny_run, tmp_path / n, ignore=shutil.ignore_patterns("eval", rundir.RunLock.NAME))
            for n in ("a", "b"))
    assert cli.main(["eval", str(a), "--ensemble", str(b), "--workers", "0"]) == 0

    def ensembles(run) -> list:
        assert report.main([str(run), "--out", str(tmp_path / "results"), "--name", "r", "--workers", "0",
                            "--figure4-images", "1", "--neighbours", "1"]) == 0
        return [e["members"] for e in json.loads((tmp_path / "results" / "r" / "report.json").read_text())["ensembles"]]

    assert ensembles(a) == [["a", "b"]]
    moved = tmp_path / "moved"
    moved.mkdir()
    a, b = shutil.move(a, moved / "a"), shutil.move(b, moved / "b")
    assert ensembles(a) == [["a", "b"]]  # the record names tmp_path/b; b is found beside a
    newest = checkpoint.latest(b)
    shutil.move(newest, tmp_path / "aside")  # b's checkpoint now: an older one
    capsys.readouterr()
    assert ensembles(a) == []
    err = capsys.readouterr().err
    assert f"left out the ensemble record of {a} (it averaged {b} at step 6, whose checkpoint is now step 5)" in err, err
    assert f"./run.sh eval {a} --ensemble {b}`" in err
    shutil.move(tmp_path / "aside", newest)
    assert ensembles(a) == [["a", "b"]]
    shutil.rmtree(b)
    capsys.readouterr()
    assert ensembles(a) == []
    err = capsys.readouterr().err
    assert f"left out the ensemble record of {a} (its member {tmp_path / 'b'} is gone)" in err, err
