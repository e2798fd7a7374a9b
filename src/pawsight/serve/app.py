"""The HTTP face of one predictor: a web page at `/`, `POST /predict`, `GET /health`, `GET /model`, `/docs`.

The server is thin on purpose: it checks and decodes uploads (images.open_rgb + the run's own
Preprocessing), hands the pixels to `pawsight.inference` and returns its records as JSON. It never decides a
label or normalises pixels itself, so the page, the API, the CLI and Python give the same answer.

The model runs in one thread per core (ONNX Runtime on one thread each); with `max_batch` > 1, requests that
queued up while those threads were busy go into their next call as one batch (micro-batching, off by
default: it did not pay here, see DEFAULT_MAX_BATCH). Decoding runs in its own threads, one per core, in
parallel with the model.

What one client can cost the server is bounded (README "Use it on the web", limits):
- bytes: the request body (`max_upload_mb`) and pictures per request (`max_files`), else 413;
- pixels: a small PNG may declare 13000x13000 pixels (1.45 GB and 7.8 s to decode). Each picture may decode
  to at most `max_megapixels` (JPEGs are decoded at reduced scale near the model's size, so only their
  reduced size counts) and one request to REQUEST_PICTURES_OF_PIXELS times that; both are read from the
  pictures' headers before anything is decoded, else 413;
- CPU and memory: at most one decode per core at a time (the decode pools), whatever the number of clients;
  requests of small pictures have their own thread, so large ones cannot make everyone wait;
- time: a client gets HEADER_TIMEOUT seconds to send its request headers and BODY_TIMEOUT seconds for its
  body (BODY_IDLE_TIMEOUT without a byte), else the connection is closed (408 for a body): slow clients
  cannot hold connections open forever.

No PyTorch is imported here: a classical run or an exported .onnx file serves with the `serve` extra only.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from .._version import __version__
from ..images import ImageError, ImageTooLarge, decoded_pixels
from ..inference import read_image
from ..options import check_param

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_FILES = 32
# Micro-batching off by default: measured under load with one-thread sessions in one model thread per core,
# batches of up to 16 gave no more throughput than single pictures, a higher p99 and +300 MB of memory
# (benchmarks/bench_serve.py compares both; --max-batch turns it on).
DEFAULT_MAX_BATCH = 1
# A too-large body is read and thrown away up to this many bytes, so the client gets to read the 413
# answer (a server that hangs up mid-upload looks like a network error); beyond it the connection closes.
DRAIN_LIMIT = 256 * 2**20
RAW_TYPES = ("application/octet-stream",)  # besides image/*: decided by content, like every picture
# Pixels one picture may decode to, in millions: a 24 MP camera photo (6000x4000) passes; decoding one this
# size takes ~0.3 GB at peak and about a second. JPEGs count at the reduced scale they are decoded at.
DEFAULT_MAX_MEGAPIXELS = 24.0
REQUEST_PICTURES_OF_PIXELS = 4  # one request may decode at most this many pictures of the largest size
SMALL_REQUEST_PIXELS = 2_000_000  # a request decoding at most this many pixels has its own decode thread
HEADER_TIMEOUT = 10.0  # seconds from connecting (or the previous answer) to complete request headers
BODY_TIMEOUT = 120.0  # seconds to send a whole request body (20 MB at 1.4 Mbit/s)
BODY_IDLE_TIMEOUT = 15.0  # seconds without a byte of the body


class SlowClient(Exception):
    """A request body that did not arrive in time (BodyDeadline); answered 408 and the connection closed."""


class BodyDeadline:
    """ASGI middleware: the request body must arrive within `total` seconds, with no gap longer than `idle`
    (a client trickling a byte now and then would otherwise hold a connection and its buffers forever)."""

    def __init__(self, app: Any, total: float, idle: float) -> None:
        self.app, self.total, self.idle = app, total, idle

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total

        async def receive_in_time() -> dict[str, Any]:
            wait = min(self.idle, deadline - loop.time())
            try:
                return await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                raise SlowClient(f"request body too slow: not received within {self.total:g} s (or "
                                 f"{self.idle:g} s without data)") from None

        await self.app(scope, receive_in_time, send)


class UploadRejected(Exception):
    """A request pawsight will not predict on; `status` and one-line `message` go back as JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def release_after(fn: Any, *args: Any) -> Any:
    """fn(*args), then hand the freed heap back to the system. Decoding a large picture frees tens of MB in
    the decode thread's malloc arena, which glibc otherwise keeps: the server's memory stayed ~50 MB above
    idle after a burst of 24 MP pictures (benchmarks/bench_serve.py --hostile)."""
    try:
        return fn(*args)
    finally:
        _malloc_trim()


