"""The one way anything gets a prediction: a run directory or an exported .onnx file as ONE predictor.

    predictor = pawsight.load("runs/t")              # or pawsight.load("model.onnx"); any approach
    predictor.predict(["cat.jpg", pil_image, uint8_array, raw_bytes])  # -> ["cats", "dogs", "unknown", ...]
    predictor.predict_proba(images)                  # (n, k) in predictor.classes_ order
    predictor.predict_records(images)                # [{label, probability, probabilities, unknown_score}]

Pictures may be file paths, PIL images, uint8 arrays (H, W, 3) or (n, H, W, 3) of any size, raw encoded
bytes, or a list of those. Each goes through the run's saved `Preprocessing` (the same resize and crop as in
training); arrays already at the model's size pass through unchanged. Nothing is written to disk caches.

Deep runs (transfer, scratch) run ONE module (`models/deep.ImageModel`: uint8 NHWC in; normalisation,
network, head, flip TTA and the neither score inside) on ONNX Runtime, built in memory from the module
(eager PyTorch if ONNX Runtime cannot run it). An exported `.onnx` file runs the same graph with no PyTorch
at all; classical runs compute their features with NumPy / scikit-image, also without PyTorch.

`decide()` is THE label decision (argmax, or "unknown" when the neither score is above the threshold) used
by the CLI, the Python API, evaluation and the server, so every surface gives the same label.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PawsightError, note, shown
from .images import ImageError, Preprocessing, open_rgb, to_rgb
from .onnx_check import METADATA_KEY as ONNX_METADATA_KEY  # noqa: F401 - export writes it under this key
from .onnx_check import check_graph
from .options import check_param
from .system import default_workers

UNKNOWN = "unknown"  # the label of a picture that belongs to none of the classes
PathLike = str | os.PathLike[str]


def decide(proba: np.ndarray, classes: Sequence[str], ood_score: np.ndarray | Sequence[float] | None = None,
           threshold: float | None = None) -> list[str]:
    """The label of each row of `proba`: the most probable class, or "unknown" when its neither score is
    above `threshold` (or not a number). No score or no threshold: always a class."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(f"probabilities of shape {proba.shape} do not fit {len(classes)} classes")
    labels = [str(classes[i]) for i in proba.argmax(axis=1)] if len(proba) else []
    if ood_score is None or threshold is None:
        return labels
    score = np.asarray(ood_score, dtype=np.float64).reshape(-1)
    if len(score) != len(labels):
        raise ValueError(f"{len(score)} neither scores for {len(labels)} pictures")
    return [UNKNOWN if not s <= threshold else lab for lab, s in zip(labels, score, strict=True)]


def answer_record(label: str, proba: np.ndarray | Sequence[float], classes: Sequence[str],
                  score: float | None, threshold: float | None) -> dict[str, Any]:
    """THE answer every surface shows for one picture (CLI table, JSON and CSV, Python API, web page,
    explain, report):

    label          decide()'s answer: a class, or "unknown"
    closest        the most probable class (the label too, unless the answer is "unknown")
    probability    the probability of `closest`
    probabilities  {class: probability}, in the model's class order
    unknown_score  the neither score (None: the run has none); above `unknown_threshold` means "unknown"
    unknown_threshold
    summary        the answer in words, e.g. "dogs 94.2%" or
                   "unknown: closest dogs 94.2%, neither score 1.18 > threshold 1.00"
    """
    p = np.asarray(proba, dtype=np.float64)
    k = int(p.argmax())
    record = {"label": label, "closest": str(classes[k]), "probability": float(p[k]),
              "probabilities": {str(c): float(v) for c, v in zip(classes, p, strict=True)},
              "unknown_score": score, "unknown_threshold": threshold}
    record["summary"] = describe(record)
    return record


def describe(record: dict[str, Any]) -> str:
    """An answer record in words; for "unknown" it names what was closest and why it is unknown."""
    closest = f"{record['closest']} {record['probability']:.1%}"
    if record["label"] != UNKNOWN:
        return closest
    return f"{UNKNOWN}: closest {closest}, {why_unknown(record)}"


