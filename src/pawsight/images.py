"""Reading pictures robustly, and the one preprocessing definition every approach shares.

Any file may be handed to `open_rgb`: it decides the format by content (not by extension), applies EXIF
orientation, converts every colour mode to 8-bit RGB correctly, and turns every kind of bad file into an
`ImageError` whose message is a one-line reason. `Preprocessing` turns such an image into the uint8 array a
model sees; it is saved with every model so training, evaluation, prediction and serving never disagree.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from struct import error as struct_error
from typing import IO, Any, Literal

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pixels one image may declare before it is treated as a decompression bomb (e.g. a 200-byte PNG that
# claims 50000 x 50000). 16k x 10k photos still pass.
MAX_PIXELS = 178_956_970
# Background that transparent pixels are composited onto: neutral grey, neither black nor white.
BACKGROUND = (128, 128, 128)
ORIENTATION = 0x0112  # EXIF tag: how the stored picture must be turned to be upright
# File endings that look like images; used only to name a directory that pretends to be an image.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff"}

# Largest picture file read, in MB (PAWSIGHT_MAX_FILE_MB overrides): a bigger file is refused with a reason
# before it is read, so a huge file named .jpg costs neither the memory nor the run.
MAX_FILE_MB = 256
HEADER_BYTES = 32  # enough for every signature below
# Pillow formats accepted, each recognised by its first bytes (what Pillow is then allowed to try).
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "AVIF")
FORMAT_NAMES = "JPEG, PNG, GIF, WebP, BMP, TIFF or AVIF"

# What decides whether a file can be decoded: failures remembered under another decoder are tried again.
DECODER = f"Pillow {PIL.__version__}"

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """A file that cannot be used as a picture; str(error) is the one-line reason shown to the user."""


class ImageTooLarge(ImageError):
    """A picture with more pixels to decode than the caller allows (`max_pixels`: the server's limit)."""


def sniff(head: bytes) -> str | None:
    """The picture format the first bytes of a file announce (a name from FORMATS), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def max_file_bytes() -> int:
    """The largest picture file read (MAX_FILE_MB, or PAWSIGHT_MAX_FILE_MB when set to a positive number)."""
    value = os.environ.get("PAWSIGHT_MAX_FILE_MB", "")
    try:
        mb = float(value) if value.strip() else MAX_FILE_MB
    except ValueError:
        mb = MAX_FILE_MB
    return int((mb if mb > 0 else MAX_FILE_MB) * 2**20)


def check_header(head: bytes, size: int) -> None:
    """Refuse what is not a picture (by its first bytes) or is larger than max_file_bytes()."""
    if not size:
        raise ImageError("empty file")
    if sniff(head) is None:
        raise ImageError(f"not an image (unknown or garbled format: the first bytes are not a {FORMAT_NAMES} "
                         "header)")
    limit = max_file_bytes()
    if size > limit:
        raise ImageError(f"file too large: {size / 2**20:,.0f} MB, more than the {limit / 2**20:,.0f} MB "
                         "allowed for one picture (set PAWSIGHT_MAX_FILE_MB to raise it)")


def open_checked(path: str | os.PathLike[str]) -> IO[bytes]:
    """A regular file opened for reading, at offset 0, whose header and size passed check_header.

    Opened first and judged by fstat, so a FIFO cannot block the read and what is checked is what is read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError("symlink loop") from None
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise ImageError("dangling symlink") from None
        if exc.errno == errno.EISDIR:
            raise ImageError("is a directory, not an image file") from None
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageError("is a directory, not an image file" if stat.S_ISDIR(st.st_mode) else
                         "not a regular file")
    fh = os.fdopen(fd, "rb")
    try:
        check_header(fh.read(HEADER_BYTES), st.st_size)
        fh.seek(0)
        return fh
    except ImageError:
        fh.close()
        raise
    except OSError as exc:
        fh.close()
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None


def file_hash(fh: IO[bytes], chunk: int = 1 << 20) -> str:
    """blake2b-128 of an open file's content, read in chunks (memory stays flat); leaves it at offset 0."""
    h = hashlib.blake2b(digest_size=16)
    try:
        while block := fh.read(chunk):
            h.update(block)
        fh.seek(0)
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    return h.hexdigest()


def open_rgb(path: str | os.PathLike[str], min_size: int | None = None, data: bytes | IO[bytes] | None = None,
             info: dict[str, Any] | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode `path` (or `data`: its bytes, or the file already opened by open_checked) into upright RGB.

    The file is recognised from its first bytes and refused when larger than max_file_bytes(); Pillow then
    decodes from the file itself, never from a copy of it in memory. With `min_size`, JPEGs are decoded with
    DCT scaling ("draft" mode) to the smallest scale whose both sides are still >= min_size: several times
    faster, and the result is then resized anyway. `info`, if given, is filled with the original `format`,
    `mode`, `width` and `height`. `max_pixels`: the most pixels the decoder may produce (after JPEG draft
    scaling), else ImageTooLarge before anything is decoded (the server's bound on memory per picture).
    """
    path = Path(path)
    owned: IO[bytes] | None = None
    try:
        if data is None:
            owned = open_checked(path)
            source: IO[bytes] = owned
        elif isinstance(data, (bytes, bytearray, memoryview)):
            check_header(bytes(data[:HEADER_BYTES]), len(data))
            source = io.BytesIO(data)
        else:
            source = data
        return _decode(source, min_size, info, max_pixels)
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
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, RuntimeError,
            ZeroDivisionError, OverflowError, struct_error, AttributeError, AssertionError) as exc:
        # Garbled headers surface from Pillow's plugins as a zoo of exception types.
        raise ImageError(f"corrupt image: {type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise ImageError("too large to decode in memory") from None
    finally:
        if owned is not None:
            owned.close()


def _decode(source: IO[bytes], min_size: int | None, info: dict[str, Any] | None,
            max_pixels: int | None = None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source, formats=FORMATS) as im:
            width, height = im.size
            if info is not None:
                info.update(format=im.format, mode=im.mode, width=width, height=height)
            if width * height > MAX_PIXELS:
                raise ImageError(f"too large: {width}x{height} pixels (decompression bomb?)")
            if im.format == "MPO" or getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # first frame of GIF/WebP/TIFF animations and multi-picture JPEGs
            if min_size and im.format == "JPEG":
                im.draft("RGB", (min_size, min_size))
            _check_decoded_size(im, max_pixels)
            im.load()
            if im.getexif().get(ORIENTATION, 1) in range(2, 9):
                # only then: exif_transpose copies the whole picture even when there is nothing to do
                im = ImageOps.exif_transpose(im)
            return to_rgb(im)


def _check_decoded_size(im: Image.Image, max_pixels: int | None) -> None:
    width, height = im.size  # after draft(): what the decoder will produce
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"too many pixels: {width}x{height} ({width * height / 1e6:.1f} megapixels) to "
                            f"decode, more than the {max_pixels / 1e6:g} allowed")


def decoded_pixels(data: bytes, min_size: int | None = None) -> int | None:
    """How many pixels decoding `data` (open_rgb with `min_size`) would produce, read from its header alone
    (JPEGs: after draft scaling); None when the header cannot be read (decoding then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                if min_size and im.format == "JPEG":
                    im.draft("RGB", (min_size, min_size))
                return int(im.size[0]) * int(im.size[1])
    except Exception:  # noqa: BLE001 - any unreadable header: the real decode names the reason
        return None


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
