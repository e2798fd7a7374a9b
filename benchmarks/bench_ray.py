"""`pawsight predict --engine ray` against the local engine: pictures/s on the same input, here.

    ./run.sh bench ray                     # trains the default transfer run first; 1,000 validation pictures
    ./run.sh bench ray --run RUN --n 500   # an existing run
    ./run.sh bench ray --data DIR --n 40 --approach classical   # a quick check that it works

Each way runs the real command end to end in a subprocess (`pawsight predict RUN - --format csv`, the
pictures as a listing on stdin), interpreter start, model load and (Ray) connecting and starting the actors
included:
- **local engine**: threads decode, ONNX Runtime answers, every core;
- **Ray, 1 node**: a Ray head started for the benchmark, `--cpus-per-node` CPUs (default 1);
- **Ray, 2 nodes**: the same head and a second node (another `ray start` on this machine), as many CPUs.
Every Ray process is bound to 127.0.0.1 and uses a private temporary folder; the benchmark stops only the
processes it started. The fixed cost of each way (one picture) is measured apart, so the table shows both the
overhead and the rate once running. The labels of every way are compared with the local engine's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cats_and_dogs"

# `ray start` with Ray's "this machine's address" answering 127.0.0.1 (Ray otherwise replaces a loopback
# --node-ip-address by the network address, and a second node cannot join a loopback head); as in
# tests/test_ray.py.
LOOPBACK_RAY_START = """
import sys
import ray._private.services as services
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""


def ray_env(token: str) -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PAWSIGHT_PROGRESS": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token}


class LoopbackCluster:
    """A Ray cluster of `nodes` nodes on this machine, bound to 127.0.0.1, stopped by process id."""

    def __init__(self, nodes: int, cpus: int, token: str) -> None:
        self.temp = tempfile.mkdtemp(prefix="pawsight-raybench-", dir="/tmp")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        start = [sys.executable, "-c", LOOPBACK_RAY_START, "start", "--node-ip-address=127.0.0.1",
                 f"--num-cpus={cpus}", f"--temp-dir={self.temp}", "--disable-usage-stats"]
        try:
            for i in range(nodes):
                extra = (["--head", f"--port={port}", "--include-dashboard=false"] if i == 0
                         else [f"--address={self.address}"])
                done = subprocess.run([*start, *extra], env=ray_env(token), capture_output=True, text=True,
                                      timeout=180)
                if done.returncode:
                    raise RuntimeError(f"ray start failed: {done.stderr[-1000:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        import psutil

        procs: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if p.pid != os.getpid() and any(self.temp in a for a in p.info["cmdline"] or []):
                    procs[p.pid] = p
                    procs.update({c.pid: c for c in p.children(recursive=True)})
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(procs.values()), timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


def predict(run: Path, files: list[Path], env: dict[str, str], *extra: str) -> tuple[float, list[str]]:
    """(seconds, labels) of `pawsight predict RUN - --format csv` on `files`."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pawsight", "predict", str(run), "-", "--format", "csv",
                           *extra], input="".join(f"{f}\n" for f in files), capture_output=True, text=True,
                          env=env, timeout=3600)
    seconds = time.perf_counter() - t
    if done.returncode not in (0, 1):
        raise RuntimeError(f"pawsight predict {' '.join(extra)} failed: {done.stderr.strip()[-500:]}")
    labels = [line.split(",")[1] for line in done.stdout.splitlines()[1:]]
    return seconds, labels


def make_run(args: argparse.Namespace, scratch: Path) -> Path:
    if args.run is not None or args.approach == "transfer":
        from common import default_run

        return default_run(args.data, args.run, scratch)
    import pawsight

    run = scratch / "run"
    t = time.perf_counter()
    pawsight.train(args.data, out=run, approach="classical", features="hog", model="logreg")
    print(f"trained a classical run (HOG + logistic regression) in {time.perf_counter() - t:.1f} s",
          flush=True)
    return run


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench ray", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--run", type=Path, default=None, help="a trained run (default: train one)")
    ap.add_argument("--approach", choices=["transfer", "classical"], default="transfer",
                    help="the run trained when --run is not given (default: the default transfer run)")
    ap.add_argument("--n", type=int, default=1000, help="pictures to label (validation first)")
    ap.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each Ray node offers (default 1)")
    args = ap.parse_args(argv)
    try:
        import psutil  # noqa: F401 - stops the clusters' processes by id
        import ray  # noqa: F401
    except ImportError as exc:
        print(f"bench ray needs the ray extra ({exc.name} is missing): pip install -e '.[ray,dev]'",
              file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        os.environ.setdefault("PAWSIGHT_CACHE", str(Path(tmp) / "cache"))
        run = make_run(args, Path(tmp))
        from pawsight.run import read_run_info

        approach = read_run_info(run)["approach"]
        files = [*sorted((args.data / "validation").rglob("*.jpg")),
                 *sorted((args.data / "train").rglob("*.jpg"))][:args.n]
        for f in files:
            f.read_bytes()  # OS page cache warm for every way
        token = secrets.token_hex(32)
        env = ray_env(token)
        rows = []
        seconds, local = predict(run, files, env)
        one, _ = predict(run, files[:1], env)
        rows.append(("local engine", "this machine, every core", seconds, one, local))
        for nodes in (1, 2):
            cluster = LoopbackCluster(nodes, args.cpus_per_node, token)
            try:
                extra = ("--engine", "ray", "--address", cluster.address)
                seconds, labels = predict(run, files, env, *extra)
                one, _ = predict(run, files[:1], env, *extra)
            finally:
                cluster.stop()
            rows.append((f"Ray, {nodes} node{'s' * (nodes > 1)} (loopback)",
                         f"{nodes} x {args.cpus_per_node} CPU", seconds, one, labels))

    n = len(files)
    load_after = os.getloadavg()
    print(f"\n{n} pictures of {args.data}, a {approach} run ({os.cpu_count()} cores; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after)\n")
    print("| way | resources | seconds (all) | pictures/s | one picture (fixed cost) s | pictures/s after "
          "the fixed cost | labels as local |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, resources, seconds, one, labels in rows:
        running = n / (seconds - one) if seconds > one else float("nan")
        agree = sum(a == b for a, b in zip(labels, local, strict=False))
        print(f"| {name} | {resources} | {seconds:.1f} | {n / seconds:.1f} | {one:.1f} | {running:.1f} | "
              f"{agree}/{len(local)} |")
    return 0 if all(labels == local for *_, labels in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
