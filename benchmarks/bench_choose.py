"""Which approach for my data, measured: compare, advise and --approach auto on cats_and_dogs.

    ./run.sh bench choose                       # all three parts
    ./run.sh bench choose --parts compare,advise --data DIR
    ./run.sh bench choose --auto-budget 10m

compare: `pawsight compare` (classical + transfer, sizes 10,25,50,100,250,all) from an EMPTY cache, against
         training each of the two once on the full set, each from an empty cache (target: <= 2x).
advise:  `advise`'s estimated training time for each recipe against the measured wall time of `api.train`
         (its own `timings.total`) from an empty cache, for the recipes trained here (target: within +-30%).
auto:    `train --approach auto` with a time budget (default 10 minutes); its validation accuracy against the
         best recipe's (README: Lite2 + TTA 99.8%; target: within 1 point) and its wall time.
Times on a shared machine vary with its load: the load average is printed with every table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cats_and_dogs"
MEASURED = ["classical", "transfer-lite0", "transfer-lite2-tta"]  # recipes trained for the advise table


def load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


class fresh_cache:
    """An empty PAWSIGHT_CACHE for the block (cold: decoding and features included), removed afterwards."""

    def __enter__(self) -> Path:
        self.old = os.environ.get("PAWSIGHT_CACHE")
        self.dir = Path(tempfile.mkdtemp(prefix="bench-choose-cache-"))
        os.environ["PAWSIGHT_CACHE"] = str(self.dir)
        return self.dir

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            os.environ.pop("PAWSIGHT_CACHE", None)
        else:
            os.environ["PAWSIGHT_CACHE"] = self.old
        shutil.rmtree(self.dir, ignore_errors=True)


def train_cold(data: Path, recipe, out: Path) -> dict:
    from pawsight import api

    with fresh_cache():
        t = time.perf_counter()
        _, info = api.train(data, recipe.approach, out / recipe.name, overwrite=True, **recipe.kwargs)
        wall = time.perf_counter() - t
    return {"wall": wall, "total": info["timings"]["total"],
            "accuracy": info["metrics"]["validation"]["accuracy"]}


def main(argv: list[str]) -> int:
    from pawsight import choose
    from pawsight.cli import parse_duration

    ap = argparse.ArgumentParser(prog="bench choose", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--parts", default="compare,advise,auto")
    ap.add_argument("--auto-budget", type=parse_duration, default=600.0)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-choose-"))
    os.environ.setdefault("PAWSIGHT_PROGRESS", "0")
    recipes = {r.name: r for r in choose.RECIPES}
    measured: dict[str, dict] = {}

    if "compare" in parts or "advise" in parts:
        for name in MEASURED if "advise" in parts else MEASURED[:2]:
            measured[name] = train_cold(args.data, recipes[name], out / "single")
            print(f"trained {name}: {measured[name]['total']:.1f} s, "
                  f"{measured[name]['accuracy']:.1%} (load {load()})", flush=True)

    if "compare" in parts:
        with fresh_cache():
            t = time.perf_counter()
            result = choose.compare(args.data, ["classical", "transfer"], choose.DEFAULT_SIZES,
                                    time_budget=7200, out=out / "compare", overwrite=True,
                                    say=lambda s: print("  " + s, file=sys.stderr, flush=True))
            seconds = time.perf_counter() - t
        single = measured["classical"]["wall"] + measured["transfer-lite0"]["wall"]
        print(f"\ncompare (load {load()}):\n")
        print("| per class | classical | transfer | gap (points) |\n|---:|---:|---:|---:|")
        rows = result["rows"]
        for size in result["sizes"]:
            acc = {r["approach"]: r["accuracy"] for r in rows if (r["per_class"] or "all") == size}
            c, tr = acc.get("classical"), acc.get("transfer")
            gap = f"{100 * (tr - c):.1f}" if c is not None and tr is not None else "-"
            print(f"| {size} | {_pct(c)} | {_pct(tr)} | {gap} |")
        print(f"\ncompare wall {seconds:.0f} s vs classical + transfer once on the full set {single:.0f} s: "
              f"{seconds / single:.2f}x (target <= 2x) -> {'pass' if seconds <= 2 * single else 'FAIL'}")
        print(f"charts and leaderboard: {out / 'compare'}")

    if "advise" in parts:
        t = time.perf_counter()
        advice = choose.advise(args.data, args.auto_budget)
        seconds = time.perf_counter() - t
        est = {e["recipe"]: e["estimated_seconds"] for e in advice["estimates"]}
        print(f"\nadvise (calibration {advice['calibration']['seconds']:.0f} s, advise {seconds:.0f} s, "
              f"load {load()}): recommends {advice['recommendation']['recipe']}\n")
        print("| recipe | estimated s | measured s | error | within 30% |\n|---|---:|---:|---:|---|")
        for name, m in measured.items():
            e = est.get(name)
            err = (e - m["total"]) / m["total"] if e else None
            print(f"| {name} | {_num(e)} | {m['total']:.1f} | "
                  f"{'-' if err is None else f'{err:+.0%}'} | "
                  f"{'-' if err is None else ('yes' if abs(err) <= 0.3 else 'no')} |")
        for name, e in est.items():
            if name not in measured:
                print(f"| {name} | {_num(e)} | not measured | - | - |")

    if "auto" in parts:
        with fresh_cache():
            t = time.perf_counter()
            _, info = choose.auto_train(args.data, out / "auto", time_budget=args.auto_budget, overwrite=True,
                                        say=lambda s: print("  " + s, file=sys.stderr, flush=True))
            seconds = time.perf_counter() - t
        acc = info["metrics"]["validation"]["accuracy"]
        print(f"\nauto with a {args.auto_budget:.0f} s budget (load {load()}): "
              f"chose {info['auto']['winner']}, "
              f"validation {acc:.1%} (best recipe 99.8%: {'pass' if acc >= 0.988 else 'FAIL'}), "
              f"{seconds:.0f} s wall\n")
        print("| candidate | cv accuracy | seconds | status |\n|---|---:|---:|---|")
        for c in info["auto"]["candidates"]:
            print(f"| {c['recipe']} | {_pct(c.get('cv_accuracy'))} | {_num(c.get('seconds'))} | "
                  f"{c.get('status', '')} |")
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
