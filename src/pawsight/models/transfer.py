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
  seconds, and on photos close to ImageNet as accurate as fine-tuning. Training reads the features from a
  temporary file in batches (storage.RowFile), never as one table: beyond HEAD_IN_MEMORY training rows, C is
  cross-validated on a sample of that size and the head fitted with the rows streamed (fit_linear_head), so
  memory does not grow with the collection.
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
from ..storage import RowFile, RowStore, all_rows, row_batches
from .base import ImageClassifier, read_model_files, write_model_files

FORMAT = 1
MODES = ("frozen", "finetune")
C_GRID = np.logspace(-3, 1, 9)  # inverse L2 strength for standardised features; chosen by CV on train
# Training rows up to which the head (and each learning-curve refit) is fitted in memory by scikit-learn as
# before: 8,192 x 1,280 float32 = 42 MB of features, plus the standardised copy and a fold's copy; above,
# memory stays at that bound whatever the collection (fit_linear_head). The 3,000-picture set (2,400 training
# rows) is below it: its runs are exactly as before.
HEAD_IN_MEMORY = 8192
STREAM_ROWS = 2048  # rows per batch read from a RowFile by the streamed fits: 2,048 x 1,280 float64 = 21 MB


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
        rows: RowFile | None = None  # the training features, on disk: read by the head, curve and neither
        val_rows: RowFile | None = None
        try:
            if self.mode == "frozen":
                t = time.perf_counter()
                rows = self._feature_file(X, views=2 if self._use_tta() else 1)
                if X_val is not None and y_val is not None and len(y_val):
                    val_rows = self._feature_file(X_val)
                self._release_extractor()
                self.timings_["features"] = time.perf_counter() - t
                self._fit_frozen(rows, y)
                if val_rows is not None:
                    t = time.perf_counter()
                    self.learning_curve_ = self._learning_curve(rows, y, val_rows, np.asarray(y_val))
                    self.timings_["learning_curve"] = time.perf_counter() - t
            else:
                self._fit_finetune(X, y, X_val, y_val, run_dir)
            self.neither_ = None
            if self.neither:
                t = time.perf_counter()
                self.neither_ = self._fit_neither(X, y, rows)
                self.timings_["neither"] = time.perf_counter() - t
        finally:
            for table in (rows, val_rows):
                if table is not None:
                    table.close()
        return self

    def _release_extractor(self) -> None:
        """Drop the feature extractor (its ONNX Runtime session and memory arena) once the training features
        are written: the head and neither fits need the rows, not the network, and inference makes a new
        one when asked. Then hand what the extraction freed back to the system (system.py)."""
        from ..system import release_freed_memory

        self.extractor_ = None
        release_freed_memory()

    def _fit_neither(self, X: np.ndarray, y: np.ndarray, rows: RowFile | None = None):
        """The neither score on the training pictures' features as the inference module sees them (TTA views
        averaged), from the feature cache (frozen: the head's feature file `rows`, plain rows then mirrored
        ones; finetune: new weights, new features)."""
        from .neither import fit_neither

        own = rows is None
        if own:
            rows = self._feature_file(X, views=2 if self._use_tta() else 1)
        try:
            views = len(rows) // max(1, len(y))
            if views == 1:
                return fit_neither(rows, y, seed=int(self.seed))
            averaged = mean_of_views(rows, len(y), views)
            try:
                return fit_neither(averaged, y, seed=int(self.seed))
            finally:
                averaged.close()
        finally:
            if own:
                rows.close()

    def _fit_frozen(self, rows: RowFile, y: np.ndarray) -> None:
        """The cross-validated linear head on the feature file `rows` (`_feature_file`): one row per picture,
        or with TTA the mirrored rows after them as extra training rows (CV folds keep both copies of a
        picture together)."""
        views = len(rows) // len(y)
        groups = np.tile(np.arange(len(y)), views)
        t = time.perf_counter()
        self.head_weight_, self.head_bias_, self.C_, self.cv_accuracy_ = fit_linear_head(
            rows, np.tile(y, views), len(self.classes_), groups, self.seed)
        self.timings_["head"] = time.perf_counter() - t

    def _learning_curve(self, rows: RowFile, y: np.ndarray, val_rows: RowFile, y_val: np.ndarray
                        ) -> dict[str, Any]:
        """A logistic-regression head at the chosen C refitted on growing subsets of the training features
        (the first len(y) rows of `rows`), scored on the validation features `val_rows` read a batch at a
        time (base.learning_curve). Subsets up to HEAD_IN_MEMORY rows are fitted in memory by scikit-learn,
        larger ones read from the file (`fit_head_at`)."""
        from .base import learning_curve

        C = float(getattr(self, "C_", None) or 1.0)

        def fit_score(idx: np.ndarray) -> float:
            weight, bias = fit_head_at(rows, y, idx, C, len(self.classes_))
            right = 0
            for pos, F in row_batches(val_rows, STREAM_ROWS):
                right += int(((F @ weight.T + bias).argmax(1) == y_val[pos]).sum())
            return right / len(y_val)

        return learning_curve(fit_score, y, len(y_val), seed=int(self.seed))

    def _fit_finetune(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None,
                      run_dir: Path | None) -> None:
        """LP-FT (Kumar et al., 2022): the head starts from the cross-validated linear probe on cached frozen
        features, i.e. the head warm-up is solved exactly with the backbone frozen, in seconds instead of an
        epoch of forward passes; then everything trains, the backbone at 1/10 of the head's learning rate.
        A random head would send large, noisy gradients into the pretrained features in the first steps."""
        from ..training import BatchAugment, TrainConfig, fit_network

        t0 = time.perf_counter()
        rows = self._feature_file(X)  # the warm-up: linear probe (features cached: a re-run is free)
        try:
            self._fit_frozen(rows, y)
        finally:
            rows.close()
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
        """Backbone features of `X` (an array or the decode cache's lazy PoolRows) in memory, from the feature
        cache where possible (computed and stored otherwise; with `cache=False` computed and nothing written,
        as inference promises). For inference on the pictures at hand; training reads `_feature_file`."""
        out = np.zeros((len(X), self.spec_.num_features), np.float32)
        self._fill_features(out, X, flip, cache)
        return out

    def _feature_file(self, X: np.ndarray, views: int = 1) -> RowFile:
        """The features of `X` in a RowFile (on disk, read back in batches): rows 0..n-1 the pictures, then,
        with views=2, their mirrored copies. Why a file: training walks these rows several times, and an
        (n, 1280) float32 table in memory grows with the collection (5 kB a picture)."""
        out = RowFile(len(X) * views, self.spec_.num_features, default_cache_dir() / "features")
        try:
            for view in range(views):
                self._fill_features(out, X, flip=view == 1, offset=view * len(X))
        except BaseException:
            out.close()
            raise
        return out

    def _fill_features(self, out: np.ndarray | RowFile, X: np.ndarray, flip: bool = False, cache: bool = True,
                       offset: int = 0) -> None:
        """Write the features of `X` into rows offset.. of `out` (an array or a RowFile). Pictures are read
        BATCH_ROWS at a time and each computed batch is stored as it is done; cached rows are copied one
        feature-cache shard at a time: memory holds a batch of pixels or a shard of rows, never the whole
        collection, and an interrupted extraction keeps what it finished."""
        from ..cache import BATCH_ROWS, batches, row_keys, take

        size = self.preprocessing.size
        if np.ndim(X) != 4 or tuple(np.shape(X)[1:]) != (size, size, 3):
            raise PawsightError(f"this model takes {size}x{size} RGB pictures, got an array of shape "
                                f"{np.shape(X)}")
        if not cache:
            for pos, pixels in batches(X):
                out[pos + offset] = self._extractor()(pixels, flip=flip)
            return
        store = feature_store(self.spec_, self.preprocessing, flip)
        keys = row_keys(X)

        def found(pos: np.ndarray, rows: np.ndarray) -> None:
            out[pos + offset] = rows

        todo = np.asarray(store.copy_into(keys, found), np.int64)
        for pos, pixels in batches(take(X, todo), BATCH_ROWS * 4):
            new = self._extractor()(pixels, flip=flip)
            out[todo[pos] + offset] = new
            store.put([keys[i] for i in todo[pos]], new)

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

