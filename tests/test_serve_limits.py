"""What one client can cost `pawsight serve` is bounded (issue 14, item 7): pixels per picture and per
request, decodes at a time, time to send headers and body. A real uvicorn server on 127.0.0.1 and a real
classical run; pictures are generated small on the wire but huge once decoded.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from hostile import png_chunk
from pawsight.serve.app import DEFAULT_MAX_MEGAPIXELS, background_server, create_app


def flat_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few kB on the wire, width*height*3 bytes once
    decoded to RGB (13000 x 13000: 507 MB, and it used to be decoded in full)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.fixture(scope="module")
def limited(classical_run: Path):
    """A server with short timeouts so slow clients are cut off within a test's patience."""
    app = create_app(classical_run, header_timeout=1.0, body_timeout=3.0, body_idle_timeout=1.0)
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def rss() -> int:
    return psutil.Process().memory_info().rss


def test_a_huge_small_png_is_413_at_once_without_decoding(limited: httpx.Client) -> None:
    bomb = flat_png(13000, 13000)
    assert len(bomb) < 200_000
    before = rss()
    t = time.perf_counter()
    r = limited.post("/predict", files={"file": ("huge.png", bomb, "image/png")})
    seconds = time.perf_counter() - t
    assert r.status_code == 413, r.text
    assert "huge.png" in r.json()["error"] and "169.0 megapixels" in r.json()["error"]
    assert seconds < 3, seconds
    assert rss() - before < 100 * 2**20  # decoded, it would be 0.5 GB
    raw = limited.post("/predict", content=bomb, headers={"content-type": "image/png"})
    assert raw.status_code == 413
    assert limited.get("/health").status_code == 200


def test_largest_allowed_png_is_answered_and_a_big_jpeg_counts_at_its_decoded_scale(
        limited: httpx.Client) -> None:
    side = int((DEFAULT_MAX_MEGAPIXELS * 1e6) ** 0.5)
    r = limited.post("/predict", files={"file": ("edge.png", flat_png(side, side), "image/png")})
    assert r.status_code == 200, r.text
    over = limited.post("/predict", files={"file": ("over.png", flat_png(side + 10, side + 10), "image/png")})
    assert over.status_code == 413
    # 7000 x 5000 = 35 MP declared, but decoded at 1/8 scale (875 x 625) for a small model: accepted
    buf = io.BytesIO()
    Image.new("RGB", (7000, 5000), (90, 120, 200)).save(buf, "JPEG", quality=50)
    jpeg = limited.post("/predict", files={"file": ("big.jpg", buf.getvalue(), "image/jpeg")})
    assert jpeg.status_code == 200, jpeg.text


def test_pictures_per_request_are_bounded(limited: httpx.Client) -> None:
    limits = limited.get("/model").json()["limits"]
    too_many = [("file", ("a.png", b"x", "image/png"))] * (limits["max_files"] + 1)
    many = limited.post("/predict", files=too_many)
    assert many.status_code == 413 and f"at most {limits['max_files']}" in many.json()["error"]
    side = int((limits["max_pixels"] * 0.9) ** 0.5)  # each allowed, five together too many
    five = limited.post("/predict", files=[("file", (f"{i}.png", flat_png(side, side), "image/png"))
                                           for i in range(5)])
    assert five.status_code == 413 and "too large together" in five.json()["error"]


def test_concurrent_decodes_are_bounded_and_memory_comes_back(limited: httpx.Client, tiny: Path) -> None:
    """Eight clients at once each sending the largest picture allowed: the server decodes one per core at a
    time, so memory peaks at a few pictures' worth (unbounded: eight at once), and returns afterwards. A
    normal photo sent meanwhile does not wait for the large ones."""
    side = int((DEFAULT_MAX_MEGAPIXELS * 1e6) ** 0.5)
    picture = flat_png(side, side)
    url = str(limited.base_url)
    limited.post("/predict", files={"file": ("warm.png", picture, "image/png")})
    baseline, peak, stop = rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        def send(i: int) -> int:
            return httpx.post(url + "/predict", files={"file": (f"{i}.png", picture, "image/png")},
                              timeout=120).status_code

        photo = next((tiny / "validation" / "cats").glob("*.jpg")).read_bytes()
        with ThreadPoolExecutor(8) as pool:
            t0 = time.perf_counter()
            burst = pool.map(send, range(8))
            time.sleep(0.3)
            t = time.perf_counter()
            normal = httpx.post(url + "/predict", files={"file": ("cat.jpg", photo)}, timeout=60)
            normal_seconds = time.perf_counter() - t
            statuses = list(burst)
            burst_seconds = time.perf_counter() - t0
    finally:
        stop.set()
        sampler.join()
    assert statuses == [200] * 8 and normal.status_code == 200
    assert normal_seconds < burst_seconds / 3, (normal_seconds, burst_seconds)
    one_picture = side * side * 4  # RGB + the 1-bit source and resize buffers, roughly
    assert peak[0] - baseline < 4 * one_picture, (peak[0] - baseline) / 2**20
    time.sleep(0.5)
    assert rss() - baseline < one_picture, (rss() - baseline) / 2**20


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; (data, seconds). Bounded by `limit`."""
    sock.settimeout(limit)
    t, data = time.perf_counter(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        pass
    return data, time.perf_counter() - t


def connect(client: httpx.Client) -> socket.socket:
    return socket.create_connection((client.base_url.host, client.base_url.port), timeout=5)


def test_a_client_that_sends_nothing_or_half_a_header_is_disconnected(limited: httpx.Client) -> None:
    with connect(limited) as silent:
        data, seconds = read_until_closed(silent, 10)
    assert data == b"" and seconds < 5, seconds
    with connect(limited) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        start = time.perf_counter()
        closed = False
        for _ in range(20):  # a header byte every 0.25 s: never completes
            try:
                slow.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.25)
        data, _ = read_until_closed(slow, 5) if not closed else (b"", 0.0)
        assert time.perf_counter() - start < 5.5
    assert b"200 OK" not in data
    assert limited.get("/health").status_code == 200


def test_a_slow_body_gets_408_and_the_connection_closed(limited: httpx.Client) -> None:
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
    with connect(limited) as stalled:  # ten bytes, then nothing
        stalled.sendall(head + b"\x89PNG\r\n\x1a\n\x00\x00")
        data, seconds = read_until_closed(stalled, 10)
    assert data.startswith(b"HTTP/1.1 408") and b"too slow" in data and seconds < 5, (data, seconds)
    with connect(limited) as trickle:  # a byte every 0.5 s: never idle, but past the total deadline
        trickle.sendall(head)
        start, data = time.perf_counter(), b""
        trickle.settimeout(0.5)
        for _ in range(20):
            try:
                trickle.sendall(b"\x00")
                data += trickle.recv(65536)
                if data:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        seconds = time.perf_counter() - start
    assert data.startswith(b"HTTP/1.1 408") and 2.5 < seconds < 6, (data, seconds)
    assert limited.get("/health").status_code == 200


def test_head_requests_are_answered(limited: httpx.Client) -> None:
    for path in ("/", "/health"):
        r = limited.head(path)
        assert r.status_code == 200 and r.content == b"", path
    assert limited.get("/").status_code == 200


def test_limits_are_checked_like_the_command_line(classical_run: Path) -> None:
    from pawsight.errors import PawsightError

    for option, value in (("max_upload_mb", float("nan")), ("max_megapixels", 0), ("workers", 0),
                          ("max_files", 0), ("max_batch", float("inf"))):
        with pytest.raises(PawsightError, match=f"{option} must be"):
            create_app(classical_run, **{option: value})
