"""The "neither" answer: does the run's score set other pictures aside without losing cats and dogs?

    ./run.sh bench neither                  # trains the default transfer run first, then measures
    ./run.sh bench neither --run RUN        # an existing transfer or scratch run

In-distribution: the validation cats and dogs of cats_and_dogs (never used by training or calibration).
Other pictures: ../shared/datasets/not_cats_or_dogs, two differently sourced parts: `weather_*` (200 stock sky
and landscape photos) and `objects` (100 ImageNet photos of things). The score's design (k neighbours,
calibration margin) was chosen on the weather part; the objects part is reported as the held-out check.
Neither part sets the threshold: that is calibrated at training time from cross-validated distances of the
training pictures alone (models/neither.py).

"shifted" rows stand in for cats and dogs from other collections (which this machine does not have): the
same validation pictures re-encoded at JPEG quality 15, at a quarter of the resolution, in greyscale, and
darker with stronger colour. They show how much room the calibrated threshold leaves for a change of camera
or encoder; they do NOT show how other animals (a fox, a rabbit) score: those are nearer to cats and dogs in
feature space than cars and skies are, and are harder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DATA = ROOT / "cats_and_dogs"
OTHERS = ROOT / "not_cats_or_dogs"


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def shifted(files: list[Path], prep) -> dict[str, np.ndarray]:
    """The pictures as another camera / encoder might have delivered them."""
    from PIL import Image, ImageEnhance

    from pawsight.images import open_rgb

    def jpeg(im: Image.Image, quality: int) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    changes = {
        "JPEG quality 15": lambda im: jpeg(im, 15),
        "1/4 resolution": lambda im: im.resize((max(1, im.width // 4), max(1, im.height // 4)))
        .resize(im.size),
        "greyscale": lambda im: im.convert("L").convert("RGB"),
        "darker, stronger colour": lambda im: ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(1.6))
        .enhance(0.6),
    }
    originals = [open_rgb(f) for f in files]
    return {name: np.stack([prep(fn(im)) for im in originals]) for name, fn in changes.items()}


def design_table(bank: np.ndarray, y_bank: np.ndarray | None, inside: np.ndarray,
                 groups: dict[str, np.ndarray]) -> list[str]:
    """k and margin candidates, measured on features (rows: the weather part chooses, objects reports)."""
    from pawsight.models.neither import cross_validated_distances, knn_distance, unit

    y = y_bank if y_bank is not None else np.zeros(len(bank), np.int64)
    rows = []
    for k in (1, 5, 10, 20):
        cv = cross_validated_distances(bank, y, k)
        d_in = knn_distance(unit(inside), bank, k)
        d = {g: knn_distance(unit(f), bank, k) for g, f in groups.items()}
        for margin in (1.0, 1.1, 1.2, 1.3):
            t = np.quantile(cv, 0.99) * margin
            rows.append(f"| {k} | {margin:.1f} | {auroc(d_in, d['weather']):.4f} | "
                        f"{np.mean(d['weather'] > t):.1%} | {np.mean(d_in > t):.1%} | "
                        f"{np.mean(d['objects'] > t):.1%} |")
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench neither", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--others", type=Path, default=OTHERS)
    ap.add_argument("--run", type=Path, default=None, help="a trained transfer or scratch run")
    ap.add_argument("--design", action="store_true", help="also print the k x margin design table")
    ap.add_argument("--reference", type=int, default=None,
                    help="reference vectors kept (models/neither.MAX_REFERENCE) for the run trained here: "
                         "below the training set's size, it shows what the bounded reference costs")
    args = ap.parse_args(argv)
    if args.reference is not None:
        import pawsight.models.neither as neither

        neither.MAX_REFERENCE = args.reference

    import pawsight
    from common import default_run
    from pawsight.inference import UNKNOWN, decide

    with tempfile.TemporaryDirectory(prefix="bench-neither-") as tmp:
        os.environ.setdefault("PAWSIGHT_CACHE", str(Path(tmp) / "cache"))
        run = default_run(args.data, args.run, Path(tmp))
        predictor = pawsight.load(run)
        model = getattr(predictor, "model", None)
        # a run directory predicts through its model.onnx (no .model): the description is in model.json
        described = model.neither_.describe() if model is not None else \
            json.loads((Path(run) / "model.json").read_text())["neither"]
        described["model.safetensors MB"] = round((Path(run) / "model.safetensors").stat().st_size / 2**20, 1)
        if predictor.threshold is None:
            print("this run has no neither score (classical, or trained with neither=False)", file=sys.stderr)
            return 2
        val = sorted((args.data / "validation").rglob("*.jpg"))
        truth = [f.parent.name for f in val]
        p_val, s_val = predictor.predict_scores(val)
        others = sorted(args.others.rglob("*.jpg"))
        part = np.array(["weather" if f.parent.name.startswith("weather") else f.parent.name for f in others])
        _, s_oth = predictor.predict_scores(others)
        shifts = shifted(val[::4], predictor.preprocessing)
        shift_scores = {name: predictor.predict_scores(X)[1] for name, X in shifts.items()}

    thr = predictor.threshold
    labels = decide(p_val, predictor.classes_, s_val, thr)
    plain = decide(p_val, predictor.classes_)
    given = [(a, t) for a, t in zip(labels, truth, strict=True) if a != UNKNOWN]
    acc_all = float(np.mean([a == t for a, t in zip(plain, truth, strict=True)]))
    acc_given = float(np.mean([a == t for a, t in given])) if given else float("nan")
    reference = described.get("reference", described["bank"])
    print(f"\nneither score of {run}: {described['score']}, k={described['k']}, reference {reference} "
          f"({described['model.safetensors MB']} MB model file); default threshold {thr:g}; "
          f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}\n")
    print("| pictures | n | AUROC vs validation cats/dogs | answered unknown |")
    print("|---|---:|---:|---:|")
    print(f"| validation cats and dogs | {len(val)} | - | {np.mean(s_val > thr):.1%} |")
    for name in ("weather", "objects"):
        s = s_oth[part == name]
        mark = "*" if name == "weather" else ""
        print(f"| not_cats_or_dogs/{name}{mark} | {len(s)} | {auroc(s_val, s):.4f} | "
              f"{np.mean(s > thr):.1%} |")
    print(f"| not_cats_or_dogs, all | {len(s_oth)} | {auroc(s_val, s_oth):.4f} | "
          f"{np.mean(s_oth > thr):.1%} |")
    for name, s in shift_scores.items():
        print(f"| validation cats/dogs, {name} (shifted) | {len(s)} | - | {np.mean(s > thr):.1%} |")
    print(f"\naccuracy on validation: {acc_all:.2%} without the neither answer; {acc_given:.2%} on the "
          f"{len(given)} labels given with it")
    print("(* the part the design was chosen on; objects is the held-out check. Goals: AUROC >= 0.98, "
          ">= 90% of other pictures unknown, <= 5% of cats/dogs unknown, accuracy of given labels not lower)")
    if args.design and hasattr(predictor, "model"):
        neither = predictor.model.neither_
        feats = {}
        from pawsight.models.deep import embed_pictures

        module = predictor.module
        feats["inside"] = embed_pictures(module, np.stack([predictor.preprocessing.load(f) for f in val]))
        o = embed_pictures(module, np.stack([predictor.preprocessing.load(f) for f in others]))
        print("\n| k | margin | AUROC weather | weather unknown | validation unknown | objects unknown |")
        print("|---:|---:|---:|---:|---:|---:|")
        for row in design_table(neither.bank.numpy().astype(np.float64), None, feats["inside"],
                                {"weather": o[part == "weather"], "objects": o[part == "objects"]}):
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
