"""The input pipeline: the reader over the prepared shards, the epoch's sampling, the loaders.

The trainer and the evaluator read shards only through this module (docs/architecture.md, "Data flow"), and this
module reads them only through data_prep.shards. The augmentation it draws is the paper's
section 4.1 (repro.augment); the images are the 256x256 central crops of section 2.

Training stream of an epoch (a pure function of (data.seed, epoch), never of the worker count):
- the order of the shards and, inside each shard, the order of its images are shuffled from
  (seed, epoch); the stream is the shards one after another in that order. Training shards are
  written in an order shuffled once (data_prep/prepare.py), so a batch drawn from one or two shards is
  still a random sample, while reads stay inside one shard at a time (page cache friendly);
- global step s takes positions [s * B, (s + 1) * B) of the stream (B = data.batch_size); the
  last, partial batch is kept, so an epoch sees every image exactly once (with data-parallel
  parts it is dropped instead, so that every part gets an equal share of every batch);
- the crop, mirror and lighting draws of step s come from (seed, epoch, s) alone, so a run
  started at step k sees exactly the batches a run from step 0 sees from k on (exact resume);
- data parallelism: part p of `parts` gets rows [p * n / parts, (p + 1) * n / parts) of every
  global batch of n rows, so the parts together see the stream one process would, but for the
  last, partial batch (above).

Reading: each loader worker memory-maps the shards itself, lazily, on first use (an h5py handle
is only ever opened briefly in the main process to read metadata and closed again, never held
across a fork); a batch's rows are read shard by shard in ascending position (no h5py fancy
indexing), cropped and mirrored as uint8 index arithmetic straight into the output buffer, which
in a worker is allocated in shared memory so that handing it to the main process copies nothing.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.utils.data

from data_prep import shards
from repro import augment, files
from repro.errors import UserError

# Tags that keep the independent random streams of (seed, epoch) apart.
_SHUFFLE, _AUGMENT = 0x5A1, 0xA06


class DataError(UserError):
    """Prepared data that is missing, damaged, or changed under a reader."""


@dataclass
class Batch:
    """One training batch, as uint8 crops; the float work is repro.augment.Normalizer's."""
    images: torch.Tensor  # uint8 [B, crop, crop, 3], already mirrored where drawn
    labels: torch.Tensor  # int64 [B]
    offsets: torch.Tensor  # int64 [B, 3] = (top, left, mirrored)
    alphas: torch.Tensor  # float32 [B, 3] PCA lighting draws, zeros where lighting is off
    indices: torch.Tensor | None = None  # int64 [B] image index in the split (shards concatenated)
    lighting: bool = True  # False when lighting is off for this batch (code 145 then skips its /1.1)
    slot: int = -1  # internal: the images lie in slot `slot` of the loader's _Ring (images is None)

    def __len__(self) -> int:
        return len(self.labels)

    def _map(self, fn) -> "Batch":
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name))
                                            for f in dataclasses.fields(self)
                                            if torch.is_tensor(getattr(self, f.name))})

    def pin_memory(self, device=None) -> "Batch":
        """Called by DataLoader(pin_memory=True) in its pinning thread."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


# ------------------------------------------------------------------------------ the shards

@dataclass
class Split:
    """The complete shards of one split, checked against the manifest (the "done" mark)."""
    metas: list  # [shards.ShardMeta]
    labels: list  # [int64 array per shard]

    @property
    def counts(self) -> np.ndarray:
        return np.array([m.count for m in self.metas], np.int64)

    @property
    def starts(self) -> np.ndarray:
        """Index of each shard's first image in the split."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.counts.sum())


