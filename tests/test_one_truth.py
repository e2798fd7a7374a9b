"""One truth on every surface: for the same pictures, a run gives the same answer — label ("unknown"
included), closest class, probabilities and neither score — through the Python API, `pawsight predict` as a
table, JSON and CSV, the web server and its page in a real browser, `explain`, `evaluate` and the report.

One run (the session's transfer run on the tiny set) and one labelled folder: cats and dogs it never saw,
plus pictures of other things filed under "cats" (as a user's mislabelled folder would be), which the run
answers "unknown". Each surface is compared with the predictor's own answer records.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

import pawsight
from browser import browser_page
from clitools import pawsight as run_cli
from pawsight.evaluation import answer_table
from pawsight.inference import UNKNOWN
from pawsight.report.explain import Explainer
from pawsight.report.html import build_report
from pawsight.serve.app import background_server, create_app

OTHERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "not_cats_or_dogs"
# pictures of other things the tiny transfer run answers "unknown" (test_neither.py: SOMETHING_ELSE)
SOMETHING_ELSE = ["weather_cloudy/cloudy71.jpg", "objects/n04418357_theater_curtain.jpg",
                  "weather_rain/rain72.jpg"]


@pytest.fixture(scope="module")
def folder(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cats/ and dogs/ of validation pictures, with the other things filed under cats/."""
    root = tmp_path_factory.mktemp("one-truth") / "data"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for p in sorted((tiny / "validation" / cls).glob("*.jpg"))[:4]:
            shutil.copy(p, root / cls / p.name)
    for name in SOMETHING_ELSE:
        shutil.copy(OTHERS / name, root / "cats" / Path(name).name)
    return root


@pytest.fixture(scope="module")
def truth(transfer_run: Path, folder: Path) -> dict[str, dict]:
    """The predictor's answer record per file name: what every other surface must show."""
    files = sorted(folder.rglob("*.jpg"))
    records = pawsight.load(transfer_run).predict_records([str(p) for p in files])
    answers = {p.name: r for p, r in zip(files, records, strict=True)}
    unknown = [n for n, r in answers.items() if r["label"] == UNKNOWN]
    assert sorted(unknown) == sorted(Path(n).name for n in SOMETHING_ELSE), "the fixture needs real unknowns"
    assert all(r["label"] != UNKNOWN for n, r in answers.items() if n not in unknown)
    return answers


def same_answer(record: dict, expected: dict) -> None:
    assert record["label"] == expected["label"]
    assert record["closest"] == expected["closest"]
    assert record["probability"] == pytest.approx(expected["probability"], abs=1e-5)
    assert record["unknown_score"] == pytest.approx(expected["unknown_score"], abs=1e-4)
    for c, p in expected["probabilities"].items():
        assert record["probabilities"][c] == pytest.approx(p, abs=1e-5)


def test_every_unknown_names_its_closest_class_and_why(truth: dict[str, dict]) -> None:
    for r in truth.values():
        if r["label"] == UNKNOWN:
            assert r["unknown_score"] > r["unknown_threshold"]
            assert r["summary"] == (f"unknown: closest {r['closest']} {r['probability']:.1%}, neither score "
                                    f"{r['unknown_score']:.2f} > threshold {r['unknown_threshold']:.2f}")
            assert r["closest"] in ("cats", "dogs") and r["probability"] == max(r["probabilities"].values())


def test_python_api_predict(transfer_run: Path, folder: Path, truth: dict[str, dict]) -> None:
    from pawsight.api import predict  # pawsight.predict is also the CLI module's name once it is imported

    predictions, skipped = predict(transfer_run, [folder], top_k=2)
    assert not skipped and len(predictions) == len(truth)
    for p in predictions:
        same_answer(p, truth[Path(p["path"]).name])
        assert [t["label"] for t in p["top"]] == sorted(p["probabilities"], key=p["probabilities"].get,
                                                        reverse=True)  # classes, never "unknown"


