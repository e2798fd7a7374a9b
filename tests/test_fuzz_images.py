"""Fuzzing the picture reader: mutated JPEG, PNG, GIF, WebP, TIFF and BMP files (bit flips, truncations,
inserted and deleted chunks, header fields such as the dimensions set to huge values) go through
images.open_rgb and Preprocessing. Every case must give a picture or an ImageError (nothing else), within a
time bound, with bounded memory (issue 7).

    ./run.sh test tests/test_fuzz_images.py                           # default: a few hundred cases
    PAWSIGHT_FUZZ_EXAMPLES=10000 ./run.sh test tests/test_fuzz_images.py -s -p no:xdist   # the full count

With -s a summary line per format and a total are printed (cases, pictures, errors, slowest case, peak RSS).
"""

from __future__ import annotations

import io
import os
import resource
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pawsight.images import MAX_PIXELS, ImageError, Preprocessing, open_rgb

TOTAL = int(os.environ.get("PAWSIGHT_FUZZ_EXAMPLES", "300"))
MAX_SECONDS = float(os.environ.get("PAWSIGHT_FUZZ_MAX_SECONDS", "10"))  # per case; generous: a loaded CI box
# The reader may hold one declared-but-legal picture (<= MAX_PIXELS) as RGBA plus its RGB copy, never more.
MAX_RSS_GROWTH_MB = MAX_PIXELS * 7 / 2**20 + 300
PREP = Preprocessing(32)
ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "datasets" / "cats_and_dogs_tiny" / "train" / "cats"


def seed_files() -> dict[str, bytes]:
    """Small but real files of every format, made from a real photo (so decoders meet real entropy)."""
    source = sorted(PHOTO.iterdir())[0] if PHOTO.is_dir() else None
    im = Image.open(source).convert("RGB") if source else Image.new("RGB", (64, 48), (120, 80, 40))
    im = im.resize((48, 36))
    out: dict[str, bytes] = {}
    for name, fmt, kw in (("jpeg", "JPEG", {"quality": 85}),
                          ("jpeg-progressive", "JPEG", {"progressive": True}), ("png", "PNG", {}),
                          ("png-palette", "PNG", {}), ("webp", "WEBP", {"quality": 80}),
                          ("webp-lossless", "WEBP", {"lossless": True}), ("tiff", "TIFF", {}),
                          ("tiff-deflate", "TIFF", {"compression": "tiff_deflate"}), ("bmp", "BMP", {})):
        buf = io.BytesIO()
        (im.convert("P") if name == "png-palette" else im).save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    frames = [im.convert("P"), im.rotate(90).convert("P")]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["gif"] = buf.getvalue()
    return out


SEEDS = seed_files()
STATS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    total = {k: sum(s[k] for s in STATS.values()) for k in ("cases", "pictures", "errors")}
    slowest = max((s["max_seconds"] for s in STATS.values()), default=0.0)
    for name, s in sorted(STATS.items()):
        print(f"\nfuzz {name:<17} {s['cases']:6.0f} cases  {s['pictures']:6.0f} pictures  "
              f"{s['errors']:6.0f} ImageErrors  slowest {s['max_seconds']:.3f} s")
    print(f"\nfuzz total {total['cases']:.0f} cases: {total['pictures']:.0f} pictures, {total['errors']:.0f} "
          f"ImageErrors, 0 other exceptions, slowest case {slowest:.3f} s, peak RSS growth {growth:.0f} MB")
    assert growth < MAX_RSS_GROWTH_MB, f"peak RSS grew by {growth:.0f} MB"


def big(draw: st.DrawFn) -> int:
    return draw(st.sampled_from([0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 50_000, 65_500]))


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "field", "header-flip",
                                     "duplicate"]))
        n = len(data)
        # header structures live at the start: bias positions there half of the time
        pos = draw(st.one_of(st.integers(0, min(n - 1, 64)), st.integers(0, n - 1)))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "header-flip":
            data[min(pos, 31)] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "duplicate":  # a chunk repeated: segments, IFDs, frames appearing twice
            length = draw(st.integers(1, 256))
            data[pos:pos] = data[pos:pos + length]
        else:  # a 2- or 4-byte field (dimensions, offsets, lengths, counts) set to an extreme value
            width = draw(st.sampled_from([2, 4]))
            order = draw(st.sampled_from([">", "<"]))
            value = big(draw) & (0xFFFF if width == 2 else 0xFFFFFFFF)
            data[pos:pos + width] = struct.pack(order + ("H" if width == 2 else "I"), value)[:max(0, n - pos)]
    return bytes(data)


def check(name: str, data: bytes) -> None:
    s = STATS.setdefault(name, {"cases": 0, "pictures": 0, "errors": 0, "max_seconds": 0.0})
    t = time.perf_counter()
    try:
        arr = PREP(open_rgb(f"fuzz.{name}", min_size=PREP.size, data=data))
    except ImageError as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and len(reason) < 300, reason
        s["errors"] += 1
    else:
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
        s["pictures"] += 1
    seconds = time.perf_counter() - t
    s["cases"] += 1
    s["max_seconds"] = max(s["max_seconds"], seconds)
    assert seconds < MAX_SECONDS, f"{name}: {seconds:.1f} s for one {len(data)}-byte file"


def test_seeds_are_valid_pictures() -> None:
    for name, data in SEEDS.items():
        assert PREP(open_rgb(f"seed.{name}", data=data)).shape == (32, 32, 3), name


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt TIFF/EXIF data: expected here
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_files_give_a_picture_or_an_image_error(name: str) -> None:
    examples = max(10, TOTAL // len(SEEDS))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=TOTAL <= 1000,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(SEEDS[name]))
    def run(data: bytes) -> None:
        check(name, data)

    run()


@pytest.mark.parametrize("name, patch", [
    ("png", lambda d: d[:16] + struct.pack(">II", 60_000, 60_000) + d[24:]),       # IHDR dims, bad CRC
    ("gif", lambda d: d[:6] + struct.pack("<HH", 65_535, 65_535) + d[10:]),        # logical screen
    ("bmp", lambda d: d[:18] + struct.pack("<ii", 40_000, -40_000) + d[26:]),      # width, top-down height
    ("jpeg", lambda d: d.replace(b"\xff\xc0\x00\x11\x08\x00\x24\x00\x30",  # SOF0 36x48 -> 65535x65535
                                 b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff")),
])
def test_huge_declared_dimensions_are_refused_quickly(name: str, patch) -> None:
    data = patch(SEEDS[name])
    assert data != SEEDS[name]
    check(f"{name}-huge", data)
