"""`pawsight export RUN`: the whole deep model as one ONNX file that needs no PyTorch to run.

    result = export_onnx("runs/t")                  # writes runs/t/model.onnx; returns path + parity
    predictor = pawsight.load("runs/t/model.onnx")  # ONNX Runtime only

The graph is the run's `inference_module()` (models/deep.py): input "pixels", uint8 (n, h, w, 3) RGB already
resized and cropped by the run's Preprocessing (its size and mode are in the metadata); outputs
"probabilities" (n, k) and "unknown_score" (n,) (the neither score; zeros when the run has none).
Normalisation, flip TTA and the neither score are inside the graph; everything `inference.decide` and
`Preprocessing` need (classes, preprocessing, threshold) is in the model's metadata_props under "pawsight"
as JSON. Before the file is written, the graph is run by ONNX Runtime on sample pictures next to eager
PyTorch and the largest probability difference is reported; above 1e-4 the export is refused.

Classical runs are not exported: their features are computed with NumPy / scikit-image, and the run
directory itself already predicts and serves without PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import PawsightError, shown
from .inference import ONNX_METADATA_KEY, onnx_session, run_session
from .onnx_check import EXPORT_FORMAT, check_graph
from .storage import ONNX_MARKER, atomic_write_bytes, check_output_file, inside

PARITY_LIMIT = 1e-4  # largest |probability difference| ONNX Runtime vs PyTorch that export accepts
PARITY_PICTURES = 16
# pictures run at once by the parity check: EfficientNet-Lite0's widest activations at 224 px are ~5 MB a
# picture, so 16 at once took ~210 MB in ONNX Runtime and ~240 MB in PyTorch at the end of a training,
# the run's peak (3,000 pictures, before: 1,364 MB); 2 at a time keep it small at no cost (16 pictures)
PARITY_BATCH = 2


def export_onnx(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                samples: np.ndarray | None = None, model: Any = None) -> dict[str, Any]:
    """Write the run as one ONNX file (default RUN/model.onnx) after checking it against PyTorch.

    `model`: the run's model when the caller has it in memory (training). Written into the run as
    RUN/model.onnx, the graph is recorded in run.json, and loading the run uses it (no PyTorch needed).
    Returns {path, bytes, sha256, max_abs_diff (probabilities), max_abs_diff_score, n_pictures, pictures
    (where the sample pictures came from)}."""
    import onnx

    from .models.deep import onnx_bytes, run_module
    from .run import GRAPH_FILE, data_root, load_model, read_run_info, record_graph

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if info["approach"] == "classical":
        raise PawsightError("classical runs are not exported to ONNX (their features are computed with "
                            "scikit-image); predict and serve the run directory itself, which needs no "
                            "PyTorch")
    path = Path(out) if out is not None else run_dir / GRAPH_FILE
    _check_target(path, run_dir, data_root(info))
    model = model if model is not None else load_model(run_dir)
    module = model.inference_module()
    graph = onnx.load_model_from_string(onnx_bytes(module))
    neither = getattr(model, "neither_", None)
    meta = metadata(info, model, module, neither)
    size = model.preprocessing.size
    graph.doc_string = (f"pawsight {info['approach']} model; classes {', '.join(model.classes_)}; "
                        f"input uint8 (n, {size}, {size}, 3) RGB")
    graph.producer_name, graph.producer_version = "pawsight", __version__
    entry = graph.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(meta)
    blob = graph.SerializeToString()
    check_graph(blob, str(path))  # what every loader will check: refused now rather than at first use

    X, where = (samples, "given") if samples is not None else sample_pictures(info, model.preprocessing)
    torch_p, torch_s = run_module(module, X, batch_size=PARITY_BATCH)
    onnx_p, onnx_s = run_session(onnx_session(blob), X, batch_size=PARITY_BATCH)
    diff = float(np.abs(onnx_p - torch_p).max()) if len(X) else 0.0
    diff_score = float(np.abs(onnx_s - torch_s).max()) if len(X) and neither is not None else 0.0
    if diff > PARITY_LIMIT:
        raise PawsightError(f"the ONNX graph disagrees with PyTorch by {diff:.2e} in probability (limit "
                            f"{PARITY_LIMIT:g}); nothing written")
    atomic_write_bytes(path, blob)
    sha = hashlib.sha256(blob).hexdigest()
    if path.resolve() == (run_dir / GRAPH_FILE).resolve():
        record_graph(run_dir, sha)
    return {"path": str(path), "bytes": len(blob), "sha256": sha, "max_abs_diff": diff,
            "max_abs_diff_score": diff_score, "n_pictures": int(len(X)), "pictures": where}


def metadata(info: dict[str, Any], model: Any, module: Any, neither: Any) -> dict[str, Any]:
    """What a predictor needs besides the graph (see module docstring), plus the run's description."""
    prep = model.preprocessing
    mean, std = (model.spec_.mean, model.spec_.std) if hasattr(model, "spec_") else model.normalize_
    return {
        "format": EXPORT_FORMAT, "pawsight_version": __version__, "approach": info["approach"],
        "classes": list(model.classes_), "preprocessing": prep.to_dict(),
        "input": {"name": "pixels", "dtype": "uint8", "shape": ["n", prep.size, prep.size, 3],
                  "layout": "NHWC RGB, after the preprocessing above"},
        "outputs": ["probabilities", "unknown_score"],
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                          "inside_graph": True},
        "tta": bool(module.tta),
        "neither": neither.describe() if neither is not None else None,
        "params": info.get("params", {}), "seed": info.get("seed", 0),
        "val_fraction": info.get("val_fraction", 0.2), "metrics": info.get("metrics", {}),
    }


