"""Benchmark: augmented training batches per second, the shard pipeline against a JPEG folder.

    python benchmarks/bench_loader.py [--quick] [--images N]

Both pipelines read the same generated images in the same run, from the page cache, with two
loader workers and batches of 128:
- project: repro.data.train_batches over HDF5 shards (the images resized to 256 and centre-
  cropped, as `prepare` does), delivering ready uint8 224x224 crops (mirrored where drawn) in the
  main process, in the trainer's ring of reused shared buffers; a second row adds the float work (mean image, PCA lighting) on the CPU in the main
  process, i.e. the network's input ready as with `augment.on = "cpu"`;
- baseline: the usual torchvision-style folder pipeline written with PIL + torch (torchvision
  itself is not a dependency): JPEG files in class folders (ImageNet-sized, about 500x375,
  quality 90), PIL decode, convert RGB, resize shorter side to 256 (bilinear), random crop 224,
  flip, to float tensor in [0, 1], normalise by mean and std; DataLoader with 2 workers, shuffled.

Throughput is images delivered to the main process per second of wall time in the steady state:
each epoch's first few batches (loader start-up and what was prefetched during it) are not
counted, for either pipeline; start-up is paid once per epoch, i.e. per 10,000 batches on ImageNet. run() returns the rows for `./run.sh bench`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from data_prep import shards  # noqa: E402
from repro import data  # noqa: E402
from repro.config import Config  # noqa: E402

BATCH, WORKERS, CLASSES = 128, 2, 10
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


# ------------------------------------------------------------------------------ the images

def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like image: smooth colour fields, edges and fine texture (JPEGs of ~100 KB)."""
    base = rng.uniform(0, 255, (h // 24 + 1, w // 24 + 1, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), np.float32)
    img += rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _resize_shorter(img: Image.Image, size: int = 256) -> Image.Image:
    w, h = img.size
    s = size / min(w, h)
    return img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)


def make_images(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """n JPEGs in class folders under root/jpeg, and the same images as shards under root/shards."""
    rng = np.random.default_rng(seed)
    jpeg, shard_dir = root / "jpeg", root / "shards"
    shard_dir.mkdir(parents=True)
    squares, labels, names = np.empty((n, 256, 256, 3), np.uint8), np.arange(n) % CLASSES, []
    for i, label in enumerate(labels):
        w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
        img = _photo(rng, w, h)
        folder = jpeg / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"n{label:08d}_{i}.JPEG"
        img.save(folder / name, quality=90)
        small = _resize_shorter(Image.open(folder / name).convert("RGB"))
        top, left = (small.size[1] - 256) // 2, (small.size[0] - 256) // 2
        squares[i] = np.asarray(small)[top:top + 256, left:left + 256]
        names.append(name)
    order = rng.permutation(n)  # training shards hold one shuffled order
    wnids, words = [f"n{c:08d}" for c in range(CLASSES)], [f"class {c}" for c in range(CLASSES)]
    entries, per_shard = [], 512
    for index, lo in enumerate(range(0, n, per_shard)):
        rows = order[lo:lo + per_shard]
        name = shards.shard_name("train", index)
        shards.write_shard(shard_dir / name, squares[rows], labels[rows], labels[rows] + 1,
                           [names[r] for r in rows], wnids, words, "train", index)
        entries.append({"name": name, "count": len(rows), "bytes": (shard_dir / name).stat().st_size,
                        "sha256": ""})
    pixels = squares.reshape(-1, 3).astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
    shards.write_stats(shard_dir, shards.Stats(squares.mean(0, dtype=np.float64), np.cov(pixels, rowvar=False),
                                               values[::-1], vectors[:, ::-1], len(pixels)))
    shards.write_manifest(shard_dir, {
        "schema_version": shards.SCHEMA_VERSION, "year": 2012, "seed": seed, "resize": "bilinear",
        "classes": [{"index": c, "wnid": wnids[c], "words": words[c], "ilsvrc_id": c + 1}
                    for c in range(CLASSES)],
        "splits": {"train": {"count": n, "per_class": np.bincount(labels).tolist(), "shards": entries}},
        "sources": [], "rejects": {"count": 0, "file": ""}})
    return jpeg, shard_dir


def warm_page_cache(*dirs: Path) -> int:
    total = 0
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                total += len(p.read_bytes())
    return total


# ------------------------------------------------------------------------ the JPEG baseline

class JpegFolder(torch.utils.data.Dataset):
    """torchvision's ImageFolder + Resize(256), RandomCrop(224), RandomHorizontalFlip(),
    ToTensor(), Normalize(mean, std), written with PIL and torch."""

    def __init__(self, root: Path):
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(p, c) for c, name in enumerate(classes) for p in sorted((root / name).iterdir())]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        img = _resize_shorter(img)
        w, h = img.size
        top, left = int(torch.randint(0, h - 224 + 1, ())), int(torch.randint(0, w - 224 + 1, ()))
        img = img.crop((left, top, left + 224, top + 224))
        if torch.rand(()) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous()
        x = x.to(torch.float32).div(255)
        return x.sub_(MEAN[:, None, None]).div_(STD[:, None, None]), label


# ------------------------------------------------------------------------------ measurement

SKIP = 2 * WORKERS + 1  # batches a DataLoader may hold ready when its first batch arrives


def _rate(epochs: int, make_iter, consume=lambda b: None) -> float:
    """Steady images per second: in each epoch, from batch SKIP on, when start-up (forking the
    workers, opening files) and the batches prefetched during it are behind. Start-up is paid
    once per epoch, i.e. once per 10,000 batches on ImageNet."""
    n, seconds = 0, 0.0
    for epoch in range(epochs):
        start = None
        for i, batch in enumerate(make_iter(epoch)):
            consume(batch)
            if i == SKIP - 1:
                start = time.perf_counter()
            elif i >= SKIP:
                n += len(batch[1]) if isinstance(batch, (tuple, list)) else len(batch)
        if start is None:
            raise ValueError(f"an epoch needs more than {SKIP} batches to measure a steady rate")
        seconds += time.perf_counter() - start
    return n / seconds


def run(quick: bool = False, images: int | None = None) -> list[dict]:
    n = images or (1024 if quick else 2048)
    torch.set_num_threads(1)  # the main process only receives batches; leave the cores to workers
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        jpeg, shard_dir = make_images(Path(tmp), n)
        warm_page_cache(jpeg, shard_dir)
        cfg = Config()
        cfg.data.batch_size, cfg.data.workers = BATCH, WORKERS
        baseline_loader = lambda epoch: torch.utils.data.DataLoader(
            JpegFolder(jpeg), batch_size=BATCH, shuffle=True, num_workers=WORKERS)
        project_iter = lambda epoch: data.train_batches(shard_dir, cfg, epoch, reuse_buffers=True)  # as the trainer
        normalizer = data.make_normalizer(shard_dir, cfg, "cpu")
        # One untimed pass of each (imports, first-touch of memory maps), then the timed passes.
        _rate(1, project_iter)
        baseline = _rate(1 if quick else 2, baseline_loader)
        uint8 = _rate(3 if quick else 8, project_iter)
        floats = _rate(2 if quick else 4, project_iter, consume=normalizer.train)
    setup = (f"{n} images, batch {BATCH}, {WORKERS} workers, page cache; baseline: JPEG folder "
             "(PIL decode, resize 256, random crop 224, flip, float, normalise)")
    return [
        {"name": "loader", "what": "loader: ready uint8 crops vs JPEG-folder pipeline", "setup": setup,
         "unit": "img/s", "project": uint8, "baseline": baseline, "ratio": uint8 / baseline},
        {"name": "loader_float", "what": "loader: float input (mean, lighting on CPU) vs JPEG folder", "setup": setup,
         "unit": "img/s", "project": floats, "baseline": baseline, "ratio": floats / baseline},
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and passes")
    parser.add_argument("--images", type=int, default=None, help="number of images (default 2048)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = run(args.quick, args.images)
    for r in rows:
        print(f"{r['what']}:\n  project {r['project']:8.0f} img/s   "
              f"baseline {r['baseline']:7.0f} img/s   ratio {r['ratio']:5.1f}x")
    print(rows[0]["setup"])
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
