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
    decide       {margin, alpha, max_seeds, budget}: a grid sweep decides by itself in rounds (see
                 sweeps/analysis/decide.py): round 1 trains one seed of every configuration, each
                 later round one more seed of those still undecided (and of the leader), until every
                 one is worse or tied with the best, or max_seeds rounds. `budget` (seconds, optional):
                 the default --time-budget, a stop (no new round once spent; a re-run goes on), never
                 a verdict: the verdicts depend on the trials alone, not on the machine's speed
    plot         {x: a space name, log_x: bool}: the parameter the sweep's figures put on the x axis

schema.py holds that schema as pydantic models (unknown keys and wrong types are
refused); here the field names, values and every grid point are tried as RunConfigs, so a typo
fails before any training, in one line naming the file and the field. `repr(param)` is stored in
each Optuna study and compared on resume: keep Param's fields as they are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fmnist_core.config import ConfigError, RunConfig, coerce, field_names
from sweeps.definitions.rule import Rule
from sweeps.definitions.schema import METRICS, Axis, DefinitionError, make_pruner, read_file

# The public API; DefinitionError and make_pruner live with the schema and are re-exported here.
__all__ = ["DefinitionError", "Param", "SweepDefinition", "check_space", "list_definitions",
           "load_definition", "make_pruner", "parse_definition"]

SWEEP_DIR = Path(__file__).resolve().parent.parent  # the YAML files stay in sweeps/, where users find them
# All trials of a sweep share one data split, loaded once: these cannot vary per trial.
UNSWEEPABLE = ("val_size", "device")


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
    decide: Rule | None = None  # the `decide:` block: seeds are added in rounds (grid sweeps)
    time_budget: float | None = None  # `decide: budget`: seconds of rounds before a stop (--time-budget)

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
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise DefinitionError(f"{path}: not valid YAML: {getattr(error, 'problem', None) or error}{at}") \
            from None
    return parse_definition(raw, name=path.stem, path=path)


def parse_definition(raw: Any, *, name: str, path: Path) -> SweepDefinition:
    """A definition from the YAML's data; DefinitionError naming `path` and the field if malformed."""
    def fail(where: str, problem: str) -> DefinitionError:
        return DefinitionError(f"{path}: {where}: {problem}")

    schema = read_file(raw, path)
    base_config = _config_or_fail(RunConfig(), schema.base, "base", fail)
    space = tuple(_param(key, axis, schema.sampler.type, fail) for key, axis in schema.space.items())
    _check_each_field_varied_once(space, schema.seeds, fail)
    sampler, budget, objective = schema.sampler, schema.budget, schema.objective
    if sampler.type != "grid" and budget.n_trials is None and budget.timeout is None:
        raise fail("budget", f"a {sampler.type} sweep needs n_trials or timeout, or it would never end")
    decide = None
    if schema.decide is not None:
        if schema.seeds > 1:
            raise fail("decide", "a decided sweep adds seeds itself: leave `seeds` out (or use "
                                 "--seeds N for a fixed design)")
        if budget.n_trials is not None:
            raise fail("decide", "a decided sweep sizes itself: leave budget.n_trials out (max_seeds "
                                 "bounds it)")
        if "seed" in {p.name for p in space}:
            raise fail("decide", "space already varies seed; a decided sweep adds seeds itself")
        decide = Rule(**schema.decide.model_dump(exclude_none=True, exclude={"budget"}))
    swept = [p.name for p in space if p.name != "seed"]
    plot_x = schema.plot.x if "x" in schema.plot.model_fields_set else swept[0] if len(swept) == 1 else None
    if plot_x is not None and plot_x not in {p.name for p in space}:
        raise fail("plot.x", f"{plot_x!r} is not a name in space")
    definition = SweepDefinition(
        name=name, path=path, description=schema.description, base=schema.base, space=space,
        sampler=sampler.type, sampler_options=sampler.model_dump(exclude={"type"}, exclude_none=True),
        pruner=schema.pruner.type, pruner_options=dict(schema.pruner.model_extra),
        metric=objective.metric, direction=objective.direction or METRICS[objective.metric],
        seeds=schema.seeds, n_trials=budget.n_trials, timeout=budget.timeout, plot_x=plot_x,
        plot_log_x=schema.plot.log_x, decide=decide,
        time_budget=schema.decide.budget if schema.decide is not None else None,
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


def _param(name: str, axis: Axis, sampler: str, fail) -> Param:
    """A space entry as a Param, its values of the RunConfig field's type; check_space tries them."""
    where = f"space.{name}"
    if axis.bundles is not None:
        bundles = {label: {key: _field_value(key, value, f"{where}.bundles.{label}.{key}", fail)
                           for key, value in overrides.items()} for label, overrides in axis.bundles.items()}
        return Param(name, choices=tuple(bundles), bundles=bundles)
    if name not in field_names():
        raise fail(where, f"unknown config field; known fields: {', '.join(field_names())} "
                          "(or give `bundles:` to name a set of overrides)")
    if axis.values is not None:
        choices = tuple(_field_value(name, value, where, fail) for value in axis.values)
        if len(set(choices)) != len(choices):
            raise fail(where, f"repeats a value: {axis.values}")
        return Param(name, choices=choices)
    if sampler == "grid":
        raise fail(where, "a grid sampler needs a list of values, not a range")
    kind = type(getattr(RunConfig(), name))
    if kind not in (int, float):
        raise fail(where, f"{name} is not numeric: give a list of choices instead of a range")
    low, high, step = (None if value is None else _field_value(name, value, f"{where}.{end}", fail)
                       for end, value in (("low", axis.low), ("high", axis.high), ("step", axis.step)))
    return Param(name, low=low, high=high, log=axis.log, step=step, integer=kind is int)


def _check_each_field_varied_once(space: tuple[Param, ...], seeds: int, fail) -> None:
    claimed: dict[str, str] = {}  # RunConfig field -> the space entry that sets it
    for param in space:
        for field_name in param.fields():
            if field_name in claimed:
                raise fail(f"space.{param.name}", f"sets {field_name}, which space.{claimed[field_name]} "
                                                  "also sets")
            claimed[field_name] = param.name
    if seeds > 1 and "seed" in claimed:
        raise fail("seeds", "space already varies seed; use one or the other")


def _field_value(name: str, value: Any, where: str, fail) -> Any:
    """`value` as the type of RunConfig field `name`, which must exist and may vary between trials."""
    if name not in field_names():
        raise fail(where, f"unknown config field {name!r}; known fields: {', '.join(field_names())}")
    if name in UNSWEEPABLE:
        raise fail(where, "cannot vary between trials: every trial of a sweep shares one data split and "
                          "device; set it in base or with --set")
    try:
        return coerce(name, value, type(getattr(RunConfig(), name)))
    except ConfigError as error:
        raise fail(where, str(error)) from None


def _config_or_fail(base_config: RunConfig, overrides: dict[str, Any], where: str, fail) -> RunConfig:
    try:
        return base_config.replace(overrides, source=where)
    except ConfigError as error:
        raise fail(where, str(error).removeprefix(f"{where}: ")) from None
