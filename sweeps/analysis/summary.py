"""The analysis' data types: a configuration over its seeds (ConfigRow), what to use (Recommendation, the
rule in recommend.py) and a sweep's answer (Summary).

Below everything that uses them: report.py builds them, text.py, figures.py and why_figures.py
draw and write them, and none of those imports the module that orchestrates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial

from fmnist_core.config import RunConfig
from fmnist_core.cost import parameter_count
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


# How settled a recommendation is (recommend.py); a child run's `recommended` tag.
DECIDED_NOW, UNDECIDED_NOW, STOPPED, RUNNING = "decided", "undecided", "stopped", "running"
YES, NO = "yes", "no"  # the child runs' `recommended` tag


@dataclass(frozen=True)
class Recommendation:
    label: str  # e.g. `hidden_size=1024`
    params: dict  # the configuration (without the seed)
    decision: str  # DECIDED_NOW | UNDECIDED_NOW | STOPPED | RUNNING
    why: str  # one clause: "the cheapest of the best and those within ±0.5 pp of it, at 814,090 parameters"
    next_command: str | None  # what to run to settle or go on; None when there is nothing to run
    seeds: int  # COMPLETE seeds of the recommended configuration
    val_acc: float  # mean validation accuracy over its seeds
    test_acc: float | None  # mean test accuracy over its seeds (reported, never used to choose)
    trial: int  # its seed with the best objective: the checkpoint `best` and `serve` give
    run_id: str | None
    checkpoint: str | None
    seed: int

    def sentence(self) -> str:
        """What the conclusion, `best` and `serve` say: the configuration, why, and what to run next."""
        test = "" if self.test_acc is None else f", test {self.test_acc:.4f}"
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        text = (f"Recommended: {self.label} ({self.why}; {self.decision}; mean over {seeds}: "
                f"val {self.val_acc:.4f}{test}); its checkpoint is seed {self.seed}'s, the best of its seeds "
                f"(trial {self.trial}).")
        return text + (f" Next: `{self.next_command}`." if self.next_command else "")

    def as_record(self) -> dict:
        """`verdicts.json`'s `recommended` entry and the study's user attr (JSON: NaN becomes null)."""
        return {"label": self.label, "params": self.params, "decision": self.decision, "why": self.why,
                "next_command": self.next_command, "seeds": self.seeds, "val_acc": self.val_acc,
                "test_acc": self.test_acc, "trial": self.trial, "run_id": self.run_id,
                "checkpoint": self.checkpoint, "seed": self.seed}

    def parent_tags(self, rows: Sequence[ConfigRow]) -> dict[str, str]:
        """The sweep's parent run: what to use and how settled, and the seeds each configuration trained."""
        return {"recommended": self.label, "decision": self.decision, "recommended_why": self.why,
                "recommended_run_id": self.run_id or "", "recommended_checkpoint": self.checkpoint or "",
                "recommended_trial": str(self.trial), "next_command": self.next_command or "",
                "seeds": ", ".join(f"{row.label}: {len(row.trials)}" for row in rows)}

    def parent_metrics(self) -> dict[str, float]:
        """The parent's metrics describe the recommended configuration over its seeds, not one seed."""
        metrics = {"recommended_val_acc": self.val_acc, "recommended_seeds": float(self.seeds)}
        if self.test_acc is not None:
            metrics["recommended_test_acc"] = self.test_acc
        return metrics


@dataclass(frozen=True)
class Summary:
    study_name: str
    question: str  # the sweep's description
    metric: str  # the objective Optuna optimised
    rows: list[ConfigRow]  # ranked by validation accuracy, best first
    counts: dict[str, int]  # trial state name -> number of trials
    recommended_trial: FrozenTrial | None  # the recommended configuration's best seed: its checkpoint
    failed: list[FrozenTrial]  # FAIL trials (diverged, refused configurations): not ranked
    cost_name: str  # what the conclusion's "cheapest" is measured in
    conclusion: str
    rounds: list[str] = field(default_factory=list)  # decided sweeps: a line per round
    margin: float | None = None  # the tie margin of decided verdicts (None: one-seed or old tests)
    recommendation: Recommendation | None = None  # what to use (recommend.py); None when nothing finished
    at_last_epoch: bool = False  # judged at the last epochs (trial_record.judged_vectors), not the best ones

    def failed_by_label(self) -> dict[str, list[FrozenTrial]]:
        """FAIL trials grouped by configuration label."""
        groups: dict[str, list[FrozenTrial]] = {}
        for trial in self.failed:
            groups.setdefault(label_of(record.params_of(trial)), []).append(trial)
        return groups


def label_of(params: dict) -> str:
    return describe_params(params) or "base"

