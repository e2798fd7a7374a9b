"""Decode each picture once, keep it compressed at the working size, reuse it in every later command.

Layout of the cache folder (`$PAWSIGHT_CACHE`, default `~/.cache/pawsight`):

    files.json                 "path|size|mtime_ns" -> content hash: a changed file gets a new entry
    meta.json                  content hash -> {format, mode, width, height, phash} or {error: reason}
    pixels/<preprocessing>/    seg-NNNNNN-X.jpgs (segments: JPEG or PNG pictures back to back, append-only, a
                               new one every SEGMENT_BYTES) + index.json (hash -> [segment, offset, length])
                               + index.log (entries appended since index.json was written: one line each)
    features/, onnx/           computed features and exported backbones (other modules; same root)
    weights/, datasets/        downloads

Why JPEG at quality POOL_QUALITY: raw pixels cost 150 kB per picture at 224 px (4.3 GB at 30,000 pictures);
JPEG at the working size costs ~16 kB and decodes in ~1 ms, while reading the original (often several
megapixels) costs 10-50 ms. Only pictures whose file was lossy already are stored as JPEG; the others (PNG,
GIF, BMP, TIFF) are stored as lossless PNG (encode_row). The accuracy the lossy pool costs is measured in
docs/benchmarks.md. Commands never hold every picture: `Decoded.images` is a `PoolRows`, an array-like whose
rows are read and decoded when indexed, so memory depends on the batch size, not on the collection.

The pixels and the computed features are capped together at `PAWSIGHT_CACHE_MAX` (cachedir.cache_max,
default 10 GB): after each load the least recently used segments and feature shards are deleted until the
cache fits (`evict`). A load marks the segments it reads as used (their mtime), so the pictures of the
current command are the last to go; a command whose own pictures exceed the cap keeps them until the next.

Entries are keyed by file *content* and preprocessing, so renaming or copying a file costs a read and a hash
(no decode, no new row), and editing one invalidates exactly that one. Writers append rows in chunks while
decoding, each chunk with its index lines (index.log) in one step under a file lock: an interrupted run
keeps the chunks it finished and leaves no unindexed rows (a killed writer's tail is cut off by the next).
Appending lines keeps that linear in the number of pictures; the tables (index.json, files.json, meta.json)
are rewritten at the end of a load and every TABLES_SECONDS or more (see TABLES_SHARE); files.json and
meta.json are read again for that only when another process wrote them meanwhile (`Table`).

An older cache (format 2: raw rows in pixels/<preprocessing>/pool.u8) is recognised by that file and
replaced: its pools are deleted under the lock and the generation changes (`replace_legacy_pools`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .cachedir import cache_lock, cache_max, claim_cache, default_cache_dir, new_generation, read_generation
from .data import Sample, Skip
from .errors import PawsightError
from .images import DECODER, ImageError, Preprocessing, file_hash, open_checked, open_rgb, perceptual_hash
from .progress import progress
from .storage import CACHE_ADVICE, atomic_write_json, fsync_dir, writing
from .system import default_workers, ordered_map

FORMAT = 3  # 3: JPEG rows in segments, capped and evicted (2: raw rows in pool.u8, phash from a thumbnail)
POOL_QUALITY = 92  # JPEG quality of the stored pixels (4:2:0); measured in docs/benchmarks.md ("cache")
LOSSY_SOURCES = {"JPEG", "MPO", "WEBP", "AVIF"}  # files stored as JPEG; any other source is stored as PNG
SEGMENT_BYTES = 64 * 2**20  # a segment is the unit of eviction; few enough files to keep them all open
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".jpgs"
APPEND_ROWS = 256  # encoded rows held in memory before they are appended to the pool
BATCH_ROWS = 256  # rows decoded at once by consumers walking a whole collection (`batches`)
# files.json and meta.json (whole-table rewrites) are written during a load every TABLES_SECONDS, or every
# TABLES_SHARE x the time the last write took if that is longer, and at its end. An interruption loses at most
# that much decoding work (the next run decodes those pictures again); a large load rewrites them a bounded
# number of times (per chunk, 1,000,000 pictures would rewrite ~100 MB tables 4,000 times) and spends at most
# 1/TABLES_SHARE of its time on it: at a million pictures one write takes ~5 s (measured: parsing and writing
# 100,000 entries of each takes ~0.45 s), a sixth of a 30-second interval.
TABLES_SECONDS = 30.0
TABLES_SHARE = 20

Entry = tuple[str, int, int]  # (segment file name, offset, length)


@dataclass
class Decoded:
    """Good pictures of a file list, in input order, read on demand; the bad ones in `skipped`."""

    images: PoolRows  # (n, size, size, 3) uint8, decoded from the pool when indexed
    labels: np.ndarray  # (n,) int64; -1 where no labels were given
    paths: list[Path]
    hashes: list[str]
    meta: list[dict[str, Any]]  # empty when loaded with keep_meta=False
    skipped: list[Skip] = field(default_factory=list)
    decoded: int = 0  # files read and decoded (cache misses); unreadable paths (dangling links) not counted

    def kept_of(self, samples: Sequence[Sample]) -> list[Sample]:
        """The samples (of the list these pictures were loaded from) whose pictures were read, in order: the
        pictures are that list without the skipped files, so one walk pairs them (no dict of every path)."""
        kept: list[Sample] = []
        paths = self.paths
        for s in samples:
            if len(kept) < len(paths) and (s.path is (p := paths[len(kept)]) or str(s.path) == str(p)):
                kept.append(s)
        if len(kept) != len(paths):
            raise ValueError("these pictures were not loaded from these samples")
        return kept


class ImageCache:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        claim_cache(self.root)
        self._readers: dict[Path, IndexReader] = {}  # the pool indexes this object appends to
        cache_max()  # a nonsense PAWSIGHT_CACHE_MAX is one line now, not after decoding every picture

    # -- small JSON tables ---------------------------------------------------------------------------
    def _writing(self, what: str = "the decode cache") -> Any:
        """Disk errors inside become one line: what failed, where, and 'free space or cache clear'."""
        return writing(what, self.root, CACHE_ADVICE)

    def _write_json(self, path: Path, obj: Any) -> None:
        atomic_write_json(path, obj, what="the decode cache", advice=CACHE_ADVICE)

    def _locked(self) -> Any:
        return cache_lock(self.root)

    def _reader(self, pool_dir: Path) -> IndexReader:
        if pool_dir not in self._readers:
            self._readers[pool_dir] = IndexReader(pool_dir)
        return self._readers[pool_dir]

    def _pool_dir(self, prep: Preprocessing) -> Path:
        return self.root / "pixels" / prep.key

    def _generation(self) -> str:
        return read_generation(self.root)

    def _valid_index(self, pool_dir: Path, prep: Preprocessing) -> dict[str, Entry]:
        """The index as a load first reads it (without the lock; see valid_index)."""
        return valid_index(pool_dir)

    def _check_generation(self, seen: str) -> None:
        if self._generation() != seen:
            raise PawsightError("the decode cache was cleared while this command was running; run it again")

    # -- main entry ------------------------------------------------------------------------------------
    def load(self, paths: Sequence[str | os.PathLike[str]], prep: Preprocessing,
             labels: Sequence[int] | None = None, workers: int | None = None,
             desc: str = "decoding", keep_meta: bool = True) -> Decoded:
        """Pictures of every readable file in `paths` under `prep` (read lazily from the pool); bad ones are
        skipped with a reason. `keep_meta=False` leaves `Decoded.meta` empty: a training reads no metadata,
        and a dict per picture kept from the parsed table also keeps the table's memory (0.7 kB a picture
        with the Path copies this no longer makes, measured at 25,000 pictures)."""
        paths = [p if isinstance(p, Path) else Path(p) for p in paths]  # the caller's objects: no copy each
        replace_legacy_pools(self.root)
        generation = self._generation()
        tables = Tables(self.root)
        files, meta = tables.files.data, tables.meta.data
        errors: dict[str, dict[str, Any]] = {}  # reasons of files that could not even be read (not cached)
        index = self._valid_index(self._pool_dir(prep), prep)

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
            rows: dict[str, bytes] = {}  # encoded but not yet appended to the pool

            def work(i: int) -> tuple[int, str | None, str | None, dict[str, Any] | None, bytes | None]:
                sig, h, info, pixels = decode_file(paths[i], prep, lambda h: known(h, meta, index))
                blob = encode_row(pixels, (info or {}).get("format")) if pixels is not None else None
                return i, sig, h, info, blob

            # Threads, not processes: Pillow releases the GIL while decoding, resampling and encoding, and
            # results need no pickling; rows stream to the pool in chunks: memory stays flat. Each chunk is
            # appended and indexed in one locked step, so an interrupted run keeps every chunk it finished
            # (the next run reuses them) and leaves no unindexed rows behind.
            threads = workers or default_workers()
            pool = ThreadPoolExecutor(max_workers=threads)
            try:
                results = ordered_map(pool, work, todo, ahead=16 * threads)
                for i, sig, h, info, blob in progress(results, total=len(todo), desc=desc, unit="img"):
                    if h is None:  # could not even be read: reason is in info
                        hashes[i] = f"unreadable:{i}"
                        errors[hashes[i]] = info  # type: ignore[assignment]
                        continue
                    hashes[i] = h
                    if sig:
                        tables.files.add(sig, h)
                    if info is None:  # renamed or copied: content already cached, nothing decoded
                        continue
                    n_decoded += 1
                    tables.meta.add(h, info)
                    if blob is not None and h not in index:
                        rows[h] = blob
                        if len(rows) >= APPEND_ROWS:
                            index = self._append_commit(prep, rows, tables if tables.due() else None,
                                                        generation)
                            rows = {}
                index = self._append_commit(prep, rows, tables, generation, compact=True)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # stop decoding: nothing more can be kept
                raise
            pool.shutdown(wait=True)

        out = self._gather(paths, hashes, labels, meta, errors, prep, generation, decoded=n_decoded,
                           keep_meta=keep_meta)
        self.evict(keep=out.images.segment_paths())
        return out

    def _append_commit(self, prep: Preprocessing, rows: dict[str, bytes], tables: Tables | None,
                       generation: str, compact: bool = False) -> dict[str, Entry]:
        """Append encoded rows to the pool's last segment (or a new one) and their lines to index.log, write
        `tables` (merged with what other processes wrote), and with `compact` fold the log into index.json —
        all under the cache lock; returns the index.

        Every writer appends and indexes in this one locked step, so bytes past the last indexed row of a
        segment, and segments no entry names, can only be a killed writer's: they are cut off or deleted
        before appending (interrupted work is reclaimed, the pool never grows with interruptions). A failed
        write (disk full) cuts segment and log back to where they were.
        """
        pool_dir = self._pool_dir(prep)
        with self._locked(), self._writing():
            self._check_generation(generation)  # rows for a pool since deleted must not be indexed
            for folder in (self.root, pool_dir):  # cache tables are only written under this lock, so a
                for stale in folder.glob(".*.tmp"):  # temporary file seen now is a killed writer's litter
                    stale.unlink(missing_ok=True)
            reader = self._reader(pool_dir)
            index = reader.refresh()
            fresh = {h: b for h, b in rows.items() if h not in index}  # another writer may have won
            if fresh:
                pool_dir.mkdir(parents=True, exist_ok=True)
                ends = reader.ends
                for seg in segment_names(pool_dir):
                    if seg not in ends:  # a killed writer's segment: nothing points into it
                        (pool_dir / seg).unlink(missing_ok=True)
                last = max(ends, default=None)
                target = last if last is not None and ends[last] < SEGMENT_BYTES else \
                    next_segment_name(last)
                self._append_rows(pool_dir, target, ends.get(target, 0), fresh)
                index = reader.refresh()  # reads back just the lines appended now
            if compact and (pool_dir / "index.log").exists():
                self._write_json(pool_dir / "index.json", index)  # then the log it now holds can go
                (pool_dir / "index.log").unlink(missing_ok=True)
                reader.compacted()
            if tables is not None:
                tables.write(self._write_json)
        return index

    @staticmethod
    def _append_rows(pool_dir: Path, segment: str, indexed_end: int, fresh: dict[str, bytes]
                     ) -> dict[str, Entry]:
        """Append `fresh` to `segment` (cut back to `indexed_end` first) and index.log; called under the lock.
        Rows reach the disk (fsync) before any index line points at them."""
        path = pool_dir / segment
        created = not path.exists()
        with open(path, "ab", buffering=0) as fh:  # unbuffered: nothing to flush
            if fh.seek(0, os.SEEK_END) > indexed_end:  # unindexed rows of a killed writer
                fh.truncate(indexed_end)
            start = fh.seek(0, os.SEEK_END)
            added: dict[str, Entry] = {}
            at = start
            for h, blob in fresh.items():
                added[h] = (segment, at, len(blob))
                at += len(blob)
            with open(pool_dir / "index.log", "ab", buffering=0) as log:
                log_start = log.seek(0, os.SEEK_END)
                if log_start:  # a killed writer's torn last line: cut back to the last whole line
                    log_start = last_line_end(pool_dir / "index.log", log_start)
                    log.truncate(log_start)
                try:
                    for blob in fresh.values():
                        write_all(fh, blob)
                    os.fsync(fh.fileno())
                    if created:
                        fsync_dir(pool_dir)
                    write_all(log, "".join(f"{h} {s} {o} {n}\n" for h, (s, o, n) in added.items()).encode())
                    os.fsync(log.fileno())
                except BaseException:  # rows no index names would only take space
                    os.ftruncate(fh.fileno(), start)  # frees what this chunk wrote; needs no space
                    os.ftruncate(log.fileno(), log_start)
                    if created:
                        path.unlink(missing_ok=True)
                    if not log_start:  # this call made it: leave the folder as it was
                        (pool_dir / "index.log").unlink(missing_ok=True)
                    raise
        return added

    def _gather(self, paths: list[Path], hashes: list[str | None], labels: Sequence[int] | None,
                meta: dict[str, Any], errors: dict[str, dict[str, Any]], prep: Preprocessing, generation: str,
                decoded: int, keep_meta: bool = True) -> Decoded:
        """The Decoded of `paths`: its rows' segments are opened under the lock (eviction and clearing take
        it too), so the rows stay readable however long the command runs, even if they are deleted later."""
        pool_dir = self._pool_dir(prep)
        with self._locked():
            self._check_generation(generation)  # rows indexed before a clear could be another picture's
            index = self._reader(pool_dir).refresh()  # the appending load's own index: not read twice
            keep: list[int] = []
            skipped: list[Skip] = []
            for i, h in enumerate(hashes):
                if h in index:
                    keep.append(i)
                else:
                    info = meta.get(h or "") or errors.get(h or "") or {}
                    skipped.append(Skip(str(paths[i]), info.get("error", "unreadable")))
            kept = [hashes[i] for i in keep]
            images = PoolRows.open(pool_dir, [index[h] for h in kept], prep,  # type: ignore[index]
                                   keys=[row_key(h, prep) for h in kept])  # type: ignore[arg-type]
        lab = np.asarray([labels[i] for i in keep] if labels is not None else [-1] * len(keep), np.int64)
        return Decoded(images=images, labels=lab, paths=[paths[i] for i in keep],
                       hashes=kept,  # type: ignore[arg-type]
                       meta=[meta[hashes[i]] for i in keep] if keep_meta else [],  # type: ignore[index]
                       skipped=skipped, decoded=decoded)

    def load_samples(self, samples: Sequence[Sample], prep: Preprocessing, workers: int | None = None,
                     desc: str = "decoding", keep_meta: bool = True) -> Decoded:
        return self.load([s.path for s in samples], prep, labels=[s.label for s in samples], workers=workers,
                         desc=desc, keep_meta=keep_meta)

    def evict(self, keep: set[Path] | frozenset[Path] = frozenset(), cap: int | None = None) -> int:
        """Delete the least recently used pixel segments and feature shards until pixels + features fit in
        `cap` (default PAWSIGHT_CACHE_MAX); never those in `keep` (the current command's). Bytes freed.

        Under the cache lock, like every write: a reader opens its segments under it too, so a deleted
        segment is either not in its index or already open (and stays readable until it is closed)."""
        cap = cache_max() if cap is None else cap
        units = evictable(self.root)
        total = sum(size for _, size, _ in units)
        if total <= cap:
            return 0
        freed = 0
        with self._locked(), self._writing("the cache (evicting old entries)"):
            units = evictable(self.root)  # again, under the lock: another process may have evicted
            total = sum(size for _, size, _ in units)
            pools: set[Path] = set()
            for _, size, files in sorted(units, key=lambda u: u[0]):
                if total <= cap:
                    break
                if not files or any(f in keep for f in files):
                    continue
                for f in files:  # a feature shard's keys (.json) first: then its rows are never read
                    f.unlink(missing_ok=True)
                    if f.suffix == SEGMENT_SUFFIX:
                        pools.add(f.parent)
                total -= size
                freed += size
            for pool in pools:  # entries of deleted segments go from the index now, not only when read
                self._write_json(pool / "index.json", valid_index(pool))
                (pool / "index.log").unlink(missing_ok=True)
        return freed


# -- the pool on disk -------------------------------------------------------------------------------------

def segment_names(pool_dir: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(pool_dir)
                      if e.name.startswith(SEGMENT_PREFIX) and e.name.endswith(SEGMENT_SUFFIX))
    except OSError:
        return []


def next_segment_name(last: str | None) -> str:
    """seg-<number>-<random>.jpgs: numbered so the newest sorts last, and never the name of a segment that
    was evicted, so an index entry left over from one can never point into another."""
    number = int(last[len(SEGMENT_PREFIX):].split("-")[0]) + 1 if last else 1
    return f"{SEGMENT_PREFIX}{number:06d}-{os.urandom(4).hex()}{SEGMENT_SUFFIX}"


def valid_index(pool_dir: Path) -> dict[str, Entry]:
    """index.json plus index.log, minus entries the segments do not hold (a damaged index, a truncated or
    evicted segment); a torn last log line is ignored. The same reading a writer keeps current."""
    return IndexReader(pool_dir).refresh()


def last_line_end(path: Path, size: int, block: int = 1 << 16) -> int:
    """Offset just past the last newline of the file's first `size` bytes (0 if none), reading it backwards
    from `size` a block at a time: the whole log would be read for every appended chunk otherwise."""
    with open(path, "rb") as fh:
        end = size
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            at = fh.read(end - start).rfind(b"\n")
            if at >= 0:
                return start + at + 1
            end = start
    return 0


def segment_sizes(pool_dir: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name in segment_names(pool_dir):
        with suppress(OSError):
            sizes[name] = (pool_dir / name).stat().st_size
    return sizes


def _log_lines(log: bytes) -> tuple[dict[str, Any], int]:
    """(hash -> raw entry, bytes read) of index.log's complete lines: a killed writer's torn line is not
    read."""
    end = log.rfind(b"\n") + 1
    raw: dict[str, Any] = {}
    for line in log[:end].decode(errors="replace").split("\n")[:-1]:
        parts = line.split(" ")
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            raw[parts[0]] = [parts[1], int(parts[2]), int(parts[3])]
    return raw, end


def _validated(raw: dict[str, Any], sizes: dict[str, int]) -> dict[str, Entry]:
    """The entries of `raw` that point inside a segment of these `sizes`."""
    out: dict[str, Entry] = {}
    for h, e in raw.items():
        if (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], int)
                and isinstance(e[2], int) and e[1] >= 0 and e[2] > 0 and e[1] + e[2] <= sizes.get(e[0], -1)):
            out[h] = (e[0], e[1], e[2])
    return out


class Table:
    """One of the cache's JSON tables (files.json or meta.json) as a load holds it: what it read at the start
    plus what it added since, written back whole under the lock.

    Writing back merges with what other processes wrote meanwhile. The merge reads the table again (a second
    copy in memory: ~1 GB for both tables at a million pictures) only when the file changed since this load
    last read or wrote it; with no other writer, the load's own copy is the table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = _file_sig(path)  # before reading: a change during the read is then seen as a change
        self.data: dict[str, Any] = _read_index_json(path)
        self._new: dict[str, Any] = {}

    def add(self, key: str, value: Any) -> None:
        self.data[key] = self._new[key] = value

    def write(self, write_json: Callable[[Path, Any], None]) -> None:
        """Under the cache lock."""
        if not self._new:
            return
        if _file_sig(self.path) != self._seen:  # another process wrote it: theirs plus ours
            disk = _read_index_json(self.path)
            disk.update(self._new)
            self.data.clear()
            self.data.update(disk)  # the same dict: the load looks entries up in it
        write_json(self.path, self.data)
        self._seen, self._new = _file_sig(self.path), {}


class Tables:
    """files.json and meta.json of one load, written at most every TABLES_SECONDS (see TABLES_SHARE)."""

    def __init__(self, root: Path) -> None:
        self.files, self.meta = Table(root / "files.json"), Table(root / "meta.json")
        self._at, self._took = time.monotonic(), 0.0

    def due(self) -> bool:
        return time.monotonic() - self._at >= max(TABLES_SECONDS, TABLES_SHARE * self._took)

    def write(self, write_json: Callable[[Path, Any], None]) -> None:
        t = time.monotonic()
        self.files.write(write_json)
        self.meta.write(write_json)
        self._at, self._took = time.monotonic(), time.monotonic() - t


def _file_sig(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class IndexReader:
    """`valid_index(pool_dir)` kept current by a writer that appends many chunks, reading only what changed.

    Re-reading the whole index for every appended chunk made a load quadratic: a million pictures are ~4,000
    chunks, each parsing and checking up to a million lines. Here each call reads index.log from where the
    last one stopped; anything else that can change the index — index.json rewritten (a compaction, an
    eviction), the log replaced or cut, a segment gone or shorter — makes it read everything again, as
    `valid_index` does. Call it under the cache lock: no writer is between its reads then."""

    def __init__(self, pool_dir: Path) -> None:
        self.pool_dir = pool_dir
        self.index: dict[str, Entry] = {}
        self.ends: dict[str, int] = {}  # segment -> end of its last indexed row
        self._sizes: dict[str, int] = {}
        self._json: tuple[int, int, int] | None = None
        self._log: tuple[int, int] | None = None  # (inode, bytes read) of index.log
        self._fresh = False

    def refresh(self) -> dict[str, Entry]:
        sizes = segment_sizes(self.pool_dir)
        json_sig = _file_sig(self.pool_dir / "index.json")
        log_path = self.pool_dir / "index.log"
        log_sig = _file_sig(log_path)
        changed = (not self._fresh or json_sig != self._json
                   or any(sizes.get(name, -1) < size for name, size in self._sizes.items())
                   or (self._log is not None and self._log[1] > 0
                       and (log_sig is None or log_sig[0] != self._log[0] or log_sig[2] < self._log[1])))
        if changed:
            self.index, self.ends, self._log = {}, {}, None
            self._add(_read_index_json(self.pool_dir / "index.json"), sizes)
        start = self._log[1] if self._log is not None else 0
        try:
            with open(log_path, "rb") as fh:
                inode = os.fstat(fh.fileno()).st_ino
                fh.seek(start)
                raw, used = _log_lines(fh.read())
        except OSError:
            inode, raw, used = 0, {}, 0
        self._add(raw, sizes)
        self._log = (inode, start + used) if inode else None
        self._sizes, self._json, self._fresh = sizes, json_sig, True
        return self.index

    def compacted(self) -> None:
        """This reader's entries were just written to index.json and index.log removed (under the lock)."""
        self._json, self._log = _file_sig(self.pool_dir / "index.json"), None

    def _add(self, raw: dict[str, Any], sizes: dict[str, int]) -> None:
        for h, (seg, offset, length) in _validated(raw, sizes).items():
            self.index[h] = (seg, offset, length)
            self.ends[seg] = max(self.ends.get(seg, 0), offset + length)


def _read_index_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_all(fh: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a short write (disk filling up) is legal: write the rest
        view = view[fh.write(view):]


def encode_row(pixels: np.ndarray, source_format: str | None = None) -> bytes:
    """One picture as the pool stores it: JPEG at POOL_QUALITY when its file was lossy already (JPEG, WebP,
    AVIF: another pass at q92 changes it by ~1 grey level), else lossless PNG. Why not JPEG for all: a PNG
    (a screenshot, a scan, a synthetic or medical picture) can hold detail JPEG destroys, and a model trained
    on the pool must see what prediction, which decodes the file itself, will see."""
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels, np.uint8))
    if source_format in LOSSY_SOURCES:
        image.save(buf, format="JPEG", quality=POOL_QUALITY)
    else:
        image.save(buf, format="PNG", compress_level=1)  # fast: decoding speed matters more than bytes here
    return buf.getvalue()


def decode_row(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob), formats=["JPEG", "PNG"]) as im:
        return np.asarray(im.convert("RGB"))


