"""The cache folder itself: where it is (`$PAWSIGHT_CACHE`, default `~/.cache/pawsight`), its mark, its lock
and generation stamp, and looking after it (`pawsight cache info|clear`). Light on purpose (no NumPy): the
command line and `data download --list` import it at start-up.

    .pawsight-folder           the mark: {"kind": "cache"}; only a marked folder is written into or cleared
    lock                       flock held while the cache's tables are written (cache.ImageCache) or cleared
    generation                 changes whenever pixels are cleared: row numbers read before mean nothing after
    files.json, meta.json, pixels/   the decode cache (cache.py); pixels and features are capped together at
                               PAWSIGHT_CACHE_MAX (cache_max), least recently used first out (cache.evict)
    features/, onnx/           computed features and exported backbones (features.py, backbones.py)
    weights/, datasets/        downloads (backbones.py, download.py)
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import PawsightError, shown
from .storage import (
    CACHE_ADVICE,
    FOLDER_MARK,
    WriteError,
    atomic_write_bytes,
    claim_folder,
    folder_kind,
    writing,
)

# What an unmarked folder written by pawsight before caches were marked holds (it is adopted and marked).
_LEGACY_ENTRIES = {"files.json", "meta.json", "pixels", "features", "onnx", "weights", "datasets", "lock",
                   "generation"}
_claimed: set[str] = set()


def default_cache_dir() -> Path:
    """THE cache folder ($PAWSIGHT_CACHE, default ~/.cache/pawsight), made and marked as pawsight's on first
    use in a process. A folder that holds anything pawsight did not write (PAWSIGHT_CACHE=~/project) is
    refused in one line: pawsight neither writes its cache into it nor clears anything there."""
    root = Path(os.environ.get("PAWSIGHT_CACHE") or Path.home() / ".cache" / "pawsight")
    claim_cache(root)
    return root


def claim_cache(root: Path) -> None:
    """Make and mark `root` as a pawsight cache (once per process and folder), or refuse a foreign folder."""
    if str(root) in _claimed or (root.exists() and not root.is_dir()):
        return  # a file in the way: the first write says so in the cache's own words
    with suppress(WriteError):  # a read-only or full disk: the first real write says so, with its advice
        claim_folder(root, "cache", option="the cache folder (PAWSIGHT_CACHE)", adopt=_legacy_cache)
        _claimed.add(str(root))


def _legacy_cache(root: Path) -> bool:
    names = {e.name for e in os.scandir(root)}
    names = {n for n in names if not (n.startswith(".trash-") or n.endswith(".tmp"))}
    return names <= _LEGACY_ENTRIES and bool(names & {"lock", "meta.json", "files.json", "generation"})


@contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """The cache's write lock (an flock on ROOT/lock): tables are written and parts cleared under it."""
    with writing("the decode cache", root, CACHE_ADVICE):
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / "lock", "a+")  # noqa: SIM115 - only its opening is a disk write
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_generation(root: Path) -> str:
    """The generation stamp ("" when none): changes whenever `clear_cache` deletes pixels."""
    try:
        return (root / "generation").read_text()
    except OSError:
        return ""