def test_cli_json_csv_and_table(transfer_run: Path, folder: Path, truth: dict[str, dict]) -> None:
    js = run_cli("predict", transfer_run, folder, "--format", "json", "--top-k", "2")
    assert js.returncode == 0, js.stderr
    for line in js.stdout.splitlines():
        record = json.loads(line)
        same_answer(record, truth[Path(record["path"]).name])
        assert record["summary"] == truth[Path(record["path"]).name]["summary"]
        assert {t["label"] for t in record["top"]} == {"cats", "dogs"}

    out = run_cli("predict", transfer_run, folder, "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(truth)
    for row in rows:
        expected = truth[Path(row["path"]).name]
        assert (row["label"], row["closest"]) == (expected["label"], expected["closest"])
        assert float(row["probability"]) == pytest.approx(expected["probability"], abs=1e-5)
        assert float(row["unknown_score"]) == pytest.approx(expected["unknown_score"], abs=1e-4)
        assert float(row["unknown_threshold"]) == expected["unknown_threshold"]

    table = run_cli("predict", transfer_run, folder, "--top-k", "2").stdout.splitlines()
    assert len(table) == len(truth)
    for line in table:
        cells = line.split("\t")
        expected = truth[Path(cells[0]).name]
        assert cells[1] == expected["label"]
        if expected["label"] == UNKNOWN:  # the closest class first, then the other; then why
            assert cells[2].startswith(f"closest {expected['closest']} {expected['probability']:.3f}")
            assert cells[3] == (f"neither score {expected['unknown_score']:.2f} > threshold "
                                f"{expected['unknown_threshold']:.2f}")
        else:
            assert cells[2] == f"{expected['probability']:.3f}"


def test_server_and_web_page(transfer_run: Path, folder: Path, truth: dict[str, dict]) -> None:
    from playwright.sync_api import expect

    unknown = next(p for p in sorted(folder.rglob("*.jpg")) if truth[p.name]["label"] == UNKNOWN)
    cat = next(p for p in sorted(folder.rglob("*.jpg")) if truth[p.name]["label"] == "cats")
    with background_server(create_app(transfer_run)) as site:
        for p in (unknown, cat):
            answer = httpx.post(site + "/predict", files={"file": (p.name, p.read_bytes())}, timeout=60)
            same_answer(answer.json()["predictions"][0], truth[p.name])
        with browser_page(site) as page:
            page.set_input_files("#pick", str(unknown))
            expect(page.locator("#label")).to_have_text("Neither", timeout=30_000)
            r = truth[unknown.name]
            detail = page.locator("#detail")
            expect(detail).to_contain_text(f"Closest: {r['closest']}")
            expect(detail).to_contain_text(f"neither score {r['unknown_score']:.2f} is above the threshold "
                                           f"{r['unknown_threshold']:.2f}")
            assert page.locator("#bars").get_attribute("class").split().count("unknown") == 1  # greyed
            fill = "e => getComputedStyle(e).backgroundColor"
            grey = page.locator("#bars li .bar > span").first.evaluate(fill)
            page.set_input_files("#pick", str(cat))
            expect(page.locator("#label")).to_have_text("cats", timeout=30_000)
            assert "unknown" not in (page.locator("#bars").get_attribute("class") or "")
            blue = page.locator("#bars li .bar > span").first.evaluate(fill)
            assert grey != blue
            assert page.problems == []


def test_explain_explains_the_answer_given(transfer_run: Path, folder: Path, truth: dict[str, dict],
                                           tmp_path: Path) -> None:
    explainer = Explainer(transfer_run)
    for p in sorted(folder.rglob("*.jpg"))[:8]:
        e = explainer(str(p))
        same_answer(e.answer, truth[p.name])
        assert e.target == truth[p.name]["closest"]
        assert e.caption.startswith(truth[p.name]["summary"])
    unknown = next(p for p in sorted(folder.rglob("*.jpg")) if truth[p.name]["label"] == UNKNOWN)
    out = run_cli("explain", transfer_run, unknown, "--out", tmp_path / "why.png")
    assert out.returncode == 0, out.stderr
    assert truth[unknown.name]["summary"] in out.stdout and "heat map: what looks like" in out.stdout


def test_evaluate_and_report_count_the_same_answers(transfer_run: Path, folder: Path, truth: dict[str, dict],
                                                    tmp_path: Path) -> None:
    result = json.loads(run_cli("evaluate", transfer_run, folder, "--json", "--no-save").stdout)
    by_name = {Path(p["path"]).name: p for p in result["predictions"]}
    assert {n: p["predicted"] for n, p in by_name.items()} == {n: r["label"] for n, r in truth.items()}
    for n, p in by_name.items():
        assert p["unknown_score"] == pytest.approx(truth[n]["unknown_score"], abs=1e-4)
    n_unknown = sum(r["label"] == UNKNOWN for r in truth.values())
    assert result["unknown"] == n_unknown
    assert result["confusion_columns"] == ["cats", "dogs", UNKNOWN]
    assert sum(row[2] for row in result["confusion_matrix"]) == n_unknown

    text = run_cli("evaluate", transfer_run, folder, "--no-save").stdout
    assert f"answered 'unknown' (neither score > 1): {n_unknown} of {len(truth)}" in text
    assert re.search(r"^\s+cats\s+dogs\s+unknown$", text, re.M)

    path, _ = build_report(transfer_run, folder, out=tmp_path / "report.html", top_k=0)
    page = path.read_text()
    assert f"answered &#x27;unknown&#x27; (neither score &gt; 1): {n_unknown} of {len(truth)}" in page
    assert f"Answered unknown ({n_unknown})" in page
    for name in (Path(n).name for n in SOMETHING_ELSE):
        assert name in page.split('id="unknown"')[1]
    saved = pawsight.evaluate(transfer_run, folder, save=False)  # what the report drew from
    columns, counts, _ = answer_table(
        [saved["classes"].index(p["label"]) for p in saved["predictions"]],
        [p["predicted"] for p in saved["predictions"]], saved["classes"])
    assert counts.tolist() == result["confusion_matrix"] and columns == result["confusion_columns"]


def test_training_saves_the_evaluation_evaluate_gives(transfer_run: Path, tiny: Path) -> None:
    """The validation evaluation training saves goes through the same predictor as `pawsight evaluate`."""
    from pawsight.run import list_evaluations, read_evaluation

    first = list_evaluations(transfer_run)[0]
    saved = read_evaluation(transfer_run, first)
    again = pawsight.evaluate(transfer_run, tiny, split="validation", save=False)
    assert [p["predicted"] for p in saved["predictions"]] == [p["predicted"] for p in again["predictions"]]
    for a, b in zip(saved["predictions"], again["predictions"], strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    assert saved["confusion_matrix"] == again["confusion_matrix"]
    assert saved["per_class"] == again["per_class"]
