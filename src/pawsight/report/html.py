"""`pawsight report RUN [--data DIR] [--out FILE.html]`: one self-contained HTML page about a run.

Sections: data summary and contact sheet, settings, training curves, metrics, confusion matrix, ROC and
precision-recall, calibration, top losses with explanations, timings. Every picture is embedded as a data
URI and the page has no script and no external resource, so it opens offline in any browser and can be
mailed as one file. Every name that comes from the user's folders (files, classes) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import PawsightError
from ..evaluation import no_better_than_guessing, unknown_line
from ..inference import UNKNOWN
from ..storage import HTML_MARKER
from . import plots

# section id -> its name in the navigation bar (the id is the link target; the name is what the reader sees)
SECTIONS = {"summary": "data", "settings": "settings", "curves": "curves", "metrics": "metrics",
            "confusion": "confusion matrix", "errors": "errors", "unknown": "unknown", "roc": "ROC and PR",
            "calibration": "calibration", "top-losses": "top losses", "timings": "timings"}
MAX_LISTED = 500  # rows of the error and unknown tables on the page (the CSV link has them all)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto}.note{color:#666;font-size:.9em}.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px;width:336px;background:#fafafa}
figure .pair{display:flex;gap:4px}figure .pair img{width:160px;height:160px;object-fit:cover}
figcaption{font-size:.85em;word-break:break-all}.wrong{color:#b00}.right{color:#070}
nav a{margin-right:.8em}code{background:#f4f4f4;padding:0 .2em}
.warning{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;border-radius:4px}
"""


# In every report, so a later --out may replace only a report pawsight wrote.
GENERATOR = HTML_MARKER.decode()  # storage's mark: --out replaces only pages pawsight wrote

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg(pixels: np.ndarray | Image.Image, quality: int = 82) -> bytes:
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def img_tag(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}">'


def table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(v: Any) -> str:
        numeric = isinstance(v, int | float) and not isinstance(v, bool)
        return f'<td class="n">{esc(v)}</td>' if numeric else f"<td>{esc(v)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(f: plots.Figure | None, missing: str) -> str:
    if f is None:
        return f'<p class="note">{esc(missing)}</p>'
    note = f'<p class="note">{esc(f.note)}</p>' if f.note else ""
    width = int.from_bytes(f.png[16:20], "big") * 80 // plots.DPI  # drawn at 2x: shown at screen size
    return (f'<img src="{data_uri(f.png)}" alt="{esc(f.title)}" width="{width}">') + note


def build_report(run: str | Path, data: str | Path | None = None, out: str | Path | None = None,
                 top_k: int = 8, explain: bool = True) -> tuple[Path, dict[str, float]]:
    """Write the report of `run` (evaluated on `data`, or its saved / validation evaluation) to `out`
    (default RUN/report.html). Returns (path, seconds per part)."""
    from ..options import check_param
    from ..run import data_root, read_run_info
    from ..storage import HTML_MARKER, atomic_write_text, check_output_file

    check_param("top_losses", top_k)

    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t, 3)
        return value

    t0 = time.perf_counter()
    info = read_run_info(run)
    path = Path(out) if out is not None else Path(run) / "report.html"
    check_output_file(path, HTML_MARKER, data=[data, data_root(info)])  # before the work
    evaluation = timed("evaluate", plots.load_evaluation, run, data)
    curves = timed("curves", plots.run_figures, run)
    views = {f.name: f for f in timed("evaluation views", _views, evaluation)}
    losses = plots.top_losses(evaluation, top_k)
    cards = timed("top losses", _loss_cards, run, losses, explain)
    sheet = timed("contact sheet", _contact_sheet, evaluation, info)
    seconds["total"] = round(time.perf_counter() - t0, 3)
    page = render_page(run, info, evaluation, curves, views, cards, sheet, seconds)
    check_output_file(path, HTML_MARKER)  # again: a file may have appeared meanwhile
    try:
        atomic_write_text(path, page)
    except OSError as exc:
        raise PawsightError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, seconds


def _views(evaluation: dict[str, Any]) -> list[plots.Figure]:
    return [f for f in (plots.confusion(evaluation), plots.per_class(evaluation), plots.roc_pr(evaluation),
                        plots.calibration(evaluation)) if f is not None]


