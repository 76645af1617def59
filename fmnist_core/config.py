"""The one typed run configuration, and the objective that picks a run's best epoch.

`RunConfig` is frozen and validated on construction. It flows unchanged from the CLI
to the sweep runner (which makes variants with `dataclasses.replace`), to the trainer,
into MLflow params and into every checkpoint (`as_dict`). Unknown keys are errors, so a
typo in a sweep file or a `--set` option never silently trains the default.

`Objective` (metric and direction) is not part of a run's config: it is what a sweep
optimises, and the trainer selects each run's best epoch by the same objective, so the
value Optuna sees, the checkpoint and the test metrics all come from one epoch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

IMPLEMENTATIONS = ("manual", "torch")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "elu", "silu")
INITS = (
    "zeros",
    "constant",
    "normal",
    "uniform",
    "xavier_uniform",
    "xavier_normal",
    "lecun_normal",
    "kaiming_uniform",
    "kaiming_normal",
)
# sgd covers plain, momentum and Nesterov SGD (both implementations);
# adam / adamw exist only for the torch implementation.
OPTIMIZERS = ("sgd", "adam", "adamw")
CLIP_MODES = ("none", "value", "norm")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Per-epoch validation metrics the trainer produces, each with the direction that improves it.
OBJECTIVE_METRICS = {"val_acc": "maximize", "val_loss": "minimize"}
DIRECTIONS = ("maximize", "minimize")
# Fields whose value is one of a fixed set: the CLI offers them as choices.
CHOICES = {"impl": IMPLEMENTATIONS, "activation": ACTIVATIONS, "init": INITS, "optimizer": OPTIMIZERS,
           "clip_mode": CLIP_MODES, "schedule": SCHEDULES, "device": DEVICES}


def _field(default: Any, help_text: str) -> Any:
    """A dataclass field whose help text is also the CLI's --help for its option."""
    return field(default=default, metadata={"help": help_text})


