"""Large collections: does each command's memory, disk and time per picture stay flat as the collection grows?

    ./run.sh bench scale                          # 3,000 and 30,000 pictures (generated once, then reused)
    ./run.sh bench scale --sizes 3000,100000      # any sizes; 100,000 takes ~2 GB of disk and hours of CPU
    ./run.sh bench scale --commands inspect,train # a subset of: inspect, train, train-warm, evaluate, predict
    ./run.sh bench scale --small --sizes 1000000 --commands inspect,predict   # 64x64 pictures (item 7)

The collections are synthetic and seeded: each picture is one of the cats_and_dogs pictures, randomly
cropped, rotated, colour-jittered, resized and re-encoded at a random JPEG quality (`make_collection`), so
no two files are alike (the decode cache keys by content) and labels stay right. With `--small` every picture
is 64x64 (`make_small`: the same transformations of a 96-px copy of the source, ~2 KB per file), the
million-picture collection of `data inspect` and `predict`. They are written under benchmarks/.scratch/
(git-ignored) and reused by later runs; each size starts with an empty cache folder. `predict` answers every
file of the collection with a default transfer run trained once on cats_and_dogs (`--run` to give another).

Every command runs as its own process (`python -m pawsight ...`); its peak RSS is the ru_maxrss that
os.wait4 reports for that process (worker processes it waited for included). Per command and size the table
gives wall time, time per picture, peak RSS, the decode cache's bytes per picture (pixels only) and the run
directory's size. The machine is shared: the load average is printed with the table; memory and bytes are
what this benchmark is for, the times depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "shared" / "datasets" / "cats_and_dogs"
SCRATCH = HERE / ".scratch"
GENERATOR = 1  # bump when make_one changes: collections of another version are made again
COMMANDS = ("inspect", "train", "train-warm", "evaluate", "predict")
SMALL = 64  # side of the --small collections' pictures
_SOURCES: dict[str, Image.Image] = {}  # per worker process: source path -> its 96-px copy (make_small)


def make_one(job: tuple[str, str, int]) -> None:
    """One synthetic picture: source `src` transformed with the seeded random numbers of picture `seed`."""
    src, dst, seed = job
    rng = np.random.default_rng([GENERATOR, seed])
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        area = rng.uniform(0.6, 1.0)
        cw, ch = int(w * np.sqrt(area)), int(h * np.sqrt(area))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
        im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.7, 1.3)))
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2)))
        side = int(rng.integers(240, 420))
        scale = side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im.save(dst, "JPEG", quality=int(rng.integers(60, 96)))


def make_small(job: tuple[str, str, int]) -> None:
    """One 64x64 synthetic picture: like `make_one`, from a 96-px copy of the source kept in this worker
    (decoding a 500x375 JPEG per picture would make a million of them take hours)."""
    src, dst, seed = job
    rng = np.random.default_rng([GENERATOR, seed])
    base = _SOURCES.get(src)
    if base is None:
        with Image.open(src) as im:
            im.draft("RGB", (192, 192))
            base = _SOURCES[src] = im.convert("RGB").resize((96, 96), Image.BILINEAR)
    x0, y0 = (int(v) for v in rng.integers(0, 17, size=2))
    side = int(rng.integers(80, 97 - max(x0, y0)))
    im = base.crop((x0, y0, x0 + side, y0 + side))
    im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2)))
    im = im.resize((SMALL, SMALL), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im.save(dst, "JPEG", quality=int(rng.integers(60, 96)))


def make_collection(n: int, source: Path = SOURCE, small: bool = False) -> Path:
    """SCRATCH/scale-<n>/{train,validation}/{cats,dogs}/ (small-<n> with `small`): n pictures, 80/20
    train/validation per source split (a source picture's variants stay on its side), made once (a
    `done.json` records it)."""
    folder = SCRATCH / f"{'small' if small else 'scale'}-{n}"
    done = folder / "done.json"
    if done.is_file() and json.loads(done.read_text()) == {"n": n, "generator": GENERATOR}:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    sources = {split: sorted((source / split).rglob("*.jpg")) for split in ("train", "validation")}
    jobs = []
    for split, share in (("train", 0.8), ("validation", 0.2)):
        files = sources[split]
        count = int(round(n * share))
        for i in range(count):
            src = files[i % len(files)]
            dst = folder / split / src.parent.name / f"{src.stem}-{i:07d}.jpg"
            jobs.append((str(src), str(dst), i if split == "train" else 10**8 + i))
    for split in ("train", "validation"):
        for cls in ("cats", "dogs"):
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(make_small if small else make_one, jobs, chunksize=256 if small else 64))
    done.write_text(json.dumps({"n": n, "generator": GENERATOR}))
    print(f"made {len(jobs)} pictures in {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one pawsight command run as its own process."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pawsight", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode:
        print(f"  {' '.join(argv[:2])} failed ({proc.returncode}): {err.decode()[-300:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def predict_run(env: dict[str, str]) -> Path:
    """A default transfer run on cats_and_dogs for `predict`, trained once (into SCRATCH/predict-run)."""
    run = SCRATCH / "predict-run"
    if not (run / "model.onnx").is_file():
        print(f"training the run predict uses: {run}", flush=True)
        own_cache = {**env, "PAWSIGHT_CACHE": str(SCRATCH / "predict-run-cache")}  # not the measured one
        subprocess.run([sys.executable, "-m", "pawsight", "train", str(SOURCE), "--out", str(run),
                        "--overwrite"], env=own_cache, check=True, stdout=subprocess.DEVNULL)
    return run


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="3000,30000", help="collection sizes, comma-separated")
    ap.add_argument("--commands", default=",".join(COMMANDS), help=f"some of {', '.join(COMMANDS)}")
    ap.add_argument("--approach", default="transfer", help="what train trains (its defaults)")
    ap.add_argument("--train-args", default="", help="more train options, e.g. '--epochs 1'")
    ap.add_argument("--small", action="store_true", help=f"{SMALL}x{SMALL} pictures (inspect, predict)")
    ap.add_argument("--run", type=Path, default=None,
                    help="the run predict uses (default: a transfer run trained once on cats_and_dogs)")
    ap.add_argument("--src", type=Path, default=HERE.parent / "src",
                    help="the pawsight source tree to measure (another checkout's src/: before and after)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    commands = [c for c in args.commands.split(",") if c]
    unknown = set(commands) - set(COMMANDS)
    if unknown:
        print(f"unknown command(s) {', '.join(sorted(unknown))}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    rows = []
    for n in sizes:
        data = make_collection(n, small=args.small)
        work = SCRATCH / f"work-{'small-' if args.small else ''}{n}-{args.src.resolve().parent.name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cache, run = work / "cache", work / "run"
        src = str(args.src.resolve())
        env = {**os.environ, "PAWSIGHT_CACHE": str(cache),
               "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        for command in commands:
            argv = {"inspect": ["data", "inspect", str(data), "--sheet", str(work / "sheet.png")],
                    "train": ["train", str(data), "--approach", args.approach, "--out", str(run),
                              *args.train_args.split()],
                    "train-warm": ["train", str(data), "--approach", args.approach, "--out", str(run),
                                   "--overwrite", *args.train_args.split()],
                    "evaluate": ["evaluate", str(run), str(data)],
                    "predict": ["predict", "RUN", str(data), "--format", "csv"],
                    }[command]
            if command == "predict":  # trained (once) before its measurement, not inside it
                argv[1] = str(args.run or predict_run(env))
            wall, rss, status = measure(argv, env)
            pixels = folder_bytes(cache / "pixels")
            run_bytes = folder_bytes(run) if command.startswith("train") else None
            rows.append((command, n, wall, rss, pixels / n, run_bytes, status))
            print(f"  {command} at {n}: {wall:.1f} s, {rss:.0f} MB", flush=True)
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})\n")
    print("| command | pictures | wall s | ms/picture | peak RSS MB | cache KB/picture | run dir MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for command, n, wall, rss, per_picture, run_bytes, status in rows:
        run_text = f"{run_bytes / 2**20:.1f}" if run_bytes is not None else "-"
        failed = " (failed)" if status else ""
        print(f"| {command}{failed} | {n} | {wall:.1f} | {1000 * wall / n:.2f} | {rss:.0f} | "
              f"{per_picture / 1024:.1f} | {run_text} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