def fit_linear_head(feats: np.ndarray | RowFile, y: np.ndarray, n_classes: int, groups: np.ndarray,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Multinomial logistic regression on standardised features, C by grouped stratified k-fold CV (log-loss)
    on the training rows only; returned as one (n_classes, d) weight matrix + bias acting on raw features.

    Up to HEAD_IN_MEMORY rows everything happens in memory (scikit-learn). Beyond, memory must not grow with
    the rows: C is chosen by the same cross-validation on a seeded sample of HEAD_IN_MEMORY rows (whole
    groups, every class), and the head at that C is fitted on every row read from `feats` a batch at a time
    (`streamed_logistic`, scikit-learn's objective). C multiplies the summed loss, so the C chosen on the
    sample regularises the full fit less, as more data allows."""
    if len(y) <= HEAD_IN_MEMORY:
        return _fit_linear_head_in_memory(all_rows(feats), y, n_classes, groups, seed)
    mean, scale = row_moments(feats)
    sample = head_sample(y, groups, HEAD_IN_MEMORY, seed)
    Zs = (all_rows(feats)[sample] if isinstance(feats, np.ndarray) else feats.take(sample)) - mean
    Zs = (Zs / scale).astype(np.float32)
    best_C, cv_accuracy = 1.0, float("nan")
    chosen = cross_validated_head(Zs, y[sample], n_classes, groups[sample], seed)
    del Zs
    if chosen is not None:
        best_C, proba = chosen
        cv_accuracy = float((proba.argmax(1) == y[sample]).mean())
    coef, intercept, classes = streamed_logistic(feats, y, best_C, mean, scale)
    weight, bias = raw_head(coef, intercept, classes, mean, scale, n_classes)
    return weight, bias, best_C, cv_accuracy


def _fit_linear_head_in_memory(feats: np.ndarray, y: np.ndarray, n_classes: int, groups: np.ndarray,
                               seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """fit_linear_head on an in-memory table: scikit-learn throughout."""
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
    weight, bias = raw_head(clf.coef_, clf.intercept_, clf.classes_, mean, scale, n_classes)
    return weight, bias, best_C, cv_accuracy


def raw_head(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, mean: np.ndarray,
             scale: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression on standardised features (scikit-learn's coef_/intercept_/classes_ layout) as
    one (n_classes, d) float32 weight + bias acting on raw features; absent classes are never predicted."""
    out_coef = np.zeros((n_classes, coef.shape[1]))
    out_intercept = np.zeros(n_classes)
    if len(classes) == 2:  # sklearn's binary form: one logit z; softmax([-z/2, z/2]) == sigmoid(z)
        out_coef[classes] = np.stack([-coef[0] / 2, coef[0] / 2])
        out_intercept[classes] = [-intercept[0] / 2, intercept[0] / 2]
    else:
        out_coef[classes], out_intercept[classes] = coef, intercept
    absent = np.setdiff1d(np.arange(n_classes), classes)
    out_intercept[absent] = -30.0  # classes without training pictures are never predicted
    weight = out_coef / scale
    bias = out_intercept - weight @ mean
    return weight.astype(np.float32), bias.astype(np.float32)


def fit_head_at(rows: np.ndarray | RowFile, y: np.ndarray, idx: np.ndarray, C: float, n_classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The head at a given C on the rows `idx` (increasing) of `rows` (labels y[idx]), standardised by
    their own mean and scale: in memory (scikit-learn) up to HEAD_IN_MEMORY rows, streamed beyond."""
    if len(idx) <= HEAD_IN_MEMORY:
        from sklearn.linear_model import LogisticRegression

        F = rows.take(idx) if isinstance(rows, RowFile) else np.asarray(rows)[idx]
        mean, scale = F.mean(0), F.std(0) + 1e-6
        clf = LogisticRegression(C=C, max_iter=2000).fit((F - mean) / scale, y[idx])
        return raw_head(clf.coef_, clf.intercept_, clf.classes_, mean, scale, n_classes)
    mean, scale = row_moments(rows, idx)
    coef, intercept, classes = streamed_logistic(rows, y, C, mean, scale, idx, tol=1e-4)
    return raw_head(coef, intercept, classes, mean, scale, n_classes)


def row_moments(rows: np.ndarray | RowFile, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std + 1e-6) of the rows (or rows `idx`) in one streamed pass, float64 sums (shifted by the first
    row, so large means do not cancel the variance)."""
    total, squares, n = 0.0, 0.0, 0
    shift: np.ndarray | None = None
    for _, F in row_batches(rows, STREAM_ROWS, idx):
        F = F.astype(np.float64)
        shift = F[0].copy() if shift is None else shift
        F -= shift
        total, squares, n = total + F.sum(0), squares + (F * F).sum(0), n + len(F)
    assert shift is not None
    mean = total / n
    return shift + mean, np.sqrt(np.maximum(squares / n - mean * mean, 0)) + 1e-6


def head_sample(y: np.ndarray, groups: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Increasing row positions of a seeded sample of whole groups (a picture and its mirrored copy stay
    together), about `limit` rows, each class in its share of the groups (at least 10 groups where it has
    them, so the cross-validation sees every class)."""
    rng = np.random.default_rng(seed)
    first = np.unique(groups, return_index=True)[1]  # one row per group: its label
    unique_groups, labels = groups[first], y[first]
    per_group = len(y) / len(unique_groups)
    want = limit / per_group / len(unique_groups)
    chosen = []
    for c in np.unique(labels):
        members = unique_groups[labels == c]
        k = min(len(members), max(10, int(round(want * len(members)))))
        chosen.append(rng.choice(members, k, replace=False))
    return np.flatnonzero(np.isin(groups, np.concatenate(chosen)))


def streamed_logistic(rows: np.ndarray | RowFile, y: np.ndarray, C: float, mean: np.ndarray,
                      scale: np.ndarray, idx: np.ndarray | None = None, tol: float = 1e-5,
                      max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coef_, intercept_, classes_) of scikit-learn's LogisticRegression(C, lbfgs) on (rows - mean) / scale,
    the rows (or rows `idx`, increasing) read STREAM_ROWS at a time for every evaluation of the objective:
    memory is one batch, whatever the number of rows.

    The objective is scikit-learn's: mean log-loss + ||W||^2 / (2 C n), the intercept not penalised, binary
    (one logit) for two classes and multinomial beyond; L-BFGS-B with scikit-learn's gradient tolerance.
    Standardisation is folded into the weights (z = x @ (W / scale).T + b - (W / scale) @ mean), so no
    standardised copy of a batch is made."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp

    positions = np.arange(len(rows)) if idx is None else np.asarray(idx, np.int64)
    classes = np.unique(y[positions])
    code = np.searchsorted(classes, y)  # per row: its class's place among the present ones
    n, d = len(positions), rows.shape[1]
    out = 1 if len(classes) == 2 else len(classes)
    inv = 1.0 / scale

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:out * d].reshape(out, d), theta[out * d:]
        Wr = W * inv
        br = b - Wr @ mean
        loss, A, G = 0.0, np.zeros((out, d)), np.zeros(out)
        for pos, F in row_batches(rows, STREAM_ROWS, idx):
            F = F.astype(np.float64)
            z, t = F @ Wr.T + br, code[pos]
            if out == 1:
                sign = 2.0 * t - 1.0  # +1 for the second class
                margin = sign * z[:, 0]
                loss += float(np.logaddexp(0, -margin).sum())
                g = (-sign * expit(-margin))[:, None]
            else:
                lse = logsumexp(z, axis=1)
                loss += float((lse - z[np.arange(len(t)), t]).sum())
                g = np.exp(z - lse[:, None])
                g[np.arange(len(t)), t] -= 1.0
            A += g.T @ F
            G += g.sum(0)
        grad_W = (A - G[:, None] * mean) * inv / n + W / (C * n)
        value = loss / n + float((W * W).sum()) / (2 * C * n)
        return value, np.concatenate([grad_W.ravel(), G / n])

    result = minimize(objective, np.zeros(out * d + out), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                               "ftol": 64 * np.finfo(float).eps})
    theta = result.x
    return theta[:out * d].reshape(out, d), theta[out * d:], classes


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


def mean_of_views(rows: RowFile, n: int, views: int) -> RowFile:
    """A RowFile of n rows, each the mean of a picture's `views` rows in `rows` (picture i at i, n + i, ...):
    the features the inference module averages over its TTA views, computed a batch at a time."""
    out = RowFile(n, rows.shape[1], rows.dir)
    for start in range(0, n, STREAM_ROWS):
        stop = min(start + STREAM_ROWS, n)
        out[start:stop] = sum(rows.read(start + v * n, stop + v * n) for v in range(views)) / views
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- the feature cache ------------------------------------------------------------------------------------

def feature_store(spec: BackboneSpec, prep: Preprocessing, flip: bool) -> RowStore:
    """Cached backbone features: `<cache>/features/<arch>-<weights hash>-<prep>[-flip]/`."""
    name = f"{spec.arch}-{spec.weights_hash[:16]}-{prep.key}" + ("-flip" if flip else "")
    return RowStore(default_cache_dir() / "features" / name, dim=spec.num_features)
