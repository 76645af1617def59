"""A sweep's plan: one Optuna study's worth of a definition, settled before any study exists.

A plan is one study: the definition, the base RunConfig (definition base + --set overrides),
the implementation variant and the number of seeds. The study is named after the sweep and
the variant (`hidden_size-manual`; `impl_parity` varies impl itself, so it is just the name).
`settings()` is what the study stores and compares on resume (execution/study.py): re-running
with other settings is refused rather than mixing trials trained differently in one study.

Plain data, no Optuna: the analysis reads plans as well as the execution that runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from fmnist_core.config import ConfigError, RunConfig
from sweeps.definitions.loader import DefinitionError, SweepDefinition, check_space
from sweeps.definitions.request import SweepRequest
from sweeps.definitions.rule import Rule


@dataclass(frozen=True)
class StudyPlan:
    definition: SweepDefinition
    base: RunConfig
    study_name: str
    seeds: int = 1
    n_trials: int | None = None  # total trials the study should hold; None: the grid, or unbounded
    timeout: float | None = None  # seconds for this invocation
    time_budget: float | None = None  # seconds of this invocation after which no new round starts
    rule: Rule = Rule()  # margin and alpha of the verdicts; with `rounds`, also max_seeds
    rounds: bool = False  # seeds added in rounds where undecided (sweeps/analysis/decide.py)
    confirm: int = 0  # tpe/random: the top K sampled configurations then go through the same rounds

    @property
    def decides(self) -> bool:
        """Whether seeds are added in rounds: a decided grid, or a sampler's confirmation at the end."""
        return self.rounds or self.confirm > 0

    @property
    def seed_axis(self) -> bool:
        """Grid sweeps put the seed on the grid; other samplers repeat each sampled configuration."""
        return self.definition.sampler == "grid" and (self.seeds > 1 or self.rounds)

    @property
    def max_seeds(self) -> int:
        return self.rule.max_seeds if self.decides else self.seeds

    def grid(self) -> dict[str, list]:
        """The grid's axes; `seed` takes 0..max_seeds-1 (a decided sweep queues seed 0 first)."""
        grid = self.definition.grid()
        if self.seed_axis:
            grid["seed"] = list(range(self.max_seeds))
        return grid

    def total_trials(self) -> int | None:
        """Trials the study will hold; None where unbounded or (rounds) known only as it decides."""
        if self.rounds:
            return None
        if self.definition.sampler == "grid":
            size = math.prod(len(values) for values in self.grid().values())
            return min(size, self.n_trials or size)
        return self.n_trials

    def trial_bounds(self) -> tuple[int, int] | None:
        """(fewest, most) trials the study can hold: a decided grid trains first_look (no verdict before)
        to max_seeds seeds of each point; None where only a timeout bounds it."""
        if self.rounds:
            points = math.prod(len(values) for values in self.definition.grid().values())
            return points * self.rule.first_look, points * self.rule.max_seeds
        total = self.total_trials()
        return None if total is None else (total, total)

    def settings(self) -> dict[str, Any]:
        """What makes two trials comparable: stored in the study, compared on resume."""
        d = self.definition
        settings = {"base": self.base.as_dict(), "space": [repr(p) for p in d.space], "seeds": self.seeds,
                    "sampler": [d.sampler, d.sampler_options], "pruner": [d.pruner, d.pruner_options],
                    "objective": [d.metric, d.direction]}
        if self.decides:  # which seeds are queued depends on these
            settings["decide"] = self.rule.as_dict()
        if self.confirm:
            settings["confirm"] = self.confirm
        return settings


def plan_studies(definition: SweepDefinition, request: SweepRequest | None = None,
                 **fields) -> list[StudyPlan]:
    """One plan per implementation variant (`impl="both"`: manual and torch), from `request` (or a
    SweepRequest of `fields`: impl, overrides, seeds, max_seeds, margin, confirm, n_trials, timeout,
    time_budget).

    Rounds (seeds added where undecided) when the definition has a `decide:` block or `max_seeds` is
    given, on a grid; `seeds` forces a fixed design (`--seeds 1`: one seed, the quick answer). `confirm`
    (tpe/random): once the budget is sampled, the top K configurations go through the same rounds."""
    request = request or SweepRequest(name=definition.name, **fields)
    impl, seeds, max_seeds, margin, confirm = (request.impl, request.seeds, request.max_seeds, request.margin,
                                               request.confirm)
    n_trials, timeout, time_budget = request.n_trials, request.timeout, request.time_budget
    overrides = dict(request.overrides)
    if seeds is not None and max_seeds is not None:
        raise DefinitionError("--seeds and --max-seeds: give one: --seeds N trains N seeds of everything, "
                              "--max-seeds M adds seeds in rounds where the answer is undecided, up to M")
    rule = definition.decide or Rule()
    try:
        rule = replace(rule, **{k: v for k, v in (("max_seeds", max_seeds), ("margin", margin))
                                if v is not None})
    except ValueError as error:
        raise DefinitionError(f"--max-seeds/--margin: {error}") from None
    if confirm:
        if definition.sampler == "grid":
            raise DefinitionError("--confirm: a grid sweep decides every configuration itself (a `decide:` "
                                  "block or --max-seeds); --confirm K is for tpe and random sweeps")
        if (seeds or definition.seeds) > 1:
            raise DefinitionError("--confirm and --seeds: confirmation adds seeds itself, where undecided")
        if not (n_trials or definition.n_trials):
            raise DefinitionError("--confirm needs an n_trials budget (--n-trials or budget.n_trials): it "
                                  "starts once that many configurations are sampled")
    rounds = seeds is None and not confirm and definition.sampler == "grid" and (
        definition.decide is not None or max_seeds is not None)
    if max_seeds is not None and definition.sampler != "grid" and not confirm:
        raise DefinitionError(f"{definition.path}: a {definition.sampler} sweep samples configurations; "
                              "rounds of seeds over every configuration are for grid sweeps; --confirm K "
                              "runs the top K sampled ones through them (--seeds N repeats every one)")
    if rounds and n_trials is not None:
        raise DefinitionError("--n-trials: a decided sweep sizes itself (up to max_seeds seeds per "
                              "configuration); use --max-seeds, or --seeds N for a fixed design")
    if rounds and definition.seeds > 1:
        raise DefinitionError(f"--max-seeds: the sweep {definition.name} fixes seeds: "
                              f"{definition.seeds} in {definition.path}; use --seeds N instead")
    swept = definition.fields | ({"seed"} if (seeds or definition.seeds) > 1 or rounds else set())
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
        plans.append(StudyPlan(definition, base, name, seeds=1 if rounds else seeds or definition.seeds,
                               n_trials=n_trials or definition.n_trials,
                               timeout=timeout if timeout is not None else definition.timeout,
                               time_budget=time_budget if time_budget is not None else definition.time_budget,
                               rule=rule, rounds=rounds, confirm=confirm or 0))
    return plans


def fmt_value(value) -> str:
    """A swept value as labels and messages show it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_params(params: dict) -> str:
    """A configuration's label, e.g. `hidden_size=1024, lr=0.1`."""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items())
