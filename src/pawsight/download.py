"""`pawsight data download`: standard data sets, fetched once into the cache, verified, safely extracted.

    pawsight data download --list
    pawsight data download cats-vs-dogs [--dir DIR] [--print-path]

A download streams into `<file>.part`; after a dropped connection the next attempt resumes it with an HTTP
Range request (a server that ignores Range just restarts the file). A complete file is checked against the
expected size and SHA-256 *before* it is renamed into place, so an archive on disk is always whole and
verified, and a file that fails the check is deleted so the next try starts clean. Archives are unpacked
into a temporary folder that is renamed into place when complete, and any entry that would land outside it
(`../x`, absolute paths, links) refuses the whole archive. Once extracted, a call does no network access.

Mirror: set PAWSIGHT_DATASETS_URL (e.g. `http://127.0.0.1:8000/` or `file:///srv/datasets/`) to fetch
`<mirror>/<archive file name>` instead of the publisher's URL: for classrooms, CI caches, machines behind a
proxy. A mirror must serve the identical file: it is checked against the same size and SHA-256.

Checksums: where a SHA-256 for the exact file is published it is pinned in `DATASETS`. Otherwise the SHA-256
of the first complete download is recorded in `<file>.sha256` beside it (trust on first use) and every later
download or reuse must match it.

Layout of DIR (default `<pawsight cache>/datasets`):
    <file>.part  <file>  <file>.sha256    download in progress, verified archive, recorded checksum
    <name>/                               the extracted archive; `.pawsight-extracted.json` marks it complete
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import json
import os
import shlex
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .cachedir import default_cache_dir
from .errors import PawsightError, shown
from .progress import bar, progress
from .storage import DISK_ERRORS, FULL, atomic_write_json, atomic_write_text, disk_error

MIRROR_ENV = "PAWSIGHT_DATASETS_URL"
MARKER = ".pawsight-extracted.json"
CHUNK = 1 << 20
RETRY_WAIT = 2.0  # seconds before the first automatic retry of a dropped download; doubles each time


@dataclass(frozen=True)
class Remote:
    """A data set published as one archive."""

    name: str
    url: str
    size: int | None  # bytes; None when unknown
    sha256: str | None  # pinned value for this exact file; None: recorded on first download
    folder: str  # folder inside the archive that `pawsight train` accepts
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


DATASETS = {r.name: r for r in [
    Remote("cats-vs-dogs", "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip",
           size=68_606_236,  # the Content-Length storage.googleapis.com serves for it
           sha256=None,  # Google publishes no checksum: recorded on first download
           folder="cats_and_dogs_filtered",
           description="3,000 photos: train 1000 cats + 1000 dogs, validation 500 + 500 (Google's subset)"),
    Remote("cats-vs-dogs-full", "https://download.microsoft.com/download/3/E/1/"
                                "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip",
           size=824_887_076,
           # Microsoft publishes no checksum; this is the one Hugging Face `datasets` pins for this URL
           # (datasets/cats_vs_dogs/dataset_infos.json, download_checksums).
           sha256="b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9",
           folder="PetImages",
           description="25,000 photos in Cat/ and Dog/ (Microsoft PetImages; its corrupt files get skipped)"),
]}


class Dropped(Exception):
    """A network failure worth retrying: the `.part` file is kept for resuming."""


class BadArchive(PawsightError):
    """A damaged or hostile archive: it is deleted so the next try downloads a fresh one."""


def say(message: str) -> None:
    print(shown(message), file=sys.stderr)  # paths and URLs (a mirror's) may hold control characters


def megabytes(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 1e6:,.1f} MB"


def default_dir() -> Path:
    return default_cache_dir() / "datasets"


def source_url(remote: Remote) -> str:
    base = os.environ.get(MIRROR_ENV, "").strip()
    return f"{base.rstrip('/')}/{remote.filename}" if base else remote.url


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One download of a data set at a time: two processes appending to one `.part` would corrupt it."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- public entry point --------------------------------------------------------------------------------
def download(dataset: str | Remote, root: str | os.PathLike[str] | None = None, *, timeout: float = 30.0,
             retries: int = 2) -> Path:
    """Download (or reuse) and extract `dataset`; return the folder `pawsight train` accepts."""
    if isinstance(dataset, str):
        if dataset not in DATASETS:
            raise PawsightError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
        dataset = DATASETS[dataset]
    remote = dataset
    root = (Path(root).expanduser() if root is not None else default_dir()).absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PawsightError(f"cannot create {root}: {exc.strerror or exc}") from None
    target = root / remote.name
    data = target / remote.folder
    with locked(root / f".{remote.name}.lock"):
        done = read_marker(target)
        expected = remote.sha256 or recorded_sha256(root, remote)
        if done is not None and expected in (None, done) and data.is_dir():
            return data  # extracted and verified earlier: no network access
        if target.is_symlink() or target.exists():
            check_ours(target)  # before downloading anything
        path = root / remote.filename
        foreign_archive = path.exists() and recorded_sha256(root, remote) is None
        advice = "free some space or choose another --dir"
        try:
            archive, sha = fetch(remote, root, timeout=timeout, retries=retries)
        except OSError as exc:  # disk full, permissions: not the network's fault
            if exc.errno in FULL:  # the partial download is what fills the disk: it goes
                (root / f"{remote.filename}.part").unlink(missing_ok=True)
            if exc.errno in DISK_ERRORS:
                raise disk_error(exc, f"the download of {remote.filename}", root, advice) from None
            raise PawsightError(f"cannot write in {root}: {exc.strerror or exc}") from None
        try:
            extract(archive, target, {"dataset": remote.name, "archive": remote.filename, "sha256": sha})
        except BadArchive as exc:
            if foreign_archive:  # the user's own file: reported, never deleted
                record_path(root, remote).unlink(missing_ok=True)
                raise BadArchive(f"{exc}; {archive} was not downloaded by pawsight: left it as it is"
                                 ) from None
            archive.unlink(missing_ok=True)
            record_path(root, remote).unlink(missing_ok=True)
            raise BadArchive(f"{exc}; deleted {archive}") from None
        except OSError as exc:  # extract() removed its partial folder
            if exc.errno in DISK_ERRORS:
                raise disk_error(exc, f"the files of {archive.name}", root, advice) from None
            raise PawsightError(f"cannot extract {archive.name} into {root}: {exc.strerror or exc}") from None
    if not data.is_dir():
        raise PawsightError(f"{remote.filename} has no folder {remote.folder!r}: is it another file?")
    return data


def read_marker(target: Path) -> str | None:
    try:
        return json.loads((target / MARKER).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_path(root: Path, remote: Remote) -> Path:
    return root / f"{remote.filename}.sha256"


def recorded_sha256(root: Path, remote: Remote) -> str | None:
    try:
        return record_path(root, remote).read_text().split()[0]
    except (OSError, IndexError):
        return None


# -- download ------------------------------------------------------------------------------------------
def fetch(remote: Remote, root: Path, *, timeout: float, retries: int) -> tuple[Path, str]:
    """A verified archive in `root` (reused, resumed or downloaded) and its SHA-256."""
    archive = root / remote.filename
    if archive.is_symlink() or archive.exists():
        ours = archive.is_file() and not archive.is_symlink() and recorded_sha256(root, remote) is not None
        try:
            return archive, verify(archive, remote, root, delete=ours)
        except PawsightError as exc:
            if not ours:  # the user's own file of that name: never deleted, never replaced
                raise PawsightError(f"{shown(archive)} exists and was not downloaded by pawsight ({exc}); "
                                    "nothing was changed: move it away or choose another --dir") from None
            say(f"{archive} failed verification; downloading it again")  # verify() deleted it
    url = source_url(remote)
    part = archive.with_name(archive.name + ".part")
    say(f"downloading {remote.name} ({megabytes(remote.size)}) from {url}")
    for attempt in range(retries + 1):
        try:
            stream(url, part, remote.size, timeout)
            break
        except Dropped as exc:
            if attempt == retries:
                raise PawsightError(f"download of {url} failed: {exc}; "
                                    f"run the same command again to resume") from None
            wait = RETRY_WAIT * 2**attempt
            say(f"{exc}; resuming in {wait:g} s")
            time.sleep(wait)
    sha = verify(part, remote, root)
    if remote.sha256 is not None:  # pinned checksums are recorded too: the record marks the archive as ours
        atomic_write_text(record_path(root, remote), f"{sha}  {remote.filename}\n")
    os.replace(part, archive)
    return archive, sha


def stream(url: str, part: Path, size: int | None, timeout: float) -> None:
    """Append the rest of `url` to `part` with a Range request; restart it when the server ignores Range."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset == size:
            return  # complete, just not verified and renamed yet
        part.unlink()
        offset = 0
    headers = {"User-Agent": f"pawsight/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our partial file is no prefix of the server's file: start over
            part.unlink()
            return stream(url, part, size, timeout)
        if exc.code >= 500:
            raise Dropped(f"HTTP {exc.code} {exc.reason}") from None
        raise PawsightError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if isinstance(getattr(exc, "reason", None), FileNotFoundError):  # a file:// mirror without it
            raise PawsightError(f"download of {url} failed: no such file") from None
        raise Dropped(network_reason(exc)) from None
    with response:
        status = getattr(response, "status", None) or 200  # file:// answers have no status
        total = content_length(response, status)
        if offset and status == 206 and not response.headers.get("Content-Range", "").startswith(
                f"bytes {offset}-"):
            part.unlink()
            raise Dropped("the server sent the wrong part of the file")
        if offset and status != 206:
            offset = 0  # the server ignored the Range request: take the whole file again
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise PawsightError(f"{url} is {total:,} bytes, expected {size:,}: is it a different file?")
        total = total or size
        if offset:
            say(f"resuming at {megabytes(offset)}")
        pbar = bar(total=total, desc=part.name.removesuffix(".part"), unit="B")
        pbar.unit_scale, pbar.initial, pbar.n = True, offset, offset
        pbar.refresh()
        with open(part, "ab" if offset else "wb") as fh, pbar:
            while chunk := read_chunk(response):
                fh.write(chunk)
                pbar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    got = part.stat().st_size
    if total is not None and got < total:
        raise Dropped(f"connection closed after {megabytes(got)} of {megabytes(total)}")


def content_length(response: Any, status: int) -> int | None:
    """Size of the whole file: from Content-Range on a 206 answer, else Content-Length."""
    try:
        if status == 206:
            whole = response.headers.get("Content-Range", "").rsplit("/", 1)[-1]
            return int(whole) if whole != "*" else None
        return int(response.headers["Content-Length"])
    except (KeyError, TypeError, ValueError):
        return None


def read_chunk(response: Any) -> bytes:
    try:
        return response.read(CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise Dropped(network_reason(exc)) from None


def network_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, TimeoutError):
        return "the server stopped answering (timed out)"
    return str(reason) or type(reason).__name__


def verify(path: Path, remote: Remote, root: Path, *, delete: bool = True) -> str:
    """SHA-256 of a complete file after checking size and checksum; a file that fails is deleted when
    `delete` (pawsight's own download: a `.part` file or an archive it recorded), else left as it is."""
    size = path.stat().st_size
    gone = "deleted it, run the same command to download it again" if delete else "left it as it is"
    if remote.size is not None and size != remote.size:
        if delete:
            path.unlink(missing_ok=True)
        raise PawsightError(f"{remote.filename} is {size:,} bytes, expected {remote.size:,}; {gone}")
    sha = sha256_of(path)
    expected = remote.sha256 or recorded_sha256(root, remote)
    if expected is None:
        atomic_write_text(record_path(root, remote), f"{sha}  {remote.filename}\n")
    elif sha != expected:
        if delete:
            path.unlink(missing_ok=True)
        hint = "" if remote.sha256 else (f" (recorded at the first download in {record_path(root, remote)}; "
                                         f"delete that file if the publisher changed the archive)")
        raise PawsightError(f"checksum mismatch for {remote.filename}: sha256 {sha[:16]}..., expected "
                            f"{expected[:16]}...{hint}; {gone}")
    return sha


# -- safe extraction -----------------------------------------------------------------------------------
def extract(archive: Path, target: Path, marker: dict[str, Any]) -> None:
    """Unpack into a temporary sibling folder, then rename it to `target`: all or nothing."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.extracting-"))
    umask = os.umask(0o22)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's private 0700 would otherwise become the data set's mode
    try:
        if zipfile.is_zipfile(archive):
            unzip(archive, tmp)
        elif tarfile.is_tarfile(archive):
            untar(archive, tmp)
        else:
            raise BadArchive(f"{archive.name} is neither a zip nor a tar archive")
        atomic_write_json(tmp / MARKER, marker)
        if target.is_symlink() or target.exists():  # an older extraction of ours: swap it out
            check_ours(target)
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            target.rename(old / "x")
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_ours(target: Path) -> None:
    """Only a folder pawsight extracted (it holds MARKER) or an empty one may be replaced; a user's own files
    under the data set's name are never renamed away or deleted."""
    if target.is_dir() and not target.is_symlink() and ((target / MARKER).is_file()
                                                        or not any(target.iterdir())):
        return
    raise PawsightError(f"{shown(target)} exists and was not extracted by pawsight (no {MARKER} in it); "
                        "nothing was changed: move it away or choose another --dir")


def check_entry(archive: Path, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or name[1:2] == ":" or ".." in parts:
        raise BadArchive(f"{archive.name} has an entry outside its folder ({name!r}); refused to extract it")


def check_space(archive: Path, dest: Path, need: int) -> None:
    free = shutil.disk_usage(dest).free
    if need > free:
        raise PawsightError(f"extracting {archive.name} needs {megabytes(need)}, only {megabytes(free)} free "
                            f"in {dest.parent}")


def unzip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                check_entry(archive, m.filename)
                if stat.S_ISLNK(m.external_attr >> 16):
                    raise BadArchive(f"{archive.name} has a symbolic link ({m.filename!r}); "
                                     f"refused to extract it")
            check_space(archive, dest, sum(m.file_size for m in members))
            for m in progress(members, total=len(members), desc="extracting", unit="file"):
                zf.extract(m, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise BadArchive(f"{archive.name} is damaged ({exc})") from None


def untar(archive: Path, dest: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise PawsightError("extracting tar archives safely needs Python 3.11.4 or newer")
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                check_entry(archive, m.name)
            check_space(archive, dest, sum(m.size for m in members))
            tf.extractall(dest, members=progress(members, total=len(members), desc="extracting", unit="file"),
                          filter="data")  # also refuses links that point outside `dest`
    except tarfile.FilterError as exc:
        raise BadArchive(f"{archive.name} has an unsafe entry ({exc}); refused to extract it") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BadArchive(f"{archive.name} is damaged ({exc})") from None


# -- command line --------------------------------------------------------------------------------------
def download_command(args: argparse.Namespace) -> int:
    if args.list:
        width = max(map(len, DATASETS))
        for r in DATASETS.values():
            print(f"{r.name:<{width}}  {megabytes(r.size):>10}  {r.description}")
        return 0
    if not args.name:
        raise PawsightError(f"give a data set name, e.g. 'pawsight data download cats-vs-dogs' "
                            f"(known: {', '.join(DATASETS)})")
    path = download(args.name, args.dir)
    print(path)
    if not getattr(args, "print_path", False):
        say(f"next: pawsight data inspect {shlex.quote(str(path))}")
        say(f"      pawsight train {shlex.quote(str(path))} --approach classical")
    return 0