def _malloc_trim() -> None:
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def default_workers() -> int:
    """One model thread per core (each runs ONNX Runtime on one thread; see load_predictor)."""
    from ..system import default_workers as usable_cores

    return min(usable_cores(), 8)


def load_predictor(path: str | os.PathLike[str], threshold: float | None = None) -> Any:
    """The predictor of a run directory or an exported .onnx file, for a server: ONNX Runtime on one thread
    per call, since requests run in parallel in the model threads (measured in benchmarks/bench_serve.py:
    one-thread sessions in 2 workers beat one 2-thread session, whose threads wait on each other)."""
    from ..inference import load

    return load(path, threshold=threshold, threads=1)


class MicroBatcher:
    """`workers` model threads; the requests that arrive while they are busy form their next batches."""

    def __init__(self, predict: Any, max_batch: int = DEFAULT_MAX_BATCH, wait_seconds: float = 0.0,
                 workers: int = 1) -> None:
        self.predict, self.max_batch, self.wait_seconds = predict, max(1, int(max_batch)), wait_seconds
        self.workers = max(1, int(workers))
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[list[dict[str, Any]]]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="pawsight-model")
        self.batches = 0
        self.images = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def __call__(self, images: np.ndarray) -> list[dict[str, Any]]:
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def _next_batch(self) -> list[tuple[np.ndarray, asyncio.Future[list[dict[str, Any]]]]]:
        items = [await self.queue.get()]
        count = len(items[0][0])
        deadline = asyncio.get_running_loop().time() + self.wait_seconds
        while count < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            items.append(item)
            count += len(item[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch()
            items = [(x, f) for x, f in items if not f.done()]  # the client went away
            if not items:
                continue
            batch = np.concatenate([x for x, _ in items]) if len(items) > 1 else items[0][0]
            try:
                records = await loop.run_in_executor(self.executor, self.predict, batch)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request, which answers 500
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            start = 0
            for x, future in items:
                if not future.done():
                    future.set_result(records[start:start + len(x)])
                start += len(x)


def create_app(predictor_or_path: Any, *, threshold: float | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_files: int = DEFAULT_MAX_FILES,
               max_batch: int = DEFAULT_MAX_BATCH, batch_wait_ms: float = 0.0,
               workers: int | None = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
               body_idle_timeout: float = BODY_IDLE_TIMEOUT) -> FastAPI:
    """The FastAPI app serving a predictor, or the run directory / .onnx file at `predictor_or_path`.

    `threshold` (only with a path) overrides the run's unknown-threshold. Uploads larger than `max_upload_mb`
    (the whole request body) or with more than `max_files` pictures are refused with 413, and so is a picture
    that would decode to more than `max_megapixels` million pixels (or a request to more than
    REQUEST_PICTURES_OF_PIXELS times that). `max_batch` caps a micro-batch (1 = one request at a time);
    `batch_wait_ms` lets the model wait that long for more requests before it starts a batch. `workers`
    model threads run batches at the same time (default: one per core when loading from a path; 1 for a
    predictor object, which may not allow concurrent calls). `header_timeout`, `body_timeout` and
    `body_idle_timeout` (seconds) bound how long a client may take to send a request (see module docstring).
    Numbers are checked against options.LIMITS, as on the command line.
    """
    for name, value in (("max_upload_mb", max_upload_mb), ("max_files", max_files), ("max_batch", max_batch),
                        ("workers", workers), ("max_megapixels", max_megapixels)):
        check_param(name, value)
    if isinstance(predictor_or_path, str | os.PathLike):
        predictor = load_predictor(predictor_or_path, threshold)
        workers = default_workers() if workers is None else workers
    elif threshold is not None:
        raise ValueError("threshold applies when loading from a path; load the predictor with it instead")
    else:
        predictor = predictor_or_path
        workers = 1 if workers is None else workers
    max_bytes = int(max_upload_mb * 2**20)
    max_pixels = int(max_megapixels * 1e6)
    prep = predictor.preprocessing
    classes = [str(c) for c in predictor.classes_]
    batcher = MicroBatcher(predictor.predict_records, max_batch=max_batch, wait_seconds=batch_wait_ms / 1000,
                           workers=workers)
    from ..system import default_workers as usable_cores

    # One decode per core at a time: memory and CPU for decoding stay bounded however many clients send.
    # Requests with large pictures get all cores but one; the last decodes small ones (a phone's JPEG at its
    # draft scale is small), so 16 clients sending 24 MP PNGs cannot make everyone else wait behind them.
    cores = usable_cores()
    decoders = ThreadPoolExecutor(max(1, cores - 1), thread_name_prefix="pawsight-decode")
    small_decoders = ThreadPoolExecutor(1, thread_name_prefix="pawsight-decode-small")
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()
        decoders.shutdown(wait=True, cancel_futures=True)
        small_decoders.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="pawsight", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Image recognition with a trained pawsight model ({predictor.approach}: "
                              f"{', '.join(classes)}). The web page is at `/`.")
    app.state.predictor, app.state.batcher = predictor, batcher
    app.state.header_timeout = float(header_timeout)  # make_server gives it to the connection protocol
    app.add_middleware(BodyDeadline, total=float(body_timeout), idle=float(body_idle_timeout))

    @app.exception_handler(SlowClient)
    async def slow(request: Request, exc: SlowClient) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=408, headers={"Connection": "close"})

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, exc: UploadRejected) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request", "details": jsonable(exc.errors())}, status_code=422)

    def pixels_to_decode(uploads: list[tuple[str, bytes]]) -> int:
        """How many pixels decoding the request will produce, read from the pictures' headers (cheap: no
        decoding); a request over the limits is refused (413) before anything is decoded."""
        total = 0
        for name, data in uploads:
            pixels = decoded_pixels(data, prep.size) or 0
            if pixels > max_pixels:
                raise UploadRejected(413, f"{name}: picture too large: {pixels / 1e6:.1f} megapixels to "
                                          f"decode, more than the {max_megapixels:g} allowed per picture "
                                          "(pawsight serve --max-megapixels)")
            total += pixels
        if total > REQUEST_PICTURES_OF_PIXELS * max_pixels:
            most = REQUEST_PICTURES_OF_PIXELS * max_megapixels
            raise UploadRejected(413, f"pictures too large together: {total / 1e6:.1f} megapixels to decode "
                                      f"in one request, more than {most:g}; send them in several requests")
        return total

    def decode_all(uploads: list[tuple[str, bytes]]) -> list[np.ndarray | str]:
        """The model's input for each uploaded picture (inference's reader, the run's Preprocessing), or the
        one-line reason it cannot be read."""
        out: list[np.ndarray | str] = []
        for name, data in uploads:
            try:
                out.append(read_image(data, prep, max_pixels=max_pixels))
            except ImageTooLarge as exc:  # the header said otherwise than the decoder (TIFF pages, ...)
                raise UploadRejected(413, f"{name}: {exc}") from None
            except ImageError as exc:
                out.append(str(exc))
        return out

    @app.post("/predict", summary="Label one or several pictures", openapi_extra=PREDICT_OPENAPI,
              response_description="one record per picture, in upload order")
    async def predict(request: Request) -> JSONResponse:
        """Send pictures as multipart/form-data field `file` (repeat it for several) or one picture as the
        raw request body with an `image/*` content type. Each record is the answer `pawsight predict`
        gives: `label` (a class, or `unknown` for a picture of none of them), `closest` (the most probable
        class) and its `probability`, `probabilities` per class, `unknown_score` and `unknown_threshold`
        (above it: unknown) and `summary` in words; a picture that cannot be read gets `error` instead.
        If none can be read the answer is 422."""
        t0 = time.perf_counter()
        uploads = await read_uploads(request, max_bytes, max_files)
        names = [name for name, _ in uploads]
        small = pixels_to_decode(uploads) <= SMALL_REQUEST_PIXELS
        work = decode_all if small else lambda u: release_after(decode_all, u)
        decoded = await asyncio.get_running_loop().run_in_executor(small_decoders if small else decoders,
                                                                   work, uploads)
        del uploads  # the encoded bytes are not needed while the model runs
        good = [x for x in decoded if isinstance(x, np.ndarray)]
        records = iter(await batcher(np.stack(good)) if good else [])
        out: list[dict[str, Any]] = []
        for name, x in zip(names, decoded, strict=True):
            if isinstance(x, str):
                out.append({"file": name, "error": x})
            else:
                out.append({"file": name, **jsonable(next(records))})
        body = {"predictions": out, "classes": classes, "seconds": round(time.perf_counter() - t0, 4)}
        if not good:
            reasons = "; ".join(f"{r['file']}: {r['error']}" for r in out)
            return JSONResponse({"error": f"no readable picture ({reasons})", **body}, status_code=422)
        return JSONResponse(body)

    @app.get("/health", summary="Is the server up?")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_seconds": round(time.time() - started, 1),
                "batches": batcher.batches, "images": batcher.images}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # monitors use HEAD

    @app.get("/model", summary="What the model is: classes, approach, metrics, preprocessing, threshold")
    async def model() -> dict[str, Any]:
        info = dict(getattr(predictor, "info", None) or {})
        return jsonable({
            "classes": classes, "approach": predictor.approach,
            "metrics": info.get("metrics", {}), "preprocessing": prep.to_dict(),
            "threshold": getattr(predictor, "threshold", None),
            "limits": {"max_upload_bytes": max_bytes, "max_files": max_files, "max_pixels": max_pixels,
                       "max_request_pixels": REQUEST_PICTURES_OF_PIXELS * max_pixels,
                       "header_timeout_seconds": header_timeout, "body_timeout_seconds": body_timeout},
            "pawsight_version": __version__,
        })

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise StarletteHTTPException(404, f"no such file: {name}")
        return FileResponse(STATIC / name, headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()), headers=PAGE_HEADERS)

    return app


