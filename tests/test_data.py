"""The shard reader and the training / evaluation streams (repro.data) on the tiny dataset."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep import shards
from repro import augment, data
from repro.config import Config
from repro.errors import UserError

N_TRAIN = 40  # tests/conftest.py: 40 train images over 3 uneven shards, 12 val, 4 classes


@pytest.fixture(scope="module")
def source(tiny_shards):
    """Every split's images [N, 256, 256, 3] and labels, shards concatenated in index order."""
    out = {}
    for split in ("train", "val"):
        paths = shards.list_shards(tiny_shards, split)
        out[split] = (np.concatenate([np.asarray(shards.map_images(shards.read_meta(p))) for p in paths]),
                      np.concatenate([shards.read_labels(p) for p in paths]))
    return out


def _cfg(batch_size=16, workers=0, seed=0, **augment):
    cfg = Config()
    cfg.data.batch_size, cfg.data.workers, cfg.data.seed = batch_size, workers, seed
    for k, v in augment.items():
        setattr(cfg.augment, k, v)
    return cfg


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        and torch.equal(x.offsets, y.offsets) and torch.equal(x.alphas, y.alphas)
        and torch.equal(x.indices, y.indices) for x, y in zip(a, b))


def test_steps_per_epoch_keeps_the_last_partial_batch(tiny_shards):
    assert data.steps_per_epoch(tiny_shards, _cfg(16)) == 3  # 16 + 16 + 8
    assert data.steps_per_epoch(tiny_shards, _cfg(40)) == 1
    assert data.steps_per_epoch(tiny_shards, _cfg(16), parts=2) == 2  # data parallel: equal shares only
    with pytest.raises(UserError, match="divide"):
        data.steps_per_epoch(tiny_shards, _cfg(16), parts=3)


def test_two_workers_read_every_image_once_and_crops_are_slices_of_it(tiny_shards, source):
    images, labels = source["train"]
    batches = list(data.train_batches(tiny_shards, _cfg(16, workers=2), epoch=0))
    assert [len(b) for b in batches] == [16, 16, 8]
    indices = torch.cat([b.indices for b in batches]).numpy()
    assert sorted(indices) == list(range(N_TRAIN))
    for b in batches:
        assert b.images.dtype == torch.uint8 and b.images.shape[1:] == (224, 224, 3)
        np.testing.assert_array_equal(b.labels.numpy(), labels[b.indices.numpy()])
        for img, idx, (top, left, mirrored) in zip(b.images.numpy(), b.indices.numpy(), b.offsets.numpy()):
            expected = images[idx, top:top + 224, left:left + 224]
            np.testing.assert_array_equal(img, expected[:, ::-1] if mirrored else expected)
    # The worker count changes nothing.
    assert _same(batches, list(data.train_batches(tiny_shards, _cfg(16, workers=0), epoch=0)))


def test_same_seed_and_epoch_give_the_same_stream_and_others_differ(tiny_shards):
    run = lambda seed, epoch: list(data.train_batches(tiny_shards, _cfg(16, seed=seed), epoch))
    first = run(0, 0)
    assert _same(first, run(0, 0))
    for other in (run(0, 1), run(1, 0)):
        assert not torch.equal(torch.cat([b.indices for b in first]), torch.cat([b.indices for b in other]))
        assert not torch.equal(first[0].offsets, other[0].offsets)


def test_epoch_order_shuffles_shards_and_positions_inside_them():
    counts = [16, 13, 11]
    shard, pos = data.epoch_order(counts, seed=0, epoch=0)
    runs = [shard[0]] + [s for a, s in zip(shard, shard[1:]) if s != a]
    assert sorted(runs) == [0, 1, 2]  # each shard read as one run, in a shuffled order
    for j, n in enumerate(counts):
        assert sorted(pos[shard == j]) == list(range(n))
    orders = {tuple(data.epoch_order(counts, 0, e)[0][[0, -1]]) for e in range(10)}
    assert len(orders) > 1  # the shard order changes from epoch to epoch
    assert not all(np.array_equal(pos[shard == j], np.arange(n)) for j, n in enumerate(counts))


@pytest.mark.parametrize("k", [1, 2])
def test_starting_at_step_k_gives_the_batches_of_a_run_through_k(tiny_shards, k):
    cfg = _cfg(16)
    full = list(data.train_batches(tiny_shards, cfg, epoch=3))
    assert _same(list(data.train_batches(tiny_shards, cfg, epoch=3, start_step=k)), full[k:])


