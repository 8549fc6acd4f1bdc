"""`./run.sh train [CONFIG]`: train AlexNet with the paper's recipe (section 5).

SGD on batches of 128 with the paper's update rule (repro.optim), softmax cross-entropy, dropout
0.5 on fc6 and fc7, validation (centre crop) after every epoch feeding the learning-rate
schedule. Exactly resumable: the batch stream, the augmentation and the dropout masks are pure
functions of (seed, epoch, step), and a checkpoint holds the weights, velocities and schedule.

One process (one device, or two GPUs with one tower each), or one tower per process with
torch.distributed: `./run.sh train --nproc 2` (or `torchrun --nproc-per-node 2 -m repro train`).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from repro import augment, checkpoint, data, evaluate, files, rundir
from repro.config import DEFAULT_CONFIG, Config, flat, load_config
from repro.errors import ArgumentParser, UserError, at_least
from repro.fast.memory import keep_freed_memory
from repro.model import AlexNet, _mix, set_precision
from repro.optim import PaperSGD, Schedule
from repro.parallel import Distributed, OneDevice, Placement, make_placement
from repro.progress import Progress
from repro.watch import Watch


def parse_args(argv):
    p = ArgumentParser(
        prog="./run.sh train", description=__doc__.split("\n\n")[0],
        epilog="Examples:\n"
               "  ./run.sh train                                   # the paper's text, default data\n"
               "  ./run.sh train paper_configs/alexnet_2gpu_code145.toml --data /ssd/shards\n"
               "  ./run.sh train --run-dir runs/a --resume          # continue where it stopped\n"
               "  ./run.sh train --nproc 2                          # one tower per process\n"
               "  ./run.sh train --set optim.lr=0.005 --set train.max_steps=100",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help=f"TOML config (default {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parent.parent)})")
    p.add_argument("--data", help="directory of prepared shards (default: the config's data.shards; "
                                  "with --resume, the data the run was trained on)")
    p.add_argument("--run-dir", help="where the run is written (default runs/<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set optim.lr=0.005 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest checkpoint, with its own config")
    p.add_argument("--nproc", type=at_least(1), default=1,
                   help="processes on this machine, one tower each (2 = one model-parallel pair; "
                        "4 = two pairs, data parallel); launched with torchrun")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_local(args, argv)
    if args.resume:
        if not args.run_dir:
            raise UserError("--resume needs --run-dir (the run to continue)")
        if args.config:
            raise UserError("--resume continues the run with its own config.toml: drop CONFIG "
                            "(change values with --set)")
        run_dir = Path(args.run_dir)
        if not (run_dir / rundir.CONFIG).is_file():
            raise UserError(f"{run_dir} holds no run to resume ({rundir.CONFIG} missing)")
        cfg = rundir.read_config(run_dir, args.set)
        check_resumable(rundir.read_config(run_dir), cfg, run_dir)
    else:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.set)
        run_dir = Path(args.run_dir or f"runs/{cfg.name}")
        files.check_dir(run_dir, "--run-dir", must_exist=False)
        if (run_dir / rundir.CONFIG).exists():
            raise UserError(f"{run_dir} already holds a run: add --resume to continue it (one that "
                            f"stopped before its first checkpoint starts over), or choose another --run-dir")
    if args.data:
        data_root = Path(args.data)
    elif args.resume and (run_dir / rundir.PROVENANCE).is_file():
        data_root = evaluate.data_root(run_dir)  # the run's own data, wherever the config points now
    else:
        data_root = Path(cfg.data.shards)
    train(cfg, data_root, run_dir, resume=args.resume)
    if dist.is_initialized():
        # Every process got here together (they stop at the same step). Tear the process group
        # down while the interpreter is whole: left to the exit, gloo's threads could outlive it,
        # and a process crashed or hung there (rarely, on a loaded CPU), which left the other
        # torchrun agents waiting at their exit barrier. (Not on an error: a process that failed
        # alone would wait here for the others.)
        dist.barrier()
        dist.destroy_process_group()
    return 0


# What a resumed run may not change: the model, and everything that decides the stream of
# batches, augmentations and dropout masks (exact resume depends on them).
FIXED_ON_RESUME = ("model", "init", "data.batch_size", "data.seed", "augment", "train.seed", "train.dtype")


def check_resumable(saved: Config, new: Config, run_dir: Path, remedy: str = "start a new run to change it") -> None:
    """A resumed run's --set may not change what its checkpoints were made with (FIXED_ON_RESUME)."""
    old, now = flat(saved), flat(new)
    for key in sorted(old):
        if key.startswith(FIXED_ON_RESUME) and old[key] != now[key]:
            raise UserError(f"--set {key}: a resumed run keeps {key} = {old[key]!r} (the run in "
                            f"{run_dir} was trained with it); {remedy}")


