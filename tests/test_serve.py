"""The REST API of `pawsight serve`: a real uvicorn server on 127.0.0.1 and a real classical run (no torch).

Every upload form, several files at once, hostile uploads answered 4xx while the server keeps serving, the
same labels as `pawsight predict`, the offline API reference, and the micro-batcher's batching.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from hostile import bomb_png, noisy_jpeg
from pawsight.serve.app import MicroBatcher, background_server, create_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(classical_run: Path):
    app = create_app(classical_run, max_upload_mb=2)
    with background_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def photos(tiny: Path) -> list[Path]:
    cats = sorted((tiny / "validation" / "cats").glob("*.jpg"))[:3]
    dogs = sorted((tiny / "validation" / "dogs").glob("*.jpg"))[:3]
    return cats + dogs


def healthy(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def check_record(record: dict, classes: list[str]) -> None:
    assert record["label"] in classes + ["unknown"]
    assert set(record["probabilities"]) == set(classes)
    assert abs(sum(record["probabilities"].values()) - 1) < 1e-6
    assert record["probability"] == pytest.approx(max(record["probabilities"].values()))


def test_multipart_raw_and_several_files_agree_with_cli_predict(server: httpx.Client, classical_run: Path,
                                                                photos: list[Path]) -> None:
    classes = server.get("/model").json()["classes"]
    one = server.post("/predict", files={"file": (photos[0].name, photos[0].read_bytes(), "image/jpeg")})
    assert one.status_code == 200, one.text
    [record] = one.json()["predictions"]
    assert record["file"] == photos[0].name
    check_record(record, classes)

    raw = server.post("/predict", content=photos[0].read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"][0]["probabilities"] == record["probabilities"]

    many = server.post("/predict", files=[("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos])
    assert many.status_code == 200, many.text
    records = many.json()["predictions"]
    assert [r["file"] for r in records] == [p.name for p in photos]
    for r in records:
        check_record(r, classes)

    cli = subprocess.run([sys.executable, "-m", "pawsight", "predict", str(classical_run),
                          *map(str, photos), "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    expected = {Path(p["path"]).name: p for p in map(json.loads, cli.stdout.splitlines())}  # JSON lines
    for r in records:
        assert r["label"] == expected[r["file"]]["label"]
        assert r["probability"] == pytest.approx(expected[r["file"]]["probability"], abs=1e-6)


def test_good_and_bad_files_in_one_request(server: httpx.Client, photos: list[Path]) -> None:
    r = server.post("/predict", files=[("file", ("notes.txt", b"hello, not a picture", "text/plain")),
                                       ("file", (photos[1].name, photos[1].read_bytes(), "image/jpeg"))])
    assert r.status_code == 200
    bad, good = r.json()["predictions"]
    assert bad["file"] == "notes.txt" and bad["error"].startswith("not an image") and "label" not in bad
    assert "label" in good and "error" not in good


@pytest.mark.parametrize("name, data, status, words", [
    ("notes.txt", b"just some text, no picture here" * 10, 422, "not an image"),
    ("half.jpg", noisy_jpeg()[:9000], 422, "truncated"),
    ("bomb.png", bomb_png(), 422, "too large"),
    ("empty.jpg", b"", 422, "empty"),
])
def test_unreadable_uploads_are_422_and_server_keeps_serving(server: httpx.Client, name: str, data: bytes,
                                                             status: int, words: str) -> None:
    for response in (server.post("/predict", files={"file": (name, data, "image/jpeg")}),
                     server.post("/predict", content=data, headers={"content-type": "image/png"})):
        assert response.status_code in (status, 400), response.text
        assert words in response.json()["error"]
    healthy(server)


def test_oversized_bodies_are_413(server: httpx.Client) -> None:
    big = np.random.default_rng(0).integers(0, 256, 50 * 2**20, dtype=np.uint8).tobytes()  # 50 MB
    raw = server.post("/predict", content=big, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 413 and "2 MB" in raw.json()["error"]
    form = server.post("/predict", files={"file": ("big.jpg", big, "image/jpeg")})
    assert form.status_code == 413
    healthy(server)

    def chunks():  # no Content-Length: the limit must hold on the streamed body too
        for i in range(0, 6 * 2**20, 2**20):
            yield big[i:i + 2**20]

    streamed = server.post("/predict", content=chunks(), headers={"content-type": "image/jpeg"})
    assert streamed.status_code == 413
    healthy(server)


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "application/x-www-form-urlencoded",
                                   None])
def test_wrong_content_type_is_415(server: httpx.Client, photos: list[Path], ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = server.post("/predict", content=photos[0].read_bytes(), headers=headers)
    assert r.status_code == 415
    assert "multipart/form-data" in r.json()["error"]
    healthy(server)


def test_malformed_requests_are_4xx(server: httpx.Client, photos: list[Path]) -> None:
    no_file = server.post("/predict", files={"picture": ("a.jpg", photos[0].read_bytes(), "image/jpeg")})
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]
    text_field = server.post("/predict", data={"file": "cat.jpg"}, files={"other": ("x", b"x")})
    assert text_field.status_code == 400 and "file upload" in text_field.json()["error"]
    too_many = server.post("/predict", files=[("file", ("a.jpg", b"x", "image/jpeg"))] * 40)
    assert too_many.status_code == 413 and "at most 32" in too_many.json()["error"]
    broken = server.post("/predict", content=b"--xyz\r\ngarbage",
                         headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert 400 <= broken.status_code < 500
    empty = server.post("/predict", content=b"", headers={"content-type": "image/jpeg"})
    assert empty.status_code == 400
    assert server.get("/predict").status_code == 405
    assert server.get("/no-such-page").json() == {"error": "Not Found"}
    healthy(server)


def test_model_health_page_and_offline_docs(server: httpx.Client, classical_run: Path) -> None:
    info = server.get("/model").json()
    run = json.loads((classical_run / "run.json").read_text())
    assert info["classes"] == run["classes"] and info["approach"] == "classical"
    assert info["metrics"]["validation"]["accuracy"] == run["metrics"]["validation"]["accuracy"]
    assert info["preprocessing"] == run["preprocessing"]
    assert info["limits"]["max_upload_bytes"] == 2 * 2**20
    assert "threshold" in info

    page = server.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'accept="image/*" capture' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert server.get(asset).status_code == 200
    assert server.get("/static/..%2Fapp.py").status_code == 404
    docs = server.get("/docs")
    assert docs.status_code == 200 and "POST /predict" in docs.text
    for external in ("http://", "https://", "cdn"):  # works offline: nothing loaded from elsewhere
        assert external not in (docs.text + page.text).replace("http://HOST:PORT", "")
    spec = server.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_concurrent_requests_get_their_own_answers(server: httpx.Client, photos: list[Path]) -> None:
    single = {p.name: server.post("/predict", files={"file": (p.name, p.read_bytes())}).json()
              ["predictions"][0] for p in photos}

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=60) as client:
            rs = await asyncio.gather(*[client.post("/predict", files={"file": (p.name, p.read_bytes())})
                                        for p in photos * 4])
        return [r.json()["predictions"][0] for r in rs]

    for record in asyncio.run(burst()):
        assert record["probabilities"] == pytest.approx(single[record["file"]]["probabilities"])


def test_micro_batcher_batches_what_queued_while_busy() -> None:
    """While the model works on one request, the next seven queue up and go in together as one batch."""
    release = threading.Event()
    sizes: list[int] = []

    def predict(batch: np.ndarray) -> list[dict]:
        sizes.append(len(batch))
        release.wait(10)
        return [{"label": str(int(x[0, 0, 0]))} for x in batch]

    async def main() -> list[list[dict]]:
        batcher = MicroBatcher(predict, max_batch=16)
        batcher.start()
        first = asyncio.ensure_future(batcher(np.zeros((1, 2, 2, 3), np.uint8)))
        while not sizes:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher(np.full((1, 2, 2, 3), i, np.uint8))) for i in range(1, 8)]
        await asyncio.sleep(0.05)
        release.set()
        out = await asyncio.gather(first, *rest)
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert sizes == [1, 7]
    assert [r[0]["label"] for r in out] == [str(i) for i in range(8)]


def test_micro_batcher_workers_run_batches_at_the_same_time() -> None:
    """With two workers a second batch starts while the first is still running; answers stay in order."""
    running, both = threading.Semaphore(0), threading.Event()
    seen = []

    def predict(batch: np.ndarray) -> list[dict]:
        seen.append(len(batch))
        running.release()
        assert both.wait(10), "the second worker never started"
        return [{"label": str(int(x[0, 0, 0]))} for x in batch]

    async def main() -> list[list[dict]]:
        batcher = MicroBatcher(predict, max_batch=1, workers=2)
        batcher.start()
        calls = [asyncio.ensure_future(batcher(np.full((1, 2, 2, 3), i, np.uint8))) for i in range(4)]
        started = await asyncio.to_thread(lambda: [running.acquire(timeout=5) for _ in range(2)])
        both.set()
        out = await asyncio.gather(*calls)
        await batcher.stop()
        assert started == [True, True], "two batches never ran at the same time"
        return out

    out = asyncio.run(main())
    assert seen == [1, 1, 1, 1]
    assert [r[0]["label"] for r in out] == ["0", "1", "2", "3"]


def test_serve_command_errors_are_one_line(tmp_path: Path, classical_run: Path) -> None:
    missing = subprocess.run([sys.executable, "-m", "pawsight", "serve", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and \
        len(missing.stderr.strip().splitlines()) == 1
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        taken = subprocess.run([sys.executable, "-m", "pawsight", "serve", str(classical_run), "--port",
                                str(port)], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr


def without_torch(folder: Path) -> dict[str, str]:
    """Environment for a subprocess in which importing torch, torchvision or timm fails (and is recorded)."""
    log = folder / "imported.txt"
    for name in ("torch", "torchvision", "timm"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(
            f"with open({str(log)!r}, 'a') as f:\n    f.write('{name}\\n')\n"
            f"raise ImportError('{name} is not installed (blocked by the test)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT / "src")]))
    return env


def serve_in_subprocess(target: Path, env: dict[str, str], *options: str) -> tuple[subprocess.Popen, str]:
    """`pawsight serve target` on a free port; returns the process and its URL once /health answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "pawsight", "serve", str(target), "--port", str(port), *options]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not start: {proc.communicate()[1]}") from None
            time.sleep(0.2)