def test_data_parallel_parts_together_are_the_global_stream(tiny_shards):
    cfg = _cfg(16)
    whole = list(data.train_batches(tiny_shards, cfg, epoch=0))
    p0 = list(data.train_batches(tiny_shards, cfg, epoch=0, part=0, parts=2))
    p1 = list(data.train_batches(tiny_shards, cfg, epoch=0, part=1, parts=2))
    assert [len(b) for b in p0] == [len(b) for b in p1] == [8, 8]  # the partial third batch is dropped
    joined = [data.Batch(*(torch.cat([getattr(a, f), getattr(b, f)])
                           for f in ("images", "labels", "offsets", "alphas", "indices")))
              for a, b in zip(p0, p1)]
    assert _same(joined, whole[:2])


def test_crop_and_mirror_draws_in_the_stream_cover_0_to_32_and_half():
    cfg = _cfg(128)
    offsets = np.concatenate([data.augment_draws(cfg, 0, s)[0] for s in range(100)])
    assert set(offsets[:, 0]) == set(range(33)) and set(offsets[:, 1]) == set(range(33))
    assert 0.48 < offsets[:, 2].mean() < 0.52
    assert not np.array_equal(data.augment_draws(cfg, 0, 0)[0], data.augment_draws(cfg, 0, 1)[0])
    no_flip = np.concatenate([data.augment_draws(_cfg(128, flip=False), 0, s)[0] for s in range(5)])
    assert not no_flip[:, 2].any()


def test_lighting_alphas_follow_the_config_and_switch_off_from_the_given_epoch():
    cfg = _cfg(128, lighting="code145", lighting_std=0.25, lighting_off_epoch=3)
    for epoch in (0, 2):
        _, alphas, on = data.augment_draws(cfg, epoch, 0)
        assert on and alphas.dtype == np.float32
    alphas = np.concatenate([data.augment_draws(cfg, 0, s)[1] for s in range(50)])
    np.testing.assert_allclose(alphas.std(0), 0.25, rtol=0.05)
    assert np.all(np.abs(alphas.mean(0)) < 4 * 0.25 / np.sqrt(len(alphas)))
    for epoch in (3, 10):
        _, alphas, on = data.augment_draws(cfg, epoch, 0)
        assert not on and not alphas.any()
    _, alphas, on = data.augment_draws(_cfg(128, lighting="none"), 0, 0)
    assert not on and not alphas.any()


@pytest.mark.parametrize("views,workers", [("ten", 2), ("centre", 0)])
def test_eval_batches_are_the_views_of_the_split_in_file_order(tiny_shards, source, views, workers):
    images, labels = source["val"]
    batches = list(data.eval_batches(tiny_shards, "val", views, batch_size=5, workers=workers))
    assert [len(lab) for _, lab, _ in batches] == [5, 5, 2]
    np.testing.assert_array_equal(torch.cat([lab for _, lab, _ in batches]).numpy(), labels)
    got = torch.cat([imgs for imgs, _, _ in batches]).numpy()
    expected = augment.ten_view(images) if views == "ten" else augment.centre_crop(images)[:, None]
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(batches[0][2].numpy(), data.view_offsets(views))


def test_eval_batches_cross_shard_boundaries_as_contiguous_runs(tiny_shards, source):
    images, _ = source["train"]  # 3 shards of 16, 13, 11: batches of 7 straddle both boundaries
    got = torch.cat([imgs for imgs, _, _ in data.eval_batches(tiny_shards, "train", "centre", 7, 0)])
    np.testing.assert_array_equal(got[:, 0].numpy(), augment.centre_crop(images))


def test_class_names_come_from_the_manifest(tiny_shards):
    assert data.class_names(tiny_shards) == [(f"n{10000000 + 1111 * c:08d}", f"class {c}")
                                             for c in range(4)]


def test_missing_or_damaged_data_is_a_one_line_error_naming_the_file(tiny_shards, tmp_path):
    cfg = _cfg(16)
    with pytest.raises(UserError, match="no prepared data"):
        data.train_batches(tmp_path / "nowhere", cfg, 0)
    root = tmp_path / "copy"
    shutil.copytree(tiny_shards, root)
    with pytest.raises(UserError, match="'test' split"):
        data.eval_batches(root, "test", "centre", 4, 0)
    shard = root / "train-00001.h5"
    with open(shard, "r+b") as f:  # cut the image block short
        f.truncate(shard.stat().st_size - 1000)
    with pytest.raises(UserError, match="train-00001.h5"):
        data.train_batches(root, cfg, 0)
    shard.write_bytes(b"not an hdf5 file")
    with pytest.raises(UserError, match="train-00001.h5"):
        data.train_batches(root, cfg, 0)
    shard.unlink()
    with pytest.raises(UserError, match="train-00001.h5 is missing"):
        data.train_batches(root, cfg, 0)
    (root / shards.MANIFEST).unlink()
    with pytest.raises(UserError, match="manifest.json"):
        data.steps_per_epoch(root, cfg)


