"""Likely wrong labels, and pictures of no class at all, from frozen pretrained features.

Wrong labels: confident learning (cleanlab's `find_label_issues`, the library, not a re-derivation) on
out-of-sample class probabilities: each picture is predicted by the logistic-regression head of frozen
transfer learning fitted on the other folds (`models.transfer.cross_validated_head`, the same numbers frozen
training uses to choose its head). The suggested label is the class the head gives the most probability;
the confidence is that probability.

Outliers: the neither score of the model (models/neither.py) computed within the collection: the cosine
distance of each picture's features to its OUTLIER_K nearest other pictures (leave one out; beyond
neither.MAX_REFERENCE pictures, to the k-means reference the neither answer keeps, so the cost stays linear).
The threshold cannot be the neither answer's quantile of the same distances, because here the pictures of
other things are among them; it is a robust limit instead, the median plus OUTLIER_Z robust standard
deviations (1.4826 x the median absolute deviation), which a few pictures of other things barely move.
Chosen on cats_and_dogs train with 40 ImageNet objects planted (2%), robust z of the least outlying object /
of the most outlying clean photo: leave-one-out k=3 3.16 / 3.33 (k=5 3.01 / 3.29, k=10 2.73 / 3.03; 5-fold
distances as the neither answer calibrates, k=5: 2.87 / 3.15). At z = 3: every object, 0.2% of clean photos.
On 120 photos (the tiny set) with 3 objects planted the objects score z 3.0-4.2 and clean photos at most 1.7:
a small collection spreads its distances more, so its weakest outliers sit near the limit (ranked first
still: the table and gallery sort by score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OUTLIER_Z = 3.0
OUTLIER_K = 3


@dataclass
class LabelCheck:
    """Per picture: cleanlab's verdict, its label quality (0-1, low = likely wrong), the suggested class."""

    wrong: np.ndarray  # bool
    quality: np.ndarray
    suggested: np.ndarray  # class index
    confidence: np.ndarray  # probability of the suggested class
    folds: int


def check_labels(features: np.ndarray, labels: np.ndarray, n_classes: int,
                 seed: int = 0) -> LabelCheck | None:
    """Confident learning on out-of-sample probabilities; None when a class has fewer than two pictures
    (nothing to cross-validate) or only one class has pictures."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from ..models.transfer import cross_validated_head

    y = np.asarray(labels, np.int64)
    present = np.unique(y)
    if len(present) < 2:
        return None
    # cleanlab wants every class of the probability columns to have pictures: work on the present ones
    remap = np.full(n_classes, -1)
    remap[present] = np.arange(len(present))
    Z = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)
    chosen = cross_validated_head(Z, remap[y], len(present), seed=seed)
    if chosen is None:
        return None
    _, proba = chosen
    yy = remap[y]
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork after PyTorch's and ONNX
    # Runtime's threads have started can deadlock (it hung `data issues` on 25 pictures in a CI run); the
    # work is a few array passes, the same result either way.
    wrong = find_label_issues(labels=yy, pred_probs=proba, n_jobs=1)
    quality = get_label_quality_scores(yy, proba)
    best = proba.argmax(axis=1)
    counts = np.bincount(yy)
    return LabelCheck(np.asarray(wrong, bool), quality, present[best], proba[np.arange(len(yy)), best],
                      int(min(5, counts.min())))


def outlier_scores(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """(score per picture, threshold): the distance of each picture to its nearest other pictures, divided by
    the robust limit, so 1.0 is the threshold as in the neither answer."""
    from ..models.neither import MAX_REFERENCE, knn_distance, reference_set, unit

    Z = unit(features).astype(np.float32)
    if len(Z) <= OUTLIER_K:
        return np.zeros(len(Z)), 1.0
    if len(Z) > MAX_REFERENCE:
        d = knn_distance(Z, reference_set(Z, MAX_REFERENCE, seed), OUTLIER_K)
    else:  # leave one out: the k+1 nearest include the picture itself (similarity 1), dropped
        sim = Z @ Z.T
        np.fill_diagonal(sim, -np.inf)
        d = 1 - np.partition(sim, -OUTLIER_K, axis=1)[:, -OUTLIER_K:].mean(1)
    if not d.any():
        return np.zeros(len(d)), 1.0
    median = float(np.median(d))
    spread = 1.4826 * float(np.median(np.abs(d - median)))
    limit = max(median + OUTLIER_Z * spread, 1e-9)
    return d / limit, 1.0
