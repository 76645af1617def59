"""Sweep definitions: one YAML file per sweep in this folder, loaded and checked here.

A definition is data (see `hidden_size.yaml` for a commented example):

    description  one line: the question the sweep answers
    base         RunConfig overrides shared by every trial
    space        name -> [values]                      a grid axis, or categorical choices
                 name -> {low, high, log, step}        a range (tpe / random samplers only)
                 label -> {bundles: {name: {...}}}     named sets of overrides, chosen as one
                                                       (e.g. clipping: none, value-1, norm-5)
    sampler      grid | tpe | random, or {type: tpe, seed: 0, n_startup_trials: 10}
    pruner       none | median | percentile | threshold | successive_halving | hyperband,
                 or {type: ..., options} (the options of the optuna.pruners class)
    objective    {metric: val_acc | val_loss, direction: maximize | minimize}
    seeds        K: every configuration is trained with seeds 0..K-1
    budget       {n_trials: N, timeout: seconds}: totals for the study (grid: defaults to the grid)
    plot         {x: a space name, log_x: bool}: the parameter the sweep's figures put on the x axis

Everything is checked on load, including every grid point as a RunConfig, so a typo
fails before any training with a message naming the file and the field.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fmnist_core.config import ConfigError, RunConfig, coerce, field_names

SWEEP_DIR = Path(__file__).resolve().parent
SAMPLERS = {"grid": (), "random": ("seed",), "tpe": ("seed", "n_startup_trials")}
PRUNERS = ("none", "median", "percentile", "threshold", "successive_halving", "hyperband")
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}
TOP_KEYS = ("description", "base", "space", "sampler", "pruner", "objective", "seeds", "budget", "plot")
# All trials of a sweep share one data split, loaded once: these cannot vary per trial.
UNSWEEPABLE = ("val_size", "device")


class DefinitionError(ConfigError):
    """A sweep file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Param:
    """One axis of the search space."""

    name: str
    choices: tuple = ()  # grid values / categorical choices (bundle names for bundles)
    low: float | None = None  # a range, for tpe/random
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)  # bundle name -> overrides

    def overrides(self, value: Any) -> dict[str, Any]:
        """The RunConfig overrides that choosing `value` for this axis means."""
        return dict(self.bundles[value]) if self.bundles else {self.name: value}

    def fields(self) -> list[str]:
        """The RunConfig fields this axis sets."""
        if not self.bundles:
            return [self.name]
        return sorted({k for overrides in self.bundles.values() for k in overrides})


@dataclass(frozen=True)
class SweepDefinition:
    name: str
    path: Path
    description: str
    base: dict[str, Any]
    space: tuple[Param, ...]
    sampler: str = "grid"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    metric: str = "val_acc"
    direction: str = "maximize"
    seeds: int = 1
    n_trials: int | None = None
    timeout: float | None = None
    plot_x: str | None = None
    plot_log_x: bool = False

    @property
    def fields(self) -> set[str]:
        """RunConfig fields the space may change."""
        return {name for p in self.space for name in p.fields()}

    def grid(self) -> dict[str, list]:
        """Grid-sampler search space: axis name -> values (bundle names for bundles)."""
        return {p.name: list(p.choices) for p in self.space}


def list_definitions() -> dict[str, Path]:
    return {path.stem: path for path in sorted(SWEEP_DIR.glob("*.yaml"))}