LOCAL_ADDR = "127.0.0.1"  # what --nproc's processes tell each other to connect to


def launch_local(args, argv) -> int:
    """Start `--nproc` processes on this machine with torchrun (the same as typing it).

    `--local-addr 127.0.0.1`: without it torchrun's c10d rendezvous advertises this machine's
    host name (socket.getfqdn()) for its workers' store, and where that name does not resolve (a
    container or chroot without it in /etc/hosts) the launch waits for minutes instead of
    starting (pytorch/pytorch#150532). Every process is on this machine, so loopback is right."""
    from torch.distributed.run import main as torchrun

    rest = [a for i, a in enumerate(argv) if a != "--nproc" and not a.startswith("--nproc=")
            and not (i > 0 and argv[i - 1] == "--nproc")]
    torchrun(["--standalone", f"--nproc-per-node={args.nproc}", f"--local-addr={LOCAL_ADDR}",
              "-m", "repro", "train", *rest])
    return 0


# ------------------------------------------------------------------------------ the loop

@dataclass
class Position:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    step: int = 0  # global steps completed


class PendingLoss:
    """A step's loss on its way to the host: copied without waiting (into pinned memory, with
    an event on a GPU), read later by `take`, which waits for that copy only."""

    def __init__(self):
        self.host = self.event = None
        self.step = self.epoch = 0

    def put(self, loss: torch.Tensor, step: int, epoch: int) -> None:
        self.step, self.epoch = step, epoch
        if loss.device.type == "cuda":
            self.host = torch.empty((), dtype=loss.dtype, pin_memory=True)
            self.host.copy_(loss.detach(), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(loss.device))  # the stream the copy runs on
        else:
            self.host, self.event = loss.detach(), None

    def take(self) -> float | None:
        """The loss put last (None if none since the last take)."""
        if self.host is None:
            return None
        if self.event is not None:
            self.event.synchronize()
        value, self.host, self.event = self.host.item(), None, None
        return value


@dataclass
class Run:
    """What one training process holds: built by `set_up`, advanced by `train_epoch`."""
    cfg: Config
    data_root: Path
    run_dir: Path
    placement: Placement
    model: AlexNet
    forward: Callable  # the model, or its torch.compile'd version (speed.compile)
    optimizer: PaperSGD
    schedule: Schedule
    normalizer: augment.Normalizer
    pos: Position
    steps: int  # global steps per epoch
    images: int  # training images per epoch
    part: int  # this process's data-parallel share of every batch: part of parts
    parts: int
    writer: bool  # the process that writes the run directory (rank 0; the only one when alone)
    metrics: rundir.Metrics | None  # the writer's metrics.jsonl
    lock: rundir.RunLock | None  # the writer's hold on the run directory
    watch: Watch | None = None  # the writer's TensorBoard files (train.tensorboard, if installed)
    pending: PendingLoss = field(default_factory=PendingLoss)  # the last step's loss, on its way to the host

    @property
    def device(self) -> torch.device:
        return self.placement.output_device

    def close(self) -> None:
        """Close the writer's files and release the run directory's lock."""
        for held in (self.metrics, self.watch):
            if held:
                held.close()
        if self.lock:
            self.lock.release()

    @property
    def distributed(self) -> bool:
        return isinstance(self.placement, Distributed)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.cfg.train.dtype]


DTYPES = {"float32": torch.float32, "float64": torch.float64}


