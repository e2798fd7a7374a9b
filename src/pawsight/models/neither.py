"""The "neither" answer: a score of how unlike every training picture a picture is, fitted and calibrated at
training time, so a cat/dog model shown a car can answer "unknown".

Score (chosen by measurement, `./run.sh bench neither`): cosine k-nearest-neighbour distance in the network's
feature space (the pooled features the head sees), to the training pictures:

    score(x) = (1 - mean of the k largest cosine similarities of f(x) to the training features) / scale

`scale` is the calibrated threshold of the raw distance, so the default threshold is 1.0 for every run and a
score of 2 means "twice as far as the calibrated limit".

Calibration uses the training pictures only (never validation, never pictures of other things): each picture
is scored against the OTHER folds of a k-fold split of the training set (cross-validated distances), which
measures how far a new picture of the same classes falls from the training pictures. The threshold is the
`QUANTILE` of those distances times `MARGIN`: new collections (other cameras, other JPEG encoders, other
breeds) sit farther from the training pictures than held-out pictures of the same collection do, and the
margin buys that room.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..storage import RowFile, all_rows, row_batches

K = 5             # neighbours averaged
QUANTILE = 0.99   # of the cross-validated training distances
MARGIN = 1.2      # room for other collections of the same classes
FOLDS = 5
# Reference vectors kept in the model (k-means centroids of the training features beyond this): the model
# file stays bounded whatever the training set (Lite0: ~13 MB of network + 2,500 x 1280 float32 = ~26 MB),
# and scoring costs the same at 3,000 or 300,000 training pictures. Calibration (the cross-validated
# distances) builds each fold's reference the same way, so the threshold is measured for the kind of
# reference the model keeps. Measured effect: docs/neither.md ("A bounded reference").
MAX_REFERENCE = 2500
# Beyond MAX_REFERENCE the training features are never held at once (issue 16: memory flat in the collection):
# k-means and the cross-validated distances read them STREAM_ROWS at a time from wherever they are (an array,
# or the RowFile training writes), each k-means step on a random batch of that size (MiniBatchKMeans's own
# batch size here), KMEANS_EPOCHS passes over the rows. Measured on the 20,000 training features of the
# 25,000-picture synthetic collection, 2,500 centroids (mean cosine distance of a row to its centroid; the
# 0.99 quantile of held-out rows' 5-NN distance, which sets the threshold): MiniBatchKMeans.fit as before
# 0.0680, 0.392, 14.9 s; streamed 1 epoch 0.0685, 0.381, 2.9 s; 3 epochs 0.0649, 0.381, 8.8 s; 5 epochs
# 0.0644, 0.382, 14.4 s (load average 3-4).
STREAM_ROWS = 4096
KMEANS_EPOCHS = 3


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def unit32(x: np.ndarray) -> np.ndarray:
    """`unit` in float32 throughout, for the batches of the streamed path: no float64 copy of a batch."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def knn_distance(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """1 - mean of the k largest cosine similarities of each (unit) query row to the (unit) bank rows."""
    k = max(1, min(int(k), len(bank)))
    out = np.empty(len(queries))
    for i in range(0, len(queries), 512):
        sim = queries[i:i + 512] @ bank.T
        out[i:i + 512] = 1 - np.partition(sim, -k, axis=1)[:, -k:].mean(1)
    return out


def reference_set(Z: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` unit vectors standing for the unit rows of `Z`: Z itself when it is small enough,
    else the (re-normalised) centroids of `limit` k-means clusters. Why centroids rather than a sample: a
    sparse sample leaves gaps, so held-out training pictures fall far from it, the calibrated threshold
    widens and fewer pictures of other things are caught; centroids cover the whole cloud."""
    if len(Z) <= limit:
        return Z
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=limit, init="random", n_init=1, batch_size=4096, max_iter=20,
                         random_state=seed, max_no_improvement=3)
    return unit(km.fit(Z).cluster_centers_).astype(Z.dtype)


