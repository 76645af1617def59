"""What `cli.py sweep` was asked, as one frozen object: built once at the edge, handed down whole.

The CLI turns its options into a `SweepRequest`; the runner, the plan (plan_studies) and each of
`--workers N`'s processes read their settings from it, as a run's settings are one `RunConfig`. A new
sweep option is a field here and an option in cli.py, nothing in between. The workers get it as JSON
(`worker_argv`): no option is turned back into argv by hand. Imports nothing heavy (`--help`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist_tracking.defaults import DEFAULT_EXPERIMENT
from sweeps.defaults import DEFAULT_HEARTBEAT, DEFAULT_OUTAGE_TIMEOUT, DEFAULT_POPULATION


@dataclass(frozen=True)
class SweepRequest:
    """One sweep invocation's settings (cli.py's `sweep` options, each documented in its --help)."""

    name: str  # a definition in sweeps/, or a path to a YAML file
    # what the studies train (plan_studies)
    impl: str | None = None  # manual | torch | both; None: the base's
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE (and --epochs)
    seeds: int | None = None  # a fixed design of N seeds
    max_seeds: int | None = None  # rounds of seeds up to this many
    margin: float | None = None  # the tie margin, accuracy
    confirm: int | None = None  # tpe/random: the K best through the rounds
    n_trials: int | None = None
    timeout: float | None = None  # seconds of this invocation before no new trial is asked
    time_budget: float | None = None  # seconds of this invocation before no new round starts
    # how this worker runs them
    population: int = DEFAULT_POPULATION
    heartbeat: int = DEFAULT_HEARTBEAT  # seconds
    outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT  # seconds
    progress: bool = True  # a bar, else a line per trial
    fresh: bool = False  # delete the stored study first
    create: bool = False  # only create the studies
    # where
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    data_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "name", str(self.name))
        object.__setattr__(self, "overrides", dict(self.overrides or {}))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))

    def replace(self, **changes: Any) -> SweepRequest:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepRequest:
        return cls(**json.loads(text))

    def worker_argv(self, cli: Path) -> list[str]:
        """One of `--workers N`'s processes: `cli.py sweep NAME --request JSON`, this request as a worker
        runs it (the study is created already; one line per trial, no bar). Stores given through the
        environment ($OPTUNA_STORAGE, $MLFLOW_TRACKING_URI) are inherited with it."""
        worker = self.replace(fresh=False, create=False, progress=False)
        return [sys.executable, str(cli), "sweep", self.name, "--request", worker.to_json()]
