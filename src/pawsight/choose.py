"""Which approach for my data? Answered by measurement on the user's pictures and machine.

    compare(data)   learning curves: each approach trained on growing, nested per-class subsets of the
                    training split (same validation pictures), charts + leaderboard (CSV, HTML, terminal)
    advise(data)    data + hardware + a few seconds of each approach's real work -> estimated training times
                    and a recommendation with reasons
    auto_train(data) cross-validation on the training split among candidate recipes within a time budget,
                    then `api.train` of the winner; advice and candidates' scores recorded in run.json

Everything goes through the public API (`api.train`, models' fit/predict_proba) so the decode cache and the
per-picture feature caches make repeated fits on subsets cheap.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import math
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PawsightError, shown
from .options import check_param
from .run import discard_run, install_run
from .storage import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    claim_folder,
    refuse_inside_data,
)

PathLike = str | os.PathLike[str]
APPROACHES = ("classical", "transfer", "scratch")
DEFAULT_SIZES: tuple[int | None, ...] = (10, 25, 50, 100, 250, None)  # None = every training picture
FAST = ("classical", "transfer")  # trained to completion; scratch shares what is left of the time budget
MIN_SCRATCH_SECONDS = 15.0  # a scratch run given less than this learns nothing worth a point on the chart
SPEED_IMAGES = 64  # pictures timed for prediction speed (after a small warm-up)


def parse_sizes(text: str) -> list[int | None]:
    """'10,25,all' -> [10, 25, None] (sorted, without repeats)."""
    sizes: set[int | None] = set()
    for part in (p.strip().lower() for p in text.split(",")):
        if part == "all":
            sizes.add(None)
        elif part.isdigit() and int(part) > 0:
            sizes.add(int(part))
        else:
            raise PawsightError(f"--sizes takes positive numbers of pictures per class or 'all', "
                                f"got {part!r}")
    return sorted(sizes, key=lambda s: math.inf if s is None else s)


def parse_approaches(text: str) -> list[str]:
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in APPROACHES]
    if unknown or not names:
        raise PawsightError(f"--approaches takes a comma-separated list of {', '.join(APPROACHES)}; "
                            f"got {shown(text)!r}")
    return list(dict.fromkeys(names))


# -- compare -------------------------------------------------------------------------------------------------

@dataclass
class CompareRow:
    approach: str
    per_class: int | None        # asked for; None = all
    n_train: int                 # pictures actually trained on
    accuracy: float | None       # validation accuracy
    train_seconds: float | None  # wall time of api.train (decode, fit, validation, save)
    images_per_second: float | None  # prediction speed on decoded pictures, features not cached
    model_bytes: int | None      # the run directory's model files
    run: str = ""
    note: str = ""

    @property
    def size_label(self) -> str:
        return "all" if self.per_class is None else str(self.per_class)


def compare(data: PathLike, approaches: list[str] | tuple[str, ...] = FAST,
            sizes: list[int | None] | tuple[int | None, ...] = DEFAULT_SIZES, *, time_budget: float = 1200.0,
            out: PathLike | None = None, seed: int = 0, overwrite: bool = False,
            params: dict[str, dict[str, Any]] | None = None,
            say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Train every approach at every per-class size (nested subsets, one validation split) and write
    compare.csv, compare.json, accuracy-vs-size.png, accuracy-vs-time.png and compare.html into `out`.
    `params`: approach -> model parameters (default: each approach's defaults)."""
    from . import api
    from .data import scan

    t0 = time.perf_counter()
    params_by_approach = params
    check_param("seed", seed)
    check_param("time_budget", time_budget)
    out = Path(out) if out is not None else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    refuse_inside_data(out, data)
    _claim_output(out, overwrite)
    ds = scan(data, seed=seed)
    counts = ds.counts().get("train", {})
    if not counts:
        raise PawsightError(f"{data} has no training images")
    largest = max(counts.values())
    # sizes at or above the largest class are all the pictures: train that point once, as 'all'
    plan = sorted({None if s is None or s >= largest else s for s in sizes},
                  key=lambda s: math.inf if s is None else s)
    rows: list[CompareRow] = []
    speed_cache = Path(tempfile.mkdtemp(prefix="pawsight-speed-"))
    try:
        # the fast approaches size by size (so a spent budget cuts the largest points of every curve), then
        # scratch with what is left
        fast = [(a, k, s) for k, s in enumerate(plan) for a in approaches if a in FAST]
        slow = [(a, k, s) for a in approaches if a not in FAST for k, s in enumerate(plan)]
        for approach, k, size in fast + slow:
            row = CompareRow(approach, size, _n_train(counts, size), None, None, None, None)
            rows.append(row)
            left = time_budget - (time.perf_counter() - t0)
            params: dict[str, Any] = dict((params_by_approach or {}).get(approach, {}))
            if approach == "scratch":
                budgets = _scratch_budgets(plan[k:], counts, left)
                if budgets.get(size) is None:
                    why = ("time budget exhausted" if budgets == {} else
                           f"its share of the time left would be under {MIN_SCRATCH_SECONDS:.0f} s; "
                           f"the larger sizes got it")
                    row.note = f"skipped: {why}"
                    say(f"{approach} at {row.size_label} per class: skipped ({why})")
                    continue
                params["time_budget"] = budgets[size]
            elif left <= 0:
                row.note = "skipped: time budget exhausted"
                say(f"{approach} at {row.size_label} per class: skipped (time budget exhausted)")
                continue
            run_dir = out / "runs" / f"{approach}-{row.size_label}"
            staging = run_dir.with_name(f".new-{run_dir.name}")  # an earlier compare's run stays until
            t = time.perf_counter()                                # this one has succeeded
            try:
                _, info = api.train(data, approach, staging, seed=seed, per_class=size,
                                        overwrite=True, **params)
                install_run(staging, run_dir)
            except PawsightError as exc:  # e.g. too few textured pictures for visual words: go on
                row.note = f"failed: {exc}"
                say(f"{approach} at {row.size_label} per class: {shown(exc)}")
                discard_run(staging)
                continue
            row.train_seconds = round(time.perf_counter() - t, 3)
            row.n_train = int(info["metrics"]["train_size"])
            val = info["metrics"].get("validation") or {}
            row.accuracy = val.get("accuracy")
            row.run = str(run_dir)
            # the model's own files; RUN/model.onnx is the same model again, for PyTorch-free serving
            row.model_bytes = sum(p.stat().st_size for p in run_dir.glob("model.*")
                                  if p.is_file() and p.suffix != ".onnx")
            row.images_per_second = prediction_speed(run_dir, data, seed, speed_cache, variant=len(rows))
            acc = "n/a" if row.accuracy is None else f"{row.accuracy:.1%}"
            say(f"{approach} at {row.size_label} per class ({row.n_train} pictures): {acc} "
                f"in {row.train_seconds:.1f} s")
            write_compare(out, rows, _compare_result(data, approaches, plan, time_budget, t0, rows))
    finally:
        import shutil

        shutil.rmtree(speed_cache, ignore_errors=True)
    result = _compare_result(data, approaches, plan, time_budget, t0, rows)
    failed = [r for r in rows if r.note.startswith("failed")]
    if not any(r.accuracy is not None for r in rows):  # never replace earlier results with nothing
        first = f" (first: {failed[0].approach} at {failed[0].size_label} per class: {failed[0].note})" \
            if failed else ""
        kept = "; the results already in it are kept" if (out / "compare.json").is_file() else ""
        raise PawsightError(f"nothing was compared: no point trained{first}; nothing written to "
                            f"{shown(out)}{kept}")
    write_compare(out, rows, result)  # also after each point: an interrupted compare keeps what it measured
    result["out"] = str(out)
    result["failed"] = len(failed)
    return result


