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
        for path, shard in shards.items():  # used now: the cache's size cap evicts the least recently used
            if shard is not None:
                with contextlib.suppress(OSError):
                    os.utime(path.with_suffix(".json"))
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