class StopRequest:
    """SIGINT / SIGTERM ask the loop to checkpoint and stop after the current step."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def init_distributed() -> None:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)


def build_model(cfg: Config, placement) -> AlexNet:
    """The model as the trainer runs it: on one CPU, the grouped emulation of both towers when
    speed.grouped (the same function, faster there; checkpoints keep the two-tower form); on a
    GPU the towers apart (cuDNN runs them faster). The model itself keeps its activations
    channels-last when speed.channels_last."""
    grouped = (cfg.speed.grouped and isinstance(placement, OneDevice) and placement.output_device.type == "cpu"
               and cfg.model.towers > 1)
    return AlexNet.from_config(cfg, placement=placement, grouped=grouped).to(DTYPES[cfg.train.dtype])


def train(cfg: Config, data_root: Path, run_dir: Path, resume: bool = False) -> Path:
    """Train until cfg.schedule.epochs (or train.max_steps, or a stop signal). Returns run_dir."""
    run = set_up(cfg, data_root, run_dir, resume)
    stop = StopRequest()
    try:
        if resume and nothing_to_do(run):
            return run_dir
        start_records(run, resume)
        while run.pos.epoch < cfg.schedule.epochs:
            why = train_epoch(run, stop)
            if why:  # a stop signal or train.max_steps: checkpointed, say how to go on
                announce_stop(run, why)
                return run_dir
            end_epoch(run)
    except data.DataError as e:  # shards damaged or changed under the run
        raise data.DataError(f"{e}; then continue: ./run.sh train --run-dir {run_dir} --resume "
                             f"({last_checkpoint(run_dir)})") from None
    finally:
        stop.restore()
        run.close()
    return run_dir


def set_up(cfg: Config, data_root: Path, run_dir: Path, resume: bool) -> Run:
    """Processes, placement, data checks, model, optimiser, schedule and the checkpoint to resume
    from (the run directory's records are start_records')."""
    init_distributed()
    placement = make_placement(cfg.train.placement, cfg.model.towers, cfg.train.device)
    distributed = isinstance(placement, Distributed)
    part, parts = (placement.pair, placement.pairs) if distributed else (0, 1)
    writer = not distributed or dist.get_rank() == 0
    train_images = check_data(cfg, data_root)
    data.check_train_shared_memory(cfg, parts, pin_memory=placement.output_device.type == "cuda", validation=True)
    set_precision(cfg.speed)
    made = not run_dir.exists()
    files.make_dir(run_dir, "--run-dir")
    lock = lock_run_dir(run_dir, writer, distributed, placement.output_device)
    try:
        return _set_up_locked(cfg, data_root, run_dir, resume, placement, part, parts, writer, lock, train_images)
    except BaseException:
        if lock:
            if made:  # made here and holding nothing but the lock: not left behind. Removed while the
                # lock is held (no other trainer can have started in it); rmdir fails if anything else is there
                with contextlib.suppress(OSError):
                    if [p.name for p in run_dir.iterdir()] == [rundir.RunLock.NAME]:
                        lock.path.unlink()
                        run_dir.rmdir()
            lock.release()
        raise


def lock_run_dir(run_dir: Path, writer: bool, distributed: bool, device) -> rundir.RunLock | None:
    """The writer takes the run directory's lock; every process stops if it could not."""
    lock = rundir.RunLock(run_dir) if writer else None
    taken = lock.acquire() if lock else True
    if _agree(distributed, not taken, False, device)[0]:
        holder = lock.holder() if lock and not taken else "another process (as rank 0 found)"
        raise UserError(f"{run_dir} is in use: {holder} is training in it. Wait for it to finish or "
                        f"stop it; a lock left by a crashed run is released by the system and does not stop you")
    if lock and lock.unsupported:
        print(f"cannot lock {lock.path} ({lock.unsupported}: this file system does not support locks); going "
              f"on without the guard against a second training process in {run_dir}", file=sys.stderr, flush=True)
    return lock


