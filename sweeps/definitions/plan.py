"""A sweep's plan: one Optuna study's worth of a definition, settled before any study exists.

A plan is one study: the definition, the base RunConfig (definition base + --set overrides),
the implementation variant and the number of seeds. The study is named after the sweep and
the variant (`hidden_size-manual`; `impl_parity` varies impl itself, so it is just the name).
`settings()` is what the study stores and compares on resume (execution/study.py): re-running
with other settings is refused rather than mixing trials trained differently in one study.

Plain data, no Optuna: the analysis reads plans as well as the execution that runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmnist_core.config import ConfigError, RunConfig
from sweeps.definitions.loader import DefinitionError, SweepDefinition, check_space


@dataclass(frozen=True)
class StudyPlan:
    definition: SweepDefinition
    base: RunConfig
    study_name: str
    seeds: int = 1
    n_trials: int | None = None  # total trials the study should hold; None: the grid, or unbounded
    timeout: float | None = None  # seconds for this invocation

    @property
    def seed_axis(self) -> bool:
        """Grid sweeps put the seed on the grid; other samplers repeat each sampled configuration."""
        return self.definition.sampler == "grid" and self.seeds > 1

    def grid(self) -> dict[str, list]:
        grid = self.definition.grid()
        if self.seed_axis:
            grid["seed"] = list(range(self.seeds))
        return grid

    def total_trials(self) -> int | None:
        if self.definition.sampler == "grid":
            size = 1
            for values in self.grid().values():
                size *= len(values)
            return min(size, self.n_trials or size)
        return self.n_trials

    def settings(self) -> dict[str, Any]:
        """What makes two trials comparable: stored in the study, compared on resume."""
        d = self.definition
        return {"base": self.base.as_dict(), "space": [repr(p) for p in d.space], "seeds": self.seeds,
                "sampler": [d.sampler, d.sampler_options], "pruner": [d.pruner, d.pruner_options],
                "objective": [d.metric, d.direction]}


def plan_studies(definition: SweepDefinition, *, impl: str | None = None,
                 overrides: dict[str, Any] | None = None, seeds: int | None = None,
                 n_trials: int | None = None, timeout: float | None = None) -> list[StudyPlan]:
    """One plan per implementation variant (`impl="both"`: manual and torch)."""
    overrides = dict(overrides or {})
    swept = definition.fields | ({"seed"} if (seeds or definition.seeds) > 1 else set())
    clash = sorted(set(overrides) & swept)
    if clash:
        raise DefinitionError(f"--set {', '.join(clash)}: varied by the sweep {definition.name} "
                              f"({definition.path}); leave it to the sweep or edit the file")
    if impl is not None and "impl" in definition.fields:
        raise DefinitionError(f"--impl: the sweep {definition.name} compares implementations itself; "
                              "leave --impl out")
    impls = ["manual", "torch"] if impl == "both" else [impl] if impl else [None]
    plans = []
    for variant in impls:
        chosen = dict(overrides, **({"impl": variant} if variant else {}))
        base = RunConfig().replace(definition.base, source=f"{definition.path}: base")
        try:
            base = base.replace(chosen, source="--set")
        except ConfigError as error:
            message = str(error)
            raise ConfigError(message if message.startswith("--set") else f"--set: {message}") from None
        if base.val_size == 0:
            raise DefinitionError(f"{definition.path}: val_size: a sweep selects on the validation split; "
                                  "it needs val_size > 0")
        check_space(definition, base)
        name = definition.name if "impl" in definition.fields else f"{definition.name}-{base.impl}"
        plans.append(StudyPlan(definition, base, name, seeds=seeds or definition.seeds,
                               n_trials=n_trials or definition.n_trials,
                               timeout=timeout if timeout is not None else definition.timeout))
    return plans


def fmt_value(value) -> str:
    """A swept value as labels and messages show it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_params(params: dict) -> str:
    """A configuration's label, e.g. `hidden_size=1024, lr=0.1`."""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items())