STATIC_FILES = {"app.js", "style.css"}
# The page uses nothing but its own files: no CDN, no inline script, works offline.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                           "style-src 'self'; script-src 'self'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

PREDICT_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one or several pictures (repeat the field)"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}, "responses": {"413": {"description": "upload too large"}, "415": {"description": "not a picture upload"},
                  "422": {"description": "no readable picture"}}}


async def read_uploads(request: Request, max_bytes: int, max_files: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each picture in the request, checked against the limits."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = ctype == "multipart/form-data"
    if not (multipart or ctype.startswith("image/") or ctype in RAW_TYPES):
        shown = ctype or "none"
        raise UploadRejected(415, f"unsupported content type {shown!r}: send pictures as multipart/form-data "
                                  "field 'file' (curl -F file=@photo.jpg) or one picture as the body with an "
                                  "image/* content type (curl --data-binary @photo.jpg -H 'Content-Type: "
                                  "image/jpeg')")
    body = await read_body(request, max_bytes)
    if not multipart:
        if not body:
            raise UploadRejected(400, "empty request body: send a picture")
        return [(request.query_params.get("filename", "body"), body)]

    async def one_chunk() -> AsyncIterator[bytes]:
        yield body

    try:
        parser = MultiPartParser(request.headers, one_chunk(), max_files=max_files, max_fields=100)
        form = await parser.parse()
    except MultiPartException as exc:
        message = str(exc.message if hasattr(exc, "message") else exc)
        if "Too many files" in message:
            raise UploadRejected(413, f"too many pictures in one request (at most {max_files})") from None
        raise UploadRejected(400, f"malformed multipart body: {message}") from None
    try:
        uploads: list[tuple[str, bytes]] = []
        for value in form.getlist("file"):
            if not isinstance(value, UploadFile):
                raise UploadRejected(400, "field 'file' must be a file upload (curl -F file=@photo.jpg), "
                                          "not a text value")
            uploads.append((value.filename or f"file {len(uploads) + 1}", await value.read()))
    finally:
        await form.close()
    if not uploads:
        fields = ", ".join(sorted(set(form.keys()))) or "none"
        raise UploadRejected(400, f"no field named 'file' in the form (fields sent: {fields}); "
                                  "send each picture as field 'file'")
    return uploads


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, or 413 once it passes `max_bytes` (announced or streamed)."""
    too_large = UploadRejected(413, f"upload too large: the limit is {max_bytes / 2**20:g} MB per request "
                                    "(pawsight serve --max-upload-mb)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise too_large  # not worth reading; the connection is closed after the answer
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            chunks.clear()  # keep reading (and dropping) so the client sees the answer
            if total > DRAIN_LIMIT:
                break
            continue
        chunks.append(chunk)
    if total > max_bytes:
        raise too_large
    return b"".join(chunks)


def jsonable(obj: Any) -> Any:
    """NumPy scalars and arrays as plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def docs_page(spec: dict[str, Any]) -> str:
    """The API reference as one self-contained HTML page made from the OpenAPI document.

    FastAPI's own /docs loads Swagger UI from a CDN, which fails offline and leaks the visit; no installed
    package ships those assets, so this page lists the same OpenAPI document with no script at all."""
    esc = html.escape
    rows = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {})
            responses = ", ".join(f"{code} {esc(r.get('description', ''))}"
                                  for code, r in op.get("responses", {}).items())
            rows.append(
                f"<section><h2><code>{esc(method.upper())} {esc(path)}</code></h2>"
                f"<p>{esc(op.get('summary', ''))}</p>"
                + (f"<p>{esc(op['description'])}</p>" if op.get("description") else "")
                + (f"<p><b>Request body:</b> {esc(', '.join(body))}</p>" if body else "")
                + f"<p><b>Responses:</b> {responses}</p></section>")
    info = spec.get("info", {})
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>pawsight API</title>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            "<link rel=icon href='data:,'><link rel=stylesheet href='/static/style.css'></head>"
            f"<body class=docs><main><h1>{esc(info.get('title', 'pawsight'))} API "
            f"{esc(str(info.get('version', '')))}</h1><p>{esc(info.get('description', ''))}</p>"
            "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3). Example: "
            "<code>curl -F file=@photo.jpg http://HOST:PORT/predict</code></p>"
            + "".join(rows) + "</main></body></html>")


