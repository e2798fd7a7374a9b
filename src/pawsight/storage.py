"""Atomic writes (a reader sees the old file or the new one, never half of one, even after a crash), marked
outputs (pawsight replaces only what carries its mark and never writes inside a data folder), and the row
store that caches computed features.

Marked outputs, the one mechanism behind every command that writes:
- a file pawsight writes for the user (report.html, a contact sheet or explanation PNG, an exported .onnx)
  carries a marker near its start (`HTML_MARKER`, `PNG_MARKER`, `ONNX_MARKER`); `check_output_file` refuses to
  replace a file without it, and is called *before* the command does its work;
- a folder pawsight owns (a cache, a compare folder, an extracted data set) holds a mark file naming its kind
  (`claim_folder`); a run directory's mark is its run.json (run.py). Inside them pawsight removes only what it
  recorded or names itself;
- `refuse_inside_data` keeps every output out of the data folders the command reads: a file written there
  would become a training picture (or a class) on the next run.
Files are created with the user's umask (0644 usually), and a replaced file keeps its mode.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
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


def _umask() -> int:
    """The process umask (read without changing it for good: set and restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import, in the main thread (umask is process-wide)


def _new_file_mode(path: Path) -> int:
    """The mode a rewritten `path` gets: its current mode, else what open() would give under the umask
    (mkstemp's private 0600 would make a report unpublishable and a run unservable by another user)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, what: str | None = None,
                       advice: str = "") -> None:
    """Write `path` so a reader (or a crash) sees the old file or the new one, never half of one.

    A disk error becomes one PawsightError line naming `what` (default: the file name); the temporary file is
    removed and the previous `path` is left as it was.
    """
    path = Path(path)
    with writing(what or path.name, path.parent, advice):
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _new_file_mode(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, mode)
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
        found: dict[int, np.ndarray] = {}

        def keep(pos: np.ndarray, rows: np.ndarray) -> None:
            found.update(zip(pos.tolist(), rows, strict=True))

        missing = self.copy_into(keys, keep)
        return dict(sorted(found.items())), missing

    def copy_into(self, keys: list[str], sink: Callable[[np.ndarray, np.ndarray], None]) -> list[int]:
        """Hand the cached rows of `keys` to `sink(positions, rows)`, one shard at a time; return the
        positions of the missing keys. Why shard by shard: a caller filling an (n, d) table (or a RowFile)
        then holds one shard's rows at a time, not a Python object per row beside the table, and each shard
        is opened once."""
        where: dict[str, tuple[int, int]] = {}
        indexes = sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
        for number, index in enumerate(indexes):
            try:
                names = json.loads(index.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(names, list):
                where.update({k: (number, row) for row, k in enumerate(names)})
        wanted: dict[int, list[tuple[int, int]]] = {}
        missing: list[int] = []
        for i, k in enumerate(keys):
            shard_row = where.get(k)
            if shard_row is None:
                missing.append(i)
            else:
                wanted.setdefault(shard_row[0], []).append((i, shard_row[1]))
        del where
        for number, pairs in sorted(wanted.items()):
            path = indexes[number].with_suffix(".npy")
            pos, rows = (np.asarray(c, np.int64) for c in zip(*pairs, strict=True))
            try:
                shard = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                shard = None
            if (shard is None or shard.ndim != 2 or rows.max() >= len(shard)
                    or (self.dim is not None and shard.shape[1] != self.dim)):
                missing.extend(pos.tolist())
                continue
            sink(pos, np.array(shard[rows], np.float32))
            del shard  # unmapped: its pages stop counting as this process's memory
            with contextlib.suppress(OSError):  # used now: the cache's cap evicts the least recently used
                os.utime(indexes[number])
        return sorted(missing)

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


class RowFile:
    """An (n, dim) float32 table kept in an unnamed temporary file, written and read in batches.

    Why: frozen transfer training walks the features of every training picture several times (the head's
    standardisation, its fit, the learning curve, the neither score's k-means). Held in memory they cost
    n x dim x 4 bytes (512 MB for 100,000 Lite0 pictures), and each copy made from them as much again; in a
    file the process holds one batch and the operating system's page cache keeps the file warm. Reads use
    pread, not a memory map, whose touched pages would count as the process's memory while it is mapped.
    The file has no name (O_TMPFILE where the file system allows it): nothing is left behind, even after a
    kill -9.
    `rows[idx] = values` writes rows (any positions), `read(a, b)`, `take(idx)` and `batches()` read them.
    """

    def __init__(self, n: int, dim: int, directory: str | os.PathLike[str]) -> None:
        self.shape = (int(n), int(dim))
        self.dir = Path(directory)
        with writing("temporary feature rows", self.dir, CACHE_ADVICE):
            self.dir.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.dir)  # noqa: SIM115 - open until close()
            self._file.truncate(self.shape[0] * self.row_bytes)  # a sparse file: no disk used until written

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * 4

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        self._file.close()

    def __setitem__(self, pos: Any, rows: np.ndarray) -> None:
        pos = np.arange(len(self))[pos] if isinstance(pos, slice) else np.asarray(pos, np.int64).reshape(-1)
        rows = np.ascontiguousarray(rows, np.float32).reshape(len(pos), self.shape[1])
        order = np.argsort(pos, kind="stable")
        pos, rows = pos[order], rows[order]
        with writing("temporary feature rows", self.dir, CACHE_ADVICE):
            for a, b in _runs(pos):  # consecutive positions: one write each
                os.pwrite(self._file.fileno(), rows[a:b].data, int(pos[a]) * self.row_bytes)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 as a fresh array."""
        out = np.empty((max(0, stop - start), self.shape[1]), np.float32)
        if len(out):
            got = os.preadv(self._file.fileno(), [memoryview(out).cast("B")], start * self.row_bytes)
            if got != out.nbytes:
                raise OSError(errno.EIO, "a temporary feature file is shorter than written")
        return out

    def take(self, idx: Any) -> np.ndarray:
        """Rows `idx` (any order, repeats allowed) as a fresh array."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        out = np.empty((len(idx), self.shape[1]), np.float32)
        for a, b in _runs(ordered):
            out[order[a:b]] = self.read(int(ordered[a]), int(ordered[b - 1]) + 1)
        return out

    def batches(self, size: int = 4096, idx: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, rows) of every row, or of the rows `idx` (increasing), `size` rows at a time."""
        yield from row_batches(self, size, idx)


def _runs(ordered: np.ndarray) -> Iterator[tuple[int, int]]:
    """(a, b) spans of `ordered` (sorted positions) whose positions are consecutive (repeats end a span)."""
    if not len(ordered):
        return
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    edges = [0, *breaks.tolist(), len(ordered)]
    yield from zip(edges[:-1], edges[1:], strict=False)


def row_batches(rows: Any, size: int = 4096, idx: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, rows) of an (n, d) array or a RowFile, `size` at a time, in order; with `idx` (increasing
    positions) only those rows: how a fit walks its features with memory bounded by `size`."""
    if idx is None:
        for start in range(0, len(rows), size):
            stop = min(start + size, len(rows))
            block = rows.read(start, stop) if isinstance(rows, RowFile) else np.asarray(rows[start:stop])
            yield np.arange(start, stop), block
        return
    idx = np.asarray(idx, np.int64)
    for start in range(0, len(idx), size):
        pos = idx[start:start + size]
        yield pos, rows.take(pos) if isinstance(rows, RowFile) else np.asarray(rows[pos])


def all_rows(rows: Any) -> np.ndarray:
    """An array or a RowFile as one in-memory array (for tables known to be small)."""
    return rows.read(0, len(rows)) if isinstance(rows, RowFile) else np.asarray(rows)


# -- marked outputs ------------------------------------------------------------------------------------------
PNG_SOFTWARE = "pawsight"  # the PNG "Software" text chunk of every PNG pawsight draws
PNG_MARKER = b"Software\x00" + PNG_SOFTWARE.encode()
HTML_MARKER = b'<meta name="generator" content="pawsight">'
CSV_MARKER = b"# written by pawsight"  # the first line of a CSV pawsight writes for the user to edit
ONNX_MARKER = b"\x12\x08pawsight"  # producer_name "pawsight", serialized near the start of every export
FOLDER_MARK = ".pawsight-folder"  # JSON {"kind": ...} in every folder pawsight owns (not run directories)


def refuse_foreign_file(path: Path, marker: bytes, option: str = "--out") -> None:
    """Before writing a user-named output (`--out report.html`, `--sheet s.png`): an existing file may only be
    replaced when pawsight wrote it, recognised by `marker` near its start; anything else stays untouched."""
    path = Path(path)
    if path.is_symlink():
        raise PawsightError(f"{option} {shown(path)} is a symbolic link; pawsight does not write through "
                            "links: give a new file name")
    if path.is_dir():
        raise PawsightError(f"{option} {shown(path)} is a folder; give a file name")
    if not path.exists():
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError:
        head = b""
    if marker not in head:
        raise PawsightError(f"{shown(path)} exists and was not written by pawsight; choose another {option} "
                            "(pawsight never replaces files it did not write)")


def inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Is `path` `folder` itself or somewhere below it (symbolic links resolved)?"""
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return p == f or f in p.parents


def refuse_inside_data(path: str | os.PathLike[str], data: Any, option: str = "--out") -> None:
    """Refuse an output at or below any of the data folders `data` (one path, a list, or None): pawsight never
    writes into a data folder, where its file would become a picture or a class of the next training."""
    roots = [data] if isinstance(data, str | os.PathLike) else list(data or [])
    for root in roots:
        if root and Path(root).exists() and inside(path, root):
            raise PawsightError(f"{option} {shown(path)} is inside the data folder {shown(root)}; pawsight "
                                "never writes into a data folder: choose a place outside it")


def check_output_file(path: str | os.PathLike[str], marker: bytes, *, data: Any = None,
                      option: str = "--out") -> Path:
    """Everything checked before a command that writes one file starts its work: not inside a data folder,
    not a link, a folder or a file pawsight did not write. Returns the path."""
    path = Path(path)
    refuse_inside_data(path, data, option)
    refuse_foreign_file(path, marker, option)
    return path


def folder_kind(folder: str | os.PathLike[str]) -> str | None:
    """The kind recorded in `folder`'s mark file, None when it has none (pawsight does not own it)."""
    try:
        mark = json.loads((Path(folder) / FOLDER_MARK).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return mark.get("kind") if isinstance(mark, dict) and isinstance(mark.get("kind"), str) else None


def claim_folder(folder: str | os.PathLike[str], kind: str, *, option: str = "--out",
                 adopt: Any = None) -> Path:
    """Make `folder` one pawsight owns as `kind`: created (with its mark) when missing or empty, accepted when
    it already carries the mark of that kind, else refused in one line. `adopt(folder) -> bool` may accept an
    unmarked folder written by an older pawsight (it is then marked)."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.is_dir():
        raise PawsightError(f"{option} {shown(folder)} is a dangling symbolic link; choose another folder")
    if folder.exists() and not folder.is_dir():
        raise PawsightError(f"{option} {shown(folder)} is a file, not a folder; choose another folder")
    found = folder_kind(folder) if folder.is_dir() else None
    if found == kind:
        return folder
    if found is not None:
        raise PawsightError(f"{option} {shown(folder)} holds a pawsight {found}, not a {kind}; "
                            "choose another folder")
    with writing(f"the {kind} folder", folder):
        if folder.is_dir():
            present = [e.name for e in os.scandir(folder)  # not the mark, nor its temporary file
                       if not e.name.lstrip(".").startswith(FOLDER_MARK.lstrip("."))]
            if present and not (adopt is not None and adopt(folder)):
                listed = ", ".join(shown(n) for n in sorted(present)[:3])
                raise PawsightError(f"{option} {shown(folder)} is not empty and was not made by pawsight (it "
                                    f"holds {listed}{' ...' if len(present) > 3 else ''}); nothing was "
                                    f"changed: choose a new or empty folder")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / FOLDER_MARK, {"kind": kind, "written_by": "pawsight"})
    return folder
