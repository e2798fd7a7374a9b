"""Classical machine learning: hand-made features (features.py) + a scikit-learn pipeline.

    model = ClassicalClassifier()                                     # the measured default recipe
    model = ClassicalClassifier(features="hog", model="linear-svm")   # the textbook floor
    model = ClassicalClassifier(model="forest", search=True)          # cross-validated search on train
    model.fit(X, y, classes=["cats", "dogs"]); model.predict_proba(X)

The pipeline is BlockScaler (standardise, then weight each extractor's block equally) -> optional PCA -> one
of MODELS. Probabilities: native for logreg, knn, forest and boosting; for the SVMs a softmax of the decision
values with a slope and offsets fitted on cross-validated decision values (MarginCalibrated: Platt scaling
whose slope cannot turn negative, so the probabilities never contradict the SVM on small data sets).
With `flip=True` (default) each training picture also counts mirrored: a cat facing left is still a cat, and
cross-validation on the training split gained 1.1 points (79.1% -> 80.2%) for ~30 s more training. With
`tta=True` predictions also average each picture with its mirror image (twice the prediction time).

Large training sets (svm-rbf): `kernel="auto"` (default) uses the exact RBF SVM up to EXACT_SVM_MAX training
rows (pictures, twice that with flip) and above it an approximate RBF kernel: Nystroem features (the SVC's
gamma rule, `components` landmarks, default APPROX_COMPONENTS) + a calibrated ridge classifier, with the
features streamed CHUNK_ROWS rows at a time so memory does not grow with the raw features
(`_fit_approx`). `kernel="exact"` or `kernel="approx"` forces a path, `exact_max=N` moves the threshold
(`pawsight train ... --set kernel=approx`, `--set exact_max=50000`). model.json records the path taken and
the rule under "kernel".

Saved without pickle: `model.json` holds the parameters, feature specs, a readable description of each
pipeline step and the structure of every fitted estimator; `model.safetensors` holds all learned arrays
(scaler means, PCA components, support vectors, trees' node arrays, the visual-word vocabulary, ...).
Loading rebuilds only classes from an explicit allow-list (ALLOWED), checks the file hash, shapes and a test
prediction, and refuses anything else with a PawsightError; nothing named in the files is ever imported or
called unless allow-listed.
"""

from __future__ import annotations

import copyreg
import importlib
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin

from ..cache import as_rows, mirrored
from ..errors import PawsightError, damaged_file_errors
from ..features import Extractor, create_feature, extract, parse_features
from ..images import Preprocessing
from ..options import check_number
from ..progress import bar
from .base import ImageClassifier, read_model_files, write_model_files

FORMAT = 1
MODELS = ("svm-rbf", "linear-svm", "logreg", "knn", "forest", "boosting")
# PCA in front of models that are slow on thousands of dimensions (boosting bins and scans every column).
# And in front of the RBF SVM: 256 components keep its cross-validated accuracy (79.1% vs 78.9% on
# cats-and-dogs train) and make its kernel evaluations ~40x cheaper than on ~10 000 raw columns.
DEFAULT_PCA = {"svm-rbf": 256, "boosting": 64}
# What `search=True` tries, default first: (pipeline parameter, values), cross-validated on the training set.
SEARCH_GRIDS: dict[str, tuple[str, list[Any]]] = {
    "svm-rbf": ("model__estimator__C", [3.0, 1.0, 10.0, 0.3]),
    "svm-rbf-approx": ("model__estimator__alpha", [1.0, 0.3, 3.0, 0.1]),  # the approximate kernel's ridge
    "linear-svm": ("model__estimator__C", [0.1, 0.03, 0.3, 0.01, 1.0]),
    "logreg": ("model__C", [1.0, 0.3, 3.0, 0.1, 10.0]),
    "knn": ("model__n_neighbors", [20, 10, 40, 5]),
    "forest": ("model__max_features", ["sqrt", 0.02, 0.05, "log2"]),
    "boosting": ("model__learning_rate", [0.1, 0.05, 0.2]),
}
# Chosen by 3-fold cross-validation on the cats-and-dogs TRAIN split with hog,color,lbp,daisy features; after
# BlockScaler every extractor's block has a total variance of 1, so these are ordinary values for unit-scale
# data.
DEFAULT_C = {"svm-rbf": 3.0, "linear-svm": 0.1, "logreg": 1.0}

