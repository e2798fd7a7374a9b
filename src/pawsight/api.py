"""The Python API; the CLI is a thin layer over these functions.

    import pawsight
    model, info = pawsight.train("data/", approach="classical", out="runs/hog-svm", model="svm-rbf")
    pawsight.evaluate("runs/hog-svm", "more_photos/")["accuracy"]
    pawsight.predict("runs/hog-svm", ["my_cat.jpg"])
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .cache import ImageCache
from .data import DataSet, Skip, counts_of, per_class_subset, scan
from .errors import PawsightError, shown
from .options import check_param
from .run import (
    check_out_vs_data,
    mark_failed,
    mark_interrupted,
    open_for_training,
    resume_settings,
    save_evaluation,
    weights_record,
    write_manifest,
    write_run_info,
)
from .scoring import evaluate
from .system import release_freed_memory

PathLike = str | os.PathLike[str]
__all__ = ["evaluate", "load", "predict", "train"]  # evaluate lives in scoring.py (the waist), shown here


def load(path: PathLike, *, threshold: float | None = None, engine: str = "auto"):
    """The predictor (pawsight.inference.Predictor) of a run directory (any approach) or an exported .onnx
    file: predict / predict_proba / predict_records on paths, PIL images, uint8 arrays or bytes.
    `engine` "torch" runs a deep run's model in eager PyTorch instead of ONNX Runtime."""
    from .inference import load as load_predictor

    return load_predictor(path, threshold=threshold, engine=engine)


def default_run_dir(approach: str) -> Path:
    """Where `train` writes when no `out` is given: runs/<approach>-<date>-<time>."""
    return Path("runs") / f"{approach}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(data: PathLike, approach: str = "transfer", out: PathLike | None = None, *, seed: int = 0,
          val_fraction: float = 0.2, drop_duplicates: bool = False, resume: bool = False,
          overwrite: bool = False, cache: ImageCache | None = None, per_class: int | None = None,
          exclude: PathLike | None = None, **params: Any):
    """Train a model of `approach` on the data folder `data`, write the run directory `out`.

    `exclude`: a CSV written by `pawsight data issues` (rows with exclude=yes) or any list of paths: those
    pictures are left out of training and validation, and run.json lists them (data.excluded).

    `per_class`: train on at most that many pictures per class (a seeded subset of the training split,
    nested across sizes; the validation split is unchanged), as `pawsight compare` does for learning curves.

    Returns (model, info) where info is what `run.json` holds (metrics, timings, data summary).
    `overwrite` replaces only a pawsight run (only the files pawsight wrote); `resume` continues `out` with
    the options it was started with (approach, seed, val_fraction, drop_duplicates, model parameters).
    """
    from .models.base import make_model

    t0 = time.perf_counter()
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run directory
    out = Path(out) if out is not None else default_run_dir(approach)
    check_param("val_fraction", val_fraction)
    if resume:
        previous = resume_settings(out)
        approach, seed, val_fraction = previous["approach"], previous["seed"], previous["val_fraction"]
        drop_duplicates = previous["drop_duplicates"]
        exclude = previous.get("exclude") if exclude is None else exclude
        params = {k: v for k, v in {**previous["params"], **params}.items() if k != "seed"}  # seed: below
    check_out_vs_data(out, Path(data))
    model = make_model(approach, seed=seed, **params) if "seed" in _accepted(approach) else \
        make_model(approach, **params)
    model.preprocessing  # noqa: B018 - resolves the model by name: a bad --model fails before --out is made
    if exclude is not None and not Path(exclude).is_file():  # before any work: a typo is one line at once
        what = "a folder, not a file" if Path(exclude).is_dir() else "no such file"
        raise PawsightError(f"--exclude {shown(exclude)}: {what} (give the CSV `pawsight data issues` "
                            "wrote, or a list of paths)")
    ds = scan(data, val_fraction=val_fraction, seed=seed)
    excluded: list[dict[str, str]] = []
    if exclude is not None:
        from .issues.output import without_excluded

        ds, excluded, absent = without_excluded(ds, exclude, data)
        if main:
            print(f"excluding {len(excluded)} picture(s) listed in {shown(exclude)}"
                  + (f" ({absent} listed picture(s) are not in {shown(data)})" if absent else ""),
                  file=sys.stderr)
    if per_class is not None:
        ds = replace(ds, samples=per_class_subset(ds.samples, per_class, seed))
    if not ds.split("train"):
        raise PawsightError(f"{data} has no training images "
                            f"(expected {data}/<class>/ or {data}/train/<class>/)")
    lock = None
    created = not out.exists()
    if main:
        try:
            lock, note = open_for_training(out, overwrite=overwrite, resume=resume)
        except OSError as exc:  # --out under /proc, on a read-only disk, below a file, no permission...
            what = "a file is in the way" if isinstance(exc, FileExistsError | NotADirectoryError) else \
                (exc.strerror or str(exc))
            raise PawsightError(f"cannot write the run directory {out}: {what}; "
                                "choose another --out") from None
        if note:
            print(f"note: {note}", file=sys.stderr)
    else:
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(model, ds, data, out, approach, seed, val_fraction, drop_duplicates, cache, main, t0,
                      per_class=per_class,
                      exclude=(str(Path(exclude).resolve()), excluded) if exclude is not None else None)
    except Exception as exc:
        if main and created and not (out / "run.json").exists() and lock is not None:
            lock.release(remove=True)  # failed before writing anything: leave no empty run folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
            raise
        if main:
            reason = str(exc) if isinstance(exc, PawsightError) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # the original error is what the user must see
                mark_failed(out, reason)
        raise
    except KeyboardInterrupt:  # Ctrl-C/SIGTERM outside the training loop (which keeps its weights itself)
        if main:
            with contextlib.suppress(Exception):
                mark_interrupted(out)
        raise
    finally:
        if lock is not None:
            lock.release()


