"""The run directory: one format for every approach.

    RUN/run.json           what was trained: format, pawsight version, approach, classes, preprocessing,
                           parameters, data summary, metrics, seconds per phase, status
    RUN/model.json         the model's own description (architecture / pipeline), plain JSON
    RUN/*.safetensors      learned tensors; never pickle
    RUN/history.csv|json   per-epoch history (deep learning)
    RUN/checkpoint/        state to resume an interrupted training
    RUN/manifest.json      the exact training and validation pictures (path in the data folder, SHA-256,
                           label, split): `evaluate` on the training folder scores what it validated on
    RUN/evaluations/*.json each evaluation (the training's validation one too): metrics and one prediction per
                           picture {path, label, predicted, probabilities, loss}

Every file is written atomically; `run.json` is written last, so a run directory with a complete `run.json`
has a complete model.

This module is the only reader of `run.json` and the only code that decides what may be removed from a run
directory: `train --overwrite` removes only the entries in OWNED_FILES / OWNED_DIRS (what pawsight writes),
and refuses when anything else is there. A training holds an OS lock on RUN/.lock (fcntl.flock, released by
the kernel when the process dies, so a kill -9 never leaves a stale lock) so two trainings never write the
same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import PawsightError, damaged_file_errors, shown
from .storage import HTML_MARKER, ONNX_MARKER, PNG_MARKER, atomic_write_json, inside

RUN_FORMAT = 1


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    info = {"format": RUN_FORMAT, "pawsight_version": __version__, **info}
    atomic_write_json(Path(run_dir) / "run.json", info, indent=2)


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """run.json of `run_dir` as a dict, after checking it: a missing or damaged file, a folder of pictures
    given where a run is expected, a run from an incompatible version or a field of the wrong type is refused
    in one sentence (PawsightError). THE reader of run.json: every command goes through it."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise PawsightError(f"run directory not found: {run_dir}")
    if not path.is_file():
        if _holds_pictures(run_dir):
            raise PawsightError(f"{run_dir} is a folder of pictures, not a trained run; train one with "
                                f"'pawsight train {run_dir} --out runs/NAME', then give runs/NAME here")
        raise PawsightError(f"{run_dir} is not a finished pawsight run (no run.json); train one with "
                            f"'pawsight train DATA --out {run_dir}'")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PawsightError(f"{path} is damaged and cannot be read ({exc})") from None
    if not isinstance(info, dict) or "approach" not in info or "classes" not in info:
        raise PawsightError(f"{path} is not a pawsight run description")
    if info.get("format") != RUN_FORMAT:
        raise PawsightError(f"{run_dir} was written in run format {info.get('format')!r} by pawsight "
                            f"{info.get('pawsight_version', '?')}; this pawsight {__version__} reads format "
                            f"{RUN_FORMAT}")
    _refuse_damaged(path, _run_info_problems(info))
    return info


def data_root(info: dict[str, Any]) -> str | None:
    """The data folder a run was trained on (absolute, as recorded), None when not recorded."""
    data = info.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    return root if isinstance(root, str) and root else None


# -- checking what pawsight reads back: one loader per kind of file ----------------------------------------
# A run directory may have been edited by hand or come from someone else. Each reader below checks the
# types of everything pawsight later uses, so a bad value is one line naming the file and the field
# ("RUN/history.json is damaged: epoch must be a whole number, ..."), never a crash deep in a report (exit
# status 3).

def _refuse_damaged(path: Path, problems: list[str]) -> None:
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise PawsightError(f"{shown(path)} is damaged: {shown('; '.join(problems[:3]))}{more}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(record: dict[str, Any], key: str, problems: list[str], *, integer: bool = False,
            optional: bool = True, where: str = "") -> None:
    """Note a problem when record[key] is not a number (a whole one with `integer`); None/missing passes
    when `optional`."""
    value = record.get(key)
    if value is None and optional:
        return
    if not _is_number(value) or (integer and not float(value).is_integer()):
        kind = "a whole number" if integer else "a number"
        problems.append(f"{where}{key} must be {kind}, got {value!r:.40}")


