"""pawsight: image recognition from folders of pictures, classical ML and deep learning side by side."""

__version__ = "0.1.0"

from .api import evaluate, load, predict, train  # noqa: E402

__all__ = ["__version__", "evaluate", "load", "predict", "train"]
