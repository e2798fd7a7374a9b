"""Transfer learning: a pretrained ImageNet backbone plus a new linear head for your classes.

    model = TransferClassifier()            # EfficientNet-Lite0, frozen features + logistic regression
    model = TransferClassifier(model="efficientnet_lite2")   # the most accurate recipe measured (~40 s)
    model = TransferClassifier(mode="finetune", epochs=3)
    model.fit(X, y, X_val, y_val, classes=["cats", "dogs"]); model.predict_proba(X)

Two modes:
- **frozen** (default): the backbone is a fixed feature extractor. Pooled penultimate features are computed
  once per picture (ONNX Runtime on CPU) and cached under `<cache>/features/`, keyed by the pixels' hash +
  backbone + weights hash + preprocessing, so a second training or an evaluation costs a lookup. The head is
  a logistic regression on standardised features whose C is picked by cross-validation on the training set:
  seconds, and on photos close to ImageNet as accurate as fine-tuning.
- **finetune**: the whole network trains with `training.fit_network` (checkpoints, resume, time budget). The
  head is warmed up first with the backbone frozen -- exactly, as the linear probe above (LP-FT) -- since a
  random head would send large gradients into good features; then the backbone trains at a 10x lower
  learning rate. BatchNorm layers stay in eval mode
  with their ImageNet statistics (their affine weights still learn): CPU batches of 16-32 give noisy batch
  statistics, and re-estimating them on a few thousand pictures loses more than it gains.

Either way the saved model is the whole network: `model.safetensors` (backbone + head, ~19 MB for Lite0) and
`model.json` (backbone spec with weights hash, classes, exact preprocessing and normalisation). Loading checks
the file's SHA-256 and the backbone's weights hash, so a damaged or mixed-up model is refused, not misused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import DEFAULT_BACKBONE, BackboneSpec, FeatureExtractor, resolve
from ..cachedir import default_cache_dir
from ..errors import PawsightError
from ..images import Preprocessing
from ..storage import RowStore
from .base import ImageClassifier, read_model_files, write_model_files

FORMAT = 1
MODES = ("frozen", "finetune")
C_GRID = np.logspace(-3, 1, 9)  # inverse L2 strength for standardised features; chosen by CV on train


class TransferClassifier(ImageClassifier):
    approach = "transfer"

    def __init__(self, model: str = DEFAULT_BACKBONE, mode: str = "frozen", weights: str | Path | None = None,
                 size: int | None = None, epochs: int | None = None, time_budget: float | None = None,
                 batch_size: int | None = None, lr: float | None = None, device: str | None = None,
                 tta: bool | None = None, seed: int = 0, engine: str = "auto", neither: bool = True) -> None:
        self.model = model
        self.mode = mode
        self.weights = weights
        self.size = size
        self.epochs = epochs
        self.time_budget = time_budget
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.tta = tta
        self.seed = seed
        self.engine = engine
        self.neither = neither

    # -- configuration -----------------------------------------------------------------------------------
    @property
    def preprocessing(self) -> Preprocessing:
        """Center crop at the backbone's native resolution unless `size` says otherwise (as in ImageNet)."""
        if getattr(self, "preprocessing_", None) is not None:
            return self.preprocessing_
        try:
            return Preprocessing(size=int(self.size or resolve(self.model).size), mode="center-crop")
        except ValueError as exc:
            raise PawsightError(str(exc)) from None

    def check_params(self) -> None:
        super().check_params()  # size, epochs, batch_size, lr, time_budget, seed: options.LIMITS
        if self.mode not in MODES:
            raise PawsightError(f"unknown transfer mode {self.mode!r}; use frozen or finetune")
        if self.device not in (None, "", "auto"):
            from ..training import resolve_device

            resolve_device(self.device)  # no such device: one line now, not after decoding every picture

    def _device(self) -> str:
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch.device(device)
        except RuntimeError:
            raise PawsightError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
        return device

    def _use_tta(self) -> bool:
        # Frozen: mirrored features double the extraction time and did not raise train-CV accuracy for
        # Lite0 (benchmarks/bench_transfer.py), so off unless asked. Finetune: on (cheap next to training).
        return bool(self.tta) if self.tta is not None else self.mode == "finetune"

    # -- learning -------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, *, classes: list[str], run_dir: Path | None = None,
            ) -> TransferClassifier:
        from ..backbones import create_backbone

        self.check_params()
        y = np.asarray(y, dtype=np.int64)
        if len(classes) < 2 or len(np.unique(y)) < 2:
            raise PawsightError("transfer learning needs pictures of at least two classes")
        self.timings_: dict[str, float] = {}
        t = time.perf_counter()
        self.classes_ = list(classes)
        self.preprocessing_ = self.preprocessing
        net, spec = create_backbone(self.model, self.weights)
        self.timings_["backbone"] = time.perf_counter() - t
        self.net_, self.spec_ = net, spec
        self.learning_curve_ = None
        if self.mode == "frozen":
            self._fit_frozen(X, y)
            if X_val is not None and y_val is not None and len(y_val):
                t = time.perf_counter()
                self.learning_curve_ = self._learning_curve(X, y, X_val, np.asarray(y_val))
                self.timings_["learning_curve"] = time.perf_counter() - t
        else:
            self._fit_finetune(X, y, X_val, y_val, run_dir)
        self.neither_ = None
        if self.neither:
            t = time.perf_counter()
            self.neither_ = self._fit_neither(X, y)
            self.timings_["neither"] = time.perf_counter() - t
        return self

    def _fit_neither(self, X: np.ndarray, y: np.ndarray):
        """The neither score on the training pictures' features as the inference module sees them (TTA views
        averaged), from the feature cache (frozen: already computed for the head; the head is fitted)."""
        from .neither import fit_neither

        return fit_neither(self._views(X)[1], y, seed=int(self.seed))

    def _fit_frozen(self, X: np.ndarray, y: np.ndarray, flip: bool | None = None) -> None:
        t = time.perf_counter()
        feats = self._features(X)
        groups = np.arange(len(y))
        # mirrored copies as extra training rows; CV folds keep both copies of a picture together
        if self._use_tta() if flip is None else flip:
            feats = np.concatenate([feats, self._features(X, flip=True)])
            y, groups = np.concatenate([y, y]), np.concatenate([groups, groups])
        self.timings_["features"] = time.perf_counter() - t
        t = time.perf_counter()
        self.head_weight_, self.head_bias_, self.C_, self.cv_accuracy_ = fit_linear_head(
            feats, y, len(self.classes_), groups, self.seed)
        self.timings_["head"] = time.perf_counter() - t

    def _learning_curve(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray
                        ) -> dict[str, Any]:
        """A logistic-regression head at the chosen C refitted on growing subsets of the cached training
        features, scored on the validation pictures (base.learning_curve)."""
        from sklearn.linear_model import LogisticRegression

        from .base import learning_curve

        F_tr, F_va = self._features(X), self._features(X_val)  # training rows: cached by _fit_frozen
        C = float(getattr(self, "C_", None) or 1.0)

        def fit_score(idx: np.ndarray) -> float:
            F = F_tr[idx]
            mean, scale = F.mean(0), F.std(0) + 1e-6
            clf = LogisticRegression(C=C, max_iter=2000).fit((F - mean) / scale, y[idx])
            return float((clf.predict((F_va - mean) / scale) == y_val).mean())

        return learning_curve(fit_score, y, len(y_val), seed=int(self.seed))

    def _fit_finetune(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None,
                      run_dir: Path | None) -> None:
        """LP-FT (Kumar et al., 2022): the head starts from the cross-validated linear probe on cached frozen
        features, i.e. the head warm-up is solved exactly with the backbone frozen, in seconds instead of an
        epoch of forward passes; then everything trains, the backbone at 1/10 of the head's learning rate.
        A random head would send large, noisy gradients into the pretrained features in the first steps."""
        from ..training import BatchAugment, TrainConfig, fit_network

        t0 = time.perf_counter()
        self._fit_frozen(X, y, flip=False)  # the warm-up: linear probe (features cached: a re-run is free)
        net = FinetuneNet(self.net_, self.head_weight_, self.head_bias_)
        size = self.preprocessing.size
        crop = max(32, int(round(size * 0.875 / 32)) * 32)  # train smaller, test at `size` (FixRes effect)
        budget = None if self.time_budget is None else \
            max(1.0, float(self.time_budget) - (time.perf_counter() - t0))
        epochs = self.epochs if self.epochs is not None else (None if budget else 3)
        config = TrainConfig(epochs=epochs, batch_size=int(self.batch_size or 32), lr=float(self.lr or 1e-3),
                             weight_decay=0.05, label_smoothing=0.1, warmup_fraction=0.1, time_budget=budget,
                             seed=int(self.seed), device=self._device(), tta=self._use_tta(), verbose=False)

        def param_groups(module: nn.Module) -> list[dict[str, Any]]:
            backbone = [p for p in module.backbone.parameters() if p.requires_grad]
            return [{"params": [p for p in backbone if p.ndim >= 2], "lr_scale": 0.1, "weight_decay": 0.05},
                    {"params": [p for p in backbone if p.ndim < 2], "lr_scale": 0.1, "weight_decay": 0.0},
                    {"params": list(module.head.parameters()), "lr_scale": 1.0, "weight_decay": 0.0}]

        t = time.perf_counter()
        result = fit_network(net, X, y, X_val, y_val, config=config,
                             augment=BatchAugment(crop, scale=(0.35, 1.0), jitter=0.1),
                             normalize=(self.spec_.mean, self.spec_.std), param_groups=param_groups,
                             run_dir=run_dir)
        self.timings_["finetune"] = time.perf_counter() - t
        self.history_ = result.history
        self.interrupted_ = result.interrupted  # Ctrl-C/SIGTERM: api.train records the run as resumable
        self.resumed_from_ = result.resumed_from
        self.train_images_per_second_ = result.images_per_second
        net = net.cpu().eval()
        self.net_ = net.backbone.to(memory_format=torch.contiguous_format)
        self.head_weight_ = net.head.weight.detach().numpy().astype(np.float32)
        self.head_bias_ = net.head.bias.detach().numpy().astype(np.float32)
        from ..backbones import weights_hash

        self.spec_ = BackboneSpec(**{**self.spec_.to_dict(), "weights_hash": weights_hash(self.net_)})
        self.extractor_ = None  # new weights: a new ONNX graph and new cached features

    # -- inference --------------------------------------------------------------------------------------
    def _extractor(self) -> FeatureExtractor:
        if getattr(self, "extractor_", None) is None:
            device = self._device()
            engine = self.engine if device == "cpu" else "torch"
            self.net_.to(device)
            self.extractor_ = FeatureExtractor(self.net_, self.spec_, engine=engine, device=device)
        return self.extractor_

    def _features(self, X: np.ndarray, flip: bool = False, cache: bool = True) -> np.ndarray:
        """Backbone features of `X` (an array or the decode cache's lazy PoolRows), from the feature cache
        where possible (computed and stored otherwise; with `cache=False` computed and nothing written, as
        inference promises). Pictures are read BATCH_ROWS at a time and each computed batch is stored as it
        is done: memory holds the (n, d) features and one batch of pixels, never the whole collection, and an
        interrupted extraction keeps what it finished."""
        from ..cache import BATCH_ROWS, batches, row_keys, take

        size = self.preprocessing.size
        if np.ndim(X) != 4 or tuple(np.shape(X)[1:]) != (size, size, 3):
            raise PawsightError(f"this model takes {size}x{size} RGB pictures, got an array of shape "
                                f"{np.shape(X)}")
        out = np.zeros((len(X), self.spec_.num_features), np.float32)
        if not cache:
            for pos, pixels in batches(X):
                out[pos] = self._extractor()(pixels, flip=flip)
            return out
        store = feature_store(self.spec_, self.preprocessing, flip)
        keys = row_keys(X)
        found, missing = store.get(keys)
        for i, row in found.items():
            out[i] = row
        todo = np.asarray(missing, np.int64)
        for pos, pixels in batches(take(X, todo), BATCH_ROWS * 4):
            new = self._extractor()(pixels, flip=flip)
            out[todo[pos]] = new
            store.put([keys[i] for i in todo[pos]], new)
        return out

    def _views(self, X: np.ndarray, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, features) from (cached) backbone features, each averaged over the TTA views: what
        `inference_module()` computes inside (models/deep.ImageModel.views)."""
        feats = self._features(X, cache=cache)
        proba = softmax(feats @ self.head_weight_.T + self.head_bias_)
        if self._use_tta():
            flipped = self._features(X, flip=True, cache=cache)
            proba = (proba + softmax(flipped @ self.head_weight_.T + self.head_bias_)) / 2
            feats = (feats + flipped) / 2
        return proba, feats

    def predict_proba(self, X: np.ndarray, cache: bool = True) -> np.ndarray:
        """Class probabilities from (cached) backbone features; the same numbers as `inference_module()`."""
        if len(X) == 0:
            return np.zeros((0, len(self.classes_)))
        return self._views(X, cache)[0]

    def predict_scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, neither scores or None) from cached features: the numbers `inference_module()`
        gives, without running the network again on pictures whose features are cached."""
        neither = getattr(self, "neither_", None)
        if len(X) == 0 or neither is None:
            return self.predict_proba(X), None
        proba, feats = self._views(X)
        with torch.inference_mode():
            score = neither(torch.from_numpy(np.ascontiguousarray(feats, np.float32))).numpy()
        return proba, score.astype(np.float64)

    def inference_module(self) -> nn.Module:
        """The whole model as one module: uint8 NHWC in, (probabilities, neither score) out (deep.py)."""
        from .deep import ImageModel, linear

        if not hasattr(self, "net_"):
            raise PawsightError("the model is not trained yet")
        backbone = self.net_.cpu().to(memory_format=torch.contiguous_format).eval()
        return ImageModel(backbone, linear(self.head_weight_, self.head_bias_), self.spec_.mean,
                          self.spec_.std, self._use_tta(), getattr(self, "neither_", None)).eval()

    # -- persistence --------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        from safetensors.torch import save

        directory = Path(directory)
        tensors = {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}
        tensors["head.weight"] = torch.from_numpy(np.ascontiguousarray(self.head_weight_, np.float32))
        tensors["head.bias"] = torch.from_numpy(np.ascontiguousarray(self.head_bias_, np.float32))
        neither = getattr(self, "neither_", None)
        if neither is not None:
            from .neither import to_tensors

            tensors.update(to_tensors(neither))
        blob = save(tensors)
        prep = self.preprocessing_
        description = {
            "format": FORMAT, "approach": self.approach, "classes": self.classes_,
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in self.get_params().items()},
            "backbone": self.spec_.to_dict(),
            "preprocessing": prep.to_dict(),
            "normalization": {"mean": list(self.spec_.mean), "std": list(self.spec_.std),
                              "pixels": "uint8 RGB / 255, then (x - mean) / std"},
            "head": {"type": "linear", "in_features": int(self.head_weight_.shape[1]),
                     "out_features": int(self.head_weight_.shape[0]), "C": getattr(self, "C_", None)},
            "tta": self._use_tta(),
            "neither": neither.describe() if neither is not None else None,
        }
        write_model_files(directory, blob, description)

    @classmethod
    def load(cls, directory: Path) -> TransferClassifier:
        from safetensors.torch import load

        from ..backbones import rebuild, weights_hash

        directory = Path(directory)
        d, blob = read_model_files(directory, cls.approach, FORMAT)
        try:
            spec = BackboneSpec.from_dict(d["backbone"])
            params = dict(d["params"])
            model = cls(**params)
            model.classes_ = [str(c) for c in d["classes"]]
            model.preprocessing_ = Preprocessing.from_dict(d["preprocessing"])
            tensors = load(blob)
            net = rebuild(spec)
            state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
            net.load_state_dict(state, strict=True)
        except PawsightError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise PawsightError(f"the transfer model in {directory} is incompatible with this pawsight: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        if weights_hash(net) != spec.weights_hash:
            raise PawsightError(f"the backbone weights in {directory} do not match their recorded hash")
        weight = tensors["head.weight"].to(torch.float32).numpy()
        bias = tensors["head.bias"].to(torch.float32).numpy()
        if weight.shape != (len(model.classes_), spec.num_features) or bias.shape != (len(model.classes_),):
            raise PawsightError(f"the head in {directory} does not fit {len(model.classes_)} classes and "
                                f"{spec.num_features} features")
        model.net_, model.spec_ = net, spec
        model.head_weight_, model.head_bias_ = weight, bias
        from .neither import from_saved

        model.neither_ = from_saved(d.get("neither"), tensors)
        model.C_ = d.get("head", {}).get("C")
        return model


def pretrained_features(X: Any, model: str = DEFAULT_BACKBONE) -> np.ndarray:
    """Features of the pretrained backbone `model` (no head) for decoded pictures `X` at its preprocessing,
    through the same feature cache as frozen transfer training: checking a collection (`data issues`) and
    then training on it computes them once."""
    from ..backbones import create_backbone

    clf = TransferClassifier(model=model)
    clf.net_, clf.spec_ = create_backbone(model)
    return clf._features(X)


class FinetuneNet(nn.Module):
    """Backbone + linear head initialised from the linear probe; BatchNorm stays in eval mode throughout.

    Why frozen BN statistics: CPU batches hold 16-32 pictures, whose batch statistics are noisy, and the
    ImageNet running statistics already fit natural photos; re-estimating them on a few thousand pictures
    costs accuracy. BN's affine weights still learn. (`fit_network` calls `.train()` every epoch, hence the
    override rather than a one-off `.eval()`.)"""

    def __init__(self, backbone: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(weight))
            self.head.bias.copy_(torch.from_numpy(bias))

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# -- the linear head ----------------------------------------------------------------------------------------

def fit_linear_head(feats: np.ndarray, y: np.ndarray, n_classes: int, groups: np.ndarray,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Multinomial logistic regression on standardised features, C by grouped stratified k-fold CV (log-loss)
    on the training rows only; returned as one (n_classes, d) weight matrix + bias acting on raw features."""
    from sklearn.linear_model import LogisticRegression

    mean = feats.mean(axis=0)
    scale = feats.std(axis=0) + 1e-6
    Z = (feats - mean) / scale
    best_C, cv_accuracy = 1.0, float("nan")
    chosen = cross_validated_head(Z, y, n_classes, groups, seed)
    if chosen is not None:
        best_C, proba = chosen
        cv_accuracy = float((proba.argmax(1) == y).mean())
    clf = LogisticRegression(C=best_C, max_iter=2000, tol=1e-5).fit(Z, y)
    coef = np.zeros((n_classes, Z.shape[1]))
    intercept = np.zeros(n_classes)
    if len(clf.classes_) == 2:  # sklearn's binary form: one logit z; softmax([-z/2, z/2]) == sigmoid(z)
        coef[clf.classes_] = np.stack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
        intercept[clf.classes_] = [-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
        absent = np.setdiff1d(np.arange(n_classes), clf.classes_)
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
        absent = np.setdiff1d(np.arange(n_classes), clf.classes_)
    intercept[absent] = -30.0  # classes without training pictures are never predicted
    weight = coef / scale
    bias = intercept - weight @ mean
    return weight.astype(np.float32), bias.astype(np.float32), best_C, cv_accuracy


def cross_validated_head(Z: np.ndarray, y: np.ndarray, n_classes: int, groups: np.ndarray | None = None,
                         seed: int = 0) -> tuple[float, np.ndarray] | None:
    """(C, out-of-sample probabilities) of the logistic-regression head on standardised features `Z`: each row
    predicted by the head fitted on the other folds of a grouped stratified k-fold split, at the C of C_GRID
    with the lowest cross-validated log-loss. None when a class has fewer than two pictures. The head's choice
    of C (fit_linear_head) and the label check (issues/labels.py) both use these numbers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(y, minlength=n_classes)
    folds = int(min(5, counts[counts > 0].min()))
    if folds < 2:
        return None
    groups = np.arange(len(y)) if groups is None else groups
    splits = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(Z, y, groups))
    best: tuple[float, float, np.ndarray] | None = None
    for C in C_GRID:
        proba = np.zeros((len(y), n_classes))
        for tr, te in splits:
            clf = LogisticRegression(C=C, max_iter=1000, tol=1e-4).fit(Z[tr], y[tr])
            proba[te] = _full_proba(clf, Z[te], n_classes)
        loss = float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1)).sum())
        if best is None or loss < best[0]:
            best = (loss, float(C), proba)
    assert best is not None
    return best[1], best[2]


def _full_proba(clf: Any, Z: np.ndarray, n_classes: int) -> np.ndarray:
    p = np.zeros((len(Z), n_classes))
    p[:, clf.classes_] = clf.predict_proba(Z)
    return p


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- the feature cache ------------------------------------------------------------------------------------

def feature_store(spec: BackboneSpec, prep: Preprocessing, flip: bool) -> RowStore:
    """Cached backbone features: `<cache>/features/<arch>-<weights hash>-<prep>[-flip]/`."""
    name = f"{spec.arch}-{spec.weights_hash[:16]}-{prep.key}" + ("-flip" if flip else "")
    return RowStore(default_cache_dir() / "features" / name, dim=spec.num_features)