def _typed(record: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, problems: list[str],
           ) -> None:
    if key in record and record[key] is not None and not isinstance(record[key], kind):
        problems.append(f"{key} must be {what}, got {record[key]!r:.40}")


def _run_info_problems(info: dict[str, Any]) -> list[str]:
    """What is wrong in a parsed run.json (every field a command reads), [] when nothing."""
    from .images import Preprocessing
    from .models.base import APPROACHES

    problems: list[str] = []
    if info.get("approach") not in APPROACHES:
        problems.append(f"approach must be one of {', '.join(APPROACHES)}, got {info.get('approach')!r:.40}")
    classes = info.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        problems.append("classes must be a list of two or more distinct names")
    _typed(info, "status", str, "a word (done, training, interrupted, failed)", problems)
    for key in ("params", "metrics", "data", "timings"):
        _typed(info, key, dict, "a JSON object", problems)
    for key in ("error", "onnx_sha256", "onnx_model_sha256", "weights_sha256", "pawsight_version"):
        _typed(info, key, str, "text", problems)
    _number(info, "seed", problems, integer=True)
    _number(info, "val_fraction", problems)
    prep = info.get("preprocessing")
    if prep is not None:
        try:
            if not isinstance(prep, dict) or not _is_number(prep.get("size")):
                raise ValueError("size must be a number")
            Preprocessing.from_dict(prep)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"preprocessing is invalid ({exc})")
    elif info.get("status") in ("done", "interrupted"):
        problems.append("preprocessing is missing")
    data = info.get("data")
    if isinstance(data, dict):
        _typed(data, "root", str, "a folder path", problems)
        for key in ("skipped", "ignored", "dropped_duplicates"):
            if not isinstance(data.get(key, []), list) or not all(
                    isinstance(s, dict) and isinstance(s.get("path", ""), str) for s in data.get(key, [])):
                problems.append(f"data.{key} must be a list of {{path, reason}}")
        if not isinstance(data.get("counts", {}), dict):
            problems.append("data.counts must be a JSON object")
    metrics = info.get("metrics")
    if isinstance(metrics, dict):
        validation = metrics.get("validation")
        if validation is not None and not isinstance(validation, dict):
            problems.append("metrics.validation must be a JSON object")
        elif validation is not None:
            for key in ("accuracy", "log_loss", "macro_f1"):
                _number(validation, key, problems, where="metrics.validation.")
            _number(validation, "n_images", problems, integer=True, where="metrics.validation.")
    timings = info.get("timings")
    if isinstance(timings, dict) and not all(_is_number(v) for v in timings.values()):
        problems.append("timings must hold numbers of seconds")
    return problems


def _holds_pictures(folder: Path, limit: int = 200) -> bool:
    """Whether `folder` or one of its sub-folders holds picture files (a glance at <= `limit` entries each):
    then it is data given where a run directory was expected."""
    from .images import IMAGE_SUFFIXES

    def pictures_in(d: Path) -> tuple[bool, list[Path]]:
        subs = []
        try:
            with os.scandir(d) as it:
                for i, entry in enumerate(it):
                    if i >= limit:
                        break
                    if entry.is_dir(follow_symlinks=True):
                        subs.append(Path(entry.path))
                    elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                        return True, subs
        except OSError:
            pass
        return False, subs

    found, subs = pictures_in(folder)
    for sub in subs[:20]:
        found = found or pictures_in(sub)[0] or any(pictures_in(s)[0] for s in pictures_in(sub)[1][:20])
        if found:
            break
    return found


GRAPH_FILE = "model.onnx"  # a deep run's whole model as ONNX, written after training (see read_graph)


