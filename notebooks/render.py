"""Run the lesson notebook and publish a rendered copy; keep the committed notebook free of outputs.

    python notebooks/render.py --data ../shared/datasets/cats_and_dogs --out docs/lesson --write-times
    python notebooks/render.py --strip          # clear outputs after working on the notebook in Jupyter

Executing runs the notebook in a fresh kernel (this Python's), in memory, with its runs in a temporary folder,
and writes `OUT/README.md` (Markdown: the text, the code, the printed output with long parts shortened) and
the figures as small PNGs next to it. It times every cell and adds the seconds up per section (a section
starts at a Markdown cell with a `#`/`##` heading); `--write-times` also puts those times on the ⏱ line
at the top of each section of the committed notebook, so readers know what to expect.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nbformat
from PIL import Image

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "image-recognition.ipynb"
TIME_MARK = "⏱"
MAX_WIDTH = 720  # pixels of a published figure
KEEP_HEAD, KEEP_TAIL = 14, 8  # lines kept of a long printed output


def cpu_flags() -> str:
    """" with AVX-512" / " with AVX2" (the same code runs 2.5-3.5x slower without AVX-512), "" if unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return " with AVX-512" if "avx512f" in flags else " with AVX2" if "avx2" in flags else ""


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without outputs, execution counts or per-run metadata (what the repository holds)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def execute(nb: nbformat.NotebookNode, env: dict[str, str], timeout: float) -> nbformat.NotebookNode:
    """Run every cell (cwd: notebooks/) in a kernel started with `env` added; raises on a failing cell."""
    from nbclient import NotebookClient

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name=nb.metadata.kernelspec.name,
                                resources={"metadata": {"path": str(HERE)}}, record_timing=True)
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def cell_seconds(cell: nbformat.NotebookNode) -> float:
    timing = cell.metadata.get("execution", {})
    start = timing.get("iopub.execute_input") or timing.get("shell.execute_reply.started")
    end = timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())


def section_times(nb: nbformat.NotebookNode) -> dict[int, float]:
    """Index of each heading cell -> seconds its section's code cells took (the title cell: the total).
    Sections without code get no time."""
    times: dict[int, float] = {}
    current = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("## "):
            current = i
        elif cell.cell_type == "code" and current is not None:
            times[current] = times.get(current, 0.0) + cell_seconds(cell)
    title = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                  and c.source.lstrip().startswith("# ")), None)
    if title is not None:
        times[title] = sum(cell_seconds(c) for c in nb.cells if c.cell_type == "code")
    return times


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def with_time_line(source: str, line: str | None) -> str:
    """`source` (a heading cell) with its ⏱ line replaced by `line` (or removed), just under the heading."""
    lines = [ln for ln in source.split("\n") if not ln.startswith(TIME_MARK)]
    if line:
        lines[1:1] = ["", line]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def time_lines(nb: nbformat.NotebookNode, conditions: str) -> dict[int, str]:
    """The ⏱ line of each timed heading: the title's says how it was measured, the sections' refer to it."""
    out = {}
    for i, seconds in section_times(nb).items():
        if nb.cells[i].source.lstrip().startswith("# "):
            out[i] = f"{TIME_MARK} *the whole notebook: {duration(seconds)} {conditions}*"
        else:
            out[i] = f"{TIME_MARK} *this section: {duration(seconds)} (measured as said at the top)*"
    return out


# -- Markdown rendering ----------------------------------------------------------------------------------

