"""The benchmark runner (`./run.sh bench`): discovery by name, skipping, the table, --json, errors.
Fake benchmark scripts stand in for the real ones, so nothing here is timed."""
import json
import os
import textwrap

import pytest
import torch

from repro import bench
from repro.errors import UserError

FAKE = textwrap.dedent('''
    CALLS = []
    def run(quick=False):
        CALLS.append(quick)
        return [{"name": "fake_op", "what": "fake op fwd+bwd", "unit": "ms",
                 "project": 10.0, "baseline": 55.0, "ratio": 5.5, "repeats": 3}]
''')


@pytest.fixture
def bench_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    (tmp_path / "bench_lrn.py").write_text(FAKE)
    return tmp_path


def test_json_rows(bench_dir, capsys):
    assert bench.main(["lrn", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["fake_op"]
    assert {"name", "unit", "project", "baseline", "ratio"} <= set(rows[0])
    assert rows[0]["ratio"] == 5.5 and "torch" in rows[0]["machine"]


def test_table_with_machine_header(bench_dir, capsys):
    assert bench.main(["lrn"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("machine: ") and "threads" in out[0] and "torch" in out[0]
    assert out[1].split() == ["what", "this", "project", "baseline", "ratio", "unit"]
    assert out[3].split()[-4:] == ["10", "55", "5.50x", "ms"]


@pytest.mark.parametrize("flags, mask, expect", [
    ("fpu avx2 sha_ni", None, "SHA-256 by the CPU's SHA extensions"),
    ("fpu avx2 sha_ni", ":~0x20000000", "SHA-256 by the CPU's SHA extensions unless OPENSSL_ia32cap=:~0x20000000 hides them"),
    ("fpu avx2 avx512f", None, "SHA-256 in software (the CPU has no SHA extensions)"),
    ("fpu avx2 avx512f", ":~0x20000000", "SHA-256 in software (the CPU has no SHA extensions)"),
    (None, None, ""),
])
def test_machine_line_says_how_sha256_runs(monkeypatch, flags, mask, expect):
    """prepare hashes every image, shard and archive: without SHA extensions SHA-256 costs 2-3x
    more CPU, and prepare's ratio drops (README), so the machine line says which it was."""
    from repro import machine

    monkeypatch.setattr(machine, "_cpuinfo", lambda: {} if flags is None else {"flags": flags})
    if mask is None:
        monkeypatch.delenv("OPENSSL_ia32cap", raising=False)
    else:
        monkeypatch.setenv("OPENSSL_ia32cap", mask)
    assert machine.sha256_path() == expect
    line = machine.describe()
    assert (expect in line) if expect else ("SHA-256" not in line)
    assert machine.hardware()["sha256"] == expect


def test_all_by_default_and_missing_scripts_are_skipped(bench_dir, capsys):
    (bench_dir / "bench_loader.py").write_text(FAKE.replace("fake_op", "fake_loader"))
    assert bench.main(["--json"]) == 0
    captured = capsys.readouterr()
    assert [r["name"] for r in json.loads(captured.out)] == ["fake_op", "fake_loader"]
    skipped = [line for line in captured.err.splitlines() if "skipping" in line]
    assert len(skipped) == 2 and "bench_train_step.py" in skipped[0] and "bench_prepare.py" in skipped[1]


def test_quick_is_passed_on(bench_dir):
    module = bench.load("lrn")
    assert module.run(quick=True)[0]["name"] == "fake_op" and module.CALLS == [True]


def test_unknown_name_is_a_user_error(bench_dir):
    with pytest.raises(UserError, match="unknown benchmark 'lnr'"):
        bench.main(["lnr"])


def test_a_broken_benchmark_fails_without_hiding_the_others(bench_dir, capsys):
    (bench_dir / "bench_loader.py").write_text("def run(quick=False):\n    return [{'name': 'x'}]\n")
    assert bench.main(["loader", "lrn", "--json"]) == 1
    captured = capsys.readouterr()
    assert [r["name"] for r in json.loads(captured.out)] == ["fake_op"]
    assert "bench_loader.py" in captured.err and "lacks what, unit, project" in captured.err


def test_interleaved_medians_alternate_and_take_the_median():
    calls = []

    def make(name):
        return lambda: calls.append(name)

    medians = bench.interleaved_medians({"a": make("a"), "b": make("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())


def test_real_lrn_benchmark_row_at_a_small_size():
    module = bench.load("lrn")  # benchmarks/bench_lrn.py of this checkout
    row = module.measure("tiny", (2, 8, 5, 5), "lrn", repeats=1)
    assert set(bench.ROW_KEYS) <= set(row) and row["unit"] == "ms" and row["project"] > 0
    assert row["ratio"] == pytest.approx(row["baseline"] / row["project"])
    row = module.measure("tiny", (2, 3, 7, 7), "rnorm", repeats=1)
    assert "same-map" in row["what"]


@pytest.mark.slow
def test_real_train_step_benchmark_rows_at_a_small_size():
    """benchmarks/bench_train_step.py end to end at batch 2, one repetition: the rows, not the times."""
    module = bench.load("train_step")
    rows = module.measure(batch=2, repeats=1, with_plain=True)
    assert [r["name"] for r in rows] == ["train_step", "train_step_plain", "train_step_flops",
                                         "train_step_convolutions", "train_step_rest"]
    for r in rows:
        assert set(bench.ROW_KEYS) <= set(r) and r["project"] > 0 and r["baseline"] > 0
        # times: the baseline's over the project's; rates: the project's over the baseline's
        want = r["baseline"] / r["project"] if r["unit"] == "s/step" else r["project"] / r["baseline"]
        assert r["ratio"] == pytest.approx(want)
    assert 0 < rows[3]["share_project"] < 1 and 0 < rows[3]["share_baseline"] < 1
    assert rows[0]["unit"] == "img/s" and rows[2]["unit"] == "GFLOP/s"
    assert rows[2]["model_gflop_per_image"] == pytest.approx(4.1356, rel=1e-3)
    assert rows[2]["baseline"] == pytest.approx(max(rows[2]["matmul_gflop_s"].values()))


def test_train_step_switches_time_each_switch_against_its_flip():
    """bench_train_step.py --switches: one row per switch, the step as the benchmark sets it
    against the same step with that switch flipped (batch 2, one repetition: rows, not times)."""
    module = bench.load("train_step")
    rows = module.switch_rows(["fast_conv1", "grouped"], batch=2, repeats=1)
    assert [r["name"] for r in rows] == ["switch_fast_conv1", "switch_grouped"]
    assert "speed.fast_conv1 = True vs the same with speed.fast_conv1 = False" in rows[0]["what"]
    for r in rows:
        assert set(bench.ROW_KEYS) <= set(r) and r["project"] > 0 and r["baseline"] > 0
        assert r["ratio"] == pytest.approx(r["project"] / r["baseline"])
    with pytest.raises(ValueError, match="unknown switch 'keep_freed_memory'"):
        module.switch_rows(["keep_freed_memory"], batch=2, repeats=1)


def test_train_step_convolution_time_counts_convolutions_by_fourier_transforms():
    """The breakdown's time in convolutions includes a layer computed by Fourier transforms
    (speed.fft_conv2), which calls no convolution operator: without it conv2 would count as
    'the rest of the step'."""
    from repro.fast.fft_conv import FFTConv2d
    module = bench.load("train_step")
    conv = FFTConv2d(8, 8, 5, padding=2)
    x = torch.randn(4, 8, 27, 27)
    seconds = module.convolution_seconds(lambda: conv(x).sum().backward(), repeats=1)
    assert seconds > 0


def test_train_step_profiler_is_quiet_unless_the_user_asks(monkeypatch):
    """The breakdown's profiler is told to print nothing (a CUDA build of torch without a GPU
    prints two lines to stderr per profiled step otherwise); a KINETO_LOG_LEVEL already set stays."""
    module = bench.load("train_step")
    for before, after in ((None, "6"), ("1", "1")):
        if before is None:
            monkeypatch.delenv("KINETO_LOG_LEVEL", raising=False)
        else:
            monkeypatch.setenv("KINETO_LOG_LEVEL", before)
        module.convolution_seconds(lambda: torch.ones(2).sum(), repeats=1)
        assert os.environ.get("KINETO_LOG_LEVEL") == after


def test_train_step_cli_takes_a_batch_size(capsys):
    module = bench.load("train_step")
    assert module.main(["--switches", "grouped", "--batch", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["switch_grouped"] and "batch 2," in rows[0]["what"]
    with pytest.raises(SystemExit) as e:
        module.main(["--batch", "0"])
    assert e.value.code == 2 and "--batch must be at least 1" in capsys.readouterr().err


def test_prepare_profile_names_stages_it_finds():
    """benchmarks/bench_prepare.py --profile: every stage is found in the profile (a renamed
    Pillow or h5py function would read 0 ms) and the parts lie within the whole."""
    module = bench.load("prepare")
    stages = module.profile_stages(images=60)
    assert set(module.STAGES) < set(stages) and all(ms > 0 for ms in stages.values()), stages
    whole = stages["building shards, all of it"]
    assert sum(ms for name, ms in stages.items() if name in module.STAGES and name != "building shards, all of it") < whole


def test_prepare_write_costs_measure_both_cases():
    """benchmarks/bench_prepare.py --writes at a tiny size: both cases, as kernel milliseconds per
    image. Writing a 196,608-byte image into the page cache takes the kernel 0.02-0.2 ms; under
    10 ms holds on any machine and catches a slip of units (microseconds: 20-200). A case may
    read 0: where the kernel counts CPU time by ticks (4-10 ms), one 64-image write of 3 ms may
    get none of the process's system time, so neither is required to be positive."""
    costs = bench.load("prepare").write_costs(images=64, rounds=1, settle=0.0)
    assert sorted(costs) == ["new file, pages just freed", "new file, pages not in use recently"]
    assert all(isinstance(ms, float) and 0 <= ms < 10 for ms in costs.values()), costs  # NaN fails too