def _set_up_locked(cfg, data_root, run_dir, resume, placement, part, parts, writer, lock, train_images: int) -> Run:
    model = build_model(cfg, placement)
    if cfg.speed.keep_freed_memory and placement.output_device.type == "cpu":
        keep_freed_memory()
    optimizer = PaperSGD.from_config(model, cfg.optim)
    schedule = Schedule(cfg.schedule, cfg.optim.lr)
    pos = Position()
    if resume:
        check_same_data(run_dir, data_root)
        pos = resume_from_checkpoint(run_dir, model, optimizer, schedule, writer)
    run = Run(cfg, data_root, run_dir, placement, model,
              torch.compile(model) if cfg.speed.compile else model, optimizer, schedule,
              data.make_normalizer(data_root, cfg, placement.output_device), pos,
              data.steps_per_epoch(data_root, cfg, parts, train_images), train_images,
              part, parts, writer, None, lock)
    return run


def check_same_data(run_dir: Path, data_root: Path) -> None:
    """A resumed run continues on the data it was trained on: the same classes and the same
    shards (exact resume replays the same stream of batches), as provenance.json recorded."""
    recorded = rundir.recorded_data(run_dir)
    if recorded is None:
        return  # a run from before data identities were recorded: nothing to compare with
    differences = rundir.data_differences(recorded, rundir.data_identity(data_root))
    if differences:
        raise UserError(f"{data_root} is not the data {run_dir} was trained on ({recorded.get('root')}): "
                        f"{'; '.join(differences)}. Resume with the run's own data, or start a new run")


def resume_from_checkpoint(run_dir: Path, model, optimizer, schedule, writer: bool) -> Position:
    """Load the newest sound checkpoint (a damaged newer one is reported, not used). A run that
    stopped before its first checkpoint starts over from step 0 with its own config."""
    ckpt = checkpoint.newest_sound(run_dir, say=None if writer else lambda text: None)
    if ckpt is None and checkpoint.latest(run_dir) is not None:
        raise UserError(f"every checkpoint of {run_dir} is damaged (see above): restore the files, "
                        f"or start a new run")
    if ckpt is None:
        if writer:
            print(f"{run_dir} has no checkpoint yet (it stopped before its first): starting it over "
                  f"from step 0 with its config", flush=True)
        return Position()
    state = checkpoint.load_into(ckpt, model, optimizer)
    schedule.load_state_dict(state["schedule"])
    return Position(state["epoch"], state["step_in_epoch"], state["step"])


def start_records(run: Run, resume: bool) -> None:
    """The writer's config.toml, provenance session and first metrics line (metrics written
    after the checkpoint a resumed run starts from are dropped: they come again)."""
    if not run.writer:
        return
    if resume:
        rundir.truncate_metrics(run.run_dir, run.pos.step)
    rundir.write_config(run.run_dir, run.cfg)
    rundir.write_provenance(run.run_dir, run.cfg, run.data_root, {
        "placement": type(run.placement).__name__, "device": str(run.device),
        "world_size": dist.get_world_size() if run.distributed else 1,
        "resumed_from_step": run.pos.step if resume else None})
    run.metrics = rundir.Metrics(run.run_dir)
    run.metrics.write("event", event="resume" if resume else "start", step=run.pos.step, epoch=run.pos.epoch)
    run.watch = Watch.open(run.run_dir, run.cfg.train.tensorboard)


def check_data(cfg: Config, data_root: Path) -> int:
    """The prepared data exists, fits the config (year, number of classes), and its training and
    validation shards are there and whole. Returns the number of training images."""
    if not (data_root / "manifest.json").is_file():
        raise UserError(f"no prepared data in {data_root} (manifest.json missing): run "
                        f"'./run.sh prepare --source DIR --out {data_root}', or './run.sh demo' "
                        f"to try everything on generated data")
    manifest = data.read_manifest(data_root)
    year = manifest.get("year")
    if year is not None and year != cfg.data.year:
        raise UserError(f"the data in {data_root} is ILSVRC-{year}, the config says data.year = "
                        f"{cfg.data.year}: prepare the right year or use the matching config")
    classes = len(manifest["classes"])
    if classes != cfg.model.num_classes:
        raise UserError(f"the data in {data_root} has {classes} classes, the config's model "
                        f"{cfg.model.num_classes}: set model.num_classes = {classes}")
    # every shard there and whole, before the run directory is made (validation reads its shards
    # only after an epoch's training); each shard opened once. (Data without a validation split at
    # all, as the GPU check's, trains until the first epoch's end.)
    if manifest["splits"].get(cfg.data.val_split, {}).get("shards"):
        data.open_split(data_root, cfg.data.val_split)
    images = len(data.open_split(data_root, "train"))
    subset = manifest.get("subset")
    if subset:  # said once, up front: such a run is a check of the recipe, not a paper row
        print(f"training on a subset of ILSVRC: {subset.get('classes')} of its {subset.get('of')} classes "
              f"({subset.get('selected_by')}); its errors are not comparable with the paper's", flush=True)
    return images


