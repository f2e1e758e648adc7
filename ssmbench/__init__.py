"""ssmbench: adversarial robustness of deep state space models, measured the same way every time."""

__version__ = "0.1.0"

from ssmbench.loading import load, load_with_meta  # noqa: E402  (after __version__, which submodules read)

__all__ = ["__version__", "load", "load_with_meta"]
