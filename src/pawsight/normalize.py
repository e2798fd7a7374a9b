"""The one owner of pixel normalisation and flip test-time augmentation for torch networks.

Training (`training.py`), feature extraction (`backbones.FeatureExtractor`) and inference / export
(`inference.ImageModel`) all turn uint8 pictures into network input here, so a change of formula reaches every
path at once (no train/serve skew):

    x = normalize(pixels_to_float(images_nhwc_uint8), mean, std)    # float NCHW, channels_last
    y = flip_average(net, x)                                        # mean of net(x) and net(mirrored x)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn


def pixels_to_float(images: Tensor | np.ndarray, device: torch.device | str | None = None) -> Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [0, 1]; the memory stays NHWC, i.e. channels_last."""
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # e.g. a read-only memory map
    else:
        x = images
    if device is not None:
        x = x.to(device)
    return x.permute(0, 3, 1, 2).float().div(255.0)


def normalize(x: Tensor, mean: Tensor | Sequence[float], std: Tensor | Sequence[float],
              memory_format: torch.memory_format = torch.channels_last) -> Tensor:
    """(x - mean) / std per channel for float [0, 1] NCHW pictures (channels_last: what CPUs run fastest)."""
    return ((x - _channel(mean, x)) / _channel(std, x)).contiguous(memory_format=memory_format)


def flip_average(fn: Callable[[Tensor], Tensor], x: Tensor, tta: bool = True) -> Tensor:
    """`fn(x)`, or with `tta` the mean of `fn(x)` and `fn` of the left-right mirrored NCHW batch."""
    out = fn(x)
    return (out + fn(x.flip(3))) / 2 if tta else out


class Normalize(nn.Module):
    """uint8 NHWC pictures in, normalised float NCHW out: the same formula inside a graph (ONNX too)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return normalize(pixels_to_float(images), self.mean, self.std)


def _channel(v: Tensor | Sequence[float], like: Tensor) -> Tensor:
    if isinstance(v, Tensor):
        return v.to(device=like.device, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.tensor([float(a) for a in v], dtype=torch.float32, device=like.device).view(1, -1, 1, 1)
