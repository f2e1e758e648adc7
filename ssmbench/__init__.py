"""ssmbench: adversarial robustness of deep state space models, measured the same way every time."""

__version__ = "0.1.0"

from ssmbench.loading import load, load_with_meta  # noqa: E402  (after __version__, which submodules read)

__all__ = ["__version__", "benchmark", "load", "load_with_meta"]


def __getattr__(name: str) -> object:
    """`ssmbench.benchmark` is imported on first use: it pulls in the attacks, which `load` does not need."""
    if name == "benchmark":
        from ssmbench.byom import benchmark

        return benchmark
    raise AttributeError(f"module 'ssmbench' has no attribute {name!r}")
