"""`pawsight data inspect DATA`: what is in a data folder, before any training.

Classes, counts per split and class, picture sizes and formats, unreadable files with their reasons,
duplicate pictures, conflicting labels and train/validation leaks, class imbalance; plus a contact sheet
(a PNG with a row of sample pictures per class) to look at. Inspecting decodes every picture into the
cache at 224 px centre crops, the default transfer model's input, so that training starts at once.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .cache import Decoded, ImageCache
from .data import DataSet, scan
from .dedup import NEAR_THRESHOLD, report_from_decoded
from .errors import PawsightError, shown
from .images import Preprocessing
from .storage import PNG_MARKER, PNG_SOFTWARE, atomic_write_bytes, check_output_file

IMBALANCE_RATIO = 1.5  # largest / smallest class above this gets a warning
FEW_PICTURES = 20  # a class with fewer training pictures than this gets a warning


def inspect_data(data: str | Path, val_fraction: float = 0.2, seed: int = 0, size: int = 224,
                 cache: ImageCache | None = None, threshold: int = NEAR_THRESHOLD) -> dict[str, Any]:
    """Everything `data inspect` reports, as a JSON-ready dict (see module docstring)."""
    t0 = time.perf_counter()
    try:
        prep = Preprocessing(size=size)
    except ValueError as exc:
        raise PawsightError(f"--size {size}: {exc}") from None
    ds = scan(data, val_fraction=val_fraction, seed=seed)
    decoded = (cache or ImageCache()).load_samples(ds.samples, prep, desc="decoding")
    seconds = time.perf_counter() - t0
    report = report_from_decoded(ds, ds.samples, decoded, threshold)
    skipped = [s.to_dict() for s in ds.skipped + decoded.skipped]
    readable = readable_counts(ds, decoded)
    result: dict[str, Any] = {
        "root": str(Path(data)),
        "layout": ds.layout,
        "classes": ds.classes,
        "counts": readable,
        "files": len(ds.samples),
        "images": len(decoded.paths),
        "skipped": skipped,
        "ignored": [s.to_dict() for s in ds.ignored],
        "duplicates": report.duplicates,
        "leaks": report.leaks,
        "conflicts": report.conflicts,
        "image_stats": image_stats(decoded),
        "decode": {"size": size, "decoded": decoded.decoded, "from_cache": len(ds.samples) - decoded.decoded,
                   "seconds": round(seconds, 3)},
    }
    if ds.layout == "class-folders":
        result["split_note"] = (f"no train/validation folders: {val_fraction:.0%} of each class is held out "
                                f"for validation (seed {seed})")
    result["warnings"] = warnings_for(result)
    result["_decoded"] = decoded  # for the contact sheet; removed before printing
    return result


def readable_counts(ds: DataSet, decoded: Decoded) -> dict[str, dict[str, int]]:
    """split -> class -> number of *readable* pictures (skipped files are not counted)."""
    counts = {split: dict.fromkeys(ds.classes, 0) for split in ds.splits}
    for sample in decoded.kept_of(ds.samples):
        counts[sample.split][ds.classes[sample.label]] += 1
    return counts


def image_stats(decoded: Decoded) -> dict[str, Any]:
    if not decoded.meta:
        return {}
    w = np.array([m.get("width", 0) for m in decoded.meta])
    h = np.array([m.get("height", 0) for m in decoded.meta])

    def summary(a: np.ndarray) -> dict[str, int]:
        return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())}

    return {"width": summary(w), "height": summary(h),
            "formats": dict(Counter(str(m.get("format")) for m in decoded.meta).most_common()),
            "modes": dict(Counter(str(m.get("mode")) for m in decoded.meta).most_common())}


def warnings_for(r: dict[str, Any]) -> list[str]:
    out = []
    train = r["counts"].get("train", {})
    if train and min(train.values()) > 0:
        big, small = max(train, key=train.get), min(train, key=train.get)  # type: ignore[arg-type]
        if train[big] / train[small] > IMBALANCE_RATIO:
            out.append(f"class imbalance: {big!r} has {train[big]} training pictures, {small!r} only "
                       f"{train[small]} ({train[big] / train[small]:.1f}x); accuracy alone will flatter the "
                       "model, look at per-class recall")
    for split, per_class in r["counts"].items():
        missing = [c for c, n in per_class.items() if n == 0]
        if missing:
            out.append(f"no readable {split} pictures for: {', '.join(missing)}")
    few = [c for c, n in train.items() if 0 < n < FEW_PICTURES]
    if few:
        out.append(f"fewer than {FEW_PICTURES} training pictures for: {', '.join(few)}; "
                   "transfer learning copes best with so few")
    if r["skipped"]:
        out.append(f"{len(r['skipped'])} file(s) skipped as unreadable (listed above)")
    if r["ignored"]:
        out.append(f"{len(r['ignored'])} folder(s) or file(s) not used (listed above with the reason)")
    if r["leaks"]:
        out.append(f"{len(r['leaks'])} picture(s) appear in more than one split: validation accuracy is "
                   "inflated; train with --drop-duplicates")
    if r["conflicts"]:
        out.append(f"{len(r['conflicts'])} picture(s) appear under different classes: some labels are wrong")
    return out


def contact_sheet(classes: list[str], decoded: Decoded, per_class: int = 8, thumb: int = 96) -> Image.Image:
    """A grid: one row per class (its name and count on the left), `per_class` pictures spread over it."""
    label_w, pad = 150, 4
    width = label_w + per_class * (thumb + pad) + pad
    sheet = Image.new("RGB", (width, len(classes) * (thumb + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    labels = decoded.labels
    for row, name in enumerate(classes):
        idx = np.flatnonzero(labels == row)
        y = pad + row * (thumb + pad)
        draw.text((pad, y + thumb // 2 - 12), shown(name)[:22], fill="black")
        draw.text((pad, y + thumb // 2 + 2), f"{len(idx)} pictures", fill="gray")
        if len(idx) == 0:
            continue
        picks = idx[np.linspace(0, len(idx) - 1, min(per_class, len(idx))).round().astype(int)]
        for col, i in enumerate(picks):
            im = Image.fromarray(decoded.images[i]).resize((thumb, thumb), Image.BILINEAR)
            sheet.paste(im, (label_w + pad + col * (thumb + pad), y))
    return sheet


def write_sheet(path: Path, image: Image.Image) -> None:
    """Save the sheet as a PNG carrying pawsight's mark (a later run may replace it; nothing else)."""
    from PIL.PngImagePlugin import PngInfo

    marked = PngInfo()
    marked.add_text("Software", PNG_SOFTWARE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=marked)
    atomic_write_bytes(path, buf.getvalue(), what="the contact sheet",
                       advice="free some space or choose another --sheet")


