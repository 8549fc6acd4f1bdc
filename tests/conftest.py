"""Shared fixtures: a tiny prepared dataset written once per test session (tests/tiny_data.py),
and a tiny run trained on it."""
from __future__ import annotations

import pytest

from tests.tiny_data import SIGNAL, make_tiny_shards, small_config


def pytest_configure(config):
    """Under pytest-xdist (`./run.sh test -n auto`), each worker process gets its share of the
    usable cores as torch threads, and so do the commands its tests start (OMP_NUM_THREADS is
    inherited). Left alone, every worker runs one thread per core: on a 16-core GPU machine 14
    workers ran 224 threads on 16 cores, and the heaviest tests ran past pytest-timeout. Here 7
    copies of one model test took 84 s with 2 threads each on 2 cores and 35 s with 1.
    OMP_NUM_THREADS set by the user stands."""
    import os

    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    from repro import machine

    share = max(1, machine.usable_cores() // max(1, int(workers)))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: skipped, with the reason, where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU; torch {torch.__version__} sees none")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    """The first lines of every test run: what the numerical tests ran on."""
    from repro import machine

    return f"machine: {machine.describe()}"


@pytest.fixture(scope="session", autouse=True)
def plain_wide_help():
    """Help and usage text as on a wide terminal without colour, whatever the environment: argparse
    wraps help to COLUMNS (or the terminal's width), so a narrow one splits the phrases tests look
    for, and Python >= 3.14 colours help, usage and tracebacks where FORCE_COLOR or PYTHON_COLORS=1
    is set (as CI often does), which puts escape codes inside them. Set in os.environ, so the
    commands tests run as subprocesses get the same; for the whole session, so session fixtures too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "200")
        for name in ("FORCE_COLOR", "PYTHON_COLORS", "CLICOLOR_FORCE"):
            mp.delenv(name, raising=False)
        mp.setenv("NO_COLOR", "1")
        yield


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A read-only tiny prepared directory: 4 classes, 40 train images in 3 uneven shards, 12 val.

    Tests must not modify it; a test that needs to damage data makes its own copy.
    """
    return make_tiny_shards(tmp_path_factory.mktemp("tiny_shards"))


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, tmp_path_factory):
    """A run of the small config (with SIGNAL's init) trained for 6 steps (one epoch of 5 steps, its validation, one
    more step): config, provenance, metrics and checkpoints as a real run leaves them.

    Evaluation may add records to its eval/ directory; anything else that changes it copies it.
    """
    from repro.train import train

    return train(small_config(*SIGNAL, "train.max_steps=6"), tiny_shards, tmp_path_factory.mktemp("runs") / "tiny")
