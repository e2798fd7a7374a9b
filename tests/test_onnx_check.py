"""A model file from someone else can neither read files nor break pawsight: every ONNX graph goes through
onnx_check.check_graph before ONNX Runtime sees it (issue 14, item 6).

The graphs are real: a tiny scratch run's RUN/model.onnx (as `pawsight export` writes it), mutated with the
onnx helper API. The worst one makes ONNX Runtime read a "secret" file from the current folder into the
probabilities it answers; before the check, `pawsight predict` printed the secret numbers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pawsight.cli import main
from pawsight.errors import PawsightError
from pawsight.onnx_check import check_graph

ROOT = Path(__file__).resolve().parents[1]
SECRET = np.array([0.123456, 0.876543] + [0.5] * 126, np.float32)  # 512 bytes: what must never leak
SECRET_TEXT = ("0.12345", "0.87654")  # how those numbers would show in the JSON answers


@pytest.fixture(scope="module")
def graph(scratch_run: Path) -> onnx.ModelProto:
    return onnx.load_model_from_string((scratch_run / "model.onnx").read_bytes())


@pytest.fixture(scope="module")
def picture(tiny: Path) -> Path:
    return sorted((tiny / "validation" / "cats").glob("*.jpg"))[0]


def external(name: str, location: str, dims: list[int], dtype: int = TensorProto.FLOAT) -> TensorProto:
    """A tensor whose bytes ONNX Runtime would read from the file `location` (relative: the current folder
    when the graph is loaded from memory)."""
    t = TensorProto(name=name, data_type=dtype, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    n = int(np.prod(dims)) * 4
    for key, value in (("location", location), ("offset", "0"), ("length", str(n))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def leaking(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The pawsight graph rewired so its probabilities ARE the first two numbers of ./secret.bin (a MatMul
    with a 64x2 external tensor: large enough that ONNX Runtime's optimiser leaves it alone and reads it)."""
    m = onnx.ModelProto()
    m.CopyFrom(graph)
    for node in m.graph.node:
        for i, out in enumerate(node.output):
            if out == "probabilities":
                node.output[i] = "p0"
    m.graph.initializer.extend([external("leak", "secret.bin", [64, 2]),
                                numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                                numpy_helper.from_array(np.eye(1, 64, dtype=np.float32), "first_row")])
    m.graph.node.extend([helper.make_node("Sub", ["p0", "p0"], ["zeros"]),
                         helper.make_node("ReduceSum", ["zeros", "axis1"], ["zero"], keepdims=1),
                         helper.make_node("Add", ["zero", "first_row"], ["select"]),
                         helper.make_node("MatMul", ["select", "leak"], ["probabilities"])])
    return m


def mutated(graph: onnx.ModelProto, change: Callable[[onnx.ModelProto], None]) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(graph)
    change(m)
    return m.SerializeToString()


def set_meta(m: onnx.ModelProto, edit: Callable[[dict], object]) -> None:
    entry = next(p for p in m.metadata_props if p.key == "pawsight")
    meta = json.loads(entry.value)
    edit(meta)
    entry.value = json.dumps(meta)


def extra_output(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("Identity", ["probabilities"], ["copy"]))
    m.graph.output.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT, ["n", 2]))


def missing_output(m: onnx.ModelProto) -> None:
    del m.graph.output[1]


def float_input(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT


def custom_op(m: onnx.ModelProto) -> None:
    m.opset_import.append(helper.make_opsetid("com.evil", 1))
    m.graph.node.append(helper.make_node("Exfiltrate", ["probabilities"], ["gone"], domain="com.evil"))


def three_classes(m: onnx.ModelProto) -> None:
    set_meta(m, lambda meta: meta.update(classes=["cats", "dogs", "birds"]))


def bad_json(m: onnx.ModelProto) -> None:
    next(p for p in m.metadata_props if p.key == "pawsight").value = '{"classes": ["cats", '


def nan_threshold(m: onnx.ModelProto) -> None:
    set_meta(m, lambda meta: meta["neither"].update(threshold=float("nan")))


def no_metadata(m: onnx.ModelProto) -> None:
    del m.metadata_props[:]


def external_in_subgraph(m: onnx.ModelProto) -> None:
    """An If node whose branches hold an external tensor: the walk must reach subgraphs too."""
    branch = helper.make_graph([helper.make_node("Identity", ["hidden"], ["y"])], "branch", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 2])],
                               [external("hidden", "secret.bin", [64, 2])])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "yes"))
    m.graph.node.append(helper.make_node("If", ["yes"], ["unused"], then_branch=branch, else_branch=branch))


def external_in_attribute(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("Constant", [], ["c"], value=external("c", "secret.bin", [64, 2])))


def external_sparse(m: onnx.ModelProto) -> None:
    values = external("sparse_values", "secret.bin", [4])
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "sparse_indices")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [128]))