def read_manifest(root: str | Path) -> dict:
    """A prepared directory's manifest.json; a DataError in one line if it is missing or damaged
    (data_prep.shards.read_manifest checks its structure)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no prepared data at {root}: run './run.sh prepare' "
                        "(or './run.sh demo' for a small generated dataset)")
    try:
        return shards.read_manifest(root)  # which checks the structure (shards.check_manifest)
    except FileNotFoundError:
        raise DataError(f"{root} holds no finished preparation ({shards.MANIFEST} missing): "
                        "run './run.sh prepare' (again, if it was interrupted)") from None
    except ValueError as e:  # names the file and what is wrong with it
        hint = "" if "prepare" in str(e) else "; prepare the data again (or restore the file)"
        raise DataError(f"{e}{hint}") from None


def open_split(root: str | Path, split: str) -> Split:
    """Metadata and labels of a split's shards; a UserError names anything missing or damaged."""
    root = Path(root)
    listed = read_manifest(root)["splits"].get(split, {}).get("shards", [])  # its structure checked
    if not listed:
        raise UserError(f"{root} has no '{split}' split: prepare it first")
    metas, labels = [], []
    for entry in listed:
        path = root / entry["name"]
        if not path.is_file():
            raise DataError(f"shard {path} is missing (listed in {shards.MANIFEST}): prepare again")
        try:
            meta = shards.read_meta(path)
            lab = shards.read_labels(path)
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"shard {path} is damaged or unreadable ({e}): prepare again") from None
        if meta.count != entry["count"] or len(lab) != meta.count:
            raise DataError(f"shard {path} holds {meta.count} images, the manifest says "
                            f"{entry['count']}: prepare again")
        if meta.images_offset is None:
            raise DataError(f"shard {path}: images are not stored contiguously, so they cannot be "
                            "memory-mapped: prepare again with this version")
        need = meta.images_offset + meta.count * shards.IMAGE_SIZE ** 2 * 3
        if path.stat().st_size < need:
            raise DataError(f"shard {path} is truncated ({path.stat().st_size} of {need} bytes): "
                            "prepare again")
        metas.append(meta)
        labels.append(lab)
    return Split(metas, labels)


# Memory maps a reading process keeps open at once. Each holds a file descriptor (Python's mmap
# keeps its own copy), and ImageNet's training split has 1,252 shards: a worker that kept every
# shard it had read would pass a common per-process limit of 1,024 open files (`ulimit -n`) late in
# its first epoch and die of EMFILE. A batch reads one or two shards, so a few recent maps suffice.
OPEN_MAPS = 16


class ShardImages:
    """Memory maps of a split's image blocks, opened lazily by the process that reads them; the
    OPEN_MAPS most recently used stay open."""

    def __init__(self, metas):
        self.metas = metas
        self._maps: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self):  # never ship open maps to another process
        return {"metas": self.metas}

    def __setstate__(self, state):
        self.__init__(state["metas"])

    def __getitem__(self, j: int) -> np.ndarray:
        if self._pid != os.getpid():  # forked: open our own maps
            self._maps, self._pid = collections.OrderedDict(), os.getpid()
        if j in self._maps:
            self._maps.move_to_end(j)
        else:
            self.check(j)
            while len(self._maps) >= OPEN_MAPS:  # the least recently used goes (its descriptor with it)
                self._maps.popitem(last=False)
            self._maps[j] = shards.map_images(self.metas[j])
        return self._maps[j]

    def check(self, j: int) -> None:
        """The shard file still holds all its images. A file cut short under a memory map would
        kill the reader with SIGBUS when it touches the missing pages; this one-stat check before
        each batch turns that into a DataError naming the file (only a cut made in the instant
        between the check and the copy can still slip through)."""
        meta = self.metas[j]
        need = meta.images_offset + meta.count * shards.IMAGE_SIZE ** 2 * 3
        try:
            size = os.stat(meta.path).st_size
        except OSError as e:
            raise DataError(f"shard {meta.path} disappeared while being read ({e.strerror}): prepare "
                            f"again (or put it back)") from None
        if size < need:
            raise DataError(f"shard {meta.path} was cut short while being read ({size:,} of {need:,} "
                            f"bytes): prepare again (or put the file back)")


SHM_DIR = "/dev/shm"  # where torch's shared memory lives on Linux (shm_open): a tmpfs of its own


