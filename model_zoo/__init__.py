"""ssmbench's model zoo: SSM architectures, Adaptive Scaling, training and checkpoints."""

from model_zoo.datasets import list_datasets
from model_zoo.registry import build_from_config, build_model, list_models, make_config

__all__ = ["build_from_config", "build_model", "list_datasets", "list_models", "make_config"]