def why_unknown(record: dict[str, Any]) -> str:
    """Why a picture is answered "unknown": its neither score against the threshold."""
    score, threshold = record.get("unknown_score"), record.get("unknown_threshold")
    if score is None or threshold is None or score != score:
        return "its neither score could not be computed"
    return f"neither score {score:.2f} > threshold {threshold:.2f}"


def top_classes(probabilities: dict[str, float], k: int) -> list[dict[str, Any]]:
    """The `k` most probable classes, most probable first (ties: class order); never "unknown"."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])[:max(1, k)]
    return [{"label": c, "probability": p} for c, p in ranked]


# -- pictures in any form -----------------------------------------------------------------------------------

def read_image(item: Any, prep: Preprocessing, max_pixels: int | None = None) -> np.ndarray:
    """One picture (path, bytes, PIL image or uint8 HWC array) as the (size, size, 3) uint8 array the model
    sees. Bad input raises ImageError (bad file) or PawsightError (wrong type) with a one-line reason.
    `max_pixels` bounds what an encoded picture may decode to (images.ImageTooLarge above it)."""
    from PIL import Image

    size = int(prep.size)
    if isinstance(item, np.ndarray):
        arr = _check_array(item)
        if arr.ndim != 3:
            raise PawsightError(f"expected one picture of shape (height, width, 3), got {arr.shape}")
        if arr.shape == (size, size, 3):
            return arr
        return prep(Image.fromarray(np.ascontiguousarray(arr), "RGB"))
    if isinstance(item, bytes | bytearray | memoryview):
        return prep(open_rgb("<bytes>", min_size=size, data=bytes(item), max_pixels=max_pixels))
    if isinstance(item, str | os.PathLike):
        return prep(open_rgb(item, min_size=size, max_pixels=max_pixels))
    if isinstance(item, Image.Image):
        return prep(to_rgb(item))
    raise PawsightError(f"cannot read a picture from a {type(item).__name__}; give a file path, bytes, "
                        f"a PIL image or a uint8 array")


def to_arrays(images: Any, prep: Preprocessing) -> np.ndarray:
    """Pictures in any accepted form (or a list of them) as one (n, size, size, 3) uint8 array."""
    size = int(prep.size)
    if isinstance(images, np.ndarray):
        arr = _check_array(images)
        if arr.ndim == 3:
            return read_image(arr, prep)[None]
        if arr.shape[1:] == (size, size, 3):
            return arr
        return _stack([read_image(a, prep) for a in arr], size)
    if isinstance(images, list | tuple):
        out: list[np.ndarray] = []
        for item in images:
            if isinstance(item, np.ndarray) and item.ndim == 4:
                out.extend(to_arrays(item, prep))
            else:
                out.append(_named(item, prep))
        return _stack(out, size)
    return _named(images, prep)[None]


def _named(item: Any, prep: Preprocessing) -> np.ndarray:
    try:
        return read_image(item, prep)
    except ImageError as exc:
        name = str(item) if isinstance(item, str | os.PathLike) else type(item).__name__
        from .errors import shown

        raise PawsightError(f"{shown(name)}: {exc}") from None


def _check_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise PawsightError(f"pictures as arrays must be uint8 RGB (0-255), got {arr.dtype}")
    if arr.ndim == 2:  # one grey picture
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3 or 0 in arr.shape:
        raise PawsightError(f"pictures as arrays must be (height, width, 3) or (n, height, width, 3), "
                            f"got {arr.shape}")
    return arr


def _stack(rows: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, size, size, 3), np.uint8)


# -- the predictor -------------------------------------------------------------------------------------------

class Predictor:
    """A trained model ready to answer: the same interface for every approach and for .onnx files."""

    approach: str
    classes_: list[str]
    preprocessing: Preprocessing
    info: dict[str, Any]
    #: neither-score threshold above which the answer is "unknown"; None = always answer a class
    threshold: float | None

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (n, k), neither scores (n,) or None) of preprocessed uint8 pictures."""
        raise NotImplementedError

    def predict_scores(self, images: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, neither scores or None) of pictures in any accepted form."""
        X = to_arrays(images, self.preprocessing)
        if len(X) == 0:
            return np.zeros((0, len(self.classes_))), None
        return self.forward(X)

    def predict_proba(self, images: Any) -> np.ndarray:
        return self.predict_scores(images)[0]

    def predict(self, images: Any) -> list[str]:
        """Class names (or "unknown"), one per picture."""
        proba, score = self.predict_scores(images)
        return decide(proba, self.classes_, score, self.threshold)

    def predict_records(self, images: Any) -> list[dict[str, Any]]:
        """One dict per picture: label, probability (of the most probable class), probabilities
        {class: p}, unknown_score (float, or None when the run has no neither score)."""
        return self.records(*self.predict_scores(images))

    def records(self, proba: np.ndarray, score: np.ndarray | None) -> list[dict[str, Any]]:
        """The answer records of `forward`'s output (see `answer_record`), one per picture."""
        labels = decide(proba, self.classes_, score, self.threshold)
        return [answer_record(label, proba[i], self.classes_, None if score is None else float(score[i]),
                              self.threshold) for i, label in enumerate(labels)]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(approach={self.approach!r}, classes={self.classes_!r}, "
                f"threshold={self.threshold!r})")