def _check_shared_memory(batches: int, batch_bytes: int) -> None:
    """Before the loader starts: room in /dev/shm for the batches it may hold at once, in every
    process that torchrun started on this machine (LOCAL_WORLD_SIZE). Loader workers hand batches
    over in shared memory, and a container's /dev/shm is often small (Docker gives 64 MB unless
    told otherwise), where torch would fail with a traceback about shm_open, or a worker die of
    SIGBUS. Nothing to check where there is no /dev/shm (macOS)."""
    try:
        st = os.statvfs(SHM_DIR)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    need = processes * batches * batch_bytes
    if need > free:
        each = f" in each of this machine's {processes} processes" if processes > 1 else ""
        raise UserError(_no_shared_memory(f"about {files.size_text(need)} ({batches} batches of "
                                          f"{files.size_text(batch_bytes)}{each}), and {SHM_DIR} has "
                                          f"{files.size_text(free)} free"))


def _no_shared_memory(detail: str) -> str:
    return (f"not enough shared memory for the data loader's workers: they need {detail}. In a container, "
            f"give it more (docker run --shm-size=2g, or --ipc=host); or use fewer loader workers (each keeps "
            f"{PREFETCH} batches ready) or smaller batches")


def _new_shared(n: int) -> torch.UntypedStorage:
    """torch's shared-memory storage of n bytes; running out of it is one line (DataError), also
    from a loader worker (_relayed)."""
    try:
        return torch.UntypedStorage._new_shared(n)
    except RuntimeError as e:  # only running out of room; other failures (too many open files) are not this
        if not any(t in str(e) for t in ("No space left on device", "Cannot allocate memory", "(28)", "(12)")):
            raise
        raise DataError(_no_shared_memory(f"{files.size_text(n)} more than {SHM_DIR} could give "
                                          f"({str(e).split(': ')[-1]})")) from None


class _Ring:
    """Shared-memory batch buffers that the training loader reuses, one slot per batch in flight.

    A fresh shared-memory buffer per batch costs a page fault for every 4 KB page twice (the
    worker that writes it, the trainer that reads it): about 13 ms of a 19 MB batch's ~30 ms in a
    worker on this project's CPU. The ring's pages are faulted in once, by the process that makes
    it, before the workers start; a worker writes batch i into slot i % K and sends only the slot
    number. K leaves room for every batch the loader may have in flight (workers x prefetch)
    plus the one the trainer is using and the one before it, so a slot is overwritten only once
    its batch has been used: the trainer turns each batch into its float input (or copies it to
    the device) before it takes the next one."""

    def __init__(self, slots: int, shape: tuple, shared: bool = True):
        self.slots = slots
        n = int(np.prod(shape)) * slots
        storage = _new_shared(n) if shared and hasattr(torch.UntypedStorage, "_new_shared") else None
        base = torch.empty(0, dtype=torch.uint8).set_(storage) if storage is not None else torch.empty(n, dtype=torch.uint8)
        self.buffers = base.view(slots, *shape)
        self.buffers.numpy().fill(0)  # fault every page in now, in the process that reads them

    def slot(self, item: int) -> int:
        return item % self.slots

    def take(self, batch: Batch) -> Batch:
        """The batch with its images: a view of its slot (valid until the slot comes round again)."""
        if batch.slot < 0:
            return batch
        return dataclasses.replace(batch, images=self.buffers[batch.slot, :len(batch.labels)], slot=-1)


def _uint8_buffer(shape) -> torch.Tensor:
    """An output buffer; in a loader worker it lives in shared memory, so passing it to the main
    process costs no copy (as torch's default_collate does for its stacked batches)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what default_collate uses
    if torch.utils.data.get_worker_info() is None or new_shared is None:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(_new_shared(int(np.prod(shape)))).view(shape)


def class_names(root: str | Path) -> list[tuple[str, str]]:
    """(WordNet id, words) of each class, in class-index (sorted WordNet id) order (read_manifest
    has checked that every class has them, and that the indices run 0..C-1)."""
    return [(c["wnid"], c["words"]) for c in read_manifest(root)["classes"]]


# ----------------------------------------------------------------------- the training stream

def epoch_order(counts, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard, position) of every image of the epoch's stream, each int64 [N].

    The shard order and the order inside each shard are shuffled from (seed, epoch) alone.
    """
    rng = np.random.default_rng([seed, epoch, _SHUFFLE])
    counts = np.asarray(counts, np.int64)
    order = rng.permutation(len(counts))
    shard = np.concatenate([np.full(counts[j], j, np.int64) for j in order] or [np.zeros(0, np.int64)])
    pos = np.concatenate([rng.permutation(counts[j]) for j in order] or [np.zeros(0, np.int64)])
    return shard, pos.astype(np.int64)