def relink(markdown: str, source_dir: Path, target_dir: Path) -> str:
    """Relative links and images written for `source_dir` rewritten to work from `target_dir`."""
    def fix(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return m.group(0)
        new = os.path.relpath((source_dir / target).resolve(), target_dir.resolve())
        return f"{m.group(1)}({new})"

    return re.sub(r"(\]|\]\s)\(([^)\s]+)\)", fix, markdown)


def plain_text(text: str) -> str:
    """Printed text as a terminal would leave it: carriage-return rewrites resolved, long runs shortened."""
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > KEEP_HEAD + KEEP_TAIL + 1:
        cut = len(lines) - KEEP_HEAD - KEEP_TAIL
        lines = lines[:KEEP_HEAD] + [f"... ({cut} more lines) ..."] + lines[-KEEP_TAIL:]
    return "\n".join(lines)


def small_png(data: bytes, max_width: int = MAX_WIDTH) -> bytes:
    """A figure downscaled to `max_width` and stored compactly (a 256-colour palette when that is smaller)."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if im.width > max_width:
        im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
    best = b""
    for candidate in (im, im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)):
        buf = io.BytesIO()
        candidate.save(buf, format="PNG", optimize=True)
        if not best or len(buf.getvalue()) < len(best):
            best = buf.getvalue()
    return best


def to_markdown(nb: nbformat.NotebookNode, out_dir: Path, header: str) -> str:
    """The executed notebook as one Markdown page; figures written as figure-NN.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("figure-*.png"):
        old.unlink()  # figures of an earlier rendering (this tool wrote them)
    parts = [header]
    figure = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(relink(cell.source, HERE, out_dir))
            continue
        if cell.cell_type != "code":
            continue
        parts.append(f"```python\n{cell.source}\n```")
        streams: list[tuple[str, str]] = []  # consecutive prints of one stream merged
        for output in cell.outputs:
            if output.output_type == "stream":
                if streams and streams[-1][0] == output.name:
                    streams[-1] = (output.name, streams[-1][1] + output.text)
                else:
                    streams.append((output.name, output.text))
                continue
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {}):
                continue  # a live progress bar: nothing to show in a static copy (prints around it stay one)
            parts += [f"```text\n{plain_text(text)}\n```" for _, text in streams if text.strip()]
            streams = []
            if output.output_type == "error":
                parts.append(f"```text\n{output.ename}: {output.evalue}\n```")
                continue
            data = output.get("data", {})
            if "image/png" in data:
                figure += 1
                name = f"figure-{figure:02d}.png"
                (out_dir / name).write_bytes(small_png(base64.b64decode(data["image/png"])))
                parts.append(f"![a figure drawn by the cell above]({name})")
            elif "text/plain" in data:
                parts.append(f"```text\n{plain_text(data['text/plain'])}\n```")
        parts += [f"```text\n{plain_text(text)}\n```" for _, text in streams if text.strip()]
    return "\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"


# -- command ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--strip", action="store_true", help="only clear the notebook's outputs, in place")
    parser.add_argument("--data", type=Path, help="picture folder (default: the notebook's own default)")
    parser.add_argument("--quick", action="store_true", help="the notebook's QUICK mode (short budgets)")
    parser.add_argument("--finetune", action="store_true", help="also run the optional fine-tuning step")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "lesson")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one cell may take")
    parser.add_argument("--write-times", action="store_true",
                        help="write the measured section times into the notebook's ⏱ lines")
    args = parser.parse_args(argv)

    nb = nbformat.read(args.notebook, as_version=4)
    if args.strip:
        nbformat.write(strip(nb), args.notebook)
        print(f"stripped {args.notebook}")
        return 0

    with tempfile.TemporaryDirectory(prefix="pawsight-lesson-") as runs:
        env = {"PAWSIGHT_NOTEBOOK_RUNS": runs, "PAWSIGHT_NOTEBOOK_QUICK": "1" if args.quick else "0",
               "PAWSIGHT_NOTEBOOK_FINETUNE": "1" if args.finetune else "0"}
        if args.data:
            env["PAWSIGHT_NOTEBOOK_DATA"] = str(args.data.resolve())
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        executed = execute(strip(nbformat.read(args.notebook, as_version=4)), env, args.timeout)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()[0]

    cores = os.cpu_count()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    data_name = args.data.name if args.data else "the notebook's default data"
    load = f"load average {load_before:.1f} at the start, {load_after:.1f} at the end"
    conditions = (f"on `{data_name}`{' in QUICK mode' if args.quick else ''}, measured {day} on {cores} CPU "
                  f"cores{cpu_flags()}, no GPU ({load})")
    lines = time_lines(executed, conditions)
    for i, line in lines.items():
        executed.cells[i].source = with_time_line(executed.cells[i].source, line)
    header = (f"<!-- Written by notebooks/render.py from {args.notebook.name}; do not edit by hand. -->\n"
              f"*A rendered copy of [the lesson notebook]"
              f"({os.path.relpath(args.notebook.resolve(), args.out.resolve())}), executed top to bottom on "
              f"`{data_name}` on {day} with {platform.python_implementation()} {platform.python_version()}, "
              f"{cores} CPU cores{cpu_flags()}, no GPU, in {duration(wall)} of wall time "
              f"({load}). Figures are downscaled.*")
    page = to_markdown(executed, args.out, header)
    (args.out / "README.md").write_text(page)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out}/README.md and {len(list(args.out.glob('figure-*.png')))} figures, "
          f"{size / 1e6:.2f} MB; whole notebook {duration(wall)}")
    for i, line in lines.items():
        print(f"  {nb.cells[i].source.splitlines()[0]}: {line}")
    if args.write_times:
        for i, line in lines.items():
            nb.cells[i].source = with_time_line(nb.cells[i].source, line)
        nbformat.write(strip(nb), args.notebook)
        print(f"section times written into {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
