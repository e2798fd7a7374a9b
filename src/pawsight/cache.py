"""Decode each picture once, keep it as uint8 pixels, reuse it in every later command and approach.

Layout of the cache folder (`$PAWSIGHT_CACHE`, default `~/.cache/pawsight`):

    files.json                 "path|size|mtime_ns" -> content hash: a changed file gets a new entry
    meta.json                  content hash -> {format, mode, width, height, phash} or {error: reason}
    pixels/<preprocessing>/    pool.u8 (rows of size x size x 3 uint8, append-only) + index.json (hash -> row)
                               + index.log (rows appended since index.json was written: "hash row" lines)
    features/, onnx/           computed features and exported backbones (other modules; same root)
    weights/, datasets/        downloads

Nothing is ever evicted automatically; `pawsight cache info` shows the sizes, `pawsight cache clear` frees
them (cache_usage, clear_cache below).

Entries are keyed by file *content* and preprocessing, so renaming or copying a file costs a read and a hash
(no decode, no new row), and editing one invalidates exactly that one. Writers append rows in chunks while
decoding, each chunk with its index lines (index.log) in one step under a file lock: an interrupted run
keeps the chunks it finished and leaves no unindexed rows (a killed writer's tail is cut off by the next).
Appending lines keeps that linear in the number of pictures; the tables (index.json, files.json, meta.json)
are rewritten at the end of a load and every TABLES_SECONDS. A warm load maps the pool (read_rows).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cachedir import cache_lock, claim_cache, default_cache_dir, read_generation
from .data import Sample, Skip
from .errors import PawsightError
from .images import DECODER, ImageError, Preprocessing, file_hash, open_checked, open_rgb, perceptual_hash
from .progress import progress
from .storage import CACHE_ADVICE, atomic_write_json, writing
from .system import default_workers

FORMAT = 2  # 2: phash from a reduced thumbnail, pixels keyed '-v2'
APPEND_ROWS = 256  # decoded rows held in memory before they are appended to the pool
# files.json and meta.json (whole-table rewrites) are merged at most this often during a load, and at its end:
# an interruption loses at most this much decoding work, and a large load rewrites them a bounded number of
# times (per chunk, 1,000,000 pictures would rewrite ~100 MB tables 4,000 times).
TABLES_SECONDS = 30.0


@dataclass
class Decoded:
    """Good pictures of a file list as one array, in input order; the bad ones in `skipped`."""

    images: np.ndarray  # (n, size, size, 3) uint8
    labels: np.ndarray  # (n,) int64; -1 where no labels were given
    paths: list[Path]
    hashes: list[str]
    meta: list[dict[str, Any]]
    skipped: list[Skip] = field(default_factory=list)
    decoded: int = 0  # files read and decoded (cache misses); unreadable paths (dangling links) not counted


class ImageCache:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        claim_cache(self.root)

    # -- small JSON tables ---------------------------------------------------------------------------
    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # missing or damaged: rebuilt from the files
        return data if isinstance(data, dict) else {}

    def _writing(self, what: str = "the decode cache") -> Any:
        """Disk errors inside become one line: what failed, where, and 'free space or cache clear'."""
        return writing(what, self.root, CACHE_ADVICE)

    def _write_json(self, path: Path, obj: Any) -> None:
        atomic_write_json(path, obj, what="the decode cache", advice=CACHE_ADVICE)

    def _locked(self) -> Any:
        return cache_lock(self.root)

    def _pool_dir(self, prep: Preprocessing) -> Path:
        return self.root / "pixels" / prep.key

    def _generation(self) -> str:
        return read_generation(self.root)

    def _check_generation(self, seen: str) -> None:
        if self._generation() != seen:
            raise PawsightError("the decode cache was cleared while this command was running; run it again")

    # -- main entry ------------------------------------------------------------------------------------
    def load(self, paths: Sequence[str | os.PathLike[str]], prep: Preprocessing,
             labels: Sequence[int] | None = None, workers: int | None = None,
             desc: str = "decoding") -> Decoded:
        """Pixels of every readable file in `paths` under `prep`; bad ones are skipped with a reason."""
        paths = [Path(p) for p in paths]
        generation = self._generation()
        files = self._read_json(self.root / "files.json")
        meta = self._read_json(self.root / "meta.json")
        pool_dir = self._pool_dir(prep)
        index = self._valid_index(pool_dir, prep)

        hashes: list[str | None] = [None] * len(paths)
        todo: list[int] = []
        for i, p in enumerate(paths):
            sig = stat_signature(p)
            h = files.get(sig) if sig else None
            if h is not None and known(h, meta, index):
                hashes[i] = h
            else:
                todo.append(i)

        n_decoded = 0
        if todo:
            with self._writing():
                self.root.mkdir(parents=True, exist_ok=True)  # a file or /proc in the way: say so first
            new_files: dict[str, str] = {}
            new_meta: dict[str, Any] = {}
            rows: dict[str, np.ndarray] = {}  # decoded but not yet appended to the pool
            tables_at = time.monotonic()

            def work(i: int) -> tuple[int, str | None, str | None, dict[str, Any] | None, np.ndarray | None]:
                return (i, *decode_file(paths[i], prep, lambda h: known(h, meta, index)))

            # Threads, not processes: Pillow releases the GIL while decoding and resampling, and results
            # (150 kB of pixels each) need no pickling; rows stream to the pool in chunks: memory stays flat.
            # Each chunk is appended and indexed in one locked step, so an interrupted run keeps every chunk
            # it finished (the next run reuses them) and leaves no unindexed rows behind.
            pool = ThreadPoolExecutor(max_workers=workers or default_workers())
            try:
                results = pool.map(work, todo)
                for i, sig, h, info, pixels in progress(results, total=len(todo), desc=desc, unit="img"):
                    if h is None:  # could not even be read: reason is in info
                        hashes[i] = f"unreadable:{i}"
                        meta[hashes[i]] = info
                        continue
                    hashes[i] = h
                    if sig:
                        files[sig] = new_files[sig] = h
                    if info is None:  # renamed or copied: content already cached, nothing decoded
                        continue
                    n_decoded += 1
                    meta[h] = new_meta[h] = info
                    if pixels is not None and h not in index:
                        rows[h] = pixels
                        if len(rows) >= APPEND_ROWS:
                            tables = time.monotonic() - tables_at >= TABLES_SECONDS
                            index = self._append_commit(prep, rows, new_files if tables else {},
                                                        new_meta if tables else {}, generation)
                            rows = {}
                            if tables:
                                new_files, new_meta, tables_at = {}, {}, time.monotonic()
                index = self._append_commit(prep, rows, new_files, new_meta, generation, compact=True)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # stop decoding: nothing more can be kept
                raise
            pool.shutdown(wait=True)

        out = self._gather(paths, hashes, labels, meta, index, prep, decoded=n_decoded)
        self._check_generation(generation)  # rows mapped after a clear could be another picture's
        return out

    def _valid_index(self, pool_dir: Path, prep: Preprocessing) -> dict[str, int]:
        """index.json plus index.log, minus rows the pool file does not hold (a damaged index or a truncated
        pool); a torn last log line is ignored."""
        index = self._read_json(pool_dir / "index.json")
        try:
            log = (pool_dir / "index.log").read_text(errors="replace")
        except OSError:
            log = ""
        for line in log.split("\n")[:-1]:  # complete lines only: a killed writer's torn line is not read
            h, _, row = line.partition(" ")
            if h and row.isdigit():
                index[h] = int(row)
        try:
            n_rows = (pool_dir / "pool.u8").stat().st_size // row_bytes(prep)
        except OSError:
            return {}
        return {h: r for h, r in index.items() if isinstance(r, int) and 0 <= r < n_rows}

    def _append_commit(self, prep: Preprocessing, rows: dict[str, np.ndarray], files: dict[str, str],
                       meta: dict[str, Any], generation: str, compact: bool = False) -> dict[str, int]:
        """Append pixel rows to the pool and their lines to index.log, merge `files` and `meta` into the
        tables (with what other processes wrote), and with `compact` fold the log into index.json — all under
        the cache lock; returns the index.

        Every writer appends and indexes in this one locked step, so bytes past the last indexed row can only
        be a killed writer's: they are cut off before appending (interrupted work is reclaimed, the pool
        never grows with interruptions). A failed write (disk full) cuts pool and log back to where they were.
        """
        pool_dir = self._pool_dir(prep)
        size = row_bytes(prep)
        with self._locked(), self._writing():
            self._check_generation(generation)  # rows for a pool since deleted must not be indexed
            for folder in (self.root, pool_dir):  # cache tables are only written under this lock, so a
                for stale in folder.glob(".*.tmp"):  # temporary file seen now is a killed writer's litter
                    stale.unlink(missing_ok=True)
            index = self._valid_index(pool_dir, prep)
            fresh = {h: a for h, a in rows.items() if h not in index}  # another writer may have won
            if fresh:
                pool_dir.mkdir(parents=True, exist_ok=True)
                with open(pool_dir / "pool.u8", "ab", buffering=0) as fh:  # unbuffered: nothing to flush
                    indexed_end = (max(index.values()) + 1) * size if index else 0
                    if fh.seek(0, os.SEEK_END) > indexed_end:  # unindexed rows of a killed writer
                        fh.truncate(indexed_end)
                    start = fh.seek(0, os.SEEK_END)
                    added = {h: start // size + k for k, h in enumerate(fresh)}
                    with open(pool_dir / "index.log", "ab", buffering=0) as log:
                        log_start = log.seek(0, os.SEEK_END)
                        if log_start:  # a killed writer's torn last line: cut back to the last whole line
                            text = (pool_dir / "index.log").read_bytes()
                            log_start = text.rfind(b"\n") + 1
                            log.truncate(log_start)
                        try:
                            for a in fresh.values():  # straight from each array's buffer: no joined copy
                                view = memoryview(np.ascontiguousarray(a, dtype=np.uint8)).cast("B")
                                while view:  # a short write (disk filling up) is legal: write the rest
                                    view = view[fh.write(view):]
                            os.fsync(fh.fileno())  # rows on disk before any index line points at them
                            view = memoryview("".join(f"{h} {r}\n" for h, r in added.items()).encode())
                            while view:
                                view = view[log.write(view):]
                            os.fsync(log.fileno())
                        except BaseException:  # rows no index names would only take space
                            os.ftruncate(fh.fileno(), start)  # frees what this chunk wrote; needs no space
                            os.ftruncate(log.fileno(), log_start)
                            if not log_start:  # this call made it: leave the folder as it was
                                (pool_dir / "index.log").unlink(missing_ok=True)
                            raise
                index.update(added)
            if compact and (pool_dir / "index.log").exists():
                self._write_json(pool_dir / "index.json", index)  # then the log it now holds can go
                (pool_dir / "index.log").unlink(missing_ok=True)
            if files:
                disk_files = self._read_json(self.root / "files.json")
                disk_files.update(files)
                self._write_json(self.root / "files.json", disk_files)
            if meta:
                disk_meta = self._read_json(self.root / "meta.json")
                disk_meta.update(meta)
                self._write_json(self.root / "meta.json", disk_meta)
        return index

    def _gather(self, paths: list[Path], hashes: list[str | None], labels: Sequence[int] | None,
                meta: dict[str, Any], index: dict[str, int], prep: Preprocessing, decoded: int) -> Decoded:
        keep: list[int] = []
        skipped: list[Skip] = []
        for i, h in enumerate(hashes):
            if h in index:
                keep.append(i)
            else:
                skipped.append(Skip(str(paths[i]), meta.get(h or "", {}).get("error", "unreadable")))
        size = prep.size
        rows = np.fromiter((index[hashes[i]] for i in keep), dtype=np.int64, count=len(keep))  # type: ignore[index]
        images = read_rows(self._pool_dir(prep) / "pool.u8", rows, (size, size, 3))
        lab = np.asarray([labels[i] for i in keep] if labels is not None else [-1] * len(keep), np.int64)
        return Decoded(images=images, labels=lab, paths=[paths[i] for i in keep],
                       hashes=[hashes[i] for i in keep],  # type: ignore[misc]
                       meta=[meta[hashes[i]] for i in keep],  # type: ignore[index]
                       skipped=skipped, decoded=decoded)

    def load_samples(self, samples: Sequence[Sample], prep: Preprocessing, workers: int | None = None,
                     desc: str = "decoding") -> Decoded:
        return self.load([s.path for s in samples], prep, labels=[s.label for s in samples], workers=workers,
                         desc=desc)


def row_bytes(prep: Preprocessing) -> int:
    return prep.size * prep.size * 3


def read_rows(pool_path: Path, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Rows `rows` of the pool file as one array, in that order.

    The common case, rows stored contiguously in the order asked for (a set cached in one go, or a split of
    it), is a copy-on-write map of the pool: no copy, and no fresh memory to fault in (which costs ~1 s per
    450 MB in a VM), and writable like any array (writes stay private). Otherwise plain reads of sorted,
    coalesced runs into a new array, cheaper than fancy indexing a memmap.
    """
    nbytes = int(np.prod(shape))
    if len(rows) and (np.diff(rows) == 1).all():
        mm = np.memmap(pool_path, dtype=np.uint8, mode="c", offset=int(rows[0]) * nbytes,
                       shape=(len(rows), *shape))
        return np.asarray(mm)
    out = np.empty((len(rows), *shape), np.uint8)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    in_order = bool((order == np.arange(len(rows))).all())
    dest = out if in_order else np.empty_like(out)
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    with open(pool_path, "rb", buffering=0) as fh:
        for s, e in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(rows)].tolist(), strict=True):
            view = memoryview(dest[s:e].reshape(-1))
            got = 0
            while got < len(view):  # short reads are legal; a pool shorter than its index is not
                more = os.preadv(fh.fileno(), [view[got:]], int(sorted_rows[s]) * nbytes + got)
                if more <= 0:
                    raise OSError(f"decode cache pool {pool_path} is shorter than its index")
                got += more
    if not in_order:
        out[order] = dest
    return out