def print_report(r: dict[str, Any], sheet: Path | None) -> None:
    classes = r["classes"]
    print(f"{shown(r['root'])}: {len(classes)} classes, {r['images']} readable pictures "
          f"({r['layout']}; decoded {r['decode']['decoded']}, {r['decode']['from_cache']} from cache, "
          f"{r['decode']['seconds']:.1f} s)")
    if r.get("split_note"):
        print(f"  {shown(r['split_note'])}")
    splits = list(r["counts"])
    width = max(len(shown(c)) for c in [*classes, "class", "total"])
    print(f"  {'class':<{width}}  " + "  ".join(f"{s:>10}" for s in splits))
    for c in classes:
        print(f"  {shown(c):<{width}}  " + "  ".join(f"{r['counts'][s][c]:>10}" for s in splits))
    print(f"  {'total':<{width}}  " + "  ".join(f"{sum(r['counts'][s].values()):>10}" for s in splits))
    st = r["image_stats"]
    if st:
        print(f"  sizes: width {st['width']['min']}-{st['width']['max']} (median {st['width']['median']}), "
              f"height {st['height']['min']}-{st['height']['max']} (median {st['height']['median']})")
        print("  formats: " + ", ".join(f"{shown(k)} {v}" for k, v in st["formats"].items())
              + "; colour modes: " + ", ".join(f"{shown(k)} {v}" for k, v in st["modes"].items()))
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} file(s):")
        for s in r["skipped"]:
            print(f"  {shown(s['path'])}: {shown(s['reason'])}")
    if r["ignored"]:
        print(f"not used: {len(r['ignored'])} folder(s) or file(s):")
        for s in r["ignored"]:
            print(f"  {shown(s['path'])}: {shown(s['reason'])}")
    for title, groups in (("duplicate groups", r["duplicates"]), ("leaks across splits", r["leaks"])):
        print(f"{title}: {len(groups)}")
        for g in groups[:20]:
            files = ", ".join(f"{shown(f['path'])} [{f['split']}/{shown(f['class'])}]" for f in g["files"])
            print(f"  {g['kind']}{' (conflicting labels)' if g['conflicting_labels'] else ''}: {files}")
        if len(groups) > 20:
            print(f"  ... and {len(groups) - 20} more (--json lists them all)")
    for w in r["warnings"]:
        print(f"warning: {shown(w)}")
    if sheet is not None:
        print(f"contact sheet: {shown(sheet)}")


def inspect_command(args: argparse.Namespace) -> int:
    sheet: Path | None = args.sheet
    refused = None
    if sheet is not None:  # the user's: refused before any work (never inside DATA, never a foreign file)
        check_output_file(sheet, PNG_MARKER, data=args.data, option="--sheet")
    else:
        sheet = Path(f"{Path(args.data).resolve().name or 'data'}-contact-sheet.png")
        try:
            check_output_file(sheet, PNG_MARKER, data=args.data, option="the contact sheet")
        except PawsightError as exc:  # the default name only: say why and inspect anyway
            refused, sheet = exc, None
    result = inspect_data(args.data, val_fraction=args.val_fraction, seed=args.seed, size=args.size)
    decoded: Decoded = result.pop("_decoded")
    if refused is not None:
        print(f"warning: no contact sheet: {shown(refused)} (give one with --sheet FILE)", file=sys.stderr)
    try:
        if sheet is None:
            raise PawsightError("skipped")
        check_output_file(sheet, PNG_MARKER, data=args.data, option="--sheet")  # may have appeared meanwhile
        write_sheet(sheet, contact_sheet(result["classes"], decoded))
        result["contact_sheet"] = str(sheet)
    except PawsightError as exc:  # a full disk or a folder in the way: the report is still worth printing
        if sheet is not None:
            print(f"warning: no contact sheet: {shown(exc)}", file=sys.stderr)
        sheet = None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result, sheet)
    return 0