def _loss_cards(run: str | Path, losses: list[dict[str, Any]], explain: bool
                ) -> list[dict[str, Any]]:
    """For each top-loss picture: the picture and (when `explain`) its explanation overlay as JPEG bytes."""
    from ..images import ImageError, open_rgb
    from ..progress import progress
    from .explain import Explainer, overlay

    explainer = Explainer(run) if explain and losses else None
    cards = []
    # the slow part of a report (occlusion runs the model on ~100 covered copies per picture): a progress
    # bar on a terminal, status lines in a log
    for item in progress(losses, total=len(losses), desc="explaining top losses", unit="img"):
        card: dict[str, Any] = {"item": item, "picture": None, "overlay": None, "method": None}
        try:
            im = open_rgb(item["path"])
            im.thumbnail((320, 320))
            card["picture"] = jpeg(im)
        except (ImageError, OSError):
            cards.append(card)
            continue
        if explainer is not None:
            try:
                e = explainer(item["path"])  # why the model said what it said
                card["picture"] = jpeg(Image.fromarray(e.image).resize((320, 320)))  # what the model saw
                card["overlay"] = jpeg(Image.fromarray(overlay(e.image, e.heatmap)).resize((320, 320)))
                card["method"] = e.method
            except PawsightError:
                pass
        cards.append(card)
    return cards


def _contact_sheet(evaluation: dict[str, Any], info: dict[str, Any]) -> bytes | None:
    from ..cache import ImageCache
    from ..images import Preprocessing
    from ..inspect import contact_sheet

    preds = evaluation.get("predictions") or []
    classes = list(evaluation["classes"])
    if not preds:
        return None
    prep = Preprocessing.from_dict(info["preprocessing"])
    decoded = ImageCache().load([p["path"] for p in preds], prep,
                                labels=[classes.index(p["label"]) for p in preds], desc="contact sheet")
    if not len(decoded.labels):
        return None
    return jpeg(contact_sheet(classes, decoded, per_class=8, thumb=80))


