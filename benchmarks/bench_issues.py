"""`pawsight data issues` on collections with planted problems, side by side with cleanvision and cleanlab.

    ./run.sh bench issues                              # cats_and_dogs and weather, peers, accuracy
    ./run.sh bench issues --source weather --no-accuracy
    ./run.sh bench issues --out /tmp/bench-issues --replant

Why: a finder of wrong labels and bad pictures is only worth running if it finds what is there and little
else, at least as well as what a user could get from the established tools. Real collections have unknown
problems, so benchmarks/plant_issues.py plants known ones (seeded) into a clean copy: 3% label flips, 1% each
of near copies, dark, blown-out, blurred and tiny versions, 2% ImageNet objects filed under a class. The same
planted folder then goes to
- pawsight: `pawsight data issues DIR --json --csv FLAGGED.csv`, in its own fresh cache (a cold run);
- cleanvision (image quality, duplicates) and the plain cleanlab pipeline (logistic regression on the same
  frozen Lite0 features + `find_label_issues`; Datalab's outlier check) in their own virtualenv
  (--peers-python, default /work/peers-venv/bin/python; benchmarks/peers_issues.py has both recipes).
  The features for cleanlab are computed here, in pawsight's environment, as pawsight computes them
  (`scan`, the decode cache, `pretrained_features`), in another fresh cache, and their cold time is added to
  the pipeline's: a user of that pipeline has to extract features too.

Scoring, matching by resolved path. Per kind: precision = right flags / (flags - excused flags); recall =
planted pictures of that kind flagged with it; "clean %" = share of the clean pictures flagged with it.
A near copy counts as found when it or its source is flagged as a (near or exact) duplicate, and flagging
either is right. Excused (neither right nor wrong): the objects filed under a class when flagged as a wrong
label (no class is right for them), and a dark/bright/blurry/tiny version or its source when flagged as a
duplicate (they are derived copies of one picture). pawsight's exact-duplicate, leak (a copy across its own
train/validation split) and conflict (copies under different classes) all count as duplicate flags.
"other planted" counts flags on planted pictures of another kind. The clean collection may hold real
problems of its own (cats_and_dogs has a few); those count against every tool alike. Targets (issue 18) are
printed beside the pawsight rows.

Accuracy (--accuracy, default on): default transfer training (`pawsight train DIR`) on (a) the clean
collection, (b) the planted one, (c) the planted one with `--exclude FLAGGED.csv`, each evaluated with
`pawsight evaluate RUN CLEAN_VALIDATION --json` (cats_and_dogs/validation; for weather the 40% of each class
held out before planting). Run (b) is trained in its own fresh cache, so its time is a cold default training:
the reference for "the whole issues pass <= 1.5x a default training"; (c) reuses the issues pass's cache, as
a user's training after `data issues` would.

The exit status is 0 either way: it is a report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plant_issues import KINDS, PICTURE, paths_for, plant  # noqa: E402

PEERS_PYTHON = Path("/work/peers-venv/bin/python")
PEERS_SCRIPT = Path(__file__).resolve().parent / "peers_issues.py"
TOOLS = ("pawsight", "cleanvision", "cleanlab")
# pawsight's copy kinds, all scored as duplicates: a copy across its own train/validation split is reported
# as a "leak", copies under different classes as a "conflict", instead of as a duplicate
PAWSIGHT_KINDS = {"exact-duplicate": "near-duplicate", "leak": "near-duplicate", "conflict": "near-duplicate"}
DUPLICATE = "near-duplicate"
TARGETS = {"label": "R>=90% P>=80%", "outlier": "R>=90%", "dark": "R>=95% clean<=1%",
           "bright": "R>=95% clean<=1%", "blurry": "R>=95% clean<=1%", "tiny": "R>=95% clean<=1%",
           "near-duplicate": ">= peers"}
LABEL_PART = "label (cross_val_predict + find_label_issues)"
OUTLIER_PART = "outlier (Datalab, features)"
OOD_PART = "OutOfDistribution.fit_score"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench issues", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["cats_and_dogs", "weather", "both"], default="both")
    p.add_argument("--out", type=Path, default=Path("/tmp/pawsight-bench-issues"),
                   help="where planted sets, caches, runs and tool outputs go (outside the repository)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replant", action="store_true",
                   help="plant again even if a planted set with this seed is already there")
    p.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True,
                   help="train and evaluate on the clean, planted and planted-minus-flagged collections")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="run cleanvision and the cleanlab pipeline too")
    p.add_argument("--peers-python", type=Path, default=PEERS_PYTHON,
                   help="python of the virtualenv with cleanvision and cleanlab")
    return p.parse_args(argv)


# -- features for the cleanlab pipeline (pawsight's environment) -------------------------------------------
def write_features(root: Path, npz: Path) -> float:
    """Frozen pretrained features of every picture of the collection `root`, as pawsight computes them for
    `data issues` and frozen transfer training (scan, decode cache, default backbone), saved to `npz` with
    labels, resolved paths and class names for the peers' environment. Seconds taken."""
    from pawsight.cache import ImageCache
    from pawsight.data import scan
    from pawsight.models.transfer import TransferClassifier

    start = time.perf_counter()
    clf = TransferClassifier()
    ds = scan(root, val_fraction=0.0)
    decoded = ImageCache().load_samples(ds.samples, clf.preprocessing, desc="decoding")
    try:
        from pawsight.models.transfer import pretrained_features
    except ImportError:  # a pawsight without it: the same thing by hand
        from pawsight.backbones import create_backbone

        clf.net_, clf.spec_ = create_backbone(clf.model)
        X = clf._features(decoded.images)
    else:
        X = pretrained_features(decoded.images, clf.model)
    seconds = time.perf_counter() - start
    paths = np.array([str(Path(p).resolve()) for p in decoded.paths])
    np.savez(npz, X=np.asarray(X, np.float32), labels=np.asarray(decoded.labels, np.int64), paths=paths,
             classes=np.array(ds.classes))
    return seconds