def augment_draws(cfg, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Crop offsets int64 [B, 3], lighting alphas float32 [B, 3] and whether lighting is on, for
    the B = data.batch_size rows of global step `step` (a partial last batch uses the first rows).

    A pure function of (data.seed, epoch, step). Alphas ~ N(0, augment.lighting_std), drawn
    afresh for every use of an image (section 4.1), and zero when lighting is "none" or from
    epoch augment.lighting_off_epoch on (when > 0; code 145 switched it off for its last epochs).
    """
    a, b = cfg.augment, cfg.data.batch_size
    rng = np.random.default_rng([cfg.data.seed, epoch, step, _AUGMENT])
    offsets = augment.random_crop_params(rng, b, shards.IMAGE_SIZE, a.crop, a.flip)
    alphas = rng.normal(0.0, 1.0, (b, 3)).astype(np.float32) * np.float32(a.lighting_std)
    on = a.lighting != "none" and not (0 < a.lighting_off_epoch <= epoch)
    if not on:
        alphas[:] = 0
    return offsets, alphas, on


def steps_per_epoch(root: str | Path, cfg, parts: int = 1, images: int | None = None) -> int:
    """Global steps in an epoch. The same for every part, since each takes its rows of every
    global batch. `images`: the training split's size, when the caller has opened it already."""
    _check_parts(cfg, parts, 0)
    return _steps(len(open_split(root, "train")) if images is None else images, cfg.data.batch_size, parts)


def _steps(images: int, batch: int, parts: int) -> int:
    """ceil(N / B): the last partial batch kept, so one process sees every image each epoch;
    floor(N / B) with data-parallel parts, so every part gets its equal share of every batch
    (the mean of the parts' mean losses is then the batch's mean loss, and no part is empty)."""
    return -(-images // batch) if parts == 1 else images // batch


def _check_parts(cfg, parts: int, part: int) -> None:
    if parts < 1 or not 0 <= part < parts:
        raise UserError(f"part {part} of {parts}: need 0 <= part < parts")
    if cfg.data.batch_size % parts:
        raise UserError(f"data.batch_size = {cfg.data.batch_size} does not divide between "
                        f"{parts} data-parallel parts")


def part_rows(cfg, part: int, parts: int) -> tuple[int, int, int] | None:
    """(first, stop, batch) of the rows of every global batch that data-parallel part `part` of
    `parts` trains on (None for a single part, which takes whole batches, the last partial one
    too). With several parts every batch is whole (see _steps)."""
    if parts == 1:
        return None
    b = cfg.data.batch_size
    return part * b // parts, (part + 1) * b // parts, b


class _TrainSteps(torch.utils.data.Dataset):
    """Item i: the Batch of global step start_step + i (this part's rows of it)."""

    def __init__(self, split: Split, cfg, epoch: int, start_step: int, part: int, parts: int,
                 ring: _Ring | None = None):
        self.images = ShardImages(split.metas)
        self.ring = ring
        self.labels = split.labels
        self.starts = split.starts
        self.shard, self.pos = epoch_order(split.counts, cfg.data.seed, epoch)
        self.cfg, self.epoch, self.start_step = cfg, epoch, start_step
        self.part, self.parts = part, parts
        self.steps = _steps(len(self.shard), cfg.data.batch_size, parts)

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)

    def __getitem__(self, i: int) -> Batch:
        step = self.start_step + i
        if not 0 <= step < self.steps:
            raise IndexError(step)
        b = self.cfg.data.batch_size
        lo, hi = step * b, min((step + 1) * b, len(self.shard))
        n = hi - lo
        r0, r1 = self.part * n // self.parts, (self.part + 1) * n // self.parts  # this part's rows
        offsets, alphas, on = augment_draws(self.cfg, self.epoch, step)
        shard, pos = self.shard[lo + r0:lo + r1], self.pos[lo + r0:lo + r1]
        offsets, alphas = offsets[r0:r1], alphas[r0:r1]
        crop = self.cfg.augment.crop
        slot = self.ring.slot(i) if self.ring else -1
        images = None if self.ring else _uint8_buffer((len(shard), crop, crop, 3))
        out = (self.ring.buffers[slot, :len(shard)] if self.ring else images).numpy()
        for j in np.unique(shard):
            self.images.check(j)
        for r in np.lexsort((pos, shard)):  # shard by shard, ascending positions
            top, left, mirrored = offsets[r]
            augment.copy_crop(out[r], self.images[shard[r]][pos[r]], top, left, mirrored)
        labels = np.array([self.labels[j][p] for j, p in zip(shard, pos)], np.int64)
        return Batch(images, torch.from_numpy(labels), torch.from_numpy(offsets),
                     torch.from_numpy(alphas), torch.from_numpy(self.starts[shard] + pos), on, slot)


PREFETCH = 2  # batches each loader worker prepares ahead (DataLoader's prefetch_factor)


def _loader(dataset, workers: int, pin_memory: bool, root, split: str) -> Iterator:
    if workers == 0 and not pin_memory:
        batches = (dataset[i] for i in range(len(dataset)))
    else:
        # batch_size=None: each item is already a batch; items come back in order whatever the
        # number of workers (worker w builds items w, w + workers, ...).
        batches = iter(torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
            worker_init_fn=_ignore_sigint, prefetch_factor=PREFETCH if workers else None))
    ring = getattr(dataset, "ring", None)
    if ring is not None:
        batches = (ring.take(b) for b in batches)
    return _relayed(batches, root, split)


