"""Scoring a run on labelled pictures — THE evaluation every surface shows (the `evaluate` command, the
Python API, the report and plots): pictures chosen by one rule, predicted through `inference` (the waist), the
labels given by `inference.decide`, metrics by `evaluation`, saved under RUN/evaluations/ by `run`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cache import ImageCache
from .data import SPLITS, DataSet, Sample, Skip, scan
from .errors import PawsightError
from .evaluation import classification_metrics, picture_predictions
from .progress import progress
from .run import read_manifest, save_evaluation, sha256_many

PathLike = str | os.PathLike[str]


def evaluate(run_dir: PathLike, data: PathLike, split: str | None = None,
             cache: ImageCache | None = None, save: bool = True, threshold: float | None = None
             ) -> dict[str, Any]:
    """Score a trained run (or an exported .onnx file) on a data folder. `split`: train, validation, test or
    all; default: the test split if the folder has one, else the pictures the run validated on when `data` is
    its training folder (from its manifest, so pictures added since are not scored), else validation for
    pre-split folders, else every picture in the folder.

    Returns the metrics (evaluation.classification_metrics: accuracy rates the most probable class; the
    confusion matrix and per-class scores the answers given), `unknown` (how many pictures inference.decide
    answers "unknown": neither score above `threshold`, default the run's), `accuracy_answered` (accuracy of
    the labels it does give), `predictions` (one dict per picture: path, label, predicted (decide's answer),
    probabilities in the model's class order, unknown_score, loss = -log p(true class)) and `saved`: the
    file under RUN/evaluations/ it was saved to (None with `save=False`, for an .onnx file, or when the run
    directory cannot be written: then `save_error` says why). `cache` is accepted for compatibility and not
    used: an evaluation reads the picture files, as predict does (see `score`).
    """
    from .inference import load as load_predictor

    model = load_predictor(run_dir, threshold=threshold)
    info = model.info
    t0 = time.perf_counter()
    classes = list(model.classes_)
    samples, used_split, ds, selection = evaluation_samples(data, split, info, run_dir, classes)
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise PawsightError(f"{data} has class folder(s) the model does not know: {', '.join(unknown)} "
                            f"(model classes: {', '.join(classes)})")
    remap = {i: classes.index(c) for i, c in enumerate(ds.classes)}
    samples = [Sample(s.path, remap[s.label], s.split) for s in samples]
    result, unreadable = score(model, [s.path for s in samples], [s.label for s in samples], classes)
    result.update(split=used_split, selection=selection, data=str(Path(data).resolve()), run=str(run_dir),
                  skipped=[s.to_dict() for s in ds.skipped + unreadable])
    result["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    result["saved"] = None
    if save and Path(run_dir).is_dir():
        try:
            result["saved"] = str(save_evaluation(run_dir, result))
        except (OSError, PawsightError) as exc:  # a read-only run (someone else's) still gets its scores
            result["save_error"] = str(exc)
    return result


def score(predictor: Any, paths: list[PathLike], labels: list[int], classes: list[str]
          ) -> tuple[dict[str, Any], list[Skip]]:
    """(metrics, answers and per-picture predictions; the unreadable files) of labelled picture files through
    `predictor` (an inference.Predictor): the body of every evaluation, the one training saves included.

    The pictures are read from their files by `inference.predict_files`, exactly as `pawsight predict` reads
    them (streamed, constant memory), never from the decode cache, whose working-size copies are
    compressed for training: an evaluation's answers are predict's answers, to the last digit."""
    from .inference import predict_files

    t = time.perf_counter()
    rows: list[list[float]] = []
    scores: list[float | None] = []
    answers: list[str] = []
    kept: list[tuple[Path, int]] = []
    unreadable: list[Skip] = []
    results = predict_files(predictor, paths)
    for (path, record, reason), y in zip(progress(results, total=len(paths), desc="evaluating", unit="img"),
                                         labels, strict=True):
        if record is None:
            unreadable.append(Skip(str(path), str(reason)))
            continue
        kept.append((Path(path), int(y)))
        rows.append([record["probabilities"][c] for c in classes])
        scores.append(record["unknown_score"])
        answers.append(record["label"])
    seconds_predict = time.perf_counter() - t
    proba = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(classes))
    y_true = np.asarray([y for _, y in kept], dtype=np.int64)
    neither = None if not scores or scores[0] is None else np.asarray(scores, dtype=np.float64)
    result = classification_metrics(y_true, proba, classes, answers)
    result.update(answered(answers, [classes[i] for i in y_true]), threshold=predictor.threshold,
                  seconds={"predict": round(seconds_predict, 3)},
                  predictions=picture_predictions([p for p, _ in kept], y_true, proba, classes, answers,
                                                  neither))
    return result, unreadable


def answered(answers: list[str], truth: list[str]) -> dict[str, Any]:
    """How many pictures were answered "unknown", and the accuracy of the class labels that were given."""
    from .inference import UNKNOWN

    given = [(a, t) for a, t in zip(answers, truth, strict=True) if a != UNKNOWN]
    return {"unknown": len(answers) - len(given),
            "accuracy_answered": (sum(a == t for a, t in given) / len(given)) if given else None}


def evaluation_samples(data: PathLike, split: str | None, info: dict[str, Any], run_dir: PathLike,
                        classes: list[str]) -> tuple[list[Sample], str, DataSet, str]:
    """(samples, split, data set, selection); selection says where the list came from: "manifest" (the
    run's own record of its training/validation pictures) or "folder" (what the folder holds now)."""
    ds = scan(data, val_fraction=0.0)
    root = (info.get("data") or {}).get("root")
    manifest = read_manifest(run_dir) if root and os.path.realpath(data) == os.path.realpath(root) else []
    if split in (None, "auto"):
        if "test" in ds.splits:
            split = "test"
        elif manifest or (ds.layout == "split-folders" and "validation" in ds.splits):
            split = "validation"
        else:
            split = "all"
    if split == "all":
        return ds.samples, "all", ds, "folder"
    if split not in SPLITS:
        raise PawsightError(f"unknown split {split!r}; use train, validation, test or all")
    if manifest and split in ("train", "validation"):
        return (*manifest_samples(Path(data), manifest, split, classes), "manifest")
    if ds.layout == "class-folders" and split in ("train", "validation"):
        # the same seeded split training made, so 'validation' means the held-out pictures
        ds = scan(data, val_fraction=info.get("val_fraction", 0.2), seed=info.get("seed", 0))
    samples = ds.split(split)
    if not samples:
        raise PawsightError(f"{data} has no '{split}' pictures (splits present: {', '.join(ds.splits)})")
    return samples, split, ds, "folder"


def manifest_samples(root: Path, manifest: list[dict[str, str]], split: str, classes: list[str]
                      ) -> tuple[list[Sample], str, DataSet]:
    """The pictures of `split` the run recorded; removed or changed ones are skipped with the reason."""
    wanted = [m for m in manifest if m["split"] == split and m["label"] in classes]
    paths = [root / m["path"] for m in wanted]
    hashes = sha256_many(paths)
    samples: list[Sample] = []
    skipped: list[Skip] = []
    for m, path, h in zip(wanted, paths, hashes, strict=True):
        if h is None:
            skipped.append(Skip(str(path), f"in the run's {split} pictures but no longer in the data folder"))
        elif h != m["sha256"]:
            skipped.append(Skip(str(path), f"in the run's {split} pictures but changed since training"))
        else:
            samples.append(Sample(path, classes.index(m["label"]), split))
    return samples, split, DataSet(root, list(classes), samples, "manifest", skipped)
