"""`pawsight data download` against a real loopback HTTP server: resume, errors, checksums, hostile archives.

Nothing here touches the internet: every download goes to a ThreadingHTTPServer on 127.0.0.1, either through
a test `Remote` whose URL points at it or through the PAWSIGHT_DATASETS_URL mirror override.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from pawsight import download as dl
from pawsight.cli import main
from pawsight.data import scan
from pawsight.errors import PawsightError

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "cats_and_dogs_filtered"
DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so archives are byte-identical run to run


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (file name, Range header)
    drop_at: int | None = None  # send only this many body bytes of the next answer, then hang up
    ignore_range: bool = False
    url: str = ""


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name, rng = self.path.lstrip("/"), self.headers.get("Range")
        state.requests.append((name, rng))
        if name not in state.files:
            self.send_error(404, "Not Found")
            return
        body, start = state.files[name], 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not state.ignore_range:
            start = int(m[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if state.drop_at is not None:
            payload, state.drop_at = payload[:state.drop_at], None
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState(url=f"http://127.0.0.1:{httpd.server_address[1]}/")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd.state  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buf, "JPEG")
    return buf.getvalue()


def build_zip(extra: dict[str, bytes] | None = None, padding: int | None = None) -> bytes:
    """A tiny cats_and_dogs_filtered look-alike: train/validation x cats/dogs, two pictures each."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "validation"):
            for c, colour in (("cats", (200, 120, 40)), ("dogs", (40, 90, 200))):
                for i in range(2):
                    info = zipfile.ZipInfo(f"{FOLDER}/{split}/{c}/{c[:-1]}.{i}.jpg", date_time=DATE)
                    zf.writestr(info, jpeg(tuple(v + 10 * i for v in colour)))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        if padding is not None:  # stored bytes: each one adds exactly one byte to the archive
            info = zipfile.ZipInfo(f"{FOLDER}/.padding", date_time=DATE)
            zf.writestr(info, bytes(padding), compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def remote_for(state: ServerState, blob: bytes, filename: str = "pets.zip", **changes: object) -> dl.Remote:
    """A registry entry for `blob` served under `filename`, with its true size and SHA-256 unless changed."""
    state.files[filename] = blob
    fields = dict(name="test-pets", url=state.url + filename, size=len(blob),
                  sha256=hashlib.sha256(blob).hexdigest(), folder=FOLDER, description="test")
    fields.update(changes)
    return dl.Remote(**fields)  # type: ignore[arg-type]


def leftovers(root: Path) -> list[str]:
    """Files and folders in `root` besides lock files."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_download_extracts_verifies_and_second_call_is_offline(server: ServerState, tmp_path: Path) -> None:
    remote = remote_for(server, build_zip())
    path = dl.download(remote, tmp_path)
    assert path == tmp_path / "test-pets" / FOLDER
    data = scan(path)
    assert data.classes == ["cats", "dogs"] and data.layout == "split-folders"
    assert data.counts() == {"train": {"cats": 2, "dogs": 2}, "validation": {"cats": 2, "dogs": 2}}
    # no .part, no temp folder; the checksum record marks the archive as pawsight's (see test_users_own_files)
    assert leftovers(tmp_path) == ["pets.zip", "pets.zip.sha256", "test-pets"]
    assert server.requests == [("pets.zip", None)]

    assert dl.download(remote, tmp_path) == path
    assert len(server.requests) == 1  # already there: no network access at all


def test_dropped_connection_resumes_on_next_call(server: ServerState, tmp_path: Path) -> None:
    blob = build_zip()
    remote = remote_for(server, blob)
    server.drop_at = cut = len(blob) // 3
    with pytest.raises(PawsightError, match="run the same command again to resume"):
        dl.download(remote, tmp_path, retries=0)
    assert (tmp_path / "pets.zip.part").stat().st_size == cut
    assert not (tmp_path / "pets.zip").exists()

    path = dl.download(remote, tmp_path, retries=0)
    assert server.requests == [("pets.zip", None), ("pets.zip", f"bytes={cut}-")]
    assert (tmp_path / "pets.zip").read_bytes() == blob
    assert scan(path).classes == ["cats", "dogs"]


def test_dropped_connection_is_retried_within_one_call(server: ServerState, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "RETRY_WAIT", 0.0)
    blob = build_zip()
    remote = remote_for(server, blob)
    server.drop_at = 1000
    dl.download(remote, tmp_path, retries=1)
    assert server.requests == [("pets.zip", None), ("pets.zip", "bytes=1000-")]
    assert (tmp_path / "pets.zip").read_bytes() == blob


def test_server_ignoring_range_restarts_the_file(server: ServerState, tmp_path: Path) -> None:
    blob = build_zip()
    remote = remote_for(server, blob)
    (tmp_path / "pets.zip.part").write_bytes(b"garbage that is no prefix of the archive")
    server.ignore_range = True
    dl.download(remote, tmp_path)
    assert server.requests[0][1] == "bytes=40-"  # asked to resume, got the whole file (200) instead
    assert (tmp_path / "pets.zip").read_bytes() == blob


def test_file_url_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PAWSIGHT_DATASETS_URL may be a folder (file://), e.g. a shared drive in a classroom."""
    blob = build_zip()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "pets.zip").write_bytes(blob)
    remote = dl.Remote("test-pets", "https://example.invalid/pets.zip", len(blob), None, FOLDER, "test")
    monkeypatch.setenv(dl.MIRROR_ENV, (tmp_path / "mirror").as_uri())
    assert scan(dl.download(remote, tmp_path / "out")).classes == ["cats", "dogs"]
    missing = dl.Remote("other", "https://example.invalid/other.zip", 1, None, FOLDER, "test")
    with pytest.raises(PawsightError, match="no such file"):
        dl.download(missing, tmp_path / "out")


