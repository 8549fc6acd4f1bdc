"""Evaluation (section 6), ensembles, the report, predict and export. Tiny scale (tests/tiny_data.py)."""
import functools
import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data_prep import shards
from repro import checkpoint, cli, data, evaluate, figures, report, rundir, tables
from repro.model import AlexNet
from repro.predict import prepare_image
from tests.pixels import assert_as_resize_then_crop, resize_two_pass
from tests.tiny_data import SIGNAL, small_config
from tests.tiny_data import small_config as _small_config
from tests.tolerance import FLOAT32_NET_TOL, rel_err, softmax_atol

CROP = 224


def explicit_views(image: np.ndarray, mean: np.ndarray):
    """The paper's ten views written out by hand: the four corner patches, the centre patch, and
    the mirror of each; the mean image is taken at the same place (and mirrored with the crop)."""
    e, c = image.shape[0] - CROP, (image.shape[0] - CROP) // 2
    out = []
    for mirrored in (False, True):
        for top, left in ((0, 0), (0, e), (e, 0), (e, e), (c, c)):
            crop = image[top:top + CROP, left:left + CROP].astype(np.float32)
            m = mean[top:top + CROP, left:left + CROP].astype(np.float32)
            if mirrored:
                crop, m = crop[:, ::-1], m[:, ::-1]
            out.append(crop - m)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)  # (10, 3, 224, 224); row 4 = centre


@torch.no_grad()
def explicit_ten_view(model, images: np.ndarray, mean: np.ndarray) -> torch.Tensor:
    """Mean over the ten explicit views of the softmax of each, per image: (N, C)."""
    return torch.stack([F.softmax(model(explicit_views(im, mean)), dim=1).mean(0) for im in images])


@torch.no_grad()
def views_atol(model, images: np.ndarray, mean: np.ndarray) -> float:
    """softmax_atol of the model's logits over the explicit views of these images: the tolerance
    for probabilities computed by other kernels (other batch compositions, layouts)."""
    return softmax_atol(torch.cat([model(explicit_views(im, mean)) for im in images]))


def val_images(root) -> np.ndarray:
    return np.concatenate([np.asarray(shards.map_images(m)) for m in data.open_split(root, "val").metas])


def fake_run(root, run_dir, seed: int):
    """A run directory holding an untrained small model (initialised from `seed`) as its checkpoint."""
    cfg = small_config(*SIGNAL, f"train.seed={seed}")
    run_dir.mkdir(parents=True)
    rundir.write_config(run_dir, cfg)
    rundir.write_provenance(run_dir, cfg, root, {})
    checkpoint.save(run_dir, 1, AlexNet.from_config(cfg), None, {"step": 1, "epoch": 0}, keep=1)
    return run_dir


# ------------------------------------------------------------------------------ the errors

def test_topk_errors_on_a_hand_made_case():
    labels = torch.tensor([0, 1, 2, 3])
    probs = torch.tensor([[.50, .10, .10, .10, .10, .10],   # label 0 ranked 1st
                          [.40, .30, .10, .10, .05, .05],   # label 1 ranked 2nd
                          [.30, .25, .02, .20, .15, .08],   # label 2 ranked 6th: a top-5 miss
                          [.30, .25, .12, .10, .15, .08]])  # label 3 ranked 5th: a top-5 hit
    assert evaluate.topk_errors(probs, labels) == {1: 0.75, 5: 0.25}
    e = evaluate.errors(probs, labels)
    assert (e.top1, e.top5, e.images) == (0.75, 0.25, 4)
    assert e.loss == pytest.approx(-np.log([.50, .30, .02, .10]).mean())
    per_class = evaluate.per_class_errors(probs, labels, 6)
    np.testing.assert_array_equal(per_class[:4], [[0, 0], [1, 0], [1, 1], [1, 0]])
    assert np.isnan(per_class[4:]).all()


def test_ten_view_is_the_mean_of_softmax_over_the_ten_explicit_crops(tiny_run, tiny_shards):
    model, cfg = evaluate.load_run(tiny_run)
    normalizer = data.make_normalizer(tiny_shards, cfg, "cpu")
    mean = shards.read_stats(tiny_shards).mean
    images = val_images(tiny_shards)
    expected = explicit_ten_view(model, images, mean)
    with torch.no_grad():
        expected_centre = torch.stack([F.softmax(model(explicit_views(im, mean)[4:5]), dim=1)[0] for im in images])
    both, labels = evaluate.predict_views(model, tiny_shards, "val", "both", 5, 0, normalizer)
    ten = evaluate.predict_views(model, tiny_shards, "val", "ten", 5, 0, normalizer)[0]["ten"]
    centre = evaluate.predict_views(model, tiny_shards, "val", "centre", 5, 0, normalizer)[0]["centre"]
    atol = views_atol(model, images, mean)  # the pipeline batches views differently
    for got in (both["ten"], ten):
        torch.testing.assert_close(got, expected, rtol=0, atol=atol)
    for got in (both["centre"], centre):
        torch.testing.assert_close(got, expected_centre, rtol=0, atol=atol)
    assert not torch.allclose(expected, expected_centre, atol=1e-4)  # the views do differ
    assert labels.tolist() == np.concatenate(data.open_split(tiny_shards, "val").labels).tolist()


