"""Reading pictures robustly, and the one preprocessing definition every approach shares.

Any file may be handed to `open_rgb`: it decides the format by content (not by extension), applies EXIF
orientation, converts every colour mode to 8-bit RGB correctly, and turns every kind of bad file into an
`ImageError` whose message is a one-line reason. `Preprocessing` turns such an image into the uint8 array a
model sees; it is saved with every model so training, evaluation, prediction and serving never disagree.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pixels one image may declare before it is treated as a decompression bomb (e.g. a 200-byte PNG that
# claims 50000 x 50000). 16k x 10k photos still pass.
MAX_PIXELS = 178_956_970
# Background that transparent pixels are composited onto: neutral grey, neither black nor white.
BACKGROUND = (128, 128, 128)
ORIENTATION = 0x0112  # EXIF tag: how the stored picture must be turned to be upright
# File endings that look like images; used only to name a directory that pretends to be an image.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff"}

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """A file that cannot be used as a picture; str(error) is the one-line reason shown to the user."""


def open_rgb(path: str | os.PathLike[str], min_size: int | None = None, data: bytes | None = None,
             info: dict[str, Any] | None = None) -> Image.Image:
    """Decode `path` (or its already-read bytes `data`) into an upright 8-bit RGB image.

    With `min_size`, JPEGs are decoded with DCT scaling ("draft" mode) to the smallest scale whose both sides
    are still >= min_size: several times faster, and the result is then resized anyway. `info`, if given, is
    filled with the original `format`, `mode`, `width` and `height`.
    """
    path = Path(path)
    try:
        if data is None:
            data = read_file(path)
        if not data:
            raise ImageError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if info is not None:
                    info.update(format=im.format, mode=im.mode, width=width, height=height)
                if width * height > MAX_PIXELS:
                    raise ImageError(f"too large: {width}x{height} pixels (decompression bomb?)")
                if im.format == "MPO" or getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # first frame of GIF/WebP/TIFF animations and multi-picture JPEGs
                if min_size and im.format == "JPEG":
                    im.draft("RGB", (min_size, min_size))
                im.load()
                if im.getexif().get(ORIENTATION, 1) in range(2, 9):
                    # only then: exif_transpose copies the whole picture even when there is nothing to do
                    im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unknown or garbled format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large (decompression bomb?): {exc}") from None
    except Image.DecompressionBombWarning:
        raise ImageError("too large (decompression bomb?)") from None
    except OSError as exc:
        message = str(exc) or type(exc).__name__
        if getattr(exc, "errno", None) == 40 or "symbolic links" in message:
            raise ImageError("symlink loop") from None
        if "truncated" in message:
            raise ImageError("truncated image file") from None
        raise ImageError(f"unreadable image: {message}") from None
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, RuntimeError) as exc:
        # Garbled headers surface from Pillow's plugins as a zoo of exception types.
        raise ImageError(f"corrupt image: {type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise ImageError("too large to decode in memory") from None


def read_file(path: Path) -> bytes:
    """The bytes of a regular file, or an ImageError naming why there are none."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError("symlink loop") from None
        if path.is_symlink():
            raise ImageError("dangling symlink") from None
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha composited on grey, 16/32-bit scaled (not clipped)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "F":
            low, high = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr, scale = arr - low, max(high - low, 1e-12)
        else:  # "I": 32-bit ints; PNG 16-bit greyscale often arrives like this
            scale = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(np.rint(np.nan_to_num(arr) / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "P":
        return im.convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, BACKGROUND)
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


# Rows 0..7 of the (unnormalised) 32-point DCT-II basis: the 8x8 low frequencies a perceptual hash keeps.
_DCT8 = np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(32)[None, :] + 1) / 64)


def perceptual_hash(im: Image.Image) -> str:
    """64-bit DCT perceptual hash of the whole picture as 16 hex digits (imagehash.phash's algorithm).

    The 32x32 grey thumbnail is made with `reducing_gap` (a cheap box pre-reduction, then Lanczos) instead of
    Lanczos over every source pixel: ~4x faster, and on photos within a bit or two of imagehash.phash.
    """
    small = im.resize((32, 32), Image.LANCZOS, reducing_gap=2.0).convert("L")
    low = _DCT8 @ np.asarray(small, dtype=np.float64) @ _DCT8.T
    bits = (low > np.median(low)).ravel()
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


ResizeMode = Literal["center-crop", "squash"]


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes the `size` x `size` x 3 uint8 array a model sees.

    `center-crop` resizes the short side to `size` and cuts the middle square (what ImageNet backbones were
    trained on); `squash` resizes the whole picture to a square, keeping every pixel of the subject.
    Normalisation belongs to the model, not here, so one cached array serves several models.
    """

    size: int = 224
    mode: ResizeMode = "center-crop"

    def __post_init__(self) -> None:
        if not 8 <= int(self.size) <= 2048:
            raise ValueError(f"image size must be between 8 and 2048 pixels, got {self.size}")
        if self.mode not in ("center-crop", "squash"):
            raise ValueError(f"unknown resize mode {self.mode!r}; use 'center-crop' or 'squash'")

    def __call__(self, im: Image.Image) -> np.ndarray:
        size = int(self.size)
        if self.mode == "squash":
            out = im.resize((size, size), Image.BILINEAR)
        else:
            # Resample only the centre square (resize's `box`) instead of resizing the whole picture and
            # cropping after: same geometry, ~25% less work on 4:3 photos.
            width, height = im.size
            scale = size / min(width, height)
            new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
            left, top = (new_w - size) // 2, (new_h - size) // 2
            box = (left / scale, top / scale,
                   min(width, (left + size) / scale), min(height, (top + size) / scale))
            out = im.resize((size, size), Image.BILINEAR, box=box)
        return np.asarray(out, dtype=np.uint8)

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Read one file and preprocess it; raises ImageError with a reason for bad files."""
        return self(open_rgb(path, min_size=self.size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(size=int(d["size"]), mode=d.get("mode", "center-crop"))

    @property
    def key(self) -> str:
        """Short name used to key caches: everything that changes the pixels is in it."""
        return f"{self.mode}-{int(self.size)}-v2"  # v2: centre box resampled directly; new phash
