"""tinylens: small transformers trained on algorithmic tasks, and the studies that take them apart."""

from tinylens.errors import TinylensError

__version__ = "0.1.0"

__all__ = ["TinylensError", "__version__"]
