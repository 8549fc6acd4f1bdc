"""Benchmark: images/s of `./run.sh prepare` on all cores against a naive single-process PIL loop.

    python benchmarks/bench_prepare.py [--quick] [--images N] [--profile | --writes]

Both read the same generated ImageNet-sized JPEGs (about 500x375, quality 90; 30% portrait):
prepare from archives in the official ILSVRC-2012 layout, end to end (indexing, decoding,
resizing, writing and hashing the shards, the mean/PCA sums, hashing the archives, the
manifest); the baseline from the same files on disk with open, convert, resize, crop and
nothing else. Prints both rates, the ratio, the CPU time per image of each (which bounds the
ratio on idle cores: prepare also writes and hashes the shards and sums the statistics), and the
time the full 1,281,167-image training set would take on this machine (from prepare's rate on
these images; real ImageNet JPEGs average roughly 400x350 and about 110 KB).

prepare's SHA-256 of every image, shard and archive costs 2-3x more CPU where OpenSSL cannot use
the CPU's SHA extensions (the machine line says which); `OPENSSL_ia32cap=":~0x20000000"` hides
them on a CPU that has them, to measure what such a machine sees.

`run(quick)` returns the rows `./run.sh bench` tabulates.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from data_prep import fake_ilsvrc as fake
from data_prep import prepare
from data_prep.shards import IMAGE_BYTES

FULL_TRAIN = 1_281_167


def make_images(n: int, seed: int = 0) -> list[bytes]:
    """n JPEGs of about 500x375 (some 375x500), quality 90: crops of a few textured pictures with a
    colour cast each, so that every file differs (synthesising each from scratch is slow)."""
    rng = np.random.default_rng(seed)
    bases = [fake.synthetic_image(rng, 640, 480) for _ in range(6)]
    out = []
    for i in range(n):
        base = bases[i % len(bases)]
        y, x = rng.integers(0, 480 - 375 + 1), rng.integers(0, 640 - 500 + 1)
        crop = base[y:y + 375, x:x + 500].astype(np.float32) * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20, 3)
        crop = np.clip(crop, 0, 255).astype(np.uint8)
        if rng.random() < 0.3:
            crop = crop.transpose(1, 0, 2)
        out.append(fake.encode(crop, quality=90))
    return out


def naive_loop(paths: list[Path]) -> None:
    """What a first script would do: open, convert, resize (same filter), crop, to an array."""
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BICUBIC)
        left, top = (im.width - 256) // 2, (im.height - 256) // 2
        np.asarray(im.crop((left, top, left + 256, top + 256)))


def _cpu(children: bool = True) -> float:
    """CPU seconds used so far by this process and (children) its finished children (the pool's
    workers)."""
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + (kids.ru_utime + kids.ru_stime if children else 0.0)


def _duration(seconds: float) -> str:
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min"


def write_inputs(tmp: Path, jpegs: list[bytes], n_classes: int = 10) -> tuple[list[Path], int]:
    """The JPEGs twice: as ILSVRC-2012 archives in tmp/src (prepare's input; 2% of them, at
    least one per class, the validation set) and as plain files in tmp/files (the naive loop's).
    Returns the files and the number of training images."""
    n_val = max(n_classes, len(jpegs) // 50)
    per_class = (len(jpegs) - n_val) // n_classes
    wnids = fake.random_classes(n_classes)
    k = iter(jpegs)
    train = {w: [(f"{w}_{j + 1}.JPEG", next(k)) for j in range(per_class)] for w in wnids}
    val = [(wnids[j % n_classes], b) for j, b in enumerate(k)]
    fake.write_ilsvrc2012(tmp / "src", train, val)
    (tmp / "files").mkdir()
    files = []
    for name, data in [x for v in train.values() for x in v] + [(f"val_{j}.JPEG", b) for j, (_, b) in enumerate(val)]:
        files.append(tmp / "files" / name)
        files[-1].write_bytes(data)
    return files, per_class * n_classes


def run(quick: bool = False, images: int | None = None, repeats: int | None = None) -> list[dict]:
    n = images or (240 if quick else 3000)
    repeats = repeats or (1 if quick else 5)
    workers = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        jpegs = make_images(n)
        files, _ = write_inputs(tmp, jpegs)
        total = len(files)
        # Four shards per worker, so that they end together, but no smaller than that: the real run
        # writes 1024-image shards, and tiny ones would weigh each shard's fixed costs (creating
        # the file, journaling it, sending its sums to the parent) far more than ImageNet does.
        shard_size = max(64, min(prepare.SHARD_SIZE, total // (4 * workers)))
        project = baseline = 0.0
        cpu_project = cpu_baseline = float("inf")
        for r in range(repeats):
            c, t = _cpu(), time.perf_counter()
            naive_loop(files)
            baseline = max(baseline, total / (time.perf_counter() - t))
            cpu_baseline = min(cpu_baseline, (_cpu() - c) / total)
            out = tmp / f"out{r}"
            c, main, t = _cpu(), _cpu(children=False), time.perf_counter()
            summary = prepare.prepare(prepare.Options(tmp / "src", out, workers=workers, shard_size=shard_size,
                                                      quiet=True))
            project = max(project, total / (time.perf_counter() - t))
            cpu, cpu_of_main = (_cpu() - c) / total, (_cpu(children=False) - main) / total
            if cpu < cpu_project:
                cpu_project, cpu_main = cpu, cpu_of_main
            assert summary.complete and sum(summary.counts.values()) == total
            shutil.rmtree(out)
        mean_kb = sum(len(b) for b in jpegs) / len(jpegs) / 1024
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = project / baseline
    full = FULL_TRAIN / project
    print(f"bench_prepare: {total} JPEGs (~500x375, q90, {mean_kb:.0f} KB on average), best of {repeats}; "
          f"load average before: {load:.2f} on {workers} cores (other processes slow both sides)")
    print(f"  prepare, {workers} workers (end to end): {project:8.1f} img/s")
    print(f"  naive PIL loop, 1 process:             {baseline:8.1f} img/s")
    print(f"  ratio: {ratio:.2f}x (target: >= 1.8x on two cores)")
    print(f"  CPU time per image: prepare {cpu_project * 1e3:.2f} ms (all processes; its main process "
          f"{cpu_main * 1e3:.2f} ms: indexing, planning, hashing the archives, the journal), naive loop "
          f"{cpu_baseline * 1e3:.2f} ms; so on {workers} otherwise idle cores the ratio is at most "
          f"{workers * cpu_baseline / cpu_project:.2f}x")
    print(f"  full ILSVRC-2012 train set ({FULL_TRAIN:,} images) at this rate: {_duration(full)} on this "
          f"machine ({workers} cores); {_duration(full * workers)} per core, i.e. one core alone "
          f"({project / workers:.1f} img/s per core)")
    what = f"prepare on {workers} cores vs a naive 1-process PIL loop, {total} 500x375 JPEGs"
    return [{"name": "prepare", "what": what, "unit": "img/s", "project": project, "baseline": baseline,
             "ratio": ratio}]


STAGES = {  # what one worker's time per image goes to: (cProfile entry, own or cumulative time)
    "JPEG decoding (libjpeg-turbo through Pillow)": ("<method 'decode' of 'ImagingDecoder' objects>", "own"),
    "resizing (Pillow's two passes)": ("<method 'resize' of 'ImagingCore' objects>", "own"),
    "SHA-256 (the images' bytes, the shards)": ("sha256.update", "own"),
    "exact sums for the mean and covariance (per training image)": ("stats.py:_add", "cumulative"),
    "writing the images into the shards (pwrite)": ("<built-in method posix.pwrite>", "own"),
    "dropping the written pages (posix_fadvise)": ("<built-in method posix.posix_fadvise>", "own"),
    "building shards, all of it": ("workers.py:build_shard", "cumulative"),
}


def profile_stages(images: int = 800) -> dict[str, float]:
    """Milliseconds per image of each stage in STAGES, from prepare run in this process (one
    worker) under cProfile, on `images` generated JPEGs. (cProfile adds a little to the Python
    parts; the C parts, decoding and resizing, are timed as they are.)"""
    import cProfile
    import pstats

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_profile_"))
    try:
        paths, n_train = write_inputs(tmp, make_images(images))
        options = prepare.Options(tmp / "src", tmp / "out", workers=1, shard_size=400, quiet=True)
        profiler = cProfile.Profile()
        profiler.runcall(prepare.prepare, options)
        naive = cProfile.Profile()
        naive.runcall(naive_loop, paths)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def ms(profile, name: str, which: str) -> float:
        seconds = 0.0
        for (file, _, function), (_, _, own, cumulative, _) in pstats.Stats(profile).stats.items():
            if (name == function or (":" in name and name == f"{Path(file).name}:{function}")
                    or (name == "sha256.update" and function.startswith("<method 'update' of '_")
                        and ("HASH" in function or "SHA256" in function))):  # OpenSSL's or Python's own
                seconds += own if which == "own" else cumulative
        return seconds / images * 1e3

    out = {stage: ms(profiler, name, which) for stage, (name, which) in STAGES.items()}
    out["exact sums for the mean and covariance (per training image)"] *= images / n_train  # training images only
    out["the naive loop's resizing (the whole image, then the crop)"] = ms(naive, *STAGES["resizing (Pillow's two passes)"])
    return out


def write_costs(images: int = 384, rounds: int = 3, settle: float = 5.0) -> dict[str, float]:
    """Kernel (system) CPU milliseconds per 196,608-byte image of writing shard-sized files: into
    new files whose pages come from memory not in use recently, and into new files written right
    after an equal file was deleted (its pages just freed), as prepare's workers do: each drops the
    pages it wrote a few megabytes behind its writes (data_prep.shards.ShardWriter), and the parent
    drops each finished shard (repro.files.fsync, uncache)."""
    import resource

    block = np.random.default_rng(0).integers(0, 256, 64 * IMAGE_BYTES, dtype=np.uint8).tobytes()
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_writes_"))

    def write(name: str) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for i in range(images // 64):
                os.pwrite(fd, block, i * len(block))
        finally:
            os.close(fd)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) / images * 1e3

    try:
        fresh, reused = [], []
        for r in range(rounds):
            time.sleep(settle)  # whatever this process or others freed before is no longer "just freed"
            fresh.append(write(f"new{r}"))
            os.unlink(tmp / f"new{r}")
            reused.append(write(f"after{r}"))
            os.unlink(tmp / f"after{r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"new file, pages not in use recently": float(np.median(fresh)),
            "new file, pages just freed": float(np.median(reused))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="240 images, one repeat")
    p.add_argument("--images", type=int, help="number of JPEGs (default 3000; 240 with --quick)")
    p.add_argument("--repeats", type=int, help="best of this many runs of each (default 5; 1 with --quick)")
    p.add_argument("--profile", action="store_true",
                   help="instead: where one worker's time per image goes (decoding, resizing, hashing, ...)")
    p.add_argument("--writes", action="store_true",
                   help="instead: kernel CPU time of writing shard-sized files into fresh or just-freed pages")
    args = p.parse_args(argv)
    if args.writes:
        print("bench_prepare --writes: kernel CPU ms per 196,608-byte image written (median of 3 rounds of 384 "
              "images, 5 s apart)")
        for what, ms in write_costs().items():
            print(f"  {what:40s} {ms:6.3f}")
        return 0
    if args.profile:
        n = args.images or 800
        print(f"bench_prepare --profile: one worker, {n} JPEGs (~500x375), ms per image")
        for stage, ms in profile_stages(n).items():
            print(f"  {stage:60s} {ms:6.3f}")
        return 0
    run(args.quick, args.images, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