def read_graph(run_dir: str | Path, info: dict[str, Any]) -> bytes | None:
    """The run's ONNX graph when it was made from the run's current, intact weights: run.json records the
    graph's SHA-256 and that of the weights it was made from (written by the training that saved both, or by
    `pawsight export` into the run), and both files still match. Else None, and the caller loads the weights
    (which names any damage) and rebuilds the graph with PyTorch. With it a run directory predicts and
    serves without importing PyTorch."""
    want = info.get("onnx_sha256"), info.get("onnx_model_sha256")
    if not all(isinstance(w, str) for w in want):
        return None
    run_dir = Path(run_dir)
    try:
        blob = (run_dir / GRAPH_FILE).read_bytes()
        weights = file_sha256(run_dir / "model.safetensors")
        described = json.loads((run_dir / "model.json").read_text()).get("safetensors_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    if (hashlib.sha256(blob).hexdigest(), weights) != want or described != weights:
        return None
    return blob


def graph_record(run_dir: str | Path, onnx_sha256: str) -> dict[str, str]:
    """What run.json keeps about RUN/model.onnx just written from the run's saved weights (see read_graph)."""
    return {"onnx_sha256": onnx_sha256, "onnx_model_sha256": file_sha256(Path(run_dir) / "model.safetensors")}


def record_graph(run_dir: str | Path, onnx_sha256: str) -> None:
    """Note in run.json that RUN/model.onnx (just written) is the graph of the run's current weights."""
    info = read_run_info(run_dir)
    write_run_info(Path(run_dir), {**info, **graph_record(run_dir, onnx_sha256)})


def load_model(run_dir: str | Path):  # -> ImageClassifier (import cycle kept lazy)
    """The trained model of a run directory, checked for completeness and compatibility."""
    from .models.base import model_class

    info = read_run_info(run_dir)
    if info.get("status") == "failed":
        raise PawsightError(f"training in {shown(run_dir)} failed ({shown(info.get('error', '?'))}); run the "
                            "train command again" + (f" or 'pawsight train --resume {shown(run_dir)}'"
                                                     if has_checkpoint(Path(run_dir)) else ""))
    if info.get("status") not in ("done", "interrupted"):
        raise PawsightError(f"training in {shown(run_dir)} did not finish (status: "
                            f"{info.get('status', '?')}); continue it with "
                            f"'pawsight train --resume {shown(run_dir)}'")
    cls = model_class(info["approach"])
    try:
        model = cls.load(Path(run_dir))
    except PawsightError:
        raise
    except FileNotFoundError as exc:
        raise PawsightError(f"{run_dir} is incomplete: {Path(exc.filename or '?').name} is missing") from None
    except damaged_file_errors() as exc:  # damaged or tampered files read as one sentence; bugs stay bugs
        raise PawsightError(f"cannot load the model in {run_dir}: {type(exc).__name__}: {exc}") from None
    _check_weights(Path(run_dir), info)  # after loading: model.json's own checks name a damaged file first
    if list(model.classes_) != list(info["classes"]):
        raise PawsightError(f"{run_dir} is inconsistent: model classes {model.classes_} differ from run.json "
                            f"classes {info['classes']}")
    return model


WEIGHTS_FILE = "model.safetensors"


def weights_record(run_dir: str | Path) -> dict[str, str]:
    """What run.json keeps about the weights just saved: their SHA-256 (see _check_weights)."""
    return {"weights_sha256": file_sha256(Path(run_dir) / WEIGHTS_FILE)}


def _check_weights(run_dir: Path, info: dict[str, Any]) -> None:
    """Refuse weights other than the ones this run saved. model.json records the SHA-256 of
    model.safetensors, so a damaged file is caught when the model loads; but a model.json + weights PAIR
    copied from another run matched itself and was accepted. run.json records the weights' SHA-256 too
    (`weights_sha256`; a deep run's `onnx_model_sha256`, from before it was recorded, is the same hash)."""
    want = info.get("weights_sha256") or info.get("onnx_model_sha256")
    if not isinstance(want, str):
        return  # a run from before pawsight recorded it: model.json's own checksum still applies
    try:
        got = file_sha256(run_dir / WEIGHTS_FILE)
    except FileNotFoundError:
        raise PawsightError(f"{shown(run_dir)} is incomplete: {WEIGHTS_FILE} is missing") from None
    except OSError as exc:
        raise PawsightError(f"cannot read {shown(run_dir / WEIGHTS_FILE)}: {exc.strerror or exc}") from None
    if got != want:
        raise PawsightError(f"{shown(run_dir / WEIGHTS_FILE)} is not the model this run trained (its SHA-256 "
                            "differs from the one in run.json: replaced or damaged); retrain or restore the "
                            "run directory")


# -- what pawsight writes in a run directory (the only things --overwrite may remove) ------------------

# Files at the top of a run directory that pawsight writes.
OWNED_FILES = frozenset({"run.json", "model.json", "model.safetensors", "history.csv", "history.json",
                         "manifest.json", "report.html", "model.onnx", ".lock"})
# Folders pawsight writes, with the exact names of the files it writes inside them (nothing else, no
# sub-folders). evaluations/: save_evaluation's "<data>-<split>-<UTC time>[-n].json"; plots/: plot_run's PNGs.
_CHECKPOINT = (r"(model|optimizer|ema|best)\.safetensors", r"state\.json")
PLOT_NAMES = ("training-curves", "learning-curve", "confusion-matrix", "per-class", "roc-pr", "calibration",
              "top-losses")
OWNED_DIRS: dict[str, tuple[str, ...]] = {
    "checkpoint": _CHECKPOINT,
    "checkpoint.new": _CHECKPOINT,
    "checkpoint.old": _CHECKPOINT,
    "evaluations": (r"[\w.-]+-\d{8}-\d{6}-\d{3}(-\d+)?\.json",),
    "plots": (rf"({'|'.join(PLOT_NAMES)})\.png",),
}
_TMP = re.compile(r"\..+\.[\w-]+\.tmp")  # leftovers of storage.atomic_write_* killed mid-write


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True when `path` holds a run.json that parses as a pawsight run description (any format version)."""
    return _read_raw(Path(path)) is not None


def _read_raw(run_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(info, dict) and "format" in info and "approach" in info and "classes" in info:
        return info
    return None


def _carries_mark(path: str, name: str) -> bool:
    """Files whose name a user might also choose carry pawsight's mark inside (storage's markers; a saved
    evaluation ends with the "created" stamp save_evaluation writes last); the other owned names are
    pawsight's own vocabulary."""
    if name.endswith((".png", ".html", ".onnx")):
        marker = {".png": PNG_MARKER, ".html": HTML_MARKER, ".onnx": ONNX_MARKER}[Path(name).suffix]
        try:
            with open(path, "rb") as fh:
                return marker in fh.read(1 << 20)
        except OSError:
            return False
    if name.endswith(".json") and re.fullmatch(OWNED_DIRS["evaluations"][0], name):
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 64))
                return re.search(rb'"created": "[\dT:Z-]+"}\s*$', fh.read()) is not None
        except OSError:
            return False
    return True


