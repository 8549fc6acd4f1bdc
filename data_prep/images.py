"""One source image -> one 256x256 RGB array (paper section 2; docs/fidelity.md, "Choices the paper leaves open").

"Rescale so the shorter side is 256, take the central 256x256 crop, keep raw RGB."

- Decoding: Pillow, always the full image (no JPEG draft / DCT-domain downscaling, which would
  change pixels depending on the file's size). EXIF orientation is ignored, as in the usual
  ImageNet pipelines.
- Colour: CMYK (Adobe-inverted or not), greyscale, palette, and PNG files named .JPEG all come
  out RGB through Pillow's convert("RGB"); an alpha channel is dropped.
- Depth: Pillow's convert() clips wider greyscale values at 255 (a 16-bit photo would come out
  almost white), so single-channel images deeper than 8 bits are first scaled to 8 bits
  (to_8bit), each value rounded to the nearest level:
  - 16-bit (modes I;16, I;16L, I;16B, I;16N): by their nominal range, 0..65535 -> 0..255
    (v * 255 / 65535; a 16-bit file made from an 8-bit one, v * 257, gives back exactly v);
  - 32-bit integer (mode I, e.g. an int32 TIFF): negative values are 0; the range is the
    smallest of 0..255, 0..65535 and 0..2**31-1 that holds the image's largest value (such files
    mostly carry 8- or 16-bit data);
  - 32-bit float (mode F): NaN is 0; 0..1 if no value exceeds 1 (the usual float convention),
    else 0..255; values outside the range are clipped.
  Multi-channel 16-bit files (48-bit RGB PNG or TIFF) are reduced to 8 bits by Pillow itself.
- Resize: Pillow's BICUBIC filter, which is antialiased when shrinking (the kernel is widened by
  the reduction factor, as in Pillow's resize since 2.7), to the size whose shorter side is 256;
  the other side is rounded half up. Then the central crop (left/top offsets rounded down).
  The two separable passes run in a fixed order, horizontal first, each rounding to 8 bits: what
  Pillow's one-call resize did for years (Pillow 13 runs the vertical pass first for some tall
  images, e.g. 350x713, which changes values by up to 20 levels on noise images), so the shards do
  not depend on the Pillow version. Only the kept pixels are computed (resize_crop): equal to the
  two passes followed by the crop except for about one value in 10,000 on photographs (up to one
  in 1,000 on noise), off by 1 (very rarely 2).
- A few ILSVRC-2010 files are stored gzip-compressed; they are decompressed first.
"""
from __future__ import annotations

import gzip
import io
import math
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

SIZE = 256
RESAMPLE = Image.Resampling.BICUBIC
DESCRIPTION = ("Pillow BICUBIC (antialiased: kernel widened by the reduction factor), horizontal pass "
               "then vertical, full decode, shorter side to 256 (rounded half up), central 256x256 crop "
               "computed alone (Pillow resize box), RGB")


class BadImage(Exception):
    """The bytes are not a decodable image; the message is the reason written to rejects.tsv."""


