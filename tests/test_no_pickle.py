"""No code path unpickles anything: the package source has no pickle loader, and every file of a run
directory, a checkpoint, a weights file or the feature cache replaced by a pickle whose __reduce__ would
create a marker file is refused with one line; the marker is never created."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import pawsight
from clitools import error_line
from pawsight.cli import main
from pawsight.errors import PawsightError

PACKAGE = Path(pawsight.__file__).parent
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "skops",
                  "jsonpickle", "pickletools"}


class Payload:
    """Unpickling this opens (creates) `marker`: what a hostile "model file" would do, minus the harm."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def payload(marker: Path) -> bytes:
    # protocol 2: torch.load's own, so its weights-only reader is tested on what it expects
    return pickle.dumps({"state_dict": Payload(marker)}, protocol=2)


def test_the_payload_is_real(tmp_path: Path) -> None:
    """The bytes used below do run code when unpickled (so the tests below would notice a pickle load)."""
    marker = tmp_path / "proof"
    pickle.loads(payload(marker))  # noqa: S301 - the point of this test
    assert marker.exists()


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_package_has_no_pickle_loader() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
                if names == ["joblib"] and {a.name for a in node.names} - {"Parallel", "delayed"}:
                    problems.append(f"{where}:{node.lineno}: joblib beyond Parallel/delayed")
            else:
                continue
            problems += [f"{where}:{node.lineno}: imports {n}" for n in names if n in BANNED_MODULES]
        for call, name in calls(tree):
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if name.endswith("torch.load") and keywords.get("weights_only") != "True":
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            if name.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle", "False") != "False":
                problems.append(f"{where}:{call.lineno}: np.load with allow_pickle")
            if name.endswith(("read_pickle", "jit.load", "joblib.load", "dill.load")):
                problems.append(f"{where}:{call.lineno}: {name}")
    assert problems == []


@pytest.fixture(scope="module")
def runs(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pickle-runs")
    out = {"classical": root / "classical", "scratch": root / "scratch"}
    assert main(["train", str(tiny), "--approach", "classical", "--features", "hog,color", "--size", "64",
                 "--model", "logreg", "--out", str(out["classical"])]) == 0
    assert main(["train", str(tiny), "--approach", "scratch", "--size", "32", "--epochs", "1",
                 "--batch-size", "16", "--out", str(out["scratch"])]) == 0
    return out


def hostile_copy(run: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run, target)
    return target


def with_checksum(run: Path, blob: bytes) -> None:
    """The attacker controls model.json too: make its recorded SHA-256 match the hostile weights file."""
    meta = json.loads((run / "model.json").read_text())
    meta["safetensors_sha256"] = hashlib.sha256(blob).hexdigest()
    (run / "model.json").write_text(json.dumps(meta))


def one_error_line(status: int, err: str) -> None:
    assert status == 2, err
    error_line(err)


def test_hostile_run_directories_never_unpickle(runs: dict[str, Path], tiny: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    evil = payload(marker)
    picture = str(next((tiny / "validation" / "cats").iterdir()))
    damage = {
        "model.safetensors with matching checksum": lambda d: ((d / "model.safetensors").write_bytes(evil),
                                                               with_checksum(d, evil)),
        "model.safetensors": lambda d: (d / "model.safetensors").write_bytes(evil),
        "model.json": lambda d: (d / "model.json").write_bytes(evil),
        "run.json": lambda d: (d / "run.json").write_bytes(evil),
    }
    capsys.readouterr()
    for approach, run in runs.items():
        for what, spoil in damage.items():
            d = hostile_copy(run, tmp_path / f"{approach}-{what.replace(' ', '-')}")
            spoil(d)
            for argv in (["predict", str(d), picture], ["evaluate", str(d), str(tiny)]):
                status = main(argv)
                one_error_line(status, capsys.readouterr().err)
                assert not marker.exists(), (approach, what, argv)
            with pytest.raises(PawsightError):
                pawsight.load(d)
            assert not marker.exists()


def test_a_hostile_checkpoint_never_unpickles(runs: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    evil = payload(marker)
    for name in ("model.safetensors", "optimizer.safetensors", "ema.safetensors", "best.safetensors",
                 "state.json"):
        d = hostile_copy(runs["scratch"], tmp_path / f"ckpt-{name}")
        info = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))  # resumable
        (d / "checkpoint" / name).write_bytes(evil)
        capsys.readouterr()
        status = main(["train", "--resume", str(d)])
        err = capsys.readouterr().err
        one_error_line(status, err)
        assert "checkpoint" in err and not marker.exists(), name


def test_hostile_weights_files_never_unpickle(tiny: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pawsight.backbones import create_backbone

    marker = tmp_path / "PWNED"
    for name in ("backbone.pth", "backbone.pt", "backbone.safetensors", "backbone.bin"):
        (tmp_path / name).write_bytes(payload(marker))
        with pytest.raises(PawsightError):
            create_backbone("efficientnet_lite0", tmp_path / name)
        assert not marker.exists(), name


def test_a_hostile_feature_cache_never_unpickles(tmp_path: Path) -> None:
    """Cached feature rows are .npy files: one holding pickled objects is ignored (recomputed), not loaded."""
    from pawsight.storage import RowStore

    marker = tmp_path / "PWNED"
    store = RowStore(tmp_path / "features", dim=2)
    store.put(["a", "b"], np.ones((2, 2), np.float32))
    shard = next((tmp_path / "features").glob("*.npy"))
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(marker), Payload(marker)], dtype=object), allow_pickle=True)
    shard.write_bytes(buf.getvalue())
    found, missing = store.get(["a", "b"])
    assert found == {} and missing == [0, 1] and not marker.exists()
