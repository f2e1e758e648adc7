"""ssmbench: adversarial robustness of deep state space models, measured the same way every time."""

__version__ = "0.1.0"
