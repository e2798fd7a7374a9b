"""Why did the model say that? Explanations of one picture, for both schools.

    e = explain("runs/t", "photo.jpg")                     # deep runs: Grad-CAM; classical: occlusion
    e = explain("runs/c", "photo.jpg", method="features")  # what hand-made features see: HOG cells, colours
    Path("why.png").write_bytes(render(e))

- **gradcam** (deep runs, transfer and scratch): Grad-CAM (Selvaraju et al., 2017) from the `grad-cam`
  package (pytorch_grad_cam): the last feature map's channels weighted by the gradient of the class score.
  The layer is chosen per architecture by probing the network: the last module whose output is still a
  spatial map (EfficientNet: the head convolution's BN + activation `bn2`; ResNets: `layer4`; pawsight's
  scratch CNN: the last residual stage).
- **occlusion** (every approach, model-agnostic): a grey patch slides over the picture; the occluded copies
  go through the model in batches; a pixel's heat is the mean drop of the explained class's probability over
  the patches covering it (Zeiler & Fergus, 2014).
- **features** (classical views, any run): the HOG cells scikit-image draws for the model's own HOG settings,
  the colour histogram of its colour extractor (whole-picture level), plus the occlusion map.

The explained class is the predicted one unless `target` names another. Heat maps are (size, size) float
arrays >= 0 over the picture the model saw (its preprocessing), so tests can check where the mass is.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import PawsightError

METHODS = ("auto", "gradcam", "occlusion", "features")


@dataclass
class Explanation:
    method: str                      # gradcam | occlusion | features
    image: np.ndarray                # the picture as the model saw it: (size, size, 3) uint8
    heatmap: np.ndarray              # (size, size) float >= 0: evidence for `target`
    target: str                      # the explained class: the closest one unless asked for another
    probabilities: dict[str, float]  # the model's probabilities for the unoccluded picture
    views: dict[str, Any] = field(default_factory=dict)  # features: hog image, colour histogram
    seconds: float = 0.0
    #: the answer `pawsight predict` gives for this picture (inference.answer_record): label ("unknown"
    #: included), closest class, neither score and threshold, summary in words
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def caption(self) -> str:
        """The answer in words and what the heat map shows, e.g. "unknown: closest dogs 94.2%, neither score
        1.18 > threshold 1.00; heat map: what looks like dogs"."""
        return f"{self.answer['summary']}; heat map: what looks like {self.target}"


def explain(run_or_model: Any, image: Any, method: str = "auto", target: str | None = None) -> Explanation:
    """Explain one picture (a path, PIL image or uint8 array) with `method` (see the module docstring).
    To explain many pictures of one run, make one `Explainer` and call it: the model loads once."""
    explainer = run_or_model if isinstance(run_or_model, Explainer) else Explainer(run_or_model)
    return explainer(image, method, target)


