"""Adversarial training: the AT methods (a registry), the training loop and its history files."""

from model_zoo.training.history import EpochRecord, read_history
from model_zoo.training.methods import (
    METHODS,
    MethodContext,
    StepOutput,
    get_method,
    list_methods,
    register_method,
)
from model_zoo.training.trainer import (
    TrainConfig,
    TrainObserver,
    TrainResult,
    check_out_dir,
    evaluate_pgd10,
    seed_everything,
    train,
)

__all__ = [
    "METHODS",
    "EpochRecord",
    "MethodContext",
    "StepOutput",
    "TrainConfig",
    "TrainObserver",
    "TrainResult",
    "check_out_dir",
    "evaluate_pgd10",
    "get_method",
    "list_methods",
    "read_history",
    "register_method",
    "seed_everything",
    "train",
]