def sample_pictures(info: dict[str, Any], prep: Any, n: int = PARITY_PICTURES) -> tuple[np.ndarray, str]:
    """Up to `n` real pictures from the run's data folder (validation first), else synthetic ones."""
    from .data import scan
    from .images import ImageError

    root = Path(str(info.get("data", {}).get("root", "")))
    rows: list[np.ndarray] = []
    if root.is_dir():
        try:
            ds = scan(root, val_fraction=info.get("val_fraction", 0.2), seed=info.get("seed", 0))
            samples = ds.split("validation") or ds.samples
        except PawsightError:
            samples = []
        step = max(1, len(samples) // n)
        for s in samples[::step]:
            try:
                rows.append(prep.load(s.path))
            except ImageError:
                continue
            if len(rows) >= n:
                break
    if rows:
        return np.stack(rows), f"{len(rows)} pictures from {shown(root)}"
    rng = np.random.default_rng(0)
    size = int(prep.size)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    synthetic = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n // 2)]
    synthetic += [np.stack([np.add.outer(ramp * (i + 1) / n, ramp) % 256] * 3, -1).astype(np.uint8)
                  for i in range(n - n // 2)]
    return np.stack(synthetic), "synthetic pictures (the run's data folder is not available)"


def _check_target(path: Path, run_dir: Path, data: Any) -> None:
    """Refuse, before any work, to replace a file pawsight did not write (anything but an earlier pawsight
    export), another run's graph, or to write inside the run's data folder (storage.check_output_file)."""
    from .run import GRAPH_FILE, is_run_dir

    if path.suffix.lower() != ".onnx":
        raise PawsightError(f"{shown(path)}: the exported file's name must end in .onnx")
    check_output_file(path, ONNX_MARKER, data=data)
    if is_run_dir(path.parent) and not inside(path.parent, run_dir):
        raise PawsightError(f"--out {shown(path)} is inside another run directory ({shown(path.parent)}); "
                            f"its {GRAPH_FILE} belongs to that run: choose a place outside it")
    if not path.parent.is_dir():
        raise PawsightError(f"folder {shown(path.parent)} does not exist")
