"""`pawsight predict --engine ray` on a real two-node Ray cluster on this machine, every Ray process bound to
127.0.0.1: the same answers as the local engine (labels, probabilities, neither scores, skipped files and
their reasons, exit status, order), a worker killed mid-job changes nothing (every picture answered exactly
once), and the mistakes a user can make are one `error:` line. Without ray installed these are skipped (CI
installs it with the dev extra); the checks that ray stays out of `import pawsight` always run."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# One xdist worker runs every test of this file (./run.sh test passes --dist loadgroup): the two-node cluster
# starts once, and two clusters never compete for the 2 cores.
pytestmark = pytest.mark.xdist_group("ray")

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed: pip install 'pawsight[ray]' "
                                                   "(the dev extra installs it, so CI runs these)")

# `ray start`, with Ray's "this machine's address" answering 127.0.0.1: Ray replaces a loopback
# --node-ip-address by the machine's network address, and a second node cannot join a loopback head
# otherwise. With it, the GCS, both raylets and every worker listen on 127.0.0.1 only
# (test_every_ray_process_listens_on_loopback_only checks).
LOOPBACK_RAY_START = """
import sys
import ray._private.services as services
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""


# Token authentication with a token only the test's processes know (nothing written to ~/.ray).
TOKEN = secrets.token_hex(32)


def env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PAWSIGHT_PROGRESS": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": TOKEN}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(temp_dir: str) -> list:
    """Every process of the test cluster: those started with its private temp folder, and their children
    (the workers). Nothing else on the machine is ever touched."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and any(temp_dir in a for a in p.info["cmdline"] or []):
                found[p.pid] = p
                for child in p.children(recursive=True):
                    found[child.pid] = child
        except psutil.Error:
            continue
    return list(found.values())


def command_line(p) -> str:
    import psutil

    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def listening_addresses(procs: list) -> set[str]:
    """The addresses the processes listen on (TCP and UDP)."""
    import psutil

    found = set()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            found |= {c.laddr.ip for c in p.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)}
    return found


def stop_cluster(temp_dir: str) -> None:
    """`ray stop --force` would kill every Ray process of the machine (other sessions too): this kills the
    test cluster's own processes, by id."""
    import psutil

    procs = cluster_processes(temp_dir)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node (1 CPU each), private temp folder, loopback only. Yields the address."""
    temp_dir = tempfile.mkdtemp(prefix="pawsight-raytest-", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    start = [sys.executable, "-c", LOOPBACK_RAY_START, "start", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        for extra in (["--head", f"--port={port}", "--include-dashboard=false"],
                      [f"--address=127.0.0.1:{port}"]):
            done = subprocess.run([*start, *extra], env=env(), capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def classical(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import pawsight

    out = tmp_path_factory.mktemp("ray-classical") / "run"
    pawsight.train(tiny, out=out, approach="classical", features="hog", model="logreg")
    return out


@pytest.fixture(scope="module")
def inputs(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The tiny validation set, a truncated JPEG, a text file named .jpg and a path that does not exist."""
    folder = tmp_path_factory.mktemp("ray-bad")
    good = sorted((tiny / "validation" / "cats").iterdir())[0]
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:600])
    (folder / "notes.jpg").write_text("not a picture, only a name\n")
    return [str(folder / "gone.jpg"), str(tiny / "validation"), str(folder / "truncated.jpg"),
            str(folder / "notes.jpg")]  # a skipped file first: its place in the answers is checked


def predict(*argv: str, stdin: str | None = None, extra_env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pawsight", "predict", *argv], input=stdin,
                          capture_output=True, text=True, env={**env(), **(extra_env or {})}, timeout=timeout)


def assert_same_answers(local: list[dict], ray: list[dict]) -> None:
    assert [r["path"] for r in ray] == [r["path"] for r in local]  # same pictures, same order
    for a, b in zip(local, ray, strict=True):
        assert set(a) == set(b) and b.get("label") == a.get("label") and b.get("error") == a.get("error")
        if "error" in a:
            continue
        assert b["closest"] == a["closest"] and b["summary"] == a["summary"]
        for c, p in a["probabilities"].items():
            assert b["probabilities"][c] == pytest.approx(p, abs=1e-5)
        if a["unknown_score"] is None:
            assert b["unknown_score"] is None
        else:
            assert b["unknown_score"] == pytest.approx(a["unknown_score"], abs=1e-5)
        assert b["unknown_threshold"] == a["unknown_threshold"]