def nothing_to_do(run: Run) -> bool:
    """A resumed run that has already finished says so (where it stands, where its checkpoint
    is, how to train further) instead of exiting in silence."""
    cfg, pos = run.cfg, run.pos
    done_epochs = pos.epoch >= cfg.schedule.epochs
    done_steps = bool(cfg.train.max_steps) and pos.step >= cfg.train.max_steps
    if not (done_epochs or done_steps):
        return False
    if run.writer:
        ckpt = checkpoint.latest(run.run_dir)
        where = (f"schedule.epochs = {cfg.schedule.epochs}" if done_epochs
                 else f"train.max_steps = {cfg.train.max_steps}")
        more = (f"--set schedule.epochs={cfg.schedule.epochs + 10}" if done_epochs
                else f"--set train.max_steps={pos.step + 1000}")
        print(f"nothing to train: {run.run_dir} has finished {pos.epoch} epoch(s), step {pos.step:,} "
              f"({where}); its checkpoint is {ckpt}. To train further: ./run.sh train --run-dir "
              f"{run.run_dir} --resume {more}, or start a new run with --run-dir", flush=True)
    return True


def train_epoch(run: Run, stop: StopRequest) -> str | None:
    """Train the rest of epoch run.pos.epoch + 1, checkpointing every train.checkpoint_every
    steps. Returns why it stopped early (a stop signal, train.max_steps), checkpointed, or None
    at the end of the epoch."""
    cfg, pos = run.cfg, run.pos
    epoch = pos.epoch
    run.optimizer.set_group_lrs(run.schedule.rates(epoch))
    run.optimizer.freeze("conv1", run.schedule.conv1_frozen(epoch))
    run.model.train()
    window = _Window()
    left = run.images - pos.step_in_epoch * cfg.data.batch_size  # images left this epoch
    with Progress(left, f"epoch {epoch + 1}/{cfg.schedule.epochs}", unit="img", quiet=not run.writer) as bar:
        waited = time.perf_counter()
        for batch in data.train_batches(run.data_root, cfg, epoch, pos.step_in_epoch, run.part, run.parts,
                                        pin_memory=run.device.type == "cuda", reuse_buffers=True):
            x, y = inputs(run, batch)
            ready = time.perf_counter()
            loss, logits, stop_now = train_step(run, x, y, stop)
            window.add(loss, logits, y, len(y) * run.parts, ready - waited, time.perf_counter() - waited)
            bar.update(len(y) * run.parts)  # images of this step, over every data-parallel pair
            if pos.step % cfg.train.log_every == 0:
                check_loss(run)  # in every process alike: no non-finite loss reaches a metrics line
                if run.metrics:
                    row = {"epoch": epoch + pos.step_in_epoch / run.steps, "lr": run.schedule.lr(epoch), **window.flush()}
                    run.metrics.write("train", step=pos.step, **row)
                    if run.watch:
                        run.watch.train(pos.step, row)
            limit = cfg.train.max_steps and pos.step >= cfg.train.max_steps
            periodic = cfg.train.checkpoint_every and pos.step % cfg.train.checkpoint_every == 0
            if stop_now or limit or (periodic and pos.step_in_epoch < run.steps):  # end_epoch saves the last step
                save_checkpoint(run)
                if stop_now or limit:
                    return "stop signal" if stop_now else f"train.max_steps = {cfg.train.max_steps}"
            waited = time.perf_counter()
    return None