class EstimatorPredictor(Predictor):
    """A classical run: the estimator's own predict_proba, feature cache read but never written."""

    def __init__(self, model: Any, info: dict[str, Any], threshold: float | None) -> None:
        self.model = model
        self.approach = info["approach"]
        self.classes_ = list(model.classes_)
        self.preprocessing = model.preprocessing
        self.info = info
        self.threshold = threshold

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return np.asarray(self.model.predict_proba(X, cache="read")), None


class ModulePredictor(Predictor):
    """A deep run: its `inference_module()` on ONNX Runtime (graph built in memory) or eager PyTorch."""

    def __init__(self, model: Any, info: dict[str, Any], threshold: float | None, engine: str = "auto",
                 threads: int | None = None) -> None:
        self.model = model
        self.approach = info["approach"]
        self.classes_ = list(model.classes_)
        self.preprocessing = model.preprocessing
        self.info = info
        neither = getattr(model, "neither_", None)
        self.has_score = neither is not None
        default = float(neither.threshold) if neither is not None else None
        self.threshold = default if threshold is None else float(threshold)
        self.module = model.inference_module()
        self.runner: OnnxRunner | None = None
        self.engine = engine
        if engine not in ("auto", "onnx", "torch"):
            raise PawsightError(f"unknown engine {engine!r}; use auto, onnx or torch")
        if engine in ("auto", "onnx"):
            try:
                from .models.deep import onnx_bytes

                self.runner = OnnxRunner(onnx_bytes(self.module), threads)
                self.engine = "onnx"
            except Exception as exc:  # noqa: BLE001 - exporter/runtime gaps for exotic backbones: eager torch
                if engine == "onnx":
                    raise PawsightError(f"cannot run this model with ONNX Runtime ({type(exc).__name__}: "
                                        f"{exc}); use the torch engine") from None
                self.engine = "torch"
                note(f"ONNX Runtime cannot run this model ({type(exc).__name__}: {shown(exc)[:160]}); "
                     "predicting with PyTorch, which is slower")

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.runner is not None:
            proba, score = self.runner(X)
        else:
            from .models.deep import run_module

            proba, score = run_module(self.module, X)
        return proba, (score if self.has_score else None)


