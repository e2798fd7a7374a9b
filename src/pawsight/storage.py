"""Atomic writes (a reader sees the old file or the new one, never half of one, even after a crash), and the
row store that caches computed features."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PawsightError, shown

# errno -> what the user is told; every write pawsight makes turns these into one line (see `writing`)
DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a file is where a folder is expected",
    errno.EEXIST: "a file is where a folder is expected",
    errno.EISDIR: "a folder is where a file is expected",
    errno.ENOENT: "the folder cannot be created there",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (failing disk?)",
}
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(PawsightError):
    """A write failed for a reason the user can fix (disk full, read-only, permissions, a file in the way)."""


def disk_error(exc: OSError, what: str, where: str | os.PathLike[str], advice: str = "") -> WriteError:
    """One line for a failed write: the reason in words, what was being written where, and what to do.

    `advice` is for a full disk (after "free some space"); other reasons say to choose another place.
    """
    reason = DISK_ERRORS.get(exc.errno or 0, exc.strerror or str(exc) or type(exc).__name__)
    if exc.errno in FULL:
        todo = advice or "free some space or write somewhere else"
    elif "PAWSIGHT_CACHE" in advice:
        todo = "set PAWSIGHT_CACHE to a folder you can write to"
    else:
        todo = "choose another folder"
    return WriteError(f"{reason} while writing {what} in {shown(where)}; {todo}")


@contextmanager
def writing(what: str, where: str | os.PathLike[str], advice: str = "") -> Iterator[None]:
    """Turn a disk error (full, read-only, no permission, a file where a folder should be) raised inside into
    one WriteError line (disk_error). The code inside removes its own partial files."""
    try:
        yield
    except PawsightError:
        raise
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise disk_error(exc, what, where, advice) from None
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, what: str | None = None,
                       advice: str = "") -> None:
    """Write `path` so a reader (or a crash) sees the old file or the new one, never half of one.

    A disk error becomes one PawsightError line naming `what` (default: the file name); the temporary file is
    removed and the previous `path` is left as it was.
    """
    path = Path(path)
    with writing(what or path.name, path.parent, advice):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str | None = None,
                      advice: str = "") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what, advice)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = None,
                      what: str | None = None, advice: str = "") -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=indent is not None) + "\n", what, advice)


CACHE_ADVICE = "free space or run 'pawsight cache clear' or set PAWSIGHT_CACHE to another folder"


class RowStore:
    """Cached float32 rows (e.g. features of pictures) keyed by strings (e.g. pixel hashes).

    The folder holds shards: `<id>.npy` (rows) + `<id>.json` (their keys). The .json is written after the
    .npy, both atomically, so a shard is either whole or ignored; a damaged shard only costs recomputing.
    """

    def __init__(self, directory: str | os.PathLike[str], dim: int | None = None) -> None:
        self.dir = Path(directory)
        self.dim = dim  # rows of another width (an older, different extractor) are ignored

    def get(self, keys: list[str]) -> tuple[dict[int, np.ndarray], list[int]]:
        """({position: row} for the cached keys, positions of the missing ones)."""
        where: dict[str, tuple[Path, int]] = {}
        for index in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                names = json.loads(index.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(names, list):
                where.update({k: (index.with_suffix(".npy"), row) for row, k in enumerate(names)})
        shards: dict[Path, np.ndarray | None] = {}
        found: dict[int, np.ndarray] = {}
        missing: list[int] = []
        for i, k in enumerate(keys):
            path, row = where.get(k, (None, -1))
            if path is not None and path not in shards:
                try:
                    shards[path] = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError):
                    shards[path] = None
            shard = shards.get(path) if path is not None else None
            if (shard is None or shard.ndim != 2 or row >= len(shard)
                    or (self.dim is not None and shard.shape[1] != self.dim)):
                missing.append(i)
            else:
                found[i] = np.array(shard[row])
        return found, missing

    def put(self, keys: list[str], rows: np.ndarray) -> None:
        if not keys:
            return
        shard = hashlib.blake2b("".join(keys).encode(), digest_size=10).hexdigest()
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(rows, np.float32), allow_pickle=False)
        what, advice = "cached features", CACHE_ADVICE
        rows_path, keys_path = self.dir / f"{shard}.npy", self.dir / f"{shard}.json"
        existed = keys_path.exists()
        atomic_write_bytes(rows_path, buf.getvalue(), what, advice)
        try:
            atomic_write_json(keys_path, keys, what=what, advice=advice)
        except BaseException:
            if not existed:  # rows no index names would only take space
                rows_path.unlink(missing_ok=True)
            raise


def refuse_foreign_file(path: Path, marker: bytes) -> None:
    """Before writing a user-named output (`--out report.html`, `--out map.png`): an existing file may only be
    replaced when pawsight wrote it, recognised by `marker` near its start; anything else stays untouched."""
    path = Path(path)
    if path.is_dir():
        raise PawsightError(f"{shown(path)} is a folder; give a file name")
    if not path.exists():
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        head = b""
    if marker not in head:
        raise PawsightError(f"{shown(path)} exists and was not written by pawsight; choose another --out "
                            "(pawsight never replaces files it did not write)")

