"""The demo's dataset: ten classes of shapes and textures drawn with Pillow, written as the
official ILSVRC-2012 archives, so that `./run.sh demo` goes through the real `prepare` path.

Deterministic from a seed. Images are ImageNet-sized (about 500x375, landscape or portrait,
JPEG quality 90). Each class is a shape or a texture; its colours come from a class palette
with random jitter, on a random noisy background, at a random position, size and angle, so that
the network must learn more than one mean colour per class.
"""
from __future__ import annotations

import colorsys
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data_prep import fake_ilsvrc

# (made-up WordNet-style id, words, base hue in [0, 1)); ids sort in this order
CLASSES = (
    ("n90000001", "disc", 0.00),
    ("n90000002", "square", 0.10),
    ("n90000003", "triangle", 0.20),
    ("n90000004", "rings", 0.30),
    ("n90000005", "stripes", 0.40),
    ("n90000006", "checkerboard", 0.50),
    ("n90000007", "polka dots", 0.60),
    ("n90000008", "cross", 0.70),
    ("n90000009", "waves", 0.80),
    ("n90000010", "star", 0.90),
)
VERSION = 1  # bump when drawing changes, so the demo regenerates its archives
SIZES = ((500, 375), (500, 333), (375, 500), (450, 450), (500, 400))


def _colour(rng: np.random.Generator, hue: float, jitter: float = 0.06) -> tuple[int, int, int]:
    h = (hue + rng.uniform(-jitter, jitter)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A dull random colour with a gentle gradient and sensor-like noise."""
    base = rng.uniform(60, 190, 3)
    ramp = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(-30, 30, 3)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(base + ramp + noise, 0, 255).astype(np.uint8))


def _polygon(cx, cy, r, n, angle, inner=None):
    points = []
    for i in range(n * (2 if inner else 1)):
        radius = inner if inner and i % 2 else r
        a = angle + math.pi * 2 * i / (n * (2 if inner else 1))
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def draw(class_index: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One image of class `class_index` (0..9)."""
    w, h = size
    img = _background(rng, w, h)
    d = ImageDraw.Draw(img)
    hue = CLASSES[class_index][2]
    fg, fg2 = _colour(rng, hue), _colour(rng, hue)
    s = min(w, h)
    r = rng.uniform(0.22, 0.42) * s
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASSES[class_index][1]
    if name == "disc":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif name == "square":
        d.polygon(_polygon(cx, cy, r, 4, angle), fill=fg)
    elif name == "triangle":
        d.polygon(_polygon(cx, cy, r, 3, angle), fill=fg)
    elif name == "rings":
        step = r / rng.integers(3, 6)
        for k in range(int(r / step), 0, -1):
            d.ellipse((cx - k * step, cy - k * step, cx + k * step, cy + k * step), fill=fg if k % 2 else fg2)
    elif name == "stripes":  # a striped patch at a random angle
        period = rng.uniform(0.05, 0.1) * s
        patch = Image.new("RGB", (2 * int(r), 2 * int(r)), fg2)
        pd = ImageDraw.Draw(patch)
        for x in np.arange(0, 2 * r, period):
            pd.rectangle((x, 0, x + period / 2, 2 * r), fill=fg)
        patch = patch.rotate(math.degrees(angle), expand=False)
        mask = Image.new("L", patch.size, 0)
        ImageDraw.Draw(mask).ellipse((0, 0) + patch.size, fill=255)
        img.paste(patch, (int(cx - r), int(cy - r)), mask)
    elif name == "checkerboard":
        n = int(rng.integers(4, 7))
        cell = 2 * r / n
        for i in range(n):
            for j in range(n):
                colour = fg if (i + j) % 2 else fg2
                d.rectangle((cx - r + i * cell, cy - r + j * cell, cx - r + (i + 1) * cell, cy - r + (j + 1) * cell), fill=colour)
    elif name == "polka dots":
        spacing = rng.uniform(0.08, 0.14) * s
        dot = spacing * rng.uniform(0.2, 0.35)
        off = rng.uniform(0, spacing, 2)
        for x in np.arange(off[0], w, spacing):
            for y in np.arange(off[1], h, spacing):
                d.ellipse((x - dot, y - dot, x + dot, y + dot), fill=fg)
    elif name == "cross":
        t = r * rng.uniform(0.25, 0.4)
        c, si = math.cos(angle), math.sin(angle)
        for dx, dy in ((r, t), (t, r)):
            corners = [(-dx, -dy), (dx, -dy), (dx, dy), (-dx, dy)]
            d.polygon([(cx + x * c - y * si, cy + x * si + y * c) for x, y in corners], fill=fg)
    elif name == "waves":
        amp, period = rng.uniform(0.02, 0.05) * s, rng.uniform(0.15, 0.3) * s
        gap = rng.uniform(0.06, 0.1) * s
        phase = rng.uniform(0, 2 * math.pi)
        for y0 in np.arange(rng.uniform(0, gap), h, gap):
            pts = [(x, y0 + amp * math.sin(2 * math.pi * x / period + phase)) for x in range(0, w + 8, 8)]
            d.line(pts, fill=fg, width=max(2, int(gap / 3)))
    elif name == "star":
        d.polygon(_polygon(cx, cy, r, 5, angle, inner=r * 0.42), fill=fg)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def generate(out_dir: str | Path, train_per_class: int = 100, val_per_class: int = 20,
             classes: int = len(CLASSES), seed: int = 0, progress=None) -> fake_ilsvrc.FakeDataset:
    """Write ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz
    of the demo set into `out_dir`. The same arguments always give the same bytes."""
    if not 2 <= classes <= len(CLASSES):
        raise ValueError(f"the demo set has 2 to {len(CLASSES)} classes, not {classes}")
    rng = np.random.default_rng(seed)
    train, val = {}, []
    for c in range(classes):
        wnid = CLASSES[c][0]
        train[wnid] = []
        for i in range(train_per_class):
            size = SIZES[rng.integers(len(SIZES))]
            train[wnid].append((f"{wnid}_{i + 1}.JPEG", jpeg(draw(c, rng, size))))
            if progress:
                progress.update(1)
    for i in range(val_per_class * classes):  # interleaved, as ILSVRC's validation files are
        c = i % classes
        size = SIZES[rng.integers(len(SIZES))]
        val.append((CLASSES[c][0], jpeg(draw(c, rng, size))))
        if progress:
            progress.update(1)
    words = {wnid: name for wnid, name, _ in CLASSES[:classes]}
    return fake_ilsvrc.write_ilsvrc2012(out_dir, train, val, words)
