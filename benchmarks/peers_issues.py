"""The peers `pawsight data issues` is measured against: cleanvision, and the plain cleanlab pipeline.

Runs in its OWN virtualenv, not pawsight's: the peers pin their own numpy/pandas/scikit-learn and must neither
become pawsight dependencies nor change what pawsight's environment resolves to.

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install cleanvision cleanlab scikit-learn pillow numpy
    /work/peers-venv/bin/python benchmarks/peers_issues.py cleanvision DIR           > cleanvision.json
    /work/peers-venv/bin/python benchmarks/peers_issues.py cleanlab FEATURES.npz     > cleanlab.json

Each prints one JSON object on stdout (the tools' own chatter goes to stderr): `flagged` maps our kinds to the
absolute paths flagged, `seconds` is the wall time of the tool's own work, `versions` what ran.

cleanvision: `Imagelab(filepaths=...).find_issues()` with its defaults on every picture under DIR. Its issue
types map to our kinds as dark -> dark, light -> bright, blurry -> blurry, odd_size -> tiny (it flags sizes
far from the collection's usual ones, small or large), exact_duplicates and near_duplicates -> near-duplicate;
low_information, odd_aspect_ratio and grayscale are reported under their own names (no planted kind).

cleanlab, the pipeline a user would write from its tutorials, on the frozen features pawsight computes
(bench_issues.py writes FEATURES.npz: X, labels, paths, classes):
- label: `cross_val_predict(LogisticRegression(max_iter=1000), X, y, cv=5, method="predict_proba")` and then
  `cleanlab.filter.find_label_issues(labels, pred_probs)` with its defaults.
- outlier: cleanlab's plain `OutOfDistribution().fit_score(features=X)` gives scores but no threshold, and
  picking a percentile ourselves would be choosing the answer (we know 2% were planted). So the flags are
  those of cleanlab's own thresholding, Datalab's outlier check on the same features
  (`Datalab.find_issues(features=X, issue_types={"outlier": {}})`: mean distance to the 10 nearest neighbours
  above Q3 + 1.7 IQR), and the OutOfDistribution ranking (most unusual first) is output too, so that the
  benchmark can also report its recall at N = the number pawsight flags (a ranking given pawsight's budget).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

PICTURE = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
CLEANVISION_KINDS = {"dark": "dark", "light": "bright", "blurry": "blurry", "odd_size": "tiny",
                     "exact_duplicates": "near-duplicate", "near_duplicates": "near-duplicate",
                     "low_information": "low-information", "odd_aspect_ratio": "odd-aspect",
                     "grayscale": "grayscale"}


def picture_files(root: Path) -> list[str]:
    return sorted(str(p.resolve()) for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in PICTURE and not p.name.startswith("."))


def run_cleanvision(root: Path) -> dict:
    from cleanvision import Imagelab

    files = picture_files(root)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        lab = Imagelab(filepaths=files)
        lab.find_issues()
    seconds = time.perf_counter() - start
    issues = lab.issues
    flagged: dict[str, list[str]] = {}
    raw: dict[str, int] = {}
    for column in issues.columns:
        if column.startswith("is_") and column.endswith("_issue"):
            name = column[3:-6]
            hits = [str(p) for p in issues.index[issues[column].astype(bool)]]
            raw[name] = len(hits)
            kind = CLEANVISION_KINDS.get(name, name)
            flagged.setdefault(kind, [])
            flagged[kind] = sorted(set(flagged[kind]) | set(hits))
    return {"tool": "cleanvision", "pictures": len(files), "seconds": seconds, "flagged": flagged,
            "issue_types": raw, "versions": {"cleanvision": version("cleanvision")}}


def run_cleanlab(features: Path, folds: int = 5) -> dict:
    from cleanlab.datalab.datalab import Datalab
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    data = np.load(features, allow_pickle=False)
    X, y, paths = data["X"], data["labels"].astype(int), [str(p) for p in data["paths"]]
    classes = [str(c) for c in data["classes"]]
    with contextlib.redirect_stdout(sys.stderr):
        start = time.perf_counter()
        pred_probs = cross_val_predict(LogisticRegression(max_iter=1000), X, y, cv=folds,
                                       method="predict_proba")
        is_label = find_label_issues(labels=y, pred_probs=pred_probs)
        label_seconds = time.perf_counter() - start

        start = time.perf_counter()
        ood = OutOfDistribution().fit_score(features=X)
        ood_seconds = time.perf_counter() - start

        start = time.perf_counter()
        lab = Datalab(data={"label": [classes[i] for i in y]}, label_name="label", verbosity=0)
        lab.find_issues(features=X, issue_types={"outlier": {}})
        is_outlier = lab.get_issues("outlier")["is_outlier_issue"].to_numpy(bool)
        datalab_seconds = time.perf_counter() - start
    suggested = {paths[i]: classes[int(np.argmax(pred_probs[i]))] for i in np.flatnonzero(is_label)}
    return {"tool": "cleanlab", "pictures": len(paths),
            "seconds": label_seconds + datalab_seconds,
            "seconds_by_part": {"label (cross_val_predict + find_label_issues)": label_seconds,
                                "outlier (Datalab, features)": datalab_seconds,
                                "OutOfDistribution.fit_score": ood_seconds},
            "flagged": {"label": sorted(paths[i] for i in np.flatnonzero(is_label)),
                        "outlier": sorted(paths[i] for i in np.flatnonzero(is_outlier))},
            "suggested": suggested,
            "ood_ranking": [paths[i] for i in np.argsort(ood, kind="stable")],
            "versions": {"cleanlab": version("cleanlab"), "scikit-learn": version("scikit-learn")}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="peers_issues.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tool", required=True)
    cv = sub.add_parser("cleanvision", help="image quality and duplicates of every picture under DIR")
    cv.add_argument("root", type=Path)
    cl = sub.add_parser("cleanlab", help="label issues and outliers from a features .npz")
    cl.add_argument("features", type=Path, help=".npz with X, labels, paths, classes")
    cl.add_argument("--folds", type=int, default=5)
    args = p.parse_args(argv)
    if args.tool == "cleanvision":
        result = run_cleanvision(args.root)
    else:
        result = run_cleanlab(args.features, args.folds)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
