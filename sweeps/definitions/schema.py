"""The schema of a sweep definition file (see loader.py), as pydantic models.

The models mirror the YAML key by key and refuse unknown keys and wrong types (no "3" for 3, no
1 for true); validators only say what a type cannot (low < high, a sampler's options, a pruner's
options as optuna checks them). `read_file` turns pydantic's errors into one line naming the file
and each dotted field; a field's `description` completes the error "must be ..., got <value>".
What depends on RunConfig (field names, values, grid points) is checked in loader.py.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fmnist_core.config import ConfigError

SAMPLERS = {"grid": (), "random": ("seed",), "tpe": ("seed", "n_startup_trials")}  # type -> options
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",  # optuna.pruners
           "threshold": "ThresholdPruner", "successive_halving": "SuccessiveHalvingPruner",
           "hyperband": "HyperbandPruner"}
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}  # metric -> default direction


class DefinitionError(ConfigError):
    """A sweep file is malformed; the message names the file and the field."""


def make_pruner(kind: str, options: dict[str, Any]):
    """The optuna pruner `kind` (a PRUNERS key) built with `options`; TypeError or ValueError if refused."""
    import optuna  # here, not at the top: loading a definition with no pruner need not import optuna

    cls = getattr(optuna.pruners, PRUNERS[kind])
    inspect.signature(cls).bind(**options)  # TypeError names an unknown or missing option
    return cls(**options)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_TYPE_ONLY = BeforeValidator(lambda value: {"type": value} if isinstance(value, str) else value)
def _labels_as_text(value: Any) -> Any:
    """Bundle labels as text: YAML reads `1:` as a number (kept, as "1"), but `off:`, `on:`, `yes:` and
    `no:` as booleans, which would silently become "False" or "True": those are refused."""
    if not isinstance(value, dict):
        return value
    booleans = [k for k in value if isinstance(k, bool)]
    if booleans:
        raise ValueError("a bundle label reads as a boolean (YAML takes off/on/yes/no for false/true): "
                         "quote it, e.g. 'off':")
    return {str(k): v for k, v in value.items()}


_LABELS_AS_TEXT = BeforeValidator(_labels_as_text)


class _Sampler(_Schema):
    type: Literal[tuple(SAMPLERS)]
    seed: int | None = Field(None, ge=0, description="a non-negative integer")
    n_startup_trials: int | None = Field(None, ge=0, description="a non-negative integer")

    @model_validator(mode="after")
    def _options_fit_the_type(self) -> _Sampler:
        unknown = sorted(self.model_fields_set - {"type", *SAMPLERS[self.type]})
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not an option of {self.type}; allowed: "
                             f"{', '.join(SAMPLERS[self.type]) or 'none'}")
        return self


class _Pruner(_Schema):
    model_config = ConfigDict(extra="allow")  # the options, checked by building the pruner
    type: Literal[tuple(PRUNERS)]

    @model_validator(mode="after")
    def _optuna_accepts_the_options(self) -> _Pruner:
        if self.type != "none" or self.model_extra:
            try:
                make_pruner(self.type, self.model_extra)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{self.type} rejects {self.model_extra}: {error}") from None
        return self


class _Objective(_Schema):
    metric: Literal[tuple(METRICS)] = "val_acc"
    direction: Literal["maximize", "minimize"] | None = None  # None: the metric's, from METRICS


class _Budget(_Schema):
    n_trials: int | None = Field(None, gt=0, description="a positive integer")
    timeout: float | None = Field(None, gt=0, description="a positive number of seconds")


class _Decide(_Schema):
    """The `decide:` block (rule.py): every key optional, the defaults are Rule's."""

    margin: float | None = Field(None, gt=0, lt=1, description="an accuracy between 0 and 1 (0.01 = 1 "
                                 "percentage point)")
    alpha: float | None = Field(None, gt=0, lt=0.5, description="an error rate between 0 and 0.5")
    max_seeds: int | None = Field(None, ge=2, description="an integer >= 2")
    budget: float | None = Field(None, gt=0, description="a positive number of seconds (the default "
                                 "--time-budget: a stop between rounds, never a verdict)")


class _Plot(_Schema):
    x: str | None = None  # unset: the one space name other than seed, if there is only one
    log_x: bool = Field(False, description="true or false")


