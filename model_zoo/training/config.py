"""TrainConfig: one run's settings, composed of the threat model, the optimization and the AT
method's own parameters, and its flat form that checkpoints and resume states store.

    >>> TrainConfig(method="trades", threat=ThreatModel(eps=0.1), params=TradesParams(beta=3.0))
    >>> TrainConfig.from_dict({"method": "trades", "eps": 0.1, "trades_beta": 3.0})   # the same

The flat form is the `training` metadata of every checkpoint written so far: the run's fields,
the threat model's and the optimization's fields by name, and each method's parameters as
`<method>_<field>` (trades_beta, freeat_m, freeat_full_epochs, yopo_n, ...) for every registered
method, the run's own method with its values and the others with their defaults. Keeping that
form keeps old checkpoints, results and resume states readable and new ones written the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model_zoo.datasets import paper_epochs
from model_zoo.errors import UsageError
from model_zoo.limits import SEED_RANGE
from model_zoo.training.methods import METHODS, list_methods
from model_zoo.training.settings import NORMS, MethodParams, Optimization, ThreatModel

PRECISIONS = ("auto", "fp32", "bf16")
# What ranks epochs for best.safetensors (the trainer's SELECTION_SCORES): the PGD-10 accuracy on
# the selection images (the paper's), or their PGD-10 cross-entropy, which is continuous, so that a
# hold-out of 8 or 10 series still ranks epochs instead of tying (and keeping the earliest).
# Each rule with the words reports use for it.
SELECT_BY = {"accuracy": "highest PGD-10 accuracy", "loss": "lowest PGD-10 cross-entropy"}
PAPER_SELECT_BY = "accuracy"
# Keys of the flat form that are derived from the settings, not settings themselves.
DERIVED_KEYS = ("threat_model", "effective_epochs")


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a run; stored (flat, `to_dict`) in each checkpoint's `training` metadata.

    Defaults are the paper's (DESIGN.md). `epochs` None: the dataset's paper epochs
    (`resolved(dataset)`; the trainer resolves them from the model's dataset). `params`: the
    method's own parameter dataclass (None: its defaults).
    `eval_examples`/`train_examples`: None = the whole split. `val_examples` = N > 0 holds out N
    training images (split by `seed`) that select the best checkpoint; 0 selects on the test eval
    subset, as the paper did. `train_examples` then caps the images that remain for training.
    `batch_size` is the global batch: under torchrun each of K processes trains on batch_size / K.
    """

    method: str = field(default="pgd", metadata={"help": f"Training method: {', '.join(list_methods())}."})
    epochs: int | None = field(default=None, metadata={"help": "Epochs (default: the paper's for the dataset; ssmbench zoo list)."})
    batch_size: int = field(default=256, metadata={"help": "Training batch size (global: under torchrun each of K processes takes 1/K of it)."})
    threat: ThreatModel = ThreatModel()
    optim: Optimization = Optimization()
    params: MethodParams | None = None
    eval_examples: int | None = field(default=None, metadata={"help": "Test images for the per-epoch clean/PGD-10 eval (first N; default all)."})
    train_examples: int | None = field(default=None, metadata={"help": "Train on the first N training images only (quick trials)."})
    val_examples: int = field(default=0, metadata={"help": (
        "Hold out N training images (a split fixed by --seed) and choose the best checkpoint by PGD-10 on them, "
        "not on the test images; 0: the paper's protocol (choose on test).")})
    select_by: str = field(default=PAPER_SELECT_BY, metadata={"help": (
        "What ranks epochs for the best checkpoint: accuracy (highest PGD-10 accuracy on the selection images, "
        "ties keep the earlier epoch: the paper's) | loss (lowest PGD-10 cross-entropy on them: continuous, "
        "so a hold-out of a few examples still ranks epochs).")})
    seed: int = field(default=0, metadata={"help": "One seed for the initial weights, data order and attack noise."})
    precision: str = field(default="auto", metadata={"help": (
        "Training passes: auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (CUDA only). "
        "Attack gradients and evaluation are always fp32.")})

    def __post_init__(self) -> None:
        spec = METHODS.get(self.method)
        if self.params is None:
            object.__setattr__(self, "params", spec.params())
        elif type(self.params) is not spec.params:
            raise UsageError(f"method {self.method} takes {spec.params.__name__}, not {type(self.params).__name__}")
        if self.threat.norm not in spec.norms:
            capable = [name for name in list_methods() if self.threat.norm in METHODS.get(name).norms]
            raise UsageError(f"{self.method} trains against {', '.join(spec.norms)} only; for {self.threat.norm} use {', '.join(capable)}")
        if self.select_by not in SELECT_BY:
            raise UsageError(f"select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "eval_examples", "train_examples"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be > 0, got {value}")
        if not self.val_examples >= 0:
            raise UsageError(f"val_examples must be >= 0, got {self.val_examples}")
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise UsageError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {self.seed}")

    @property
    def method_params(self) -> MethodParams:
        assert self.params is not None  # __post_init__ fills it
        return self.params

    def resolved(self, dataset: str) -> TrainConfig:
        """This config with `epochs` set: its own, else the paper's for `dataset` (the registry's)."""
        return self if self.epochs is not None else dataclasses.replace(self, epochs=paper_epochs(dataset))

    @property
    def effective_epochs(self) -> int:
        """Epochs actually run (FreeAT by default runs epochs/m, see FreeATParams)."""
        if self.epochs is None:
            raise UsageError("epochs are not resolved yet: set epochs or call resolved(dataset)")
        return self.method_params.effective_epochs(self.epochs)

    @property
    def selection(self) -> str:
        """How the best checkpoint is chosen: on which images, "val" (held-out training images) or
        "test", with "-loss" when their PGD-10 cross-entropy ranks the epochs instead of accuracy."""
        images = "val" if self.val_examples else "test"
        return images if self.select_by == PAPER_SELECT_BY else f"{images}-loss"

    def to_dict(self) -> dict[str, Any]:
        """The flat form (module docstring), plus the derived threat_model label and effective_epochs.

        select_by is written only when it is not PAPER_SELECT_BY (the default): a run that selects as
        every run did before the option existed writes the metadata such runs always wrote.
        """
        flat: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "select_by" and value == PAPER_SELECT_BY:
                continue
            if item.name in ("threat", "optim"):
                flat |= {k: v for k, v in dataclasses.asdict(value).items() if k != "norm"}
            elif item.name == "params":
                for name, spec in METHODS.items():
                    own = value if name == self.method else spec.params()
                    flat |= {f"{_prefix(name)}_{k}": v for k, v in dataclasses.asdict(own).items()}
            else:
                flat[item.name] = value
        flat["threat_model"] = self.threat.label
        flat["effective_epochs"] = self.effective_epochs if self.epochs is not None else None
        return flat

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> TrainConfig:
        """The config from its flat form (a checkpoint's `training`, a resume state's config, or
        keyword settings); missing keys take their defaults, other methods' parameters are ignored.
        """
        known = flat_keys() | {"norm"}  # norm as a keyword setting; the flat form records it as threat_model
        unknown = sorted(set(flat) - known - set(DERIVED_KEYS))
        if unknown:
            raise UsageError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        method = flat.get("method", cls.method)
        spec = METHODS.get(method)
        norm = flat.get("norm") or {label: name for name, label in NORMS.items()}.get(flat.get("threat_model", ""), ThreatModel.norm)
        threat = ThreatModel(norm=norm, **_pick(ThreatModel, flat))
        optim = Optimization(**_pick(Optimization, flat))
        prefix = f"{_prefix(method)}_"
        params = spec.params(**{k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)
                                and k[len(prefix):] in _field_names(spec.params)})
        own = {k: v for k, v in flat.items() if k in _field_names(cls) - {"threat", "optim", "params"}}
        return cls(threat=threat, optim=optim, params=params, **own)

    @classmethod
    def from_metadata(cls, training: dict[str, Any]) -> TrainConfig:
        """From a checkpoint's `training` metadata or a resume state's config: the run facts that
        the trainer records beside the settings (augment, autocast, processes, ...) are skipped."""
        return cls.from_dict({k: v for k, v in training.items() if k in flat_keys() or k == "threat_model"})

    @classmethod
    def from_settings(cls, **settings: Any) -> TrainConfig:
        """`TrainConfig.from_settings(method="trades", eps=0.1, trades_beta=3.0)`: from_dict with keywords."""
        return cls.from_dict(settings)


def _prefix(method: str) -> str:
    return method.replace("-", "_")


def _field_names(cls: type) -> set[str]:
    return {item.name for item in dataclasses.fields(cls)}


def _pick(cls: type, flat: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if k in _field_names(cls) - {"norm"}}


def flat_keys() -> set[str]:
    """Every key of the flat form that is a setting (the derived ones aside)."""
    keys = (_field_names(TrainConfig) - {"threat", "optim", "params"}) | (_field_names(ThreatModel) - {"norm"}) | _field_names(Optimization)
    for name, spec in METHODS.items():
        keys |= {f"{_prefix(name)}_{k}" for k in _field_names(spec.params)}
    return keys
