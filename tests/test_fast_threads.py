"""repro.fast.threads: every part done once, on single-threaded workers, errors surface, and the
caller's thread settings are left as they were."""
import threading

import time

import pytest
import torch

from repro.fast import threads
from repro.fast.threads import run_parts


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_every_part_once_on_single_threaded_workers(two_threads):
    seen, workers, lock = [], set(), threading.Lock()
    together = threading.Barrier(2, timeout=10)  # passes only if two workers run side by side

    def work(mine):
        together.wait()
        with lock:
            seen.extend(mine)
            workers.add((threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()))

    run_parts(work, range(11))
    assert sorted(seen) == list(range(11))
    assert len(workers) == 2
    assert all(n == 1 and inference for _, n, inference in workers)
    assert threading.get_ident() not in {t for t, _, _ in workers}


def test_caller_and_later_threads_keep_their_thread_count(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "_pool", None)  # so that this test starts the workers
    run_parts(lambda mine: None, range(4))
    assert torch.get_num_threads() == 2
    counts = []
    t = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert counts == [2]


def test_one_thread_runs_inline():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        idents = []
        run_parts(lambda mine: idents.append(threading.get_ident()), range(5))
        assert idents == [threading.get_ident()]
    finally:
        torch.set_num_threads(before)


def test_errors_reach_the_caller_after_all_parts_finish(two_threads):
    done = []

    def work(mine):
        if 0 in mine:
            raise ValueError("part 0 failed")
        time.sleep(0.2)  # still busy when part 0 fails
        done.extend(mine)

    with pytest.raises(ValueError, match="part 0"):
        run_parts(work, range(6))
    assert sorted(done) == [1, 3, 5]  # the other worker's parts (round-robin split) all ran
