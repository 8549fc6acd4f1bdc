"""Watching a run live: TensorBoard event files hold what metrics.jsonl holds, and the conv1
kernels each epoch; without the package, or with train.tensorboard = false, nothing changes."""
import numpy as np
import pytest

from repro import rundir, watch
from repro.train import train
from tests.tiny_data import SIGNAL, small_config


def events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / watch.DIR), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_event_files_hold_the_metrics_and_the_kernels(tiny_shards, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed (pip install .[watch])")
    run = train(small_config(*SIGNAL, "schedule.epochs=2", "train.log_every=2"), tiny_shards, tmp_path / "r")
    acc = events(run)
    rows = rundir.read_metrics(run, "train")
    for key in ("loss", "top1_error", "top5_error", "lr", "img_per_s", "data_wait_share"):
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    val = rundir.read_metrics(run, "val")
    assert [(e.step, e.value) for e in acc.Scalars("val/top1_error")] == [
        (r["step"], pytest.approx(r["top1_error"], rel=1e-6)) for r in val]
    images = acc.Images("conv1_kernels")
    assert [im.step for im in images] == [r["step"] for r in val]  # one per epoch
    # 8 kernels per tower at the small widths (conv1 = 16): one row each, tower 0 above tower 1
    assert (images[0].width, images[0].height) == (8 * 12 + 1, 2 * (11 + 2) + 3)
    assert all(0 <= r["data_wait_share"] <= 1 for r in rows)


@pytest.mark.parametrize("how", ["switched off", "not installed"])
def test_without_tensorboard_nothing_changes(tiny_shards, tmp_path, monkeypatch, how):
    extra = ["train.tensorboard=false"] if how == "switched off" else []
    if how == "not installed":
        monkeypatch.setattr(watch, "available", lambda: False)
    run = train(small_config(*SIGNAL, "train.max_steps=2", *extra), tiny_shards, tmp_path / "r")
    assert not (run / watch.DIR).exists()
    assert [r["step"] for r in rundir.read_metrics(run, "train")] == [1, 2]


def test_the_kernel_image_is_each_towers_kernels_stretched():
    rng = np.random.default_rng(0)
    towers = [rng.normal(size=(5, 3, 11, 11)), rng.normal(size=(5, 3, 11, 11))]
    from repro import figures

    image = figures.kernel_mosaic(towers, columns=4)
    assert image.shape == (2 * (2 * 12 + 1) + 3, 4 * 12 + 1, 3) and image.min() >= 0 and image.max() <= 1
    k = towers[1][0]
    np.testing.assert_allclose(image[2 * 12 + 1 + 3 + 1:][:11, 1:12], ((k - k.min()) / (k.max() - k.min())).transpose(1, 2, 0),
                               rtol=1e-6)
