"""Plant known problems into a copy of a clean labelled collection, so that issue finders can be scored.

    python benchmarks/plant_issues.py --source cats_and_dogs --out /tmp/planted-cd --seed 0
    python benchmarks/plant_issues.py --source weather --out /tmp/planted-weather --seed 0
    from plant_issues import plant; manifest = plant("weather", Path("/tmp/planted-weather"), seed=0)

Why: `pawsight data issues` (and the peers it is compared with, benchmarks/peers_issues.py) can only be given
precision and recall on a collection whose problems are known. Real collections have unknown problems, so we
take a clean one and add problems of each kind ourselves, seeded, and write down exactly which files they are.

What is written (never inside the repository: `--out` is e.g. /tmp/planted-cd):
- OUT/<class>/...              the planted collection (class folders, no split: pawsight holds out its own
                               validation share). Clean files are copies of the source pictures.
- OUT-clean/<class>/...        the same collection before planting (what training on clean data means).
- OUT-clean-validation/<class>/  weather only: a seeded 40% of each class, held out BEFORE planting, as the
                               clean validation set of the accuracy comparison. For cats_and_dogs that set
                               is ../shared/datasets/cats_and_dogs/validation, untouched.
- OUT-manifest.json            beside OUT, not in it (pawsight must not read it as data): every planted file
                               with its kind, true class, given class and source. Everything else is clean.

Kinds and shares (of the clean collection's size n; each planted picture has its own distinct source picture,
and every kind gets at least --min-count pictures so that a 120-picture collection is not scored on 1 case):
    label           3%  the file is MOVED to another class folder (a random other class when there are more
                        than two) and renamed to that folder's naming scheme: a `cat.5.jpg` among dogs would
                        give the answer away by its name.
    near-duplicate  1%  a new copy resized 0.5-0.8x and re-encoded as JPEG quality 60-85, same class.
    dark            1%  brightness scaled to 0.05-0.12 of the original.
    bright          1%  blown out: 255 - (255 - x) * f with f in 0.05-0.12.
    blurry          1%  Gaussian blur of radius 2.5% of the shorter side (at least 4 px): at pawsight's 224 px
                        working size that is still a radius of >= ~4 px, clearly blurred.
    tiny            1%  downsized to 16-32 px on the long side.
    outlier         2%  pictures from not_cats_or_dogs/objects (ImageNet objects) filed under random classes.
Planted files other than label flips are new files beside their source, which stays as a clean picture (for
near copies that makes the duplicate pair). New names follow the class folder's own scheme (`dog.1234.jpg`,
`rain77.jpg`) with a number not used anywhere in the collection, so no name reveals a kind; they can only
reveal that the number is outside the original range, which no issue finder should be reading.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SOURCES = ("cats_and_dogs", "weather")
KINDS = ("label", "near-duplicate", "dark", "bright", "blurry", "tiny", "outlier")
SHARES = {"label": 0.03, "near-duplicate": 0.01, "dark": 0.01, "bright": 0.01, "blurry": 0.01, "tiny": 0.01,
          "outlier": 0.02}
DERIVED = ("near-duplicate", "dark", "bright", "blurry", "tiny")  # new files made from a clean picture
WEATHER_VALIDATION = 0.4
PICTURE = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SCHEME = re.compile(r"^(.*?)(\d+)(\.[A-Za-z]+)$")


def paths_for(out: Path) -> dict[str, Path]:
    """Where plant() writes for collection folder `out`."""
    out = Path(out).resolve()
    return {"collection": out, "clean": out.with_name(out.name + "-clean"),
            "clean_validation": out.with_name(out.name + "-clean-validation"),
            "manifest": out.with_name(out.name + "-manifest.json")}


def pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICTURE
                  and not p.name.startswith("."))


def source_classes(source: str | Path) -> tuple[str, dict[str, list[Path]], Path | None]:
    """(name, class -> clean pictures, clean validation folder or None) of a named or given source."""
    if str(source) == "cats_and_dogs":
        root = DATASETS / "cats_and_dogs"
        classes = {c.name: pictures(c) for c in sorted((root / "train").iterdir()) if c.is_dir()}
        return "cats_and_dogs", classes, root / "validation"
    if str(source) == "weather":
        root = DATASETS / "not_cats_or_dogs"
        return "weather", {c.name.removeprefix("weather_"): pictures(c)
                           for c in sorted(root.glob("weather_*")) if c.is_dir()}, None
    root = Path(source)  # any folder of class folders: a source of our own, no separate validation
    if not root.is_dir():
        raise SystemExit(f"unknown source {source!r}: {', '.join(SOURCES)} or a folder of class folders")
    return root.name, {c.name: pictures(c) for c in sorted(root.iterdir()) if c.is_dir()}, None


class Namer:
    """New file names in each class folder's own scheme (prefix + number + extension), numbers never used in
    the collection; a short seeded hex name where a folder has no such scheme."""

    def __init__(self, classes: dict[str, list[Path]], rng: np.random.Generator) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.numbers: set[int] = set()
        self.scheme: dict[str, tuple[str, str] | None] = {}
        top = 0
        for name, files in classes.items():
            schemes = Counter()
            for f in files:
                self.used.add(f.name.lower())
                m = SCHEME.match(f.name)
                if m:
                    schemes[(m.group(1), m.group(3))] += 1
                    self.numbers.add(int(m.group(2)))
                    top = max(top, int(m.group(2)))
            self.scheme[name] = schemes.most_common(1)[0][0] if schemes else None
        self.pool = [i for i in range(0, 2 * top + 200) if i not in self.numbers]

    def new(self, cls: str) -> str:
        scheme = self.scheme.get(cls)
        while True:
            if scheme is not None and self.pool:
                number = int(self.pool.pop(int(self.rng.integers(len(self.pool)))))
                name = f"{scheme[0]}{number}{scheme[1]}"
            else:
                name = f"{int(self.rng.integers(16**10)):010x}.jpg"
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def jpeg(im: Image.Image, path: Path, quality: int) -> None:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    path.write_bytes(buf.getvalue())


def make_variant(kind: str, src: Path, dst: Path, rng: np.random.Generator) -> dict[str, float]:
    """Write the `kind` version of `src` to `dst`; the parameters drawn (for the manifest)."""
    im = rgb(src)
    if kind == "near-duplicate":
        scale, quality = float(rng.uniform(0.5, 0.8)), int(rng.integers(60, 86))
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        jpeg(im.resize(size, Image.Resampling.LANCZOS), dst, quality)
        return {"scale": round(scale, 3), "quality": quality}
    if kind in ("dark", "bright"):
        factor = float(rng.uniform(0.05, 0.12))
        x = np.asarray(im, np.float32)
        y = x * factor if kind == "dark" else 255.0 - (255.0 - x) * factor
        jpeg(Image.fromarray(np.clip(np.rint(y), 0, 255).astype(np.uint8)), dst, 92)
        return {"factor": round(factor, 3)}
    if kind == "blurry":
        radius = max(4.0, 0.025 * min(im.size))
        jpeg(im.filter(ImageFilter.GaussianBlur(radius)), dst, 92)
        return {"radius": round(radius, 1)}
    if kind == "tiny":
        side = int(rng.integers(16, 33))
        scale = side / max(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        jpeg(im.resize(size, Image.Resampling.LANCZOS), dst, 92)
        return {"long_side": max(size)}
    raise ValueError(kind)


def counts_for(n: int, min_count: int) -> dict[str, int]:
    return {k: max(min_count, int(round(SHARES[k] * n))) for k in KINDS}


def clear(paths: dict[str, Path]) -> None:
    """Remove an earlier plant() output; refuse to delete a folder plant() did not make."""
    for key in ("collection", "clean", "clean_validation"):
        p = paths[key]
        if p.exists():
            if not paths["manifest"].exists() and any(p.iterdir()):
                raise SystemExit(f"{p} exists and holds files but {paths['manifest'].name} does not: not "
                                 "written by plant_issues.py, not deleting it; choose another --out")
            shutil.rmtree(p)
    paths["manifest"].unlink(missing_ok=True)


def plant(source: str | Path, out: str | Path, seed: int = 0, min_count: int = 3) -> dict:
    """Write the planted collection, its clean copy (and weather's clean validation) for `source`
    ("cats_and_dogs", "weather" or a folder of class folders) under `out` and return the manifest."""
    rng = np.random.default_rng(seed)
    name, classes, validation = source_classes(source)
    if len(classes) < 2:
        raise SystemExit(f"{source}: need at least two class folders, found {len(classes)}")
    paths = paths_for(Path(out))
    clear(paths)
    if validation is None and name == "weather":  # hold out 40% per class BEFORE planting
        held: dict[str, list[Path]] = {}
        for cls, files in classes.items():
            order = rng.permutation(len(files))
            k = int(round(WEATHER_VALIDATION * len(files)))
            held[cls] = [files[i] for i in sorted(order[:k])]
            classes[cls] = [files[i] for i in sorted(order[k:])]
        validation = paths["clean_validation"]
        for cls, files in held.items():
            (validation / cls).mkdir(parents=True)
            for f in files:
                shutil.copyfile(f, validation / cls / f.name)
    collection, clean = paths["collection"], paths["clean"]
    rel: dict[Path, str] = {}  # source file -> its path relative to OUT
    for cls, files in classes.items():
        (collection / cls).mkdir(parents=True)
        (clean / cls).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, collection / cls / f.name)
            shutil.copyfile(f, clean / cls / f.name)
            rel[f] = f"{cls}/{f.name}"
    n = sum(len(files) for files in classes.values())
    want = counts_for(n, min_count)
    pool = [(cls, f) for cls, files in classes.items() for f in files]
    need = sum(want[k] for k in KINDS if k != "outlier")
    if need > len(pool):
        raise SystemExit(f"{n} clean pictures are too few for {need} distinct planted sources")
    chosen = [pool[i] for i in rng.permutation(len(pool))[:need]]
    namer = Namer(classes, rng)
    names = sorted(classes)
    planted: list[dict] = []
    for kind in KINDS:
        if kind == "outlier":
            continue
        picks, chosen = chosen[:want[kind]], chosen[want[kind]:]
        for cls, f in picks:
            if kind == "label":
                others = [c for c in names if c != cls]
                given = others[int(rng.integers(len(others)))]
                new = f"{given}/{namer.new(given)}"
                (collection / rel[f]).rename(collection / new)
                planted.append({"path": new, "kind": kind, "true_class": cls, "given_class": given,
                                "source": str(f), "source_in_collection": None})
            else:
                new = f"{cls}/{namer.new(cls)}"
                params = make_variant(kind, f, collection / new, rng)
                planted.append({"path": new, "kind": kind, "true_class": cls, "given_class": cls,
                                "source": str(f), "source_in_collection": rel[f], "params": params})
    objects = pictures(DATASETS / "not_cats_or_dogs" / "objects")
    if want["outlier"] > len(objects):
        raise SystemExit(f"only {len(objects)} object pictures for {want['outlier']} outliers")
    for i in rng.permutation(len(objects))[:want["outlier"]]:
        given = names[int(rng.integers(len(names)))]
        new = f"{given}/{namer.new(given)}"
        jpeg_or_copy = collection / new
        shutil.copyfile(objects[i], jpeg_or_copy)
        planted.append({"path": new, "kind": "outlier", "true_class": None, "given_class": given,
                        "source": str(objects[i]), "source_in_collection": None})
    manifest = {
        "source": name, "seed": seed, "min_count": min_count, "classes": names,
        "collection": str(collection), "clean_collection": str(clean), "clean_validation": str(validation),
        "clean_pictures": n, "pictures": n + sum(want[k] for k in KINDS if k != "label"),
        "counts": {k: want[k] for k in KINDS}, "planted": planted,
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="plant_issues.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="cats_and_dogs",
                   help="cats_and_dogs, weather, or a folder of class folders (default cats_and_dogs)")
    p.add_argument("--out", type=Path, required=True, help="collection folder to write (outside the repo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-count", type=int, default=3, help="at least this many pictures of each kind")
    args = p.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if args.out.resolve().is_relative_to(repo):
        print(f"--out {args.out} is inside the repository; write generated pictures elsewhere (/tmp/...)",
              file=sys.stderr)
        return 2
    m = plant(args.source, args.out, args.seed, args.min_count)
    keys = ("source", "seed", "collection", "clean_collection", "clean_validation", "clean_pictures",
            "pictures", "counts")
    print(json.dumps({k: m[k] for k in keys}, indent=1))
    print(f"manifest: {paths_for(args.out)['manifest']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