@needs_ray
def test_every_ray_process_listens_on_loopback_only(cluster) -> None:

    _, temp_dir = cluster
    procs = cluster_processes(temp_dir)
    assert len([p for p in procs if p.name() == "raylet"]) == 2  # two nodes
    listening = listening_addresses(procs)
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


@needs_ray
@pytest.mark.parametrize("which", ["classical", "transfer"])
def test_ray_gives_the_local_engines_answers(which, cluster, classical, transfer_run, inputs) -> None:
    """Labels, probabilities, neither scores (transfer), skipped files with their reasons, order, exit 1."""
    run = str(classical if which == "classical" else transfer_run)
    local = predict(run, *inputs, "--format", "json")
    ray = predict(run, *inputs, "--format", "json", "--engine", "ray", "--address", cluster[0])
    assert local.returncode == 1 and ray.returncode == 1, ray.stderr
    answers = [json.loads(line) for line in ray.stdout.splitlines()]
    assert_same_answers([json.loads(line) for line in local.stdout.splitlines()], answers)
    assert len(answers) == 40 + 3 and sum("error" in a for a in answers) == 3
    assert ray.stderr.splitlines() == local.stderr.splitlines()  # one line per skipped file, nothing else
    assert [line.split(":")[0] for line in ray.stderr.splitlines()] == [
        f"skipped {p}" for p in inputs if p != inputs[1]]
    assert "error" in answers[0] and "error" not in answers[1]
    if which == "transfer":
        assert all(a["unknown_score"] is not None for a in answers if "error" not in a)


@needs_ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, raised inside ray (in-process)
def test_chunks_keep_the_input_order_and_relative_paths_are_read_where_the_driver_is(
        cluster, classical, inputs, tiny, monkeypatch) -> None:
    """The driver hands Ray its inputs CHUNK (20,000) at a time; with chunks of 25 the 43 inputs make two
    Ray datasets: the answers still come in input order across the chunk edge and the skipped files, and
    relative paths (run and pictures) are those of the driver's folder, not of the actors'."""
    from pawsight import inference
    from pawsight.predict import iter_inputs
    from pawsight.predict import predict_stream as local_stream
    from pawsight.ray_engine import predict_stream

    monkeypatch.chdir(tiny)
    for name, value in env().items():
        if name.startswith("RAY_"):
            monkeypatch.setenv(name, value)
    items = [inputs[0], "validation", *inputs[2:]]
    run = os.path.relpath(classical, tiny)
    expected = list(local_stream(inference.load(run), iter_inputs(items)))
    got = list(predict_stream(Path(run), iter_inputs(items), address=cluster[0], chunk=25))
    assert [(path, reason) for path, _, reason in got] == [(path, reason) for path, _, reason in expected]
    assert got[1][0].startswith("validation/") and sum(reason is not None for *_, reason in got) == 3
    for (_, a, _), (_, b, _) in zip(expected, got, strict=True):
        assert (a is None and b is None) or (a["label"] == b["label"] and b["probabilities"] == pytest.approx(
            a["probabilities"], abs=1e-5))