def inputs(run: Run, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's input (mean subtracted, PCA lighting) and the labels, on the device."""
    x = run.normalizer.train(batch).to(run.device, run.dtype, non_blocking=True)
    return x, batch.labels.to(run.device, non_blocking=True)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, stop: StopRequest) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One step of SGD (forward, backward, gradients averaged over data-parallel pairs, update).
    Returns the loss (a 0-d tensor on the device), the logits, and whether to stop now (every
    process decides alike).

    The loss is checked one step late: each step's loss is copied to the host without waiting
    (PendingLoss), and the next step reads it once its own backward pass is queued. In one process
    (one GPU, or two with TwoDevices) the host then never waits for the GPU in the middle of a
    step (reading the loss before the update made the GPU idle while the host queued the next
    step: 6% of the step on an H100, the GPU check's step_host_sync). A Distributed run still
    waits once a step: its processes agree on stopping (a signal, a bad loss) through an
    all-reduce whose result the host reads. A non-finite loss's update is applied in memory, but
    the run stops at the next step, or before any checkpoint, metrics line or validation, so the
    weights it produced are never saved, logged or evaluated."""
    pos, cfg = run.pos, run.cfg
    run.model.reseed_dropout(_mix(cfg.train.seed, pos.epoch, pos.step_in_epoch, 0), data.part_rows(cfg, run.part, run.parts))
    autocast = (torch.autocast("cuda", torch.bfloat16) if cfg.speed.bf16 and run.device.type == "cuda"
                else contextlib.nullcontext())
    with autocast:
        logits = run.forward(x)
    loss = F.cross_entropy(logits.float(), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.placement.sync_gradients(run.model)
    stop_now = check_loss(run, stop.requested)  # the step before's
    run.optimizer.step()
    pos.step += 1
    pos.step_in_epoch += 1
    run.pending.put(loss, pos.step, pos.epoch)
    return loss.detach(), logits.detach(), stop_now


def check_loss(run: Run, stop: bool = False) -> bool:
    """Read the last step's loss, if not read yet, and end the run with a UserError if it is not
    finite in any process. Returns whether to stop now, as every process agreed."""
    pending = run.pending
    value = pending.take()
    mine = value is not None and not math.isfinite(value)
    bad, stop_now = _agree(run.distributed, mine, stop, run.device)
    if bad:
        what = f"loss became {value}" if mine else "loss became infinite or NaN in another process"
        raise UserError(
            f"{what} at step {pending.step} (epoch {pending.epoch + 1}); stopped without saving these "
            f"weights; {last_checkpoint(run.run_dir, 'good ')}. Try a lower optim.lr")
    return stop_now


def end_epoch(run: Run) -> None:
    """Validation (centre crop), the schedule's decision, the metrics line, a checkpoint."""
    epoch = run.pos.epoch
    check_loss(run)  # the epoch's last step: never validate or save weights from a non-finite loss
    val = validate(run.model, run.cfg, run.data_root, run.normalizer)
    run.pos.epoch, run.pos.step_in_epoch = epoch + 1, 0
    reduced = run.schedule.end_epoch(run.pos.epoch, val.top1)
    if run.metrics:
        run.metrics.write("val", epoch=run.pos.epoch, step=run.pos.step, lr=run.schedule.lr(epoch),
                          views="centre", split=run.cfg.data.val_split, **val.as_dict())
        if run.watch:
            run.watch.val(run.pos.step, val.as_dict())
            run.watch.conv1_kernels(run.pos.step, conv1_kernels(run.model))
        if reduced:
            run.metrics.write("event", event="lr_divided", epoch=run.pos.epoch, step=run.pos.step, lr=run.schedule.lr(run.pos.epoch))
        print(f"epoch {run.pos.epoch}: validation top-1 {val.top1:.2%}, top-5 {val.top5:.2%} "
              f"(centre crop, {val.images} images)" + ("; learning rate divided" if reduced else ""),
              flush=True)
    save_checkpoint(run)


def save_checkpoint(run: Run) -> Path | None:
    """Checkpoint the weights, velocities, schedule and position; never a diverged model. In a
    distributed run pair 0 writes (the other pairs hold the same weights), the writer last."""
    pos = run.pos
    check_loss(run)  # the last step's loss first (train_step checks it one step late)
    finite = all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
    if _agree(run.distributed, not finite, False, run.device)[0]:
        raise UserError(f"the weights became infinite or NaN at step {pos.step} (epoch {pos.epoch + 1}); "
                        f"not saved; {last_checkpoint(run.run_dir, 'good ')}. Try a lower optim.lr")
    state = {"step": pos.step, "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch,
             "schedule": run.schedule.state_dict(), "config": run.cfg.name}
    keep = run.cfg.train.keep_checkpoints
    if not run.distributed:
        return checkpoint.save(run.run_dir, pos.step, run.model, run.optimizer, state, keep)
    path = None
    if run.placement.pair == 0:
        path = checkpoint.save(run.run_dir, pos.step, run.model, run.optimizer, state, keep,
                               write_state=run.writer, barrier=lambda: dist.barrier(run.placement.pair_group))
    dist.barrier()
    return path


def conv1_kernels(model: AlexNet) -> list:
    """conv1's weights [N, 3, 11, 11] of each tower this process holds, as numpy arrays."""
    weights = {n: p.detach().float().cpu() for n, p in model.named_parameters() if n.endswith(".conv1.weight")}
    if model.grouped:
        return [w.numpy() for w in weights["towers.grouped.conv1.weight"].chunk(model.m.towers)]
    return [weights[f"towers.{k}.conv1.weight"].numpy() for k in model.towers]


def last_checkpoint(run_dir: Path, kind: str = "") -> str:
    """'last checkpoint PATH', or that there is none yet (--resume then starts over)."""
    ckpt = checkpoint.latest(run_dir)
    if ckpt is None:
        return "no checkpoint yet (--resume starts the run over from step 0)"
    return f"last {kind}checkpoint: {ckpt}"


def announce_stop(run: Run, why: str) -> None:
    if run.writer:
        run.metrics.write("event", event="stop", reason=why, step=run.pos.step)
        print(f"stopped at step {run.pos.step} ({why}); checkpoint {checkpoint.latest(run.run_dir)}; "
              f"continue with: ./run.sh train --run-dir {run.run_dir} --resume", flush=True)


def _agree(distributed: bool, bad: bool, stop: bool, device) -> tuple[bool, bool]:
    """Every process must take the same decision (a NaN on one pair, a signal seen by one process)."""
    if not distributed:
        return bad, stop
    flags = torch.tensor([float(bad), float(stop)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def validate(model, cfg: Config, data_root: Path, normalizer) -> evaluate.Errors:
    """Centre-crop top-1 / top-5 error on the validation split (feeds the plateau schedule; the
    paper's section 5: "when the validation error rate stopped improving")."""
    probs, labels = evaluate.predict_views(model, data_root, cfg.data.val_split, "centre",
                                           cfg.eval.batch_size, cfg.data.workers, normalizer)
    model.train()
    return evaluate.errors(probs["centre"], labels)


class _Window:
    """Training statistics between two metric lines: mean loss, train error, speed, data wait."""

    def __init__(self):
        self.steps = self.rows = self.images = 0
        self.wait = self.busy = 0.0
        # summed on the device, read once, in flush(): the loss and the top-1 and top-5 misses
        self.loss = self.misses = None

    def add(self, loss, logits, labels, images, wait, total):
        misses = evaluate.topk_misses(logits, labels)  # no wait for the GPU here, every step
        self.misses = misses if self.misses is None else self.misses + misses
        self.steps += 1
        self.rows += len(labels)
        self.images += images  # over all data-parallel parts
        loss = loss.detach().double()
        self.loss = loss if self.loss is None else self.loss + loss
        self.wait += wait
        self.busy += total

    def flush(self) -> dict:
        miss1, miss5 = self.misses.tolist() if self.misses is not None else (0, 0)
        loss = self.loss.item() if self.loss is not None else 0.0
        out = {"loss": loss / max(self.steps, 1), "top1_error": miss1 / max(self.rows, 1),
               "top5_error": miss5 / max(self.rows, 1),
               "img_per_s": self.images / max(self.busy, 1e-9), "data_wait_s": self.wait,
               "data_wait_share": self.wait / max(self.busy, 1e-9)}
        self.__init__()
        return out
