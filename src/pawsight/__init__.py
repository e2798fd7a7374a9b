"""pawsight: image recognition from folders of pictures, classical ML and deep learning side by side.

The Python API (`train`, `evaluate`, `predict`, `load`) is imported on first use, so `import pawsight` and the
command line start in a fraction of a second (scikit-learn, PyTorch and ONNX Runtime load only when a command
needs them)."""

from typing import Any

from ._version import __version__

__all__ = ["__version__", "evaluate", "load", "predict", "train"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "load", "predict", "train"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pawsight' has no attribute {name!r}")
