"""Atomic writes (a reader sees the old file or the new one, never half of one, even after a crash), and the
row store that caches computed features."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=indent is not None) + "\n")


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
        try:
            atomic_write_bytes(self.dir / f"{shard}.npy", buf.getvalue())
            atomic_write_json(self.dir / f"{shard}.json", keys)
        except OSError:
            pass  # a read-only or full cache costs speed next time, never the result
