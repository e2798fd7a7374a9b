"""`find_issues(DATA)`: every problem of every picture of a data folder, before training.

One pass over the collection, each step reusing the last one's work:
1. list and decode the pictures (the decode cache at the default transfer model's input, as `data inspect`
   and `train` use it, so none of the three decodes twice);
2. picture quality from those pixels and the files' sizes (quality.py), batch by batch;
3. duplicates, conflicting labels and leaks from the perceptual hashes the decode stored (dedup.py);
4. frozen pretrained features (the feature cache frozen training reads: training afterwards skips them);
5. likely wrong labels and outliers from those features (labels.py).

A picture can have several kinds. Two rules keep each kind meaning what it says: a picture called an outlier
or unusable (dark, bright, blurry, low information, tiny) is not also called mislabelled (a picture of nothing
the classes show has no right label, and a black frame's label cannot be judged from it); and an outlier
explained by a quality problem is reported as that problem only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..cache import Decoded, ImageCache, batches
from ..data import DataSet, scan
from ..dedup import NEAR_THRESHOLD, report_from_decoded
from ..errors import PawsightError
from . import quality
from .labels import check_labels, outlier_scores

# In the order the terminal, CSV and gallery rank them: what spoils training the most first.
# A degraded copy (darkened, blurred, shrunk) is also a near copy of its source: named by what is wrong.
KINDS = ("label", "outlier", *quality.KINDS, "conflict", "leak", "exact-duplicate", "near-duplicate")
EXPLAINED = {
    "label": "likely wrong label: cross-validated probabilities (frozen pretrained features) disagree with "
             "it (confident learning, cleanlab)",
    "outlier": "of no class: far from every other picture of the collection (neither score against the "
               "others above 1)",
    "conflict": "the same picture under different classes: at least one label is wrong",
    "leak": "the same picture in train and validation: validation accuracy is inflated",
    **{k: f"{k.replace('-', ' ')}: {v}" for k, v in quality.THRESHOLDS.items()},
    "exact-duplicate": "an identical copy of another picture of the same class (counts twice in training)",
    "near-duplicate": "a resized or re-encoded copy of another picture of the same class",
}
UNUSABLE = {"dark", "bright", "blurry", "low-information", "tiny"}


def find_issues(data: str | Path, *, val_fraction: float = 0.2, seed: int = 0,
                cache: ImageCache | None = None, model: str | None = None,
                threshold: int = NEAR_THRESHOLD) -> dict[str, Any]:
    """Everything `pawsight data issues` reports, as a JSON-ready dict, plus "_decoded" (the pictures, for the
    gallery; removed before printing)."""
    from ..models.transfer import TransferClassifier, pretrained_features

    seconds: dict[str, float] = {}
    t0 = t = time.perf_counter()
    clf = TransferClassifier(**({"model": model} if model else {}))
    prep = clf.preprocessing
    ds = scan(data, val_fraction=val_fraction, seed=seed)
    decoded = (cache or ImageCache()).load_samples(ds.samples, prep, desc="decoding")
    n = len(decoded.paths)
    if n == 0:
        raise PawsightError(f"{data}: no readable pictures to check")
    seconds["decode"] = time.perf_counter() - t

    t = time.perf_counter()
    kinds: list[list[str]] = [[] for _ in range(n)]
    measures: list[dict[str, Any]] = [{} for _ in range(n)]
    for pos, pixels in batches(decoded.images):
        q = quality.measure(pixels)
        for j, i in enumerate(pos.tolist()):
            m = decoded.meta[i]
            width, height = int(m.get("width") or 0), int(m.get("height") or 0)
            kinds[i] += quality.problems(q, j, width, height)
            measures[i] = {**quality.scores(q, j), "width": width, "height": height}
    seconds["quality"] = time.perf_counter() - t

    t = time.perf_counter()
    duplicate_of = _duplicates(ds, decoded, threshold, kinds)
    seconds["duplicates"] = time.perf_counter() - t

    t = time.perf_counter()
    features = pretrained_features(decoded.images, clf.model)
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    labels = decoded.labels
    outlier, _ = outlier_scores(features, labels, seed)
    check = check_labels(features, labels, len(ds.classes), seed)
    for i in range(n):
        unusable = UNUSABLE & set(kinds[i])
        if outlier[i] > 1.0 and not unusable:
            kinds[i].insert(0, "outlier")
        if check is not None and check.wrong[i] and not unusable and "outlier" not in kinds[i]:
            kinds[i].insert(0, "label")
    seconds["labels and outliers"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    split_of = {str(s.path): s.split for s in ds.samples}
    flagged = []
    for i in range(n):
        if not kinds[i]:
            continue
        row: dict[str, Any] = {
            "path": str(decoded.paths[i]), "split": split_of.get(str(decoded.paths[i]), "train"),
            "class": ds.classes[int(labels[i])], "kinds": sorted(set(kinds[i]), key=KINDS.index),
            "suggested": None, "confidence": None, "label_quality": None,
            "outlier_score": round(float(outlier[i]), 3), "quality": measures[i], "index": i}
        if check is not None:
            row["label_quality"] = round(float(check.quality[i]), 4)
            if "label" in row["kinds"]:
                row["suggested"] = ds.classes[int(check.suggested[i])]
                row["confidence"] = round(float(check.confidence[i]), 4)
        if i in duplicate_of:
            row["copy_of"] = str(decoded.paths[duplicate_of[i]])
        flagged.append(row)
    flagged.sort(key=lambda r: (KINDS.index(r["kinds"][0]), _severity(r)))
    counts = {k: sum(k in r["kinds"] for r in flagged) for k in KINDS}
    notes = []
    if check is None:
        notes.append("labels were not checked: a class has fewer than two readable pictures")
    return {
        "root": str(Path(data)), "classes": ds.classes, "layout": ds.layout, "pictures": n,
        "flagged": [{k: v for k, v in r.items() if k != "index"} for r in flagged],
        "counts": counts, "explained": {k: EXPLAINED[k] for k in KINDS},
        "skipped": [s.to_dict() for s in ds.skipped + decoded.skipped],
        "features": clf.model, "label_folds": check.folds if check is not None else 0, "notes": notes,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "_decoded": decoded, "_rows": [r["index"] for r in flagged],
    }


def _severity(row: dict[str, Any]) -> float:
    """Within one kind, the surest first: lowest label quality, highest outlier score, darkest, ..."""
    kind = row["kinds"][0]
    q = row["quality"]
    return {"label": row["label_quality"] or 0.0, "outlier": -row["outlier_score"], "dark": q["brightest"],
            "bright": -q["darkest"], "blurry": q["sharpness"], "low-information": q["entropy_bits"]
            }.get(kind, 0.0)


def _duplicates(ds: DataSet, decoded: Decoded, threshold: int, kinds: list[list[str]]) -> dict[int, int]:
    """Mark copies in `kinds` (conflict, leak, exact- or near-duplicate) and return copy -> the picture kept,
    by the rule `train --drop-duplicates` applies (dedup.DuplicateReport.to_drop): one picture of each group
    stays (the training copy when there is one); every member of a group with conflicting labels goes."""
    report = report_from_decoded(ds, ds.samples, decoded, threshold)
    dropped = report.to_drop()
    samples = report.samples
    out: dict[int, int] = {}
    for g in report.groups:
        conflicting = len({samples[i].label for i in g.members}) > 1
        keep = report.kept(g)
        for i in g.members:
            if conflicting:
                kinds[i].append("conflict")
            elif i in dropped:
                leak = samples[i].split != samples[keep].split
                kinds[i].append("leak" if leak else f"{g.kind}-duplicate")
                out[i] = keep
    return out