class Explainer:
    """Explanations of pictures by one model; the Grad-CAM network and layer are prepared once.

    The answer and every probability (occluded copies included) come from the run's predictor
    (`inference`: the same graph, preprocessing, TTA and label decision as `pawsight predict`), so an
    explanation never contradicts the answer; only Grad-CAM needs the PyTorch network, loaded when first
    asked for."""

    def __init__(self, run_or_model: Any) -> None:
        from ..inference import load, predictor_of

        if isinstance(run_or_model, str | Path):
            self.run: Path | None = Path(run_or_model)
            self.predictor = load(self.run)
            self._model: Any = None
        else:
            self.run, self._model = None, run_or_model
            info = {"approach": run_or_model.approach, "classes": list(run_or_model.classes_)}
            self.predictor = predictor_of(run_or_model, info, engine="torch")
        self.deep = self.predictor.approach in ("transfer", "scratch")
        self._cam: GradCam | None = None

    @property
    def model(self) -> Any:
        """The fitted model object (PyTorch network for deep runs), loaded on first use."""
        if self._model is None:
            from ..run import load_model

            self._model = load_model(self.run)
        return self._model

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities of preprocessed uint8 pictures, through the predictor."""
        return self.predictor.forward(X)[0]

    def __call__(self, image: Any, method: str = "auto", target: str | None = None) -> Explanation:
        if method not in METHODS:
            raise PawsightError(f"unknown explanation method {method!r}; use {', '.join(METHODS[1:])}")
        t0 = time.perf_counter()
        classes = list(self.predictor.classes_)
        if target is not None and target not in classes:
            raise PawsightError(f"unknown class {target!r}; the model knows: {', '.join(classes)}")
        if method == "auto":
            method = "gradcam" if self.deep else "occlusion"
        if method == "gradcam" and not self.deep:
            raise PawsightError("Grad-CAM needs a deep-learning run (transfer or scratch); for a classical "
                                "run use --method occlusion or --method features")
        pixels = model_input(self.predictor.preprocessing, image)
        answer = self.predictor.records(*self.predictor.forward(pixels[None]))[0]
        target = target if target is not None else answer["closest"]
        k = classes.index(target)
        views: dict[str, Any] = {}
        if method == "gradcam":
            if self._cam is None:
                self._cam = GradCam(self.model)
            heat = self._cam(pixels, k)
        else:
            heat = occlusion(self.proba, pixels, k)
            if method == "features":
                views = feature_views(self.model, pixels)
        return Explanation(method, pixels, heat, target, dict(answer["probabilities"]), views,
                           time.perf_counter() - t0, answer)


def model_input(prep: Any, image: Any) -> np.ndarray:
    """The (size, size, 3) uint8 picture a model with preprocessing `prep` sees for a path, a PIL image or
    an array."""
    from ..images import ImageError, open_rgb

    if isinstance(image, str | Path):
        try:
            return np.array(prep(open_rgb(image)))  # writable: torch.from_numpy warns on read-only arrays
        except ImageError as exc:
            raise PawsightError(f"cannot read {image}: {exc}") from None
        except OSError as exc:
            raise PawsightError(f"cannot read {image}: {exc.strerror or exc}") from None
    if isinstance(image, Image.Image):
        return np.array(prep(image.convert("RGB")))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PawsightError(f"expected a (height, width, 3) uint8 picture, got {arr.dtype} {arr.shape}")
    return np.array(arr if arr.shape[:2] == (prep.size, prep.size) else prep(Image.fromarray(arr)))


# -- Grad-CAM --------------------------------------------------------------------------------------------

def torch_network(model: Any):
    """(network mapping normalised float NCHW pictures to class scores, (mean, std)) of a deep model."""
    import torch
    from torch import nn

    if model.approach == "transfer":
        head = nn.Linear(model.head_weight_.shape[1], model.head_weight_.shape[0])
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(np.asarray(model.head_weight_, np.float32)))
            head.bias.copy_(torch.from_numpy(np.asarray(model.head_bias_, np.float32)))
        return nn.Sequential(model.net_, head).eval(), (model.spec_.mean, model.spec_.std)
    if model.approach == "scratch":
        return model.net_.eval(), model.normalize_
    raise PawsightError(f"no network to explain in a {model.approach} run")


def target_layer(net: Any, x: Any) -> tuple[str, Any]:
    """The last module (in forward order) whose output is a spatial map larger than 1 x 1: the last
    convolutional feature map, where Grad-CAM's class-specific evidence is still localised."""
    import torch

    seen: list[tuple[str, Any, tuple[int, ...]]] = []
    hooks = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(m: Any, _inp: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                seen.append((name, m, tuple(out.shape)))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    maps = [(n, m) for n, m, s in seen if len(s) == 4 and s[2] > 1 and s[3] > 1]
    if not maps:
        raise PawsightError("this network has no spatial feature map for Grad-CAM; use --method occlusion")
    return maps[-1]


class GradCam:
    """Grad-CAM heat (size, size) in [0, 1] of a deep model: `GradCam(model)(pixels, k)` for class index k.

    Only the layers after the target layer need gradients (Grad-CAM weights the target layer's channels by
    the class score's gradient there), so the backbone runs without building a backward graph: its output is
    turned into a leaf tensor that requires grad. On a CPU this makes one explanation cost about one forward
    pass instead of a forward and a full backward pass through every depthwise convolution."""

    def __init__(self, model: Any) -> None:
        self.net, (mean, std) = torch_network(model)
        self.mean, self.std = mean, std
        size = model.preprocessing.size
        self.layer_name, self.layer = target_layer(self.net, self._input(np.zeros((size, size, 3), np.uint8)))

    def _input(self, pixels: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255
        return (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)

    def __call__(self, pixels: np.ndarray, k: int) -> np.ndarray:
        import torch
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        params = list(self.net.parameters())
        flags = [p.requires_grad for p in params]
        threads = torch.get_num_threads()
        # registered before GradCAM's own hook, which therefore sees (and hooks the gradient of) the leaf
        handle = self.layer.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
        try:
            for p in params:
                p.requires_grad_(False)
            # One picture: a second thread gains little on a quiet machine, and on a busy one its spin-waits
            # cost 10-100x (measured with 30 processes on 2 cores: 0.03 s with one thread, 2-7 s with two).
            torch.set_num_threads(1)
            with GradCAM(model=self.net, target_layers=[self.layer]) as cam:
                heat = cam(input_tensor=self._input(pixels), targets=[ClassifierOutputTarget(k)])[0]
        finally:
            handle.remove()
            torch.set_num_threads(threads)
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
        return np.clip(np.nan_to_num(np.asarray(heat, np.float64)), 0, None)


def occlusion(proba_fn: Any, pixels: np.ndarray, k: int, patch: int | None = None, stride: int | None = None,
              fill: int | None = None, batch: int = 32) -> np.ndarray:
    """Occlusion heat (size, size) >= 0: mean drop of class k's probability when a grey `patch` x `patch`
    square covers each pixel (patches every `stride` pixels, the last one flush with the border). The grey
    is the picture's mean brightness unless `fill` is given: a patch that is neither darker nor brighter
    than the picture on average adds as little new evidence as possible."""
    size = pixels.shape[0]
    patch = int(patch or max(4, size // 5))
    stride = int(stride or max(1, patch // 2))
    steps = int(np.ceil((size - patch) / stride)) + 1
    starts = np.unique(np.linspace(0, size - patch, steps).round().astype(int))
    boxes = [(r, c) for r in starts for c in starts]
    fill = int(round(float(pixels.mean()))) if fill is None else int(fill)
    base = float(np.asarray(proba_fn(pixels[None]))[0, k])
    drops = np.empty(len(boxes))
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        X = np.repeat(pixels[None], len(chunk), axis=0)
        for j, (r, c) in enumerate(chunk):
            X[j, r:r + patch, c:c + patch] = fill
        drops[i:i + len(chunk)] = base - np.asarray(proba_fn(X))[:, k]
    total = np.zeros(pixels.shape[:2])
    count = np.zeros(pixels.shape[:2])
    for (r, c), d in zip(boxes, drops, strict=True):
        total[r:r + patch, c:c + patch] += d
        count[r:r + patch, c:c + patch] += 1
    return np.clip(total / np.maximum(count, 1), 0, None)


# -- what classical features see ---------------------------------------------------------------------------

def feature_views(model: Any, pixels: np.ndarray) -> dict[str, Any]:
    """HOG cells (scikit-image's drawing, with the model's HOG settings when it has them) and the
    whole-picture HSV colour histogram of the model's colour extractor (or the default one)."""
    from skimage.feature import hog

    from ..features import HOG, ColorHistogram, gray

    extractors = getattr(model, "extractors_", []) or []
    h = next((e for e in extractors if isinstance(e, HOG)), HOG())
    color = next((e for e in extractors if isinstance(e, ColorHistogram)), ColorHistogram())
    g = gray(pixels, h.size)
    _, hog_image = hog(g, orientations=h.orientations, pixels_per_cell=(h.cells[0], h.cells[0]),
                       cells_per_block=(h.block, h.block), block_norm="L2-Hys", visualize=True)
    hb, sb, vb = color.bins
    n = hb * sb * vb
    shares = np.asarray(color.extract_one(pixels)[:n], np.float64) ** 2  # Hellinger -> shares of pixels
    centres = []
    for code in range(n):
        hue, rest = divmod(code, sb * vb)
        sat, val = divmod(rest, vb)
        hsv = np.array([[[(hue * 256 // hb) % 256, int((sat + 0.5) * 256 / sb),
                          int((val + 0.5) * 256 / vb)]]], np.uint8)
        centres.append(np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))[0, 0].tolist())
    # whether the model itself reads these features: a deep run's answer never saw them (shown, not hidden)
    used = {"hog": any(isinstance(e, HOG) for e in extractors),
            "color": any(isinstance(e, ColorHistogram) for e in extractors)}
    return {"hog_image": np.asarray(hog_image, np.float64), "hog_cell": h.cells[0], "hog_size": h.size,
            "color_shares": shares.tolist(), "color_rgb": centres, "color_bins": [hb, sb, vb], "used": used}


# -- drawing ---------------------------------------------------------------------------------------------

def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The picture with the heat map (scaled to its maximum) blended over it in the 'jet' colours."""
    from matplotlib import colormaps

    h = np.asarray(heat, np.float64)
    if h.shape != pixels.shape[:2]:
        h = np.asarray(Image.fromarray(h.astype(np.float32)).resize(pixels.shape[1::-1], Image.BILINEAR))
    h = h / h.max() if h.max() > 0 else h
    colours = colormaps["jet"](h)[..., :3] * 255
    weight = alpha * h[..., None]
    return (pixels * (1 - weight) + colours * weight).clip(0, 255).astype(np.uint8)


def render(e: Explanation) -> bytes:
    """A PNG: the picture, the heat map over it and, for `features`, the HOG cells and colour histogram."""
    from .plots import _short, new_figure, to_png

    panels = 4 if e.method == "features" else 2
    fig, axes = new_figure(2.6 * panels, 3.0, panels)
    # the answer, wrapped to the figure's width; class names are folder names, never math
    fig.suptitle(textwrap.fill(e.answer["summary"], 26 * panels), fontsize=10, parse_math=False)
    axes[0].imshow(e.image)
    axes[0].set_title("picture (as the model sees it)", fontsize=8)
    axes[1].imshow(overlay(e.image, e.heatmap))
    axes[1].set_title({"gradcam": "Grad-CAM", "occlusion": "occlusion: probability drop",
                       "features": "occlusion: probability drop"}[e.method]
                      + f"\nwhat looks like {_short(e.target)}", fontsize=8, parse_math=False)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), ax=axes[1], fraction=0.05, ticks=[0, 1],
                 label="evidence (relative)")
    if e.method == "features":
        used = e.views.get("used", {})
        unused = "\n(not used by this model)"
        axes[2].imshow(e.views["hog_image"], cmap="gray")
        axes[2].set_title(f"HOG cells ({e.views['hog_cell']} px)" + ("" if used.get("hog") else unused),
                          fontsize=8)
        shares = e.views["color_shares"]
        axes[3].bar(range(len(shares)), shares, width=1.0, color=np.asarray(e.views["color_rgb"]) / 255,
                    edgecolor="none")
        axes[3].set_title("colour histogram" + ("" if used.get("color") else unused), fontsize=8)
        axes[3].set_xlabel("colour bin (hue, saturation, value)")
        axes[3].set_ylabel("share of pixels")
        axes[3].set_xticks([])
    for ax in axes[:3]:
        ax.axis("off")
    return to_png(fig)
