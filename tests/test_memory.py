"""Huge files are refused from their first bytes and size, before they are read: memory stays bounded and the
good pictures given with them are still decoded (issue 7, section 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pawsight.images import ImageError, max_file_bytes, open_rgb, sniff

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of `size` bytes that takes no disk space (a hole), starting with `head`."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


PROBE = r"""
import json, resource, sys
from pathlib import Path
from pawsight.cache import ImageCache
from pawsight.images import Preprocessing
paths = [Path(p) for p in sys.argv[2:]]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = ImageCache(sys.argv[1]).load(paths, Preprocessing(64), workers=2)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "decoded": [str(p) for p in out.paths],
                  "skipped": [[s.path, s.reason] for s in out.skipped]}))
"""


@pytest.mark.parametrize("head", [b"", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"], ids=["zeros", "jpeg-header"])
def test_sparse_4gb_file_named_jpg_is_skipped_and_memory_stays_bounded(tiny: Path, tmp_path: Path,
                                                                       head: bytes) -> None:
    good = sorted((tiny / "train" / "cats").iterdir())[:3]
    huge = sparse(tmp_path / "huge.jpg", 4 * GB, head)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "cache"), str(good[0]), str(huge),
                           *map(str, good[1:])], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["decoded"] == [str(p) for p in good]  # the good ones, in order, all of them
    [(path, reason)] = result["skipped"]
    assert path == str(huge) and "\n" not in reason
    assert ("not an image" if not head else "too large") in reason
    assert result["growth_mb"] < 300, result


def test_open_rgb_refuses_by_header_without_reading(tmp_path: Path) -> None:
    huge = sparse(tmp_path / "zeros.jpg", 4 * GB)
    with pytest.raises(ImageError, match="not an image"):
        open_rgb(huge)
    big = sparse(tmp_path / "big.png", 300 * 2**20, b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ImageError, match=r"too large: 300 MB.*256 MB.*PAWSIGHT_MAX_FILE_MB"):
        open_rgb(big)


def test_size_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny: Path) -> None:
    photo = sorted((tiny / "train" / "cats").iterdir())[0]
    assert open_rgb(photo).size[0] > 0
    monkeypatch.setenv("PAWSIGHT_MAX_FILE_MB", str(photo.stat().st_size / 2**20 / 2))
    with pytest.raises(ImageError, match="too large"):
        open_rgb(photo)
    with pytest.raises(ImageError, match="too large"):
        open_rgb("x.jpg", data=photo.read_bytes())  # raw bytes (uploads) obey the same limit
    monkeypatch.setenv("PAWSIGHT_MAX_FILE_MB", "nonsense")
    assert max_file_bytes() == 256 * 2**20


@pytest.mark.parametrize("head, fmt", [
    (b"\xff\xd8\xff\xdb", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF89a", "GIF"), (b"GIF87a", "GIF"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"), (b"BM6\x00", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x1cftypavif", "AVIF"), (b"PK\x03\x04", None),
    (b"%PDF-1.4", None), (b"", None),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
])
def test_sniff(head: bytes, fmt: str | None) -> None:
    assert sniff(head) == fmt
