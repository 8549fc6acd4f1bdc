"""What a process may use of the machine (repro/machine.py): a control group's CPU limit, which
leaves every core visible, read from cgroup v1 and v2 files laid out as Linux lays them out."""
import os

import pytest
import torch

from repro import cli, machine


@pytest.fixture
def cgroups(tmp_path, monkeypatch):
    """write(proc_cgroup, {relative path: content}) lays out /proc/self/cgroup and /sys/fs/cgroup."""
    monkeypatch.setattr(machine, "_PROC_CGROUP", tmp_path / "proc_self_cgroup")
    monkeypatch.setattr(machine, "_CGROUP_FS", tmp_path / "cgroup")
    machine.cpu_quota.cache_clear()  # cpu_quota reads the files once per process

    def write(proc: str, fs: dict[str, str]) -> None:
        (tmp_path / "proc_self_cgroup").write_text(proc)
        for path, content in fs.items():
            (tmp_path / "cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "cgroup" / path).write_text(content)
    yield write
    machine.cpu_quota.cache_clear()  # not this test's files for the next


@pytest.mark.parametrize("proc, fs, quota", [
    # cgroup v2 in a container (its group is the root): docker run --cpus 2
    ("0::/\n", {"cpu.max": "200000 100000\n"}, 2),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # no limit
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads may run at once
    ("0::/\n", {"cpu.max": "50000 100000\n"}, 1),
    # v2 on a host: the group's own limit and its parent's, the smaller counts
    ("0::/user.slice/job\n", {"cpu.max": "max 100000", "user.slice/cpu.max": "300000 100000",
                              "user.slice/job/cpu.max": "max 100000"}, 3),
    ("0::/user.slice/job\n", {"user.slice/cpu.max": "300000 100000", "user.slice/job/cpu.max": "100000 100000"}, 1),
    # v2, the group's directory not mounted here: the mount's own file
    ("0::/kubepods/pod1/c1\n", {"cpu.max": "400000 100000"}, 4),
    # v1, as Docker and Kubernetes set it: cpu,cpuacct hierarchy
    ("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n2:cpuset:/docker/abc\n",
     {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}, 1),
    ("4:cpu,cpuacct:/docker/abc\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                     "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ("4:cpu:/job\n", {"cpu/job/cpu.cfs_quota_us": "250000", "cpu/job/cpu.cfs_period_us": "100000"}, 3),
    ("0::/\n", {}, None),  # no cpu controller files: no limit known
    ("\nnot a cgroup line\n0::/\n", {"cpu.max": "200000 100000"}, 2),  # odd lines are passed over
    ("0::/\n", {"cpu.max": ""}, None),  # files not as expected: no limit known
    ("0::/\n", {"cpu.max": "max"}, None),
    ("4:cpu:/job\n", {"cpu/job/cpu.cfs_quota_us": "50000"}, None),  # no period file
])
def test_cpu_quota_from_cgroup_files(cgroups, proc, fs, quota):
    cgroups(proc, fs)
    assert machine.cpu_quota() == quota


def test_no_proc_cgroup_means_no_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_PROC_CGROUP", tmp_path / "absent")
    machine.cpu_quota.cache_clear()
    try:
        assert machine.cpu_quota() is None
    finally:
        machine.cpu_quota.cache_clear()


def test_usable_cores_and_prepares_workers_respect_the_limit(monkeypatch):
    from data_prep import prepare

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(machine, "cpu_quota", lambda: 1)
    assert machine.usable_cores() == 1 and prepare.default_workers() == 1
    assert "1 of" in machine.describe() and "(CPU limit 1)" in machine.describe()
    monkeypatch.setattr(machine, "cpu_quota", lambda: cores + 8)  # a limit above the cores: the cores
    assert machine.usable_cores() == cores
    monkeypatch.setattr(machine, "cpu_quota", lambda: None)
    assert machine.usable_cores() == cores and "CPU limit" not in machine.describe()


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_torch_threads_fit_a_cpu_limit_unless_omp_num_threads_says_otherwise(threads, monkeypatch, capsys):
    if threads < 2:
        torch.set_num_threads(2)
    start = torch.get_num_threads()
    monkeypatch.setattr(machine, "cpu_quota", lambda: 1)
    monkeypatch.setenv("OMP_NUM_THREADS", str(start))  # the user's choice stands
    assert machine.fit_torch_threads() == "" and torch.get_num_threads() == start
    monkeypatch.delenv("OMP_NUM_THREADS")
    # through the command line, as `./run.sh eval` starts: silently (a bad argument is still one line)
    assert cli.main(["eval", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert torch.get_num_threads() == 1
    torch.set_num_threads(start)
    assert machine.fit_torch_threads() == f"torch threads {start} -> 1 (this process's CPU limit; OMP_NUM_THREADS overrides)"
    assert torch.get_num_threads() == 1
    assert machine.fit_torch_threads() == ""  # nothing more to do
    monkeypatch.setattr(machine, "cpu_quota", lambda: None)
    torch.set_num_threads(start)
    assert machine.fit_torch_threads() == "" and torch.get_num_threads() == start


@pytest.mark.parametrize("workers, cores, share", [(None, 8, None), ("3", 8, 2), ("4", 2, 1), ("1", 6, 6)])
def test_pytest_xdist_workers_share_the_cores_as_torch_threads(threads, monkeypatch, workers, cores, share):
    """tests/conftest.py: under pytest-xdist (PYTEST_XDIST_WORKER_COUNT) each worker runs its share
    of the usable cores, at least one, and tells the commands its tests start (OMP_NUM_THREADS);
    without xdist, or where the user set OMP_NUM_THREADS, nothing changes."""
    from tests import conftest

    monkeypatch.setattr(machine, "usable_cores", lambda: cores)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's choice stands
    if workers:
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    else:
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    torch.set_num_threads(5)
    conftest.pytest_configure(None)
    assert torch.get_num_threads() == 5 and os.environ["OMP_NUM_THREADS"] == "5"
    monkeypatch.delenv("OMP_NUM_THREADS")  # restored afterwards to what it was before the test
    conftest.pytest_configure(None)
    if share is None:
        assert torch.get_num_threads() == 5 and "OMP_NUM_THREADS" not in os.environ
    else:
        assert torch.get_num_threads() == share and os.environ["OMP_NUM_THREADS"] == str(share)


@pytest.mark.parametrize("cpu, limit, want", [
    ("avx512f", None, "avx512f"), ("avx512f", "AVX2", "avx2"), ("avx512f", "avx2_vnni", "avx2"),
    ("avx512f", "SSE41", "sse4_1"), ("avx512f", "AVX512_CORE_AMX", "avx512f"), ("avx2", "AVX512_CORE", "avx2"),
    ("avx2", None, "avx2"), ("", "AVX2", ""), ("avx512f", "nonsense", "avx512f")])
def test_onednn_vector_isa_is_the_cpus_held_to_onednn_max_cpu_isa(cpu, limit, want, monkeypatch):
    monkeypatch.setattr(machine, "cpu_vector_isa", lambda: cpu)
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert machine.onednn_vector_isa() == want