MIN_VALIDATION_PER_CLASS = 5  # below this, one picture moves a class's validation accuracy by 20+ points


def thin_validation(counts: dict[str, int], validated: bool) -> list[str]:
    """Warnings for classes whose validation accuracy means little: a class with one picture must not read as
    "validation accuracy 100%" without a word."""
    if not validated:
        return []
    out = []
    for name, n in counts.items():
        if n == 0:
            out.append(f"class {name!r} has no validation pictures: the validation accuracy says nothing "
                       "about it (add pictures, or give a validation/ folder)")
        elif n < MIN_VALIDATION_PER_CLASS:
            out.append(f"class {name!r} has only {n} validation picture(s): its share of the validation "
                       f"accuracy rests on so few that one picture moves it by {100 // n} points")
    return out


def _train(model, ds: DataSet, data: PathLike, out: Path, approach: str, seed: int, val_fraction: float,
           drop_duplicates: bool, cache: ImageCache | None, main: bool, t0: float,
           per_class: int | None = None, exclude: tuple[str, list[dict[str, str]]] | None = None):
    timings: dict[str, float] = {}
    prep = model.preprocessing
    from .inference import UNKNOWN

    if UNKNOWN in ds.classes and getattr(model, "neither", False):
        # "unknown" is the neither answer's label: with a class of that name the two could not be told apart
        model.set_params(neither=False)
        if main:
            print(f"note: a class is named '{UNKNOWN}', the label of the neither answer; this run answers "
                  f"with its classes only (no neither answer)", file=sys.stderr)
    # Every option `train --resume` needs, written first so an interrupted run continues with the same
    # settings; replaced when done.
    options = {"approach": approach, "classes": ds.classes, "seed": seed, "val_fraction": val_fraction,
               "drop_duplicates": drop_duplicates, "params": _jsonable(model.get_params()),
               "preprocessing": prep.to_dict(), **({"per_class": per_class} if per_class is not None else {}),
               **({"exclude": exclude[0]} if exclude else {})}
    if main:
        write_run_info(out, {**options, "status": "training", "data": {"root": str(Path(data).resolve())}})
    cache = cache or ImageCache()
    dropped: list[dict[str, Any]] = []
    if drop_duplicates:
        ds, dropped = _drop_duplicates(ds, cache, prep)
    timings["scan"] = time.perf_counter() - t0

    t = time.perf_counter()
    tr = cache.load_samples(ds.split("train"), prep, desc="decoding train", keep_meta=False)
    va = cache.load_samples(ds.split("validation"), prep, desc="decoding validation", keep_meta=False)
    timings["decode"] = time.perf_counter() - t
    release_freed_memory()  # the decoding threads' temporaries: not carried into the fit (system.py)
    if len(set(tr.labels.tolist())) < 2:
        raise PawsightError("fewer than two classes have readable training images; nothing to learn")

    t = time.perf_counter()
    model.fit(tr.images, tr.labels, va.images if len(va.labels) else None,
              va.labels if len(va.labels) else None, classes=ds.classes, run_dir=out)
    timings["fit"] = time.perf_counter() - t
    timings.update({f"fit.{k}": v for k, v in getattr(model, "timings_", {}).items()})
    release_freed_memory()  # the fit's temporaries: not carried into export and evaluation
    if not main:
        return model, {}

    t = time.perf_counter()
    model.save(out)
    used = [(p, ds.classes[int(y)], split) for split, d in (("train", tr), ("validation", va))
            for p, y in zip(d.paths, d.labels, strict=True)]
    write_manifest(out, ds.root, used)
    timings["save"] = time.perf_counter() - t
    graph: dict[str, Any] = {}
    if approach != "classical":
        t = time.perf_counter()
        graph = _export_graph(out, model, va.images[:16] if len(va.labels) else None)
        timings["export"] = time.perf_counter() - t
        release_freed_memory()

    metrics: dict[str, Any] = {"train_size": len(tr.labels)}
    if len(va.labels):
        from .inference import predictor_of
        from .run import GRAPH_FILE
        from .scoring import score

        # THE evaluation, through the predictor `pawsight evaluate` and `predict` use for this run (its
        # ONNX graph when there is one): the saved validation answers are exactly theirs
        t = time.perf_counter()
        blob = (out / GRAPH_FILE).read_bytes() if graph else None
        predictor = predictor_of(model, {**options, "approach": approach}, blob, name=str(out / GRAPH_FILE))
        result, unreadable = score(predictor, va.paths, va.labels.tolist(), ds.classes)
        validation = {**result, "split": "validation",
                      "data": str(Path(data).resolve()),
                      "run": str(out), "source": "training",
                      "skipped": [s.to_dict() for s in va.skipped + unreadable]}
        metrics["validation"] = {k: validation[k] for k in VALIDATION_METRICS if k in validation}
        save_evaluation(out, validation)
        timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    info = {
        **options,
        "status": "interrupted" if getattr(model, "interrupted_", False) else "done",
        "data": {"root": str(Path(data).resolve()), "layout": ds.layout,
                 "counts": {"train": counts_of(ds.classes, tr.labels),  # what was read, not what was listed
                            **({"validation": counts_of(ds.classes, va.labels)} if ds.split("validation")
                               else {})},
                 "skipped": [s.to_dict() for s in ds.skipped + tr.skipped + va.skipped],
                 "ignored": [s.to_dict() for s in ds.ignored],
                 "dropped_duplicates": dropped,
                 **({"excluded": exclude[1]} if exclude else {})},
        "metrics": metrics, "timings": {k: round(v, 3) for k, v in timings.items()}, **graph,
        # validation accuracy against training size, measured while the features were at hand (classical,
        # frozen transfer): the report draws it and never retrains
        **({"learning_curve": model.learning_curve_} if getattr(model, "learning_curve_", None) else {}),
        "warnings": thin_validation(counts_of(ds.classes, va.labels), bool(ds.split("validation"))),
        **weights_record(out),  # load_model refuses weights other than these (a swapped model.json + weights)
    }
    write_run_info(out, info)
    _draw_curves(out)
    return model, info


