"""What a run, a benchmark or a test session ran on: the one place that reads the CPU's name, its
vector instruction sets and what the libraries were allowed to use.

Absolute speeds belong to one machine: the same commit ran this project's CPU benchmarks 2-4x
slower on a second 2-core machine without AVX-512. Every measurement therefore carries this line.
torch picks its own kernels by `ATEN_CPU_CAPABILITY` (default, avx2, avx512) and oneDNN, which
runs the convolutions and matrix products, by `ONEDNN_MAX_CPU_ISA` (SSE41, AVX2, AVX512_CORE, ...);
both default to the best the CPU has.
"""
from __future__ import annotations

import datetime
import functools
import os
import platform
import socket
from pathlib import Path

_VECTOR_FLAGS = ("avx512f", "avx2", "avx", "sse4_1")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_vector_isa() -> str:
    """The widest vector extension the CPU reports: "avx512f", "avx2", ... or "" if unknown."""
    flags = set(_cpuinfo().get("flags", "").split())
    return next((f for f in _VECTOR_FLAGS if f in flags), "")


# ONEDNN_MAX_CPU_ISA's values, by prefix, as the widest extension they let oneDNN use
_ONEDNN_LIMITS = (("AVX512", "avx512f"), ("AVX10", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"),
                  ("SSE41", "sse4_1"), ("ALL", "avx512f"), ("DEFAULT", "avx512f"))


def onednn_vector_isa() -> str:
    """The widest vector extension oneDNN's kernels (the convolutions) may use here: the CPU's,
    held to ONEDNN_MAX_CPU_ISA where that is set lower; "" if the CPU's is unknown (not x86, or
    no /proc/cpuinfo)."""
    has = cpu_vector_isa()
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    cap = next((isa for prefix, isa in _ONEDNN_LIMITS if limit.startswith(prefix)), None)
    if not has or cap is None:
        return has
    return max(has, cap, key=_VECTOR_FLAGS.index)  # the narrower (the list runs widest first)


def instruction_sets() -> str:
    """What the kernels may use: torch's CPU capability and oneDNN's limit, e.g.
    'torch AVX2, oneDNN AVX2 (ONEDNN_MAX_CPU_ISA); CPU has avx512f'."""
    import torch  # here, not at import: `./run.sh bench` starts each benchmark's process with this module

    torch_isa = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
    onednn = f"oneDNN {limit} (ONEDNN_MAX_CPU_ISA)" if limit else "oneDNN the CPU's best"
    forced = " (ATEN_CPU_CAPABILITY)" if os.environ.get("ATEN_CPU_CAPABILITY") else ""
    has = cpu_vector_isa()
    return f"torch {torch_isa}{forced}, {onednn}" + (f"; CPU has {has}" if has else "")


def sha256_path() -> str:
    """How hashlib's SHA-256 (OpenSSL) runs here, which prepare's speed depends on (it hashes every
    image's bytes, every shard and every archive): by the CPU's SHA extensions (x86 `sha_ni`,
    2-3x faster), or in software. OPENSSL_ia32cap can hide the extensions from OpenSSL (the
    benchmarks use it to stand in for a CPU without them), so it is named when set."""
    flags = set(_cpuinfo().get("flags", "").split())
    if "sha_ni" in flags:
        how = "SHA-256 by the CPU's SHA extensions"
    elif flags:
        how = "SHA-256 in software (the CPU has no SHA extensions)"
    else:
        return ""
    mask = os.environ.get("OPENSSL_ia32cap")
    return how + (f" unless OPENSSL_ia32cap={mask} hides them" if mask and "sha_ni" in flags else "")


_PROC_CGROUP = Path("/proc/self/cgroup")
_CGROUP_FS = Path("/sys/fs/cgroup")


@functools.cache  # read once per process: a group's limit does not change under a running job
def cpu_quota() -> int | None:
    """The CPU time this process's control group may use, in whole CPUs rounded up (`docker run
    --cpus`, a Kubernetes CPU limit, a systemd CPUQuota), or None where there is no limit. Such a
    limit leaves every core visible (os.cpu_count, the affinity mask), so a process that starts
    one worker or thread per core there is throttled. cgroup v2's cpu.max or v1's
    cpu.cfs_quota_us / cpu.cfs_period_us, the smallest along the group and its ancestors; where the
    group's own directory is not mounted (a container sees its group as the root), the mount's."""
    try:
        return _cpu_quota(_PROC_CGROUP.read_text(errors="replace").splitlines())
    except (OSError, ValueError):  # no /proc (not Linux), or files not as expected: no limit known
        return None


def _cpu_quota(lines: list[str]) -> int | None:
    limits = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, group = fields
        if controllers == "":  # v2: one unified hierarchy
            root, files = _CGROUP_FS, ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1: the hierarchy that holds the cpu controller
            root = next((_CGROUP_FS / d for d in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu")
                         if (_CGROUP_FS / d).is_dir()), None)
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            if root is None:
                continue
        else:
            continue
        here = root / group.lstrip("/")
        if not here.is_dir():
            here = root
        for d in [here, *here.parents]:
            limit = _cgroup_limit(d, files)
            if limit is not None:
                limits.append(limit)
            if d == root:
                break
    return min(limits) if limits else None


def _cgroup_limit(d: Path, files: tuple[str, ...]) -> int | None:
    try:
        if len(files) == 1:  # v2: "max 100000" or "200000 100000"
            quota, period = (d / files[0]).read_text().split()[:2]
        else:  # v1: -1 for none
            quota, period = ((d / f).read_text().strip() for f in files)
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """The cores this process may use: its affinity mask (taskset, a scheduler's allocation),
    and no more than its control group's CPU limit (cpu_quota)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return min(cores, quota) if quota else cores


def fit_torch_threads() -> str:
    """Where a CPU limit (cpu_quota) is below torch's thread count and OMP_NUM_THREADS does not
    set one, lower torch's threads to the limit: more threads than the group may run make every
    parallel region wait for threads the system has paused. Returns what it did, or "". (The
    commands that compute with torch call it: repro/cli.py.)"""
    import torch

    quota = cpu_quota()
    if not quota or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() <= quota:
        return ""
    before = torch.get_num_threads()
    torch.set_num_threads(quota)
    return f"torch threads {before} -> {quota} (this process's CPU limit; OMP_NUM_THREADS overrides)"


def describe() -> str:
    """One line: CPU, cores, instruction sets, torch and its threads, GPUs, date."""
    import torch

    quota = cpu_quota()
    parts = [f"{cpu_name()}, {usable_cores()} of {os.cpu_count()} logical cores usable"
             + (f" (CPU limit {quota})" if quota else ""),
             instruction_sets(), f"torch {torch.__version__} with {torch.get_num_threads()} threads",
             f"Python {platform.python_version()}"]
    if sha256_path():
        parts.append(sha256_path())
    if torch.cuda.is_available():
        parts.append("CUDA: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    parts.append(datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    return "; ".join(parts)


def hardware() -> dict:
    """The same as data, for a run's provenance.json."""
    import torch

    return {"host": socket.gethostname(), "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
            "usable_cores": usable_cores(), "cpu_limit": cpu_quota(),
            "instruction_sets": instruction_sets(), "sha256": sha256_path(), "torch_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