class OnnxPredictor(Predictor):
    """An ONNX graph written by `pawsight export` (an .onnx file, or RUN/model.onnx of a deep run) on ONNX
    Runtime: no PyTorch needed. The graph may come from anyone, so `onnx_check.check_graph` vets it before
    ONNX Runtime sees it (no external data, exactly the inputs, outputs and metadata export writes)."""

    def __init__(self, blob: bytes, name: str, threshold: float | None, threads: int | None = None,
                 info: dict[str, Any] | None = None) -> None:
        from .errors import shown

        meta = check_graph(blob, name)
        try:
            self.runner = OnnxRunner(blob, threads)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is one sentence
            raise PawsightError(f"{shown(name)} is not an ONNX model that ONNX Runtime can run "
                                f"({shown((str(exc).splitlines() or [''])[0][:160])})") from None
        self.approach = str(meta["approach"])
        self.classes_ = [str(c) for c in meta["classes"]]
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.info = info if info is not None else meta
        neither = meta.get("neither") or None
        self.has_score = neither is not None
        default = float(neither["threshold"]) if neither is not None else None
        self.threshold = default if threshold is None else float(threshold)
        self.engine = "onnx"

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        proba, score = self.runner(X)
        return proba, (score if self.has_score else None)


_NO_EXTERNAL_DATA: str | None = None  # an empty private folder: where ONNX Runtime may look for external data


def _empty_folder() -> str:
    """An empty folder only this process can write, removed at exit (see onnx_session)."""
    global _NO_EXTERNAL_DATA
    if _NO_EXTERNAL_DATA is None:
        import atexit
        import shutil
        import tempfile

        _NO_EXTERNAL_DATA = tempfile.mkdtemp(prefix="pawsight-no-external-data-")
        atexit.register(shutil.rmtree, _NO_EXTERNAL_DATA, True)
    return _NO_EXTERNAL_DATA


