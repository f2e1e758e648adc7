"""Adversarial training: the AT methods (a registry), the training loop and its history files."""

from model_zoo.training.config import TrainConfig
from model_zoo.training.history import EpochRecord, read_history
from model_zoo.training.methods import (
    METHODS,
    FreeATParams,
    MartParams,
    MethodContext,
    StepOutput,
    TradesParams,
    YopoParams,
    get_method,
    list_methods,
    register_method,
)
from model_zoo.training.settings import MethodParams, Optimization, ThreatModel
from model_zoo.training.trainer import (
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
    "FreeATParams",
    "MartParams",
    "MethodContext",
    "MethodParams",
    "Optimization",
    "StepOutput",
    "ThreatModel",
    "TradesParams",
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
    "YopoParams",
]
