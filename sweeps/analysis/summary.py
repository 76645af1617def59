"""The analysis' data types: a configuration over its seeds (ConfigRow) and a sweep's answer (Summary).

Below everything that uses them: report.py builds them, text.py, figures.py and why_figures.py
draw and write them, and none of those imports the module that orchestrates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna.trial import FrozenTrial

from fmnist_core.config import RunConfig
from fmnist_core.data import INPUT_SIZE, NUM_CLASSES
from sweeps import trial_record as record
from sweeps.analysis import evidence
from sweeps.definitions.plan import describe_params


@dataclass(frozen=True)
class ConfigRow:
    """One configuration (params without the seed) over its COMPLETE seeds, and its verdict."""

    params: dict
    config: RunConfig  # the base with these params applied: what the trials trained
    trials: tuple[FrozenTrial, ...]
    verdict: evidence.Verdict
    seconds_per_epoch: float  # mean over seeds; wall time of the population each trial was trained in
    vectors_kept: bool  # per-image validation correctness known for every seed

    @property
    def label(self) -> str:
        return self.verdict.label

    @property
    def vs_best(self) -> str:
        return self.verdict.verdict

    @property
    def parameters(self) -> int:
        return parameter_count(self.config.hidden_size)


@dataclass(frozen=True)
class Summary:
    study_name: str
    question: str  # the sweep's description
    metric: str  # the objective Optuna optimised
    rows: list[ConfigRow]  # ranked by validation accuracy, best first
    counts: dict[str, int]  # trial state name -> number of trials
    best_trial: FrozenTrial | None  # the best configuration's best seed
    failed: list[FrozenTrial]  # FAIL trials (diverged, refused configurations): not ranked
    cost_name: str  # what the conclusion's "cheapest" is measured in
    conclusion: str
    rounds: list[str] = field(default_factory=list)  # decided sweeps: a line per round
    margin: float | None = None  # the tie margin of decided verdicts (None: one-seed or old tests)

    def failed_by_label(self) -> dict[str, list[FrozenTrial]]:
        """FAIL trials grouped by configuration label."""
        groups: dict[str, list[FrozenTrial]] = {}
        for trial in self.failed:
            groups.setdefault(label_of(record.params_of(trial)), []).append(trial)
        return groups


def parameter_count(hidden_size: int) -> int:
    """Weights and biases of the one-hidden-layer MLP: input -> hidden -> classes."""
    return INPUT_SIZE * hidden_size + hidden_size + NUM_CLASSES * hidden_size + NUM_CLASSES


def label_of(params: dict) -> str:
    return describe_params(params) or "base"