# -- running the tools --------------------------------------------------------------------------------------
def run(cmd: list[str], cache: Path | None = None, timeout: float = 3 * 3600) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, wall seconds) of `cmd`, with PAWSIGHT_CACHE=`cache` when given."""
    env = dict(os.environ)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        env["PAWSIGHT_CACHE"] = str(cache)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


def last_json(text: str) -> dict:
    """The JSON object a command printed (the last top-level one, if it printed more than JSON)."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        start = text.rfind("\n{")
        return json.loads(text[start + 1:] if start >= 0 else text[text.find("{"):])


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def resolved(p: str, root: Path) -> str:
    path = Path(p)
    if not path.is_absolute():
        path = root / path if (root / path).exists() else Path.cwd() / path
    return str(path.resolve())


def run_pawsight(collection: Path, work: Path) -> dict | None:
    csv = work / "pawsight-flagged.csv"
    csv.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pawsight", "data", "issues", str(collection), "--json", "--csv", str(csv),
           "--html", str(work / "pawsight-flagged.html")]
    code, out, err, wall = run(cmd, cache=work / "cache-issues")
    if code != 0:
        print(f"pawsight data issues: skipped (exit {code}: {tail(err) or tail(out)})")
        return None
    (work / "pawsight.json").write_text(out)
    result = last_json(out)
    flagged: dict[str, set[str]] = {}
    for row in result.get("flagged", []):
        path = resolved(row["path"], collection)
        for kind in row.get("kinds", []):
            flagged.setdefault(PAWSIGHT_KINDS.get(kind, kind), set()).add(path)
    seconds = result.get("seconds")
    parts = seconds if isinstance(seconds, dict) else {}
    if parts:
        total = float(parts.get("total", wall))
    else:
        total = float(seconds) if isinstance(seconds, int | float) else wall
    return {"flagged": flagged, "seconds": total, "wall": wall,
            "parts": {k: float(v) for k, v in parts.items() if k != "total"},
            "csv": csv if csv.exists() else None, "pictures": result.get("pictures")}


