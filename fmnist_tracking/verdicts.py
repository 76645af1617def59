"""What a run's sweep concluded about it: the sweep's `sweep/verdicts.json`, written and read here.

The file is a contract between packages: the sweep's report (sweeps/analysis/report.py, its records
built by analysis/text.py's verdict_records) writes it with `log_verdicts`, `cli.py best` reads it.
It holds a list of configurations, best first,
each with its run ids, its validation accuracy (mean over seeds), and a verdict against the best:
"best", "within noise" (Holm-adjusted p >= 0.05 in a paired test), "worse" or "not tested". `best`
picks one run by its own best_val_acc; these sentences say whether that pick is a statistical tie,
and where the sweep's own ranking (by configuration, over seeds) disagrees with it.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fmnist_tracking.names import PARENT_RUN_TAG, SWEEP_TAG, VERDICTS_ARTIFACT, is_sweep_parent


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


def log_verdicts(client: MlflowClient, parent_run_id: str, records: list[dict]) -> None:
    """Write the sweep's verdicts, best first, to its parent run (replacing the last report's)."""
    client.log_text(parent_run_id, json.dumps(records, indent=1) + "\n", VERDICTS_ARTIFACT)


def read_verdicts(client: MlflowClient, parent: Run) -> list[dict] | None:
    """The parent's verdicts, best first; None when it has none (sweeps reported before they existed)."""
    with tempfile.TemporaryDirectory(prefix="fmnist-verdicts-") as scratch:
        try:
            path = client.download_artifacts(parent.info.run_id, VERDICTS_ARTIFACT, scratch)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(path).read_text())


def tie_report(client: MlflowClient, run: Run) -> list[str]:
    """Sentences on `run` against the rest of its sweep; empty outside a sweep."""
    parent = sweep_parent(client, run)
    if parent is None:
        return []
    name = parent.data.tags.get(SWEEP_TAG, "NAME")
    verdicts = read_verdicts(client, parent)
    if not verdicts:
        return [f"no paired evidence for this sweep; run `python cli.py report {name}`"]
    own = next((v for v in verdicts if run.info.run_id in (v.get("run_ids") or [])), None)
    if own is None:
        return [f"this run is not in the sweep's verdicts (it finished after the last report?); run "
                f"`python cli.py report {name}`"]
    top, val = verdicts[0], run.data.metrics.get("best_val_acc", math.nan)
    tied = [v for v in verdicts[1:] if v["verdict"] == "within noise"]
    methods = sorted({v["method"] for v in verdicts[1:] if v.get("method")})
    how = f" ({', '.join(methods)}; p Holm-adjusted)" if methods else ""
    if own is top:
        if not tied:
            worse = [v for v in verdicts[1:] if v["verdict"] == "worse"]
            closest = f"; the closest, {_named(worse[0])}, is worse" if worse else ""
            lines = [f"{own['label']} (val {val:.4f}) is the sweep's best and nothing else is within noise "
                     f"of it{closest}{how}"]
        else:
            lines = [f"{own['label']} (val {val:.4f}) is tied with {', '.join(_named(v) for v in tied)}: "
                     f"within noise{how}, so this pick is a statistical tie; " + _cheapest([top, *tied])]
    else:
        relation = {"within noise": "is within noise of it", "worse": "is worse than it",
                    "not tested": "was not tested against it (nothing measures the noise)"}[own["verdict"]]
        p = f" ({_p(own['p_adjusted'])}{how})" if own.get("p_adjusted") is not None else ""
        lines = [f"this run has the highest best_val_acc ({val:.4f}), but the sweep's own ranking (of "
                 f"configurations, over their seeds) puts {top['label']} first (val {top['accuracy']:.4f}); "
                 f"this run's {own['label']} (val {own['accuracy']:.4f}) {relation}{p}"]
        if tied:
            lines.append(f"within noise of {top['label']}: {', '.join(_named(v) for v in tied)}; "
                         + _cheapest([top, *tied]))
    untested = [v["label"] for v in verdicts if v["verdict"] == "not tested"]
    if untested:
        lines.append("not tested against the best (one seed, no per-image vectors): " + ", ".join(untested))
    return lines


def _cheapest(group: list[dict]) -> str:
    """The cheapest configuration of `group`, by the cost the sweep's conclusion uses (`cost` in
    `cost_name`, e.g. parameters) when the file records it, else by seconds per epoch."""
    key, unit = ("cost", group[0].get("cost_name") or "") if "cost" in group[0] else \
        ("cost_seconds_per_epoch", "s/epoch")
    priced = [v for v in group if v.get(key) is not None]
    if not priced:
        return f"no {unit or 'cost'} recorded to say which of them is cheapest"
    pick = min(priced, key=lambda v: v[key])
    cost = f"{pick[key]:,.0f}" if abs(pick[key]) >= 1000 else f"{pick[key]:.3g}"  # parameter counts
    test = f", test_acc {pick['test_acc']:.4f}" if pick.get("test_acc") is not None else ""
    return f"the cheapest of them is {pick['label']} ({' '.join(filter(None, [cost, unit]))}{test})"


def _named(verdict: dict) -> str:
    p = verdict.get("p_adjusted")
    return f"{verdict['label']} ({'p not computed' if p is None else _p(p)})"


def _p(value: float) -> str:
    """As the sweep's text prints p (sweeps/analysis/evidence.py): rounding never lifts a p under 0.05
    to 0.05, so "worse" never stands beside "p=0.05"."""
    if value < 0.001:
        return "p<0.001"
    shown = f"{value:.3f}" if value < 0.01 else f"{value:.2f}"
    return "p<0.05" if value < 0.05 <= float(shown) else f"p={shown}"