def _relayed(batches: Iterator, root, split: str) -> Iterator:
    """The batches, with a reader's failure told in one line: a DataError raised in a loader
    worker comes back wrapped in the worker's traceback (its own line is kept), and a worker
    that died (e.g. of SIGBUS, a shard cut short under its memory map) is followed by a check of
    the split's shards, which names the damaged file if that is what happened."""
    try:
        yield from batches
    except DataError as e:
        found = re.findall(r"DataError: (.*)", str(e))
        raise DataError(found[-1] if found else str(e)) from None
    except RuntimeError:
        open_split(root, split)  # raises a DataError naming a missing, cut or damaged shard
        raise


def _ignore_sigint(worker_id: int) -> None:
    """Ctrl-C is the trainer's to handle (it checkpoints and stops); a worker that died of it
    would instead crash the main process while it waits for data."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_train_shared_memory(cfg, parts: int = 1, pin_memory: bool = False, reuse_buffers: bool = True,
                              validation: bool = False) -> tuple[int, tuple]:
    """Room in /dev/shm for the training loader's batches in flight, and with `validation` for the
    validation loader's (centre crops of eval.batch_size images) where those take more: the
    trainer checks both before it writes anything in the run directory. Returns the ring's slots
    and the shape of one training batch's images."""
    workers, rows, crop = cfg.data.workers, cfg.data.batch_size // parts, cfg.augment.crop
    slots = workers * PREFETCH + 3
    if workers:  # batches in flight: the ring's slots, or what the workers prepare plus the one in use
        needs = [(slots if reuse_buffers and not pin_memory else workers * PREFETCH + 2, rows * crop * crop * 3)]
        if validation:
            needs.append((workers * PREFETCH + 1, cfg.eval.batch_size * crop * crop * 3))  # as eval_batches counts
        _check_shared_memory(*max(needs, key=lambda need: need[0] * need[1]))
    return slots, (rows, crop, crop, 3)