def run_peer(args: argparse.Namespace, what: list[str], work: Path, name: str) -> dict | None:
    if not args.peers_python.exists():
        print(f"{name}: skipped ({args.peers_python} not found; create it: python3.11 -m venv "
              "/work/peers-venv && /work/peers-venv/bin/pip install cleanvision cleanlab scikit-learn "
              "pillow numpy)")
        return None
    code, out, err, wall = run([str(args.peers_python), str(PEERS_SCRIPT), *what])
    if code != 0:
        print(f"{name}: skipped (exit {code}: {tail(err)})")
        return None
    (work / f"{name}.json").write_text(out)
    result = json.loads(out)
    result["flagged"] = {k: {str(Path(p).resolve()) for p in v} for k, v in result["flagged"].items()}
    result["wall"] = wall
    return result


def run_cleanlab(args: argparse.Namespace, root: Path, work: Path) -> dict | None:
    npz = work / "features.npz"
    me = str(Path(__file__).resolve())
    code, out, err, _ = run([sys.executable, me, "--features", str(root), str(npz)],
                            cache=work / "cache-features")
    if code != 0:
        print(f"cleanlab: skipped (features failed, exit {code}: {tail(err)})")
        return None
    feature_s = float(last_json(out)["seconds"])
    cl = run_peer(args, ["cleanlab", str(npz)], work, "cleanlab")
    if cl is not None:
        parts = cl["seconds_by_part"]
        cl["seconds_by_kind"] = {"label": feature_s + parts[LABEL_PART],
                                 "outlier": feature_s + parts[OUTLIER_PART]}
        cl["seconds"] = feature_s + parts[LABEL_PART] + parts[OUTLIER_PART]
        cl["parts"] = {"features (cold)": feature_s, "label": parts[LABEL_PART],
                       "outlier": parts[OUTLIER_PART], "OOD ranking": parts[OOD_PART]}
    return cl


