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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe() -> str:
    """One line: CPU, cores, instruction sets, torch and its threads, GPUs, date."""
    import torch

    parts = [f"{cpu_name()}, {usable_cores()} of {os.cpu_count()} logical cores usable",
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
            "instruction_sets": instruction_sets(), "sha256": sha256_path(), "torch_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