def train_batches(root: str | Path, cfg, epoch: int, start_step: int = 0, part: int = 0,
                  parts: int = 1, pin_memory: bool = False, reuse_buffers: bool = False) -> Iterator[Batch]:
    """The training stream of `epoch` from global step `start_step` (see the module docstring),
    read by cfg.data.workers loader processes. pin_memory=True when the device is a GPU.

    reuse_buffers=True (the trainer's, without pin_memory): the batches' images lie in a ring of
    reused shared buffers (_Ring), so each batch's images are valid only until two more batches
    have been taken: turn them into the network's input (or copy them) first. Otherwise every
    batch has buffers of its own, kept as long as the caller likes."""
    _check_parts(cfg, parts, part)
    split = open_split(root, "train")
    slots, shape = check_train_shared_memory(cfg, parts, pin_memory, reuse_buffers)
    ring = _Ring(slots, shape, shared=cfg.data.workers > 0) if reuse_buffers and not pin_memory else None
    dataset = _TrainSteps(split, cfg, epoch, start_step, part, parts, ring)
    return _loader(dataset, cfg.data.workers, pin_memory, root, "train")


# ------------------------------------------------------------------------- evaluation views

VIEWS = ("centre", "ten")


def view_offsets(views: str, crop: int = augment.CROP) -> np.ndarray:
    """int64 [V, 3] (top, left, mirrored) of the test views: V = 1 ("centre") or 10 ("ten")."""
    if views == "centre":
        return augment.centre_offsets(shards.IMAGE_SIZE, crop)
    if views == "ten":
        return augment.ten_view_offsets(shards.IMAGE_SIZE, crop)
    raise UserError(f"views = {views!r} is not one of {', '.join(VIEWS)}")


class _EvalSteps(torch.utils.data.Dataset):
    """Item i: images [i * B, (i + 1) * B) of the split in file order, as test views."""

    def __init__(self, split: Split, offsets: np.ndarray, batch_size: int, crop: int):
        self.images = ShardImages(split.metas)
        self.labels = np.concatenate(split.labels)
        self.starts, self.counts = split.starts, split.counts
        self.offsets, self.batch_size, self.crop = offsets, batch_size, crop

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, len(self.labels))
        images = _uint8_buffer((hi - lo, len(self.offsets), self.crop, self.crop, 3))
        out = images.numpy()
        # Contiguous runs, one per shard that the batch overlaps.
        for j in np.flatnonzero((self.starts < hi) & (self.starts + self.counts > lo)):
            a, b = max(lo, self.starts[j]), min(hi, self.starts[j] + self.counts[j])
            self.images.check(j)
            run = self.images[j][a - self.starts[j]:b - self.starts[j]]
            augment.take_views(run, self.offsets, self.crop, out=out[a - lo:b - lo])
        return images, torch.from_numpy(self.labels[lo:hi]), torch.from_numpy(self.offsets)


def eval_batches(root: str | Path, split: str, views: str, batch_size: int, workers: int,
                 crop: int = augment.CROP, pin_memory: bool = False) -> Iterator:
    """(images uint8 [B, V, crop, crop, 3], labels int64 [B], view_offsets int64 [V, 3]) over a
    split in file order; V = 1 for "centre", 10 for "ten" (repro.augment.ten_view_offsets order).
    Normalizer.views turns a batch into one forward pass of B * V inputs."""
    dataset = _EvalSteps(open_split(root, split), view_offsets(views, crop), batch_size, crop)
    if workers:
        _check_shared_memory(workers * PREFETCH + 1, batch_size * len(dataset.offsets) * crop * crop * 3)
    return _loader(dataset, workers, pin_memory, root, split)


def make_normalizer(root: str | Path, cfg, device) -> augment.Normalizer:
    """The Normalizer on the device the config asks for: the training device when
    augment.on = "device", else the CPU (the caller then moves its output to the device)."""
    try:
        stats = shards.read_stats(root)
    except (OSError, KeyError) as e:
        raise UserError(f"{Path(root) / shards.STATS} is missing or damaged ({e}): prepare again") from None
    return augment.Normalizer(stats, cfg.augment, device if cfg.augment.on == "device" else "cpu")