# what run.json keeps of the validation evaluation (the whole one, per picture, is under RUN/evaluations/)
VALIDATION_METRICS = ("accuracy", "n_images", "n_errors", "log_loss", "macro_f1", "per_class",
                      "confusion_matrix", "confusion_columns", "classes", "unknown", "accuracy_answered",
                      "threshold")


def _export_graph(out: Path, model: Any, samples: np.ndarray | None) -> dict[str, Any]:
    """RUN/model.onnx (export.py, parity-checked against PyTorch): what makes predicting and serving the run
    directory fast to start and free of PyTorch. A failure is one warning line; the run then predicts
    through PyTorch."""
    from .export import export_onnx
    from .run import graph_record

    try:
        return graph_record(out, export_onnx(out, samples=samples, model=model)["sha256"])
    except Exception as exc:  # noqa: BLE001 - exporter gaps for exotic backbones must not fail a training
        print(f"note: the run was not saved as ONNX ({shown(str(exc))[:200]}); it predicts through PyTorch",
              file=sys.stderr)
        return {}


def _draw_curves(out: Path) -> None:
    """Training or learning curves as RUN/plots/*.png (report.plots). Drawing is a
    convenience: a failure is one warning line, never a failed training (`pawsight plot RUN` redraws)."""
    try:
        from .report.plots import plot_run

        plot_run(out)
    except Exception as exc:  # noqa: BLE001
        import sys

        print(f"warning: could not draw the training curves ({type(exc).__name__}: {exc}); "
              f"'pawsight plot {out}' draws them later", file=sys.stderr)


def predict(run_dir: PathLike, paths: list[PathLike], top_k: int = 1, model=None,
            threshold: float | None = None) -> tuple[list[dict[str, Any]], list[Skip]]:
    """Label image files (folders are searched) with a run directory or an exported .onnx file.

    Returns (predictions, skipped files with reasons); each prediction is the predictor's answer record
    (inference.answer_record: label, closest, probability, probabilities, unknown_score, unknown_threshold,
    summary) plus `path` and `top` (the `top_k` most probable classes)."""
    from .data import list_files
    from .inference import load as load_predictor
    from .inference import predict_files, top_classes

    check_param("top_k", top_k)
    model = model or load_predictor(run_dir, threshold=threshold)
    files: list[Path] = []
    skipped: list[Skip] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(list_files(p, skipped))
        else:
            files.append(p)
    out = []
    for path, record, error in predict_files(model, files):
        if record is None:
            skipped.append(Skip(path, str(error)))
            continue
        out.append({"path": path, **record, "top": top_classes(record["probabilities"], top_k)})
    return out, skipped


# -- helpers ---------------------------------------------------------------------------------------------

def _accepted(approach: str) -> set[str]:
    import inspect

    from .models.base import model_class

    return set(inspect.signature(model_class(approach).__init__).parameters)


def _drop_duplicates(ds: DataSet, cache: ImageCache, prep) -> tuple[DataSet, list[dict[str, Any]]]:
    from .dedup import drop_duplicates

    return drop_duplicates(ds, cache, prep)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