class ConfigError(ValueError):
    """A setting a user chose is invalid; the message says which and what is allowed."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type name): for one-line user-facing errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one training run; each field's help text says its unit.

    The defaults were chosen by measurement (hidden 256, 10 epochs, validation accuracy
    on the held-out 10k; see the README): SGD + Nesterov with a cosine schedule at lr 0.03
    and weight decay 2e-4 beat lr 0.01/0.02/0.05 and weight decay 0/1e-4/5e-4; random
    flips and rotations cost validation accuracy within a 10-epoch budget, so augmentation
    is off by default and worth turning on for longer runs.
    """

    impl: str = _field("manual", "manual: hand-written backprop and updates; torch: nn.Module + torch.optim")
    hidden_size: int = _field(256, "units in the single hidden layer")
    activation: str = _field("relu", "hidden-layer nonlinearity")
    init: str = _field("kaiming_uniform", "weight init scheme; biases start at zero")
    init_scale: float = _field(0.01, "value for `constant`, std for `normal`, half-width for `uniform`")
    optimizer: str = _field("sgd", "sgd (momentum/Nesterov) in both impls; adam, adamw only with impl torch")
    lr: float = _field(0.03, "peak learning rate")
    momentum: float = _field(0.9, "SGD momentum (beta1 for adam/adamw)")
    nesterov: bool = _field(True, "Nesterov momentum for sgd")
    weight_decay: float = _field(2e-4, "L2 coefficient added to the gradient (decoupled for adamw)")
    clip_mode: str = _field("none", "gradient clipping: by element value or by global L2 norm")
    clip_value: float = _field(1.0, "max |g| for `value`, max global L2 norm for `norm`")
    batch_size: int = _field(64, "samples per step")
    epochs: int = _field(10, "passes over the training split")
    schedule: str = _field("cosine", "learning-rate schedule, applied per step")
    step_size: int = _field(3, "epochs between decays for `step`")
    step_gamma: float = _field(0.1, "decay factor for `step`")
    warmup_epochs: float = _field(0.0, "linear warm-up for constant/step/cosine, in epochs")
    dropout: float = _field(0.0, "dropout probability on the hidden layer")
    augment_flip: bool = _field(False, "random horizontal flip, p = 0.5")
    augment_rotate: float = _field(0.0, "max random rotation in degrees; 0 disables")
    augment_translate: int = _field(0, "max random shift in whole pixels, on each axis; 0 disables")
    val_size: int = _field(10_000, "images held out of the 60k training set for validation")
    seed: int = _field(0, "seed for init, data order, dropout and augmentation")
    device: str = _field("auto", "auto picks CUDA, then MPS, then the CPU")
    patience: int = _field(0, "early stopping after this many epochs without improvement of the objective "
                              "(val_acc unless a sweep optimises another); 0 = off")

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            _check_choice(name, getattr(self, name), allowed)
        _check_positive("hidden_size", self.hidden_size, integer=True)
        _check_positive("batch_size", self.batch_size, integer=True)
        _check_positive("epochs", self.epochs, integer=True)
        _check_positive("step_size", self.step_size, integer=True)
        _check_positive("lr", self.lr)
        _check_positive("clip_value", self.clip_value)
        _check_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _check_range("weight_decay", self.weight_decay, 0.0, float("inf"))
        _check_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        _check_range("step_gamma", self.step_gamma, 0.0, 1.0)
        _check_range("warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _check_range("augment_rotate", self.augment_rotate, 0.0, 180.0)
        _check_int("augment_translate", self.augment_translate, 0, 14)
        _check_range("init_scale", self.init_scale, 0.0, float("inf"))
        _check_int("val_size", self.val_size, 0, 50_000)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("patience", self.patience, 0, 10**6)
        for name in ("nesterov", "augment_flip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.impl == "manual" and self.optimizer != "sgd":
            raise ConfigError(
                f"optimizer {self.optimizer!r} exists only for impl 'torch'; "
                "the manual implementation has hand-written SGD (momentum, Nesterov)"
            )
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0; set nesterov=false or a momentum")
        if self.patience and self.val_size == 0:
            raise ConfigError("early stopping (patience > 0) needs a validation set (val_size > 0)")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of every field: goes to MLflow params and into checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build from a mapping; unknown keys are errors naming `source`."""
        return cls().replace(values, source=source)

    def replace(self, overrides: dict[str, Any], *, source: str = "overrides") -> RunConfig:
        """A copy with `overrides` applied; values are coerced to the field's type."""
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown config field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(known)}"
            )
        coerced = {k: coerce(k, v, type(getattr(self, k))) for k, v in overrides.items()}
        return dataclasses.replace(self, **coerced)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(RunConfig))


def coerce(name: str, value: Any, kind: type) -> Any:
    """Convert strings from the CLI (`--set lr=0.1`) and YAML numbers to the field's type."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError
            return int(as_float)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{name} must be of type {kind.__name__}, got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise ConfigError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float, *, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if ok and high_open and value >= high:
        ok = False
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class Objective:
    """The validation metric that picks a run's best epoch, and which way is better.

    The best epoch's weights are the checkpoint and give the test metrics; early stopping
    counts epochs without improvement of this metric. A tie keeps the earlier epoch.
    """

    metric: str = "val_acc"  # one of OBJECTIVE_METRICS
    direction: str = "maximize"  # maximize | minimize

    def __post_init__(self) -> None:
        _check_choice("objective metric", self.metric, tuple(OBJECTIVE_METRICS))
        _check_choice("objective direction", self.direction, DIRECTIONS)

    def improves(self, value: float, best: float) -> bool:
        """Whether `value` is strictly better than `best`. NaN never improves; anything beats a NaN best."""
        if math.isnan(best):
            return not math.isnan(value)
        return value > best if self.direction == "maximize" else value < best


DEFAULT_OBJECTIVE = Objective()  # val_acc, maximised
