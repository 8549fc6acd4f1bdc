"""The GPU check (`./run.sh bench --gpu`, repro/gpu_check.py): its reduced CPU mode end to end
(every check and row present, the JSON written), the guards (a broken step, the time budget, an
interrupt), the derived 90-epoch figures, the command line; and, where a GPU is visible, the
real GPU mode's --quick variant.

On a CPU the device-side rows compare the CPU with itself (augmentation "on the device" is the
CPU's, the placements' kernels are the same): there they are a smoke test of the check's plumbing,
which cannot fail on numerics. The CUDA numerics are proven only where a GPU runs them: the
cuda-marked test below, and the committed runs in results/gpu/."""
import json
import math

import pytest
import torch

from repro import bench, estimate, gpu_check
from repro.errors import UserError

ALL_NAMES = [name for s in gpu_check.STEPS for name in s.names]
CUDA_ONLY = {"conv_float32_trainer", "train_tf32_vs_fp32", "two_devices_two_gpus", "matmul_tf32",
             "step_tf32", "step_towers_tf32", "lrn_conv1_fused", "pipeline_augment_cpu", "memory_fp32",
             "memory_bf16", "memory_two_gpus", "step_compile", "step_towers_compile", "step_best",
             "step_cudnn_benchmark", "flops_tf32"}


