"""A zoo of odd-but-valid pictures and hostile files, generated on the fly (nothing binary is committed).

`make_zoo(folder)` writes them all and returns (valid names, hostile names). The valid pictures carry known
pixels so tests can check exact values: see the constants below.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 64, 48
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
GREY = (128, 128, 128)

# name -> what a correct reader must produce (checked in test_images.py)
VALID = ("photo.jpg", "photo.png", "anim.gif", "photo.webp", "photo.bmp", "photo.tiff", "png-named.jpg",
         "exif6.jpg", "cmyk.jpg", "grey-L.png", "grey-LA.png", "palette-P.png", "palette-trns.png",
         "rgba.png", "deep-I16.png")
HOSTILE = ("empty.jpg", "truncated.jpg", "garbled.jpg", "text.png", "dangling.jpg", "loop-a.jpg",
           "loop-b.jpg", "folder.jpg", "bomb.png")


def gradient(width: int = W, height: int = H) -> np.ndarray:
    """A smooth RGB picture (JPEG-friendly): red grows left to right, green top to bottom, blue constant."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 96)], axis=-1).round().astype(np.uint8)


def noisy_jpeg(width: int = 320, height: int = 240) -> bytes:
    """A JPEG big enough (tens of kB) that cutting it in half really truncates the scan data."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(side: int = 50_000) -> bytes:
    """A well-formed PNG that declares side x side RGB pixels but holds a few bytes: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" * 64)  # far too little data for the declared size, but valid zlib
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def upright() -> Image.Image:
    """48 wide x 64 tall: top half red, bottom half blue (so 'upright' is testable)."""
    arr = np.zeros((64, 48, 3), np.uint8)
    arr[:32] = RED
    arr[32:] = BLUE
    return Image.fromarray(arr)


def make_zoo(folder: Path) -> tuple[set[str], set[str]]:
    """Write every valid and hostile file into `folder`; return (valid names, hostile names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(gradient())
    rgb.save(folder / "photo.jpg", "JPEG", quality=95)
    rgb.save(folder / "photo.png", "PNG")
    rgb.save(folder / "photo.webp", "WEBP", lossless=True)
    rgb.save(folder / "photo.bmp", "BMP")
    rgb.save(folder / "photo.tiff", "TIFF")
    rgb.save(folder / "png-named.jpg", "PNG")  # content decides, not the name

    # animated GIF: the first frame (red) is the picture, the second (blue) must not leak in
    frames = [Image.new("RGB", (W, H), RED), Image.new("RGB", (W, H), BLUE)]
    frames[0].save(folder / "anim.gif", "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)

    # stored lying on its side (64 wide x 48 tall); EXIF orientation 6 says "rotate 90 degrees clockwise"
    stored = upright().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "exif6.jpg", "JPEG", quality=95, exif=exif.tobytes())

    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(folder / "cmyk.jpg", "JPEG", quality=95)  # pure red ink

    Image.new("L", (W, H), 200).save(folder / "grey-L.png")
    la = Image.new("LA", (W, H), (200, 255))
    la.paste((0, 0), (0, 0, W // 2, H))  # left half fully transparent
    la.save(folder / "grey-LA.png")

    palette = Image.new("P", (W, H), 1)
    palette.putpalette([0, 0, 0, *GREEN, *RED] + [0] * (256 * 3 - 9))
    palette.save(folder / "palette-P.png")
    trns = palette.copy()
    trns.paste(0, (0, 0, W // 2, H))  # index 0 is the transparent colour
    trns.save(folder / "palette-trns.png", transparency=0)

    rgba = Image.new("RGBA", (W, H), (*BLUE, 255))
    rgba.paste((255, 255, 255, 0), (0, 0, W // 2, H))  # left half: fully transparent white
    rgba.save(folder / "rgba.png")

    deep = np.zeros((H, W), np.uint16)
    deep[:, W // 3:2 * W // 3] = 32768
    deep[:, 2 * W // 3:] = 65535
    Image.frombytes("I;16", (W, H), deep.astype("<u2").tobytes()).save(folder / "deep-I16.png")

    # hostile files
    (folder / "empty.jpg").write_bytes(b"")
    data = noisy_jpeg()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "garbled.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    (folder / "text.png").write_text("this is not a picture\n" * 20)
    os.symlink(folder / "does-not-exist.jpg", folder / "dangling.jpg")
    os.symlink(folder / "loop-b.jpg", folder / "loop-a.jpg")
    os.symlink(folder / "loop-a.jpg", folder / "loop-b.jpg")
    (folder / "folder.jpg").mkdir()
    rgb.save(folder / "folder.jpg" / "inside.jpg", "JPEG")
    (folder / "bomb.png").write_bytes(bomb_png())
    return set(VALID), set(HOSTILE)