# -- svm-rbf at scale ------------------------------------------------------------------------------------
# The exact RBF SVM costs ~rows^1.3 time and holds every feature row (float32, then float64 in the scaler)
# in memory: 8,000 training pictures (16,000 rows with mirrored copies) took 610 s and 5.9 GB. The rule:
# above EXACT_SVM_MAX training rows (mirrored copies included), `svm-rbf` with kernel="auto" (the default)
# becomes an approximate RBF kernel (APPROX, see ClassicalClassifier._fit_approx): BlockScaler and PCA fitted
# on APPROX_FIT_ROWS random rows, Nystroem features of the SVC's own kernel (same gamma rule as its "scale")
# with `components` landmarks, then a linear learner on those features, all rows streamed CHUNK_ROWS at a
# time from the feature cache. `kernel="exact"` / `kernel="approx"` force either path; `exact_max` moves the
# threshold. Measured: see benchmarks/bench_classical.py --scale and docs/benchmarks.md.
# Measured (bench classical --scale, 2000 training pictures, load ~1.6): exact 81.9% val, fit 141 s, peak
# 1879 MB; approx 80.5%, 92 s, 1504 MB. 12,000 is a provisional threshold, not yet a measured crossover.
EXACT_SVM_MAX = 12_000
# Components and the learner chosen by 3-fold cross-validation on the cats-and-dogs TRAIN split (features
# hog,color,lbp,daisy + mirrored copies, PCA 256, ridge alpha=1): 1000 components 78.7%, 1500 79.6%, 2000
# 79.8%; the exact SVM 79.6% (benchmarks: 2026-12-04, load ~1-2).
APPROX_COMPONENTS = 1500
APPROX_ALPHA = 1.0
APPROX_FIT_ROWS = 6000
CHUNK_ROWS = 2048
KERNELS = ("auto", "exact", "approx")