def test_http_404_is_a_one_line_error(server: ServerState, tmp_path: Path) -> None:
    remote = remote_for(server, build_zip())
    server.files.clear()
    with pytest.raises(PawsightError, match=r"HTTP 404") as err:
        dl.download(remote, tmp_path)
    assert "\n" not in str(err.value)
    assert leftovers(tmp_path) == []


def test_unreachable_server_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        remote = dl.Remote("x", f"http://127.0.0.1:{s.getsockname()[1]}/x.zip", 10, None, FOLDER, "test")
        with pytest.raises(PawsightError, match=r"download of .* failed: .*run the same command") as err:
            dl.download(remote, tmp_path, retries=0, timeout=5)
    assert "\n" not in str(err.value)


def test_checksum_mismatch_deletes_the_file_and_next_try_starts_clean(server: ServerState,
                                                                     tmp_path: Path) -> None:
    blob = build_zip()
    wrong = remote_for(server, blob, sha256="0" * 64)
    with pytest.raises(PawsightError, match="checksum mismatch.*deleted it"):
        dl.download(wrong, tmp_path)
    assert leftovers(tmp_path) == []

    dl.download(remote_for(server, blob), tmp_path)
    assert [r[1] for r in server.requests] == [None, None]  # the second download started from byte 0


def test_size_mismatch_is_refused_before_downloading(server: ServerState, tmp_path: Path) -> None:
    remote = remote_for(server, build_zip(), size=123)
    with pytest.raises(PawsightError, match="expected 123"):
        dl.download(remote, tmp_path)
    assert leftovers(tmp_path) == []


def test_checksum_recorded_on_first_download_is_enforced_later(server: ServerState, tmp_path: Path) -> None:
    blob = build_zip()
    remote = remote_for(server, blob, sha256=None, size=None)
    dl.download(remote, tmp_path)
    record = tmp_path / "pets.zip.sha256"
    assert record.read_text().split()[0] == hashlib.sha256(blob).hexdigest()

    # The publisher (or a bad mirror) now serves other bytes: refused, and the record is kept.
    server.files["pets.zip"] = build_zip(extra={f"{FOLDER}/train/cats/extra.jpg": jpeg((1, 2, 3))})
    (tmp_path / "pets.zip").unlink()
    shutil.rmtree(tmp_path / "test-pets")
    with pytest.raises(PawsightError, match="checksum mismatch.*recorded at the first download"):
        dl.download(remote, tmp_path)
    assert record.exists() and not (tmp_path / "pets.zip").exists()


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("evil", ["../evil.txt", f"{FOLDER}/../../evil.txt", "/ABSOLUTE", "symlink"])
def test_hostile_zip_is_refused_and_nothing_is_written_outside(server: ServerState, tmp_path: Path,
                                                               evil: str) -> None:
    root = tmp_path / "cache" / "datasets"
    buf = io.BytesIO(build_zip())
    with zipfile.ZipFile(buf, "a") as zf:
        if evil == "symlink":
            zf.writestr(symlink_entry(f"{FOLDER}/train/cats/link"), "../../../../evil.txt")
        else:
            zf.writestr(evil.replace("/ABSOLUTE", str(tmp_path / "evil.txt")), b"pwned")
    remote = remote_for(server, buf.getvalue())
    with pytest.raises(PawsightError, match="refused to extract") as err:
        dl.download(remote, root)
    assert "deleted" in str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("*evil*")) == []
    assert leftovers(root) == []  # no archive, no half-extracted folder, no temp folder