def stat_signature(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def known(h: str, meta: dict[str, Any], index: dict[str, int]) -> bool:
    """Is content `h` fully cached: its meta, and its pixels (or the reason it has none, found by this very
    decoder: a file an older Pillow could not read is tried again after an upgrade)?"""
    info = meta.get(h)
    return isinstance(info, dict) and (h in index or ("error" in info and info.get("decoder") == DECODER))


def decode_file(path: Path, prep: Preprocessing, is_known: Callable[[str], bool] = lambda h: False,
                ) -> tuple[str | None, str | None, dict[str, Any] | None, np.ndarray | None]:
    """(stat signature, content hash, meta, pixels) of one file; meta holds `error` when it is unusable.

    Meta is None when `is_known(hash)`: a renamed/copied/touched file costs a read and a hash, not a decode.
    """
    sig = stat_signature(path)
    try:
        fh = open_checked(path)  # header and size checked before anything else is read
    except ImageError as exc:
        return sig, None, {"error": str(exc)}, None
    with fh:
        try:
            h = file_hash(fh)
        except ImageError as exc:
            return sig, None, {"error": str(exc)}, None
        if is_known(h):
            return sig, h, None, None
        info: dict[str, Any] = {}
        try:
            im = open_rgb(path, min_size=prep.size, data=fh, info=info)  # decoded from the file, not a copy
            info["phash"] = perceptual_hash(im)
            return sig, h, info, prep(im)
        except ImageError as exc:
            return sig, h, {"error": str(exc), "decoder": DECODER}, None
        except Exception as exc:  # noqa: BLE001 - a decoder bug must cost one file, not the run
            reason = f"unreadable image: {type(exc).__name__}: {exc}"
            return sig, h, {"error": reason, "decoder": DECODER}, None