def cross_validated_distances(Z: np.ndarray, y: np.ndarray, k: int, folds: int = FOLDS,
                              seed: int = 0, limit: int | None = None) -> np.ndarray:
    """The distance of each training picture to the training pictures of the other folds (to a reference
    sampled from them at the final reference's density when the training set exceeds `limit`)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    folds = int(min(folds, counts[counts > 0].min()))
    out = np.zeros(len(Z))
    if folds < 2:
        return out
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(Z, y):
        bank = Z[fit]
        if limit is not None and len(Z) > limit:  # the fold's reference, built like the final one
            bank = reference_set(bank, max(1, round(limit * len(fit) / len(Z))), seed)
        out[held] = knn_distance(Z[held], bank, k)
    return out


class NeitherScore(nn.Module):
    """features (n, d) -> neither score (n,); 1.0 = the calibrated threshold. Lives inside ImageModel."""

    def __init__(self, bank: np.ndarray, k: int, scale: float, threshold: float = 1.0,
                 stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_buffer("bank", torch.from_numpy(np.ascontiguousarray(bank, np.float32)))
        self.k = int(k)
        self.scale = float(scale)
        self.threshold = float(threshold)
        self.stats = dict(stats or {})

    def forward(self, features: Tensor) -> Tensor:
        z = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = z @ self.bank.T
        top = torch.topk(sim, min(self.k, self.bank.shape[0]), dim=1).values.mean(1)
        return (1 - top) / self.scale

    def describe(self) -> dict[str, Any]:
        """What model.json and the ONNX metadata say about it (the tensors go to safetensors)."""
        return {"score": "cosine-knn", "k": self.k, "scale": self.scale, "threshold": self.threshold,
                "bank": list(self.bank.shape), **self.stats}


def fit_neither(features: np.ndarray | RowFile, y: np.ndarray, seed: int = 0, k: int = K,
                quantile: float = QUANTILE, margin: float = MARGIN, limit: int | None = None) -> NeitherScore:
    """Fit the score on training features (one row per picture: an array or a RowFile) and calibrate its
    threshold by cross-validation on them (see the module docstring); at most `limit` (default
    MAX_REFERENCE) reference vectors are kept.
    Up to `limit` pictures this is exactly the unbounded score (the rows in memory); beyond it, float32
    arithmetic, k-means references, and the rows read a batch at a time (`streamed_distances`,
    `streamed_reference`): memory does not grow with the training set."""
    limit = int(MAX_REFERENCE if limit is None else limit)
    bounded = len(features) > limit
    y = np.asarray(y, np.int64)
    if bounded:
        cv = streamed_distances(features, y, k, seed=seed, limit=limit)
        Z = streamed_reference(features, np.arange(len(features)), limit, seed)
    else:
        Z = unit(all_rows(features))
        cv = cross_validated_distances(Z, y, k, seed=seed)
    raw = float(np.quantile(cv, quantile)) * margin if cv.any() else 1.0
    raw = max(raw, 1e-6)
    stats = {"calibration": f"{quantile:.3g} quantile of {FOLDS}-fold cross-validated training distances "
                            f"x {margin:g}",
             "cv_distance_quantiles": {str(q): round(float(np.quantile(cv, q)), 6) for q in (0.5, 0.9, 0.99)},
             "reference": (f"{len(Z)} k-means centroids of {len(features)} training pictures" if bounded
                           else f"all {len(features)} training pictures")}
    return NeitherScore(Z, k, raw, 1.0, stats)


def streamed_distances(features: np.ndarray | RowFile, y: np.ndarray, k: int, folds: int = FOLDS,
                       seed: int = 0, limit: int = MAX_REFERENCE) -> np.ndarray:
    """cross_validated_distances for more than `limit` pictures, the rows read a batch at a time: each fold's
    reference is `streamed_reference` of the other folds at the final reference's density."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    folds = int(min(folds, counts[counts > 0].min()))
    out = np.zeros(len(y))
    if folds < 2:
        return out
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y):
        bank = streamed_reference(features, fit, max(1, round(limit * len(fit) / len(y))), seed)
        for pos, F in row_batches(features, STREAM_ROWS, held):
            out[pos] = knn_distance(unit32(F), bank, k)
    return out


def streamed_reference(features: np.ndarray | RowFile, idx: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """reference_set of the unit rows `idx` of `features` without holding them: MiniBatchKMeans (seeded,
    started from `limit` random rows, as its init="random") fed random batches of STREAM_ROWS rows,
    KMEANS_EPOCHS passes; memory is a batch and the centroids."""
    from sklearn.cluster import MiniBatchKMeans

    def rows(positions: np.ndarray) -> np.ndarray:
        positions = np.sort(positions)
        F = features.take(positions) if isinstance(features, RowFile) else np.asarray(features)[positions]
        return unit32(F)

    if len(idx) <= limit:
        return rows(idx)
    rng = np.random.default_rng(seed)
    batch = max(STREAM_ROWS, limit)  # the first batch sets up `limit` centroids: it needs as many rows
    km = MiniBatchKMeans(n_clusters=limit, init=rows(rng.choice(idx, limit, replace=False)), n_init=1,
                         batch_size=batch, random_state=seed)
    for _ in range(KMEANS_EPOCHS):
        order = rng.permutation(idx)
        for part in np.array_split(order, max(1, len(order) // batch)):
            km.partial_fit(rows(part))
    return unit(km.cluster_centers_).astype(np.float32)


def to_tensors(neither: NeitherScore) -> dict[str, Tensor]:
    return {"neither.bank": neither.bank.detach().cpu().contiguous()}


def from_saved(description: dict[str, Any] | None, tensors: dict[str, Tensor]) -> NeitherScore | None:
    """The NeitherScore saved by `to_tensors` + `describe()`, or None for runs trained without one."""
    if not description or "neither.bank" not in tensors:
        return None
    stats = {k: v for k, v in description.items() if k not in ("score", "k", "scale", "threshold", "bank")}
    return NeitherScore(tensors["neither.bank"].float().numpy(), int(description["k"]),
                        float(description["scale"]), float(description.get("threshold", 1.0)), stats)