class Axis(_Schema):
    """A space entry: [values], a {low, high, log, step} range, or {bundles: {name: {...}}}."""

    values: list[Any] | None = Field(None, exclude=True)  # not a key: where a YAML list lands
    low: float | None = Field(None, description="a number")
    high: float | None = Field(None, description="a number")
    log: bool = Field(False, description="true or false")
    step: float | None = Field(None, gt=0, description="a positive number")
    bundles: Annotated[dict[str, dict[str, Any]] | None, _LABELS_AS_TEXT] = None

    @model_validator(mode="before")
    @classmethod
    def _list_or_mapping(cls, raw: Any) -> Any:
        if isinstance(raw, list):
            return {"values": raw}
        if not isinstance(raw, dict) or "values" in raw:
            raise ValueError(f"expected a list of values or a {{low, high}} range, got {raw!r}")
        return raw

    @model_validator(mode="after")
    def _one_shape(self) -> Axis:
        if self.bundles is not None and self.model_fields_set != {"bundles"}:
            raise ValueError("a bundle axis holds only `bundles: {name: {field: value, ...}}`")
        if self.values == [] or self.bundles == {}:
            raise ValueError("empty: give at least one value (or bundle)")
        if self.values is not None or self.bundles is not None:
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range is {low, high} with optional log: true/false and step")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step cannot go with log: true")
        return self


class DefinitionFile(_Schema):
    description: str = Field(description="one line saying what the sweep asks")
    base: dict[str, Any] = Field({}, description="a mapping of RunConfig overrides shared by every trial")
    space: dict[str, Axis] = Field(min_length=1, description="a mapping of at least one parameter to vary")
    sampler: Annotated[_Sampler, _TYPE_ONLY] = Field(
        _Sampler(type="grid"), description=f"{', '.join(SAMPLERS)}, or {{type: ..., options}}")
    pruner: Annotated[_Pruner, _TYPE_ONLY] = Field(
        _Pruner(type="none"), description=f"{', '.join(PRUNERS)}, or {{type: ..., options}}")
    objective: _Objective = _Objective()
    seeds: int = Field(1, gt=0, description="a positive integer")
    budget: _Budget = _Budget()
    decide: _Decide | None = None
    plot: _Plot = _Plot()

    @field_validator("base", "objective", "budget", "plot", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("description")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("required: one line saying what the sweep asks")
        return text.strip()


def read_file(raw: Any, path: Path) -> DefinitionFile:
    """The YAML's data as a DefinitionFile; DefinitionError listing every problem, in one line."""
    try:
        return DefinitionFile.model_validate(raw)
    except ValidationError as error:
        raise DefinitionError(f"{path}: {'; '.join(_problems(error))}") from None


def _problems(error: ValidationError) -> list[str]:
    """pydantic's errors as `dotted.field: problem`, phrased for someone editing the YAML."""
    problems = []
    for problem in error.errors():
        holder, info = _field_at(problem["loc"])
        if problem["type"] == "value_error":
            text = str(problem["ctx"]["error"])
        elif problem["type"] == "missing":
            text = f"required: {info.description}" if info and info.description else "required"
        elif problem["type"] == "extra_forbidden":
            allowed = [key for key, spec in holder.model_fields.items() if not spec.exclude]
            text = f"unknown key; allowed keys: {', '.join(allowed)}"
        else:
            wanted = f"must be {info.description}" if info and info.description else \
                "expected a mapping" if problem["type"] in ("model_type", "dict_type") else problem["msg"]
            text = f"{wanted}, got {problem['input']!r}"
        problems.append(f"{'.'.join(map(str, problem['loc'])) or 'top level'}: {text}")
    return problems


def _field_at(loc: tuple) -> tuple[type[BaseModel] | None, Any]:
    """The model holding the last key of `loc`, and that key's FieldInfo (None if not a field)."""
    kind, holder, info = DefinitionFile, None, None
    for part in loc:
        while get_origin(kind) in (Union, UnionType, Annotated):  # X | None, Annotated[X, ...] -> X
            kind = next(arg for arg in get_args(kind) if arg is not type(None))
        if get_origin(kind) is dict:  # a key the user names: a space entry, a bundle label
            kind, holder, info = get_args(kind)[1], None, None
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            holder, info = kind, kind.model_fields.get(part)
            kind = info.annotation if info else None
        else:
            return None, None
    return holder, info