# -- looking after the cache folder (`pawsight cache info|clear`) ----------------------------------------
# part -> (paths under the cache root, what it holds). The first three are rebuilt automatically on next use;
# weights and datasets are downloads (they need the internet to come back).
CACHE_PARTS: dict[str, tuple[tuple[str, ...], str]] = {
    "pixels": (("pixels", "files.json", "meta.json"), "decoded pictures and the file index"),
    "features": (("features",), "computed features (classical extractors, frozen backbones)"),
    "onnx": (("onnx",), "backbones exported for ONNX Runtime"),
    "weights": (("weights",), "downloaded backbone weights"),
    "datasets": (("datasets",), "downloaded data sets"),
}
REBUILT = ("pixels", "features", "onnx")


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path` (a file or a folder); symlinks are not followed."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size, 1
    total = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                pass
    return total, files


def cache_usage(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What the cache folder holds: bytes and files per part, and bytes per preprocessing in `pixels`."""
    root = Path(root) if root is not None else default_cache_dir()
    parts: dict[str, Any] = {}
    for part, (names, what) in CACHE_PARTS.items():
        sizes = [tree_size(root / n) for n in names if (root / n).exists() or (root / n).is_symlink()]
        parts[part] = {"bytes": sum(b for b, _ in sizes), "files": sum(f for _, f in sizes), "holds": what,
                       "rebuilt_automatically": part in REBUILT}
    pools = sorted(p for p in (root / "pixels").iterdir() if p.is_dir()) if (root / "pixels").is_dir() else []
    parts["pixels"]["preprocessings"] = {p.name: {"bytes": tree_size(p)[0]} for p in pools}
    capped = parts["pixels"]["bytes"] + parts["features"]["bytes"]
    return {"root": str(root), "bytes": sum(p["bytes"] for p in parts.values()), "parts": parts,
            "cap": {"bytes": cache_max(), "used": capped, "covers": list(CAPPED),
                    "setting": "PAWSIGHT_CACHE_MAX"}}


CAPPED = ("pixels", "features")  # what PAWSIGHT_CACHE_MAX bounds (cache.evict); downloads are never evicted
DEFAULT_CACHE_MAX = 10 * 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def cache_max() -> int:
    """The cap on decoded pixels + computed features, in bytes: PAWSIGHT_CACHE_MAX ("10G", "500M", "2.5G",
    plain bytes; K/M/G/T are powers of 1024, a trailing B or iB is allowed), default 10 GB. Why a default at
    all: the cache grows with every collection it has seen, and nobody watches ~/.cache."""
    text = os.environ.get("PAWSIGHT_CACHE_MAX", "").strip()
    if not text:
        return DEFAULT_CACHE_MAX
    value = text.upper().removesuffix("IB").removesuffix("B").strip()
    unit = value[-1:] if value[-1:] in _UNITS and value[-1:] else ""
    try:
        number = float(value[:-1] if unit else value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number != number or number == float("inf"):
        raise PawsightError(f"PAWSIGHT_CACHE_MAX={text!r} is not a size; use e.g. 10G, 500M or 2000000000")
    return int(number * _UNITS[unit])


def clear_cache(parts: Sequence[str], root: str | os.PathLike[str] | None = None) -> int:
    """Delete cache `parts` (names of CACHE_PARTS, or "pixels/<preprocessing>"); the bytes freed.

    Only a folder carrying pawsight's cache mark, and in it only the parts' own names. Under the cache's write
    lock each folder is renamed out of the way (atomic) and deleted, then the generation changes: a pawsight
    command decoding or reading pictures at that moment stops with "run it again" (ImageCache checks the
    generation) rather than index or return rows of a deleted pool.
    """
    def one_pool(part: str) -> bool:  # "pixels/<preprocessing>" names one resolution's pool
        key = part.removeprefix("pixels/")
        return part.startswith("pixels/") and key not in ("", ".", "..") and "/" not in key

    unknown = [p for p in parts if p not in CACHE_PARTS and not one_pool(p)]
    if unknown:
        raise PawsightError(f"unknown cache part(s) {', '.join(unknown)}; "
                            f"choose from: {', '.join(CACHE_PARTS)}")
    root = Path(root) if root is not None else default_cache_dir()
    if not root.is_dir():
        if root.exists():
            raise PawsightError(f"the cache folder {shown(root)} is a file, not a folder; "
                                "set PAWSIGHT_CACHE to a folder")
        return 0
    if folder_kind(root) != "cache":  # only a folder carrying pawsight's cache mark is ever cleared
        raise PawsightError(f"{shown(root)} is not a pawsight cache folder (no {FOLDER_MARK} mark in "
                            "it); nothing was deleted: check PAWSIGHT_CACHE")
    freed = 0
    with cache_lock(root), writing("the cache folder", root, CACHE_ADVICE):
        # Delete first, write after: on a full disk this must free space before it needs any.
        for part in parts:
            for name in (part,) if one_pool(part) else CACHE_PARTS[part][0]:
                path = root / name
                if not (path.exists() or path.is_symlink()):
                    continue
                freed += tree_size(path)[0]
                if path.is_dir() and not path.is_symlink():
                    trash = root / f".trash-{path.name}-{os.getpid()}"
                    os.replace(path, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        if any(p == "pixels" or one_pool(p) for p in parts):
            new_generation(root)
    return freed


def new_generation(root: Path) -> None:
    """Tell running loads that pixel rows they read before now mean nothing: a new generation stamp, or, if
    even that cannot be written, no stamp (which also differs from what they saw, unless none existed)."""
    try:
        atomic_write_bytes(root / "generation", os.urandom(8).hex().encode())
    except (OSError, PawsightError):
        with suppress(OSError):
            (root / "generation").unlink(missing_ok=True)