def external_marked_only(m: onnx.ModelProto) -> None:
    """external_data entries without the EXTERNAL flag: refused as well."""
    t = numpy_helper.from_array(np.zeros(2, np.float32), "half")
    entry = t.external_data.add()
    entry.key, entry.value = "location", "secret.bin"
    m.graph.initializer.append(t)


@pytest.mark.parametrize(("change", "says"), [
    (extra_output, "its outputs are"), (missing_output, "its outputs are"), (float_input, "not UINT8"),
    (custom_op, "custom operator domain"), (three_classes, "2 columns but its metadata names 3 classes"),
    (bad_json, "not a JSON object"), (nan_threshold, "threshold"), (no_metadata, "metadata"),
    (external_in_subgraph, "another file"), (external_in_attribute, "another file"),
    (external_sparse, "another file"), (external_marked_only, "another file"),
])
def test_foreign_graphs_are_one_line_and_exit_2(graph: onnx.ModelProto, picture: Path, tmp_path: Path,
                                                 change: Callable, says: str,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    SECRET.tofile(tmp_path / "secret.bin")
    (tmp_path / "bad.onnx").write_bytes(mutated(graph, change))
    for command in (["predict", "bad.onnx", str(picture), "--json"], ["evaluate", "bad.onnx",
                                                                      str(picture.parents[2])]):
        assert main(command) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("error: bad.onnx: not a pawsight model: "), captured.err
        assert says in lines[0] and captured.out == ""


def test_a_graph_cannot_read_a_file_from_the_current_folder(graph: onnx.ModelProto, picture: Path,
                                                             tmp_path: Path) -> None:
    """`cd ~; pawsight predict downloaded.onnx`: the secret's bytes never reach the answer."""
    SECRET.tofile(tmp_path / "secret.bin")
    (tmp_path / "downloaded.onnx").write_bytes(leaking(graph).SerializeToString())
    r = subprocess.run([sys.executable, "-m", "pawsight", "predict", "downloaded.onnx", str(picture),
                        "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: downloaded.onnx: not a pawsight model"), r.stderr
    assert "secret.bin" in lines[0] and "another file" in lines[0]
    assert not any(s in r.stdout + r.stderr for s in SECRET_TEXT)


def test_serve_refuses_it_before_listening(graph: onnx.ModelProto, tmp_path: Path) -> None:
    from pawsight.serve.app import create_app

    SECRET.tofile(tmp_path / "secret.bin")
    (tmp_path / "downloaded.onnx").write_bytes(leaking(graph).SerializeToString())
    r = subprocess.run([sys.executable, "-m", "pawsight", "serve", "downloaded.onnx", "--port", "0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a pawsight model" in r.stderr, r.stderr
    with pytest.raises(PawsightError, match="another file"):
        create_app(tmp_path / "downloaded.onnx")


def test_a_runs_model_onnx_is_checked_too(graph: onnx.ModelProto, scratch_run: Path, picture: Path,
                                          tmp_path: Path) -> None:
    """RUN/model.onnx replaced by the leaking graph, with run.json updated to its hash (what a run directory
    shared by someone else can hold): refused, whoever's folder it is run from."""
    run = tmp_path / "run"
    shutil.copytree(scratch_run, run)
    blob = leaking(graph).SerializeToString()
    (run / "model.onnx").write_bytes(blob)
    info = json.loads((run / "run.json").read_text())
    info["onnx_sha256"] = hashlib.sha256(blob).hexdigest()
    (run / "run.json").write_text(json.dumps(info))
    SECRET.tofile(tmp_path / "secret.bin")
    r = subprocess.run([sys.executable, "-m", "pawsight", "predict", "run", str(picture), "--json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a pawsight model" in r.stderr, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not any(s in r.stdout + r.stderr for s in SECRET_TEXT)


def test_onnx_runtime_itself_finds_no_external_data(graph: onnx.ModelProto, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The second wall: even a session made without the check cannot read ./secret.bin."""
    from pawsight.inference import onnx_session, run_session

    monkeypatch.chdir(tmp_path)
    SECRET.tofile(tmp_path / "secret.bin")
    blob = leaking(graph).SerializeToString()
    with pytest.raises(Exception, match="External data|external data|does not exist") as caught:
        session = onnx_session(blob, 1)
        proba, _ = run_session(session, np.zeros((1, 32, 32, 3), np.uint8))
        assert not np.isclose(proba[0, 0], SECRET[0]), "ONNX Runtime read the secret"
    assert "PawsightError" not in type(caught.value).__name__
    with pytest.raises(TypeError, match="bytes"):
        onnx_session(str(tmp_path / "x.onnx"))  # type: ignore[arg-type]


def test_what_export_writes_passes(graph: onnx.ModelProto) -> None:
    meta = check_graph(graph.SerializeToString(), "model.onnx")
    assert meta["classes"] == ["cats", "dogs"] and meta["approach"] == "scratch"
    with pytest.raises(PawsightError, match="is not an ONNX model"):
        check_graph(b"\x00garbage\xff" * 10, "junk.onnx")