class ClassicalClassifier(ImageClassifier):
    approach = "classical"

    def __init__(self, features: str = "hog,color,lbp,daisy", model: str = "svm-rbf", size: int = 128,
                 mode: str = "squash", flip: bool = True, tta: bool = False, pca: int | float | None = None,
                 C: float | None = None, search: bool = False, search_budget: float = 120.0, seed: int = 0,
                 n_jobs: int | None = None, cache_features: bool = True, kernel: str = "auto",
                 exact_max: int = EXACT_SVM_MAX, components: int = APPROX_COMPONENTS) -> None:
        self.features = features
        self.model = model
        self.size = size
        self.mode = mode
        self.flip = flip
        self.tta = tta
        self.pca = pca
        self.C = C
        self.search = search
        self.search_budget = search_budget
        self.seed = seed
        self.n_jobs = n_jobs
        self.cache_features = cache_features
        self.kernel = kernel
        self.exact_max = exact_max
        self.components = components

    # -- configuration -----------------------------------------------------------------------------------
    @property
    def preprocessing(self) -> Preprocessing:
        """Squash (keep the whole picture) at 128 px by default: the features look at 128 px grey images."""
        try:
            return Preprocessing(size=int(self.size), mode=self.mode)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise PawsightError(str(exc)) from None

    def check_params(self) -> None:
        super().check_params()  # size, C, seed, search_budget: options.LIMITS
        if self.model not in MODELS:
            raise PawsightError(f"unknown classical model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.kernel not in KERNELS:
            raise PawsightError(f"kernel must be one of {', '.join(KERNELS)} (svm-rbf: exact SVM, "
                                f"approximate Nystroem kernel, or chosen by the training set's size), "
                                f"got {self.kernel!r}")
        if self.kernel == "approx" and self.model != "svm-rbf":
            raise PawsightError(f"kernel=approx is for model svm-rbf, not {self.model}")
        check_number("exact_max", self.exact_max, integer=True, minimum=0, optional=False)
        check_number("components", self.components, integer=True, minimum=2, maximum=20_000, optional=False)
        self.preprocessing  # noqa: B018 - an unknown resize mode is refused here, before any decoding
        parse_features(self.features)  # unknown or repeated names: one line now, not after decoding
        if self.n_jobs is not None and (isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int)
                                        or self.n_jobs == 0):
            raise PawsightError(f"n_jobs must be a whole number of processes (-1: all cores), "
                                f"got {self.n_jobs!r}")
        if self.pca is not None and not (isinstance(self.pca, int | float) and not isinstance(self.pca, bool)
                                         and math.isfinite(self.pca) and self.pca >= 0):
            raise PawsightError(f"pca must be a number of components, a variance fraction or 0, "
                                f"got {self.pca!r}")
        if isinstance(self.pca, float) and not self.pca.is_integer() and not 0 < self.pca < 1:
            raise PawsightError(f"a fractional pca keeps that share of variance and must be in (0, 1), "
                                f"got {self.pca}")

    def _check_pca(self, n_samples: int, n_features: int) -> None:
        """Refuse a `pca` number of components the data cannot give: PCA keeps at most as many components
        as there are rows (training pictures, mirrored copies included) or features. Our own default is
        quietly fitted to the data; a value the user chose used to be clamped just as quietly."""
        if self.pca is None or isinstance(self.pca, bool) or float(self.pca) < 1:
            return
        most = min(n_samples, n_features)
        if int(self.pca) > most:
            raise PawsightError(f"pca must be between 1 and {most} components for this data (at most the "
                                f"{n_samples} training rows and {n_features} features), got {int(self.pca)}; "
                                "or a variance fraction such as pca=0.95")

    def _pca_components(self) -> int | float | None:
        pca = DEFAULT_PCA.get(self.model) if self.pca is None else self.pca
        if not pca:
            return None
        return int(pca) if float(pca) >= 1 else float(pca)

    def _blocks(self, n_features: int) -> list[int]:
        widths = getattr(self, "block_widths_", None)
        return list(widths) if widths and sum(widths) == n_features else [n_features]

    def build_pipeline(self, n_samples: int, n_features: int, approx: bool = False):
        """The unfitted scikit-learn pipeline this model's parameters describe; `approx`: svm-rbf's
        approximate kernel (scale, pca, kernel = Nystroem, model = a linear learner)."""
        from sklearn.decomposition import PCA
        from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier
        from sklearn.kernel_approximation import Nystroem
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.svm import SVC, LinearSVC

        seed = int(self.seed)
        C = float(self.C) if self.C is not None else DEFAULT_C.get(self.model, 1.0)
        n_jobs = self.n_jobs
        # neighbours: the classic sqrt(n) rule, capped at the 20 that cross-validation on 2000 pictures chose
        k = int(min(20, max(1, round(math.sqrt(n_samples)))))
        estimator = {
            "svm-rbf": lambda: MarginCalibrated(SVC(C=C, kernel="rbf", gamma="scale", cache_size=500),
                                                seed=seed),
            "linear-svm": lambda: MarginCalibrated(LinearSVC(C=C, dual="auto", max_iter=5000), seed=seed),
            "logreg": lambda: LogisticRegression(C=C, max_iter=3000),
            "knn": lambda: KNeighborsClassifier(n_neighbors=k, weights="distance", algorithm="brute"),
            "forest": lambda: ExtraTreesClassifier(n_estimators=300, max_features="sqrt", n_jobs=n_jobs,
                                                   random_state=seed),
            "boosting": lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1,
                                                               early_stopping=False, random_state=seed),
        }[self.model]()
        steps: list[tuple[str, Any]] = [("scale", BlockScaler(blocks=self._blocks(n_features)))]
        pca = self._pca_components()
        if pca is not None:
            if isinstance(pca, int):
                pca = min(pca, n_samples, n_features)
            steps.append(("pca", PCA(n_components=pca, random_state=seed)))
        if approx:
            # gamma and the number of components are set from the data in _fit_approx
            steps.append(("kernel", Nystroem(kernel="rbf", n_components=int(self.components),
                                             random_state=seed)))
            estimator = approx_learner(C, seed)
        steps.append(("model", estimator))
        return Pipeline(steps)

    # -- learning -------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None, *, classes: list[str], run_dir: Path | None = None,
            ) -> ClassicalClassifier:
        """Learn the features' state (visual words), extract features, optionally search, fit the pipeline.

        The validation pictures are not used: choices are made by cross-validation on the training set."""
        self.check_params()
        y = np.asarray(y, dtype=np.int64)
        if len(classes) < 2 or len(np.unique(y)) < 2:
            raise PawsightError("the classical approach needs pictures of at least two classes")
        self._check_images(X)
        self.timings_: dict[str, float] = {}
        self.classes_ = list(classes)
        self.extractors_ = parse_features(self.features)

        t = time.perf_counter()
        for e in self.extractors_:
            if e.stateful:
                e.fit(X, seed=int(self.seed), n_jobs=self.n_jobs)
        self.timings_["features.fit"] = time.perf_counter() - t
        self.block_widths_ = self._widths()
        self.kernel_, self.kernel_rule_ = self._choose_kernel(len(y) * (2 if self.flip else 1))
        if self.kernel_ == "approx":
            return self._fit_approx(X, y, X_val, y_val)
        t = time.perf_counter()
        F = self._extract(X)
        groups = np.arange(len(y))
        if self.flip:
            F = np.concatenate([F, self._extract(mirrored(X))])
            y, groups = np.concatenate([y, y]), np.concatenate([groups, groups])
        self.timings_["extract"] = time.perf_counter() - t
        self.n_features_ = int(F.shape[1])
        self._check_pca(len(F), F.shape[1])

        self.pipeline_ = self.build_pipeline(len(F), F.shape[1])
        self.search_results_: list[dict[str, Any]] = []
        if self.search:
            t = time.perf_counter()
            self._search(F, y, groups)
            self.timings_["search"] = time.perf_counter() - t
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # e.g. LinearSVC convergence chatter
            self.pipeline_.fit(F, y, **self._fit_groups(groups))
        self.timings_["fit"] = time.perf_counter() - t
        self.learning_curve_ = None
        if X_val is not None and y_val is not None and len(y_val):
            t = time.perf_counter()
            self.learning_curve_ = self._learning_curve(F, y, groups, self._extract(X_val), np.asarray(y_val))
            self.timings_["learning_curve"] = time.perf_counter() - t
        return self

    def _choose_kernel(self, n_rows: int) -> tuple[str | None, str]:
        """("exact" or "approx", the rule that chose it) for svm-rbf; (None, "") for the other models."""
        if self.model != "svm-rbf":
            return None, ""
        if self.kernel != "auto":
            return self.kernel, f"kernel={self.kernel} was asked for"
        limit = int(self.exact_max)
        if n_rows > limit:
            return "approx", (f"{n_rows} training rows (mirrored copies included) > exact_max={limit}: "
                              f"approximate RBF kernel (Nystroem, {int(self.components)} components) + "
                              f"ridge classifier")
        return "exact", (f"{n_rows} training rows (mirrored copies included) <= exact_max={limit}: "
                         "exact RBF SVM")

    def _fit_approx(self, X: Any, y: np.ndarray, X_val: Any, y_val: np.ndarray | None,
                    ) -> ClassicalClassifier:
        """svm-rbf with an approximate kernel; memory: CHUNK_ROWS feature rows + the kernel features.

        1. BlockScaler, PCA and the Nystroem landmarks are fitted on APPROX_FIT_ROWS random training rows;
        2. every row (mirrored copies too) is extracted CHUNK_ROWS at a time (written to the feature cache)
           and mapped to its `components` kernel features (float32): 20,000 pictures x 2 x 1500 = 240 MB,
           where their raw features would take 3 GB (float32);
        3. the linear learner (MarginCalibrated, as for the exact SVM) is fitted on the kernel features."""
        from sklearn.pipeline import Pipeline

        from ..cache import take

        X = as_rows(X)
        sources = [X, mirrored(X)] if self.flip else [X]
        n = len(y)
        n_rows = n * len(sources)
        y_rows = np.tile(y, len(sources))
        groups = np.tile(np.arange(n), len(sources))

        def features(rows: np.ndarray) -> np.ndarray:
            """Features of training rows `rows` (sorted; row k*n + i is picture i, mirrored if k = 1)."""
            parts = []
            for k, src in enumerate(sources):
                idx = rows[(rows >= k * n) & (rows < (k + 1) * n)] - k * n
                if len(idx):
                    parts.append(self._extract(take(src, idx)))
            return np.concatenate(parts)

        t = time.perf_counter()
        rng = np.random.default_rng(int(self.seed))
        fit_rows = np.sort(rng.choice(n_rows, size=min(n_rows, APPROX_FIT_ROWS), replace=False))
        F = features(fit_rows)
        self.n_features_ = int(F.shape[1])
        self._check_pca(len(F), F.shape[1])
        pipeline = self.build_pipeline(len(F), F.shape[1], approx=True)
        head = Pipeline(pipeline.steps[:-2])  # scale (+ pca): the same objects, fitted in place
        Z = head.fit_transform(F)
        del F
        # the SVC's gamma="scale": 1 / (columns x variance) of what the kernel sees
        variance = float(Z.var())
        kernel = pipeline.named_steps["kernel"]
        kernel.set_params(gamma=1.0 / (Z.shape[1] * variance) if variance > 0 else 1.0,
                          n_components=min(int(self.components), len(Z)))
        kernel.fit(Z)
        del Z
        self.timings_["fit.transformers"] = time.perf_counter() - t

        t = time.perf_counter()
        K = np.empty((n_rows, kernel.components_.shape[0]), np.float32)
        for start in range(0, n_rows, CHUNK_ROWS):
            rows = np.arange(start, min(start + CHUNK_ROWS, n_rows))
            K[rows] = kernel.transform(head.transform(features(rows)))
        self.timings_["extract"] = time.perf_counter() - t

        final = Pipeline([("model", pipeline.named_steps["model"])])
        self.pipeline_ = final
        self.search_results_ = []
        if self.search:
            t = time.perf_counter()
            self._search(K, y_rows, groups)  # sets the best value on `final`'s (= pipeline's) learner
            self.timings_["search"] = time.perf_counter() - t
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            final.fit(K, y_rows, **self._fit_groups(groups))
        self.timings_["fit"] = time.perf_counter() - t
        self.pipeline_ = pipeline
        self.learning_curve_ = None
        if X_val is not None and y_val is not None and len(y_val):
            t = time.perf_counter()
            X_val = as_rows(X_val)
            K_val = np.concatenate([
                kernel.transform(head.transform(self._extract(take(X_val, np.arange(i, min(i + CHUNK_ROWS,
                                                                                          len(X_val)))))))
                for i in range(0, len(X_val), CHUNK_ROWS)]).astype(np.float32)
            self.pipeline_ = final  # the curve refits the learner on the kernel features of growing subsets
            try:
                self.learning_curve_ = self._learning_curve(K, y_rows, groups, K_val, np.asarray(y_val))
            finally:
                self.pipeline_ = pipeline
            self.timings_["learning_curve"] = time.perf_counter() - t
        return self

    def _learning_curve(self, F: np.ndarray, y: np.ndarray, groups: np.ndarray, F_val: np.ndarray,
                        y_val: np.ndarray) -> dict[str, Any]:
        """The final pipeline's settings refitted on growing subsets of the training pictures (mirrored
        copies follow their picture; no new search; probability calibration off, as it does not change the
        curve's shape), scored on the validation pictures: base.learning_curve."""
        from sklearn.base import clone

        from .base import learning_curve

        base = clone(self.pipeline_)
        if hasattr(base.named_steps["model"], "cv"):
            base.set_params(model__cv=1)
        n = int(groups.max()) + 1  # pictures (rows beyond n are their mirrored copies)

        def fit_score(idx: np.ndarray) -> float:
            rows = np.flatnonzero(np.isin(groups, idx))
            est = clone(base)
            if "pca" in est.named_steps and isinstance(est.named_steps["pca"].n_components, int):
                est.set_params(pca__n_components=min(est.named_steps["pca"].n_components, len(rows) - 1))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)
                est.fit(F[rows], y[rows])
            return float((np.asarray(est.predict(F_val)) == y_val).mean())

        return learning_curve(fit_score, y[:n], len(y_val), seed=int(self.seed))

    def _fit_groups(self, groups: np.ndarray) -> dict[str, np.ndarray]:
        """Route picture ids to the SVMs' calibration folds, so mirrored copies stay with their picture."""
        return {"model__groups": groups} if self.model in ("svm-rbf", "linear-svm") else {}

    def _search(self, F: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
        """Try SEARCH_GRIDS[model] by 3-fold cross-validation on the training features (mirrored copies stay
        in their picture's fold) until `search_budget` seconds are spent; keep the best mean accuracy."""
        from sklearn.base import clone
        from sklearn.model_selection import StratifiedGroupKFold

        name, values = SEARCH_GRIDS[self.model + ("-approx" if getattr(self, "kernel_", None) == "approx"
                                                  else "")]
        if self.C is not None and name.endswith("__C"):
            values = [float(self.C)] + [v for v in values if v != float(self.C)]
        counts = np.bincount(y)
        folds = int(min(3, counts[counts > 0].min()))
        if folds < 2:
            return
        cv = StratifiedGroupKFold(folds, shuffle=True, random_state=int(self.seed))
        splits = list(cv.split(F, y, groups))
        start = time.perf_counter()
        best = (-1.0, values[0])
        with bar(total=len(values), desc=f"search {name.split('__')[-1]}", unit="candidate") as progress_bar:
            for value in values:
                scores = []
                for train, test in splits:
                    est = clone(self.pipeline_).set_params(**{name: value})
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", category=UserWarning)
                        est.fit(F[train], y[train], **self._fit_groups(groups[train]))
                    scores.append(float((est.predict(F[test]) == y[test]).mean()))
                score = float(np.mean(scores))
                self.search_results_.append({"param": name, "value": value, "cv_accuracy": round(score, 4)})
                best = max(best, (score, value), key=lambda s: s[0])
                progress_bar.update(1)
                if time.perf_counter() - start > float(self.search_budget):
                    break
        self.pipeline_.set_params(**{name: best[1]})
        self.best_params_ = {name: best[1]}
        self.cv_accuracy_ = best[0]

    # -- inference --------------------------------------------------------------------------------------
    def _check_images(self, X: np.ndarray) -> None:
        size = self.preprocessing.size
        if np.ndim(X) != 4 or tuple(np.shape(X)[1:]) != (size, size, 3):
            raise PawsightError(f"this model takes {size}x{size} RGB pictures, got an array of shape "
                                f"{np.shape(X)}")

    def _widths(self) -> list[int]:
        """Numbers per picture of each extractor, in order (what BlockScaler balances)."""
        probe = np.zeros((self.preprocessing.size, self.preprocessing.size, 3), np.uint8)
        return [len(e.extract_one(probe)) for e in self.extractors_]

    def _extract(self, X: np.ndarray, cache: bool | str = True) -> np.ndarray:
        """Features of `X`; `cache="read"` uses cached features but writes none (inference)."""
        use = cache if self.cache_features else False
        return extract(self.extractors_, as_rows(X), n_jobs=self.n_jobs, cache=use)

    def _proba(self, F: np.ndarray) -> np.ndarray:
        """Probabilities over all classes_, zero for classes that had no training pictures."""
        out = np.zeros((len(F), len(self.classes_)))
        out[:, np.asarray(self.pipeline_.classes_, dtype=np.int64)] = self.pipeline_.predict_proba(F)
        return out

    def predict_proba(self, X: np.ndarray, cache: bool | str = True) -> np.ndarray:
        """Class probabilities; `cache="read"` (what pawsight.inference uses) writes no feature cache."""
        if len(X) == 0:
            return np.zeros((0, len(self.classes_)))
        self._check_images(X)
        t = time.perf_counter()
        proba = self._proba(self._extract(X, cache))
        if self.tta:
            proba = (proba + self._proba(self._extract(mirrored(X), cache))) / 2
        self.timings_ = {**getattr(self, "timings_", {}), "predict": time.perf_counter() - t}
        return proba

    # -- persistence --------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        from safetensors.numpy import save

        directory = Path(directory)
        arrays: dict[str, np.ndarray] = {}
        for i, e in enumerate(self.extractors_):
            arrays.update({f"features.{i}.{k}": np.ascontiguousarray(v) for k, v in e.get_state().items()})
        state = encode(self.pipeline_, arrays, "pipeline")
        blob = save(arrays)
        description = {
            "format": FORMAT, "approach": self.approach, "classes": self.classes_,
            "params": self.get_params(),
            "preprocessing": self.preprocessing.to_dict(),
            "features": [e.spec() for e in self.extractors_],
            "n_features": self.n_features_,
            "pipeline": describe(self.pipeline_),
            "search": getattr(self, "search_results_", []),
            # svm-rbf: which kernel was used and the rule that chose it (EXACT_SVM_MAX)
            **({"kernel": {"path": self.kernel_, "rule": self.kernel_rule_}}
               if getattr(self, "kernel_", None) else {}),
            "state": state,
        }
        write_model_files(directory, blob, description)

    @classmethod
    def load(cls, directory: Path) -> ClassicalClassifier:
        from safetensors.numpy import load

        directory = Path(directory)
        d, blob = read_model_files(directory, cls.approach, FORMAT)
        try:
            arrays = load(blob)
            model = cls(**d["params"])
            model.check_params()
            model.classes_ = [str(c) for c in d["classes"]]
            model.extractors_ = [_load_extractor(spec, i, arrays) for i, spec in enumerate(d["features"])]
            model.n_features_ = int(d["n_features"])
            model.pipeline_ = decode(d["state"], arrays)
            kernel = d.get("kernel") if isinstance(d.get("kernel"), dict) else {}
            model.kernel_, model.kernel_rule_ = kernel.get("path"), str(kernel.get("rule", ""))
            model._verify()
        except PawsightError as exc:
            raise PawsightError(f"the classical model in {directory} cannot be used: {exc}") from None
        except damaged_file_errors() as exc:  # a tampered file reads as one sentence; bugs stay bugs
            raise PawsightError(f"the classical model in {directory} is damaged or incompatible: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                                ) from None
        return model

    def _verify(self) -> None:
        """Refuse a loaded model whose parts do not fit together, before it is used on real pictures."""
        from sklearn.pipeline import Pipeline

        if not isinstance(self.pipeline_, Pipeline):
            raise PawsightError("the saved state is not a scikit-learn pipeline")
        width = sum(self._widths())
        if width != self.n_features_ or getattr(self.pipeline_, "n_features_in_", width) != width:
            raise PawsightError(f"its features give {width} numbers per picture but the pipeline expects "
                                f"{getattr(self.pipeline_, 'n_features_in_', '?')}")
        known = np.asarray(self.pipeline_.classes_)
        if known.dtype.kind not in "iu" or known.min() < 0 or known.max() >= len(self.classes_):
            raise PawsightError("the pipeline's classes do not match the model's class list")
        p = self.pipeline_.predict_proba(np.zeros((1, width), np.float32))
        if p.shape != (1, len(known)) or not np.isfinite(p).all():
            raise PawsightError("a test prediction failed")


def approx_learner(C: float, seed: int = 0) -> Any:
    """The linear learner on svm-rbf's approximate kernel features: a least-squares (ridge) classifier with
    alpha = APPROX_ALPHA * DEFAULT_C / C, calibrated as the exact SVM is (MarginCalibrated).

    Why ridge: its solution is one (components x components) system, in float32 on the kernel features
    (no copy); LinearSVC's liblinear copies a dense input into 16-byte sparse nodes (40,000 x 1500 rows:
    ~1 GB more). Cross-validated on the cats-and-dogs TRAIN split (3 folds, mirrored copies with their
    picture), 1500 components: ridge alpha=1 79.6%, alpha=10 77.6%, LinearSVC C=3 79.4%, logistic C=3 79.4%,
    the exact SVM 79.6%."""
    from sklearn.linear_model import RidgeClassifier

    return MarginCalibrated(RidgeClassifier(alpha=APPROX_ALPHA * DEFAULT_C["svm-rbf"] / C, solver="cholesky"),
                            seed=seed)


class BlockScaler(TransformerMixin, BaseEstimator):
    """Standardise every column, then weight each feature block (one extractor's columns) by 1/sqrt(width).

    Why: after plain standardisation a block contributes its width to squared distances and dot products, so
    8100 HOG numbers would drown 540 colour numbers; weighted, each kind of feature has the same total
    variance. Cross-validated on the cats-and-dogs training split this beat plain standardisation (see
    benchmarks/bench_classical.py)."""

    def __init__(self, blocks: list[int] | None = None) -> None:
        self.blocks = blocks

    def fit(self, X: np.ndarray, y: Any = None) -> BlockScaler:
        X = np.asarray(X, dtype=np.float64)
        blocks = list(self.blocks or [X.shape[1]])
        if sum(blocks) != X.shape[1]:
            raise ValueError(f"blocks {blocks} do not add up to {X.shape[1]} features")
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        std[std < 1e-8] = 1.0  # constant columns stay at zero
        self.scale_ = std * np.repeat(np.sqrt(np.asarray(blocks, np.float64)), blocks)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features, got an array of shape {X.shape}")
        return (X - self.mean_) / self.scale_


class MarginCalibrated(ClassifierMixin, BaseEstimator):
    """An SVM with probabilities: softmax(a * decision + b), a >= 0 and b fitted (log-loss) to decision values
    from `cv`-fold cross-validation on the training set, then the SVM refitted on everything.

    Why not CalibratedClassifierCV: its sigmoid may get a negative slope when the cross-validated decision
    values are poor (a few dozen pictures), which turns every prediction around; here the worst case is
    a = 0 (no confidence), and the predicted class follows the SVM. `groups` keeps a picture and its mirror
    image in the same fold."""

    def __init__(self, estimator: Any = None, cv: int = 3, seed: int = 0) -> None:
        self.estimator = estimator
        self.cv = cv
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> MarginCalibrated:
        from scipy.optimize import minimize
        from sklearn.base import clone
        from sklearn.model_selection import StratifiedGroupKFold

        y = np.asarray(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        counts = np.bincount(codes)
        folds = int(min(self.cv, counts.min()))
        scores = np.zeros((len(y), len(self.classes_)))
        valid = np.zeros(len(y), bool)
        if folds >= 2:
            cv = StratifiedGroupKFold(folds, shuffle=True, random_state=self.seed)
            for train, test in cv.split(X, codes, groups):
                est = clone(self.estimator).fit(X[train], codes[train])
                if len(np.unique(codes[train])) == len(self.classes_):
                    scores[test], valid[test] = self._margins(est, X[test]), True
        self.estimator_ = clone(self.estimator).fit(X, codes)
        k = len(self.classes_)
        self.slope_, self.offset_ = 1.0, np.zeros(k)
        if valid.sum() >= 2:
            S, t = scores[valid], codes[valid]

            def loss(params: np.ndarray) -> float:
                z = params[0] * S + params[1:]
                z -= z.max(axis=1, keepdims=True)
                return float(-(z[np.arange(len(t)), t] - np.log(np.exp(z).sum(axis=1))).mean()
                             + 1e-4 * (params[1:] ** 2).sum())

            bounds = [(0.0, 100.0)] + [(-20.0, 20.0)] * k
            result = minimize(loss, np.r_[1.0, np.zeros(k)], method="L-BFGS-B", bounds=bounds)
            self.slope_, self.offset_ = float(result.x[0]), np.asarray(result.x[1:], np.float64)
        return self

    @staticmethod
    def _margins(est: Any, X: np.ndarray) -> np.ndarray:
        """Decision values as one column per class (binary SVMs give one signed column: -d/2, +d/2)."""
        d = np.asarray(est.decision_function(X), np.float64)
        return np.stack([-d / 2, d / 2], axis=1) if d.ndim == 1 else d

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self._margins(self.estimator_, X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.slope_ * self.decision_function(X) + self.offset_
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def _load_extractor(spec: dict[str, Any], i: int, arrays: dict[str, np.ndarray]) -> Extractor:
    e = create_feature(spec["name"], **spec.get("params", {}))
    if spec.get("version") != e.version:
        raise PawsightError(f"its {spec['name']} feature is version {spec.get('version')}, this pawsight "
                            f"computes version {e.version}")
    prefix = f"features.{i}."
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if state or e.stateful:
        e.set_state(state)
    return e


# -- saving scikit-learn estimators without pickle ---------------------------------------------------------
# An object is stored as {"__object__": "module.Class", "state": ...} from its __reduce_ex__ protocol, arrays
# go to safetensors under their path. Only the classes and reconstructors below are ever rebuilt.

ALLOWED = {
    "pawsight.models.classical.BlockScaler",
    "pawsight.models.classical.MarginCalibrated",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.decomposition._pca.PCA",
    "sklearn.kernel_approximation.Nystroem",
    "sklearn.svm._classes.SVC",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._ridge.RidgeClassifier",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
}
# Cython's generated unpicklers for the loss objects: (class, checksum, state) -> object.
ALLOWED_CALLS = {"sklearn._loss._loss.__pyx_unpickle_CyHalfBinomialLoss",
                 "sklearn._loss._loss.__pyx_unpickle_CyHalfMultinomialLoss"}
# Attributes that only fitting uses and that cannot be stored as data (random generators).
SKIPPED = {"_feature_subsample_rng"}
_NUMERIC = set("biuf")


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def encode(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    """A JSON-able description of `obj`; its arrays are added to `arrays` under keys starting with `path`."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return {"__scalar__": encode(obj.item(), arrays, path), "dtype": obj.dtype.str}
    if isinstance(obj, np.dtype):
        return {"__dtype__": obj.str}
    if isinstance(obj, np.ndarray):
        if obj.dtype.names:  # structured (tree nodes): one array per field
            return {"__struct__": [[n, obj.dtype.fields[n][0].str] for n in obj.dtype.names],
                    "fields": {n: encode(np.ascontiguousarray(obj[n]), arrays, f"{path}.{n}")
                               for n in obj.dtype.names}}
        if obj.dtype.kind == "O":
            return {"__objects__": [encode(v, arrays, f"{path}.{i}") for i, v in enumerate(obj.ravel())],
                    "shape": list(obj.shape)}
        if obj.dtype.kind not in _NUMERIC:
            raise PawsightError(f"cannot save an array of type {obj.dtype} ({path})")
        arrays[path] = np.ascontiguousarray(obj)
        return {"__array__": path}
    if isinstance(obj, list):
        return [encode(v, arrays, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, arrays, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise PawsightError(f"cannot save a dictionary with non-text keys ({path})")
        return {"__dict__": {k: encode(v, arrays, f"{path}.{k}") for k, v in obj.items() if k not in SKIPPED}}
    reduced = obj.__reduce_ex__(4)
    if not isinstance(reduced, tuple) or len(reduced) < 2:
        raise PawsightError(f"cannot save an object of type {type(obj).__name__} ({path})")
    func, args, state = reduced[0], reduced[1], reduced[2] if len(reduced) > 2 else None
    if func is copyreg.__newobj__:
        name, call, args = _qualname(args[0]), None, args[1:]
    elif isinstance(func, type):
        name, call = _qualname(func), None
    else:
        name, call = _qualname(args[0]), _qualname(func)
        args = args[1:]
    if name not in ALLOWED or (call is not None and call not in ALLOWED_CALLS):
        raise PawsightError(f"cannot save an object of type {name} ({path})")
    return {"__object__": name, "call": call, "new": func is copyreg.__newobj__,
            "args": encode(tuple(args), arrays, f"{path}.args"),
            "state": encode(state, arrays, f"{path}.state")}


def _import(name: str, allowed: set[str]) -> Any:
    if name not in allowed:
        raise PawsightError(f"it refers to {name!r}, which is not an allowed model part")
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of `encode`; refuses anything not allow-listed."""
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return [decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        raise PawsightError(f"unexpected {type(node).__name__} in the saved state")
    if "__array__" in node:
        key = node["__array__"]
        if key not in arrays:
            raise PawsightError(f"the array {key!r} is missing from model.safetensors")
        return arrays[key]
    if "__float__" in node:
        if node["__float__"] not in ("nan", "inf", "-inf"):
            raise PawsightError(f"bad number {node['__float__']!r} in the saved state")
        return float(node["__float__"])
    if "__scalar__" in node:
        return np.dtype(_dtype(node["dtype"])).type(decode(node["__scalar__"], arrays))
    if "__dtype__" in node:
        return np.dtype(_dtype(node["__dtype__"]))
    if "__tuple__" in node:
        return tuple(decode(v, arrays) for v in node["__tuple__"])
    if "__dict__" in node:
        return {str(k): decode(v, arrays) for k, v in node["__dict__"].items()}
    if "__struct__" in node:
        dtype = np.dtype([(str(n), _dtype(t)) for n, t in node["__struct__"]])
        fields = {n: decode(v, arrays) for n, v in node["fields"].items()}
        lengths = {len(v) for v in fields.values()}
        if set(fields) != set(dtype.names or ()) or len(lengths) != 1:
            raise PawsightError("a table of tree nodes is incomplete or ragged")
        out = np.zeros(lengths.pop(), dtype=dtype)
        for n, v in fields.items():
            out[n] = v
        return out
    if "__objects__" in node:
        items = [decode(v, arrays) for v in node["__objects__"]]
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape([int(s) for s in node["shape"]])
    if "__object__" in node:
        cls = _import(str(node["__object__"]), ALLOWED)
        args = decode(node.get("args", {"__tuple__": []}), arrays)
        if not isinstance(args, tuple):
            raise PawsightError("bad constructor arguments in the saved state")
        if node.get("call") is not None:
            obj = _import(str(node["call"]), ALLOWED_CALLS)(cls, *args)
        elif node.get("new"):
            obj = cls.__new__(cls, *args)
        else:
            obj = cls(*args)
        state = decode(node.get("state"), arrays)
        if state is not None:
            if hasattr(obj, "__setstate__"):
                obj.__setstate__(state)
            elif isinstance(state, dict):
                obj.__dict__.update(state)
            else:
                raise PawsightError(f"bad state for {node['__object__']}")
        return obj
    raise PawsightError(f"unknown entry {sorted(node)[:3]} in the saved state")


def _dtype(text: Any) -> str:
    """A plain numeric dtype string such as '<f8' (never 'O' or anything else NumPy could interpret)."""
    if not isinstance(text, str) or np.dtype(text).kind not in _NUMERIC or np.dtype(text).names:
        raise PawsightError(f"bad array type {text!r} in the saved state")
    return text


def describe(pipeline: Any) -> list[dict[str, Any]]:
    """Readable summary of the pipeline's steps for model.json: class and hyper-parameters of each."""
    def plain(est: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in est.get_params(deep=False).items():
            if v is None or isinstance(v, bool | int | float | str):
                out[k] = v
            elif isinstance(v, list | tuple) and all(isinstance(i, int | float | str) for i in v):
                out[k] = list(v)
            elif hasattr(v, "get_params"):
                out[k] = {"class": _qualname(type(v)), "params": plain(v)}
        return out

    return [{"step": name, "class": _qualname(type(step)), "params": plain(step)}
            for name, step in pipeline.steps]
