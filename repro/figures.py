"""The report's figures as PNG files: learning curves, the paper's Figure 3 (the conv1 kernels of
each tower) and Figure 4 (top-5 predictions; training images nearest by fc7 activations).

matplotlib's object API with its Agg canvas (Figure.savefig), so no pyplot state and no display.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from repro import augment, data
from repro.progress import Progress

COLUMNS = 16  # kernels per row in Figure 3, as in the paper


# ------------------------------------------------------------------------- learning curves

def per_epoch(rows: list[dict]) -> dict[str, list]:
    """Training loss (mean) and learning rate (last) per epoch from train rows, and validation
    top-1 / top-5 (percent) per epoch from val rows. A train row at fractional epoch e belongs to
    epoch ceil(e) (1-based); a val row's epoch is the number of epochs completed."""
    train: dict[int, list] = {}
    for r in rows:
        if r.get("kind") == "train" and r.get("loss") is not None:
            train.setdefault(max(1, math.ceil(r["epoch"] - 1e-9)), []).append(r)
    val = [r for r in rows if r.get("kind") == "val"]
    epochs = sorted(train)
    return {"epoch": epochs, "loss": [float(np.mean([r["loss"] for r in train[e]])) for e in epochs],
            "lr": [train[e][-1]["lr"] for e in epochs],
            "val_epoch": [r["epoch"] for r in val], "val_top1": [100 * r["top1_error"] for r in val],
            "val_top5": [100 * r["top5_error"] for r in val]}