# -- running it -------------------------------------------------------------------------------------------

def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or OSError with the system's reason."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP;
    # with proto 0 every answer waited ~40 ms for the client's delayed ACK (measured: p50 44 ms -> 0.3 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def make_server(app: FastAPI, log_level: str = "info", access_log: bool = True) -> Any:
    """A uvicorn server for `app` whose connections must send their request headers within the app's
    `header_timeout` (HEADER_TIMEOUT by default); see header_deadline_protocol."""
    import uvicorn

    timeout = float(getattr(app.state, "header_timeout", HEADER_TIMEOUT))
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                                         timeout_keep_alive=5, server_header=False,
                                         http=header_deadline_protocol(timeout)))


def header_deadline_protocol(timeout: float) -> type:
    """uvicorn's h11 connection protocol with a deadline for request headers.

    uvicorn times out idle keep-alive connections, but not a client that connects and sends nothing, or
    half a request line, or headers a byte a minute ("slowloris"): each such connection was held forever.
    Here a connection is closed when `timeout` seconds pass from connecting (or from the previous answer)
    without complete request headers. The body has its own deadline (BodyDeadline)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._waiting_for_headers():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


@contextlib.contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread for the duration of the block; yields its base URL."""
    sock = bind_socket(host, port)
    server = make_server(app, log_level="warning", access_log=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="pawsight-server")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