def _compare_result(data: PathLike, approaches: Any, plan: list[int | None], time_budget: float, t0: float,
                    rows: list[CompareRow]) -> dict[str, Any]:
    return {"data": str(Path(data).resolve()), "approaches": list(approaches),
            "sizes": ["all" if s is None else s for s in plan], "time_budget": time_budget,
            "seconds": round(time.perf_counter() - t0, 3), "rows": [asdict(r) for r in rows]}


def _claim_output(out: Path, overwrite: bool) -> None:
    """`out` must be new, empty, or a compare folder pawsight made (its mark; a folder holding compare.json
    from before folders were marked is adopted); with results in it, only with `overwrite`."""
    claim_folder(out, "compare", adopt=lambda folder: (folder / "compare.json").is_file())
    if (out / "compare.json").is_file() and not overwrite:
        raise PawsightError(f"{shown(out)} already holds results; choose another --out or add --overwrite")


def _n_train(counts: dict[str, int], size: int | None) -> int:
    return sum(counts.values()) if size is None else sum(min(size, c) for c in counts.values())


def _scratch_budgets(sizes: list[int | None], counts: dict[str, int], seconds: float
                     ) -> dict[int | None, float]:
    """Split `seconds` over scratch runs in proportion to their training-set sizes; a run whose share is
    below MIN_SCRATCH_SECONDS is dropped (smallest first) and its share goes to the others. Each run gets
    ~80% of its share as its training budget: decoding, validation and saving take the rest."""
    sizes = list(sizes)
    while sizes:
        weights = {s: _n_train(counts, s) for s in sizes}
        total = sum(weights.values())
        shares = {s: seconds * w / total for s, w in weights.items()}
        if min(shares.values()) >= MIN_SCRATCH_SECONDS:
            return {s: round(max(1.0, 0.8 * v - 2.0), 1) for s, v in shares.items()}
        sizes.remove(min(sizes, key=lambda s: weights[s]))
    return {}


@contextlib.contextmanager
def _cache_root(path: Path) -> Iterator[None]:
    old = os.environ.get("PAWSIGHT_CACHE")
    os.environ["PAWSIGHT_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PAWSIGHT_CACHE", None)
        else:
            os.environ["PAWSIGHT_CACHE"] = old


def prediction_speed(run_dir: Path, data: PathLike, seed: int, scratch_cache: Path, variant: int = 0
                     ) -> float | None:
    """Pictures per second of the run's predictor — `inference.load(RUN)`, the path `pawsight predict` and
    `serve` take (a deep run's saved ONNX graph, a classical run's features + pipeline) — on decoded
    validation pictures whose features are not cached (feature caches pointed at `scratch_cache`, pixels
    changed in the lowest bit per `variant` so no earlier row matches): what predicting new pictures costs,
    decoding excluded."""
    from .cache import ImageCache
    from .data import scan
    from .inference import load

    with _cache_root(scratch_cache):
        predictor = load(run_dir)
    ds = scan(data, seed=seed)
    samples = ds.split("validation") or ds.split("train")
    decoded = ImageCache().load_samples(samples[: SPEED_IMAGES + 4], predictor.preprocessing,
                                        desc="decoding")
    X = decoded.images ^ np.uint8(variant % 7 + 1)
    if len(X) < 5:
        return None
    with _cache_root(scratch_cache):
        predictor.forward(X[:4])  # warm-up: sessions (once per run)
        t = time.perf_counter()
        predictor.forward(X[4:])
        seconds = time.perf_counter() - t
    return round((len(X) - 4) / max(seconds, 1e-9), 1)


# -- compare output -----------------------------------------------------------------------------------------

CSV_FIELDS = ["approach", "per_class", "n_train", "accuracy", "train_seconds", "images_per_second",
              "model_bytes", "run", "note"]


def leaderboard(rows: list[CompareRow]) -> list[CompareRow]:
    """Trained rows, best validation accuracy first; ties: faster training first."""
    done = [r for r in rows if r.accuracy is not None]
    return sorted(done, key=lambda r: (-(r.accuracy or 0.0), r.train_seconds or 0.0))


def format_leaderboard(rows: list[CompareRow]) -> str:
    lines = [f"{'approach':<10} {'per class':>9} {'pictures':>8} {'accuracy':>8} {'train s':>8} "
             f"{'predict img/s':>13} {'model MB':>8}"]
    for r in leaderboard(rows):
        lines.append(f"{r.approach:<10} {r.size_label:>9} {r.n_train:>8} {r.accuracy:>8.1%} "
                     f"{r.train_seconds or 0:>8.1f} {_fmt(r.images_per_second, '13.0f')} "
                     f"{_fmt(None if r.model_bytes is None else r.model_bytes / 1e6, '8.2f')}")
    for r in rows:
        if r.note:
            lines.append(f"{r.approach} at {r.size_label} per class: {shown(r.note)}")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, spec)


