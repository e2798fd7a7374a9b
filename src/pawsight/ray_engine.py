"""`pawsight predict --engine ray`: the local engine's answers, computed on a Ray cluster with Ray Data.

The driver (the `pawsight predict` process) expands the inputs exactly as the local engine does
(`predict.iter_inputs`) and takes them CHUNK at a time: each chunk becomes a Ray dataset of (index, path)
rows, and `map_batches` runs `Answerer`, a callable class holding ONE `inference.load(run)` predictor per
actor, which reads and answers each batch with `inference.predict_files` — the local engine's reader
(`inference.read_image` with the run's preprocessing), `predictor.forward` and `predictor.records` (the one
answer record). Nothing about the decision, softmax, TTA or normalisation is computed here. The answers
stream back (`iter_batches`) and are put back in input order by their index before predict's writers see
them; an index Ray returns twice (it cannot, but a retried task must never show a picture twice) counts once.

Fault tolerance is Ray Data's: a killed actor is restarted and the batches it held are run again (its actor
pools default to `max_restarts=-1`, `max_task_retries=-1`); only a finished batch's answers reach the driver.

The actors open the run folder and the pictures by path: on several machines both must be on a shared
filesystem, mounted at the same path everywhere (docs/distributed.md). Ray is imported only here, and
only for `--engine ray`: `import pawsight` and the local engine never import it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .data import Skip
from .errors import PawsightError, shown

CHUNK = 20_000  # inputs per Ray dataset: bounds the driver's memory; each chunk starts its actors once
ROWS_PER_BLOCK = 4  # batches per Ray Data block: small blocks keep both the answers and the retries small
INSTALL = "pip install 'pawsight[ray]'"


class Answerer:
    """The function Ray Data maps over batches of (index, path) rows: one predictor per actor, loaded once.

    `engine_args` (run, threshold, decode threads) are set on a subclass made by `answerer()`, not passed
    as constructor arguments: those would sit in Ray's object store, which a restarted actor may not find."""

    engine_args: dict[str, Any] = {}

    def __init__(self) -> None:
        from .inference import load

        args = self.engine_args
        self.predictor = load(args["run"], threshold=args["threshold"], threads=1)
        self.workers = args["workers"]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from .inference import predict_files

        paths = [str(p) for p in batch["path"]]
        records, errors = [], []
        for _, record, reason in predict_files(self.predictor, paths, batch_size=len(paths) or 1,
                                               workers=self.workers):
            records.append("" if record is None else json.dumps(record))
            errors.append("" if reason is None else str(reason))
        return {"index": np.asarray(batch["index"], dtype=np.int64),
                "record": np.asarray(records, dtype=object), "error": np.asarray(errors, dtype=object)}


def answerer(run: Path, threshold: float | None, workers: int) -> type[Answerer]:
    return type("Answerer", (Answerer,), {"engine_args": {"run": str(run), "threshold": threshold,
                                                           "workers": workers}})


# -- connecting --------------------------------------------------------------------------------------------

def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of 'host:port' or 'ray://host:port'; None for 'auto' and other forms Ray resolves."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One line when nothing answers at `address` (Ray itself would retry for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise PawsightError(f"cannot connect to the Ray cluster at {shown(address)} ({why}); start one with "
                            "'ray start --head' or give its address with --address or RAY_ADDRESS") from None


class Cluster:
    """A connection to Ray for one command: the cluster at `address` (else RAY_ADDRESS), or a local Ray
    started for the command and bound to 127.0.0.1. Closing disconnects (and stops a local one)."""

    def __init__(self, address: str | None) -> None:
        address = address or os.environ.get("RAY_ADDRESS") or None
        hp = _host_port(address) if address else None
        local = address is None
        # A command's output is its answers: no usage statistics sent, no Ray Data progress or execution
        # logs, no C++ log lines on stderr (a failed job still raises, and is reported in one line).
        for name, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_DATA_LOG_LEVEL", "ERROR"),
                            ("RAY_BACKEND_LOG_LEVEL", "fatal")):
            os.environ.setdefault(name, value)
        if local and "RAY_AUTH_MODE" not in os.environ:
            # The Ray started for the command requires a token only this process and its children know:
            # Ray would otherwise write one to ~/.ray/auth_token, which later `ray start`s would pick up.
            import secrets

            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        try:
            import ray
        except ImportError as exc:
            raise PawsightError(f"--engine ray needs Ray ({exc.name or 'ray'} is missing): "
                                f"{INSTALL}") from None
        if local or (hp is not None and _loopback(hp[0])):
            # Ray turns 127.0.0.1 into this machine's network address; a loopback cluster (bound to
            # 127.0.0.1 only) is then unreachable. ENABLE_RAY_CLUSTER off makes Ray keep the loopback address.
            from ray._private import ray_constants

            if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
                ray_constants.ENABLE_RAY_CLUSTER = False
        self.ray, self.owned, self.temp = ray, False, None
        if ray.is_initialized():  # inside a Ray job (the Python API in a Ray task): use that connection
            return
        import logging

        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                                   "include_dashboard": False, "configure_logging": True}
        if local:
            import tempfile

            from .system import default_workers

            self.temp = tempfile.mkdtemp(prefix="pawsight-ray-")  # never another Ray session's folder
            options.update(address="local", num_cpus=default_workers(), _node_ip_address="127.0.0.1",
                           _temp_dir=self.temp)
        else:
            check_reachable(address)
            options.update(address=address)
            options.pop("include_dashboard")
            if hp is not None and _loopback(hp[0]):
                options["_node_ip_address"] = "127.0.0.1"
        try:
            with _stderr_muted():  # Ray's C++ start-up line ("Set ray log level ..."), nothing else
                ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            self.close()
            raise PawsightError(f"cannot connect to the Ray cluster at {shown(address or 'local')}: "
                                f"{shown(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}"
                                ) from None
        self.owned = True
        # Ray's driver prints cluster events ("A worker died ...") on sys.stdout, which holds the answers:
        # they go to stderr while connected (predict's writer keeps the real stdout).
        self.stdout, sys.stdout = sys.stdout, sys.stderr
        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()
            sys.stdout = self.stdout
            self.owned = False
        if self.temp is not None:
            import shutil

            shutil.rmtree(self.temp, ignore_errors=True)