def foreign_entries(run_dir: Path) -> list[str]:
    """Names (relative to `run_dir`) of everything pawsight did not write there: any name pawsight does not
    write, and a file under one of its names that lacks its mark (a user's plots/confusion-matrix.png)."""
    foreign: list[str] = []
    for entry in sorted(os.scandir(run_dir), key=lambda e: e.name):
        name = entry.name
        if entry.is_symlink():
            foreign.append(name)
        elif entry.is_dir():
            allowed = OWNED_DIRS.get(name)
            if allowed is None:
                foreign.append(name + "/")
                continue
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                ok = sub.is_file(follow_symlinks=False) and (_TMP.fullmatch(sub.name) or (
                    any(re.fullmatch(p, sub.name) for p in allowed) and _carries_mark(sub.path, sub.name)))
                if not ok:
                    foreign.append(f"{name}/{sub.name}" + ("/" if sub.is_dir(follow_symlinks=False) else ""))
        elif not (_TMP.fullmatch(name) or (name in OWNED_FILES and entry.is_file(follow_symlinks=False)
                                           and _carries_mark(entry.path, name))):
            foreign.append(name)
    return foreign


def _remove_owned(run_dir: Path) -> None:
    """Delete what pawsight wrote in `run_dir` (call only after foreign_entries() came back empty), file by
    file and by pawsight's own names only, so anything that appeared meanwhile stays and stops the removal."""
    for entry in sorted(os.scandir(run_dir), key=lambda e: e.name):
        if entry.name == ".lock":
            continue  # held by this process
        if entry.is_dir(follow_symlinks=False) and entry.name in OWNED_DIRS:
            allowed = OWNED_DIRS[entry.name]
            for sub in os.scandir(entry.path):
                if _TMP.fullmatch(sub.name) or any(re.fullmatch(p, sub.name) for p in allowed):
                    os.unlink(sub.path)
            try:
                os.rmdir(entry.path)
            except OSError:
                raise PawsightError(f"{shown(entry.path)} changed while it was being replaced; "
                                    "nothing else was removed, run the command again") from None
        elif entry.name in OWNED_FILES or _TMP.fullmatch(entry.name):
            os.unlink(entry.path)


