"""Watching a run live in TensorBoard: event files in RUN_DIR/tensorboard/, beside metrics.jsonl.

    tensorboard --logdir runs/          # then open http://localhost:6006

The trainer writes the same numbers as its metrics.jsonl lines (training loss, top-1 and top-5
error, learning rate, images per second, the share of each step spent waiting for data; the
validation errors after each epoch) and, after each epoch, the conv1 kernels of each tower as
an image (the paper's Figure 3, tower 0 above tower 1). Nothing else depends on these files:
`./run.sh report` reads metrics.jsonl only.

Written when the optional `tensorboard` package is installed (`pip install .[watch]`) and
train.tensorboard is true (the default); otherwise nothing is written and nothing changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIR = "tensorboard"


def available() -> bool:
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class Watch:
    """The writer's TensorBoard event files of one run (one file per training session)."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / DIR))

    @classmethod
    def open(cls, run_dir: Path, enabled: bool) -> "Watch | None":
        return cls(run_dir) if enabled and available() else None

    def train(self, step: int, row: dict) -> None:
        """One metrics.jsonl "train" line: loss, errors, learning rate, speed, data wait."""
        for key in ("loss", "top1_error", "top5_error", "lr", "img_per_s", "data_wait_share"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", row[key], step)

    def val(self, step: int, row: dict) -> None:
        for key in ("top1_error", "top5_error", "loss"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"val/{key}", row[key], step)

    def conv1_kernels(self, step: int, towers: list[np.ndarray]) -> None:
        """conv1's kernels [N, 3, 11, 11] per tower, as one image (figures.kernel_mosaic)."""
        from repro import figures

        self.writer.add_image("conv1_kernels", figures.kernel_mosaic(towers), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
