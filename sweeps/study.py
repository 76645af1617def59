"""From a definition to Optuna studies: the plan, the sampler, and creating or loading the study.

Kept apart from the trial loop (runner.py) so that creating a study and working on one are
separate steps: any number of workers can `open_study` the same plan and run trials on it.

A plan is one study: the definition, the base RunConfig (definition base + --set overrides),
the implementation variant and the number of seeds. The study is named after the sweep and
the variant (`hidden_size-manual`; `impl_parity` varies impl itself, so it is just the name).
It stores its settings; re-running with other settings is refused rather than mixing trials
trained differently in one study (--fresh replaces the study).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from fmnist_core import tracking
from fmnist_core.config import ConfigError, RunConfig
from sweeps.definitions import DefinitionError, SweepDefinition, check_space, make_pruner

STORAGE_FILE = "optuna.db"
SETTINGS_ATTR = "settings"  # study user attr: what the study's trials were trained with
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the sweep's parent run in MLflow


class StudyError(ConfigError):
    """The stored study cannot be used as asked; the message says what to do."""


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


def default_storage(tracking_uri: str | None = None) -> str:
    """SQLite `optuna.db` next to MLflow's SQLite database (mlruns/ by default)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent if uri.startswith("sqlite:///") \
        else tracking.STORE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / STORAGE_FILE}"


def make_sampler(plan: StudyPlan) -> optuna.samplers.BaseSampler:
    d = plan.definition
    if d.sampler == "grid":
        return optuna.samplers.GridSampler(plan.grid(), seed=0)
    if d.sampler == "random":
        return optuna.samplers.RandomSampler(seed=d.sampler_options.get("seed"))
    # constant_liar: trials asked together (a population) are steered apart from each other.
    return optuna.samplers.TPESampler(constant_liar=True, **d.sampler_options)


def open_study(plan: StudyPlan, storage: str, *, fresh: bool = False) -> optuna.Study:
    """Create the plan's study, or load it to resume; `fresh` deletes a stored one first.

    Its MLflow runs are kept when a study is deleted; a new parent run is made for the new study.
    """
    d = plan.definition
    if fresh:
        try:
            optuna.delete_study(study_name=plan.study_name, storage=storage)
        except KeyError:
            pass  # nothing stored yet
    study = optuna.create_study(storage=storage, study_name=plan.study_name, sampler=make_sampler(plan),
                                pruner=make_pruner(d.pruner, d.pruner_options), direction=d.direction,
                                load_if_exists=True)
    wanted = json.loads(json.dumps(plan.settings()))  # as the storage will give it back
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, wanted)
        study.set_user_attr("sweep", d.name)
    elif stored != wanted:
        raise StudyError(f"study {plan.study_name!r} in {_without_password(storage)} was trained with "
                         f"other settings ({_difference(stored, wanted)}); re-run with the old settings to "
                         "resume it, or add --fresh to start it again")
    return study


def load_study(plan: StudyPlan, storage: str) -> optuna.Study:
    """The plan's stored study (for reports); an error if the sweep never ran."""
    try:
        return optuna.load_study(study_name=plan.study_name, storage=storage, sampler=make_sampler(plan))
    except KeyError:
        raise StudyError(f"no study {plan.study_name!r} in {_without_password(storage)}; run `python "
                         f"cli.py sweep {plan.definition.name}` first (same --impl and --storage)") from None


def _difference(stored: dict, wanted: dict) -> str:
    changes = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if key == "base" and isinstance(old, dict) and isinstance(new, dict):
            changes += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k)]
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return "; ".join(changes)


def _without_password(url: str) -> str:
    """A storage URL fit for messages and tags: user:password@ removed."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.split('@', 1)[1]}" if "@" in rest.split("/", 1)[0] else url