def discard_run(run_dir: str | os.PathLike[str]) -> bool:
    """Remove a run directory that holds only what pawsight wrote (a failed or replaced one); anything else in
    it keeps the folder where it is. True when it is gone."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() or not run_dir.is_dir() or foreign_entries(run_dir):
        return False
    try:
        _remove_owned(run_dir)
        (run_dir / ".lock").unlink(missing_ok=True)
        run_dir.rmdir()
    except (OSError, PawsightError):
        return False
    return True


def install_run(new: Path, final: Path) -> None:
    """Put the finished run `new` at `final` (same parent folder), replacing an earlier pawsight run there
    only once `new` exists: a failed training never costs the earlier result."""
    if final.exists() or final.is_symlink():
        foreign = foreign_entries(final) if final.is_dir() and not final.is_symlink() else [final.name]
        if foreign or not is_run_dir(final):
            raise PawsightError(f"{shown(final)} holds files pawsight did not write ({_listing(foreign)}); "
                                "nothing was replaced: move them away")
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(new, final)
        discard_run(old)
    else:
        os.replace(new, final)


def _listing(names: list[str], limit: int = 3) -> str:
    shown_names = ", ".join(shown(n) for n in names[:limit])
    return shown_names + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_out_vs_data(out: Path, data: Path) -> None:
    """Refuse a run directory equal to, inside, or containing the data folder (symlinks resolved): it would
    become a class folder on the next run, or --overwrite would remove pictures."""
    if inside(out, data):  # storage's rule for every output, plus: a run folder may not hold the data
        where = "is the data folder" if inside(data, out) else "is inside the data folder"
    elif inside(data, out):
        where = "contains the data folder"
    else:
        return
    raise PawsightError(f"--out {shown(out)} {where} {shown(data)}; choose a run directory outside it")


# -- one training at a time per run directory ----------------------------------------------------------

class RunLock:
    """An exclusive flock on RUN/.lock held for a whole training; the pid is written in the file so a
    refused second process can say who holds it. The kernel drops the lock when the holder dies."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.created = not self.path.exists()  # a refusal then removes it: nothing left in the user's folder
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                pid = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise PawsightError(f"{shown(self.path.parent)} is being written by another pawsight process "
                                f"(pid {shown(pid)}); wait for it to finish or choose another --out"
                                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self, *, remove: bool = False) -> None:
        """Unlock; with `remove`, also delete the lock file when this lock created it (a refused or failed
        start leaves the folder as it found it)."""
        if self._fd is not None:
            if remove and self.created:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / n / "state.json").is_file() for n in ("checkpoint", "checkpoint.old"))