def render_page(run: str | Path, info: dict[str, Any], evaluation: dict[str, Any], curves: list[plots.Figure],
                views: dict[str, plots.Figure], cards: list[dict[str, Any]], sheet: bytes | None,
                seconds: dict[str, float]) -> str:
    classes = list(info["classes"])
    title = f"pawsight report: {Path(run).name}"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{GENERATOR}"
             f"<link rel=\"icon\" href=\"data:,\"><title>{esc(title)}</title><style>{CSS}</style></head>"
             "<body>",
             f"<h1>{esc(title)}</h1>",
             f"<p>{esc(info['approach'])} model, {len(classes)} classes; evaluated on "
             f"<code>{esc(evaluation.get('data', '?'))}</code> ({esc(evaluation.get('split', '?'))} "
             "pictures): "
             f"accuracy <b>{_pct(evaluation.get('accuracy'))}</b> on {esc(evaluation.get('n_images', 0))} "
             f"pictures (most probable class). Written {esc(time.strftime('%Y-%m-%d %H:%M'))} by "
             "pawsight "
             f"{esc(info.get('pawsight_version', '?'))}.</p>",
             *([f"<p>{esc(unknown_line(evaluation))}</p>"]
               if evaluation.get("threshold") is not None else []),
             *([f'<p class="warning" role="alert"><b>Warning:</b> {esc(warning)}</p>']
               if (warning := no_better_than_guessing(evaluation)) else []),
             "<nav>" + "".join(f'<a href="#{s}">{esc(name)}</a>' for s, name in SECTIONS.items()) + "</nav>"]

    # data summary
    d = info.get("data", {})
    counts = d.get("counts", {})
    splits = list(counts)
    rows = [[c] + [counts[s].get(c, 0) for s in splits] for c in classes]
    rows.append(["total"] + [sum(counts[s].values()) for s in splits])
    skipped = d.get("skipped", [])
    dropped = d.get("dropped_duplicates", [])
    parts.append('<section id="summary"><h2>Data</h2>'
                 f"<p>Trained on <code>{esc(d.get('root', '?'))}</code> ({esc(d.get('layout', '?'))}). "
                 f"{len(skipped)} unreadable file(s) skipped, {len(dropped)} duplicate(s) dropped.</p>"
                 + _issues_line(info) + table(rows, ["class", *splits]))
    if skipped:
        parts.append(table([[s.get("path"), s.get("reason")] for s in skipped[:50]],
                           ["skipped file", "reason"]))
    if sheet is not None:
        parts.append("<h3>Contact sheet (evaluated pictures)</h3>"
                     + img_tag(sheet, "contact sheet", "image/jpeg"))
    parts.append("</section>")

    # settings
    prep = info.get("preprocessing") or {}
    settings = [["approach", info["approach"]], ["classes", ", ".join(classes)], ["seed", info.get("seed")],
                ["validation fraction", info.get("val_fraction")],
                ["pictures as the model sees them", f"{prep.get('size', '?')} x {prep.get('size', '?')} px, "
                                                    f"{str(prep.get('mode', '?')).replace('-', ' ')}"]]
    # the model's own settings as given; one left unset shows what was used instead ("size" is the picture
    # size above), never a raw JSON null
    used = {"size": f"{prep.get('size')} px" if prep.get("size") else None}
    settings += [[k.replace("_", " "), _setting(v, used.get(k))] for k, v in
                 sorted(info.get("params", {}).items()) if k != "seed"]
    parts.append('<section id="settings"><h2>Settings</h2>' + table(settings, ["setting", "value"])
                 + "</section>")

    # curves
    heading = curves[0].title if len(curves) == 1 else "Training curves"
    parts.append(f'<section id="curves"><h2>{esc(heading)}</h2>')
    if curves:
        parts += [(f"<h3>{esc(f.title)}</h3>" if f.title != heading else "") + figure_html(f, "")
                  for f in curves]
    else:
        parts.append('<p class="note">No curve for this run: it has no per-epoch history and no learning '
                     "curve was measured when it was trained (no validation pictures).</p>")
    parts.append("</section>")

    # metrics
    pc = views.get("per-class")
    metric_rows = [["accuracy (most probable class)", _pct(evaluation.get("accuracy"))],
                   ["pictures", evaluation.get("n_images")],
                   ["errors (most probable class)", evaluation.get("n_errors")],
                   ["log-loss", _num(evaluation.get("log_loss"))],
                   ["macro F1", _num(evaluation.get("macro_f1"))]]
    if evaluation.get("threshold") is not None:
        metric_rows += [["answered 'unknown'", evaluation.get("unknown")],
                        ["accuracy of the labels given", _pct(evaluation.get("accuracy_answered"))]]
    class_rows = []
    if pc is not None:
        class_rows = [[c, _num(pc.data["precision"][i]), _num(pc.data["recall"][i]), _num(pc.data["f1"][i]),
                       pc.data["support"][i]] for i, c in enumerate(pc.data["classes"])]
    parts.append('<section id="metrics"><h2>Metrics</h2>' + table(metric_rows, ["metric", "value"])
                 + table(class_rows, ["class", "precision", "recall", "F1", "pictures"])
                 + figure_html(pc, "") + "</section>")

    parts.append('<section id="confusion"><h2>Confusion matrix</h2><p class="note">rows: true class; '
                 "columns: the answer given ('unknown' when the neither score is above its threshold)</p>"
                 + figure_html(views.get("confusion-matrix"), "no pictures") + "</section>")
    parts += _answer_lists(evaluation)
    k = len(classes)
    roc_missing = (f"not drawn: {k} classes (one-vs-rest curves are drawn for up to {plots.MAX_ROC_CLASSES})"
                   if k > plots.MAX_ROC_CLASSES else "not drawn: every picture belongs to one class")
    parts.append('<section id="roc"><h2>ROC and precision-recall</h2>' + figure_html(views.get("roc-pr"),
                                                                                        roc_missing)
                 + "</section>")
    cal = views.get("calibration")
    ece = f"<p>Expected calibration error: <b>{cal.data['ece']:.3f}</b></p>" if cal is not None else ""
    parts.append('<section id="calibration"><h2>Calibration</h2>' + ece + figure_html(cal, "no pictures")
                 + "</section>")

    # top losses
    parts.append('<section id="top-losses"><h2>Top losses</h2><p class="note">The pictures with the highest '
                 "loss (&minus;log of the probability given to the true class), highest first; beside each, "
                 "what the model looked at for the class it predicted (Grad-CAM for deep runs, occlusion "
                 "otherwise: red = strongest evidence).</p><div class=\"gallery\">")
    for card in cards:
        item = card["item"]
        ok = item["predicted"] == item["label"]
        pics = "".join(img_tag(b, alt, "image/jpeg") for b, alt in ((card["picture"], "picture"),
                                                                   (card["overlay"], card["method"] or ""))
                       if b is not None)
        parts.append(f'<figure><div class="pair">{pics}</div><figcaption>'
                     f"<b>{esc(Path(item['path']).name)}</b><br>true: {esc(item['label'])} "
                     f"(p {item['true_probability']:.3f})<br>"
                     f"<span class=\"{'right' if ok else 'wrong'}\">predicted: {esc(item['predicted'])} "
                     f"(p {item['probability']:.3f})</span><br>loss {float(item['loss']):.2f}"
                     + (f" &middot; {esc(card['method'])}" if card["method"] else "")
                     + "</figcaption></figure>")
    if not cards:
        parts.append('<p class="note">no pictures</p>')
    parts.append("</div></section>")

    # timings
    train_t = [[k, v] for k, v in info.get("timings", {}).items()]
    report_t = [[k, v] for k, v in seconds.items()]
    ev_t = [[k, v] for k, v in (evaluation.get("seconds") or {}).items()]
    parts.append('<section id="timings"><h2>Timings</h2><h3>training (seconds)</h3>'
                 + table(train_t, ["phase", "seconds"]) + "<h3>evaluation (seconds)</h3>"
                 + table(ev_t, ["phase", "seconds"]) + "<h3>this report (seconds)</h3>"
                 + table(report_t, ["part", "seconds"]) + "</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _issues_line(info: dict[str, Any]) -> str:
    """What `train --exclude` left out, or how to look for wrong labels, outliers and bad pictures in this
    data (`pawsight data issues`), whose gallery shows each one."""
    root = (info.get("data") or {}).get("root", "DATA")
    excluded = (info.get("data") or {}).get("excluded")
    command = f"pawsight data issues {shlex.quote(str(root))}"
    if excluded is not None:
        return (f"<p>{len(excluded)} picture(s) left out with <code>--exclude {esc(info.get('exclude', ''))}"
                f"</code> (flagged by <code>{esc(command)}</code> or listed by hand); "
                + (f"the first: {esc(', '.join(Path(e['path']).name for e in excluded[:5]))}." if excluded
                   else "none of them was in the data.") + "</p>")
    return (f'<p class="note">Wrong labels, pictures of other things, dark, blurry or tiny pictures: '
            f"<code>{esc(command)}</code> finds them before training and shows them in a gallery; "
            "<code>train --exclude</code> then leaves them out.</p>")


def _answer_lists(evaluation: dict[str, Any]) -> list[str]:
    """The "errors" section (every picture whose answer is not its class, highest loss first, with its most
    confused pairs) and the "unknown" section (the pictures answered "unknown", with their neither score
    against the threshold), each with its full list as a CSV link."""
    classes = list(evaluation["classes"])
    preds = evaluation.get("predictions") or []
    threshold = evaluation.get("threshold")
    rows = []
    for p in preds:
        k = int(np.argmax(p["probabilities"]))
        score = p.get("unknown_score")
        rows.append({"file": p["path"], "true": p["label"], "answer": p["predicted"], "closest": classes[k],
                     "probability": p["probabilities"][k], "neither score": score, "loss": p["loss"]})
    errors = sorted((r for r in rows if r["answer"] != r["true"]), key=lambda r: -float(r["loss"]))
    unknown = sorted((r for r in rows if r["answer"] == UNKNOWN),
                     key=lambda r: -float(r["neither score"] or 0))
    pairs: dict[tuple[str, str], int] = {}
    for r in errors:
        pairs[(r["true"], r["answer"])] = pairs.get((r["true"], r["answer"]), 0) + 1
    confused = sorted(pairs.items(), key=lambda kv: -kv[1])[:10]
    out = [f'<section id="errors"><h2>Errors ({len(errors)})</h2>'
           '<p class="note">Every picture whose answer is not its class, highest loss first.</p>']
    if confused:
        out.append(table([[t, a, n] for (t, a), n in confused], ["true class", "answered", "pictures"]))
    out.append(_rows_table(errors, ["file", "true", "answer", "closest", "probability", "loss"],
                           "errors.csv"))
    out.append("</section>")
    out.append(f'<section id="unknown"><h2>Answered unknown ({len(unknown)})</h2>')
    if threshold is None:
        out.append('<p class="note">This run has no neither score: it always answers one of its '
                   "classes.</p>")
    else:
        out.append(f'<p class="note">A picture is answered "unknown" when its neither score (how unlike the '
                   f"training pictures it is) is above the threshold {float(threshold):.2f}; the closest "
                   "class is what it would otherwise have been called.</p>")
        out.append(_rows_table(unknown, ["file", "true", "closest", "probability", "neither score"],
                               "unknown.csv"))
    out.append("</section>")
    return out


def _rows_table(rows: list[dict[str, Any]], columns: list[str], csv_name: str) -> str:
    """An HTML table of the first MAX_LISTED rows and a link to all of them as CSV (a data URI: no server)."""
    import csv

    if not rows:
        return '<p class="note">none</p>'

    def fmt(v: Any) -> str:
        return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows([[fmt(r[c]) for c in columns] for r in rows])
    link = (f'<p><a download="{esc(csv_name)}" href="data:text/csv;base64,'
            f'{base64.b64encode(buf.getvalue().encode()).decode()}">all {len(rows)} as CSV</a>'
            + (f" (the first {MAX_LISTED} are shown)" if len(rows) > MAX_LISTED else "") + "</p>")
    shown_rows = [[Path(r[c]).name if c == "file" else fmt(r[c]) for c in columns] for r in rows[:MAX_LISTED]]
    return link + table(shown_rows, columns)


def _setting(value: Any, used: str | None = None) -> str:
    """A setting as a person reads it: text as is, yes/no, lists joined, unset as "default" (with what was
    used when known)."""
    if value is None:
        return f"default ({used})" if used else "default"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.2%}"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"
