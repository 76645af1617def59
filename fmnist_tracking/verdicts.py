"""What a run's sweep concluded about it: the sweep's `sweep/verdicts.json`, written and read here.

The file is a contract between packages: the sweep's report (sweeps/analysis/report.py, its records
built by analysis/text.py's verdict_records) writes it with `log_verdicts`, `cli.py best` reads it.
It holds a list of configurations, best first,
each with its run ids, its validation accuracy (mean over seeds), and a verdict against the best:
"best", "worse", "tied" (within the sweep's margin, an equivalence verdict), "undecided", "lower on
these images (seed noise not measured)" (one seed, McNemar significant; older files say "worse"), "not
shown different" (one seed, McNemar not significant: absence of evidence, not a tie; older files say
"within noise") or "not tested". `best` picks one run by its own best_val_acc; these sentences say
how that pick stands, which configuration to use (the cheapest of those tied with the best), and
where the sweep's own ranking (by configuration, over seeds) disagrees with the pick.
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


# The verdict words of sweeps/analysis/evidence.py (a contract: this package cannot import it). Reports
# written before decided sweeps said "within noise" for a one-seed McNemar p >= 0.05: read as NOT_SHOWN.
BEST, WORSE, TIED, UNDECIDED, NOT_SHOWN, NOT_TESTED = ("best", "worse", "tied", "undecided",
                                                       "not shown different", "not tested")
LOWER = "lower on these images (seed noise not measured)"  # one seed, McNemar significant
LEGACY = {"within noise": NOT_SHOWN}


def tie_report(client: MlflowClient, run: Run) -> list[str]:
    """Sentences on `run` against the rest of its sweep, and which configuration to use; empty outside a
    sweep."""
    parent = sweep_parent(client, run)
    if parent is None:
        return []
    name = parent.data.tags.get(SWEEP_TAG, "NAME")
    verdicts = read_verdicts(client, parent)
    if not verdicts:
        return [f"no paired evidence for this sweep; run `python cli.py report {name}`"]
    for verdict in verdicts:
        verdict["verdict"] = LEGACY.get(verdict["verdict"], verdict["verdict"])
    own = next((v for v in verdicts if run.info.run_id in (v.get("run_ids") or [])), None)
    if own is None:
        return [f"this run is not in the sweep's verdicts (it finished after the last report?); run "
                f"`python cli.py report {name}`"]
    top, val = verdicts[0], run.data.metrics.get("best_val_acc", math.nan)
    tied = [v for v in verdicts[1:] if v["verdict"] == TIED]
    unshown = [v for v in verdicts[1:] if v["verdict"] == NOT_SHOWN]
    margin = top.get("margin")
    how = _how(verdicts)
    if own is top:
        lines = [f"{own['label']} (val {val:.4f}) is the sweep's best" + _relation_of_others(verdicts, how)]
    else:
        relation = {TIED: f"is tied with it within ±{_pp(margin)}", WORSE: "is worse than it",
                    UNDECIDED: "is undecided against it (neither worse nor shown tied within the seeds "
                               "the sweep allowed)",
                    NOT_SHOWN: "is not shown different from it (one seed: not a tie)",
                    LOWER: "is lower than it on these images (one seed: seed noise not measured)",
                    NOT_TESTED: "was not tested against it (nothing measures the noise)"}[own["verdict"]]
        p = f" ({_p(own['p_adjusted'])}{how})" if own.get("p_adjusted") is not None else \
            f" ({how.strip(' ()')})" if how else ""
        lines = [f"this run has the highest best_val_acc ({val:.4f}), but the sweep's own ranking (of "
                 f"configurations, over their seeds) puts {top['label']} first (val {top['accuracy']:.4f}); "
                 f"this run's {own['label']} (val {own['accuracy']:.4f}) {relation}{p}"]
    if tied:
        pick = _cheapest([top, *tied], "the cheapest of those tied with the best: ")
        lines.append(f"tied with {top['label']} within ±{_pp(margin)}: "
                     f"{', '.join(v['label'] for v in tied)}; use {pick}")
    elif unshown:
        pick = _cheapest([top, *unshown], "the cheapest of them is ")
        lines.append(f"not shown different from {top['label']} (one seed each, so not a tie): "
                     f"{', '.join(_named(v) for v in unshown)}; {pick}; a decided sweep (--max-seeds) says "
                     "whether it is within a margin of the best")
    untested = [v["label"] for v in verdicts if v["verdict"] == NOT_TESTED]
    if untested:
        lines.append("not tested against the best (one seed, no per-image vectors): " + ", ".join(untested))
    return lines


def _relation_of_others(verdicts: list[dict], how: str) -> str:
    others = verdicts[1:]
    if not others:
        return ", the only configuration"
    if all(v["verdict"] in (WORSE, LOWER) for v in others):
        closest = others[0]
        word = "worse" if closest["verdict"] == WORSE else LOWER
        every = "worse" if all(v["verdict"] == WORSE for v in others) else "lower on these images"
        return f" and every other configuration is {every}; the closest, {_named(closest)}, is {word}{how}"
    if any(v["verdict"] in (TIED, UNDECIDED) for v in others):
        undecided = [v["label"] for v in others if v["verdict"] == UNDECIDED]
        return f"{how}" + (f"; undecided against it: {', '.join(undecided)}" if undecided else "")
    return f" by mean, but not shown better than all{how}"


def _how(verdicts: list[dict]) -> str:
    methods = sorted({v["method"] for v in verdicts[1:] if v.get("method")})
    if not methods:
        return ""
    adjusted = any(v.get("p_adjusted") is not None for v in verdicts[1:])
    return f" ({', '.join(methods)}{'; p Holm-adjusted' if adjusted else ''})"


def _pp(margin) -> str:
    return "the sweep's margin" if margin is None else f"{100 * margin:.2g} pp"


def _cheapest(group: list[dict], lead: str = "") -> str:
    """The cheapest configuration of `group`, by the cost the sweep's conclusion uses (`cost` in
    `cost_name`, e.g. parameters) when the file records it, else by seconds per epoch."""
    key, unit = ("cost", group[0].get("cost_name") or "") if "cost" in group[0] else \
        ("cost_seconds_per_epoch", "s/epoch")
    priced = [v for v in group if v.get(key) is not None]
    if not priced:
        return f"{lead}none priced (no {unit or 'cost'} recorded to say which is cheapest)"
    pick = min(priced, key=lambda v: v[key])
    cost = f"{pick[key]:,.0f}" if abs(pick[key]) >= 1000 else f"{pick[key]:.3g}"  # parameter counts
    test = f", test_acc {pick['test_acc']:.4f}" if pick.get("test_acc") is not None else ""
    return f"{lead}{pick['label']} ({' '.join(filter(None, [cost, unit]))}{test})"


def _named(verdict: dict) -> str:
    p = verdict.get("p_adjusted")
    return f"{verdict['label']} ({'p not computed' if p is None else _p(p)})"


def _p(value: float) -> str:
    """As the sweep's text prints p (sweeps/analysis/wording.py): rounding never lifts a p under 0.05
    to 0.05, so "worse" never stands beside "p=0.05"."""
    if value < 0.001:
        return "p<0.001"
    shown = f"{value:.3f}" if value < 0.01 else f"{value:.2f}"
    return "p<0.05" if value < 0.05 <= float(shown) else f"p={shown}"
