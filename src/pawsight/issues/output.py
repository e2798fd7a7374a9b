"""What `data issues` gives a person to act on: a ranked table on the terminal, an editable CSV of the flagged
pictures (the input of `train --exclude`) and a self-contained HTML gallery (thumbnails per kind).

The CSV starts with a comment line carrying pawsight's mark, so a later run replaces only a CSV it wrote; a
CSV saved again by a spreadsheet loses the line and is then the user's: pawsight will not overwrite it. Its
`exclude` column says what `train --exclude` does with each picture: "yes" (as written) drops it, "no"
keeps it; deleting a row keeps the picture too.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..errors import PawsightError, shown
from ..storage import CSV_MARKER, HTML_MARKER, atomic_write_text
from .find import KINDS

LISTED = 10  # rows per kind on the terminal (the CSV and --json have them all)
SHOWN = 120  # thumbnails per kind in the gallery
COLUMNS = ["exclude", "path", "split", "class", "kinds", "suggested", "confidence", "label_quality",
           "outlier_score", "copy_of"]
KEEP = {"no", "n", "false", "0", "keep"}


def print_table(result: dict[str, Any], csv_path: Path | None, html_path: Path | None) -> None:
    classes = result["classes"]
    print(f"{shown(result['root'])}: {result['pictures']} readable pictures, {len(classes)} classes; "
          f"{len(result['flagged'])} flagged ({result['seconds']['total']:.1f} s)")
    for kind in KINDS:
        rows = [r for r in result["flagged"] if r["kinds"][0] == kind]
        total = result["counts"][kind]
        if not total:
            continue
        print(f"\n{kind}: {total}  ({shown(result['explained'][kind])})")
        for r in rows[:LISTED]:
            print(f"  {shown(r['path'])}  [{shown(r['class'])}]  {_detail(r)}")
        if len(rows) > LISTED:
            print(f"  ... and {len(rows) - LISTED} more")
        if total > len(rows):
            print(f"  ({total - len(rows)} more listed first under another kind)")
    for note in result["notes"]:
        print(f"note: {shown(note)}")
    if result["skipped"]:
        print(f"\nunreadable: {len(result['skipped'])} file(s), not checked:")
        for s in result["skipped"][:LISTED]:
            print(f"  {shown(s['path'])}: {shown(s['reason'])}")
        if len(result["skipped"]) > LISTED:
            print(f"  ... and {len(result['skipped']) - LISTED} more (--json lists them all)")
    if not result["flagged"]:
        print("no issues found")
    if csv_path is not None:
        print(f"\nflagged pictures: {shown(csv_path)} (edit the exclude column, then: "
              f"pawsight train {shown(result['root'])} --exclude {shown(csv_path)})")
    if html_path is not None:
        print(f"gallery: {shown(html_path)}")


def _detail(r: dict[str, Any]) -> str:
    """The numbers behind a row's first kind, in words."""
    kind, q = r["kinds"][0], r["quality"]
    text = {
        "label": f"suggested {r['suggested']} ({_pct(r['confidence'])}), label quality {r['label_quality']}",
        "outlier": f"outlier score {r['outlier_score']} > 1",
        "dark": f"brightest 1% at {q['brightest']:.2f}",
        "bright": f"darkest 1% at {q['darkest']:.2f}",
        "blurry": f"sharpest edges {q['sharpness']:.2f}",
        "low-information": f"{q['entropy_bits']:.1f} bits",
        "tiny": f"{q['width']}x{q['height']} px",
        "odd-aspect": f"{q['width']}x{q['height']} px",
    }.get(kind, f"copy of {r['copy_of']}" if r.get("copy_of") else "")
    others = [k for k in r["kinds"][1:]]
    return shown(text + (f"; also {', '.join(others)}" if others else ""))


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.0f}%"


