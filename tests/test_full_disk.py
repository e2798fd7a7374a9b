"""Full disks and unwritable places, on a real small file system (a tmpfs mounted for the test; skipped where
mounting is not permitted): every write gives one line saying what to do, removes its partial files and
leaves the previous good state as it was; `cache clear` frees space on a full disk (issue 7, section 2)."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clitools import error_line, pawsight
from pawsight import download as dl
from pawsight.cache import ImageCache
from pawsight.cachedir import tree_size
from pawsight.errors import PawsightError
from pawsight.images import Preprocessing
from pawsight.run import write_run_info
from pawsight.storage import PNG_MARKER, RowStore, WriteError, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PREP = Preprocessing(32)
PAGE = 4096
FULL_LINE = "no space left on device while writing the decode cache in"
CLEAR_HINT = "free space or run 'pawsight cache clear' or set PAWSIGHT_CACHE"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: ENOSPC for real, from the kernel."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill `fs` to the last byte, then give back `leave` bytes (whole pages)."""
    filler = fs / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for block in (65536, PAGE):
            try:
                while True:
                    os.write(fd, b"\1" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def free(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))
                  or p.name.startswith(".trash"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("lock",)}


@pytest.fixture(scope="module")
def photos(tiny: Path) -> list[Path]:
    return sorted((tiny / "train" / "cats").iterdir())[:12] + sorted((tiny / "train" / "dogs").iterdir())[:12]