def test_hostile_tar_with_escaping_symlink_is_refused(server: ServerState, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        link = tarfile.TarInfo(f"{FOLDER}/train/cats")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tf.addfile(link)
        evil = tarfile.TarInfo(f"{FOLDER}/train/cats/evil.txt")
        evil.size = 5
        tf.addfile(evil, io.BytesIO(b"pwned"))
    root = tmp_path / "datasets"
    remote = remote_for(server, buf.getvalue(), filename="pets.tar.gz")
    with pytest.raises(PawsightError, match="refused to extract"):
        dl.download(remote, root)
    assert not (tmp_path / "evil.txt").exists()
    assert leftovers(root) == []


def test_safe_tar_is_extracted(server: ServerState, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for c in ("cats", "dogs"):
            data = jpeg((9, 9, 9))
            info = tarfile.TarInfo(f"{FOLDER}/{c}/a.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path = dl.download(remote_for(server, buf.getvalue(), filename="pets.tar.gz"), tmp_path)
    assert scan(path).classes == ["cats", "dogs"]


def test_cli_lists_data_sets_and_refuses_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "download", "--list"]) == 0
    out = capsys.readouterr().out
    assert "cats-vs-dogs " in out and "cats-vs-dogs-full" in out
    assert main(["data", "download", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown data set") and err.count("\n") == 1


def test_cli_end_to_end_through_the_mirror_variable(server: ServerState, tmp_path: Path) -> None:
    """The real `cats-vs-dogs` entry, its archive served by the loopback mirror (padded to the real size)."""
    real = dl.DATASETS["cats-vs-dogs"]
    blob = build_zip(padding=0)
    blob = build_zip(padding=real.size - len(blob))
    assert len(blob) == real.size
    server.files[real.filename] = blob
    env = {**os.environ, dl.MIRROR_ENV: server.url, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "pawsight", "data", "download", "cats-vs-dogs", "--dir", str(tmp_path),
           "--print-path"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert first.stdout == f"{path}\n"  # only the path on stdout; messages went to stderr
    assert "downloading cats-vs-dogs" in first.stderr and server.url in first.stderr
    assert scan(path).classes == ["cats", "dogs"]
    assert sorted(p.name for p in path.iterdir() if p.name != ".padding") == ["train", "validation"]
    assert sorted(p.name for p in (path / "train").iterdir()) == ["cats", "dogs"]
    assert server.requests == [(real.filename, None)]

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert len(server.requests) == 1  # no network access the second time


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def kept(before: dict[str, str], root: Path) -> bool:
    """Every file of `before` is still there with the same bytes (pawsight may add its own lock files)."""
    after = tree_hashes(root)
    return {k: after.get(k) for k in before} == before


def test_users_own_files_under_the_data_sets_names_are_never_replaced(server: ServerState,
                                                                     tmp_path: Path) -> None:
    """Issue 14.1: a folder named like the data set holding the user's files, and a user's own file named like
    the archive, are refused in one line and left byte for byte; nothing is downloaded over them."""
    remote = remote_for(server, build_zip())
    mine = tmp_path / "test-pets"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years of work")
    before = tree_hashes(tmp_path)
    with pytest.raises(PawsightError, match="test-pets exists and was not extracted by pawsight") as err:
        dl.download(remote, tmp_path)
    assert "\n" not in str(err.value)
    assert kept(before, tmp_path) and server.requests == []

    other = tmp_path / "other"
    other.mkdir()
    (other / "pets.zip").write_bytes(b"my own zip, other bytes")
    before = tree_hashes(other)
    with pytest.raises(PawsightError, match="pets.zip exists and was not downloaded by pawsight"):
        dl.download(remote, other)
    assert kept(before, other) and not (other / "pets.zip.sha256").exists()  # no checksum record made

    # the user's own copy of the right archive is used as it is (and still not deleted afterwards)
    third = tmp_path / "third"
    third.mkdir()
    (third / "pets.zip").write_bytes(server.files["pets.zip"])
    assert dl.download(remote, third) == third / "test-pets" / FOLDER
    assert (third / "pets.zip").read_bytes() == server.files["pets.zip"]
