"""`pawsight serve` under load vs the plain way: a FastAPI endpoint running the eager PyTorch model per
request.

    ./run.sh bench serve                         # 2,000 requests per phase, the default transfer run
    ./run.sh bench serve --requests 500 --run runs/t

Each server runs in its own process on 127.0.0.1 (a free port) and is sent multipart uploads of ~500x375
JPEGs from the data folder (cycled, the same sequence for every server): first by 1 client (latency), then
by 16 concurrent clients (throughput, errors, latency). Three servers:
- `pawsight serve RUN` (decode + the run's Preprocessing in request threads, one model thread per core);
- the same with `--max-batch 16` (micro-batching), to show whether batching earns its place;
- `pawsight serve RUN.onnx`: the run exported, as served without PyTorch;
- "plain": PIL open, torchvision Resize/CenterCrop/ToTensor/Normalize, the run's network in eager PyTorch,
  batch 1, in a plain synchronous FastAPI endpoint.
The server's resident memory is sampled every 0.25 s during each phase (start, peak and end are shown), and
its CPU time per request is reported: on a loaded machine that is steadier than wall-clock throughput.
The run is the default transfer recipe (`pawsight train DATA`), trained into the cache if missing.

    ./run.sh bench serve --hostile               # 16 hostile clients for 60 s, normal clients alongside

Hostile mode: `pawsight serve` is sent, by 16 clients at once for --seconds (60), the worst upload it
accepts: a PNG of the largest size allowed (--max-megapixels, 24 million RGB pixels, all black: ~70 kB on
the wire, 72 MB once decoded). Meanwhile 2 normal clients send ~500x375 JPEGs. Reported: requests and
errors of each kind of client, whether the server crashed, its resident memory idle / peak / 5 s after the
burst, and the normal clients' p50/p99 latency alone (first 15 s) and during the burst. Every loop is bounded
by time and by count. The model matters little here (decoding is the cost): by default a small classical run
trained on the tiny data set into the cache (seconds); --run serves another.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# at module level: FastAPI resolves the plain endpoint's annotations here
from fastapi import FastAPI, File, UploadFile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cats_and_dogs"
ROOT = Path(__file__).resolve().parents[1]


# -- the plain way -------------------------------------------------------------------------------------------

def plain_app(run: Path):
    """What a FastAPI tutorial would write: per request PIL, torchvision transforms, eager model, batch 1."""
    import io

    import torch
    from PIL import Image
    from torchvision import transforms

    from pawsight.run import load_model

    model = load_model(run)
    head = torch.nn.Linear(model.head_weight_.shape[1], model.head_weight_.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(model.head_weight_))
        head.bias.copy_(torch.from_numpy(model.head_bias_))
    net = torch.nn.Sequential(model.net_, head).eval()
    size = model.preprocessing.size
    normalize = transforms.Normalize(model.spec_.mean, model.spec_.std)
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                    transforms.ToTensor(), normalize])
    classes = list(model.classes_)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008 - FastAPI's idiom
        image = Image.open(io.BytesIO(file.file.read())).convert("RGB")
        with torch.no_grad():
            proba = net(transform(image).unsqueeze(0)).softmax(1)[0]
        best = int(proba.argmax())
        return {"label": classes[best], "probability": float(proba[best]),
                "probabilities": {c: float(p) for c, p in zip(classes, proba, strict=True)}}

    return app


def serve_plain(run: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(plain_app(run), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- client -------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free port; `rss` samples its resident memory while `sampling`."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name, self.port = name, free_port()
        self.log = log.open("w")
        path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=path)
        self.proc = subprocess.Popen([*command, "--port", str(self.port)], stdout=self.log, stderr=self.log,
                                     env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.samples: list[float] = []
        self._sampling = False

    def wait(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} server did not start; see {self.log.name}")
            time.sleep(0.3)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def sample(self):
        import psutil

        process = psutil.Process(self.proc.pid)
        self.samples = []
        self._sampling = True

        def loop() -> None:
            while self._sampling:
                try:
                    self.samples.append(process.memory_info().rss / 2**20)
                except psutil.Error:
                    return
                time.sleep(0.25)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def stop_sampling(self, thread: threading.Thread) -> tuple[float, float, float]:
        self._sampling = False
        thread.join()
        s = self.samples or [float("nan")]
        return s[0], max(s), s[-1]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def multipart_request(port: int, name: str, data: bytes) -> bytes:
    """A complete HTTP/1.1 keep-alive POST /predict with one picture as multipart field 'file'."""
    boundary = "pawsightbenchboundary7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def load_test(url: str, payloads: list[tuple[str, bytes]], requests: int, clients: int
                    ) -> tuple[list[float], int, float]:
    """Send `requests` uploads over `clients` concurrent keep-alive connections: (latencies s, errors,
    wall s).

    A minimal asyncio HTTP/1.1 client (requests built once, responses read by Content-Length): a full client
    library costs milliseconds of CPU per request on the very cores the server is measured on."""
    import json

    port = int(url.rsplit(":", 1)[1])
    prepared = [multipart_request(port, name, data) for name, data in payloads]
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def post(conn: list, request: bytes) -> bool:
        status, body = await exchange(conn, port, request)
        answer = json.loads(body)
        return status == 200 and "label" in answer.get("predictions", [answer])[0]

    async def worker() -> None:
        nonlocal next_index, errors
        conn: list = []
        while next_index < requests:
            request = prepared[next_index % len(prepared)]
            next_index += 1
            t = time.perf_counter()
            try:
                ok = await asyncio.wait_for(post(conn, request), 120)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError):
                ok = False
                if conn:
                    conn[1].close()
                    conn.clear()
            latencies.append(time.perf_counter() - t)
            errors += not ok
        if conn:
            conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(clients)])
    return latencies, errors, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def pick_photos(data: Path, n: int = 64) -> list[tuple[str, bytes]]:
    """Up to `n` JPEGs of about 500x375 pixels (the benchmark's request), in a fixed order."""
    from PIL import Image

    out = []
    for path in sorted((data / "validation").rglob("*.jpg")):
        with Image.open(path) as im:
            if im.format == "JPEG" and 480 <= im.width <= 500 and 360 <= im.height <= 375:
                out.append((path.name, path.read_bytes()))
        if len(out) == n:
            break
    if not out:
        raise SystemExit(f"no ~500x375 JPEG under {data}/validation")
    return out


def default_run(data: Path) -> Path:
    from pawsight.cache import default_cache_dir

    run = default_cache_dir() / "bench-runs" / "serve-transfer"
    if not (run / "run.json").is_file():
        print(f"training the default transfer run into {run} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pawsight", "train", str(data), "--out", str(run),
                        "--overwrite"], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    return run


def exported(run: Path) -> Path:
    """The run exported to ONNX (what a torch-free server would serve), written once next to the run."""
    out = run.parent / f"{run.name}.onnx"
    if not out.is_file():
        subprocess.run([sys.executable, "-m", "pawsight", "export", str(run), "--out", str(out)], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), stdout=subprocess.DEVNULL)
    return out