class _stderr_muted:  # noqa: N801 - used as a statement: `with _stderr_muted():`
    """File descriptor 2 points at /dev/null inside the block (C++ code writes there directly)."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self.saved, 2)
        os.close(self.saved)


# -- predicting --------------------------------------------------------------------------------------------

def predict_stream(run: Path, inputs: Iterator[str | Skip], *, threshold: float | None = None,
                   batch_size: int = 32, address: str | None = None, actors: int | None = None,
                   chunk: int = CHUNK) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """(path, record, None) or (path, None, reason) per input, in input order: `predict.predict_stream`'s
    contract, answered by `actors` Ray actors (default: one per CPU of the cluster)."""
    cluster = Cluster(address)
    try:
        _quiet_data(cluster.ray)
        n_actors = actors or cluster.cpus()
        fn = answerer(Path(run).resolve(), threshold, workers=1)
        pending: list[str | Skip] = []
        for item in inputs:
            pending.append(item)
            if len(pending) >= chunk:
                yield from _answer_chunk(cluster.ray, fn, pending, batch_size, n_actors)
                pending = []
        if pending:
            yield from _answer_chunk(cluster.ray, fn, pending, batch_size, n_actors)
    finally:
        cluster.close()


def _quiet_data(ray: Any) -> None:
    """No Ray Data progress bars or execution logs on the user's terminal: pawsight prints its own."""
    ctx = ray.data.DataContext.get_current()
    for name in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)
    if hasattr(ctx, "enable_rich_progress_bars"):
        ctx.enable_rich_progress_bars = False


def _answer_chunk(ray: Any, fn: type[Answerer], items: list[str | Skip], batch_size: int, n_actors: int
                  ) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    # absolute paths for the actors (their working folder is not this one); answers show the paths as given
    rows = [{"index": i, "path": os.path.abspath(p)} for i, p in enumerate(items) if not isinstance(p, Skip)]
    answers: dict[int, tuple[str, str]] = {}
    done = 0

    def ready() -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
        nonlocal done
        while done < len(items):
            item = items[done]
            if isinstance(item, Skip):
                yield item.path, None, item.reason
            elif done in answers:
                record, error = answers.pop(done)
                yield (item, json.loads(record), None) if record else (item, None, error)
            else:
                return
            done += 1

    if rows:
        blocks = max(1, min(len(rows), -(-len(rows) // (batch_size * ROWS_PER_BLOCK))))
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            fn, batch_size=batch_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=min(n_actors, blocks)))
        # Fault tolerance: Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1 (a
        # killed actor comes back and its batches run again); passing them is deprecated since Ray 2.60.
        seen: set[int] = set()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for i, record, error in zip(batch["index"], batch["record"], batch["error"], strict=True):
                    i = int(i)
                    if i in seen:
                        continue  # a batch answered twice (a retry): each picture is shown once
                    seen.add(i)
                    answers[i] = (str(record), str(error))
                yield from ready()
        except ray.exceptions.RayError as exc:
            raise PawsightError(f"the Ray job failed: {_first_line(exc)}") from None
    yield from ready()
    if done < len(items):
        raise RuntimeError(f"the Ray job returned no answer for {len(items) - done} of {len(items)} inputs")


def _first_line(exc: BaseException) -> str:
    """The user's sentence out of a Ray error: the innermost cause's first line."""
    cause = getattr(exc, "cause", None)
    while isinstance(cause, BaseException) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    text = str(cause if isinstance(cause, BaseException) else exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return shown(lines[-1] if lines else type(exc).__name__)[:300]