def resized_size(width: int, height: int, size: int = SIZE) -> tuple[int, int]:
    """The (width, height) whose shorter side is `size`, the other rounded half up."""
    if width <= height:
        return size, max(size, (height * size + width // 2) // width)
    return max(size, (width * size + height // 2) // height), size


def crop_box(width: int, height: int, size: int = SIZE) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central size x size square."""
    left, top = (width - size) // 2, (height - size) // 2
    return left, top, left + size, top + size


def decode_rgb(data: bytes) -> Image.Image:
    """Decode fully and convert to RGB; raises BadImage with the reason."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise BadImage(f"broken gzip stream: {e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Possibly corrupt EXIF data"
            im = Image.open(io.BytesIO(data))
            im.load()  # a truncated file fails here (Pillow's LOAD_TRUNCATED_IMAGES is off)
            if im.mode.startswith("I") or im.mode == "F":  # I, I;16*: deeper than 8 bits
                im = to_8bit(im)
            if im.mode != "RGB":
                im = im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large: {e}") from None
    except UnidentifiedImageError:  # Pillow's text names its in-memory file object, not the file
        raise BadImage("not an image file Pillow can read (cannot identify image file)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's ways of saying "broken"
        raise BadImage(one_line(e)) from None
    except Exception as e:  # a decoder tripping over a malformed file must not stop the run
        raise BadImage(f"{type(e).__name__}: {one_line(e)}") from None
    if im.width < 1 or im.height < 1:
        raise BadImage(f"empty image {im.width}x{im.height}")
    return im


def to_8bit(im: Image.Image) -> Image.Image:
    """A 16- or 32-bit single-channel image as mode L, scaled by the rule in the module docstring."""
    a = np.asarray(im)
    if im.mode == "F":
        x = np.nan_to_num(a.astype(np.float64), nan=0.0)
        if x.size and x.max() <= 1.0:
            x = x * 255.0
        return Image.fromarray(np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8), "L")
    if im.mode.startswith("I;16"):
        v, full = a.astype(np.int64), 65535
    elif im.mode == "I":
        v = np.maximum(a.astype(np.int64), 0)
        top = int(v.max()) if v.size else 0
        full = 255 if top <= 255 else 65535 if top <= 65535 else 2 ** 31 - 1
    else:
        raise ValueError(f"to_8bit: mode {im.mode} is not a 16- or 32-bit single-channel mode")
    return Image.fromarray(((v * 255 + full // 2) // full).astype(np.uint8), "L")


def resize_crop(im: Image.Image, size: int = SIZE) -> np.ndarray:
    """Shorter side to `size`, central crop: uint8 [size, size, 3].

    The same sampling grid and filter as resizing to (w, h) and cropping the centre, with only the
    kept pixels computed. The resize is two separable passes, horizontal first into an 8-bit
    intermediate, then vertical (the order fixed: see the module docstring), run one at a time:
    - first the source is cut to the rows and columns some kept pixel reaches (exact: what is cut
      has no weight in any kept pixel);
    - the horizontal pass, for a landscape image on the central `size` columns only;
    - the vertical pass, for a portrait image on the central `size` rows only.
    About a fifth less work than resize-then-crop for a 4:3 image. A pass limited to part of its
    output (Pillow's `box`) places its samples through Pillow's float32 box coordinates, which
    moves them by up to about 1e-5 pixel: about one value in 10,000 on photographs (up to one in
    1,000 on noise) differs from resize-then-crop, by 1 (very rarely by 2; tests/pixels.py)."""
    W, H = im.size
    w, h = resized_size(W, H, size)
    left, top = (w - size) // 2, (h - size) // 2
    sx, sy = W / w, H / h
    c0, c1 = (left, left + size) if w == W else _source_range(left, size, sx, W)
    r0, r1 = (top, top + size) if h == H else _source_range(top, size, sy, H)
    if (c0, r0, c1, r1) != (0, 0, W, H):
        im = im.crop((c0, r0, c1, r1))
    rows = r1 - r0
    if w != W:
        box = None if (w, c0, c1) == (size, 0, W) else (left * sx - c0, 0, (left + size) * sx - c0, rows)
        im = im.resize((size, rows), RESAMPLE, box=box)
    if h != H:
        box = None if (h, r0, r1) == (size, 0, H) else (0, top * sy - r0, size, (top + size) * sy - r0)
        im = im.resize((size, size), RESAMPLE, box=box)
    return np.asarray(im)


def _source_range(first: int, count: int, scale: float, length: int) -> tuple[int, int]:
    """The source pixels [a, b) that a pass's outputs first .. first + count - 1 read: BICUBIC
    reaches 2 pixels, widened by the reduction factor; one more on each side for rounding."""
    reach = 2.0 * max(scale, 1.0)
    return max(0, math.floor(first * scale - reach) - 1), min(length, math.ceil((first + count) * scale + reach) + 1)


def load(data: bytes, size: int = SIZE) -> np.ndarray:
    """The bytes of one image file -> uint8 [size, size, 3]; raises BadImage."""
    return resize_crop(decode_rgb(data), size)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (at most 200 characters), the same from run to run."""
    text = deterministic(" ".join(str(e).split()) or type(e).__name__)
    return text[:200]


_ADDRESS = re.compile(r"\s+at 0x[0-9a-fA-F]+(?=>)")


def deterministic(text: str) -> str:
    """A reason without what differs from run to run: object addresses in exception texts
    ("<_io.BytesIO object at 0x7f...>" -> "<_io.BytesIO object>"), so that rejects.tsv is the
    same for the same inputs."""
    return _ADDRESS.sub("", text)