@needs_ray
def test_a_worker_killed_mid_job_still_answers_every_picture_once(cluster, classical, tiny) -> None:
    """1,200 pictures (the tiny set ten times, as a listing on stdin); one Answerer actor is killed with
    SIGKILL while the job runs: Ray restarts it and re-runs its batches, and the answers are those of the
    local engine, each picture exactly once, in input order."""
    import psutil

    address, temp_dir = cluster
    files = sorted(str(p) for p in tiny.rglob("*.jpg"))
    listing = files * 10
    lines = predict(str(classical), *files, "--json").stdout.splitlines()
    local = {r["path"]: r for r in map(json.loads, lines)}
    proc = subprocess.Popen([sys.executable, "-m", "pawsight", "predict", str(classical), "-", "--json",
                             "--engine", "ray", "--address", address, "--batch-size", "8"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())
    proc.stdin.write("\n".join(listing) + "\n")
    proc.stdin.close()
    first = proc.stdout.readline()  # answers are flowing: actors are up and working
    assert first, proc.stderr.read()
    killed = None
    deadline = time.monotonic() + 30
    while killed is None and time.monotonic() < deadline:
        actors = [p for p in cluster_processes(temp_dir) if "Answerer" in command_line(p)]
        if actors:
            killed = actors[0]
            os.kill(killed.pid, signal.SIGKILL)
        else:
            time.sleep(0.05)
    assert killed is not None, "no actor process found"
    assert proc.poll() is None, "the job ended before the kill: make it longer"
    rest = proc.stdout.read()  # (the text buffer after readline: not communicate(), which reads the pipe)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    psutil.wait_procs([killed], timeout=5)
    assert not killed.is_running()
    answers = [json.loads(line) for line in [first, *rest.splitlines()]]
    assert [a["path"] for a in answers] == listing  # every picture exactly once, in input order
    for a in answers:
        assert a["label"] == local[a["path"]]["label"]
        assert a["probabilities"] == pytest.approx(local[a["path"]]["probabilities"], abs=1e-5)


@needs_ray
def test_a_bad_address_is_one_error_line(classical, tiny) -> None:
    port = free_port()  # nothing listens there
    for argv, extra in (((f"--address=127.0.0.1:{port}",), None), ((), {"RAY_ADDRESS": f"127.0.0.1:{port}"})):
        t = time.monotonic()
        done = predict(str(classical), str(tiny / "validation"), "--engine", "ray", *argv, extra_env=extra,
                       timeout=120)
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith(f"error: cannot connect to the Ray cluster at 127.0.0.1:{port}")
        assert time.monotonic() - t < 60


def test_engine_ray_on_serve_and_address_without_ray_are_one_error_line(classical) -> None:
    from pawsight.errors import EXIT_USAGE

    done = subprocess.run([sys.executable, "-m", "pawsight", "serve", str(classical), "--engine", "ray"],
                          capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == EXIT_USAGE and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: unrecognized arguments: --engine ray")
    done = predict(str(classical), "x.jpg", "--address", "127.0.0.1:6379")
    assert done.returncode == EXIT_USAGE and done.stderr.strip() == (
        "error: --address is the Ray cluster's address: add --engine ray")


def test_engine_ray_without_ray_installed_is_one_error_line(classical, tiny) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ImportError
            "from pawsight.cli import main\n"
            f"sys.exit(main(['predict', {str(classical)!r}, {str(tiny / 'validation')!r}, "
            "'--engine', 'ray']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("error: --engine ray needs Ray (ray is missing): "
                                   "pip install 'pawsight[ray]'")


def test_import_pawsight_and_the_local_engine_do_not_import_ray(classical, tiny) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pawsight"], capture_output=True,
                          text=True, env=env(), timeout=60)
    assert done.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert not {m for m in imported if m == "ray" or m.startswith(("ray.", "pyarrow"))}
    code = ("import sys\nfrom pawsight.cli import main\n"
            f"status = main(['predict', {str(classical)!r}, {str(tiny / 'validation')!r}])\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n"
            "sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr


@needs_ray
def test_without_an_address_a_private_loopback_ray_writes_parquet_and_leaves_nothing(classical, inputs,
                                                                                     tmp_path) -> None:
    """No --address, no RAY_ADDRESS: a Ray of the command's own, every process listening on 127.0.0.1 only,
    with its token in memory (nothing written to ~/.ray), its folder removed and its processes gone at the
    end; its answers, written as Parquet with --out, are the local engine's."""
    import psutil
    import pyarrow.parquet as pq

    home = tmp_path / "home"
    home.mkdir()
    scratch = tempfile.mkdtemp(prefix="pr-", dir="/tmp")  # TMPDIR: where its private folder goes (short)
    environ = {k: v for k, v in env().items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    environ.update(HOME=str(home), TMPDIR=scratch)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pawsight", "predict", str(classical), *inputs,
                                 "--engine", "ray", "--format", "parquet", "--out", str(tmp_path / "out")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
        listening, names = set(), set()
        while proc.poll() is None:
            procs = cluster_processes(scratch)
            listening |= listening_addresses(procs)
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    names.add(p.name())
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
        local = predict(str(classical), *inputs, "--format", "json")
        assert proc.returncode == local.returncode == 1 and out == ""
        parquet = tmp_path / "out" / "predictions.parquet"
        assert err.splitlines() == [*local.stderr.splitlines(), f"wrote 43 answers to {parquet}"]
        table = pq.read_table(parquet).to_pylist()
        answers = [json.loads(x) for x in local.stdout.splitlines()]
        assert [t["path"] for t in table] == [a["path"] for a in answers]
        for t, a in zip(table, answers, strict=True):
            assert t["label"] == a.get("label") and t["error"] == a.get("error")
            for c in ("cats", "dogs"):
                expected = None if "error" in a else pytest.approx(a["probabilities"][c], abs=1e-5)
                assert t[f"p_{c}"] == expected
        assert "raylet" in names and listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        assert list(home.iterdir()) == [] and list(Path(scratch).iterdir()) == []
        time.sleep(1)
        assert [p.pid for p in cluster_processes(scratch)] == []
    finally:
        stop_cluster(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
