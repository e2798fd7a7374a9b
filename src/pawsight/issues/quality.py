"""Picture quality: too dark, too bright, blurry, low information, tiny, odd aspect ratio.

Each measure is computed on the picture as pawsight decodes it for the default transfer model (a 224 px
centre crop, from the decode cache, so an inspected or trained collection costs no extra decoding) plus the
file's own width and height. Every threshold below was chosen on the cats_and_dogs TRAIN pictures (300
sampled photos) against degraded copies of the same photos, as the midpoint between the worst clean photo
and the least degraded copy (log scale where the measure spans decades); `./run.sh bench issues` then checks
them on planted copies of cats_and_dogs and of the 4-class weather set, which played no part in choosing them.

| measure (224 px, luma 0-1)       | degraded copy           | clean   | degraded | threshold          |
|----------------------------------|-------------------------|---------|----------|--------------------|
| brightest 1% (`p99`)             | dark: x 0.1             | >= 0.57 | <= 0.10  | dark below 0.25    |
| darkest 1% (`p01`)               | blown out: 1-(1-x)x0.08 | <= 0.41 | >= 0.92  | bright above 0.70  |
| log10 Laplacian variance         | Gaussian blur, radius   | >= 1.55 | <= 0.27  | blurry below 0.90  |
| (`sharpness`)                    | 2.5% of the short side  |         |          | ...                |
| ... over the luma variance, at   | the same                | >= -1.49| <= -2.08 | ... and below -1.80|
| 112 px (`detail`, log10)         |                         |         |          |                    |

Blur needs both: a smooth subject (a cloudless sky, a white wall) has little Laplacian energy but keeps it in
proportion to its contrast, a blurred photo loses it at every contrast. `low information` (a picture of almost
one grey: a lens cap, a test card, an empty frame) is a luma histogram entropy below 3 bits where photos have
6-7.5; it is not reported for pictures already called dark or bright, which have it too. `tiny` and
`odd aspect` look at the file's size: below 64 px on the long side a picture is upscaled 3.5x or more to
224 px and holds nothing a model can use (its blur is then that, not a blurry photo, so it is called tiny
only); an aspect ratio above 3:1 loses most of the picture to the centre crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DARK_P99 = 0.25
BRIGHT_P01 = 0.70
BLURRY_SHARPNESS = 0.90
BLURRY_DETAIL = -1.80
LOW_INFORMATION_BITS = 3.0
TINY_SIDE = 64
ODD_ASPECT = 3.0

KINDS = ("dark", "bright", "blurry", "low-information", "tiny", "odd-aspect")
THRESHOLDS = {"dark": f"brightest 1% of the picture below {DARK_P99:g} of full brightness",
              "bright": f"darkest 1% of the picture above {BRIGHT_P01:g} of full brightness",
              "blurry": f"log10 Laplacian variance below {BLURRY_SHARPNESS:g} and below {BLURRY_DETAIL:g} "
                        "relative to the picture's contrast",
              "low-information": f"brightness histogram entropy below {LOW_INFORMATION_BITS:g} bits",
              "tiny": f"longest side below {TINY_SIDE} px",
              "odd-aspect": f"longer side more than {ODD_ASPECT:g} times the shorter"}


@dataclass
class Quality:
    """Measures of one batch of pictures (one row per picture)."""

    p01: np.ndarray
    p99: np.ndarray
    sharpness: np.ndarray
    detail: np.ndarray
    entropy: np.ndarray


def _laplacian_variance(g: np.ndarray) -> np.ndarray:
    """Per picture variance of the 4-neighbour Laplacian of (n, h, w) luma."""
    lap = g[:, 1:-1, 2:] + g[:, 1:-1, :-2] + g[:, 2:, 1:-1] + g[:, :-2, 1:-1] - 4 * g[:, 1:-1, 1:-1]
    return lap.reshape(len(g), -1).var(axis=1)


def measure(pixels: np.ndarray) -> Quality:
    """Quality measures of (n, s, s, 3) uint8 pictures (s even), vectorised over the batch."""
    x = np.asarray(pixels, np.float32)
    g = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114  # luma, 0-255
    n, h, w = g.shape
    flat = g.reshape(n, -1)
    p01, p99 = np.percentile(flat, [1, 99], axis=1) / 255.0
    v1 = _laplacian_variance(g)
    half = g[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2).mean((2, 4))
    v2 = _laplacian_variance(half)
    sharpness = np.log10(v1 + 1e-3)
    detail = np.log10(v2 / (flat.var(axis=1) + 1.0) + 1e-6)
    hist = np.stack([np.bincount(row, minlength=256) for row in np.clip(flat, 0, 255).astype(np.int64)])
    p = hist / hist.sum(axis=1, keepdims=True)
    entropy = -(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0)).sum(axis=1)
    return Quality(p01, p99, sharpness, detail, entropy)


def problems(q: Quality, i: int, width: int, height: int) -> list[str]:
    """The quality kinds of picture `i` of a measured batch whose file is `width` x `height`."""
    out = []
    if q.p99[i] < DARK_P99:
        out.append("dark")
    if q.p01[i] > BRIGHT_P01:
        out.append("bright")
    tiny = bool(width and height and max(width, height) < TINY_SIDE)
    if q.sharpness[i] < BLURRY_SHARPNESS and q.detail[i] < BLURRY_DETAIL and not tiny:
        out.append("blurry")
    if q.entropy[i] < LOW_INFORMATION_BITS and not {"dark", "bright"} & set(out):
        out.append("low-information")
    if width and height:
        if tiny:
            out.append("tiny")
        if max(width, height) / max(1, min(width, height)) > ODD_ASPECT:
            out.append("odd-aspect")
    return out


def scores(q: Quality, i: int) -> dict[str, Any]:
    """The measures of picture `i`, rounded, as the JSON and CSV show them."""
    return {"brightest": round(float(q.p99[i]), 3), "darkest": round(float(q.p01[i]), 3),
            "sharpness": round(float(q.sharpness[i]), 3), "detail": round(float(q.detail[i]), 3),
            "entropy_bits": round(float(q.entropy[i]), 2)}