def csv_text(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    buf.write(CSV_MARKER.decode() + f" data issues of {shown(result['root'])}; exclude: yes drops the "
              "picture from `pawsight train --exclude THIS.csv`, no keeps it\n")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in result["flagged"]:
        w.writerow(["yes", r["path"], r["split"], r["class"], ";".join(r["kinds"]), r["suggested"] or "",
                    "" if r["confidence"] is None else r["confidence"],
                    "" if r["label_quality"] is None else r["label_quality"], r["outlier_score"],
                    r.get("copy_of", "")])
    return buf.getvalue()


def write_csv(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, csv_text(result), what="the flagged-pictures CSV",
                      advice="free some space or choose another --csv")


def read_exclusions(path: str | Path, data: str | Path) -> set[Path]:
    """The pictures a `--exclude` file drops, resolved: a `data issues` CSV (rows whose exclude column is not
    "no"), any CSV with a `path` column, or a plain list of paths one per line. Relative paths are taken
    from the data folder (where they exist there), else from the current folder."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise PawsightError(f"--exclude {shown(path)}: cannot read it ({why})") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = list(csv.reader(lines))
    if not rows:
        return set()
    header = [h.strip().lower() for h in rows[0]]
    if "path" in header:
        at, ex = header.index("path"), header.index("exclude") if "exclude" in header else None
        chosen = [r[at] for r in rows[1:]
                  if len(r) > at and (ex is None or len(r) <= ex or r[ex].strip().lower() not in KEEP)]
    else:
        chosen = [line.strip() for line in lines]
    root = Path(data)
    out = set()
    for name in chosen:
        p = Path(name.strip())
        if not p.is_absolute():
            p = root / p if (root / p).exists() else Path.cwd() / p
        out.add(Path(p).resolve())
    return out


def without_excluded(ds: Any, path: str | Path, data: str | Path) -> tuple[Any, list[dict[str, str]], int]:
    """`ds` (a data.DataSet) without the pictures the `--exclude` file drops; plus what was left out (path,
    split, class) and how many listed pictures are not in the data folder at all."""
    from dataclasses import replace

    listed = read_exclusions(path, data)
    kept, gone = [], []
    for s in ds.samples:
        if Path(s.path).resolve() in listed:
            gone.append({"path": str(s.path), "split": s.split, "class": ds.classes[s.label]})
        else:
            kept.append(s)
    return replace(ds, samples=kept), gone, len(listed) - len(gone)


def gallery_html(result: dict[str, Any], decoded: Any) -> str:
    """One page: per kind a grid of thumbnails with file name, class, suggestion and score; every name
    escaped, every image inline (no request leaves the page)."""
    from ..images import ImageError, open_rgb
    from ..report.html import CSS, esc, img_tag, jpeg

    sections, nav = [], []
    rows = list(zip(result["flagged"], result["_rows"], strict=True))
    for kind in KINDS:
        mine = [(r, i) for r, i in rows if r["kinds"][0] == kind]
        if not mine:
            continue
        cards = []
        for r, i in mine[:SHOWN]:
            try:
                im = open_rgb(r["path"])
                im.thumbnail((200, 200))
                picture = jpeg(im)
            except (ImageError, OSError):
                picture = jpeg(decoded.images[i])
            name = Path(r["path"]).name
            also = f"<br>also: {esc(', '.join(r['kinds'][1:]))}" if len(r["kinds"]) > 1 else ""
            cards.append(f'<figure class="card">{img_tag(picture, name, "image/jpeg")}<figcaption>'
                         f'<b>{esc(name)}</b><br>{esc(r["split"])} / given: {esc(r["class"])}<br>'
                         f'{esc(_detail(r).split("; also")[0])}{also}<br>'
                         f'<span class="note">{esc(r["path"])}</span></figcaption></figure>')
        more = (f'<p class="note">{len(mine) - SHOWN} more in the CSV.</p>' if len(mine) > SHOWN else "")
        nav.append(f'<a href="#{kind}">{esc(kind)} ({len(mine)})</a>')
        sections.append(f'<h2 id="{kind}">{esc(kind)}: {len(mine)}</h2>'
                        f'<p>{esc(result["explained"][kind])}</p>'
                        f'<div class="gallery">{"".join(cards)}</div>{more}')
    body = "".join(sections) or "<p>No issues found.</p>"
    extra = (".card{width:220px}.card img{width:200px;height:200px;object-fit:contain;background:#eee}"
             ".card figcaption{word-break:normal}.card .note{word-break:break-all}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{HTML_MARKER.decode()}'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Issues in {esc(result['root'])}</title><style>{CSS}{extra}</style></head><body>"
            f"<h1>Issues in {esc(result['root'])}</h1>"
            f"<p>{result['pictures']} pictures of {len(result['classes'])} classes "
            f"({esc(', '.join(result['classes']))}); {len(result['flagged'])} flagged. Nothing was moved or "
            "deleted: edit the CSV's exclude column and train with <code>--exclude</code>.</p>"
            f"<nav>{''.join(nav)}</nav>{body}</body></html>")


def write_gallery(path: Path, result: dict[str, Any], decoded: Any) -> None:
    atomic_write_text(path, gallery_html(result, decoded), what="the issues gallery",
                      advice="free some space or choose another --html")
