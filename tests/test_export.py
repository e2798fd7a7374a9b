"""`pawsight export`: one ONNX file per deep run (frozen transfer, fine-tuned transfer, scratch) that answers
like the PyTorch model (max |Δp| <= 1e-4) and runs without PyTorch; classical runs are refused in one line."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import pawsight
from pawsight import api, cli
from pawsight.errors import PawsightError
from pawsight.export import export_onnx
from pawsight.inference import ONNX_METADATA_KEY, ModulePredictor, OnnxPredictor


def validation_files(tiny: Path) -> list[Path]:
    cats, dogs = (sorted((tiny / "validation" / c).iterdir())[:5] for c in ("cats", "dogs"))
    return cats + dogs


def assert_same_answers(run: Path, onnx_file: Path, tiny: Path) -> None:
    from_run, from_file = pawsight.load(run), pawsight.load(onnx_file)
    assert isinstance(from_file, OnnxPredictor)
    assert from_file.classes_ == from_run.classes_ and from_file.preprocessing == from_run.preprocessing
    assert from_file.threshold == from_run.threshold
    files = validation_files(tiny)
    np.testing.assert_allclose(from_file.predict_proba(files), from_run.predict_proba(files), atol=1e-4)
    assert from_file.predict(files) == from_run.predict(files)


def test_frozen_transfer_export_matches_pytorch_and_carries_its_metadata(transfer_run, tiny, tmp_path,
                                                                         capsys) -> None:
    out = tmp_path / "cats-dogs.onnx"
    assert cli.main(["export", str(transfer_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |Δprobability|" in printed and "pictures from" in printed  # real pictures, not synthetic
    diff = float(printed.split("max |Δprobability| = ")[1].split()[0])
    assert diff <= 1e-4
    meta = json.loads(next(p.value for p in onnx.load(str(out)).metadata_props if p.key == ONNX_METADATA_KEY))
    assert meta["classes"] == ["cats", "dogs"] and meta["approach"] == "transfer"
    assert meta["preprocessing"] == {"size": 224, "mode": "center-crop"} and "neither" in meta
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in graph.output] == ["probabilities", "unknown_score"]
    assert_same_answers(transfer_run, out, tiny)


def test_the_exported_file_predicts_and_evaluates_without_torch(transfer_run, tiny, tmp_path) -> None:
    out = tmp_path / "model.onnx"
    export_onnx(transfer_run, out)
    code = ("import sys\n"
            "class Block:\n"  # any 'import torch' now fails (sys.modules['torch'] = None would upset scipy)
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from pawsight import cli\n"
            "sys.exit(cli.main(['predict', sys.argv[1], *sys.argv[2:]]))")
    files = [str(f) for f in validation_files(tiny)[:2]]
    done = subprocess.run([sys.executable, "-c", code, str(out), *files], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("cats") >= 2
    result = api.evaluate(out, tiny)
    assert result["accuracy"] >= 0.85 and result["run"] == str(out)


def test_default_output_is_inside_the_run_and_reexport_replaces_only_its_own_file(transfer_run,
                                                                                  tmp_path) -> None:
    foreign = tmp_path / "precious.onnx"
    foreign.write_bytes(b"someone else's file")
    with pytest.raises(PawsightError, match="not written by pawsight"):
        export_onnx(transfer_run, foreign)
    assert foreign.read_bytes() == b"someone else's file"
    with pytest.raises(PawsightError, match=".onnx"):
        export_onnx(transfer_run, tmp_path / "model.bin")
    first = export_onnx(transfer_run, tmp_path / "again.onnx")
    second = export_onnx(transfer_run, tmp_path / "again.onnx")  # our own file: replaced
    assert first["bytes"] == second["bytes"]


def test_scratch_export_matches_pytorch(scratch_run, tiny, tmp_path) -> None:
    result = export_onnx(scratch_run, tmp_path / "scratch.onnx")
    assert result["max_abs_diff"] <= 1e-4 and result["n_pictures"] > 0
    assert_same_answers(scratch_run, tmp_path / "scratch.onnx", tiny)


@pytest.mark.slow
def test_finetuned_transfer_export_matches_pytorch(tiny, tmp_path) -> None:
    run = tmp_path / "ft"
    api.train(tiny, out=run, mode="finetune", size=96, epochs=1, batch_size=16, device="cpu")
    result = export_onnx(run, tmp_path / "ft.onnx")
    assert result["max_abs_diff"] <= 1e-4
    assert_same_answers(run, tmp_path / "ft.onnx", tiny)


def test_classical_runs_are_refused_in_one_line(classical_run, capsys) -> None:
    assert cli.main(["export", str(classical_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "classical runs are not exported" in err
    assert not (classical_run / "model.onnx").exists()


def test_a_file_that_is_not_a_pawsight_export_is_refused(tmp_path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(PawsightError, match="not an ONNX model"):
        pawsight.load(junk)


def test_training_saves_the_graph_and_loading_the_run_uses_it(transfer_run, tiny) -> None:
    info = json.loads((transfer_run / "run.json").read_text())
    graph = transfer_run / "model.onnx"
    assert info["onnx_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    predictor = pawsight.load(transfer_run)
    assert isinstance(predictor, OnnxPredictor) and predictor.info["metrics"] == info["metrics"]
    files = validation_files(tiny)
    eager = pawsight.load(transfer_run, engine="torch")
    np.testing.assert_allclose(predictor.predict_proba(files), eager.predict_proba(files), atol=1e-4)


def test_a_graph_that_is_not_the_runs_current_model_is_not_used(transfer_run, tiny, tmp_path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(transfer_run, run)
    files = validation_files(tiny)
    expected = pawsight.load(transfer_run).predict_proba(files)
    blob = bytearray((run / "model.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # damaged (or replaced by another model): its hash no longer matches
    (run / "model.onnx").write_bytes(bytes(blob))
    rebuilt = pawsight.load(run)
    assert isinstance(rebuilt, ModulePredictor)  # rebuilt from the checked weights instead
    np.testing.assert_allclose(rebuilt.predict_proba(files), expected, atol=1e-4)
    export_onnx(run)  # `pawsight export RUN` writes the graph into the run again and records it
    assert isinstance(pawsight.load(run), OnnxPredictor)
    np.testing.assert_allclose(pawsight.load(run).predict_proba(files), expected, atol=1e-4)
