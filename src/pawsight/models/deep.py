"""The whole deep model as one torch module: uint8 NHWC pictures in, class probabilities (and the "neither"
score) out. Normalisation, the network, the head, flip TTA and the out-of-distribution score all live inside,
so eager PyTorch, the in-memory ONNX Runtime session of `pawsight.inference` and an exported `.onnx` file run
the very same graph.

    module = model.inference_module()          # TransferClassifier or ScratchCNN
    proba, score = module(torch.from_numpy(uint8_nhwc))
    blob = onnx_bytes(module)                   # inputs "pixels"; outputs "probabilities", "unknown_score"
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..normalize import Normalize, flip_average

INPUT = "pixels"
OUTPUTS = ("probabilities", "unknown_score")


class ImageModel(nn.Module):
    """uint8 (n, H, W, 3) -> (probabilities (n, k), unknown score (n,)).

    `embed` maps normalised pictures to feature vectors, `head` maps those to logits. With `tta` each picture
    is also seen mirrored: probabilities are the mean of both views' softmax, the features (for the neither
    score) the mean of both views' features. `neither` maps features to a score that grows with how unlike
    the training pictures a picture is (zeros when the run has none)."""

    def __init__(self, embed: nn.Module, head: nn.Linear, mean: Sequence[float], std: Sequence[float],
                 tta: bool, neither: nn.Module | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.embed = embed
        self.head = head
        self.tta = bool(tta)
        self.neither = neither
        self.n_classes = int(head.out_features)

    def views(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """(probabilities, features), each averaged over the TTA views."""
        x = self.normalize(pixels)
        k = self.n_classes

        def view(v: Tensor) -> Tensor:
            f = self.embed(v)
            return torch.cat([torch.softmax(self.head(f), dim=1), f], dim=1)

        both = flip_average(view, x, self.tta)
        return both[:, :k], both[:, k:]

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        proba, feats = self.views(pixels)
        score = self.neither(feats) if self.neither is not None else torch.zeros_like(proba[:, 0])
        return proba, score


@torch.inference_mode()
def embed_pictures(module: ImageModel, X: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The features the neither score sees (TTA views averaged) of uint8 pictures, eager, in batches."""
    module.eval()
    parts = [module.views(torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size], np.uint8)))[1].numpy()
             for i in range(0, len(X), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


class Embedding(nn.Module):
    """A network's `embed` method (features before its head) as a module of its own."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.embed(x)


def linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    """An nn.Linear holding a head learned elsewhere (e.g. scikit-learn's logistic regression)."""
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, np.float32)))
        head.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, np.float32)))
    return head


@torch.inference_mode()
def run_module(module: nn.Module, X: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Eager (probabilities, scores) of uint8 pictures, in batches."""
    module.eval()
    probas, scores = [], []
    for i in range(0, len(X), batch_size):
        p, s = module(torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size], dtype=np.uint8)))
        probas.append(p.float().numpy())
        scores.append(s.float().numpy())
    if not probas:
        return np.zeros((0, module.n_classes), np.float32), np.zeros(0, np.float32)
    return np.concatenate(probas), np.concatenate(scores)


def onnx_bytes(module: nn.Module, size: int = 64) -> bytes:
    """The module as an ONNX graph (opset 17): input "pixels" uint8 (n, h, w, 3), any n, h, w."""
    module = module.eval().cpu()
    buf = io.BytesIO()
    dummy = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), buf, input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {0: "n", 1: "h", 2: "w"}, OUTPUTS[0]: {0: "n"},
                                        OUTPUTS[1]: {0: "n"}},
                          opset_version=17, dynamo=False)
    return buf.getvalue()