@pytest.fixture(scope="module")
def cpu_result(tmp_path_factory):
    """One run of the reduced mode, as `./run.sh bench --gpu` runs it on a machine without CUDA."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "results" / "cpu.json"
    return gpu_check.run(torch.device("cpu"), quick=False, out=out, tmp_root=str(tmp)), out


@pytest.mark.slow
def test_cpu_mode_produces_every_row_and_writes_the_json(cpu_result):
    result, out = cpu_result
    rows = {r["name"]: r for r in result["rows"]}
    assert [r["name"] for r in result["rows"]] == ALL_NAMES and len(ALL_NAMES) == len(set(ALL_NAMES))
    assert result["complete"] and result["mode"] == "cpu, reduced"
    on_disk = json.loads(out.read_text())
    assert on_disk["complete"] and [r["name"] for r in on_disk["rows"]] == ALL_NAMES
    assert not gpu_check.failures(result), [(n, rows[n]["note"]) for n in gpu_check.failures(result)]
    for name, r in rows.items():
        if name.startswith("epochs90_"):  # a narrow model on a CPU says nothing about ImageNet times
            assert r["status"] == "skipped" and "reduced mode" in r["note"]
        elif name in CUDA_ONLY:
            assert r["status"] == "skipped" and "CUDA" in r["note"], (name, r)
        else:
            assert r["status"] in ("pass", "ok"), (name, r)
    assert "gloo" in rows["distributed_pair"]["note"] and "stand-in" in rows["augment_device_train"]["note"]


@pytest.mark.slow
def test_cpu_mode_checks_hold_their_tolerances_and_speeds_are_numbers(cpu_result):
    result, _ = cpu_result
    rows = {r["name"]: r for r in result["rows"]}
    for r in rows.values():
        if r["kind"] == "check" and r["status"] == "pass":
            assert 0 <= r["error"] <= r["tolerance"]
        if r["kind"] == "speed" and r["status"] == "ok":
            assert r["project"] > 0 and math.isfinite(r["project"])
            if r["baseline"]:
                assert r["ratio"] == pytest.approx(r["project"] / r["baseline"] if r["unit"] in ("img/s", "TFLOP/s")
                                                   else r["baseline"] / r["project"])
    assert rows["augment_device_train"]["tolerance"] == 0.0  # bit-identity, as repro/augment.py claims
    assert rows["model_float64"]["tolerance"] == 1e-10 and rows["model_float32"]["tolerance"] == 1e-4
    assert rows["conv_float32"]["tolerance"] == pytest.approx(2 * 64 * 2.0 ** -24, rel=1e-3)
    assert rows["flops_fp32"]["project"] == pytest.approx(
        rows["step_default"]["project"] * estimate.train_flops(gpu_check.Context(
            gpu_check.REDUCED, torch.device("cpu"), None).config().model) / 1e12)
    assert set(result["profiles"]) == {"default", "towers_bf16_channels_last"} and result["profiles"]["default"]["top"]
    assert result["summary"]["fastest_faithful"].startswith("step_")


@pytest.mark.slow
def test_cpu_mode_table_names_every_row(cpu_result):
    result, out = cpu_result
    text = gpu_check.table(result, out)
    assert text.startswith("machine: ")
    for name in ALL_NAMES:
        assert f"\n{name} " in text
    assert f"written: {out}" in text and "no CUDA" in text


# ------------------------------------------------------------------------------ the guards

def fake_steps(calls):
    def ok(ctx):
        calls.append("ok")
        return [gpu_check.check_row("a_check", "a check", 0.5, 1.0)]

    def broken(ctx):
        calls.append("broken")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    def fast(ctx):
        calls.append("fast")
        return [gpu_check.speed_row("a_speed", "a speed", "img/s", 20.0, 10.0)]

    return [gpu_check.Step("check", "first", ("a_check",), ok),
            gpu_check.Step("speed", "second", ("b_one", "b_two"), broken),
            gpu_check.Step("speed", "third", ("a_speed", "a_missing"), fast)]


def test_a_broken_step_becomes_rows_and_the_rest_run(tmp_path):
    calls = []
    out = tmp_path / "r.json"
    result = gpu_check.run(torch.device("cpu"), False, out, str(tmp_path), steps=fake_steps(calls), log=lambda t: None)
    assert calls == ["ok", "broken", "fast"]
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["a_check", "b_one", "b_two", "a_speed", "a_missing"]
    assert rows["a_check"]["status"] == "pass" and rows["a_speed"]["ratio"] == 2.0
    assert rows["b_one"]["status"] == rows["b_two"]["status"] == "error"
    assert rows["b_one"]["note"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert rows["a_missing"]["status"] == "skipped"
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert gpu_check.failures(result) == ["b_one", "b_two"]


def test_the_time_budget_skips_speed_steps_not_checks(tmp_path):
    calls = []
    result = gpu_check.run(torch.device("cpu"), False, tmp_path / "r.json", str(tmp_path), budget_s=0.0,
                           steps=fake_steps(calls), log=lambda t: None)
    assert calls == ["ok"]
    skipped = [r for r in result["rows"] if r["status"] == "skipped"]
    assert [r["name"] for r in skipped] == ["b_one", "b_two", "a_speed", "a_missing"]
    assert all("time budget" in r["note"] for r in skipped)


def test_an_interrupt_leaves_what_was_measured(tmp_path):
    def interrupted(ctx):
        raise KeyboardInterrupt

    steps = fake_steps([])[:1] + [gpu_check.Step("speed", "stopped", ("x",), interrupted)]
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        gpu_check.run(torch.device("cpu"), False, out, str(tmp_path), steps=steps, log=lambda t: None)
    saved = json.loads(out.read_text())
    assert not saved["complete"] and [r["name"] for r in saved["rows"]] == ["a_check"]


def test_check_rows_pass_only_within_a_finite_tolerance():
    assert gpu_check.check_row("c", "", 1e-7, 1e-6)["status"] == "pass"
    assert gpu_check.check_row("c", "", 2e-6, 1e-6)["status"] == "FAIL"
    assert gpu_check.check_row("c", "", float("nan"), 1e-6)["status"] == "FAIL"
    assert gpu_check.check_row("c", "", 0.0, 0.0)["status"] == "pass"
    assert gpu_check.speed_row("s", "", "ms", 2.0, 8.0, higher_is_better=False)["ratio"] == 4.0


def test_json_is_strict_even_with_nan():
    text = json.dumps(gpu_check._plain({"a": float("nan"), "b": [float("inf"), 1.5], "c": torch.float32}))
    assert json.loads(text) == {"a": "nan", "b": ["inf", 1.5], "c": "torch.float32"}


def test_default_out_is_the_sanitised_device_name():
    cuda = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    assert gpu_check.default_out(cuda, quick=False).parts == ("results", "gpu", "NVIDIA-H100-80GB-HBM3.json")
    assert gpu_check.default_out(cuda, quick=True).name == "NVIDIA-H100-80GB-HBM3.quick.json"
    cpu = {"type": "cpu", "name": "AMD EPYC 7B13 64-Core Processor (x/y)"}
    assert gpu_check.default_out(cpu, False).name == "cpu-AMD-EPYC-7B13-64-Core-Processor-x-y.json"


# ------------------------------------------------------------------------------ 90 epochs

MEASURED = {"step_default": 4000.0, "step_channels_last": 5000.0, "step_bf16_channels_last": 9000.0,
            "step_tf32": 7000.0, "pipeline_paper": 3000.0, "pipeline_paper_wait": 0.25, "matmul_fp32": 50.0,
            "flops_fp32": 16.5, "busy_share_default": 0.8, "step_trainer": 3500.0}


def test_ninety_epochs_from_the_measured_rates_beside_the_estimate():
    out = gpu_check.ninety_epochs(MEASURED, "NVIDIA H100 80GB HBM3")
    assert out["settings"] == {"epochs90_default": "step_default", "epochs90_fastest_faithful": "step_channels_last",
                               "epochs90_fastest": "step_bf16_channels_last", "epochs90_trainer": "pipeline_paper"}
    assert out["hours"]["epochs90_default"] == pytest.approx(1_281_167 * 90 / 4000 / 3600)
    assert out["hours"]["epochs90_trainer"] == pytest.approx(1_281_167 * 90 / 3000 / 3600)
    want = estimate.estimate(estimate.one_gpu_setup("NVIDIA H100 80GB HBM3"), estimate.ModelConfig())
    assert out["estimate"]["img_per_s"] == pytest.approx(want["img_per_s"])
    assert "67 TFLOP/s" in out["estimate"]["assumes"] and "3350 GB/s" in out["estimate"]["assumes"]
    text = out["explanation"]
    assert f"{want['img_per_s']:,.0f} img/s" in text and "4,000 img/s" in text
    assert f"{4000 / want['img_per_s']:.2f}x the estimate" in text and "33% of the float32 matmul rate" in text
    assert "busy 80%" in text and "waiting for data 25%" in text


def test_ninety_epochs_without_figures_for_the_gpu_says_so():
    out = gpu_check.ninety_epochs({"step_default": 100.0}, "Some Future GPU")
    assert out["estimate"] is None and "no figures" in out["explanation"]
    assert out["hours"]["epochs90_default"] == pytest.approx(1_281_167 * 90 / 100 / 3600)
    assert out["settings"]["epochs90_fastest"] == "step_default" and "epochs90_trainer" not in out["hours"]


# ------------------------------------------------------------------------------ the command line

def test_bench_gpu_runs_the_check_and_prints_one_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "STEPS", fake_steps([])[:1])
    out = tmp_path / "deep" / "r.json"
    assert bench.main(["--gpu", "--device", "cpu", "--out", str(out), "--tmp", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "a_check" in printed and "tol 1" in printed
    assert json.loads(out.read_text())["complete"]


def test_bench_gpu_exits_1_when_a_step_broke(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "STEPS", fake_steps([]))
    assert bench.main(["--gpu", "--device", "cpu", "--out", str(tmp_path / "r.json")]) == 1
    assert "b_one, b_two" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.json"], "--out belongs to the GPU check: add --gpu"),
    (["--device", "cpu"], "--device belongs to the GPU check"),
    (["--gpu", "lrn"], "drop NAME"),
    (["--gpu", "--model"], "drop --model"),
    (["--gpu", "--budget", "0"], "positive number of seconds"),
    (["--gpu", "--device", "cpu", "--tmp", "/nonexistent/dir"], "--tmp /nonexistent/dir: no such directory"),
])
def test_bench_gpu_argument_errors_are_one_line(argv, message):
    with pytest.raises(UserError, match=message):
        bench.main(argv)


def test_an_unwritable_out_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "STEPS", [])
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write"):
        bench.main(["--gpu", "--device", "cpu", "--out", str(tmp_path / "file" / "r.json")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        bench.main(["--gpu", "--device", "cuda"])


def test_help_explains_the_gpu_check(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = capsys.readouterr().out
    for words in ("--gpu", "results/gpu/<gpu-name>.json", "--quick", "reduced mode", "bit-identity",
                  "torch.compile", "90 epochs", "--budget", "--profile"):
        assert words in text


# ------------------------------------------------------------------------------ on a GPU

@pytest.mark.cuda
def test_gpu_quick_mode_proves_the_cuda_paths(tmp_path):
    """The real GPU mode's --quick variant: every row present, no step broken, every check within
    its tolerance (conv_float32_trainer included: the trainer pins float32 convolutions)."""
    result = gpu_check.run(torch.device("cuda:0"), quick=True, out=tmp_path / "r.json", tmp_root=str(tmp_path))
    assert [r["name"] for r in result["rows"]] == ALL_NAMES and result["complete"]
    bad = gpu_check.failures(result)
    assert not bad, [(r["name"], r["note"]) for r in result["rows"] if r["name"] in bad]
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["step_default"]["status"] == "ok" and rows["memory_fp32"]["status"] == "ok"


# ------------------------------------------------------------------------------ its data and baseline

def test_random_shards_are_read_by_the_loader(tmp_path):
    """data_prep/synthetic.py: shards the readers accept, labels over every class, stats on 0-255."""
    from data_prep import shards, synthetic
    from repro import data
    from repro.config import Config

    root = synthetic.random_shards(tmp_path / "s", images=10, classes=3, shard_size=4)
    assert [p.name for p in shards.list_shards(root, "train")] == ["train-00000.h5", "train-00001.h5", "train-00002.h5"]
    split = data.open_split(root, "train")
    assert len(split) == 10 and split.counts.tolist() == [4, 4, 2]
    stats = shards.read_stats(root)
    assert stats.mean.shape == (256, 256, 3) and 100 < stats.mean.mean() < 155
    assert (stats.eigenvalues[:-1] >= stats.eigenvalues[1:]).all() and stats.eigenvalues[-1] > 0
    cfg = Config()
    cfg.data.batch_size, cfg.data.workers = 4, 0
    batches = list(data.train_batches(root, cfg, epoch=0))
    assert [len(b) for b in batches] == [4, 4, 2] and all(b.images.shape[1:] == (224, 224, 3) for b in batches)
    assert set(torch.cat([b.labels for b in batches]).tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="two classes"):
        synthetic.random_shards(tmp_path / "t", images=4, classes=1)


def test_naive_baseline_follows_the_config_widths():
    """repro/baseline.py: the dense net at the reduced widths (the CPU mode's) and the paper's."""
    from repro.baseline import naive_alexnet

    cfg = gpu_check.Context(gpu_check.REDUCED, torch.device("cpu"), None).config()
    net = naive_alexnet(cfg.model)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 48, 48, 32] and convs[1].in_channels == 16
    assert net[-1].out_features == 10
    with torch.no_grad():
        assert net(torch.randn(2, 3, 224, 224)).shape == (2, 10)
    dense = sum(p.numel() for p in naive_alexnet().parameters())
    layers = [(3 * 11 * 11, 96), (96 * 25, 256), (256 * 9, 384), (384 * 9, 384), (384 * 9, 256),
              (9216, 4096), (4096, 4096), (4096, 1000)]  # (inputs per output, outputs), all maps read
    assert dense == sum((n + 1) * out for n, out in layers)
