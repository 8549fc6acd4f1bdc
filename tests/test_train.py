"""Training (section 5): learning, exact resume, signals, NaN, distributed pairs. Tiny scale."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dist_util import run_gloo
from repro import checkpoint, rundir
from repro.config import Widths
from repro.errors import UserError
from repro.model import AlexNet
from repro.optim import PaperSGD
from repro.train import train
from tests.tiny_data import SMALL, small_config

REPO = Path(__file__).resolve().parent.parent


def weights(run_dir) -> dict:
    ckpt = checkpoint.latest(run_dir)
    out = {}
    for f in sorted(ckpt.glob("tower*.pt")):
        entry = torch.load(f, weights_only=True)
        out.update(entry["params"])
        out.update({f"v:{k}": v for k, v in entry["velocity"].items()})
    return out


def test_loss_falls_when_overfitting_a_small_batch(tiny_shards):
    from repro import data

    # At these small widths N(0, 0.01) leaves the signal tiny; a larger std and biases of 0.1
    # make a 30-step test meaningful (the paper's values are tested in test_model.py).
    stds = [f"init.weight_std.{layer}=0.05" for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")]
    cfg = small_config("init.bias.conv2=0.1", "init.bias.conv4=0.1", "init.bias.conv5=0.1",
                       "init.bias.fc6=0.1", "init.bias.fc7=0.1", "model.dropout=0.0", "optim.lr=0.02", *stds)
    torch.manual_seed(0)
    batch = next(iter(data.train_batches(tiny_shards, cfg, epoch=0)))
    x = data.make_normalizer(tiny_shards, cfg, "cpu").train(batch)
    model = AlexNet.from_config(cfg).train()
    opt = PaperSGD.from_config(model, cfg.optim)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses


def test_exact_resume_is_bit_identical(tiny_shards, tmp_path):
    """2k steps straight == k steps, stop, resume, k steps (crossing an epoch and its validation)."""
    k = 4  # 5 steps per epoch: the second half crosses the epoch boundary
    straight = train(small_config(f"train.max_steps={2 * k}"), tiny_shards, tmp_path / "a")
    first = train(small_config(f"train.max_steps={k}"), tiny_shards, tmp_path / "b")
    assert checkpoint.read_state(checkpoint.latest(first))["step"] == k
    resumed = train(rundir.read_config(first, [f"train.max_steps={2 * k}"]), tiny_shards, first, resume=True)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and len(a) == 2 * 2 * 16  # params and velocities of both towers
    for name in a:
        assert torch.equal(a[name], b[name]), name
    vals = [r for r in rundir.read_metrics(resumed, "val")]
    assert [r["epoch"] for r in vals] == [1]


def test_run_dir_holds_config_metrics_provenance(tiny_shards, tmp_path):
    run = train(small_config("train.max_steps=2"), tiny_shards, tmp_path / "r")
    assert rundir.read_config(run).model.widths == Widths(16, 32, 48, 48, 32, 64, 64)
    rows = rundir.read_metrics(run, "train")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "top1_error", "top5_error", "lr", "img_per_s", "data_wait_s", "epoch"):
        assert key in rows[0]
    prov = json.loads((run / rundir.PROVENANCE).read_text())
    assert len(prov["git"]["commit"]) == 40 and prov["versions"]["torch"] == torch.__version__
    assert prov["hardware"]["cpu"] and prov["seeds"] == {"train": 0, "data": 0}
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert prov["data"]["shards"]["train"] == {s["name"]: s["sha256"] for s in manifest["splits"]["train"]["shards"]}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_shards, tmp_path):
    run = tmp_path / "nan"
    train(small_config("train.max_steps=1"), tiny_shards, run)
    with pytest.raises(UserError, match=r"(loss|weights) became .* at step (\d+)") as e:
        train(rundir.read_config(run, ["optim.lr=1e30", "train.max_steps=50", "train.checkpoint_every=1"]),
              tiny_shards, run, resume=True)
    bad_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    state = checkpoint.read_state(checkpoint.latest(run))
    assert state["step"] == bad_step - 1  # the last step whose loss and weights were finite
    assert all(torch.isfinite(v).all() for v in weights(run).values())
    assert str(checkpoint.latest(run)) in str(e.value)


def test_sigterm_leaves_a_resumable_run(tiny_shards, tmp_path):
    run = tmp_path / "sig"
    args = [sys.executable, "-m", "repro", "train", "--data", str(tiny_shards), "--run-dir", str(run),
            *sum((["--set", s] for s in SMALL + ["schedule.epochs=50", "train.checkpoint_every=0"]), [])]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(rundir.read_metrics(run, "train")) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "--resume" in out
    state = checkpoint.read_state(checkpoint.latest(run))
    assert state["step"] >= 2
    resumed = train(rundir.read_config(run, [f"train.max_steps={state['step'] + 1}"]), tiny_shards, run, resume=True)
    assert checkpoint.read_state(checkpoint.latest(resumed))["step"] == state["step"] + 1


def _gloo_train(rank, world, data_root, run_dir):
    cfg = small_config("train.max_steps=3", "train.placement=distributed")
    train(cfg, Path(data_root), Path(run_dir))


def test_two_gloo_processes_train_like_one_device(tiny_shards, tmp_path):
    one = train(small_config("train.max_steps=3"), tiny_shards, tmp_path / "one")
    run_gloo(_gloo_train, 2, str(tiny_shards), str(tmp_path / "pair"))
    a, b = weights(one), weights(tmp_path / "pair")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_nproc_launches_one_tower_per_process(tiny_shards, tmp_path):
    """./run.sh train --nproc 2: torchrun starts two gloo processes, one tower each."""
    run = tmp_path / "np2"
    args = [sys.executable, "-m", "repro", "train", "--nproc", "2", "--data", str(tiny_shards),
            "--run-dir", str(run), *sum((["--set", s] for s in SMALL + ["train.max_steps=2",
                                                                        "train.placement=distributed"]), [])]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = checkpoint.latest(run)
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.pt", "tower0.pt", "tower1.pt"]
    assert checkpoint.read_state(ckpt)["step"] == 2 and str(ckpt) in r.stdout
    assert json.loads((run / rundir.PROVENANCE).read_text())["world_size"] == 2


def test_a_run_is_never_silently_mixed_with_another(tiny_shards, tmp_path):
    from repro.train import main

    run = tmp_path / "r"
    args = ["--data", str(tiny_shards), "--run-dir", str(run), *sum((["--set", s] for s in SMALL), [])]
    main(args + ["--set", "train.max_steps=1"])
    with pytest.raises(UserError, match="already holds a run"):  # a fresh run into a used directory
        main(args)
    with pytest.raises(UserError, match="data.batch_size"):  # resuming may not change the stream
        main(["--data", str(tiny_shards), "--run-dir", str(run), "--resume", "--set", "data.batch_size=4"])
    with pytest.raises(UserError, match="ILSVRC-2012.*data.year = 2010"):
        train(small_config("data.year=2010"), tiny_shards, tmp_path / "y")
    with pytest.raises(UserError, match="--nproc 2"):
        train(small_config("train.placement=distributed"), tiny_shards, tmp_path / "d")
    main(["--data", str(tiny_shards), "--run-dir", str(run), "--resume", "--set", "train.max_steps=2"])
    assert checkpoint.read_state(checkpoint.latest(run))["step"] == 2


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "repro", "train", *args], cwd=REPO,
                               capture_output=True, text=True, timeout=120)

    r = run("--data", str(tmp_path / "nothing"), "--run-dir", str(tmp_path / "x"))
    assert r.returncode == 2 and "no prepared data" in r.stderr and "./run.sh demo" in r.stderr
    r = run(str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "missing.toml" in r.stderr
    r = run("--resume")
    assert r.returncode == 2 and "--run-dir" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
