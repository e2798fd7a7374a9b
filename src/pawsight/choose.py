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
import html
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PawsightError, shown
from .storage import atomic_write_bytes, atomic_write_json, atomic_write_text

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
            raise PawsightError(f"--sizes takes positive numbers of pictures per class or 'all', got {part!r}")
    return sorted(sizes, key=lambda s: math.inf if s is None else s)


def parse_approaches(text: str) -> list[str]:
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in APPROACHES]
    if unknown or not names:
        raise PawsightError(f"--approaches takes a comma-separated list of {', '.join(APPROACHES)}; "
                            f"got {shown(text)!r}")
    return list(dict.fromkeys(names))


# -- compare --------------------------------------------------------------------------------------------------

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
            say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Train every approach at every per-class size (nested subsets, one validation split) and write
    compare.csv, compare.json, accuracy-vs-size.png, accuracy-vs-time.png and compare.html into `out`."""
    from . import api
    from .data import scan

    t0 = time.perf_counter()
    out = Path(out) if out is not None else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    _claim_output(out, "compare.json", overwrite)
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
        for approach in [a for a in approaches if a in FAST] + [a for a in approaches if a not in FAST]:
            for k, size in enumerate(plan):
                row = CompareRow(approach, size, _n_train(counts, size), None, None, None, None)
                rows.append(row)
                left = time_budget - (time.perf_counter() - t0)
                params: dict[str, Any] = {}
                if approach == "scratch":
                    budgets = _scratch_budgets(plan[k:], counts, left)
                    if budgets.get(size) is None:
                        row.note = "skipped: time budget exhausted"
                        say(f"{approach} at {row.size_label} per class: skipped (time budget exhausted)")
                        continue
                    params["time_budget"] = budgets[size]
                elif left <= 0:
                    row.note = "skipped: time budget exhausted"
                    say(f"{approach} at {row.size_label} per class: skipped (time budget exhausted)")
                    continue
                run_dir = out / "runs" / f"{approach}-{row.size_label}"
                t = time.perf_counter()
                model, info = api.train(data, approach, run_dir, seed=seed, per_class=size, overwrite=True,
                                        **params)
                row.train_seconds = round(time.perf_counter() - t, 3)
                row.n_train = int(info["metrics"]["train_size"])
                val = info["metrics"].get("validation") or {}
                row.accuracy = val.get("accuracy")
                row.run = str(run_dir)
                row.model_bytes = sum(p.stat().st_size for p in run_dir.glob("model.*") if p.is_file())
                row.images_per_second = prediction_speed(model, data, seed, speed_cache, variant=len(rows))
                acc = "n/a" if row.accuracy is None else f"{row.accuracy:.1%}"
                say(f"{approach} at {row.size_label} per class ({row.n_train} pictures): {acc} "
                    f"in {row.train_seconds:.1f} s")
    finally:
        import shutil

        shutil.rmtree(speed_cache, ignore_errors=True)
    result = {"data": str(Path(data).resolve()), "approaches": list(approaches),
              "sizes": ["all" if s is None else s for s in plan], "time_budget": time_budget,
              "seconds": round(time.perf_counter() - t0, 3), "rows": [asdict(r) for r in rows]}
    write_compare(out, rows, result)
    result["out"] = str(out)
    return result


def _claim_output(out: Path, marker: str, overwrite: bool) -> None:
    """`out` must be new, empty, or (with overwrite) a folder pawsight wrote for the same command."""
    if out.exists() and not out.is_dir():
        raise PawsightError(f"{out} is a file; --out takes a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise PawsightError(f"{out} already holds files pawsight did not write; choose another --out")
        if not overwrite:
            raise PawsightError(f"{out} already holds results; choose another --out or add --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def _n_train(counts: dict[str, int], size: int | None) -> int:
    return sum(counts.values()) if size is None else sum(min(size, c) for c in counts.values())


def _scratch_budgets(sizes: list[int | None], counts: dict[str, int], seconds: float) -> dict[int | None, float]:
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


def prediction_speed(model: Any, data: PathLike, seed: int, scratch_cache: Path, variant: int = 0) -> float | None:
    """Pictures per second of `model.predict_proba` on decoded validation pictures whose features are not
    cached (feature caches pointed at `scratch_cache`, pixels changed in the lowest bit per `variant` so no
    earlier row matches): what predicting new pictures costs, decoding excluded."""
    from .cache import ImageCache
    from .data import scan

    ds = scan(data, seed=seed)
    samples = ds.split("validation") or ds.split("train")
    decoded = ImageCache().load_samples(samples[: SPEED_IMAGES + 4], model.preprocessing, desc="decoding")
    X = decoded.images ^ np.uint8(variant % 7 + 1)
    if len(X) < 5:
        return None
    with _cache_root(scratch_cache):
        model.predict_proba(X[:4])  # warm-up: sessions, ONNX export (once per backbone)
        t = time.perf_counter()
        model.predict_proba(X[4:])
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
            lines.append(f"{r.approach} at {r.size_label} per class: {r.note}")
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
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = {}
    for name, x_of, xlabel in (("accuracy-vs-size.png", lambda r: r.n_train, "training pictures (all classes)"),
                               ("accuracy-vs-time.png", lambda r: r.train_seconds, "training time (s)")):
        fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=100)
        for approach in dict.fromkeys(r.approach for r in rows):
            pts = sorted((x_of(r), r.accuracy) for r in rows
                         if r.approach == approach and r.accuracy is not None and x_of(r))
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=approach)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def compare_html(rows: list[CompareRow], result: dict[str, Any], charts: dict[str, bytes]) -> str:
    """One self-contained page (charts embedded as data URLs; every name escaped)."""
    e = html.escape
    head = ["approach", "per class", "pictures", "validation accuracy", "training s", "predict img/s",
            "model MB", "note"]
    body = []
    for r in leaderboard(rows) + [r for r in rows if r.accuracy is None]:
        cells = [r.approach, r.size_label, str(r.n_train),
                 "-" if r.accuracy is None else f"{r.accuracy:.1%}",
                 "-" if r.train_seconds is None else f"{r.train_seconds:.1f}",
                 "-" if r.images_per_second is None else f"{r.images_per_second:.0f}",
                 "-" if r.model_bytes is None else f"{r.model_bytes / 1e6:.2f}", r.note]
        body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    images = "".join(f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode("ascii")}"><figcaption>{e(name)}</figcaption></figure>'
                     for name, png in charts.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pawsight compare: {e(Path(result['data']).name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}td:first-child{{text-align:left}}
figure{{display:inline-block;margin:0 1em 1em 0}}</style></head><body>
<h1>Which approach for {e(result['data'])}?</h1>
<p>Each approach trained on the same growing, nested subsets of the training pictures (per class) and scored
on the same validation pictures; {len([r for r in rows if r.accuracy is not None])} trainings in
{result['seconds']:.0f} s (time budget {result['time_budget']:.0f} s).</p>
<section id="charts">{images}</section>
<section id="leaderboard"><h2>Leaderboard</h2><table><thead><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}
</tr></thead><tbody>{''.join(body)}</tbody></table></section>
</body></html>
"""