# -- scoring ------------------------------------------------------------------------------------------------
class Truth:
    """What was planted where, from the manifest, as resolved paths."""

    def __init__(self, manifest: dict) -> None:
        root = Path(manifest["collection"]).resolve()
        self.root = root
        self.kind = {str(root / e["path"]): e["kind"] for e in manifest["planted"]}
        self.source = {str(root / e["path"]): str(root / e["source_in_collection"])
                       for e in manifest["planted"] if e.get("source_in_collection")}
        files = {str(p.resolve()) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in PICTURE}
        self.clean = files - set(self.kind)
        self.of = {k: {p for p, kk in self.kind.items() if kk == k} for k in KINDS}
        pairs = self.of[DUPLICATE] | {self.source[p] for p in self.of[DUPLICATE]}
        derived = {p for k in ("dark", "bright", "blurry", "tiny") for p in self.of[k]}
        self.right = {k: set(v) for k, v in self.of.items()}
        self.right[DUPLICATE] = pairs
        self.excused: dict[str, set[str]] = {k: set() for k in KINDS}
        self.excused["label"] = set(self.of["outlier"])
        self.excused[DUPLICATE] = (derived | {self.source[p] for p in derived}) - pairs

    def found(self, kind: str, flags: set[str]) -> int:
        if kind == DUPLICATE:
            return sum(1 for p in self.of[kind] if p in flags or self.source[p] in flags)
        return len(self.of[kind] & flags)

    def score(self, kind: str, flags: set[str]) -> dict:
        counted = flags - self.excused[kind]
        right = counted & self.right[kind]
        clean = (counted & self.clean) - self.right[kind]
        return {"flagged": len(flags), "precision": len(right) / len(counted) if counted else None,
                "recall": self.found(kind, flags) / len(self.of[kind]) if self.of[kind] else None,
                "clean": len(clean) / len(self.clean), "other": len(counted - right - self.clean),
                "excused": len(flags) - len(counted)}

    def clean_flagged(self, flagged: dict[str, set[str]]) -> float:
        """Share of clean pictures flagged with any scored kind (excused and right flags aside)."""
        bad: set[str] = set()
        for kind, flags in flagged.items():
            if kind in KINDS:
                bad |= (flags & self.clean) - self.excused[kind] - self.right[kind]
        return len(bad) / len(self.clean)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def print_table(truth: Truth, results: dict[str, dict | None], pawsight_outliers: int | None) -> None:
    print("| kind | planted | tool | flagged | excused | precision % | recall % | clean flagged % "
          "| other planted | seconds | target |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind in KINDS:
        for tool in TOOLS:
            r = results.get(tool)
            if r is None or (kind not in r["flagged"] and tool != "pawsight"):
                continue  # not run, or the tool has no such check
            s = truth.score(kind, r["flagged"].get(kind, set()))
            seconds = r.get("seconds_by_kind", {}).get(kind, r["seconds"])
            target = TARGETS.get(kind, "") if tool == "pawsight" else ""
            print(f"| {kind} | {len(truth.of[kind])} | {tool} | {s['flagged']} | {s['excused']} | "
                  f"{pct(s['precision'])} | "
                  f"{pct(s['recall'])} | {pct(s['clean'])} | {s['other']} | {seconds:.1f} | {target} |")
        cleanlab = results.get("cleanlab") or {}
        if kind == "outlier" and cleanlab.get("ood_ranking"):
            n = pawsight_outliers or len(truth.of["outlier"])
            top = {str(Path(p).resolve()) for p in cleanlab["ood_ranking"][:n]}
            s = truth.score(kind, top)
            why = "N = pawsight's count" if pawsight_outliers else "N = planted count, no pawsight run"
            seconds = cleanlab["parts"]["features (cold)"] + cleanlab["parts"]["OOD ranking"]
            print(f"| outlier | {len(truth.of[kind])} | cleanlab OOD top-{n} ({why}) | {n} | 0 | "
                  f"{pct(s['precision'])} | {pct(s['recall'])} | {pct(s['clean'])} | {s['other']} | "
                  f"{seconds:.1f} | |")
    print()
    for tool in TOOLS:
        r = results.get(tool)
        if r is None:
            continue
        extra = {k: len(v) for k, v in r["flagged"].items() if k not in KINDS}
        every = set().union(*r["flagged"].values()) if r["flagged"] else set()
        planted_any = sum(1 for p in truth.kind if p in every or truth.source.get(p) in every)
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r.get("parts", {}).items())
        print(f"- {tool}: {pct(truth.clean_flagged(r['flagged']))}% of {len(truth.clean)} clean pictures "
              f"flagged (scored kinds); {planted_any}/{len(truth.kind)} planted flagged with any kind; "
              f"unscored kinds: {extra or 'none'}; {r['seconds']:.1f} s" + (f" ({parts})" if parts else ""))


