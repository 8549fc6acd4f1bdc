"""Training, evaluation and prediction against bad input and faults: two trainers on one run,
other data on resume / eval / predict, damaged checkpoints, shards cut short under a reader,
damaged manifests, runs killed before their first checkpoint. Each one ends right, or in one
line saying what is wrong and what to do (docs/faults.md lists them)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro import checkpoint, cli, evaluate, rundir
from repro.errors import UserError
from repro.train import main as train_main
from repro.train import train
from tests.tiny_data import SIGNAL, SMALL, make_tiny_shards, small_config

REPO = Path(__file__).resolve().parent.parent


def sets(*values) -> list[str]:
    return sum((["--set", v] for v in values), [])


def one_line_error(argv, capsys) -> str:
    """Run a command through the CLI; it must fail with exit 2 and one error line, the last on
    stderr (progress lines may come before it), no traceback."""
    capsys.readouterr()
    assert cli.main(argv) == 2, argv
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:] and not any("Traceback" in line for line in lines), lines
    return errors[0]


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory):
    """Other images of the same 4 classes (other shards), and data with other classes."""
    root = tmp_path_factory.mktemp("other")
    return make_tiny_shards(root / "same_classes", seed=7), make_tiny_shards(root / "five_classes", classes=5)


@pytest.fixture
def small_run(tiny_shards, tmp_path):
    """A run of 3 steps with a checkpoint after each (three checkpoints kept)."""
    return train(small_config(*SIGNAL, "train.max_steps=3", "train.checkpoint_every=1"), tiny_shards, tmp_path / "run")


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_killed_ones_lock_is_stale(tiny_shards, tmp_path, capsys):
    """Two `train --resume` at once in one run directory: the second stops in one line naming the
    first. The first killed with SIGKILL before its first checkpoint: its lock goes with it, and
    --resume starts the run over from step 0, without the killed run's metric lines.

    The first trainer must not reach its first checkpoint (the end of its first epoch) while the
    test runs, however fast the CPU: it is frozen with SIGSTOP as soon as its second metrics line
    is seen (a stopped process still holds its lock, and SIGKILL ends it), and data.batch_size=1
    makes its epoch 40 steps, so that the 38 steps between the second line and the checkpoint
    take far longer than the 10 ms between two looks at the metrics file."""
    run = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "repro", "train", "--data", str(tiny_shards), "--run-dir", str(run),
                              *sets(*SMALL, "data.batch_size=1", "schedule.epochs=50", "train.checkpoint_every=0")],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and len(rundir.read_metrics(run, "train")) < 2:
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert len(rundir.read_metrics(run, "train")) >= 2 and checkpoint.latest(run) is None
        err = one_line_error(["train", "--data", str(tiny_shards), "--run-dir", str(run), "--resume",
                              "--set", "optim.lr=0.0"], capsys)
        assert "is in use" in err and f"pid {first.pid}" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # no --data: a resumed run reads the data its provenance.json records, not the config's data.shards
    train_main(["--run-dir", str(run), "--resume", "--set", "train.max_steps=2"])
    assert "starting it over from step 0" in capsys.readouterr().out
    steps = [r["step"] for r in rundir.read_metrics(run, "train")]
    assert steps == [1, 2]  # the killed run's lines are gone, none twice
    assert checkpoint.read_state(checkpoint.latest(run))["step"] == 2


def test_a_run_directory_on_a_file_system_without_locks_trains_and_says_so(tiny_shards, tmp_path, capsys,
                                                                          monkeypatch):
    """Lustre mounted without its flock option answers flock with ENOSYS: train goes on, saying
    that it runs without the guard, instead of reporting another trainer that does not exist (the
    test above: a lock another process holds still stops it)."""
    import errno
    import fcntl

    def flock(f, how):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", flock)
    run = train(small_config(*SIGNAL, "train.max_steps=2"), tiny_shards, tmp_path / "run")
    assert checkpoint.read_state(checkpoint.latest(run))["step"] == 2
    err = capsys.readouterr().err
    assert (f"cannot lock {run / rundir.RunLock.NAME} ({os.strerror(errno.ENOSYS)}: this file system does not "
            f"support locks); going on without the guard against a second training process in {run}") in err


def test_too_little_shared_memory_stops_train_before_it_writes_anything(tiny_shards, tmp_path, monkeypatch):
    """A container's small /dev/shm (Docker's default is 64 MB; the paper's config keeps 10 or 11
    batches of 19 MB in flight): train says so in one line and leaves no run directory behind, so the same
    command works once the container has more (no --resume needed)."""
    from repro import data

    class Small:
        f_frsize, f_bavail = 4096, 256  # 1 MB free

    real = data.os.statvfs
    monkeypatch.setattr(data.os, "statvfs", lambda path: Small() if path == data.SHM_DIR else real(path))
    with pytest.raises(UserError, match="^not enough shared memory for the data loader's workers: .* /dev/shm has "
                                        "1.0 MB free"):
        train(small_config(*SIGNAL, "data.workers=2", "train.max_steps=1"), tiny_shards, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_eval_and_predict_refuse_data_the_run_was_not_trained_on(small_run, tiny_shards, other_shards,
                                                                        tmp_path, capsys):
    same_classes, five_classes = other_shards
    err = one_line_error(["train", "--run-dir", str(small_run), "--resume", "--data", str(same_classes)], capsys)
    assert "is not the data" in err and "train shards differ" in err and "start a new run" in err
    err = one_line_error(["eval", str(small_run), "--data", str(same_classes), "--workers", "0"], capsys)
    assert "val shards differ" in err and "--other-data" in err
    assert not (small_run / "eval").exists()  # nothing written over the run's own records
    assert cli.main(["eval", str(small_run), "--workers", "0"]) == 0  # its own data: fine
    own = {p.name: p.read_bytes() for p in (small_run / "eval").iterdir()}
    assert cli.main(["eval", str(small_run), "--data", str(same_classes), "--workers", "0", "--other-data"]) == 0
    tagged = sorted(p.name for p in (small_run / "eval").iterdir() if "@" in p.name)
    assert len(tagged) == 4 and all(p.read_bytes() == own[p.name] for p in (small_run / "eval").iterdir() if p.name in own)
    twin = shutil.copytree(small_run, tmp_path / "twin", ignore=shutil.ignore_patterns("eval", rundir.RunLock.NAME))
    ensemble = ["eval", str(small_run), "--ensemble", str(twin), "--workers", "0", "--views", "centre"]
    assert cli.main(ensemble) == 0
    own_ensemble = (small_run / "eval" / "val-centre-ensemble.json").read_bytes()
    assert cli.main([*ensemble, "--data", str(same_classes), "--other-data"]) == 0
    assert (small_run / "eval" / "val-centre-ensemble.json").read_bytes() == own_ensemble
    assert len(list((small_run / "eval").glob("val-centre-ensemble@*.json"))) == 1
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (300, 260), (200, 10, 10)).save(image)
    for command in (["eval", str(small_run), "--other-data"], ["predict", str(small_run), str(image)]):
        err = one_line_error([*command, "--data", str(five_classes)], capsys)
        assert "not the classes" in err


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the tensor data, not the archive's headers
    path.write_bytes(bytes(data))


def test_a_checkpoint_chosen_then_loaded_is_read_once_and_a_change_between_is_caught(small_run, monkeypatch):
    """newest_sound and load_into both check the files; unchanged ones are hashed once per process
    (a tower file of the paper's model is ~250 MB), a file written over in between again, and a
    file changed just before its hash (within a coarse timestamp's tick) is not remembered."""
    hashed = []
    real = checkpoint.files.sha256
    monkeypatch.setattr(checkpoint.files, "sha256", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    monkeypatch.setattr(checkpoint, "SETTLED_NS", 0)  # the fixture wrote its files a moment ago
    newest = checkpoint.newest_sound(small_run)
    model, _ = evaluate.load_run(small_run)
    checkpoint.load_into(newest, model)
    assert sorted(hashed) == ["state.pt", "tower0.pt", "tower1.pt"]
    changed = bytearray((newest / "tower1.pt").read_bytes())
    changed[len(changed) // 2] ^= 0x10  # inside the tensor data: same size, new content
    (newest / "tower1.new").write_bytes(bytes(changed))
    os.replace(newest / "tower1.new", newest / "tower1.pt")  # as a copy or a download over it would
    with pytest.raises(checkpoint.DamagedCheckpoint, match="tower1.pt differs from what was written"):
        checkpoint.load_into(newest, model)
    assert sorted(hashed) == ["state.pt", "tower0.pt", "tower1.pt", "tower1.pt"]
    monkeypatch.setattr(checkpoint, "SETTLED_NS", 10**15)  # every file changed "just now"
    monkeypatch.setattr(checkpoint, "_hashed", {})  # forget what was remembered above
    hashed.clear()
    checkpoint.check(newest, ["state.pt"])
    checkpoint.check(newest, ["state.pt"])
    assert hashed == ["state.pt", "state.pt"]


def test_a_damaged_checkpoint_is_reported_and_the_previous_sound_one_used(small_run, tiny_shards, capsys):
    newest = checkpoint.latest(small_run)
    assert [p.name for p in checkpoint.checkpoint_dirs(small_run)] == ["step-00000001", "step-00000002", "step-00000003"]
    assert json.loads((newest / checkpoint.DIGESTS).read_text()).keys() == {"state.pt", "tower0.pt", "tower1.pt"}
    flip_a_bit(newest / "tower0.pt")
    model, _ = evaluate.load_run(small_run)  # built for the model's shapes only
    with pytest.raises(checkpoint.DamagedCheckpoint, match="tower0.pt differs from what was written"):
        checkpoint.load_into(newest, model)
    capsys.readouterr()
    assert cli.main(["eval", str(small_run), "--workers", "0", "--views", "centre"]) == 0
    out = capsys.readouterr()
    assert "step-00000003 is damaged (tower0.pt" in out.err and "step-00000002" in out.out
    rec = json.loads((small_run / "eval" / "val-centre.json").read_text())
    assert rec["checkpoint"]["step"] == 2
    train(rundir.read_config(small_run, ["train.max_steps=4"]), tiny_shards, small_run, resume=True)
    assert "step-00000003 is damaged" in capsys.readouterr().err
    assert [r["step"] for r in rundir.read_metrics(small_run, "train")] == [1, 2, 3, 4]  # 3 and 4 from step 2 on
    (checkpoint.latest(small_run) / "tower1.pt").unlink()  # a file gone, not altered
    assert checkpoint.newest_sound(small_run, say=lambda text: None).name == "step-00000003"
    for ckpt in checkpoint.checkpoint_dirs(small_run):
        flip_a_bit(ckpt / "state.pt")
    capsys.readouterr()
    assert cli.main(["eval", str(small_run), "--workers", "0", "--again"]) == 2
    *warnings, last = capsys.readouterr().err.strip().splitlines()  # one warning per damaged checkpoint
    assert len(warnings) == 3 and all(w.startswith("warning:") for w in warnings)
    assert last.startswith("error: every checkpoint") and "damaged" in last


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_shard_cut_short_while_training_reads_it_is_one_line(tiny_shards, tmp_path, capsys, monkeypatch, workers):
    """No traceback and no bare 'Bus error': the shard is named, with what to do and how to go on."""
    from repro import train as train_module

    data_dir = shutil.copytree(tiny_shards, tmp_path / "data")
    victim = data_dir / "train-00001.h5"
    step = train_module.train_step

    def cut_after_the_first_step(run, x, y, stop):
        result = step(run, x, y, stop)
        if run.pos.step == 1:
            with open(victim, "r+b") as f:
                f.truncate(victim.stat().st_size // 2)
        return result

    monkeypatch.setattr(train_module, "train_step", cut_after_the_first_step)
    err = one_line_error(["train", "--data", str(data_dir), "--run-dir", str(tmp_path / "r"),
                          *sets(*SMALL, f"data.workers={workers}", "train.checkpoint_every=1")], capsys)
    # read cut short (workers=0), or found damaged when next opened (the workers had read ahead)
    assert str(victim) in err and ("cut short" in err or "damaged" in err) and "--resume" in err


@pytest.mark.parametrize("damage", ["{not json", "{}", '{"classes": []}', '{"classes": [{"index": 0}], "splits": {}}'])
def test_a_damaged_manifest_is_one_line_for_train_and_eval(tiny_shards, small_run, tmp_path, capsys, damage):
    data_dir = shutil.copytree(tiny_shards, tmp_path / "data")
    (data_dir / "manifest.json").write_text(damage)
    for argv in (["train", "--data", str(data_dir), "--run-dir", str(tmp_path / "r"), *sets(*SMALL)],
                 ["eval", str(small_run), "--data", str(data_dir), "--workers", "0"]):
        err = one_line_error(argv, capsys)
        assert "manifest.json" in err and "prepare the data again" in err, err


def test_bad_numbers_and_devices_are_one_line(small_run, capsys):
    image = str(REPO / "results" / "demo" / "curves.png")
    cases = [(["predict", str(small_run), image, "--top", "-1"], "--top"),
             (["predict", str(small_run), image, "--device", "banana"], "not a device"),
             (["eval", str(small_run), "--batch-size", "-3"], "below the minimum, 1"),
             (["eval", str(small_run), "--batch-size", "0"], "below the minimum, 1"),
             (["eval", str(small_run), "--workers", "-1"], "below the minimum, 0"),
             (["train", "--set", "optim.lr=nan"], "finite"),
             (["train", "--set", "train.device=banana"], "train.device")]
    import torch
    if not torch.cuda.is_available():
        cases += [(["predict", str(small_run), image, "--device", "cuda"], "no CUDA GPU"),
                  (["eval", str(small_run), "--device", "cuda:0"], "no CUDA GPU")]
    for argv, words in cases:
        assert words in one_line_error(argv, capsys), argv


def test_a_gpu_that_is_not_there_is_one_line_before_training(monkeypatch):
    """train.device = cuda:5 on a machine with two GPUs: refused by name, not a CUDA error later."""
    import torch

    from repro.parallel import make_placement
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for kind in ("single", "auto"):
        with pytest.raises(UserError, match=r"train.device = 'cuda:5': only 2 CUDA GPU\(s\) visible"):
            make_placement(kind, 2, "cuda:5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        make_placement("auto", 2, "cuda")


def test_a_newline_in_the_description_leaves_a_usable_run(tiny_shards, tmp_path, capsys):
    cfg = small_config(*SIGNAL, "train.max_steps=1")
    cfg.description = 'two\nlines "and" a \\ backslash'
    run = train(cfg, tiny_shards, tmp_path / "r")
    assert rundir.read_config(run).description == cfg.description
    assert cli.main(["eval", str(run), "--workers", "0", "--views", "centre"]) == 0
    train(rundir.read_config(run, ["train.max_steps=2"]), tiny_shards, run, resume=True)
    assert checkpoint.read_state(checkpoint.latest(run))["step"] == 2


def test_resume_with_nothing_left_and_unknown_runs_say_so(tiny_shards, tmp_path, capsys):
    with pytest.raises(UserError, match="holds no run to resume"):
        train_main(["--run-dir", str(tmp_path / "nothing"), "--resume"])