def pool_roundtrip(pixels: np.ndarray, source_format: str | None = "JPEG") -> np.ndarray:
    """What the pool gives back for `pixels` of a `source_format` file: the reference the cache's pictures
    are checked against."""
    return decode_row(encode_row(pixels, source_format))


def row_key(content_hash: str, prep: Preprocessing) -> str:
    """A stable key of a pool row's pixels without decoding them: they are a function of the file's content,
    the preprocessing, the decoder and the pool's codec. Feature caches key cached rows by it."""
    spec = f"{content_hash}|{prep.key}|{DECODER}|pool-{FORMAT}-q{POOL_QUALITY}"
    return hashlib.blake2b(spec.encode(), digest_size=16).hexdigest()


class _Segments:
    """Open file descriptors of a pool's segments, closed when the last PoolRows using them goes."""

    def __init__(self, pool_dir: Path, names: list[str]) -> None:
        self.pool_dir = pool_dir
        self.names = names
        self.fds: list[int] = []
        try:
            for name in names:
                self.fds.append(os.open(pool_dir / name, os.O_RDONLY))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __del__(self) -> None:
        self.close()


class PoolRows:
    """Pictures of the pool as a read-only array of shape (n, size, size, 3) uint8 whose rows are read and
    decoded when indexed: `X[idx]` (an int, a slice, an index array or a boolean mask) gives a fresh ndarray.

    Why: a command over 100,000 pictures must not hold 15 GB of pixels; it walks them in batches
    (`batches`), and training loops index mini-batches exactly as they index an array. `np.asarray(X)` still
    works (small sets, tests) but reads everything. `MAX_ROWS`, when set, refuses any read of more rows at
    once: tests use it to prove a path never materialises a whole collection.
    """

    MAX_ROWS: int | None = None

    def __init__(self, segments: _Segments, entries: np.ndarray, size: int, keys: list[str] | np.ndarray,
                 mirror: bool = False) -> None:
        self._segments = segments
        self._entries = entries  # (n, 3) int64: segment number, offset, length
        self._size = size
        self._keys = np.asarray(keys, dtype="S32")  # row_key hex digests: 32 bytes a row, not an 81-byte str
        self._mirror = mirror  # rows read left-right mirrored (X[:, :, ::-1] without reading anything)

    @classmethod
    def open(cls, pool_dir: Path, entries: list[Entry], prep: Preprocessing, keys: list[str]) -> PoolRows:
        names = sorted({e[0] for e in entries})
        number = {n: i for i, n in enumerate(names)}
        table = np.array([(number[s], o, n) for s, o, n in entries], np.int64).reshape(-1, 3)
        try:
            segments = _Segments(pool_dir, names)
        except FileNotFoundError:
            raise PawsightError("the decode cache was cleared while this command was running; "
                                "run it again") from None
        now = time.time()
        for name in names:  # used now: the last to be evicted (the pool's LRU clock is the segments' mtime)
            with suppress(OSError):
                os.utime(pool_dir / name, (now, now))
        return cls(segments, table, int(prep.size), keys)

    # -- array protocol --------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self._entries), self._size, self._size, 3)

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, item: Any) -> np.ndarray:
        if isinstance(item, int | np.integer):
            return self._read(np.array([int(item)]))[0]
        if isinstance(item, tuple):  # X[:, :, ::-1] and the like: rows first, then the rest in NumPy
            return self[item[0]][(slice(None), *item[1:])]
        return self._read(self._positions(item))

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, rows in batches(self):
            yield from rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"PoolRows(shape={self.shape})"

    # -- lazy views and keys -----------------------------------------------------------------------------
    def take(self, idx: Any) -> PoolRows:
        """Rows `idx` as another lazy PoolRows (nothing is read)."""
        pos = self._positions(idx)
        return PoolRows(self._segments, self._entries[pos], self._size, self._keys[pos],
                        self._mirror)

    def mirrored(self) -> PoolRows:
        """The same rows mirrored left-right, lazily (what X[:, :, ::-1] gives for an array)."""
        return PoolRows(self._segments, self._entries, self._size, self._keys, not self._mirror)

    def keys(self) -> list[str]:
        """Stable per-row keys for feature caches (row_key): known without decoding anything."""
        keys = [k.decode() for k in self._keys.tolist()]
        if not self._mirror:
            return keys
        return [hashlib.blake2b(f"{k}|mirrored".encode(), digest_size=16).hexdigest() for k in keys]

    def segment_paths(self) -> set[Path]:
        return {self._segments.pool_dir / n for n in self._segments.names}

    def stored_bytes(self) -> int:
        return int(self._entries[:, 2].sum()) if len(self._entries) else 0

    def _positions(self, item: Any) -> np.ndarray:
        if isinstance(item, slice):
            return np.arange(len(self))[item]
        pos = np.asarray(item)
        if pos.dtype == bool:
            if pos.shape != (len(self),):
                raise IndexError(f"boolean index of shape {pos.shape} for {len(self)} rows")
            return np.flatnonzero(pos)
        pos = pos.astype(np.int64).reshape(-1)
        if len(pos) and (pos.max() >= len(self) or pos.min() < -len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        return np.where(pos < 0, pos + len(self), pos)

    def _read(self, pos: np.ndarray) -> np.ndarray:
        limit = PoolRows.MAX_ROWS
        if limit is not None and len(pos) > limit:
            raise MemoryError(f"{len(pos)} rows read at once (PoolRows.MAX_ROWS is {limit})")
        out = np.empty((len(pos), self._size, self._size, 3), np.uint8)
        fds = self._segments.fds
        for k, (seg, offset, length) in enumerate(self._entries[pos].tolist()):
            blob = os.pread(fds[seg], length, offset)
            if len(blob) != length:
                raise PawsightError("a decode cache segment is shorter than its index; run "
                                    "'pawsight cache clear pixels' and run the command again")
            out[k] = decode_row(blob)
        return out[:, :, ::-1].copy() if self._mirror else out


def batches(X: Any, size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, pixels) of `X` (a PoolRows or an array) `size` rows at a time: how a command walks a
    whole collection with memory bounded by the batch, not the collection."""
    size = int(size or BATCH_ROWS)
    for start in range(0, len(X), size):
        pos = np.arange(start, min(start + size, len(X)))
        yield pos, np.asarray(X[start:start + size], np.uint8)


def mirrored(X: Any) -> Any:
    """`X` mirrored left-right: lazily for a PoolRows, X[:, :, ::-1] for an array."""
    return X.mirrored() if isinstance(X, PoolRows) else np.asarray(X)[:, :, ::-1]


def as_rows(X: Any) -> Any:
    """A PoolRows as it is (lazy), anything else as a contiguous uint8 array."""
    return X if isinstance(X, PoolRows) else np.ascontiguousarray(X, dtype=np.uint8)


def take(X: Any, idx: Any) -> Any:
    """Rows `idx` of `X`, lazily for a PoolRows (an array is indexed as usual)."""
    return X.take(idx) if isinstance(X, PoolRows) else np.asarray(X)[idx]


def row_keys(X: Any) -> list[str]:
    """Feature-cache keys of each row: the pool's stable keys for a PoolRows (nothing decoded), else the
    blake2b of the row's pixels."""
    if isinstance(X, PoolRows):
        return X.keys()
    return [hashlib.blake2b(np.ascontiguousarray(x, np.uint8).tobytes(), digest_size=16).hexdigest()
            for x in X]


def evictable(root: Path) -> list[tuple[float, int, list[Path]]]:
    """Everything the cap covers, as (last used, bytes, files) units: each pixel segment, each feature
    shard (.json keys + .npy rows). Index files count towards the total but are not units."""
    units: list[tuple[float, int, list[Path]]] = []
    pixels = root / "pixels"
    if pixels.is_dir():
        for pool in pixels.iterdir():
            for name in segment_names(pool):
                try:
                    st = (pool / name).stat()
                except OSError:
                    continue
                units.append((st.st_mtime, st.st_size, [pool / name]))
            for name in ("index.json", "index.log"):
                with suppress(OSError):
                    units.append((float("inf"), (pool / name).stat().st_size, []))
    features = root / "features"
    if features.is_dir():
        for dirpath, _, names in os.walk(features):
            for name in names:
                if not name.endswith(".json"):
                    continue
                keys = Path(dirpath) / name
                rows = keys.with_suffix(".npy")
                try:
                    st = keys.stat()
                    size = st.st_size + (rows.stat().st_size if rows.exists() else 0)
                except OSError:
                    continue
                units.append((st.st_mtime, size, [keys, rows]))
    return units


def replace_legacy_pools(root: Path) -> None:
    """Delete pools of an older format (raw rows in pool.u8) — they cost 150 kB per picture and this
    pawsight cannot read them — under the lock, and change the generation so an older pawsight reading them
    at that moment stops with "run it again" rather than read a deleted pool."""
    pixels = root / "pixels"
    if not pixels.is_dir() or not any(pixels.glob("*/pool.u8")):
        return
    with cache_lock(root), writing("the decode cache", root, CACHE_ADVICE):
        legacy = [p.parent for p in pixels.glob("*/pool.u8")]
        for pool in legacy:
            trash = root / f".trash-{pool.name}-{os.getpid()}"
            os.replace(pool, trash)
            shutil.rmtree(trash, ignore_errors=True)
        if legacy:
            new_generation(root)


def stat_signature(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def known(h: str, meta: dict[str, Any], index: dict[str, Any]) -> bool:
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