# ---------------------------------------------------------------------- eval records, ensembles

def test_eval_writes_records_with_checkpoint_and_shard_hashes_and_reuses_them(tiny_run, tiny_shards, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert cli.main(["eval", str(run), "--workers", "0"]) == 0
    ckpt = checkpoint.latest(run)
    manifest = shards.read_manifest(tiny_shards)
    model, cfg = evaluate.load_run(run)
    normalizer = data.make_normalizer(tiny_shards, cfg, "cpu")
    for views in ("centre", "ten"):
        rec = json.loads((run / "eval" / f"val-{views}.json").read_text())
        assert rec["checkpoint"]["step"] == 6 and rec["checkpoint"]["path"] == str(ckpt)
        assert rec["checkpoint"]["sha256"] == {f.name: shards.file_sha256(f) for f in ckpt.glob("*.pt")}
        assert set(rec["checkpoint"]["sha256"]) == {"tower0.pt", "tower1.pt", "state.pt"}
        assert rec["data"]["shards"] == {s["name"]: s["sha256"] for s in manifest["splits"]["val"]["shards"]}
        probs, labels = evaluate.predict_views(model, tiny_shards, "val", views, 4, 0, normalizer)
        probs = probs[views]
        e = evaluate.errors(probs, labels)
        assert (rec["top1_error"], rec["top5_error"], rec["images"]) == pytest.approx((e.top1, e.top5, 12))
        assert [c["images"] for c in rec["per_class"]] == [3, 3, 3, 3]
        assert [c["wnid"] for c in rec["per_class"]] == [c["wnid"] for c in manifest["classes"]]
        per_class = evaluate.per_class_errors(probs, labels, 4)
        assert [c["top1_error"] for c in rec["per_class"]] == pytest.approx(per_class[:, 0].tolist())
        atol = views_atol(model, val_images(tiny_shards), shards.read_stats(tiny_shards).mean)
        torch.testing.assert_close(evaluate.load_probs(run, rec), probs, rtol=0, atol=atol)  # other batch size
    stamp = (run / "eval" / "val-ten.probs.npy").stat().st_mtime_ns
    assert cli.main(["eval", str(run), "--workers", "0", "--views", "ten"]) == 0  # same checkpoint: reused
    assert (run / "eval" / "val-ten.probs.npy").stat().st_mtime_ns == stamp
    assert cli.main(["eval", str(run), "--workers", "0", "--views", "ten", "--again"]) == 0
    assert (run / "eval" / "val-ten.probs.npy").stat().st_mtime_ns != stamp
    assert "10 views" in capsys.readouterr().out


def test_ensemble_averages_the_softmax_outputs_of_its_runs(tiny_shards, tmp_path):
    runs = [fake_run(tiny_shards, tmp_path / f"r{seed}", seed) for seed in (1, 2, 3)]
    recs = evaluate.evaluate_ensemble(runs, evaluate.EvalOptions(workers=0, views="ten"))
    members = []
    for r in runs:
        model, cfg = evaluate.load_run(r)
        probs, labels = evaluate.predict_views(model, tiny_shards, "val", "ten", 6, 0,
                                               data.make_normalizer(tiny_shards, cfg, "cpu"))
        members.append(probs["ten"])
    expected = (members[0] + members[1] + members[2]) / 3
    rec = recs["ten"]
    assert rec == json.loads(evaluate.record_path(runs[0], "val", "ten", "-ensemble").read_text())
    atol = max(views_atol(evaluate.load_run(r)[0], val_images(tiny_shards), shards.read_stats(tiny_shards).mean)
               for r in runs)  # the members were evaluated in batches of another size
    torch.testing.assert_close(evaluate.load_probs(runs[0], rec), expected, rtol=0, atol=atol)
    e = evaluate.errors(expected, labels)
    assert (rec["top1_error"], rec["top5_error"], rec["loss"]) == pytest.approx((e.top1, e.top5, e.loss))
    assert [m["run"] for m in rec["ensemble"]] == ["r1", "r2", "r3"]
    assert [m["checkpoint"]["step"] for m in rec["ensemble"]] == [1, 1, 1]
    assert not torch.allclose(members[0], members[1])  # different nets, so averaging matters


def test_commands_fail_in_one_line(tiny_run, tiny_shards, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rundir.write_config(empty, small_config())
    rundir.write_provenance(empty, small_config(), tiny_shards, {})
    no_data = shutil.copytree(tiny_run, tmp_path / "no_data", ignore=shutil.ignore_patterns("eval"))
    cases = [(["eval", str(empty)], "no finished checkpoint"),
             (["eval", str(tmp_path / "nothing")], "not a run directory"),
             (["eval", str(no_data), "--data", str(tmp_path / "gone")], "no prepared data"),
             (["report", str(tiny_run), str(empty), "--out", str(tmp_path / "r")], "no finished checkpoint"),
             (["predict", str(empty), "x.jpg"], "no finished checkpoint"),
             (["export", str(empty)], "no finished checkpoint")]
    for argv, message in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "r").exists()  # the report checks every run before doing any work


# ---------------------------------------------------------------------------------- report

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


# ----------------------------------------------------------------------------- Figure 3

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


# ------------------------------------------------------------------------ predict and export

def test_predict_reads_any_image_and_averages_ten_views(tiny_run, tiny_shards, tmp_path, capsys):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 512, 3), dtype=np.uint8)
    files = {"wide.png": Image.fromarray(rgb), "grey.jpg": Image.fromarray(rgb[:, :200, 0]),
             "cmyk.jpg": Image.fromarray(rgb[:, :280]).convert("CMYK"),
             "rgba.png": Image.fromarray(rgb[:260, :256]).convert("RGBA"),
             "exact.png": Image.fromarray(rgb[:256, :256])}
    for name, im in files.items():
        im.save(tmp_path / name)
    (tmp_path / "notes.jpg").write_text("not an image")
    prepared = {name: prepare_image(tmp_path / name) for name in files}
    assert all(p.shape == (256, 256, 3) and p.dtype == np.uint8 for p in prepared.values())
    np.testing.assert_array_equal(prepared["exact.png"], rgb[:256, :256])  # no resize: untouched
    resized = resize_two_pass(Image.fromarray(rgb), (int(512 * 256 / 300 + 0.5), 256))
    left = (resized.width - 256) // 2
    assert_as_resize_then_crop(prepared["wide.png"], np.asarray(resized)[:, left:left + 256], "wide.png")

    assert cli.main(["predict", str(tiny_run), *(str(tmp_path / n) for n in files), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model, _ = evaluate.load_run(tiny_run)
    mean = shards.read_stats(tiny_shards).mean
    expected = explicit_ten_view(model, np.stack(list(prepared.values())), mean)
    atol = views_atol(model, np.stack(list(prepared.values())), mean)  # predict batches the views otherwise
    names = data.class_names(tiny_shards)
    for result, p in zip(out, expected):
        assert len(result["top"]) == 4  # 4 classes: all of them
        top = p.topk(4)
        assert [t["class"] for t in result["top"]] == top.indices.tolist()
        assert [t["prob"] for t in result["top"]] == pytest.approx(top.values.tolist(), abs=atol)
        assert [t["words"] for t in result["top"]] == [names[c][1] for c in top.indices.tolist()]
    assert cli.main(["predict", str(tiny_run), str(tmp_path / "notes.jpg")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_export_runs_without_this_project_and_gives_the_same_logits(tiny_run, tiny_shards, tmp_path):
    out = tmp_path / "alexnet.pt"
    assert cli.main(["export", str(tiny_run), "--out", str(out)]) == 0
    images = torch.from_numpy(val_images(tiny_shards)[:3].copy())  # 3: not the batch size traced with
    crops = images[:, 16:240, 16:240].contiguous()
    torch.save({"crops": crops, "images": images}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        extra = {{"classes.json": "", "about.json": ""}}
        model = torch.jit.load({str(out)!r}, _extra_files=extra)
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        with torch.no_grad():
            torch.save({{"logits": model(inputs["crops"]), "probs": model.ten_view(inputs["images"])}},
                       {str(tmp_path / 'outputs.pt')!r})
        assert not any(m.split(".")[0] in ("repro", "data_prep") for m in sys.modules)
        print(json.dumps(json.loads(extra["classes.json"])))
    """)
    # -I: isolated, so neither the repository nor PYTHONPATH is importable.
    r = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [list(c) for c in data.class_names(tiny_shards)]
    got = torch.load(tmp_path / "outputs.pt")
    model, cfg = evaluate.load_run(tiny_run)
    normalizer = data.make_normalizer(tiny_shards, cfg, "cpu")
    with torch.no_grad():
        logits = model(normalizer.views(crops[:, None], data.view_offsets("centre")))
    # the exported model runs the plain LRN and conv1 (other kernels): tests/tolerance.py, rule 2
    assert rel_err(got["logits"], logits) < FLOAT32_NET_TOL
    mean = shards.read_stats(tiny_shards).mean
    expected = explicit_ten_view(model, images.numpy(), mean)
    torch.testing.assert_close(got["probs"], expected, rtol=0, atol=views_atol(model, images.numpy(), mean))