def load_definition(name_or_path: str | Path) -> SweepDefinition:
    """Load `sweeps/<name>.yaml` (or a path to a YAML file) and check every field."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        known = list_definitions()
        if str(name_or_path) not in known:
            raise DefinitionError(f"no sweep named {name_or_path!r}; known sweeps: {', '.join(known)} "
                                  "(`python cli.py sweeps` lists them)")
        path = known[str(name_or_path)]
    if not path.is_file():
        raise DefinitionError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DefinitionError(f"{path}: not valid YAML: {error}") from None
    return parse_definition(raw, name=path.stem, path=path)


def parse_definition(raw: Any, *, name: str, path: Path) -> SweepDefinition:
    def fail(where: str, problem: str) -> DefinitionError:
        return DefinitionError(f"{path}: {where}: {problem}")

    if not isinstance(raw, dict):
        raise fail("top level", "expected a mapping of " + ", ".join(TOP_KEYS))
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise fail(", ".join(map(str, unknown)), f"unknown key; allowed keys: {', '.join(TOP_KEYS)}")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise fail("description", "required: one line saying what the sweep asks")

    base = _mapping(raw.get("base") or {}, "base", fail)
    base_config = _config_or_fail(RunConfig(), base, "base", fail)

    sampler, sampler_options = _kind_and_options(raw.get("sampler", "grid"), "sampler", SAMPLERS, fail)
    for option, value in sampler_options.items():
        if option not in SAMPLERS[sampler]:
            raise fail(f"sampler.{option}", f"unknown option for {sampler}; allowed: "
                                            f"{', '.join(SAMPLERS[sampler]) or 'none'}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"sampler.{option}", f"must be a non-negative integer, got {value!r}")
    pruner, pruner_options = _kind_and_options(raw.get("pruner", "none"), "pruner", PRUNERS, fail)
    if pruner != "none":
        try:
            make_pruner(pruner, pruner_options)
        except (TypeError, ValueError) as error:
            raise fail("pruner", f"{pruner} rejects {pruner_options}: {error}") from None

    objective = _mapping(raw.get("objective") or {}, "objective", fail)
    if set(objective) - {"metric", "direction"}:
        raise fail("objective", "allowed keys are metric and direction")
    metric = objective.get("metric", "val_acc")
    if metric not in METRICS:
        raise fail("objective.metric", f"{metric!r} is not one of {', '.join(METRICS)}")
    direction = objective.get("direction", METRICS[metric])
    if direction not in ("maximize", "minimize"):
        raise fail("objective.direction", f"{direction!r} is not maximize or minimize")

    seeds = raw.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise fail("seeds", f"must be a positive integer, got {seeds!r}")
    budget = _mapping(raw.get("budget") or {}, "budget", fail)
    if set(budget) - {"n_trials", "timeout"}:
        raise fail("budget", "allowed keys are n_trials and timeout")
    n_trials, timeout = budget.get("n_trials"), budget.get("timeout")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise fail("budget.n_trials", f"must be a positive integer, got {n_trials!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise fail("budget.timeout", f"must be a positive number of seconds, got {timeout!r}")
    if sampler != "grid" and n_trials is None and timeout is None:
        raise fail("budget", f"a {sampler} sweep needs n_trials or timeout, or it would never end")

    space_raw = _mapping(raw.get("space"), "space", fail)
    if not space_raw:
        raise fail("space", "required: at least one parameter to vary")
    space = tuple(_parse_param(str(key), value, sampler, base_config, fail)
                  for key, value in space_raw.items())
    claimed: dict[str, str] = {}
    for param in space:
        for field_name in param.fields():
            if field_name in claimed:
                raise fail(f"space.{param.name}", f"sets {field_name}, which space.{claimed[field_name]} "
                                                  "also sets")
            claimed[field_name] = param.name
    if seeds > 1 and "seed" in claimed:
        raise fail("seeds", "space already varies seed; use one or the other")

    plot = _mapping(raw.get("plot") or {}, "plot", fail)
    if set(plot) - {"x", "log_x"}:
        raise fail("plot", "allowed keys are x and log_x")
    swept = [p.name for p in space if p.name != "seed"]
    plot_x = plot.get("x", swept[0] if len(swept) == 1 else None)
    if plot_x is not None and plot_x not in {p.name for p in space}:
        raise fail("plot.x", f"{plot_x!r} is not a name in space")

    definition = SweepDefinition(
        name=name, path=path, description=description.strip(), base=base, space=space, sampler=sampler,
        sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options, metric=metric,
        direction=direction, seeds=seeds, n_trials=n_trials, timeout=timeout, plot_x=plot_x,
        plot_log_x=bool(plot.get("log_x", False)),
    )
    check_space(definition, base_config)
    return definition


def check_space(definition: SweepDefinition, base_config: RunConfig) -> None:
    """Every value of the space must make a valid RunConfig on top of `base_config`; for a grid,
    every combination, or the sweep would fail half-way. Raises DefinitionError."""
    def fail(where: str, problem: str) -> DefinitionError:
        return DefinitionError(f"{definition.path}: {where}: {problem}")

    for param in definition.space:
        ends = param.choices or (param.low, param.high)
        for value in ends:
            _config_or_fail(base_config, param.overrides(value), f"space.{param.name}={value!r}", fail)
    if definition.sampler != "grid":
        return
    for point in itertools.product(*(p.choices for p in definition.space)):
        overrides: dict[str, Any] = {}
        for param, value in zip(definition.space, point, strict=True):
            overrides.update(param.overrides(value))
        named = ", ".join(f"{p.name}={v}" for p, v in zip(definition.space, point, strict=True))
        _config_or_fail(base_config, overrides, f"space (grid point {named})", fail)


def make_pruner(kind: str, options: dict[str, Any]):
    import optuna

    classes = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner}
    cls = classes[kind]
    inspect.signature(cls).bind(**options)  # TypeError names an unknown or missing option
    return cls(**options)


def _parse_param(name: str, value: Any, sampler: str, base_config: RunConfig, fail) -> Param:
    """Types and shapes only; check_space tries the values as RunConfigs."""
    where = f"space.{name}"
    if isinstance(value, dict) and "bundles" in value:
        if set(value) != {"bundles"}:
            raise fail(where, "a bundle axis holds only `bundles: {name: {field: value, ...}}`")
        bundles = _mapping(value["bundles"], f"{where}.bundles", fail)
        if not bundles:
            raise fail(f"{where}.bundles", "empty: list at least one bundle")
        checked = {}
        for label, overrides in bundles.items():
            overrides = _mapping(overrides, f"{where}.bundles.{label}", fail)
            checked[str(label)] = {k: _field_value(k, v, f"{where}.bundles.{label}.{k}", fail)
                                   for k, v in overrides.items()}
        return Param(name, choices=tuple(checked), bundles=checked)
    if name not in field_names():
        raise fail(where, f"unknown config field; known fields: {', '.join(field_names())} "
                          "(or give `bundles:` to name a set of overrides)")
    if name in UNSWEEPABLE:
        raise fail(where, "cannot vary between trials: every trial of a sweep shares one data split and "
                          "device; set it in base or with --set")
    if isinstance(value, list):
        if not value:
            raise fail(where, "empty list: give at least one value")
        choices = tuple(_field_value(name, v, where, fail) for v in value)
        if len(set(choices)) != len(choices):
            raise fail(where, f"repeats a value: {list(value)}")
        return Param(name, choices=choices)
    if isinstance(value, dict):
        if sampler == "grid":
            raise fail(where, "a grid sampler needs a list of values, not a range")
        if set(value) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(value):
            raise fail(where, "a range is {low, high} with optional log: true/false and step")
        kind = type(getattr(base_config, name))
        if kind not in (int, float):
            raise fail(where, f"{name} is not numeric: give a list of choices instead of a range")
        low, high = (_field_value(name, value[k], f"{where}.{k}", fail) for k in ("low", "high"))
        log, step = value.get("log", False), value.get("step")
        if not isinstance(log, bool):
            raise fail(f"{where}.log", f"must be true or false, got {log!r}")
        if not low < high:
            raise fail(where, f"low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise fail(where, f"a log range needs low > 0, got {low}")
        bad_step = isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
        if step is not None and (log or bad_step):
            raise fail(f"{where}.step", "must be a positive number, and cannot go with log: true")
        return Param(name, low=low, high=high, log=log, step=step, integer=kind is int)
    raise fail(where, f"expected a list of values or a {{low, high}} range, got {value!r}")


def _field_value(name: str, value: Any, where: str, fail) -> Any:
    if name not in field_names():
        raise fail(where, f"unknown config field {name!r}; known fields: {', '.join(field_names())}")
    try:
        return coerce(name, value, type(getattr(RunConfig(), name)))
    except ConfigError as error:
        raise fail(where, str(error)) from None


def _config_or_fail(base_config: RunConfig, overrides: dict[str, Any], where: str, fail) -> RunConfig:
    try:
        return base_config.replace(overrides, source=where)
    except ConfigError as error:
        raise fail(where, str(error).removeprefix(f"{where}: ")) from None


def _kind_and_options(value: Any, where: str, allowed, fail) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        kind, options = value, {}
    elif isinstance(value, dict) and "type" in value:
        kind, options = value["type"], {k: v for k, v in value.items() if k != "type"}
    else:
        raise fail(where, f"expected one of {', '.join(allowed)} or {{type: ..., options}}, got {value!r}")
    if kind not in allowed:
        raise fail(where, f"unknown {where} {kind!r}; choose one of: {', '.join(allowed)}")
    return kind, options


def _mapping(value: Any, where: str, fail) -> dict:
    if not isinstance(value, dict):
        raise fail(where, f"expected a mapping, got {value!r}")
    return value