def onnx_session(blob: bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for a graph held in memory, using every core for each batch.

    Always from bytes, never from a path, and with ONNX Runtime's external-data folder set to an empty
    private folder: loaded from memory, ONNX Runtime otherwise reads a tensor's "external data" relative to
    the current folder, so a graph naming "secret.txt" would carry that file's bytes into its outputs.
    onnx_check.check_graph refuses such graphs first; this is the second wall (ONNX Runtime 1.32 has no
    switch that turns external data off, so the folder it may read from holds nothing)."""
    import onnxruntime as ort

    if not isinstance(blob, bytes | bytearray):
        raise TypeError("onnx_session takes the graph's bytes, never a path")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", _empty_folder())
    options.intra_op_num_threads = int(threads or default_workers())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle threads sleep instead of spinning: on the shared 2-core machine spinning doubled the CPU time per
    # picture (Lite0, batch 1, 2 threads: 12.3 -> 6.5 ms) and starved a server's decoding threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """An ONNX Runtime session and how to feed it many pictures fast.

    `threads` None (every core): one single-threaded session called from one Python thread per core at once,
    on batches of 2 (ONNX Runtime releases the GIL). Measured with Lite0 on 2 cores: 306 pictures/s, against
    222 for one 2-thread session on batches of 16 and 230 on batches of 1: a multi-threaded call spends much
    of its time waiting between small layers. `threads` n: one call at a time on n threads (a server whose
    own request threads already run in parallel wants 1)."""

    def __init__(self, blob: bytes, threads: int | None = None) -> None:
        self.parallel = default_workers() if threads is None else 1
        self.session = onnx_session(blob, 1 if threads is None else threads)
        self.batch_size = 2 if self.parallel > 1 else 16
        self._pool: Any = None

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.parallel == 1 or len(X) <= self.batch_size:
            return run_session(self.session, X, self.batch_size)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="pawsight-onnx")
        parts = list(self._pool.map(lambda i: run_session(self.session, X[i:i + self.batch_size]),
                                    range(0, len(X), self.batch_size)))
        return np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts])


def run_session(session: Any, X: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, scores) of uint8 pictures, in small batches (activations stay in the CPU cache)."""
    probas, scores = [], []
    for i in range(0, len(X), batch_size):
        p, s = session.run(None, {"pixels": np.ascontiguousarray(X[i:i + batch_size], dtype=np.uint8)})
        probas.append(p)
        scores.append(s)
    return np.concatenate(probas).astype(np.float64), np.concatenate(scores).astype(np.float64)


# -- loading -------------------------------------------------------------------------------------------

def load(path: PathLike, *, threshold: float | None = None, engine: str = "auto",
         threads: int | None = None) -> Predictor:
    """The predictor of a run directory (any approach) or of an .onnx file written by `pawsight export`.

    `threshold` overrides the run's neither threshold (a higher one answers "unknown" less often);
    `engine` (deep runs): "auto" (ONNX Runtime, else eager PyTorch), "onnx" or "torch"; `threads`: ONNX
    Runtime threads per call (default: every core; a server answering requests in parallel wants 1)."""
    threshold = check_param("threshold", threshold)
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise PawsightError(f"{path} is a file but not an .onnx model; give a run directory or a file "
                                f"written by 'pawsight export'")
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise PawsightError(f"cannot read {path}: {exc.strerror or exc}") from None
        return OnnxPredictor(blob, str(path), threshold, threads=threads)
    from .run import GRAPH_FILE, load_model, read_graph, read_run_info

    info = read_run_info(path)
    if info["approach"] == "classical" and threshold is not None:
        raise PawsightError("classical runs have no neither score, so --threshold does not apply")
    graph = read_graph(path, info) if info["approach"] != "classical" and engine in ("auto", "onnx") else None
    model = load_model(path) if graph is None else None
    return predictor_of(model, info, graph, name=str(path / GRAPH_FILE), threshold=threshold, engine=engine,
                        threads=threads)


def predictor_of(model: Any, info: dict[str, Any], graph: bytes | None = None, *, name: str = "model.onnx",
                 threshold: float | None = None, engine: str = "auto", threads: int | None = None
                 ) -> Predictor:
    """The predictor of a run: from its ONNX `graph` when given (no PyTorch), else from the fitted `model`.
    `load` uses it for a saved run, training for the run it has just made (its validation evaluation is
    scored through the same predictor as `pawsight evaluate`)."""
    if info["approach"] == "classical":
        return EstimatorPredictor(model, info, None)
    if graph is not None:  # the graph saved after training: no PyTorch import, no export at start
        predictor = OnnxPredictor(graph, name, threshold, threads=threads, info=info)
        if predictor.classes_ != list(info["classes"]) or predictor.approach != info["approach"]:
            from .errors import shown

            raise PawsightError(f"{shown(name)} is inconsistent: it is a {predictor.approach} model of "
                                f"classes {predictor.classes_}, run.json describes a {info['approach']} "
                                f"model of {info['classes']}")
        return predictor
    return ModulePredictor(model, info, threshold, engine=engine, threads=threads)


def predict_files(predictor: Predictor, files: Iterable[PathLike], batch_size: int = 32,
                  workers: int | None = None) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """(path, record, None) or (path, None, reason) per file, in order, streaming: files are read in
    batches of `batch_size` by `workers` threads (decoding releases the GIL) while the model runs the
    previous batch, so memory stays constant however many files come."""
    from concurrent.futures import ThreadPoolExecutor

    prep = predictor.preprocessing

    def read(path: PathLike) -> np.ndarray | str:
        try:
            return read_image(Path(path), prep)
        except ImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        pending = None
        for batch in _batches(files, batch_size):
            decoding = (batch, [pool.submit(read, p) for p in batch])
            if pending is not None:
                yield from _answer(predictor, *pending)
            pending = decoding
        if pending is not None:
            yield from _answer(predictor, *pending)


def _answer(predictor: Predictor, paths: list[PathLike], futures: list[Any]
            ) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    results = [f.result() for f in futures]
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    records: dict[int, dict[str, Any]] = {}
    if good:
        proba, score = predictor.forward(np.stack([results[i] for i in good]))
        records = dict(zip(good, predictor.records(proba, score), strict=True))
    for i, path in enumerate(paths):
        yield (str(path), records[i], None) if i in records else (str(path), None, str(results[i]))


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items from any iterable, without materialising it."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
