"""What a run's sweep concluded about it: the sweep's `sweep/verdicts.json`, written and read here.

The file is a contract between packages: the sweep's report (sweeps/analysis/report.py, its records
built by analysis/text.py's verdict_records) writes it with `log_verdicts`, `cli.py best` and `serve`
read it. It holds the sweep's recommendation (analysis/recommend.py's record) and a list of
configurations, best first, each with its run ids, its validation accuracy (mean over seeds) and a
verdict against the best, in the words of sweeps/analysis/words.py. This module reads and writes the
file and knows none of those words: what they say of a run is sweeps/analysis/standing.py's.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fmnist_tracking.names import PARENT_RUN_TAG, SWEEP_PARENTS, SWEEP_TAG, VERDICTS_ARTIFACT, is_sweep_parent


def sweep_parent(client: MlflowClient, run: Run) -> Run | None:
    """The parent run of the sweep `run` is a trial of; None for a run outside a sweep."""
    parent_id = run.data.tags.get(PARENT_RUN_TAG)
    if not parent_id:
        return None
    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        return None
    return parent if is_sweep_parent(parent.data.tags) else None


def log_verdicts(client: MlflowClient, parent_run_id: str, records: list[dict],
                 recommended: dict | None = None) -> None:
    """Write the sweep's verdicts, best first, and its recommendation to its parent run (replacing the
    last report's): {"recommended": {...} | null, "configurations": [...]}."""
    document = {"recommended": recommended, "configurations": records}
    client.log_text(parent_run_id, json.dumps(document, indent=1) + "\n", VERDICTS_ARTIFACT)


def read_document(client: MlflowClient, parent: Run) -> dict | None:
    """The parent's verdicts file as {"recommended", "configurations"}; None when it has none (sweeps
    reported before it existed). Files written before 7 December 2026 are a bare list: no recommendation."""
    with tempfile.TemporaryDirectory(prefix="fmnist-verdicts-") as scratch:
        try:
            path = client.download_artifacts(parent.info.run_id, VERDICTS_ARTIFACT, scratch)
        except (MlflowException, OSError):
            return None
        document = json.loads(Path(path).read_text())
    return {"recommended": None, "configurations": document} if isinstance(document, list) else document


def read_verdicts(client: MlflowClient, parent: Run) -> list[dict] | None:
    """The parent's verdicts, best first; None when it has none (sweeps reported before they existed)."""
    document = read_document(client, parent)
    return None if document is None else document["configurations"]


def read_recommended(client: MlflowClient, parent: Run) -> dict | None:
    """The sweep's recommendation (sweeps/analysis/recommend.py's record); None for older reports."""
    document = read_document(client, parent)
    return None if document is None else document.get("recommended")


@dataclass(frozen=True)
class SweepAnswer:
    """What a sweep's latest report recommends: its parent run, the recommendation (recommend.py's record:
    label, decision, why, next_command, seeds, val_acc, test_acc, trial, run_id, checkpoint, seed) and
    every configuration's verdict, best first."""

    parent: Run
    recommended: dict
    configurations: list[dict]

    @property
    def chosen(self) -> dict:
        """The recommended configuration's entry (its run ids, seeds, verdict)."""
        return next(c for c in self.configurations if c["label"] == self.recommended["label"])

    def lines(self) -> list[str]:
        """What `best` and `serve` say of it: which configuration, why, how settled, what to run next."""
        chosen, top = self.recommended, self.configurations[0]
        name = self.parent.data.tags.get(SWEEP_TAG, "?")
        test = "" if chosen.get("test_acc") is None else f", test {chosen['test_acc']:.4f}"
        lines = [f"sweep {name} (parent run {self.parent.info.run_id}, {self.parent.info.run_name}) "
                 f"recommends {chosen['label']}: {chosen['why']} ({chosen['decision']})",
                 f"its {chosen['seeds']} seed(s): mean val {chosen['val_acc']:.4f}{test}; this checkpoint is "
                 f"seed {chosen['seed']}'s, the best of its seeds by validation accuracy"]
        if top["label"] != chosen["label"]:
            lines.append(f"the best mean is {top['label']} (val {top['accuracy']:.4f}); {chosen['label']} is "
                         f"{self.chosen['verdict']} against it")
        if chosen.get("next_command"):
            lines.append(f"next: {chosen['next_command']}")
        return lines


def sweep_answer(client: MlflowClient, experiment_ids: list[str], sweep: str) -> SweepAnswer | None:
    """The newest parent run of `sweep` whose report recorded a recommendation; None when none did (a
    sweep reported before 7 December 2026: `cli.py report NAME` records one)."""
    from fmnist_tracking.store import search_runs

    for parent in search_runs(client, experiment_ids, sweep=sweep, extra_filter=SWEEP_PARENTS):
        document = read_document(client, parent)
        if document is not None and document.get("recommended"):
            return SweepAnswer(parent, document["recommended"], document["configurations"])
    return None


@dataclass(frozen=True)
class RunInSweep:
    """A run that is a trial of a sweep, with the sweep's last verdicts: what `best` says of how a run it
    picked by its own best_val_acc stands in its sweep (sweeps/analysis/standing.py says it in words;
    this package knows no verdict words)."""

    run_id: str
    best_val_acc: float  # NaN where the run logged none
    sweep_name: str
    records: list[dict] | None  # the configurations, best first; None: the sweep has no verdicts file


def run_in_sweep(client: MlflowClient, run: Run) -> RunInSweep | None:
    """`run` with its sweep's verdicts; None for a run outside a sweep."""
    parent = sweep_parent(client, run)
    if parent is None:
        return None
    return RunInSweep(run.info.run_id, run.data.metrics.get("best_val_acc", math.nan),
                      parent.data.tags.get(SWEEP_TAG, "NAME"), read_verdicts(client, parent))
