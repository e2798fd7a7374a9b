"""A CNN trained from scratch: a small residual network sized for 96-144 px pictures on a laptop CPU.

    model = ScratchCNN(time_budget=540)    # 112 px pictures, 96 px training crops, width 16
    model.fit(X, y, X_val, y_val, classes=["cats", "dogs"], run_dir=Path("runs/x"))
    model.predict_proba(X)

The recipe borrows what makes fast CIFAR trainings fast (ResNet-9 / airbench): conv-BN-ReLU blocks with
max-pool downsampling and a few residual blocks, a wide-enough but shallow network (CPUs reward fewer, larger
convolutions), channels_last, a one-cycle schedule, label smoothing, an EMA of the weights and flip test-time
augmentation. Pictures come from the decode-once uint8 cache at `size` px; training sees random resized crops
of `crop` px (smaller: cheaper steps and a strong augmentation); prediction sees the whole `size` px picture,
which matches the apparent object size of the crops (the "FixRes" effect) and needs no cropping decision.
Measured (benchmarks/bench_scratch.py): 93% validation accuracy on cats_and_dogs (2000 training photos) in
under 10 minutes on 2 CPU cores, decoding included; the default width 16 at 96 px is ~150 MFLOP per picture,
cheap enough for ~100 epochs in that time, which matters more with 2000 pictures than a wider network does.

Saved as `model.safetensors` (weights) + `model.json` (architecture by name and parameters, classes, the
exact preprocessing and normalisation, and the SHA-256 of the weights file), so `load(dir)` rebuilds the
network with no user code and no pickle, and refuses damaged or mismatched files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..cache import as_rows
from ..errors import PawsightError
from ..images import Preprocessing
from .base import ImageClassifier, read_model_files, write_model_files

FORMAT = 1
ARCHITECTURE = "pawsight-resnet"


def build_network(n_classes: int, width: int = 32, depth: int = 1):
    """The architecture, rebuilt from (name, params) alone when a saved model is loaded.

    stem: 3x3 stride-2 conv (1/2), conv + max-pool (1/4); then three stages, each conv + max-pool (1/8,
    1/16, 1/32) followed by `depth` residual blocks of two 3x3 convs; global average + max pooling; linear.
    Channels: width, 2w, 4w, 8w, 16w... every conv is followed by BatchNorm and ReLU.
    """
    import torch
    from torch import nn

    def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU(inplace=True))

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(conv_bn(c, c), conv_bn(c, c))

        def forward(self, x):
            return x + self.body(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            pool = nn.MaxPool2d(2, ceil_mode=True)  # ceil: any picture size >= 1 px works
            layers: list[nn.Module] = [conv_bn(3, w, stride=2), conv_bn(w, 2 * w), pool]
            c = 2 * w
            for _ in range(3):
                layers += [conv_bn(c, 2 * c), pool]
                c *= 2
                layers += [Residual(c) for _ in range(depth)]
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(2 * c, n_classes)
            self.n_classes = n_classes

        def embed(self, x):
            """Pooled features (average and max over the picture), what the head and the neither score see."""
            x = self.features(x)
            return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)

        def forward(self, x):
            return self.head(self.embed(x))

    return Net()


class ScratchCNN(ImageClassifier):
    approach = "scratch"

    def __init__(self, size: int | None = None, crop: int | None = None, mode: str = "squash",
                 width: int = 16, depth: int = 1, epochs: int | None = None, time_budget: float | None = None,
                 batch_size: int | None = None, lr: float | None = None, weight_decay: float = 5e-4,
                 ema: bool = True, device: str | None = None, tta: bool | None = None, seed: int = 0,
                 neither: bool = True) -> None:
        self.size = size
        self.crop = crop
        self.mode = mode
        self.width = width
        self.depth = depth
        self.epochs = epochs
        self.time_budget = time_budget
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema = ema
        self.device = device
        self.tta = tta
        self.seed = seed
        self.neither = neither

    # -- resolved settings -------------------------------------------------------------------------------
    @property
    def preprocessing(self) -> Preprocessing:
        try:
            return Preprocessing(int(self.size or 112), self.mode)  # type: ignore[arg-type]
        except ValueError as exc:
            raise PawsightError(str(exc)) from None

    def check_params(self) -> None:
        super().check_params()  # size, crop, width, depth, epochs, batch_size, lr, ...: options.LIMITS
        self.preprocessing  # noqa: B018 - an unknown resize mode is refused here, before any decoding
        if self.device not in (None, "", "auto"):
            from ..training import resolve_device

            resolve_device(self.device)  # no such device: one line now, not after decoding every picture

    def _crop(self) -> int:
        size = self.preprocessing.size
        return int(self.crop or max(8, round(size * 0.875 / 8) * 8))

    def _config(self):
        from ..training import TrainConfig

        self.check_params()
        return TrainConfig(epochs=self.epochs, batch_size=int(self.batch_size or 64),
                           lr=float(self.lr or 2e-3), weight_decay=self.weight_decay, optimizer="adamw",
                           label_smoothing=0.1, warmup_fraction=0.25, ema_decay=0.99 if self.ema else None,
                           time_budget=self.time_budget, seed=self.seed, device=self.device or "auto",
                           tta=self._tta())

    def _tta(self) -> bool:
        return True if self.tta is None else bool(self.tta)

    # -- learning ------------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, *, classes: list[str],
            run_dir: Path | None = None) -> ScratchCNN:
        import torch

        from ..training import BatchAugment, fit_network

        t0 = time.perf_counter()
        if len(classes) < 2:
            raise PawsightError("a classifier needs at least two classes")
        size = self.preprocessing.size
        if X.ndim != 4 or X.shape[1:] != (size, size, 3) or X.dtype != np.uint8:
            raise PawsightError(f"expected uint8 pictures of shape (n, {size}, {size}, 3), "
                                f"got {X.dtype} {X.shape}")
        config = self._config()
        self.classes_ = list(classes)
        self.normalize_ = channel_stats(X)
        torch.manual_seed(self.seed)
        self.net_ = build_network(len(classes), self.width, self.depth)
        result = fit_network(self.net_, X, y, X_val, y_val, config=config, augment=BatchAugment(self._crop()),
                             normalize=self.normalize_, run_dir=run_dir)
        self.history_ = result.history
        self.neither_ = None
        if self.neither:
            from .deep import embed_pictures
            from .neither import fit_neither

            self.neither_ = fit_neither(embed_pictures(self.inference_module(), X), y, seed=int(self.seed))
        self.best_epoch_ = result.best_epoch
        self.interrupted_ = result.interrupted
        self.timings_ = {"train": round(time.perf_counter() - t0, 3),
                         "images_per_second": round(result.images_per_second, 1), "epochs": result.epochs}
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities from `inference_module()`: the very module inference and ONNX export run."""
        return self.predict_scores(X)[0]

    def predict_scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, neither scores or None) from `inference_module()`, in one pass."""
        from .deep import run_module

        size = self.preprocessing.size
        if np.ndim(X) != 4 or tuple(np.shape(X)[1:]) != (size, size, 3):
            raise PawsightError(f"this model takes {size}x{size} RGB pictures, got an array of shape "
                                f"{np.shape(X)}")
        proba, score = run_module(self.inference_module(), as_rows(X), batch_size=128)
        return proba, (score if getattr(self, "neither_", None) is not None else None)

    def inference_module(self):
        """The whole model as one module: uint8 NHWC in, (probabilities, neither score) out (deep.py)."""
        import torch

        from .deep import Embedding, ImageModel

        if not hasattr(self, "net_"):
            raise PawsightError("the model is not trained yet")
        net = self.net_.cpu().to(memory_format=torch.contiguous_format).eval()
        return ImageModel(Embedding(net), net.head, *self.normalize_, self._tta(),
                          getattr(self, "neither_", None)).eval()

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        from safetensors.torch import save as st_save

        from ..training import cpu_state

        directory = Path(directory)
        tensors = cpu_state(self.net_)
        neither = getattr(self, "neither_", None)
        if neither is not None:
            from .neither import to_tensors

            tensors.update(to_tensors(neither))
        data = st_save(tensors, metadata={"format": str(FORMAT), "architecture": ARCHITECTURE})
        write_model_files(directory, data, {
            "format": FORMAT, "approach": self.approach,
            "architecture": {"name": ARCHITECTURE, "n_classes": len(self.classes_), "width": self.width,
                             "depth": self.depth},
            "classes": self.classes_, "preprocessing": self.preprocessing.to_dict(),
            "normalize": {"mean": list(self.normalize_[0]), "std": list(self.normalize_[1])},
            "params": {k: v for k, v in self.get_params().items()},
            "best_epoch": getattr(self, "best_epoch_", None),
            "interrupted": getattr(self, "interrupted_", False),
            "neither": neither.describe() if neither is not None else None,
        })

    @classmethod
    def load(cls, directory: Path) -> ScratchCNN:
        from safetensors.torch import load as st_load

        directory = Path(directory)
        meta, data = read_model_files(directory, cls.approach, FORMAT)
        if not isinstance(meta.get("architecture"), dict) or meta["architecture"].get("name") != ARCHITECTURE:
            raise PawsightError(f"{directory} holds a scratch model of an unknown architecture "
                                f"({meta.get('architecture')!r})")
        try:
            arch, params = meta["architecture"], meta["params"]
            classes = [str(c) for c in meta["classes"]]
            prep = Preprocessing.from_dict(meta["preprocessing"])
            mean = tuple(float(v) for v in meta["normalize"]["mean"])
            std = tuple(float(v) for v in meta["normalize"]["std"])
            if len(classes) != int(arch["n_classes"]) or len(mean) != 3 or len(std) != 3:
                raise ValueError("classes or normalisation do not fit the architecture")
            accepted = set(cls.__init__.__code__.co_varnames)
            model = cls(**{k: v for k, v in params.items() if k in accepted})
            model.size, model.mode = prep.size, prep.mode
            model.width, model.depth = int(arch["width"]), int(arch["depth"])
            net = build_network(len(classes), model.width, model.depth)
            tensors = st_load(data)
            weights = {k: v for k, v in tensors.items() if not k.startswith("neither.")}
            net.load_state_dict(weights, strict=True)
            from .neither import from_saved

            neither = from_saved(meta.get("neither"), tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise PawsightError(f"the scratch model in {directory} is incompatible or damaged: "
                                f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}") from None
        model.classes_, model.normalize_, model.net_ = classes, (mean, std), net.eval()
        model.neither_ = neither
        model.best_epoch_, model.interrupted_ = meta.get("best_epoch"), bool(meta.get("interrupted", False))
        return model


def channel_stats(X: np.ndarray, max_images: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of [0, 1] pixels, from an evenly spaced sample of the training pictures,
    summed batch by batch (X may be the decode cache's lazy PoolRows: the sample is never held at once)."""
    step = max(1, len(X) // max_images)
    picks = np.arange(0, len(X), step)
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for start in range(0, len(picks), 64):
        pixels = np.asarray(X[picks[start:start + 64]]).reshape(-1, 3).astype(np.float64) / 255
        total += pixels.sum(0)
        squares += (pixels * pixels).sum(0)
        count += len(pixels)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean * mean, 0)).clip(min=1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