# -- hostile mode -------------------------------------------------------------------------------------------

TINY = DATA.parent / "cats_and_dogs_tiny"


def worst_png() -> tuple[str, bytes]:
    """The largest picture the server accepts by default, as a small PNG: RGB, all black."""
    import struct
    import zlib

    from pawsight.serve.app import DEFAULT_MAX_MEGAPIXELS

    side = int((DEFAULT_MAX_MEGAPIXELS * 1e6) ** 0.5)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return f"worst-{side}x{side}.png", png


def hostile_run() -> Path:
    """A small classical run on the tiny data set, trained once into the cache."""
    from pawsight.cache import default_cache_dir

    run = default_cache_dir() / "bench-runs" / "hostile-classical"
    if not (run / "run.json").is_file():
        subprocess.run([sys.executable, "-m", "pawsight", "train", str(TINY), "--approach", "classical",
                        "--features", "hog,color", "--model", "logreg", "--out", str(run), "--overwrite"],
                       check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                       stdout=subprocess.DEVNULL)
    return run


async def exchange(conn: list, port: int, request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection to 127.0.0.1:`port` (`conn` holds [reader, writer], opened on
    first use and emptied when the server closes it): (status, body), the body read by Content-Length."""
    if not conn:
        conn.extend(await asyncio.open_connection("127.0.0.1", port))
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    if headers.get("connection", "").lower() == "close":
        writer.close()
        conn.clear()
    return int(lines[0].split()[1]), body


async def timed_clients(port: int, payloads: list[tuple[str, bytes]], clients: int, seconds: float,
                        max_requests: int = 100_000) -> dict[str, Any]:
    """`clients` keep-alive connections sending `payloads` in turn until `seconds` pass (or max_requests):
    {latencies (s), statuses {code: count}, failures (connection errors / timeouts)}."""
    prepared = [multipart_request(port, name, data) for name, data in payloads]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    sent = 0
    end = time.monotonic() + seconds

    async def post(conn: list, request: bytes) -> int:
        return (await exchange(conn, port, request))[0]

    async def worker() -> None:
        nonlocal failures, sent
        conn: list = []
        while time.monotonic() < end and sent < max_requests:
            request = prepared[sent % len(prepared)]
            sent += 1
            t = time.perf_counter()
            try:
                status = await asyncio.wait_for(post(conn, request), 120)
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(time.perf_counter() - t)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError):
                failures += 1
                if conn:
                    conn[1].close()
                    conn.clear()
        if conn:
            conn[1].close()

    await asyncio.gather(*[worker() for _ in range(clients)])
    return {"latencies": latencies, "statuses": statuses, "failures": failures}


def hostile_main(args: argparse.Namespace) -> int:
    import psutil

    run = args.run or hostile_run()
    name, png = worst_png()
    normal = [(p.name, p.read_bytes()) for p in sorted((TINY / "validation").rglob("*.jpg"))[:16]]
    print(f"run: {run}  hostile upload: {name}, {len(png) / 1e3:.0f} kB  normal: {len(normal)} JPEGs  "
          f"cores: {len(os.sched_getaffinity(0))}  load average at start: {os.getloadavg()[0]:.2f}",
          flush=True)
    server = Server("pawsight", [sys.executable, "-m", "pawsight", "serve", "--no-access-log", str(run)],
                    Path(os.environ.get("TMPDIR", "/tmp")) / "pawsight-bench-serve-hostile.log")
    try:
        server.wait()
        asyncio.run(timed_clients(server.port, normal, 2, 3))  # warm-up
        rss = lambda: psutil.Process(server.proc.pid).memory_info().rss / 2**20  # noqa: E731
        idle = rss()
        alone = asyncio.run(timed_clients(server.port, normal, 2, 15))

        async def burst() -> tuple[dict[str, Any], dict[str, Any]]:
            return await asyncio.gather(timed_clients(server.port, [(name, png)], args.clients, args.seconds),
                                        timed_clients(server.port, normal, 2, args.seconds))

        thread = server.sample()
        hostile, during = asyncio.run(burst())
        _, peak, _ = server.stop_sampling(thread)
        time.sleep(5)
        crashed = server.proc.poll() is not None
        after = float("nan") if crashed else rss()
    finally:
        server.close()

    def row(label: str, clients: int, r: dict[str, Any]) -> str:
        n = sum(r["statuses"].values())
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lat = r["latencies"] or [float("nan")]
        return (f"| {label} | {clients} | {n + r['failures']} | {codes or '-'} | {r['failures']} "
                f"| {percentile(lat, 50) * 1000:.0f} | {percentile(lat, 99) * 1000:.0f} |")

    print("\n| clients | n | requests | answers by status | connection errors | p50 ms | p99 ms |\n"
          "|---|---|---|---|---|---|---|")
    print(row("normal, alone (15 s)", 2, alone))
    print(row(f"hostile: {name} ({args.seconds:.0f} s)", args.clients, hostile))
    print(row(f"normal, during the burst ({args.seconds:.0f} s)", 2, during))
    print(f"\nserver crashed: {'YES' if crashed else 'no'};  RSS MB idle / peak / 5 s after: "
          f"{idle:.0f} / {peak:.0f} / {after:.0f}")
    answered = during["statuses"].get(200, 0)
    print(f"normal clients answered during the burst: {answered} of "
          f"{sum(during['statuses'].values()) + during['failures']}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0 if not crashed and not during["failures"] else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--run", type=Path, default=None, help="run directory or .onnx (default: trained)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase")
    parser.add_argument("--plain-requests", type=int, default=None,
                        help="requests per phase for the plain server (default: --requests)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--servers", default="pawsight,pawsight-batch16,pawsight-onnx,plain")
    parser.add_argument("--hostile", action="store_true",
                        help="16 clients send the worst upload the server accepts (see the docstring)")
    parser.add_argument("--seconds", type=float, default=60.0, help="hostile mode: length of the burst")
    parser.add_argument("--plain-server", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_server:
        serve_plain(args.plain_server, args.port)
        return 0
    os.environ.setdefault("PAWSIGHT_PROGRESS", "0")
    if args.hostile:
        return hostile_main(args)
    run = args.run or default_run(args.data)
    payloads = pick_photos(args.data)
    print(f"run: {run}  pictures: {len(payloads)} JPEGs of ~500x375 from {args.data}/validation  "
          f"cores: {len(os.sched_getaffinity(0))}  load average at start: {os.getloadavg()[0]:.2f}\n",
          flush=True)
    # no access log: the plain server has none either (a log line per request costs ~5% of the CPU)
    serve = [sys.executable, "-m", "pawsight", "serve", "--no-access-log"]
    commands = {
        "pawsight": lambda: [*serve, str(run)],
        "pawsight-batch16": lambda: [*serve, str(run), "--max-batch", "16"],
        "pawsight-onnx": lambda: [*serve, str(exported(run))],
        "plain": lambda: [sys.executable, str(Path(__file__).resolve()), "--plain-server", str(run)],
    }
    rows = ["| server | clients | requests | errors | requests/s | p50 ms | p99 ms | server CPU ms/request "
            "| server RSS MB start / peak / end |",
            "|---|---|---|---|---|---|---|---|---|"]
    results: dict[tuple[str, int], dict[str, float]] = {}
    logdir = Path(os.environ.get("TMPDIR", "/tmp"))
    for name in args.servers.split(","):
        if name not in commands:
            print(f"unknown server {name!r}; choose from {', '.join(commands)}", file=sys.stderr)
            return 2
        server = Server(name, commands[name](), logdir / f"pawsight-bench-serve-{name}.log")
        try:
            server.wait()
            asyncio.run(load_test(server.url, payloads, 32, 4))  # warm-up: sessions, threads, caches
            n = args.plain_requests if name == "plain" and args.plain_requests else args.requests
            phases = [1, args.clients] if name in ("pawsight", "plain") else [args.clients]
            for clients in phases:
                thread = server.sample()
                cpu = server.cpu_seconds()
                latencies, errors, wall = asyncio.run(load_test(server.url, payloads, n, clients))
                cpu = server.cpu_seconds() - cpu
                start, peak, end = server.stop_sampling(thread)
                r = {"rps": n / wall, "p50": percentile(latencies, 50) * 1000,
                     "p99": percentile(latencies, 99) * 1000, "errors": errors, "cpu": cpu / n * 1000}
                results[(name, clients)] = r
                rows.append(f"| {name} | {clients} | {n} | {errors} | {r['rps']:.1f} | {r['p50']:.1f} "
                            f"| {r['p99']:.1f} | {r['cpu']:.1f} | {start:.0f} / {peak:.0f} / {end:.0f} |")
                print(rows[-1], flush=True)
        finally:
            server.close()
    print("\n" + "\n".join(rows))
    c = args.clients
    if ("pawsight", 1) in results:
        p50 = results[("pawsight", 1)]["p50"]
        print(f"\npawsight p50 latency with 1 client: {p50:.1f} ms (goal <= 30 ms)")
    if ("pawsight", c) in results and ("plain", c) in results:
        ratio = results[("pawsight", c)]["rps"] / results[("plain", c)]["rps"]
        print(f"pawsight / plain throughput with {c} clients: {ratio:.2f}x (goal >= 4x)")
        cpu = results[("plain", c)]["cpu"] / results[("pawsight", c)]["cpu"]
        print(f"server CPU time per request with {c} clients, plain / pawsight: {cpu:.2f}x")
    if ("pawsight", c) in results and ("pawsight-batch16", c) in results:
        ratio = results[("pawsight-batch16", c)]["rps"] / results[("pawsight", c)]["rps"]
        print(f"micro-batching (--max-batch 16) on / off throughput with {c} clients: {ratio:.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f} (the 2 cores are shared with other work; the "
          "client runs on the same cores as the server)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