def write_compare(out: Path, rows: list[CompareRow], result: dict[str, Any]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        d["per_class"] = r.size_label
        writer.writerow(d)
    atomic_write_text(out / "compare.csv", buf.getvalue())
    charts = draw_compare(rows)
    for name, png in charts.items():
        atomic_write_bytes(out / name, png)
    atomic_write_text(out / "compare.html", compare_html(rows, result, charts))
    atomic_write_json(out / "compare.json", result, indent=2)


def draw_compare(rows: list[CompareRow]) -> dict[str, bytes]:
    """{file name: PNG bytes}: accuracy against training-set size and against training time, one line per
    approach."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from .report.plots import new_figure, to_png  # no pyplot: never touches the caller's matplotlib backend

    out = {}
    for name, x_of, xlabel, title in (
            ("accuracy-vs-size.png", lambda r: r.n_train, "training pictures (total over the classes)",
             "accuracy against training-set size"),
            ("accuracy-vs-time.png", lambda r: r.train_seconds, "training time (s)",
             "accuracy against training time (labels: training pictures)")):
        fig, (ax,) = new_figure(5.6, 4.0)
        xs: set[float] = set()
        for approach in dict.fromkeys(r.approach for r in rows):
            pts = sorted((x_of(r), r.accuracy, r.n_train) for r in rows
                         if r.approach == approach and r.accuracy is not None and x_of(r))
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=approach)
                xs.update(p[0] for p in pts)
                if name == "accuracy-vs-time.png":  # which size each point is: time alone does not say
                    for x, acc, n in pts:
                        ax.annotate(f"{n}", (x, 100 * acc), textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log")
        # plain numbers (10, 100, 1000), not 10^n: mathtext looks for fonts a minimal system lacks and logs it
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if name == "accuracy-vs-size.png" and xs:  # a tick at every measured size: never an unlabelled axis
            ax.set_xticks(sorted(xs), [f"{x:.0f}" for x in sorted(xs)], rotation=45 if len(xs) > 4 else 0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            fig.legend(loc="outside lower center", ncol=3, frameon=False)  # below: never over a point
        out[name] = to_png(fig)
    return out


CHART_CAPTIONS = {
    "accuracy-vs-size.png": "Validation accuracy against the number of training pictures: a line still "
                            "rising at the right says more pictures would still help that approach.",
    "accuracy-vs-time.png": "Validation accuracy against training time on this machine: what each minute of "
                            "training buys.",
}


def verdict(rows: list[CompareRow]) -> str:
    """One sentence a person can act on: the best approach at the largest training size every approach
    reached, with its accuracy and time, against the runner-up (and the trade-off when the runner-up trains
    faster)."""
    done = [r for r in rows if r.accuracy is not None]
    if not done:
        return "No approach finished a training: nothing to recommend."
    best_per_approach: dict[str, CompareRow] = {}
    for r in done:  # each approach at its largest training size
        old = best_per_approach.get(r.approach)
        if old is None or r.n_train > old.n_train:
            best_per_approach[r.approach] = r
    ranked = sorted(best_per_approach.values(), key=lambda r: (-(r.accuracy or 0.0), r.train_seconds or 0.0))
    top = ranked[0]
    text = (f"{top.approach} is the most accurate here: {top.accuracy:.1%} on the validation pictures after "
            f"training on {top.n_train} pictures in {top.train_seconds or 0:.0f} s")
    if len(ranked) > 1:
        second = ranked[1]
        gap = 100 * ((top.accuracy or 0.0) - (second.accuracy or 0.0))
        text += (f"; {second.approach} reached {second.accuracy:.1%} on {second.n_train} pictures in "
                 f"{second.train_seconds or 0:.0f} s ({gap:.1f} points less")
        if (second.train_seconds or 0) < (top.train_seconds or 0):
            text += ", but faster to train"
        text += ")"
    return text + "."


def compare_html(rows: list[CompareRow], result: dict[str, Any], charts: dict[str, bytes]) -> str:
    """One self-contained page in the report's style: a verdict sentence, the charts with captions in words,
    the leaderboard (charts embedded as data URLs; every name escaped)."""
    from .report.html import CSS, esc, table
    from .storage import HTML_MARKER

    notes = any(r.note for r in rows)
    head = ["approach", "per class", "pictures", "validation accuracy", "training s", "predict img/s",
            "model MB", *(["note"] if notes else [])]
    body = []
    for r in leaderboard(rows) + [r for r in rows if r.accuracy is None]:
        body.append([r.approach, r.size_label, r.n_train,
                     "-" if r.accuracy is None else f"{r.accuracy:.1%}",
                     "-" if r.train_seconds is None else round(r.train_seconds, 1),
                     "-" if r.images_per_second is None else round(r.images_per_second),
                     "-" if r.model_bytes is None else round(r.model_bytes / 1e6, 2),
                     *([r.note] if notes else [])])
    images = "".join(f'<figure style="width:auto"><img alt="{esc(CHART_CAPTIONS.get(name, name))}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
                     f"<figcaption>{esc(CHART_CAPTIONS.get(name, name))}</figcaption></figure>"
                     for name, png in charts.items())
    trained = len([r for r in rows if r.accuracy is not None])
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{HTML_MARKER.decode()}'
            f"<title>pawsight compare: {esc(Path(result['data']).name)}</title><style>{CSS}</style>"
            "</head><body>"
            f"<h1>Which approach for {esc(result['data'])}?</h1>"
            f'<p id="verdict"><b>{esc(verdict(rows))}</b></p>'
            "<p>Each approach trained on the same growing, nested subsets of the training pictures (per "
            f"class) and scored on the same validation pictures; {trained} trainings in "
            f"{result['seconds']:.0f} s (time budget {result['time_budget']:.0f} s).</p>"
            f'<section id="charts"><div class="gallery">{images}</div></section>'
            f'<section id="leaderboard"><h2>Leaderboard</h2>{table(body, head)}</section>'
            "</body></html>\n")


# -- recipes, data, hardware ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """One way to train: an approach and its parameters (what `api.train` takes)."""

    name: str
    approach: str
    params: tuple[tuple[str, Any], ...]
    description: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def backbone(self) -> str:
        return str(self.kwargs.get("model", "efficientnet_lite0"))

    @property
    def flips(self) -> int:
        """Feature passes per picture: mirrored copies count twice."""
        return 2 if self.kwargs.get("tta", self.approach == "classical") else 1

    def command(self, budget: float | None = None, data: str = "DATA") -> str:
        """The `pawsight train` line of this recipe for the folder `data` (shell-quoted)."""
        opts = [f"--approach {self.approach}"]
        for k, v in self.params:
            if k == "time_budget":
                continue
            opts.append(f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {v}")
        if budget is not None and (self.approach == "scratch" or self.kwargs.get("mode") == "finetune"):
            opts.append(f"--time-budget {int(round(budget))}s")
        return f"pawsight train {shlex.quote(data)} " + " ".join(opts)


FROZEN = [
    Recipe("transfer-lite0", "transfer", (), "EfficientNet-Lite0 frozen features + logistic regression"),
    Recipe("transfer-lite0-tta", "transfer", (("tta", True),), "Lite0 frozen, mirrored copies + flip TTA"),
    Recipe("transfer-lite1-tta", "transfer", (("model", "efficientnet_lite1"), ("tta", True)),
           "Lite1 frozen + flip TTA"),
    Recipe("transfer-lite2-tta", "transfer", (("model", "efficientnet_lite2"), ("tta", True)),
           "Lite2 frozen + flip TTA"),
]
CLASSICAL = Recipe("classical", "classical", (), "HOG + colour + LBP + DAISY words, RBF SVM, mirrored copies")
FINETUNE = Recipe("finetune-lite0", "transfer", (("mode", "finetune"),), "EfficientNet-Lite0 fine-tuned")
SCRATCH = Recipe("scratch", "scratch", (), "residual CNN trained from scratch")
RECIPES = [CLASSICAL, *FROZEN, FINETUNE, SCRATCH]


def describe_data(data: PathLike, seed: int = 0, val_fraction: float = 0.2, headers: int = 60
                  ) -> dict[str, Any]:
    """Pictures per class and split, and image sizes from a sample of file headers (no decoding)."""
    from PIL import Image

    from .data import scan

    ds = scan(data, val_fraction=val_fraction, seed=seed)
    counts = ds.counts()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ds.samples), size=min(headers, len(ds.samples)), replace=False) \
        if ds.samples else []
    sizes = []
    for i in pick:
        try:
            with Image.open(ds.samples[int(i)].path) as im:
                sizes.append(im.size)
        except Exception:  # noqa: BLE001 - unreadable files are reported by training, not here
            continue
    train = counts.get("train", {})
    return {"classes": ds.classes, "counts": counts, "n_train": sum(train.values()),
            "n_validation": sum(counts.get("validation", {}).values()),
            "min_per_class": min(train.values()) if train else 0,
            "max_per_class": max(train.values()) if train else 0,
            "median_width": int(np.median([s[0] for s in sizes])) if sizes else None,
            "median_height": int(np.median([s[1] for s in sizes])) if sizes else None,
            "headers_read": len(sizes)}


def describe_hardware() -> dict[str, Any]:
    """Cores, RAM, and a GPU with its memory when PyTorch sees one (torch imported only if installed)."""
    from .system import default_workers

    cores = default_workers()
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    gpu: dict[str, Any] | None = None
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            gpu = {"name": props.name, "memory_bytes": int(props.total_memory),
                   "count": torch.cuda.device_count()}
    except ImportError:
        pass
    return {"cores": cores, "ram_bytes": ram, "gpu": gpu, "load_average": _load_average()}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# -- calibration: a few seconds of each approach's real work -------------------------------------------------

@dataclass
class Calibration:
    """Measured costs on this machine, in seconds (per picture unless said otherwise)."""

    decode: dict[str, float]              # image size (a JSON key) -> seconds per picture, cold
    classical: dict[str, Any]             # setup, words/extract per image, pipeline fit points, predict
    backbones: dict[str, dict[str, Any]]  # name -> setup, feature_per_image, head points
    train_images_per_second: dict[str, float]  # scratch / finetune training throughput
    probe: dict[str, float]               # quick held-out accuracy of small fits: classical, transfer-lite0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds the calibration spent per part


def calibrate(data: PathLike, recipes: list[Recipe] | None = None, seed: int = 0, val_fraction: float = 0.2,
              per_class: int = 16, say: Callable[[str], None] = lambda _: None) -> Calibration:
    """Time the real pieces of each approach on a few of the user's training pictures, in a temporary cache
    (so nothing is found already computed): decoding, feature extraction (classical and each backbone), the
    fit of the classifier on top (on the real features tiled to a few hundred rows, then extrapolated), and a
    few training steps of the networks. Also scores small classical and Lite0 fits on other training
    pictures: a quick, noisy hint (never the validation split)."""
    from .cache import ImageCache
    from .data import scan
    from .models.base import make_model

    recipes = recipes or RECIPES
    t0 = time.perf_counter()
    ds = scan(data, val_fraction=val_fraction, seed=seed)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Any]] = {}
    for s in ds.split("train"):
        by_class.setdefault(s.label, []).append(s)
    # disjoint samples per class: A (a first, small fit: loads and exports), B (timed fit), C (held out)
    n_a, n_b, n_c = 2, per_class, max(2, per_class // 2)
    A, B, C = [], [], []
    for label in sorted(by_class):
        group = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        A += group[:n_a]
        B += group[n_a:n_a + n_b]
        C += group[n_a + n_b:n_a + n_b + n_c]
    if len({s.label for s in A}) < 2 or len({s.label for s in B}) < 2:
        raise PawsightError(f"{data} needs training pictures of at least two classes")
    classes = ds.classes
    cal = Calibration({}, {}, {}, {}, {})
    tmp = Path(tempfile.mkdtemp(prefix="pawsight-calibrate-"))
    try:
        with _cache_root(tmp):
            cache = ImageCache()

            def pixels(prep: Any) -> tuple[Any, Any, Any]:
                t = time.perf_counter()
                a, b, c = (cache.load_samples(x, prep, desc="calibrating") for x in (A, B, C))
                n = len(a.labels) + len(b.labels) + len(c.labels)
                cal.decode[str(prep.size)] = (time.perf_counter() - t) / max(1, n)
                return a, b, c

            classical = next((r for r in recipes if r.approach == "classical"), None)
            if classical is not None:
                _stage(cal, "calibrating classical features", say)
                first = make_model("classical", seed=seed, **classical.kwargs)
                a, b, c = pixels(first.preprocessing)
                t = time.perf_counter()
                first.fit(a.images, a.labels, classes=classes)  # starts the worker processes
                first_total = time.perf_counter() - t
                model = make_model("classical", seed=seed, **classical.kwargs)
                model.fit(b.images, b.labels, classes=classes)
                tm = dict(model.timings_)
                n = len(b.labels)
                words = tm.get("features.fit", 0.0) / max(1, min(n, _daisy_fit_images(model)))
                extract = tm.get("extract", 0.0) / max(1, 2 * n)
                # setup: what the first, tiny fit cost beyond its pictures' share (workers, imports)
                setup = first_total - len(a.labels) * (words + 2 * extract) - first.timings_.get("fit", 0.0)
                cal.classical.update(
                    setup=max(0.0, setup),
                    words_per_image=words,
                    words_images=_daisy_fit_images(model),
                    extract_per_image=extract,
                    pipeline=_time_classical_pipeline(model, b.images, b.labels, seed))
                if len(c.labels):
                    t = time.perf_counter()
                    proba = model.predict_proba(c.images)
                    cal.classical["predict_per_image"] = (time.perf_counter() - t) / len(c.labels)
                    cal.probe["classical"] = float((proba.argmax(1) == c.labels).mean())
            head_points: list[list[float]] | None = None
            for spec in sorted({r.backbone for r in recipes if r.approach == "transfer"}):
                _stage(cal, f"calibrating {spec}", say)
                first = make_model("transfer", model=spec, seed=seed)
                a, b, c = pixels(first.preprocessing)
                first.fit(a.images, a.labels, classes=classes)  # loads the backbone, exports ONNX
                model = make_model("transfer", model=spec, seed=seed)
                model.fit(b.images, b.labels, classes=classes)
                rate = model.timings_["features"] / max(1, len(b.labels))
                # setup = backbone + ONNX export: what the first fit spent beyond its pictures' features
                setup = first.timings_.get("backbone", 0.0) + max(
                    0.0, first.timings_.get("features", 0.0) - rate * len(a.labels))
                if head_points is None:  # the head's cost depends on rows and width, not on the backbone
                    head_points = _time_head(model, b.images, b.labels, seed)
                cal.backbones[spec] = {"setup": setup, "feature_per_image": rate, "head": head_points}
                if len(c.labels) and spec == "efficientnet_lite0":
                    cal.probe["transfer-lite0"] = float((model.predict_proba(c.images).argmax(1)
                                                         == c.labels).mean())
                if any(r.kwargs.get("mode") == "finetune" and r.backbone == spec for r in recipes):
                    _stage(cal, "calibrating fine-tuning steps", say)
                    cal.train_images_per_second["finetune"] = _train_speed(model.net_, b.images, 4, 0.875,
                                                                           steps=2)
            if any(r.approach == "scratch" for r in recipes):
                _stage(cal, "calibrating scratch training steps", say)
                from .models.scratch import build_network

                model = make_model("scratch", seed=seed)
                _, b, _ = pixels(model.preprocessing)
                net = build_network(len(classes), model.width, model.depth)
                cal.train_images_per_second["scratch"] = _train_speed(net, b.images, 64, 0.875)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    _stage(cal, "", say)
    cal.seconds = round(time.perf_counter() - t0, 2)
    return cal


def _stage(cal: Calibration, name: str, say: Callable[[str], None]) -> None:
    """Close the running stage's timer (its seconds into cal.stages) and start `name`'s."""
    now = time.perf_counter()
    last = getattr(cal, "_current", None)
    if last is not None:
        cal.stages[last[0]] = round(now - last[1], 2)
    cal._current = (name.replace("calibrating ", ""), now) if name else None  # type: ignore[attr-defined]
    if name:
        say(name)


def _tiled(F: np.ndarray, y: np.ndarray, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` rows made of the real feature rows `F`, repeated with a little noise: a stand-in of a larger
    training set with the same width and similar separability, for timing a fit."""
    rng = np.random.default_rng(seed)
    idx = np.resize(np.arange(len(F)), rows)
    noise = rng.normal(0.0, 0.1, size=(rows, F.shape[1])) * (F.std(axis=0) + 1e-6)
    return (F[idx] + noise).astype(np.float32), y[idx]


def _time_head(model: Any, X: np.ndarray, y: np.ndarray, seed: int) -> list[list[float]]:
    """Seconds of the frozen-transfer head (logistic regression, C by cross-validation) at two row counts."""
    from .models.transfer import fit_linear_head

    F = model._features(X)  # the fit just before cached these rows: a lookup
    points = []
    for rows in (128, 384):
        Ft, yt = _tiled(F, y, rows, seed)
        t = time.perf_counter()
        fit_linear_head(Ft, yt, len(model.classes_), np.arange(rows), seed)
        points.append([rows, time.perf_counter() - t])  # JSON-clean
    return points


def _time_classical_pipeline(model: Any, X: np.ndarray, y: np.ndarray, seed: int) -> list[list[float]]:
    """Seconds of the classical pipeline's fit (scaling, PCA, SVM with its calibration) at two row counts."""
    from sklearn.base import clone

    from .cache import as_rows
    from .features import extract

    F = extract(model.extractors_, as_rows(X))  # cached: computed by the fit just before
    points = []
    for rows in (200, 600):
        Ft, yt = _tiled(F, y, rows, seed)
        t = time.perf_counter()
        clone(model.pipeline_).fit(Ft, yt)
        points.append([rows, time.perf_counter() - t])  # JSON-clean
    return points


def _daisy_fit_images(model: Any) -> int:
    for e in getattr(model, "extractors_", []):
        if getattr(e, "stateful", False):
            return int(getattr(e, "fit_images", 400))
    return 0


def _train_speed(net: Any, images: np.ndarray, batch: int, crop_fraction: float, steps: int = 3) -> float:
    """Training images per second of `net` (forward, backward, AdamW step) on real pictures at the crop size
    training uses; one warm-up step not counted."""
    import torch

    from .training import default_threads

    torch.set_num_threads(default_threads())
    size = max(32, int(round(images.shape[1] * crop_fraction / 8)) * 8)
    idx = np.resize(np.arange(len(images)), batch)
    x = torch.from_numpy(np.ascontiguousarray(images[idx, :size, :size])).permute(0, 3, 1, 2).float() / 255
    x = x.contiguous(memory_format=torch.channels_last)
    net = net.train().to(memory_format=torch.channels_last)
    with torch.no_grad():
        n_out = net(x[:2]).shape[1]
    head = torch.nn.Linear(n_out, 2)
    params = [p for p in net.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    y = torch.zeros(batch, dtype=torch.long)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(net(x)), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    net.eval()
    return batch / float(np.median(times[1:]))


# -- estimates -----------------------------------------------------------------------------------------------

def _linear(points: list[list[float]], n: float) -> float:
    """Extrapolate seconds at `n` from two measured (size, seconds) points: a fixed part plus a part that
    grows linearly (never below the larger measurement)."""
    (n1, t1), (n2, t2) = sorted(points)[:1] + sorted(points)[-1:]
    slope = max(0.0, (t2 - t1) / (n2 - n1)) if n2 > n1 else t2 / max(1, n2)
    return max(t2 if n >= n2 else 0.0, t1 + slope * (n - n1))


def _power(points: list[list[float]], n: float) -> float:
    """Extrapolate a kernel method's fit time from two timings: between linear and n^1.5 in the rows (two
    noisy small timings on a loaded machine can suggest a steeper growth than the SVM shows at full size)."""
    (n1, t1), (n2, t2) = sorted(points)[:1] + sorted(points)[-1:]
    if n2 <= n1 or t1 <= 0 or t2 <= 0:
        return t2 * n / max(1, n2)
    k = min(1.5, max(1.0, math.log(t2 / t1) / math.log(n2 / n1)))
    return t2 * (n / n2) ** k


def estimate_seconds(recipe: Recipe, cal: Calibration, n_train: int, n_val: int,
                     budget: float | None = None) -> float | None:
    """Predicted wall time of `api.train` with `recipe` on `n_train` + `n_val` pictures, nothing cached
    (a first training; later ones find decoded pixels and features in the cache and are faster)."""
    from .models.base import make_model

    prep = make_model(recipe.approach, **{k: v for k, v in recipe.params if k != "time_budget"}).preprocessing
    decode = cal.decode.get(str(prep.size), max(cal.decode.values(), default=0.0)) * (n_train + n_val)
    if recipe.approach == "classical":
        c = cal.classical
        if not c:
            return None
        return (decode + c["setup"] + c["words_per_image"] * min(n_train, c["words_images"])
                + c["extract_per_image"] * (2 * n_train + n_val) + _power(c["pipeline"], 2 * n_train) + 1.0)
    if recipe.approach == "transfer":
        b = cal.backbones.get(recipe.backbone)
        if not b:
            return None
        frozen = (decode + b["setup"] + b["feature_per_image"] * recipe.flips * (n_train + n_val)
                  + _linear(b["head"], recipe.flips * n_train) + 1.0)
        if recipe.kwargs.get("mode") != "finetune":
            return frozen
        if budget is None:
            speed = cal.train_images_per_second.get("finetune")
            return None if not speed else frozen + 3 * (n_train / speed + n_val / (3 * speed))
        return frozen + budget
    if recipe.approach == "scratch":
        if budget is None:
            speed = cal.train_images_per_second.get("scratch")
            return None if not speed else decode + 10 * (n_train / speed + n_val / (3 * speed)) + 2.0
        return decode + budget + 2.0
    return None


# -- advise --------------------------------------------------------------------------------------------------

def advise(data: PathLike, time_budget: float = 600.0, seed: int = 0, val_fraction: float = 0.2,
           say: Callable[[str], None] = lambda _: None, calibration: Calibration | None = None,
           recipes: list[Recipe] | None = None) -> dict[str, Any]:
    """Data + hardware + calibration -> estimated training time of each recipe (default: RECIPES, every
    approach) and a recommendation."""
    t0 = time.perf_counter()
    for name, value in (("time_budget", time_budget), ("seed", seed), ("val_fraction", val_fraction)):
        check_param(name, value)  # before any work, as for train and compare
    d = describe_data(data, seed=seed, val_fraction=val_fraction)
    hw = describe_hardware()
    recipes = recipes or RECIPES
    cal = calibration or calibrate(data, recipes, seed=seed, val_fraction=val_fraction, say=say)
    estimates = []
    for r in recipes:
        deep_budget = _deep_budget(r, time_budget)
        est = estimate_seconds(r, cal, d["n_train"], d["n_validation"], deep_budget)
        estimates.append({"recipe": r.name, "approach": r.approach, "description": r.description,
                          "params": {**r.kwargs, **({"time_budget": deep_budget} if deep_budget else {})},
                          "command": r.command(deep_budget, str(data)),
                          "estimated_seconds": None if est is None else round(est, 1),
                          "fits_budget": est is not None and est <= time_budget})
    rec = recommend(d, hw, cal, estimates, time_budget, str(data))
    return {"data": d, "hardware": hw, "time_budget": time_budget, "calibration": asdict(cal),
            "estimates": estimates, "recommendation": rec, "seconds": round(time.perf_counter() - t0, 2)}


def _deep_budget(recipe: Recipe, time_budget: float) -> float | None:
    """What a network training gets of the user's budget (the loop plans its epochs to finish on time)."""
    if recipe.approach == "scratch" or recipe.kwargs.get("mode") == "finetune":
        return round(max(30.0, 0.9 * time_budget - 15.0), 0)
    return None


def recommend(d: dict[str, Any], hw: dict[str, Any], cal: Calibration, estimates: list[dict[str, Any]],
              time_budget: float, data: str = "DATA") -> dict[str, Any]:
    """The recipe to try first, with reasons in plain words. Measured facts only: the calibration's times
    and its quick held-out check; the final word belongs to cross-validation (`--approach auto`)."""
    reasons: list[str] = []
    frozen = [e for e in estimates if e["approach"] == "transfer" and e["params"].get("mode") != "finetune"
              and e["fits_budget"]]
    classical = next((e for e in estimates if e["approach"] == "classical"), None)
    n, k = d["min_per_class"], len(d["classes"])
    if not frozen:
        fastest = min((e for e in estimates if e["estimated_seconds"] is not None),
                      key=lambda e: e["estimated_seconds"])
        choice = fastest
        reasons.append(f"nothing fits in {_dur(time_budget)}; the fastest recipe needs about "
                       f"{_dur(fastest['estimated_seconds'])}")
    else:
        choice = frozen[-1]  # the largest backbone that fits: larger ones see more, at a higher cost
        reasons.append(f"{choice['description']} is the largest pretrained backbone whose estimated "
                       f"training time ({_dur(choice['estimated_seconds'])}) fits in your "
                       f"{_dur(time_budget)}; pretrained features need few pictures per class")
    p_cl, p_tr = cal.probe.get("classical"), cal.probe.get("transfer-lite0")
    if p_cl is not None and p_tr is not None:
        check = (f"a quick check (small fits on a few of your training pictures, scored on others) gave "
                 f"classical {p_cl:.0%} and frozen Lite0 {p_tr:.0%}")
        if p_cl >= p_tr + 0.1 and classical is not None and classical["fits_budget"]:
            choice = classical
            reasons.insert(0, check + ": hand-made features look better suited to these pictures "
                           "(unlike the photos the backbone was trained on)")
        elif p_cl >= p_tr - 0.05:
            reasons.append(check + ": too close to call on so few pictures; let cross-validation decide "
                           "(--approach auto)")
        else:
            reasons.append(check)
    if n < 30:
        reasons.append(f"only {n} training pictures in the smallest class: scores on so few pictures vary "
                       "by several points; more pictures help more than a bigger model")
    ft = next((e for e in estimates if e["params"].get("mode") == "finetune"), None)
    speed = cal.train_images_per_second.get("finetune")
    if hw.get("gpu"):
        reasons.append(f"a GPU ({hw['gpu']['name']}) is present: fine-tuning becomes affordable")
    elif speed and ft is not None:
        epochs = (ft["params"].get("time_budget") or 0) * speed / max(1, d["n_train"])
        reasons.append(f"fine-tuning on this CPU trains {speed:.1f} pictures/s: about {epochs:.1f} epochs in "
                       f"{_dur(ft['params'].get('time_budget') or 0)} -- worth it mostly with a GPU or many "
                       "pictures unlike ImageNet's")
    sc = cal.train_images_per_second.get("scratch")
    if sc:
        reasons.append(f"a CNN from scratch trains {sc:.0f} pictures/s here; it needs thousands of pictures "
                       "per class to approach pretrained features")
    reasons.append(f"{k} classes, {d['n_train']} training pictures; decide by measurement with "
                   f"'pawsight train {shlex.quote(data)} --approach auto --time-budget {_dur(time_budget)}' "
                   f"or see the learning curves with 'pawsight compare {shlex.quote(data)}'")
    return {"recipe": choice["recipe"], "approach": choice["approach"], "params": choice["params"],
            "command": choice["command"], "estimated_seconds": choice["estimated_seconds"],
            "reasons": reasons}


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds % 60 < 1 or seconds >= 600 else f"{seconds / 60:.1f}m"


def format_advice(advice: dict[str, Any]) -> str:
    d, hw, rec = advice["data"], advice["hardware"], advice["recommendation"]
    gpu = f"GPU {hw['gpu']['name']} ({hw['gpu']['memory_bytes'] / 2**30:.0f} GB)" if hw.get("gpu") \
        else "no GPU"
    ram = f"{hw['ram_bytes'] / 2**30:.0f} GB RAM" if hw.get("ram_bytes") else "RAM unknown"
    lines = [f"data: {len(d['classes'])} classes ({', '.join(shown(c) for c in d['classes'])}), "
             f"{d['n_train']} training / {d['n_validation']} validation pictures, "
             f"{d['min_per_class']}-{d['max_per_class']} per class"
             + (f", median {d['median_width']}x{d['median_height']} px" if d.get("median_width") else ""),
             f"machine: {hw['cores']} cores, {ram}, {gpu}"
             + (f" (load {hw['load_average']})" if hw.get("load_average") is not None else ""),
             f"calibration: {advice['calibration']['seconds']:.0f} s of real work on this machine", "",
             f"{'recipe':<20} {'estimated':>10}  command"]
    for e in advice["estimates"]:
        est = _dur(e["estimated_seconds"])
        mark = "" if e["fits_budget"] else "  (over budget)"
        lines.append(f"{e['recipe']:<20} {est:>10}  {e['command']}{mark}")
    lines += ["", f"recommended: {rec['recipe']}  ->  {rec['command']}"]
    lines += [f"  - {r}" for r in rec["reasons"]]
    lines.append("estimates are for a first training (nothing cached); later trainings reuse decoded "
                 "pictures and features")
    return "\n".join(lines)


# -- auto: choose by cross-validation on the training split --------------------------------------------------

def auto_candidates(include_finetune: bool = True) -> list[Recipe]:
    return [CLASSICAL, *FROZEN] + ([FINETUNE] if include_finetune else [])


def auto_train(data: PathLike, out: PathLike | None = None, *, time_budget: float = 600.0, seed: int = 0,
               val_fraction: float = 0.2, drop_duplicates: bool = False, overwrite: bool = False,
               exclude: PathLike | None = None, candidates: list[Recipe] | None = None, folds: int = 3,
               say: Callable[[str], None] = lambda _: None) -> tuple[Any, dict[str, Any]]:
    """Score candidate recipes by `folds`-fold cross-validation on the training split (the validation split
    is never looked at), cheapest first and only while the estimated cost fits in `time_budget`; train the
    best with `api.train`; record the advice and every candidate's score in run.json."""
    from . import api
    from .run import read_run_info, write_run_info

    t0 = time.perf_counter()
    check_param("time_budget", time_budget)
    out = Path(out) if out is not None else Path("runs") / f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
    if ((out / "run.json").exists() or (out / "checkpoint").exists()) and not overwrite:
        raise PawsightError(f"{out} already holds a run; choose another --out or add --overwrite")
    candidates = list(candidates or auto_candidates())
    say("calibrating (a few seconds of each approach's real work)")
    cal = calibrate(data, candidates, seed=seed, val_fraction=val_fraction, say=say)
    advice = advise(data, time_budget, seed=seed, val_fraction=val_fraction, calibration=cal,
                    recipes=candidates)
    n_train, n_val = advice["data"]["n_train"], advice["data"]["n_validation"]
    k = max(2, min(folds, advice["data"]["min_per_class"]))
    plans = []
    for r in candidates:
        cost = cv_cost(r, cal, n_train, k)
        final = estimate_seconds(r, cal, n_train, n_val)
        plans.append((r, cost, final))
    plans.sort(key=lambda p: (p[1] is None, p[1] or 0.0))
    scored: list[dict[str, Any]] = []
    for r, cost, final in plans:
        entry: dict[str, Any] = {"recipe": r.name, "approach": r.approach, "params": r.kwargs,
                                 "description": r.description,
                                 "estimated_cv_seconds": None if cost is None else round(cost, 1)}
        scored.append(entry)
        left = time_budget - (time.perf_counter() - t0)
        params = r.kwargs
        if r.kwargs.get("mode") == "finetune":
            # one budget for the held-out fit and one for the final training, after the frozen recipes
            done = [e for e in scored if e.get("cv_accuracy") is not None]
            reserve = max([e.get("final_estimate") or 0.0 for e in done], default=0.0)
            share = (left - reserve - 30.0) / 2.2
            speed = cal.train_images_per_second.get("finetune") or 0.0
            if share < max(60.0, 2 * n_train / max(speed, 1e-9)):  # at least two epochs
                entry["status"] = "skipped: the time budget does not allow fine-tuning for two epochs"
                continue
            params = {**params, "time_budget": round(share, 0)}
            entry["params"] = params
        elif cost is None or final is None or cost + final > left:
            entry["status"] = (f"skipped: estimated {_dur((cost or 0) + (final or 0))} for cross-validation "
                               f"and training, {_dur(max(0.0, left))} left")
            say(f"{r.name}: {entry['status']}")
            continue
        say(f"cross-validating {r.name} ({k} folds)")
        t = time.perf_counter()
        entry.update(cross_validate(data, r.approach, params, seed=seed, val_fraction=val_fraction, folds=k,
                                    holdout=r.kwargs.get("mode") == "finetune",
                                    drop_duplicates=drop_duplicates, exclude=exclude))
        entry["seconds"] = round(time.perf_counter() - t, 2)
        entry["final_estimate"] = final
        entry["status"] = "scored"
        say(f"{r.name}: cross-validated accuracy {entry['cv_accuracy']:.2%} in {entry['seconds']:.0f} s")
    done = [e for e in scored if e.get("cv_accuracy") is not None]
    if done:
        best = max(done, key=lambda e: (e["cv_accuracy"], -e["cv_log_loss"]))
        say(f"training the winner: {best['recipe']}")
    else:  # not even one cross-validation fits: train the fastest candidate rather than nothing
        fastest = min((p for p in plans if p[2] is not None and p[0].kwargs.get("mode") != "finetune"),
                      key=lambda p: p[2], default=None)
        if fastest is None:
            raise PawsightError("no candidate recipe can be estimated on this data; train one approach "
                                "directly")
        best = next(e for e in scored if e["recipe"] == fastest[0].name)
        best["status"] = "chosen without cross-validation: the time budget allowed none"
        say(f"the time budget ({_dur(time_budget)}) allows no cross-validation; training the fastest "
            f"candidate, {best['recipe']} (estimated {_dur(fastest[2])})")
    model, info = api.train(data, best["approach"], out, seed=seed, val_fraction=val_fraction,
                            drop_duplicates=drop_duplicates, overwrite=overwrite, exclude=exclude,
                            **best["params"])
    if not info:
        return model, info
    info = read_run_info(out)
    info["auto"] = {"time_budget": time_budget, "folds": k, "winner": best["recipe"],
                    "seconds": round(time.perf_counter() - t0, 2),
                    "candidates": [{kk: v for kk, v in e.items() if kk != "final_estimate"} for e in scored],
                    "advice": {"recommendation": advice["recommendation"], "estimates": advice["estimates"],
                               "hardware": advice["hardware"]}}
    write_run_info(out, info)
    return model, info


def cv_cost(r: Recipe, cal: Calibration, n_train: int, folds: int) -> float | None:
    """Estimated seconds to cross-validate `r`: frozen features are computed once (cached per picture) and
    only the head is refitted per fold; the classical visual words are relearnt per fold."""
    from .models.base import make_model

    part = n_train * (folds - 1) / folds
    if r.approach == "classical":
        c = cal.classical
        if not c:
            return None
        decode = cal.decode.get(str(make_model("classical", **r.kwargs).preprocessing.size), 0.0) * n_train
        return decode + folds * (c["setup"] + c["words_per_image"] * min(part, c["words_images"])
                                 + c["extract_per_image"] * (2 * part + n_train - part)
                                 + _power(c["pipeline"], 2 * part))
    if r.approach == "transfer":
        b = cal.backbones.get(r.backbone)
        if not b:
            return None
        base = (max(cal.decode.values(), default=0.0) * n_train + b["setup"]
                + b["feature_per_image"] * r.flips * n_train + folds * _linear(b["head"], r.flips * part))
        return base  # fine-tuning's own fit is planned from the budget left (auto_train), not from this
    return None


def cross_validate(data: PathLike, approach: str, params: dict[str, Any], *, seed: int = 0,
                   val_fraction: float = 0.2, folds: int = 3, holdout: bool = False,
                   drop_duplicates: bool = False, exclude: PathLike | None = None) -> dict[str, Any]:
    """Stratified `folds`-fold cross-validation of one recipe on the training split only (with `holdout`:
    the first fold only, for recipes too slow to fit k times), on the pictures the final training will use
    (`drop_duplicates` as in `train`: otherwise a copy in another fold flatters the score). Decoded pixels
    and features come from the caches, so the final training afterwards does not pay for them again."""
    from sklearn.model_selection import StratifiedKFold

    from .cache import ImageCache, take
    from .data import scan
    from .dedup import drop_duplicates as without_duplicates
    from .models.base import make_model

    ds = scan(data, val_fraction=val_fraction, seed=seed)
    if exclude is not None:  # the pictures the final training leaves out are left out of its choice too
        from .issues.output import without_excluded

        ds = without_excluded(ds, exclude, data)[0]
    prep = make_model(approach, **params).preprocessing
    cache = ImageCache()
    if drop_duplicates:
        ds, _ = without_duplicates(ds, cache, prep)
    tr = cache.load_samples(ds.split("train"), prep, desc="decoding train")
    X, y = tr.images, tr.labels
    proba = np.full((len(y), len(ds.classes)), np.nan)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    for fit_idx, test_idx in splits[:1] if holdout else splits:
        model = make_model(approach, seed=seed, **params)
        model.fit(take(X, fit_idx), y[fit_idx], classes=ds.classes)  # lazy rows: read batch by batch
        proba[test_idx] = model.predict_proba(take(X, test_idx))
    scored = ~np.isnan(proba[:, 0])
    p, t = proba[scored], y[scored]
    return {"cv_accuracy": round(float((p.argmax(1) == t).mean()), 4),
            "cv_log_loss": round(float(-np.log(np.clip(p[np.arange(len(t)), t], 1e-12, 1)).mean()), 4),
            "cv_pictures": int(scored.sum()), "folds": 1 if holdout else folds}