# -- accuracy -----------------------------------------------------------------------------------------------
def train_and_evaluate(data: Path, run_dir: Path, validation: Path, cache: Path,
                       exclude: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "pawsight", "train", str(data), "--out", str(run_dir), "--overwrite",
           "--json"]
    if exclude is not None:
        cmd += ["--exclude", str(exclude)]
    code, _, err, train_s = run(cmd, cache=cache)
    if code != 0:
        return {"error": f"train exit {code}: {tail(err)}"}
    code, out, err, _ = run([sys.executable, "-m", "pawsight", "evaluate", str(run_dir), str(validation),
                             "--json", "--no-save"], cache=cache)
    if code != 0:
        return {"error": f"evaluate exit {code}: {tail(err)}"}
    ev = last_json(out)
    metrics = ev.get("metrics") or {}
    return {"accuracy": ev.get("accuracy", metrics.get("accuracy")),
            "n": ev.get("n_images", metrics.get("n_images")), "train_seconds": train_s,
            "excluded": len((read_json(run_dir / "run.json").get("data") or {}).get("excluded") or [])}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def accuracy_table(manifest: dict, work: Path, flagged_csv: Path | None,
                   issues_seconds: float | None) -> None:
    validation = Path(manifest["clean_validation"])
    rows = [("(a) clean collection", Path(manifest["clean_collection"]), work / "cache-train-clean", None),
            ("(b) planted", Path(manifest["collection"]), work / "cache-train-planted", None)]
    if flagged_csv is not None:
        rows.append(("(c) planted, --exclude pawsight's flags", Path(manifest["collection"]),
                     work / "cache-issues", flagged_csv))
    print(f"\naccuracy on the clean validation set {validation} (default transfer training)\n")
    print("| training data | excluded | accuracy % | vs clean (points) | pictures evaluated | train s "
          "| load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    clean = planted_train = None
    for name, data, cache, exclude in rows:
        r = train_and_evaluate(data, work / f"run-{name[1]}", validation, cache, exclude)
        load = os.getloadavg()[0]
        if "error" in r or r["accuracy"] is None:
            print(f"| {name} | | {r.get('error', 'no accuracy')} | | | | {load:.1f} |", flush=True)
            continue
        if name.startswith("(a)"):
            clean = r["accuracy"]
        if name.startswith("(b)"):
            planted_train = r["train_seconds"]
        diff = "" if clean is None or name.startswith("(a)") else f"{100 * (r['accuracy'] - clean):+.2f}"
        print(f"| {name} | {r['excluded']} | {100 * r['accuracy']:.2f} | {diff} | {r['n']} | "
              f"{r['train_seconds']:.1f} | {load:.1f} |", flush=True)
    if flagged_csv is None:
        print("\n(c) planted --exclude: skipped (no FLAGGED.csv from pawsight data issues)")
    if issues_seconds and planted_train:
        print(f"\nissues pass {issues_seconds:.1f} s vs a cold default training on the planted collection "
              f"{planted_train:.1f} s: {issues_seconds / planted_train:.2f}x (target <= 1.5x)")


# -- one source ---------------------------------------------------------------------------------------------
def bench_source(source: str, args: argparse.Namespace) -> None:
    out = args.out / f"planted-{source}"
    where = paths_for(out)
    manifest = None
    if where["manifest"].exists() and not args.replant:
        manifest = json.loads(where["manifest"].read_text())
        if manifest.get("seed") != args.seed or not Path(manifest["collection"]).is_dir():
            manifest = None
    if manifest is None:
        manifest = plant(source, out, args.seed)
        print(f"planted {source} into {out} (seed {args.seed})")
    else:
        print(f"reusing {out} (seed {args.seed}; --replant to plant again)")
    truth = Truth(manifest)
    print(f"{len(truth.clean)} clean + {len(truth.kind)} planted pictures in {len(manifest['classes'])} "
          f"classes; planted: {manifest['counts']}\n")
    work = args.out / f"work-{source}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("cache-*"):  # every tool starts cold, each in a cache of its own
        shutil.rmtree(stale)
    results: dict[str, dict | None] = {}
    print(f"load average before pawsight: {os.getloadavg()[0]:.1f}", flush=True)
    results["pawsight"] = run_pawsight(truth.root, work)
    if args.peers:
        print(f"load average before cleanvision: {os.getloadavg()[0]:.1f}", flush=True)
        results["cleanvision"] = run_peer(args, ["cleanvision", str(truth.root)], work, "cleanvision")
        print(f"load average before the cleanlab pipeline: {os.getloadavg()[0]:.1f}", flush=True)
        results["cleanlab"] = run_cleanlab(args, truth.root, work)
    print(f"load average after the tools: {os.getloadavg()[0]:.1f}\n", flush=True)
    pawsight = results.get("pawsight")
    print_table(truth, results, len(pawsight["flagged"].get("outlier", ())) if pawsight else None)
    if args.accuracy:
        accuracy_table(manifest, work, pawsight["csv"] if pawsight else None,
                       pawsight["seconds"] if pawsight else None)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--features"]:  # internal: run in a subprocess with its own PAWSIGHT_CACHE
        print(json.dumps({"seconds": write_features(Path(argv[1]), Path(argv[2]))}))
        return 0
    args = parse_args(argv)
    if args.out.resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        print(f"--out {args.out} is inside the repository; choose a folder outside it", file=sys.stderr)
        return 2
    print(f"cores: {len(os.sched_getaffinity(0))}  seed: {args.seed}  out: {args.out}  "
          f"load average: {os.getloadavg()[0]:.1f}")
    for source in (["cats_and_dogs", "weather"] if args.source == "both" else [args.source]):
        print(f"\n## {source}\n", flush=True)
        bench_source(source, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