def check_predict_and_serve_without_torch(target: Path, photos: list[Path], tmp_path: Path) -> None:
    """`pawsight predict` and `pawsight serve` on `target` work where torch cannot be imported, and agree."""
    env = without_torch(tmp_path / "blocked")
    cli = subprocess.run([sys.executable, "-m", "pawsight", "predict", str(target), *map(str, photos),
                          "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert cli.returncode == 0, cli.stderr
    expected = {Path(p["path"]).name: p["label"] for p in map(json.loads, cli.stdout.splitlines())}
    assert len(expected) == len(photos)
    proc, url = serve_in_subprocess(target, env)
    try:
        files = [("file", (p.name, p.read_bytes())) for p in photos]
        r = httpx.post(url + "/predict", files=files, timeout=120)
        assert r.status_code == 200, r.text
        assert {x["file"]: x["label"] for x in r.json()["predictions"]} == expected
        assert httpx.get(url + "/").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert not (tmp_path / "blocked" / "imported.txt").exists(), \
        "something tried to import " + (tmp_path / "blocked" / "imported.txt").read_text()


def test_classical_run_predicts_and_serves_without_torch(classical_run: Path, photos: list[Path],
                                                         tmp_path: Path) -> None:
    check_predict_and_serve_without_torch(classical_run, photos, tmp_path)


@pytest.mark.slow
def test_exported_transfer_run_predicts_and_serves_without_torch(transfer_run: Path, photos: list[Path],
                                                                 tmp_path: Path) -> None:
    from pawsight.export import export_onnx

    model = tmp_path / "cats-dogs.onnx"
    export_onnx(transfer_run, model)
    check_predict_and_serve_without_torch(model, photos, tmp_path)
    with_torch = create_app(transfer_run).state.predictor.predict(photos)
    blocked = subprocess.run([sys.executable, "-m", "pawsight", "predict", str(model), *map(str, photos),
                              "--format", "json"], capture_output=True, text=True, timeout=300,
                             env=without_torch(tmp_path / "blocked"))
    assert [json.loads(line)["label"] for line in blocked.stdout.splitlines()] == with_torch


def test_listening_socket_says_tcp_so_answers_are_not_delayed() -> None:
    """asyncio disables Nagle (TCP_NODELAY) only on sockets whose proto is TCP; a proto-0 socket made every
    answer wait ~40 ms for the client's delayed ACK."""
    import socket

    from pawsight.serve.app import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


@pytest.mark.slow
def test_trained_transfer_run_directory_predicts_and_serves_without_torch(transfer_run: Path,
                                                                          photos: list[Path],
                                                                          tmp_path: Path) -> None:
    """Training saves RUN/model.onnx, so the run directory itself needs no PyTorch to answer."""
    check_predict_and_serve_without_torch(transfer_run, photos, tmp_path)


def test_access_log_is_on_by_default_and_can_be_turned_off(classical_run: Path, photos: list[Path]) -> None:
    logs = {}
    for options in ((), ("--no-access-log",)):
        proc, url = serve_in_subprocess(classical_run, dict(os.environ), *options)
        try:
            r = httpx.post(url + "/predict", files=[("file", (photos[0].name, photos[0].read_bytes()))])
            assert r.status_code == 200
        finally:
            proc.terminate()
            logs[options] = "".join(proc.communicate(timeout=30))  # uvicorn logs access to stdout
    assert '"POST /predict HTTP/1.1" 200' in logs[()]
    assert "POST /predict" not in logs[("--no-access-log",)] and "serving" in logs[("--no-access-log",)]
