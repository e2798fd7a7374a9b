"""`pawsight predict`: every input form (files, folders, globs, stdin), every output format, top-k, exit
statuses, streaming."""

from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
from pathlib import Path

import pytest

import pawsight
from pawsight import cli
from pawsight.errors import EXIT_OK, EXIT_SKIPPED, EXIT_USAGE
from pawsight.predict import iter_inputs, predict_stream


@pytest.fixture(scope="module")
def photos(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/a.jpg (cat), photos/deeper/b.jpg (dog), photos/deeper/c.jpg (cat), a hidden file, a bad file."""
    root = tmp_path_factory.mktemp("photos")
    cats = sorted((tiny / "validation" / "cats").iterdir())
    dogs = sorted((tiny / "validation" / "dogs").iterdir())
    (root / "deeper").mkdir()
    shutil.copy(cats[0], root / "a.jpg")
    shutil.copy(dogs[0], root / "deeper" / "b.jpg")
    shutil.copy(cats[1], root / "deeper" / "c.jpg")
    (root / ".hidden.jpg").write_bytes(b"ignored")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["predict", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_folder_is_searched_recursively_and_the_table_names_each_picture(transfer_run, photos, capsys):
    code, out, err = run(capsys, str(transfer_run), str(photos))
    assert code == EXIT_OK and err == ""
    rows = sorted(line.split("\t") for line in out.splitlines())
    expected = [("a.jpg", "cats"), ("b.jpg", "dogs"), ("c.jpg", "cats")]
    assert [(Path(r[0]).name, r[1]) for r in rows] == expected
    assert all(0.5 <= float(r[2]) <= 1 for r in rows)


def test_json_lines_with_top_k_and_error_records_exit_1(transfer_run, photos, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, out, err = run(capsys, str(transfer_run), str(photos / "a.jpg"), str(bad),
                         str(tmp_path / "gone.jpg"), "--format", "json", "--top-k", "2")
    assert code == EXIT_SKIPPED
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(obj["path"]).name for obj in lines] == ["a.jpg", "broken.jpg", "gone.jpg"]
    good = lines[0]
    assert good["label"] == "cats" and set(good["probabilities"]) == {"cats", "dogs"}
    assert good["probability"] == pytest.approx(good["probabilities"]["cats"])
    assert [t["label"] for t in good["top"]] == ["cats", "dogs"]
    assert set(lines[1]) == {"path", "error"} and set(lines[2]) == {"path", "error"}
    assert "broken.jpg" in err and "gone.jpg" in err


def test_csv_has_a_header_and_one_row_per_picture(transfer_run, photos, capsys):
    code, out, _ = run(capsys, str(transfer_run), str(photos), "--format", "csv")
    assert code == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and set(rows[0]) >= {"path", "label", "probability", "p_cats", "p_dogs", "error"}
    for r in rows:
        assert r["label"] == ("dogs" if r["path"].endswith("b.jpg") else "cats")
        assert float(r["p_cats"]) + float(r["p_dogs"]) == pytest.approx(1, abs=1e-5)


def test_glob_patterns_and_paths_on_stdin(transfer_run, photos, capsys, monkeypatch):
    code, out, _ = run(capsys, str(transfer_run), str(photos / "**" / "*.jpg"))
    assert code == EXIT_OK and len(out.splitlines()) == 3
    code, out, _ = run(capsys, str(transfer_run), str(photos / "*.png"))
    assert code == EXIT_USAGE  # nothing labelled
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{photos / 'deeper' / 'b.jpg'}\n\n{photos / 'a.jpg'}\n"))
    code, out, _ = run(capsys, str(transfer_run), "-", "--format", "json")
    assert code == EXIT_OK
    assert [json.loads(line)["label"] for line in out.splitlines()] == ["dogs", "cats"]


def test_the_exported_onnx_file_answers_like_the_run(transfer_run, photos, tmp_path, capsys):
    from pawsight.export import export_onnx

    onnx_file = export_onnx(transfer_run, tmp_path / "m.onnx")["path"]
    _, from_run, _ = run(capsys, str(transfer_run), str(photos / "a.jpg"), "--format", "json")
    _, from_file, _ = run(capsys, onnx_file, str(photos / "a.jpg"), "--format", "json")
    a, b = json.loads(from_run), json.loads(from_file)
    assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_usage_errors_are_one_line(transfer_run, classical_run, photos, capsys):
    with pytest.raises(SystemExit) as stop:  # refused when the command line is parsed
        run(capsys, str(transfer_run), str(photos), "--top-k", "0")
    assert stop.value.code == EXIT_USAGE
    code, _, err = run(capsys, str(classical_run), str(photos), "--threshold", "2")
    assert code == EXIT_USAGE and "threshold" in err
    code, _, err = run(capsys, str(photos), str(photos))
    assert code == EXIT_USAGE and err.startswith("error: ")


def test_predictions_stream_from_an_endless_input(transfer_run, photos):
    """The first answers arrive before the input ends: nothing is listed or collected first."""
    predictor = pawsight.load(transfer_run)
    endless = itertools.cycle([str(photos / "a.jpg"), str(photos / "deeper" / "b.jpg")])
    first = list(itertools.islice(predict_stream(predictor, endless, batch_size=4), 10))
    assert [r["label"] for _, r, _ in first] == ["cats", "dogs"] * 5


def test_folders_are_walked_lazily(photos):
    walker = iter_inputs([str(photos)])
    assert not isinstance(walker, list | tuple)
    assert sorted(Path(p).name for p in walker) == ["a.jpg", "b.jpg", "c.jpg"]  # hidden file ignored


def test_out_writes_the_answers_of_stdout_to_a_marked_folder(transfer_run, photos, tmp_path, capsys):
    code, shown_json, _ = run(capsys, str(transfer_run), str(photos), "--format", "json")
    out = tmp_path / "answers"
    code, out_text, err = run(capsys, str(transfer_run), str(photos), "--out", str(out))  # json by default
    assert code == EXIT_OK and out_text == ""
    assert (out / "predictions.jsonl").read_text() == shown_json
    assert err.strip() == f"wrote 3 answers to {out / 'predictions.jsonl'}"
    _, shown_csv, _ = run(capsys, str(transfer_run), str(photos), "--format", "csv")
    for _ in range(2):  # again into the same folder: pawsight's own folder, the file is replaced
        assert run(capsys, str(transfer_run), str(photos), "--out", str(out), "--format", "csv")[0] == EXIT_OK
    assert (out / "predictions.csv").read_bytes().decode() == shown_csv  # the CSV's own \r\n line ends
    names = sorted(p.name for p in out.iterdir())
    assert names == [".pawsight-folder", "predictions.csv", "predictions.jsonl"]  # no partial file left


def test_out_mistakes_are_one_error_line(transfer_run, photos, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for argv, says in [(["--format", "parquet"], "--format parquet writes a file: give --out DIR"),
                       (["--out", str(tmp_path / "o"), "--format", "table"],
                        "--format table is for the terminal"),
                       (["--out", str(user)], "is not empty and was not made by pawsight"),
                       (["--out", str(photos / "answers")], "is inside the data folder"),
                       (["--address", "127.0.0.1:6379"], "add --engine ray")]:
        code, out, err = run(capsys, str(transfer_run), str(photos), *argv)
        assert code == EXIT_USAGE and out == "" and len(err.splitlines()) == 1 and says in err, err
    assert [p.name for p in user.iterdir()] == ["notes.txt"] and not (photos / "answers").exists()
