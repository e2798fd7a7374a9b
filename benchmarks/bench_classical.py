"""Classical features + scikit-learn on cats_and_dogs (2000 train / 1000 validation): accuracy and seconds.

    ./run.sh bench classical                                   # the default recipe table
    ./run.sh bench classical --recipes floor,default --cv      # + 3-fold cross-validated accuracy on train
    ./run.sh bench classical --engines                          # threads vs processes for each extractor
    ./run.sh bench classical --data DIR
    ./run.sh bench classical --scale                           # svm-rbf: exact vs approximate kernel
    ./run.sh bench classical --scale --scale-sizes 25000       # + the approximate kernel on 25,000 pictures

`--scale`: the default recipe trained by `python -m pawsight train` in its own process (fresh cache folder,
so decoding and feature extraction are included), once with `--set kernel=exact` and once with
`--set kernel=approx` on the dev set, and with `kernel=auto` (the EXACT_SVM_MAX rule) on each generated
collection of --scale-sizes pictures (bench_scale.make_collection: 80% train, 20% validation). Columns:
validation accuracy (from the run's saved evaluation), the path the rule took, wall seconds of the whole
command, fit seconds (`timings.fit`: extraction + fitting, no decoding or evaluation), peak RSS (wait4).

Columns, every recipe trained through `pawsight.train` with its own fresh cache folder:
- `train cold`: scan + decode the JPEGs + extract features + fit (the decode cache and feature cache empty);
- `train warm`: the same with pictures already decoded (feature cache emptied): extraction + fit;
- `predict 1000`: features + prediction for the 1000 validation pictures, decoded but features not cached;
- `cv acc` (with --cv): 3-fold cross-validated accuracy on the TRAIN split, features (including the visual
  words) learned inside each fold: the number the default recipe is chosen by. `val acc` is reported, never
  tuned on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cats_and_dogs"

# recipe -> ClassicalClassifier parameters (unset ones take the class defaults)
RECIPES: dict[str, dict[str, Any]] = {
    # the textbook floor: HOG on 128x128 grey, 8x8 cells, 9 orientations + LinearSVC
    "floor": {"features": "hog", "model": "linear-svm", "flip": False},
    "hog-svm": {"features": "hog", "model": "svm-rbf", "flip": False},
    "hcl-svm": {"features": "hog,color,lbp", "model": "svm-rbf", "flip": False},
    "hcld-svm": {"features": "hog,color,lbp,daisy", "model": "svm-rbf", "flip": False},
    "default": {},  # ClassicalClassifier() as shipped: hog,color,lbp,daisy + svm-rbf (C=3, PCA 256) + flip
    "default-tta": {"tta": True},
    "hcldv-svm": {"features": "hog,color,lbp,daisy,vlad", "model": "svm-rbf"},
    "hcld-svm-search": {"search": True},
    "hcld-linear": {"model": "linear-svm"},
    "hcld-logreg": {"model": "logreg"},
    "hcld-knn": {"model": "knn"},
    "hcld-forest": {"model": "forest"},
    "hcld-boosting": {"model": "boosting"},
}
DEFAULT_RECIPES = ("floor,hog-svm,hcl-svm,hcld-svm,default,hcldv-svm,hcld-linear,hcld-logreg,hcld-knn,"
                   "hcld-forest,hcld-boosting")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench classical", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--cv", action="store_true",
                   help="also 3-fold cross-validated accuracy on the train split")
    p.add_argument("--engines", action="store_true",
                   help="time threads vs processes per extractor, then stop")
    p.add_argument("--scale", action="store_true",
                   help="svm-rbf's exact vs approximate kernel: accuracy, seconds, peak RSS, then stop")
    p.add_argument("--scale-sizes", default="",
                   help="with --scale: also generated collections of these sizes (comma-separated)")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep caches here (default: a fresh temporary folder per recipe, removed after)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}")
        return 2
    os.environ.setdefault("PAWSIGHT_PROGRESS", "0")
    if args.engines:
        return engines(args.data)
    if args.scale:
        return scale(args.data, [int(n) for n in args.scale_sizes.split(",") if n.strip()])
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        print(f"unknown recipe(s) {', '.join(unknown)}; choose from: {', '.join(RECIPES)}")
        return 2
    print(f"data: {args.data}; {os.cpu_count()} cores; times are wall seconds\n")
    print("| recipe | features | model | cv acc (train) | val acc | train cold s | train warm s | "
          "predict 1000 s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        row = run_recipe(args.data, RECIPES[name], args.cv, args.cache)
        extras = "".join(f" +{k}" for k in ("flip", "tta", "search") if row[k])
        print(f"| {name} | {row['features']} | {row['model']}{extras} | "
              f"{row['cv']} | {row['val']:.1%} | {row['cold']:.1f} | {row['warm']:.1f} | "
              f"{row['predict']:.1f} |", flush=True)
    return 0


def run_recipe(data: Path, params: dict[str, Any], cv: bool, keep: Path | None) -> dict[str, Any]:
    import pawsight
    from pawsight.cache import ImageCache
    from pawsight.data import scan
    from pawsight.models.classical import ClassicalClassifier

    root = Path(tempfile.mkdtemp(prefix="bench-classical-")) if keep is None else keep
    old = os.environ.get("PAWSIGHT_CACHE")
    os.environ["PAWSIGHT_CACHE"] = str(root / "cache")
    try:
        shutil.rmtree(root / "cache", ignore_errors=True)
        t = time.perf_counter()
        model, info = pawsight.train(data, approach="classical", out=root / "run", overwrite=True, **params)
        cold = time.perf_counter() - t - info["timings"].get("evaluate", 0.0)
        shutil.rmtree(root / "cache" / "features", ignore_errors=True)
        t = time.perf_counter()
        model, info = pawsight.train(data, approach="classical", out=root / "run", overwrite=True, **params)
        warm = time.perf_counter() - t - info["timings"].get("evaluate", 0.0)
        ds = scan(data)
        va = ImageCache().load_samples(ds.split("validation"), model.preprocessing)
        shutil.rmtree(root / "cache" / "features", ignore_errors=True)
        t = time.perf_counter()
        proba = model.predict_proba(va.images)
        predict = time.perf_counter() - t
        val = float((proba.argmax(1) == va.labels).mean())
        cv_text = "-"
        if cv:
            tr = ImageCache().load_samples(ds.split("train"), model.preprocessing)
            cv_text = f"{cross_validate(ClassicalClassifier(**params), tr.images, tr.labels, ds.classes):.1%}"
        p = model.get_params()
        return {"features": p["features"], "model": p["model"], "flip": p["flip"], "tta": p["tta"],
                "search": p["search"], "val": val, "cold": cold,
                "warm": warm, "predict": predict, "cv": cv_text}
    finally:
        if old is None:
            os.environ.pop("PAWSIGHT_CACHE", None)
        else:
            os.environ["PAWSIGHT_CACHE"] = old
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def cross_validate(model, X: np.ndarray, y: np.ndarray, classes: list[str], folds: int = 3) -> float:
    """Mean accuracy over stratified folds of the training split; everything learned inside each fold."""
    from sklearn.model_selection import StratifiedKFold

    scores = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
        m = type(model)(**model.get_params()).fit(X[train], y[train], classes=classes)
        scores.append(m.score(X[test], y[test]))
    return float(np.mean(scores))


def scale(data: Path, sizes: list[int]) -> int:
    """svm-rbf exact vs approximate kernel, each training in its own process from an empty cache folder."""
    import json
    import subprocess
    import sys

    from bench_scale import SCRATCH, make_collection, measure

    jobs = [(data.name, data, "exact"), (data.name, data, "approx")]
    jobs += [(f"generated {n:,}", make_collection(n), "auto") for n in sizes]
    rows = []
    for label, folder, kernel in jobs:
        work = SCRATCH / f"classical-scale-{folder.name}-{kernel}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = {**os.environ, "PAWSIGHT_CACHE": str(work / "cache"), "PAWSIGHT_PROGRESS": "0",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        wall, rss, status = measure(["train", str(folder), "--approach", "classical", "--out",
                                     str(work / "run"), "--set", f"kernel={kernel}"], env)
        info = json.loads((work / "run" / "run.json").read_text()) if not status else {}
        model = json.loads((work / "run" / "model.json").read_text()) if not status else {}
        rows.append((label, kernel, model.get("kernel", {}).get("path", "-"),
                     info.get("data", {}).get("counts", {}).get("train", {}),
                     info.get("metrics", {}).get("validation", {}).get("accuracy"), wall,
                     info.get("timings", {}).get("fit"), rss, status))
        print(f"  {label} kernel={kernel}: {wall:.0f} s, {rss:.0f} MB", flush=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n{os.cpu_count()} cores; uptime: {uptime}\n", file=sys.stdout)
    print("| data | kernel | path | train pictures | val acc | wall s | fit s | peak RSS MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for label, kernel, path, counts, acc, wall, fit, rss, status in rows:
        n = sum(counts.values()) if isinstance(counts, dict) else "-"
        acc_text = f"{acc:.1%}" if acc is not None else ("failed" if status else "-")
        fit_text = f"{fit:.0f}" if fit is not None else "-"
        print(f"| {label} | {kernel} | {path} | {n} | {acc_text} | {wall:.0f} | {fit_text} | {rss:.0f} |")
    return 0


def engines(data: Path) -> int:
    """Threads vs processes (joblib loky) vs one core, per extractor, on 300 decoded training pictures."""
    from pawsight import features as F
    from pawsight.cache import ImageCache
    from pawsight.data import scan
    from pawsight.models.classical import ClassicalClassifier

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PAWSIGHT_CACHE"] = tmp
        samples = scan(data).split("train")[::6][:300]
        X = ImageCache().load_samples(samples, ClassicalClassifier().preprocessing).images
        print(f"{len(X)} pictures of {X.shape[1]} px; ms per picture, wall\n")
        print("| feature | dims | 1 core | threads x2 | processes x2 |")
        print("|---|---|---|---|---|")
        for name in F.FEATURES:
            e = F.create_feature(name)
            if e.stateful:
                e.fit(X, n_jobs=2)
            times = []
            for n_jobs, backend in ((1, "threading"), (2, "threading"), (2, "loky")):
                F.run_parallel(e.extract_one, X[:8], n_jobs, backend=backend)  # warm up workers
                t = time.perf_counter()
                out = F.run_parallel(e.extract_one, X, n_jobs, backend=backend)
                times.append((time.perf_counter() - t) / len(X) * 1000)
            print(f"| {name} | {len(out[0])} | " + " | ".join(f"{v:.1f}" for v in times) + " |", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
