"""The lesson notebook: committed without outputs, its kernel exists, and it runs top to bottom on the tiny
set (a failing cell fails the suite); the tool that publishes its rendered copy."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "image-recognition.ipynb"
sys.path.insert(0, str(ROOT / "notebooks"))
import render  # noqa: E402  (notebooks/render.py)

WIDGET = "application/vnd.jupyter.widget-view+json"


def solutions(nb: nbformat.NotebookNode) -> list[str]:
    """The Python code of every exercise solution (fenced blocks inside <summary>Solution</summary>)."""
    found = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            found += re.findall(r"<summary>Solution</summary>\s*```python\n(.*?)```", cell.source, re.S)
    return found


def read() -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def test_notebook_is_committed_without_outputs():
    nb = read()
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} hold outputs; run: python notebooks/render.py --strip"
    assert "widgets" not in nb.metadata
    assert not any("execution" in c.metadata for c in nb.cells)


def test_notebook_kernel_exists_in_this_environment():
    """The kernel named in the notebook is one a fresh venv with ipykernel provides (python3)."""
    from jupyter_client.kernelspec import KernelSpecManager

    name = read().metadata.kernelspec.name
    assert name == "python3"
    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.language == "python"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebook_runs_top_to_bottom_on_the_tiny_set(tiny: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    from nbclient.exceptions import CellExecutionError

    runs = tmp_path / "runs"
    # Progress bars on (conftest turns them off): they must render as notebook widgets, not break cells.
    monkeypatch.delenv("PAWSIGHT_PROGRESS", raising=False)
    env = {"PAWSIGHT_NOTEBOOK_DATA": str(tiny), "PAWSIGHT_NOTEBOOK_QUICK": "1",
           "PAWSIGHT_NOTEBOOK_RUNS": str(runs), "PAWSIGHT_NOTEBOOK_FINETUNE": "0"}
    nb = read()
    # the exercise solutions run too, after the lesson, as a reader who opens them would run them
    answers = solutions(nb)
    assert len(answers) == 5
    nb.cells += [new_code_cell(code) for code in answers]
    try:
        render.execute(nb, env, timeout=600)
    except CellExecutionError as exc:
        pytest.fail(f"a notebook cell failed:\n{exc}")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    # every cell that draws a figure shows one
    for c in code:
        if "plt.show()" in c.source and "for g in groups" not in c.source:  # duplicates: none in tiny
            assert any("image/png" in o.get("data", {}) for o in c.outputs), c.source[:80]
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    for approach in ("classical", "transfer", "scratch"):
        assert (runs / approach / "run.json").is_file()  # trained where the parameter cell said
        assert any(f"{approach}{kind}: validation accuracy" in text for kind in ("", " (frozen)"))
    assert any(WIDGET in o.get("data", {}) for c in code for o in c.outputs), "no progress bar widget shown"
    # section 9: pictures of other things get a neither score and the threshold is shown
    assert "above it the answer is 'unknown'" in text and "neither score" in "".join(c.source for c in code)
    # section 10: compare wrote its chart and leaderboard, advise printed a recommendation
    assert all((runs / "compare" / name).is_file() for name in ("accuracy-vs-size.png", "compare.csv"))
    assert "compared in" in text and "recommend" in text.lower()
    # every solution printed its result
    outputs = ["".join(o.get("text", "") for o in c.outputs) for c in code[-len(answers):]]
    assert "classical" in outputs[0] and "transfer" in outputs[0] and "scratch" in outputs[0]
    assert "accuracy" in outputs[1] and (runs / "three-classes" / "run.json").is_file()
    assert any("image/png" in o.get("data", {}) for o in code[-len(answers) + 2].outputs)
    assert outputs[3].count("%") == 3 and "% in" in outputs[4]


# -- notebooks/render.py ---------------------------------------------------------------------------------

def png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_render_writes_markdown_with_small_figures_short_output_and_working_links(tmp_path: Path):
    nb = new_notebook(cells=[
        new_markdown_cell("# Title\n\nSee [the README](../README.md) and [docs](https://example.org)."),
        new_code_cell("print('x')", outputs=[
            new_output("stream", name="stdout", text="".join(f"line {i}\n" for i in range(100))),
            new_output("stream", name="stdout", text="progress 10%\rprogress 100%\n"),
            new_output("display_data", data={WIDGET: {"model_id": "1"}, "text/plain": "WIDGET-TEXT"}),
            new_output("stream", name="stdout", text="after the bar\n"),
            new_output("display_data", data={"image/png": png(1600, 800), "text/plain": "<Figure>"}),
        ]),
    ])
    out = tmp_path / "docs" / "lesson"
    page = render.to_markdown(nb, out, "header")
    figure = Image.open(out / "figure-01.png")
    assert figure.width == render.MAX_WIDTH and figure.height == render.MAX_WIDTH // 2
    assert "](figure-01.png)" in page
    assert "line 0" in page and "line 99" in page and "line 50" not in page and "more lines" in page
    assert "progress 100%" in page and "progress 10%" not in page  # \r rewrites resolved
    assert "WIDGET-TEXT" not in page  # widgets are not rendered
    assert "progress 100%\nafter the bar" in page  # and prints around a progress bar stay one block
    link = page.split("[the README](")[1].split(")")[0]
    assert (out / link).resolve() == (ROOT / "README.md").resolve()
    assert "(https://example.org)" in page
    # rendering again replaces the figures it wrote
    render.to_markdown(new_notebook(cells=[]), out, "header")
    assert not list(out.glob("figure-*.png"))


def test_render_section_times_and_strip():
    def timed(seconds: int) -> nbformat.NotebookNode:
        cell = new_code_cell("pass", execution_count=1,
                             outputs=[new_output("stream", name="stdout", text="x")])
        cell.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00.000Z",
                                      "shell.execute_reply": f"2026-01-01T00:00:{seconds:02d}.000Z"}
        return cell

    nb = new_notebook(cells=[new_markdown_cell("# Title\n\nintro"), timed(5),
                             new_markdown_cell("## One\n\n⏱ *old*\n\ntext"), timed(10), timed(20),
                             new_markdown_cell("## Two"), timed(7), new_markdown_cell("## No code")])
    lines = render.time_lines(nb, "(test)")
    section = "(measured as said at the top)"
    assert lines == {0: "⏱ *the whole notebook: 42 s (test)*", 2: f"⏱ *this section: 30 s {section}*",
                     5: f"⏱ *this section: 7 s {section}*"}
    assert (render.with_time_line(nb.cells[2].source, lines[2])
            == f"## One\n\n⏱ *this section: 30 s {section}*\n\ntext")
    assert render.with_time_line("## Two", lines[5]) == f"## Two\n\n⏱ *this section: 7 s {section}*"
    assert render.duration(125) == "2 min 05 s"
    stripped = render.strip(nb)
    assert all(c.outputs == [] and c.execution_count is None and "execution" not in c.metadata
               for c in stripped.cells if c.cell_type == "code")