def test_batch_to_moves_every_tensor_and_keeps_the_flag():
    b = data.Batch(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64),
                   torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3), torch.arange(2), False)
    moved = b.to("meta")
    assert all(t.device.type == "meta" for t in (moved.images, moved.labels, moved.offsets,
                                                 moved.alphas, moved.indices))
    assert moved.lighting is False and b.images.device.type == "cpu"


@pytest.mark.parametrize("workers, batch", [(0, 8), (2, 4)])
def test_the_trainers_ring_of_reused_buffers_gives_the_same_batches(tiny_shards, workers, batch):
    """reuse_buffers=True (the trainer's loader): the same batches as fresh buffers, read while
    they are valid, from a ring of slots that comes round again (no new shared memory per batch)."""
    cfg = _cfg(batch, workers=workers)  # more batches than slots, so that the ring comes round
    fresh = list(data.train_batches(tiny_shards, cfg, epoch=1))
    seen, pointers = [], []
    for b in data.train_batches(tiny_shards, cfg, epoch=1, reuse_buffers=True):
        seen.append(data.Batch(b.images.clone(), b.labels, b.offsets, b.alphas, b.indices, b.lighting))
        pointers.append(b.images.data_ptr())
    assert _same(seen, fresh)
    slots = workers * data.PREFETCH + 3
    assert len(set(pointers)) == min(slots, len(fresh))  # one slot per batch, until they come round
    assert len(fresh) > slots and pointers[slots] == pointers[0]


# ------------------------------------------------------------------------- shared memory

def _shm_free(monkeypatch, free: int):
    """/dev/shm with `free` bytes left, as a container's small one (Docker's default: 64 MB)."""
    real = data.os.statvfs

    class Small:
        f_frsize, f_bavail = 4096, free // 4096

    monkeypatch.setattr(data.os, "statvfs", lambda path: Small() if path == data.SHM_DIR else real(path))


def test_too_little_shared_memory_for_the_loader_is_one_line_before_it_starts(tiny_shards, monkeypatch):
    """Loader workers hand their batches over in /dev/shm: where it is smaller than the batches in
    flight, the loaders refuse in one line saying how much they need and how to get it, instead of
    torch's traceback about shm_open or a worker killed by SIGBUS. Without workers nothing is
    shared, and nothing is asked."""
    batch = 16 * 224 * 224 * 3
    _shm_free(monkeypatch, 4 * batch)
    with pytest.raises(UserError, match=r"^not enough shared memory for the data loader's workers: they need "
                                        r"about 16\.9 MB \(7 batches of 2\.4 MB\), and /dev/shm has 9\.6 MB free\. "
                                        r"In a container, give it more \(docker run --shm-size=2g, or --ipc=host\)"):
        data.train_batches(tiny_shards, _cfg(16, workers=2), epoch=0, reuse_buffers=True)
    with pytest.raises(UserError, match=r"need about 14\.5 MB \(6 batches"):  # no ring: 2 per worker + 2
        data.train_batches(tiny_shards, _cfg(16, workers=2), epoch=0)
    with pytest.raises(UserError, match=r"need about 37\.6 MB \(5 batches of 7\.5 MB\)"):  # 10 views of 5 images
        data.eval_batches(tiny_shards, "val", "ten", batch_size=5, workers=2)
    assert len(list(data.train_batches(tiny_shards, _cfg(16, workers=0), epoch=0, reuse_buffers=True))) == 3  # 40 images: 16, 16, 8
    _shm_free(monkeypatch, 7 * batch)  # exactly enough
    assert len(list(data.train_batches(tiny_shards, _cfg(16, workers=2), epoch=0, reuse_buffers=True))) == 3  # 40 images: 16, 16, 8


def test_the_shared_memory_check_counts_validation_and_every_local_process(tiny_shards, monkeypatch):
    batch = 16 * 224 * 224 * 3
    _shm_free(monkeypatch, 19 * batch)
    cfg = _cfg(16, workers=2)
    cfg.eval.batch_size = 64  # validation: 5 batches of 64 centre crops, more than training's 7 of 16
    assert data.check_train_shared_memory(cfg) == (7, (16, 224, 224, 3))  # training's alone fit
    with pytest.raises(UserError, match=r"need about 48\.2 MB \(5 batches of 9\.6 MB\)"):
        data.check_train_shared_memory(cfg, validation=True)
    cfg.eval.batch_size = 16
    assert data.check_train_shared_memory(cfg, validation=True) == (7, (16, 224, 224, 3))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this machine share /dev/shm
    with pytest.raises(UserError, match=r"need about 67\.4 MB \(7 batches of 2\.4 MB in each of this "
                                        r"machine's 4 processes\)"):
        data.check_train_shared_memory(cfg)


