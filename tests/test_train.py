"""Training (section 5): learning, exact resume, signals, NaN, distributed pairs. Tiny scale."""
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repro import checkpoint, evaluate, rundir
from repro.config import Widths
from repro.errors import UserError
from repro.model import AlexNet
from repro.optim import PaperSGD
from repro.train import _Window, train
from tests.dist_util import run_gloo
from tests.tiny_data import SMALL, small_config
from tests.tolerance import FLOAT64_TOL, rel_err

REPO = Path(__file__).resolve().parent.parent


def weights(run_dir) -> dict:
    ckpt = checkpoint.latest(run_dir)
    out = {}
    for f in sorted(ckpt.glob("tower*.pt")):
        entry = torch.load(f, weights_only=True)
        out.update(entry["params"])
        out.update({f"v:{k}": v for k, v in entry["velocity"].items()})
    return out


@pytest.mark.slow
def test_loss_falls_when_overfitting_a_small_batch(tiny_shards):
    from repro import data

    # At these small widths N(0, 0.01) leaves the signal tiny; a larger std and biases of 0.1
    # make a 30-step test meaningful (the paper's values are tested in test_model.py). No PCA
    # lighting (this tests learning, not the noise) and lr 0.01: at 0.02 the 30 steps sat at the
    # edge of divergence, where a relative change of 1e-5 in the input (another CPU's kernels)
    # or the other sign of an eigenvector (another LAPACK) made the loss explode (last/first
    # 1e+12); at 0.01 six such perturbed inputs all ended below 0.003 of the first loss.
    stds = [f"init.weight_std.{layer}=0.05" for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")]
    cfg = small_config("init.bias.conv2=0.1", "init.bias.conv4=0.1", "init.bias.conv5=0.1",
                       "init.bias.fc6=0.1", "init.bias.fc7=0.1", "model.dropout=0.0", "optim.lr=0.01",
                       "augment.lighting=none", *stds)
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


def test_an_epochs_last_step_is_checkpointed_once_after_its_validation(tiny_shards, tmp_path, monkeypatch):
    """checkpoint_every dividing the epoch: the periodic save of the epoch's last step would be
    replaced by the end-of-epoch one a moment later; it is written once, as the next epoch's start."""
    saved = []
    real = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda run_dir, step, *a, **k: saved.append(step) or real(run_dir, step, *a, **k))
    run = train(small_config("train.max_steps=7", "train.checkpoint_every=5"), tiny_shards, tmp_path / "r")
    assert saved == [5, 7]  # 5 steps per epoch; 7 = train.max_steps
    state = checkpoint.read_state(run / "checkpoints" / "step-00000005")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)


