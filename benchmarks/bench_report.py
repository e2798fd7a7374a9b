"""Seconds to draw every plot and write the HTML report of a trained run (target: <= 15 s after training for
the default transfer run on cats_and_dogs, explanations of the top losses included).

    ./run.sh bench report                          # default transfer run on ../shared/datasets/cats_and_dogs
    ./run.sh bench report --approach classical --top-k 8
    ./run.sh bench report --data DIR --run RUN     # an existing run (not retrained)

The run is trained first (not timed; its caches are warm afterwards, as right after `pawsight train`), then
each part is timed on its own, then `pawsight plot` and `pawsight report` as a user runs them. Explanation
methods are compared per picture side by side: Grad-CAM (one forward + backward pass) against occlusion
(~100 occluded copies through the model).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cats_and_dogs"
TARGET_SECONDS = 15.0


CPU: dict[str, float] = {}  # CPU seconds of the last timed call (all threads of this process)


def timed(fn, *args, **kwargs):
    """(value, wall seconds); the process's CPU seconds go to CPU["last"]: on a shared machine wall time
    depends on the others' load, CPU time much less."""
    t, c = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    CPU["last"] = time.process_time() - c
    return value, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--approach", default="transfer", choices=["transfer", "classical", "scratch"])
    ap.add_argument("--run", type=Path, default=None, help="an existing run directory (skips training)")
    ap.add_argument("--top-k", type=int, default=8)
    args = ap.parse_args(argv)
    os.environ.setdefault("PAWSIGHT_PROGRESS", "0")

    from pawsight import api
    from pawsight.report import plots
    from pawsight.report.explain import Explainer
    from pawsight.report.html import build_report

    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            extra = {"time_budget": 120} if args.approach == "scratch" else {}
            _, train_s = timed(api.train, args.data, approach=args.approach, out=run, **extra)
            print(f"trained {args.approach} on {args.data} in {train_s:.1f} s (not counted)", flush=True)
        rows: list[tuple[str, float, float, str]] = []
        evaluation, s = timed(plots.load_evaluation, run, args.data)
        rows.append(("evaluate (per-picture predictions)", s, CPU["last"],
                     f"{len(evaluation['predictions'])} pictures"))
        curves, s = timed(plots.run_figures, run)
        rows.append(("training / learning curves", s, CPU["last"],
                     ", ".join(f.name for f in curves) or "none"))
        views, s = timed(plots.evaluation_figures, evaluation, args.top_k)
        rows.append(("evaluation views", s, CPU["last"], ", ".join(f.name for f in views)))
        explainer = Explainer(run)
        losses = plots.top_losses(evaluation, args.top_k)
        for method in (["gradcam", "occlusion"] if explainer.deep else ["occlusion", "features"]):
            _, s = timed(lambda m=method: [explainer(t["path"], method=m) for t in losses])
            rows.append((f"explain {len(losses)} top losses: {method}", s, CPU["last"],
                         f"{s / max(1, len(losses)):.2f} s per picture"))
        _, plot_s = timed(plots.plot_run, run, evaluation)
        rows.append(("pawsight plot (all PNGs written)", plot_s, CPU["last"], "curves + views"))
        (path, parts), report_s = timed(build_report, run, args.data, Path(tmp) / "report.html", args.top_k)
        size_kb = path.stat().st_size / 1024
        rows.append(("pawsight report (HTML, explanations included)", report_s, CPU["last"],
                     f"{size_kb:.0f} KB"))
        total = plot_s + report_s
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\n{args.approach} run, {args.data.name}; load average {load:.1f} on {os.cpu_count()} cores\n")
        print("| part | wall s | CPU s | note |\n|---|---:|---:|---|")
        for name, s, cpu, note in rows:
            print(f"| {name} | {s:.2f} | {cpu:.2f} | {note} |")
        verdict = "pass" if report_s <= TARGET_SECONDS else "FAIL"
        print(f"\nreport parts: {', '.join(f'{k} {v:.1f} s' for k, v in parts.items())}")
        print(f"target: report (all plots + explanations) <= {TARGET_SECONDS:.0f} s after training: "
              f"{report_s:.1f} s, {verdict}; plot + report together {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