def _refuse(message: str):
    def new_shared(n):
        raise RuntimeError(message)
    return new_shared


NO_SPACE = "unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device (28)"


def test_shared_memory_running_out_is_one_line_and_other_failures_are_not_called_that(tiny_shards, monkeypatch):
    """When /dev/shm fills up after the check (another process took it), torch's RuntimeError is
    one DataError line; a failure that is not about room (too many open files) stays as it was."""
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", _refuse(NO_SPACE))
    with pytest.raises(data.DataError, match=r"^not enough shared memory for the data loader's workers: they need "
                                             r"\d.* more than /dev/shm could give \(No space left on device "
                                             r"\(28\)\)\. In a container"):
        data.train_batches(tiny_shards, _cfg(16, workers=2), epoch=0, reuse_buffers=True)  # the trainer's ring
    other = "unable to open shared memory object </torch_1_2> in read-write mode: Too many open files (24)"
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", _refuse(other))
    with pytest.raises(RuntimeError, match="Too many open files"):
        data.train_batches(tiny_shards, _cfg(16, workers=2), epoch=0, reuse_buffers=True)


def test_shared_memory_running_out_in_a_loader_worker_is_one_line(tiny_shards, monkeypatch):
    """The same in a loader worker, which allocates each evaluation batch: the worker's DataError
    comes back as one line (data._relayed)."""
    if torch.multiprocessing.get_start_method() != "fork":  # the workers must inherit the patch below
        pytest.skip(f"loader workers start by {torch.multiprocessing.get_start_method()} here, so they do not "
                    f"inherit this test's stand-in for a full /dev/shm; the test above covers the same path")
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", _refuse(NO_SPACE))
    with pytest.raises(data.DataError, match=r"^not enough shared memory for the data loader's workers: they need "
                                             r"7\.5 MB more than /dev/shm could give \(No space left on device "
                                             r"\(28\)\)\. In a container"):
        list(data.eval_batches(tiny_shards, "val", "ten", batch_size=5, workers=2))


# ------------------------------------------------------------------------- open files

def _open_shards(root) -> int:
    """How many of this process's file descriptors are open on files under `root`."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(root))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd (Linux)")
def test_a_reader_keeps_only_a_few_shards_open(tiny_shards, monkeypatch):
    """Each memory-mapped shard holds a file descriptor; ImageNet's 1,252 training shards are more
    than a common limit of 1,024 open files, which a reader keeping every shard it had read would
    pass late in its first epoch (EMFILE). Here, with the limit on open maps lowered to 1, an epoch
    over the tiny set's 3 shards never holds more than one, and gives the same batches."""
    full = list(data.train_batches(tiny_shards, _cfg(8, workers=0), epoch=0))
    monkeypatch.setattr(data, "OPEN_MAPS", 1)
    base = _open_shards(tiny_shards)  # (0 unless another test still holds a map of these shards)
    seen, held = [], 0
    for batch in data.train_batches(tiny_shards, _cfg(8, workers=0), epoch=0):
        seen.append(batch)
        held = max(held, _open_shards(tiny_shards) - base)
    assert held == 1
    assert _same(seen, full)
    images = data.ShardImages(data.open_split(tiny_shards, "train").metas)
    for j in (0, 1, 2, 0):
        images[j]
        assert list(images._maps) == [j]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd (Linux)")
def test_an_epoch_over_more_shards_than_the_open_file_limit(tmp_path):
    """The failure itself, small: 120 one-image training shards read in a process allowed 40 more
    open files than it has when it starts. Before the reader closed old maps, the epoch died of
    EMFILE ("Too many open files") part way."""
    import subprocess
    import sys

    from data_prep import fake_ilsvrc as fake
    from data_prep import prepare

    rng = np.random.default_rng(0)
    train, val, _, words = fake.random_dataset(rng, 4, 30, 1, size=(80, 60))
    src = fake.write_ilsvrc2012(tmp_path / "src", train, val, words)
    prepare.prepare(prepare.Options(src.root, tmp_path / "out", workers=1, shard_size=1, quiet=True))
    assert len(shards.list_shards(tmp_path / "out", "train")) == 120
    code = f"""
import os, resource
from repro import data
from repro.config import Config
cfg = Config()
cfg.data.batch_size, cfg.data.workers = 8, 0
open_now = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(sum(len(b.labels) for b in data.train_batches({str(tmp_path / "out")!r}, cfg, epoch=0)))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "120"
