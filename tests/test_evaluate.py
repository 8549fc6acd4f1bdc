"""Evaluation (section 6): top-k errors, the ten views, eval records and their reuse, ensembles.
Tiny scale (tests/tiny_data.py)."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep import shards
from repro import checkpoint, cli, data, evaluate, files
from tests.tiny_data import fake_run
from tests.views import explicit_ten_view, explicit_views, val_images, views_atol


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
        assert rec["checkpoint"]["sha256"] == {f.name: files.sha256(f) for f in ckpt.glob("*.pt")}
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
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--workers", "0", "--views", "ten"]) == 0  # same checkpoint: reused
    assert (run / "eval" / "val-ten.probs.npy").stat().st_mtime_ns == stamp
    out = capsys.readouterr().out
    assert "10 views" in out and "reused" in out and "nothing to evaluate" in out and "written" not in out
    assert cli.main(["eval", str(run), "--workers", "0", "--views", "ten", "--again"]) == 0
    assert (run / "eval" / "val-ten.probs.npy").stat().st_mtime_ns != stamp
    assert "written" in capsys.readouterr().out


@pytest.mark.slow
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
    path = evaluate.record_path(runs[0], "val", "ten", "-ensemble")
    assert rec.pop("record_file") == str(path) and rec == json.loads(path.read_text())
    atol = max(views_atol(evaluate.load_run(r)[0], val_images(tiny_shards), shards.read_stats(tiny_shards).mean)
               for r in runs)  # the members were evaluated in batches of another size
    torch.testing.assert_close(evaluate.load_probs(runs[0], rec), expected, rtol=0, atol=atol)
    e = evaluate.errors(expected, labels)
    assert (rec["top1_error"], rec["top5_error"], rec["loss"]) == pytest.approx((e.top1, e.top5, e.loss))
    assert [m["run"] for m in rec["ensemble"]] == ["r1", "r2", "r3"]
    assert [m["checkpoint"]["step"] for m in rec["ensemble"]] == [1, 1, 1]
    assert not torch.allclose(members[0], members[1])  # different nets, so averaging matters