def git_head() -> str | None:
    """This checkout's commit, or None without git or outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def test_run_dir_holds_config_metrics_provenance(tiny_shards, tmp_path):
    run = train(small_config("train.max_steps=2"), tiny_shards, tmp_path / "r")
    assert rundir.read_config(run).model.widths == Widths(16, 32, 48, 48, 32, 64, 64)
    rows = rundir.read_metrics(run, "train")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "top1_error", "top5_error", "lr", "img_per_s", "data_wait_s", "epoch"):
        assert key in rows[0]
    prov = json.loads((run / rundir.PROVENANCE).read_text())
    assert prov["git"]["commit"] == (git_head() or "unknown") and prov["versions"]["torch"] == torch.__version__
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


def test_each_loss_is_read_only_after_the_next_step_is_queued(tiny_shards, tmp_path, monkeypatch):
    """train_step checks a step's loss one step late (on a GPU the host then never waits for the
    GPU mid-step): the loss of step N is read in step N + 1, after its forward and backward
    passes, or before the checkpoint that ends the run; never while step N is being computed."""
    from repro import train as train_module

    reads, forwards, check = [], [], train_module.check_loss
    backward = torch.Tensor.backward

    def spy(run, stop=False):
        if run.pending.host is not None:
            # (whose loss, training forward passes so far, backward passes so far)
            reads.append((run.pending.step, len(forwards), backwards[0]))
        return check(run, stop)

    def counting_forward(self, x, *args, **kwargs):
        if self.training:
            forwards.append(1)
        return real_forward(self, x, *args, **kwargs)

    backwards = [0]

    def counting_backward(self, *args, **kwargs):
        backwards[0] += 1
        return backward(self, *args, **kwargs)

    real_forward = AlexNet.forward
    monkeypatch.setattr(AlexNet, "forward", counting_forward)
    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    monkeypatch.setattr(train_module, "check_loss", spy)
    train(small_config("train.max_steps=3", "train.log_every=100", "train.checkpoint_every=0"),
          tiny_shards, tmp_path / "r")
    assert reads == [(1, 2, 2), (2, 3, 3), (3, 3, 3)]  # step 3's at the checkpoint of train.max_steps


def test_a_non_finite_loss_reaches_no_checkpoint_and_no_metrics_line(tiny_shards, tmp_path):
    """With the check one step late: a run whose loss turns non-finite at the step where
    train.max_steps ends it (the checkpoint follows at once) or that logs every step."""
    run = tmp_path / "nan"
    train(small_config("train.max_steps=1"), tiny_shards, run)
    for steps in range(2, 6):
        try:
            train(rundir.read_config(run, ["optim.lr=1e30", f"train.max_steps={steps}",
                                           "train.checkpoint_every=0", "train.log_every=1"]),
                  tiny_shards, run, resume=True)
        except UserError as e:
            assert re.search(r"(loss|weights) became .* at step (\d+)", str(e))
            break
    else:
        pytest.fail("the loss never became non-finite at lr 1e30")
    assert all(torch.isfinite(v).all() for v in weights(run).values())
    assert all(math.isfinite(r["loss"]) for r in rundir.read_metrics(run, "train"))


def test_a_non_finite_loss_at_an_epochs_last_step_is_never_validated(tiny_shards, tmp_path, monkeypatch):
    """The epoch's last step, its loss made NaN: end_epoch checks it before validation, so no
    validation line, schedule decision or checkpoint comes from the weights it produced."""
    from types import SimpleNamespace

    from repro import train as train_module

    first = train(small_config("schedule.epochs=1", "train.checkpoint_every=0"), tiny_shards, tmp_path / "one")
    last = rundir.read_metrics(first, "val")[0]["step"]  # steps per epoch
    calls = [0]

    def cross_entropy(logits, labels, *args, **kwargs):
        calls[0] += 1
        loss = F.cross_entropy(logits, labels, *args, **kwargs)
        return loss * float("nan") if calls[0] == last else loss

    monkeypatch.setattr(train_module, "F", SimpleNamespace(cross_entropy=cross_entropy))
    run = tmp_path / "r"
    with pytest.raises(UserError, match=rf"loss became nan at step {last} \(epoch 1\)"):
        train(small_config("schedule.epochs=2", "train.checkpoint_every=0", f"train.log_every={last + 1}"),
              tiny_shards, run)
    assert rundir.read_metrics(run, "val") == [] and checkpoint.latest(run) is None


@pytest.mark.slow
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


# Launches compared with one process. Pairs and processes run other kernels (one thread each,
# other batch shapes), so the runs train in float64 (train.dtype), where the same steps give the
# same weights within tests/tolerance.py's FLOAT64_TOL: a slip in the exchanges, the averaging
# over pairs, the batch split or the dropout masks moves them by far more.
F64 = ["train.max_steps=3", "train.dtype=float64"]


@pytest.fixture(scope="module")
def one_process(tiny_shards, tmp_path_factory):
    """3 float64 steps in one process: the reference for every launch below."""
    return weights(train(small_config(*F64), tiny_shards, tmp_path_factory.mktemp("one") / "run"))


def assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and len(want) == 2 * 2 * 16  # params and velocities, two towers
    for name in want:
        assert rel_err(got[name], want[name]) < FLOAT64_TOL, name


def _gloo_train(rank, world, data_root, run_dir):
    train(small_config(*F64, "train.placement=distributed"), Path(data_root), Path(run_dir))


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_device(tiny_shards, tmp_path, one_process):
    run_gloo(_gloo_train, 2, str(tiny_shards), str(tmp_path / "pair"))
    assert_same_weights(weights(tmp_path / "pair"), one_process)


def launch_args(tiny_shards, run, *extra):
    return ["--data", str(tiny_shards), "--run-dir", str(run),
            *sum((["--set", s] for s in SMALL + F64 + ["train.placement=distributed", *extra]), [])]


UNRESOLVABLE = "no-such-host.invalid"  # .invalid never resolves (RFC 2606)


def with_unresolvable_host_name(command: list[str]) -> list[str] | None:
    """`command` run in a new UTS namespace whose host name does not resolve (`unshare --uts` as
    root, else inside a user namespace), or None where this machine can make neither."""
    unshare = shutil.which("unshare")
    for how in (["--uts"], ["--user", "--map-root-user", "--uts"]):
        if unshare and subprocess.run([unshare, *how, "hostname", UNRESOLVABLE], capture_output=True).returncode == 0:
            return [unshare, *how, "sh", "-c", f'hostname {UNRESOLVABLE} && exec "$@"', "sh", *command]
    return None


def run_launcher(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group, so that on a timeout its workers end with it."""
    p = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(command, p.returncode, out, err)