def open_for_training(out: Path, *, overwrite: bool = False, resume: bool = False) -> tuple[RunLock, str]:
    """Lock `out` for a training and make room in it; returns (lock, note) where note says what was replaced
    ("" when nothing). Never removes anything pawsight did not write; refuses with one line instead."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PawsightError(f"--out {shown(out)} is a file, not a folder; choose another --out")
    if resume:
        if not is_run_dir(out):
            raise PawsightError(f"nothing to resume in {shown(out)}: no pawsight run.json there")
    elif out.is_dir() and not is_run_dir(out):
        present = [e.name for e in sorted(os.scandir(out), key=lambda e: e.name) if e.name != ".lock"]
        if present:
            raise PawsightError(
                f"--out {shown(out)} is not empty and not a pawsight run (it holds {_listing(present)}); "
                + ("--overwrite only replaces a pawsight run directory, so nothing was removed; " if overwrite
                   else "") + "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    try:
        if is_run_dir(out):
            _sweep_leftovers(out)
        note = "" if resume else _make_room(out, overwrite)
    except BaseException:
        lock.release(remove=True)
        raise
    return lock, note


def _sweep_leftovers(run_dir: Path, min_age: float = 60.0) -> None:
    """Remove the temporary files of atomic writes that a kill interrupted (`.run.json.x1y2.tmp`): only files
    named after a file pawsight writes there, and older than `min_age` seconds (not another process's write
    in progress)."""
    now = time.time()
    places = [(run_dir, OWNED_FILES)] + [(run_dir / d, None) for d in OWNED_DIRS if (run_dir / d).is_dir()]
    for folder, names in places:
        for entry in os.scandir(folder):
            if not (_TMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            target = entry.name[1:].rsplit(".", 2)[0]  # ".model.json.abc123.tmp" -> "model.json"
            if names is not None and target not in names:
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > min_age:
                    os.unlink(entry.path)
            except OSError:
                pass


def _make_room(out: Path, overwrite: bool) -> str:
    info = _read_raw(out)
    if info is None:
        return ""
    status = info.get("status", "?")
    checkpoint = has_checkpoint(out)
    error = f" ({info['error']})" if info.get("error") else ""
    if not overwrite:
        if status == "interrupted" and checkpoint:
            raise PawsightError(f"{shown(out)} holds an interrupted training; continue it with "
                                f"'pawsight train --resume {shown(out)}', or add --overwrite to start again")
        if status in ("done", "interrupted"):
            raise PawsightError(f"{shown(out)} already holds a trained run; choose another --out, or add "
                                "--overwrite to replace it")
        if checkpoint:
            raise PawsightError(f"training in {shown(out)} did not finish (status {status}{error}) and "
                                "left a checkpoint; continue it with "
                                f"'pawsight train --resume {shown(out)}', or add --overwrite to start again")
    foreign = foreign_entries(out)
    if foreign:
        raise PawsightError(f"{shown(out)} also holds files pawsight did not write ({_listing(foreign)}); "
                            "nothing was removed: move them away or choose another --out")
    _remove_owned(out)
    if overwrite:
        return f"replaced the run in {shown(out)}"
    return f"replaced the unfinished run in {shown(out)} (status {status}{error})"


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record that the training in `run_dir` stopped on an error, so the same command can be run again."""
    info = _read_raw(Path(run_dir))
    if info is None or info.get("status") != "training":
        return
    info = {k: v for k, v in info.items() if k not in ("format", "pawsight_version")}
    write_run_info(run_dir, {**info, "status": "failed", "error": reason})


