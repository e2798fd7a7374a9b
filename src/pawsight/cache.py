"""Decode each picture once, keep it as uint8 pixels, reuse it in every later command and approach.

Layout of the cache folder (`$PAWSIGHT_CACHE`, default `~/.cache/pawsight`):

    files.json                 "path|size|mtime_ns" -> content hash: a changed file gets a new entry
    meta.json                  content hash -> {format, mode, width, height, phash} or {error: reason}
    pixels/<preprocessing>/    pool.u8 (rows of size x size x 3 uint8, append-only) + index.json (hash -> row)

Entries are keyed by file *content* and preprocessing, so renaming or copying a file costs nothing, and
editing one invalidates exactly that one. Writers append rows first and atomically replace the index after,
under a file lock: an interrupted run leaves unused rows at worst, never a wrong picture.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np

from .data import Sample, Skip
from .images import ImageError, Preprocessing, open_rgb, read_file
from .progress import progress
from .storage import atomic_write_json

FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("PAWSIGHT_CACHE") or Path.home() / ".cache" / "pawsight")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass
class Decoded:
    """Good pictures of a file list as one array, in input order; the bad ones in `skipped`."""

    images: np.ndarray  # (n, size, size, 3) uint8
    labels: np.ndarray  # (n,) int64; -1 where no labels were given
    paths: list[Path]
    hashes: list[str]
    meta: list[dict[str, Any]]
    skipped: list[Skip] = field(default_factory=list)
    decoded: int = 0  # how many files had to be decoded (cache misses)


class ImageCache:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    # -- small JSON tables ---------------------------------------------------------------------------
    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # missing or damaged: rebuilt from the files

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _pool_dir(self, prep: Preprocessing) -> Path:
        return self.root / "pixels" / prep.key

    # -- main entry ------------------------------------------------------------------------------------
    def load(self, paths: Sequence[str | os.PathLike[str]], prep: Preprocessing,
             labels: Sequence[int] | None = None, workers: int | None = None,
             desc: str = "decoding") -> Decoded:
        """Pixels of every readable file in `paths` under `prep`; bad ones are skipped with a reason."""
        paths = [Path(p) for p in paths]
        files = self._read_json(self.root / "files.json")
        meta = self._read_json(self.root / "meta.json")
        pool_dir = self._pool_dir(prep)
        index = self._read_json(pool_dir / "index.json")

        hashes: list[str | None] = [None] * len(paths)
        todo: list[int] = []
        for i, p in enumerate(paths):
            sig = stat_signature(p)
            h = files.get(sig) if sig else None
            if h is not None and (h in index or "error" in meta.get(h, {})):
                hashes[i] = h
            else:
                todo.append(i)

        new_rows: dict[str, np.ndarray] = {}
        if todo:
            def work(i: int) -> tuple[int, str | None, str | None, dict[str, Any], np.ndarray | None]:
                return (i, *decode_file(paths[i], prep))

            with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
                results = pool.map(work, todo)
                for i, sig, h, info, pixels in progress(results, total=len(todo), desc=desc, unit="img"):
                    hashes[i] = h
                    if h is None:  # could not even be read: reason is in info
                        meta_key = f"unreadable:{i}"
                        hashes[i] = meta_key
                        meta[meta_key] = info
                        continue
                    if sig:
                        files[sig] = h
                    meta[h] = info
                    if pixels is not None:
                        new_rows[h] = pixels
            index = self._append(prep, new_rows, files, meta)

        return self._gather(paths, hashes, labels, meta, index, prep, decoded=len(todo))

    def _append(self, prep: Preprocessing, rows: dict[str, np.ndarray], files: dict[str, str],
                meta: dict[str, Any]) -> dict[str, int]:
        pool_dir = self._pool_dir(prep)
        with self._locked():
            pool_dir.mkdir(parents=True, exist_ok=True)
            index = self._read_json(pool_dir / "index.json")
            pool_path = pool_dir / "pool.u8"
            row_bytes = prep.size * prep.size * 3
            fresh = {h: a for h, a in rows.items() if h not in index}
            if fresh:
                with open(pool_path, "ab") as fh:
                    start = fh.tell()
                    if start % row_bytes:  # a torn write from an interrupted run: skip to a row boundary
                        fh.truncate(start - start % row_bytes)
                        fh.seek(0, os.SEEK_END)
                        start = fh.tell()
                    n0 = start // row_bytes
                    for k, (h, a) in enumerate(fresh.items()):
                        fh.write(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
                        index[h] = n0 + k
                    fh.flush()
                    os.fsync(fh.fileno())
                atomic_write_json(pool_dir / "index.json", index)
            # merge with what other processes wrote meanwhile, then replace atomically
            disk_files = self._read_json(self.root / "files.json")
            disk_files.update(files)
            atomic_write_json(self.root / "files.json", disk_files)
            disk_meta = self._read_json(self.root / "meta.json")
            disk_meta.update({k: v for k, v in meta.items() if not k.startswith("unreadable:")})
            atomic_write_json(self.root / "meta.json", disk_meta)
        return index

    def _gather(self, paths: list[Path], hashes: list[str | None], labels: Sequence[int] | None,
                meta: dict[str, Any], index: dict[str, int], prep: Preprocessing, decoded: int) -> Decoded:
        keep: list[int] = []
        skipped: list[Skip] = []
        for i, h in enumerate(hashes):
            info = meta.get(h or "", {})
            if h in index:
                keep.append(i)
            else:
                skipped.append(Skip(str(paths[i]), info.get("error", "unreadable")))
        size = prep.size
        if keep:
            pool_path = self._pool_dir(prep) / "pool.u8"
            n_rows = pool_path.stat().st_size // (size * size * 3)
            pool = np.memmap(pool_path, dtype=np.uint8, mode="r", shape=(n_rows, size, size, 3))
            rows = np.fromiter((index[hashes[i]] for i in keep), dtype=np.int64, count=len(keep))
            images = np.asarray(pool[rows])
            del pool
        else:
            images = np.zeros((0, size, size, 3), np.uint8)
        lab = np.asarray([labels[i] for i in keep] if labels is not None else [-1] * len(keep), np.int64)
        return Decoded(images=images, labels=lab, paths=[paths[i] for i in keep],
                       hashes=[hashes[i] for i in keep],  # type: ignore[misc]
                       meta=[meta[hashes[i]] for i in keep],  # type: ignore[index]
                       skipped=skipped, decoded=decoded)

    def load_samples(self, samples: Sequence[Sample], prep: Preprocessing, workers: int | None = None,
                     desc: str = "decoding") -> Decoded:
        return self.load([s.path for s in samples], prep, labels=[s.label for s in samples], workers=workers,
                         desc=desc)


def stat_signature(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def decode_file(path: Path, prep: Preprocessing) -> tuple[str | None, str | None, dict[str, Any],
                                                          np.ndarray | None]:
    """(stat signature, content hash, meta, pixels) of one file; meta holds `error` when it is unusable."""
    sig = stat_signature(path)
    try:
        data = read_file(path)
    except ImageError as exc:
        return sig, None, {"error": str(exc)}, None
    h = hashlib.blake2b(data, digest_size=16).hexdigest()
    info: dict[str, Any] = {}
    try:
        im = open_rgb(path, min_size=prep.size, data=data, info=info)
        info["phash"] = str(imagehash.phash(im))
        return sig, h, info, prep(im)
    except ImageError as exc:
        return sig, h, {"error": str(exc)}, None
    except Exception as exc:  # noqa: BLE001 - a decoder bug must cost one file, not the run
        return sig, h, {"error": f"unreadable image: {type(exc).__name__}: {exc}"}, None