def host_name_resolves() -> bool:
    """Whether this machine's host name (what torchrun's agents advertise to each other) names an
    address of this machine: one that resolves elsewhere (a stale /etc/hosts, a cloud DNS name of
    another interface) would hang the launch as one that does not resolve at all."""
    try:
        found = socket.getaddrinfo(socket.getfqdn(), None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as s:
                s.bind((address[0], 0))
                return True
        except OSError:
            continue
    return False


@pytest.mark.slow
def test_nproc_launches_one_tower_per_process(tiny_shards, tmp_path, one_process):
    """./run.sh train --nproc 2: torchrun starts two gloo processes, one tower each."""
    run = tmp_path / "np2"
    args = [sys.executable, "-m", "repro", "train", "--nproc", "2", *launch_args(tiny_shards, run)]
    r = run_launcher(args, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = checkpoint.latest(run)
    assert sorted(p.name for p in ckpt.iterdir()) == [checkpoint.DIGESTS, "state.pt", "tower0.pt", "tower1.pt"]
    assert checkpoint.read_state(ckpt)["step"] == 3 and str(ckpt) in r.stdout
    assert json.loads((run / rundir.PROVENANCE).read_text())["world_size"] == 2
    assert_same_weights(weights(run), one_process)


@pytest.mark.slow
def test_nproc_launch_needs_no_resolvable_host_name(tiny_shards, tmp_path):
    """Under a host name that does not resolve, as in some containers and chroots, torchrun waits
    for minutes unless told an address; --nproc tells it 127.0.0.1 (repro.train.launch_local)."""
    run = tmp_path / "nodns"
    args = [sys.executable, "-m", "repro", "train", "--nproc", "2",
            *launch_args(tiny_shards, run, "train.max_steps=1")]
    command = with_unresolvable_host_name(args)
    if command is None:
        pytest.skip("needs `unshare --uts` (root or user namespaces) to give the launch a host name that does not resolve")
    r = run_launcher(command, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert checkpoint.read_state(checkpoint.latest(run))["step"] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_node_launch_line_on_localhost(tiny_shards, tmp_path, one_process):
    """The README's line for several machines, run literally on one: two torchrun agents
    ("nodes") of two processes each meet at a c10d rendezvous, i.e. two model-parallel pairs,
    data parallel; after the same 3 steps their weights equal the one-process run's. On a
    machine whose host name does not resolve, with the README's remedy for that, --local-addr."""
    run = tmp_path / "nodes"
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    line = [*launcher, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "multi-node-test",
            *([] if host_name_resolves() else ["--local-addr", "127.0.0.1"]),
            "-m", "repro", "train", *launch_args(tiny_shards, run)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    agents = [subprocess.Popen(line, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True) for _ in range(2)]
    try:
        outs = [a.communicate(timeout=300)[0] for a in agents]
    finally:
        for a in agents:  # an agent still running (a timeout): with its workers, its process group
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
    assert all(a.returncode == 0 for a in agents), "\n".join(o[-2000:] for o in outs)
    prov = json.loads((run / rundir.PROVENANCE).read_text())
    assert prov["world_size"] == 4 and prov["placement"] == "Distributed"
    assert checkpoint.read_state(checkpoint.latest(run))["step"] == 3
    assert_same_weights(weights(run), one_process)


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


@pytest.mark.slow
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


def test_a_finished_run_says_so_and_how_to_go_on(tiny_shards, tmp_path, capsys):
    from repro.train import main

    run = tmp_path / "done"
    args = ["--data", str(tiny_shards), "--run-dir", str(run), *sum((["--set", s] for s in SMALL), [])]
    main(args + ["--set", "schedule.epochs=1"])
    capsys.readouterr()
    resume = ["--data", str(tiny_shards), "--run-dir", str(run), "--resume"]
    assert main(resume) == 0
    out = capsys.readouterr().out
    ckpt = checkpoint.latest(run)
    assert "nothing to train" in out and "1 epoch(s), step 5" in out and str(ckpt) in out
    assert "--set schedule.epochs=" in out and checkpoint.latest(run) == ckpt  # nothing written
    main(resume + ["--set", "schedule.epochs=2"])  # as the message says: one more epoch
    assert checkpoint.read_state(checkpoint.latest(run))["epoch"] == 2


def test_the_trainer_sets_each_groups_rate_from_the_schedule(tiny_shards, tmp_path, monkeypatch):
    """Code 145's extra conv1 drop and constant bias rate reach the optimiser, epoch by epoch."""
    from repro.optim import Schedule

    seen = []
    set_group_lrs = PaperSGD.set_group_lrs
    monkeypatch.setattr(PaperSGD, "set_group_lrs", lambda self, rates: (seen.append(dict(rates)), set_group_lrs(self, rates)))
    cfg = small_config("schedule.kind=epochs", "schedule.drop_epochs=[2]", "schedule.conv1_drop_epochs=[1]",
                       "schedule.bias_lr=constant", "schedule.epochs=3", "train.max_steps=11")
    train(cfg, tiny_shards, tmp_path / "r")
    lr = cfg.optim.lr
    assert seen == [Schedule(cfg.schedule, lr).rates(e) for e in (0, 1, 2)]
    assert seen[1] == {"rest.weight": lr, "conv1.weight": lr / 10, "rest.bias": lr, "conv1.bias": lr}
    assert seen[2] == {"rest.weight": lr / 10, "conv1.weight": lr / 100, "rest.bias": lr, "conv1.bias": lr}


def test_the_metrics_window_counts_errors_on_the_device_and_reads_them_at_its_line():
    """repro.train._Window keeps the loss and the top-1/top-5 misses as tensors (no host read per
    step, which on a GPU would wait for the update); its line gives the mean loss of its steps and
    the errors of all its steps' rows together."""
    gen = torch.Generator().manual_seed(0)
    window, logits, labels = _Window(), [], []
    for rows in (5, 7, 4):
        logits.append(torch.randn(rows, 10, generator=gen))
        labels.append(torch.randint(0, 10, (rows,), generator=gen))
        window.add(torch.tensor(float(rows)), logits[-1], labels[-1], rows, 0.0, 1.0)
        assert isinstance(window.misses, torch.Tensor) and isinstance(window.loss, torch.Tensor)
    line = window.flush()
    assert line["loss"] == pytest.approx(16 / 3)
    whole = evaluate.topk_errors(torch.cat(logits), torch.cat(labels))
    assert (line["top1_error"], line["top5_error"]) == (whole[1], whole[5]) and 0 < whole[5] < whole[1] < 1
    assert window.misses is None and window.flush()["top1_error"] == 0 and window.loss is None


def test_missing_validation_shards_stop_training_before_it_starts(tiny_shards, tmp_path):
    """Validation reads its shards only after an epoch's training: a val shard missing or cut
    short is found before the first step, and no run directory is made for nothing (nor left
    behind when the data fails a check made once the directory is locked: stats.h5)."""
    from repro.train import last_checkpoint

    data = shutil.copytree(tiny_shards, tmp_path / "data")
    (data / "val-00000.h5").unlink()
    run = tmp_path / "run"
    with pytest.raises(UserError, match="val-00000.h5 is missing"):
        train(small_config(), data, run)
    assert not run.exists()
    shutil.copy(tiny_shards / "val-00000.h5", data)
    (data / "stats.h5").write_bytes(b"damaged")  # found once the run directory is locked: it goes again
    with pytest.raises(UserError, match="stats.h5"):
        train(small_config(), data, run)
    assert not run.exists()
    run.mkdir()
    assert last_checkpoint(run) == "no checkpoint yet (--resume starts the run over from step 0)"


def test_training_on_a_subset_says_so_first(tiny_shards, tmp_path, capsys):
    """Data prepared with --classes N (manifest.json's "subset"): the trainer says, before the
    first step, that its errors are not comparable with the paper's."""
    data = shutil.copytree(tiny_shards, tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["subset"] = {"classes": 4, "of": 1000, "selected_by": "--classes 4", "wnids_sha256": "0" * 64}
    (data / "manifest.json").write_text(json.dumps(manifest))
    train(small_config("train.max_steps=1"), data, tmp_path / "run")
    out = capsys.readouterr().out
    assert out.startswith("training on a subset of ILSVRC: 4 of its 1000 classes (--classes 4); its errors "
                          "are not comparable with the paper's"), out