def mark_interrupted(run_dir: Path) -> None:
    """Record that the training in `run_dir` was interrupted (Ctrl-C, SIGTERM) before its loop could keep
    its weights (while decoding, or in a classical fit): `train --resume` starts it again."""
    info = _read_raw(Path(run_dir))
    if info is None or info.get("status") != "training":
        return
    info = {k: v for k, v in info.items() if k not in ("format", "pawsight_version")}
    write_run_info(run_dir, {**info, "status": "interrupted"})


def resume_settings(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything `train --resume` needs to continue with the options the run was started with."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise PawsightError(f"nothing to resume in {shown(run_dir)}: no run.json")
    info = read_run_info(run_dir)
    if info.get("status") == "done":
        raise PawsightError(f"{shown(run_dir)} has finished training already; nothing to resume")
    data = info.get("data") or {}
    return {"approach": info["approach"], "seed": info.get("seed", 0),
            "val_fraction": info.get("val_fraction", 0.2),
            "drop_duplicates": bool(info.get("drop_duplicates", False)),
            "params": info.get("params", {}), "data": data.get("root"), "exclude": info.get("exclude")}


# -- the record of what a run saw and said: manifest, evaluations, history ----------------------------------

MANIFEST_FORMAT = 1
EVALUATION_FORMAT = 1


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_many(paths: list[Path]) -> list[str | None]:
    """Content hashes of many files (None for one that cannot be read), hashed in parallel threads."""
    def one(p: Path) -> str | None:
        try:
            return file_sha256(p)
        except OSError:
            return None

    from .system import default_workers, ordered_map

    workers = min(8, default_workers())
    with ThreadPoolExecutor(workers) as pool:
        return list(ordered_map(pool, one, paths, ahead=16 * workers))


def write_manifest(run_dir: Path, root: Path, pictures: list[tuple[Path, str, str]]) -> Path:
    """Record the exact pictures a training used: (path, class name, split) -> RUN/manifest.json with each
    path relative to the data folder `root` and the SHA-256 of its content."""
    paths = [Path(p) for p, _, _ in pictures]
    hashes = sha256_many(paths)
    entries = [{"path": Path(os.path.relpath(p, root)).as_posix(), "sha256": h, "label": label,
                "split": split}
               for (p, label, split), h in zip(pictures, hashes, strict=True) if h is not None]
    path = Path(run_dir) / "manifest.json"
    atomic_write_json(path, {"format": MANIFEST_FORMAT, "root": str(Path(root).resolve()),
                             "pictures": entries})
    return path


def read_manifest(run_dir: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The training and validation pictures of a run, [{path, sha256, label, split}] (paths relative to the
    data folder it was trained on); [] for a run trained before pawsight kept manifests."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != MANIFEST_FORMAT:
            raise PawsightError(f"{shown(path)} has manifest format {doc.get('format')!r}; this pawsight "
                                f"reads format {MANIFEST_FORMAT}")
        pictures = doc["pictures"]
        fields = {"path", "sha256", "label", "split"}
        if not all(isinstance(p, dict) and fields <= p.keys() for p in pictures):
            raise ValueError("an entry lacks path, sha256, label or split")
    except PawsightError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PawsightError(f"{shown(path)} is damaged and cannot be read ({exc})") from None
    return [{k: str(p[k]) for k in ("path", "sha256", "label", "split")} for p in pictures]


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._")[:60] or "data"


_STAMP = re.compile(r"-(\d{8}-\d{6}-\d{3})(?:-\d+)?$")


def save_evaluation(run_dir: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Write an evaluation (metrics + per-picture predictions) as RUN/evaluations/<data>-<split>-<time>.json,
    atomically; returns its path."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    data_name = Path(str(result.get("data") or "data")).resolve().name
    base = f"{_slug(data_name)}-{_slug(str(result.get('split') or 'all'))}-{stamp}"
    folder = Path(run_dir) / "evaluations"
    name, n = base, 1
    while (folder / f"{name}.json").exists():
        n += 1
        name = f"{base}-{n}"
    record = {**result, "format": EVALUATION_FORMAT, "name": name,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    path = folder / f"{name}.json"
    atomic_write_json(path, record)
    return path


def list_evaluations(run_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the evaluations saved in a run, oldest first."""
    folder = Path(run_dir) / "evaluations"
    if not folder.is_dir():
        return []
    names = [p.stem for p in folder.glob("*.json") if not p.name.startswith(".")]

    def when(name: str) -> tuple[str, str]:
        m = _STAMP.search(name)
        return (m.group(1) if m else "", name)

    return sorted(names, key=when)


def read_evaluation(run_dir: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
    """A saved evaluation (the latest when `name` is None): metrics and `predictions`, one per picture."""
    names = list_evaluations(run_dir)
    if name is None:
        if not names:
            raise PawsightError(f"no saved evaluation in {shown(run_dir)}; make one with "
                                f"'pawsight evaluate {shown(run_dir)} DATA'")
        name = names[-1]
    name = name.removesuffix(".json")
    if name not in names:
        raise PawsightError(f"no evaluation named {shown(name)} in {shown(run_dir)}"
                            + (f" (saved: {_listing(names[::-1])})" if names else ""))
    path = Path(run_dir) / "evaluations" / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PawsightError(f"{shown(path)} is damaged and cannot be read ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("predictions"), list):
        raise PawsightError(f"{shown(path)} is not a pawsight evaluation")
    if record.get("format") != EVALUATION_FORMAT:
        raise PawsightError(f"{shown(path)} has evaluation format {record.get('format')!r}; this pawsight "
                            f"reads format {EVALUATION_FORMAT}")
    _refuse_damaged(path, _evaluation_problems(record))
    return record


def _evaluation_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong in a parsed evaluation (what plots and reports read), [] when nothing."""
    problems: list[str] = []
    classes = record.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes) and classes):
        return ["classes must be a list of class names"]
    for key in ("accuracy", "log_loss", "macro_f1", "threshold"):
        _number(record, key, problems)
    for key in ("n_images", "n_errors"):
        _number(record, key, problems, integer=True)
    for key in ("data", "split", "name"):
        _typed(record, key, str, "text", problems)
    for i, p in enumerate(record["predictions"]):
        if not isinstance(p, dict):
            problems.append(f"prediction {i} must be a JSON object")
        elif not (isinstance(p.get("path"), str) and p.get("label") in classes
                  and isinstance(p.get("predicted"), str)):
            problems.append(f"prediction {i} needs a path, a label among the classes and a predicted label")
        elif not (isinstance(p.get("probabilities"), list) and len(p["probabilities"]) == len(classes)
                  and all(_is_number(v) for v in p["probabilities"])):
            problems.append(f"prediction {i}: probabilities must be {len(classes)} numbers")
        else:
            _number(p, "loss", problems, where=f"prediction {i}: ")
        if len(problems) > 3:
            break
    return problems


def read_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per-epoch history of a deep-learning run (epoch, train_loss, train_acc, val_loss, val_acc, lr,
    seconds); [] for a run without epochs (classical)."""
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PawsightError(f"{shown(path)} is damaged and cannot be read ({exc})") from None
    if not isinstance(history, list) or not all(isinstance(r, dict) and "epoch" in r for r in history):
        raise PawsightError(f"{shown(path)} is not a pawsight training history")
    problems: list[str] = []
    for row in history:
        _number(row, "epoch", problems, integer=True, optional=False)
        for key in HISTORY_NUMBERS:
            _number(row, key, problems)
        if problems:
            problems[-1] = f"{problems[-1]} (epoch {shown(repr(row.get('epoch')))[:20]})"
            break
    _refuse_damaged(path, problems)
    return history


# Columns of history.json that hold numbers (None where not measured), as training.write_history writes them.
HISTORY_NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def read_status(run_dir: str | os.PathLike[str]) -> str:
    """training, done, interrupted or failed."""
    return str(read_run_info(run_dir).get("status", "?"))
