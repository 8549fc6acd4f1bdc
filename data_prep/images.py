"""One source image -> one 256x256 RGB array (PAPER.md, "Data").

"Rescale so the shorter side is 256, take the central 256x256 crop, keep raw RGB."

- Decoding: Pillow, always the full image (no JPEG draft / DCT-domain downscaling, which would
  change pixels depending on the file's size). EXIF orientation is ignored, as in the usual
  ImageNet pipelines.
- Colour: CMYK (Adobe-inverted or not), greyscale, palette, and PNG files named .JPEG all come
  out RGB through Pillow's convert("RGB"); an alpha channel is dropped.
- Resize: Pillow's BICUBIC filter, which is antialiased when shrinking (the kernel is widened by
  the reduction factor, as in Pillow's resize since 2.7), to the size whose shorter side is 256;
  the other side is rounded half up. Then the central crop (left/top offsets rounded down).
- A few ILSVRC-2010 files are stored gzip-compressed; they are decompressed first.
"""
from __future__ import annotations

import gzip
import io
import warnings

import numpy as np
from PIL import Image

SIZE = 256
RESAMPLE = Image.Resampling.BICUBIC
DESCRIPTION = ("Pillow BICUBIC (antialiased: kernel widened by the reduction factor), full decode, "
               "shorter side to 256 (rounded half up), central 256x256 crop, RGB")


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
            if im.mode != "RGB":
                im = im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's ways of saying "broken"
        raise BadImage(_one_line(e)) from None
    except Exception as e:  # a decoder tripping over a malformed file must not stop the run
        raise BadImage(f"{type(e).__name__}: {_one_line(e)}") from None
    if im.width < 1 or im.height < 1:
        raise BadImage(f"empty image {im.width}x{im.height}")
    return im


def resize_crop(im: Image.Image, size: int = SIZE) -> np.ndarray:
    """Shorter side to `size`, central crop: uint8 [size, size, 3].

    Equal, pixel for pixel, to im.resize((w, h), RESAMPLE).crop(central box) (tested against
    that), but for landscape images it does less work: Pillow resizes in two separable passes,
    horizontal first into an 8-bit intermediate, then vertical, column by column. So the
    horizontal pass is run alone, the central columns are cut out, and the vertical pass runs
    on those 256 columns only (a quarter less work for a 4:3 image)."""
    w, h = resized_size(im.width, im.height, size)
    if w > size and h != im.height:
        if w != im.width:
            im = im.resize((w, im.height), RESAMPLE)  # horizontal pass only
        left = (w - size) // 2
        im = im.crop((left, 0, left + size, im.height)).resize((size, h), RESAMPLE)  # vertical pass only
        return np.asarray(im)
    if (w, h) != im.size:
        im = im.resize((w, h), RESAMPLE)
    if (w, h) != (size, size):
        im = im.crop(crop_box(w, h, size))
    return np.asarray(im)


def load(data: bytes, size: int = SIZE) -> np.ndarray:
    """The bytes of one image file -> uint8 [size, size, 3]; raises BadImage."""
    return resize_crop(decode_rgb(data), size)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