def cli(*args: str, cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return pawsight(*args, cwd=cwd, env={"PYTHONPATH": str(ROOT / "src"), "PAWSIGHT_CACHE": str(cache)})


def cli_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
             cache: Path) -> subprocess.CompletedProcess[str]:
    """The command in this process (quicker than a new one), as a CompletedProcess."""
    from pawsight.cli import main

    monkeypatch.setenv("PAWSIGHT_CACHE", str(cache))
    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as stop:  # refused while the arguments were parsed (one line, like any other error)
        status = int(stop.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


one_error_line = error_line  # this file passes stderr


# -- the decode cache --------------------------------------------------------------------------------------
def test_pool_write_on_full_disk_one_line_pool_cut_back_previous_cache_intact(small_fs: Path, photos) -> None:
    cache = ImageCache(small_fs / "cache")
    first = cache.load(photos[:2], PREP)
    before = snapshot(cache.root)
    fill(small_fs, leave=PAGE)  # room for a row or so, not for 22 more
    with pytest.raises(WriteError) as err:
        cache.load(photos, PREP)
    message = str(err.value)
    assert message.startswith(FULL_LINE) and CLEAR_HINT in message and "\n" not in message
    assert snapshot(cache.root) == before  # pool cut back, index and tables untouched
    assert temp_files(small_fs) == []
    again = ImageCache(small_fs / "cache").load(photos[:2], PREP)
    assert again.decoded == 0
    np.testing.assert_array_equal(again.images, first.images)


def test_index_commit_on_full_disk_removes_the_rows_it_appended(small_fs: Path, photos) -> None:
    cache = ImageCache(small_fs / "cache")
    from pawsight.cache import encode_row, segment_names

    cache.load(photos[:2], PREP)  # a segment of 2 rows
    before = snapshot(cache.root)
    pool = cache.root / "pixels" / PREP.key
    now = (pool / segment_names(pool)[-1]).stat().st_size
    grown = now + sum(len(encode_row(PREP.load(p), "JPEG")) for p in photos[2:6])
    fill(small_fs, leave=(-(-grown // PAGE) - -(-now // PAGE)) * PAGE)  # 4 more rows fit, their index not
    with pytest.raises(WriteError, match=FULL_LINE):
        cache.load(photos[2:6], PREP)
    assert snapshot(cache.root) == before
    assert temp_files(small_fs) == []


def test_cli_inspect_on_full_cache_disk_then_cache_clear_frees_it(small_fs: Path, tmp_path: Path, photos,
                                                                  monkeypatch, capsys) -> None:
    data = tmp_path / "data"
    for p in photos:
        (data / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, data / p.parent.name)
    cache = small_fs / "cache"
    warm = cli_here(monkeypatch, capsys, "data", "inspect", str(data), "--size", "32", "--sheet",
                    str(tmp_path / "s.png"), cache=cache)
    assert warm.returncode == 0, warm.stderr
    held = tree_size(cache / "pixels")[0]
    fill(small_fs)
    result = cli("data", "inspect", str(data), "--size", "64", "--sheet", str(tmp_path / "s.png"),
                 cache=cache)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert FULL_LINE in line and CLEAR_HINT in line
    assert temp_files(small_fs) == []
    assert not list((cache / "pixels" / Preprocessing(64).key).glob("seg-*"))  # the segment was removed

    assert free(small_fs) < PAGE
    cleared = cli_here(monkeypatch, capsys, "cache", "clear", cache=cache)  # deletes before it writes
    assert cleared.returncode == 0, cleared.stderr
    assert "freed" in cleared.stdout
    assert free(small_fs) >= held
    assert not (cache / "pixels").exists() and not (cache / "meta.json").exists()


def test_cache_clear_on_a_completely_full_disk_still_frees(small_fs: Path, photos, monkeypatch,
                                                            capsys) -> None:
    cache = ImageCache(small_fs / "cache")
    cache.load(photos, PREP)
    held = tree_size(cache.root / "pixels")[0]
    fill(small_fs)
    assert free(small_fs) == 0
    result = cli_here(monkeypatch, capsys, "cache", "clear", "pixels", cache=cache.root)
    assert result.returncode == 0, result.stderr
    assert free(small_fs) >= held
    assert not (cache.root / "pixels").exists()


# -- computed features, run directories, contact sheets, downloads -----------------------------------------
def test_feature_rows_on_full_disk_one_line_previous_rows_intact(small_fs: Path) -> None:
    store = RowStore(small_fs / "features" / "x")
    old = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.put(["a", "b", "c"], old)
    before = snapshot(small_fs / "features")
    fill(small_fs)
    with pytest.raises(WriteError, match="no space left on device while writing cached features.*clear"):
        store.put(["d", "e"], np.ones((2, 100_000), np.float32))
    assert snapshot(small_fs / "features") == before and temp_files(small_fs) == []
    found, missing = store.get(["a", "b", "c", "d"])
    assert missing == [3]
    np.testing.assert_array_equal(np.stack([found[i] for i in range(3)]), old)


def test_run_directory_write_on_full_disk_keeps_the_old_file(small_fs: Path) -> None:
    run = small_fs / "run"
    write_run_info(run, {"approach": "classical", "status": "done", "classes": ["a", "b"]})
    before = (run / "run.json").read_bytes()
    fill(small_fs)
    with pytest.raises(PawsightError, match=r"no space left on device while writing run.json in .*run; free"):
        write_run_info(run, {"approach": "classical", "status": "done", "notes": "x" * 100_000})
    assert (run / "run.json").read_bytes() == before and temp_files(small_fs) == []
    with pytest.raises(PawsightError, match="no space left"):
        atomic_write_json(run / "model.json", {"big": "y" * 100_000})
    assert not (run / "model.json").exists() and temp_files(small_fs) == []


def test_contact_sheet_on_full_disk_keeps_the_old_sheet(small_fs: Path, tmp_path: Path, tiny: Path,
                                                        monkeypatch, capsys) -> None:
    sheet = small_fs / "sheet.png"
    sheet.write_bytes(b"the previous sheet " + PNG_MARKER)  # one pawsight wrote: it may be replaced
    fill(small_fs)
    result = cli_here(monkeypatch, capsys, "data", "inspect", str(tiny), "--size", "32", "--sheet",
                      str(sheet), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "contact sheet" in line]
    assert warnings == ["warning: no contact sheet: no space left on device while writing the contact sheet "
                        f"in {small_fs}; free some space or choose another --sheet"]
    assert sheet.read_bytes() == b"the previous sheet " + PNG_MARKER and temp_files(small_fs) == []


def test_download_on_full_disk_removes_the_partial_file(small_fs: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pets/train/cats/noise.bin", os.urandom(3 * 2**20))  # bigger than the file system
    blob = buf.getvalue()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "pets.zip").write_bytes(blob)
    monkeypatch.setenv(dl.MIRROR_ENV, (tmp_path / "mirror").as_uri())
    remote = dl.Remote("test-pets", "https://example.invalid/pets.zip", len(blob), None, "pets", "test")
    with pytest.raises(PawsightError, match=r"no space left on device while writing the download of pets.zip "
                                            r"in .*; free some space or choose another --dir"):
        dl.download(remote, small_fs / "dl", retries=0)
    assert temp_files(small_fs) == [] and free(small_fs) > 1.9 * 2**20


# -- places that cannot hold a cache, absurd sizes ---------------------------------------------------------
@pytest.mark.parametrize("where", ["proc", "file", "file-parent"])
def test_unusable_cache_folder_is_one_line(tmp_path: Path, tiny: Path, where: str, monkeypatch,
                                           capsys) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    cache = {"proc": Path("/proc/pawsight-cache"), "file": tmp_path / "a-file",
             "file-parent": tmp_path / "a-file" / "cache"}[where]
    result = cli_here(monkeypatch, capsys, "data", "inspect", str(tiny), "--size", "32", "--sheet",
                      str(tmp_path / "s.png"), cache=cache)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert (f"while writing the decode cache in {cache}; set PAWSIGHT_CACHE to a folder you can write to"
            in line)
    if where != "proc":
        assert "a file is where a folder is expected" in line
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_cache_clear_on_a_file_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "a-file").write_text("keep me")
    result = cli_here(monkeypatch, capsys, "cache", "clear", cache=tmp_path / "a-file")
    assert result.returncode == 2 and "is a file, not a folder" in one_error_line(result.stderr)
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("size", ["100000", "0", "-5"])
def test_absurd_inspect_size_is_one_line(tmp_path: Path, tiny: Path, size: str, monkeypatch, capsys) -> None:
    result = cli_here(monkeypatch, capsys, "data", "inspect", str(tiny), "--size", size, cache=tmp_path / "c")
    assert result.returncode == 2
    assert "argument --size: must be at" in one_error_line(result.stderr)  # 16 to 1024 px (options.py)


def test_meta_written_before_is_valid_json(small_fs: Path, photos) -> None:
    """After a failed load the tables on disk are still whole JSON (never a truncated file)."""
    cache = ImageCache(small_fs / "cache")
    cache.load(photos[:3], PREP)
    fill(small_fs)
    with pytest.raises(WriteError):
        cache.load(photos[3:], PREP)
    for name in ("files.json", "meta.json", f"pixels/{PREP.key}/index.json"):
        assert isinstance(json.loads((cache.root / name).read_text()), dict)