def learning_curves(series: dict[str, list[dict]], out: Path) -> dict[str, dict]:
    """One PNG, three panels (training loss, validation error, learning rate per epoch), one
    line per run. series: run name -> its metrics.jsonl rows. Returns the plotted numbers."""
    fig = Figure(figsize=(14, 3.8), layout="constrained")
    loss_ax, val_ax, lr_ax = fig.subplots(1, 3)
    curves = {}
    for i, (name, rows) in enumerate(series.items()):
        c = per_epoch(rows)
        curves[name] = c
        colour = f"C{i % 10}"
        loss_ax.plot(c["epoch"], c["loss"], "o-", color=colour, ms=3, label=name)
        val_ax.plot(c["val_epoch"], c["val_top1"], "o-", color=colour, ms=3, label=f"{name} top-1")
        val_ax.plot(c["val_epoch"], c["val_top5"], "s--", color=colour, ms=3, label=f"{name} top-5")
        if c["lr"]:
            lr_ax.semilogy(c["epoch"], c["lr"], "o-", color=colour, ms=3, label=name)
    for ax, title, ylabel in ((loss_ax, "training loss (mean per epoch)", "cross-entropy"),
                              (val_ax, "validation error (centre crop)", "error %"),
                              (lr_ax, "learning rate", "lr")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data():
            ax.legend(fontsize=7)
            lo, hi = ax.get_xlim()
            if hi - lo < 2:  # one epoch so far: keep integer ticks around it
                ax.set_xlim(lo - 1, hi + 1)
        else:
            ax.text(0.5, 0.5, "no data logged yet", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(out, dpi=100)
    return curves


# ------------------------------------------------------------------ Figure 3: conv1 kernels

def colour_specificity(kernels: np.ndarray) -> np.ndarray:
    """Per kernel [N, 3, h, w] -> [N] in [0, 1]: the fraction of the kernel's variance that its
    grey component does not explain.

    With w the kernel minus its mean, grey = the mean of w over the three colour channels at each
    pixel, and chroma = w - grey (which sums to zero over the channels at every pixel):
    |w|^2 = 3 |grey|^2 + |chroma|^2, and the number is |chroma|^2 / |w|^2. 0: all three channels
    hold the same pattern (colour-agnostic); 1: the channels cancel at every pixel (purely
    chromatic). Weights drawn independently at random give (3 - 1) / 3 = 2/3 in expectation.
    """
    w = kernels - kernels.mean(axis=(1, 2, 3), keepdims=True)
    chroma = w - w.mean(axis=1, keepdims=True)
    total = (w ** 2).sum(axis=(1, 2, 3))
    return (chroma ** 2).sum(axis=(1, 2, 3)) / np.maximum(total, np.finfo(np.float32).tiny)


def _mosaic(kernels: np.ndarray, columns: int) -> np.ndarray:
    """[N, 3, h, w] -> an RGB image of the kernels in rows of `columns`, each kernel stretched
    to [0, 1] by its own minimum and maximum, 1-pixel white gaps."""
    n, _, h, w = kernels.shape
    rows = -(-n // columns)
    out = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), np.float32)
    for i, k in enumerate(kernels):
        lo, hi = k.min(), k.max()
        k = (k - lo) / (hi - lo) if hi > lo else np.full_like(k, 0.5)
        r, c = divmod(i, columns)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = k.transpose(1, 2, 0)
    return out


def kernel_mosaic(towers: list[np.ndarray], columns: int = COLUMNS) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1]: each tower's kernels [N, 3, h, w] in rows of `columns`,
    tower 0 above tower 1, a grey band between them (the image TensorBoard shows per epoch)."""
    columns = min(columns, max(len(k) for k in towers))
    blocks = [_mosaic(k, columns) for k in towers]
    band = np.full((3, blocks[0].shape[1], 3), 0.5, np.float32)
    return np.concatenate([x for b in blocks for x in (b, band)][:-1])


def figure3(towers: list[np.ndarray], out: Path, title: str) -> list[float]:
    """The conv1 kernels, tower 0 above tower 1, each tower labelled with its mean colour
    specificity (colour_specificity). Returns the number per tower."""
    scores = [float(colour_specificity(k).mean()) for k in towers]
    columns = min(COLUMNS, max(len(k) for k in towers))
    blocks = [_mosaic(k, columns) for k in towers]
    fig = Figure(figsize=(columns * 0.55 + 1, sum(b.shape[0] for b in blocks) / 12 * 0.55 + 1.2),
                 layout="constrained")
    axes = fig.subplots(len(blocks), 1, squeeze=False)[:, 0]
    for t, (ax, block, score) in enumerate(zip(axes, blocks, scores)):
        ax.imshow(block, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"tower {t}: {len(towers[t])} kernels, colour specificity {score:.2f} "
                     f"(0 grey, 1 purely chromatic)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=100)
    return scores


# ------------------------------------------------ Figure 4: predictions and nearest images

class SplitImages:
    """Random access to the 256x256 images of a split by index (shards concatenated)."""

    def __init__(self, root, split: str):
        self.split = data.open_split(root, split)
        self.starts = self.split.starts
        self.labels = np.concatenate(self.split.labels)
        self._images = data.ShardImages(self.split.metas)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> np.ndarray:
        j = int(np.searchsorted(self.starts, i, side="right") - 1)
        return np.asarray(self._images[j][i - self.starts[j]])


@torch.no_grad()
def fc7(model, normalizer, images: torch.Tensor, offsets) -> torch.Tensor:
    """fc7 activations (B, 4096) of uint8 views [B, 1, crop, crop, 3]."""
    x = normalizer.views(images, offsets).to(model.placement.output_device)
    return model(x, fc7=True)[1].float().cpu()


@torch.no_grad()
def nearest_training_images(model, normalizer, root, queries: torch.Tensor, k: int, pool: int,
                            batch_size: int, workers: int, progress=None):
    """The k training images nearest to each query by Euclidean distance of fc7 activations
    (centre crops), searching the first `pool` training images in stored order (the stored
    order is shuffled once, so these are a random sample). -> (indices, distances) [Q, k], searched."""
    best_d = torch.full((len(queries), 0), float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    seen = 0
    for images, _, offsets in data.eval_batches(root, "train", "centre", batch_size, workers):
        images = images[:pool - seen]
        feats = fc7(model, normalizer, images, offsets)
        d = torch.cdist(queries, feats)  # (Q, B)
        idx = torch.arange(seen, seen + len(images)).expand(len(queries), -1)
        best_d, order = torch.cat([best_d, d], 1).sort(dim=1)
        best_i = torch.cat([best_i, idx], 1).gather(1, order)
        best_d, best_i = best_d[:, :k], best_i[:, :k]
        seen += len(images)
        if progress is not None:
            progress.update(len(images))
        if seen >= pool:
            break
    return best_i, best_d, seen


def figure4(model, normalizer, root, split: str, probs: torch.Tensor, out: Path, n_images: int = 5,
            k: int = 6, pool: int = 10000, batch_size: int = 64, workers: int = 0, views: str = "10 views",
            quiet: bool = False) -> dict:
    """For n_images validation images spread evenly over the split (no picking): the image, its
    top-5 classes with the 10-view probabilities (`probs`, [N, C]; the true class in red), and
    the k training images nearest by fc7 activations. Returns what the figure shows, as data."""
    names = data.class_names(root)
    val, train = SplitImages(root, split), SplitImages(root, "train")
    picks = np.unique(np.linspace(0, len(val) - 1, min(n_images, len(val))).round().astype(int))
    centre = data.view_offsets("centre")
    crops = torch.from_numpy(np.stack([augment.centre_crop(val[i]) for i in picks]))[:, None]
    queries = fc7(model, normalizer, crops, centre)
    pool = min(pool, len(train))
    with Progress(pool, "figure 4: fc7 of training images", quiet=quiet) as bar:
        near, dist, searched = nearest_training_images(model, normalizer, root, queries, k, pool,
                                                       batch_size, workers, bar)
    shown = []
    fig = Figure(figsize=(1.7 * (k + 3), 1.9 * len(picks)), layout="constrained")
    grid = fig.add_gridspec(len(picks), k + 3)
    for row, i in enumerate(picks):
        p, top = probs[i].topk(min(5, probs.shape[1]))
        truth = int(val.labels[i])
        entry = {"index": int(i), "label": truth, "words": names[truth][1],
                 "top5": [{"class": int(c), "words": names[c][1], "prob": float(q)} for q, c in zip(p, top.tolist())],
                 "neighbours": [{"index": int(j), "label": int(train.labels[j]),
                                 "words": names[int(train.labels[j])][1], "distance": float(d)}
                                for j, d in zip(near[row].tolist(), dist[row].tolist())]}
        shown.append(entry)
        _image(fig.add_subplot(grid[row, 0]), val[i], f"{split} #{i}\n{_short(entry['words'])}")
        bars = fig.add_subplot(grid[row, 1:3])
        labels = [_short(t["words"]) for t in entry["top5"]][::-1]
        colours = ["tab:red" if t["class"] == truth else "tab:blue" for t in entry["top5"]][::-1]
        bars.barh(range(len(labels)), [t["prob"] for t in entry["top5"]][::-1], color=colours)
        bars.set_yticks(range(len(labels)), labels, fontsize=7)
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=7)
        for col, nb in enumerate(entry["neighbours"]):
            _image(fig.add_subplot(grid[row, 3 + col]), train[nb["index"]],
                   f"{_short(nb['words'])}\nd = {nb['distance']:.3g}")
    fig.suptitle(f"top-5 ({views}; true class in red) and the {k} nearest of {searched:,} training "
                 f"images by fc7 distance", fontsize=9)
    fig.savefig(out, dpi=72)
    return {"images": shown, "searched": searched, "train_images": len(train), "k": k}


def _image(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def _short(text: str, n: int = 22) -> str:
    text = text.split(",")[0]
    return text if len(text) <= n else text[:n - 1] + "…"
