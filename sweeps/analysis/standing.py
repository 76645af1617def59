"""How a run stands in its sweep, in words: what `cli.py best` (and `serve`) say of a run picked by its own
best_val_acc, read from the sweep's verdicts file (fmnist_tracking/verdicts.py reads it, knowing no words).

The sweep ranks configurations by their mean over seeds, while a single run's best_val_acc is one seed's
(the luckiest, among many). So the sentences say where the sweep's own ranking puts the run's
configuration and against which best, with the verdict's words (words.py) and what it rests on; which
configuration the file offers instead (the cheapest of those tied with the best, by the cost the
sweep's conclusion priced); and which configurations were not tested at all. Older files' words are
read as today's ("within noise": not shown different).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweeps.analysis.words import (
    LOWER,
    NOT_SHOWN,
    NOT_TESTED,
    TIED,
    UNDECIDED,
    WORSE,
    cost_shown,
    current,
    p_said,
)

if TYPE_CHECKING:
    from fmnist_tracking.verdicts import RunInSweep

# The verdict of the run's configuration against the sweep's best, as a clause.
RELATIONS = {WORSE: "is worse than it",
             UNDECIDED: "is undecided against it (neither worse nor shown tied within the seeds the sweep "
                        "allowed)",
             NOT_SHOWN: "is not shown different from it (one seed: not a tie)",
             LOWER: "is lower than it on these images (one seed: seed noise not measured)",
             NOT_TESTED: "was not tested against it (nothing measures the noise)"}


def standing(place: RunInSweep | None) -> list[str]:
    """Sentences on a run against the rest of its sweep, and which configuration to use; empty outside a
    sweep (`place` None)."""
    if place is None:
        return []
    name = place.sweep_name
    if not place.records:
        return [f"no paired evidence for this sweep; run `python cli.py report {name}`"]
    verdicts = [{**record, "verdict": current(record["verdict"])} for record in place.records]
    own = next((v for v in verdicts if place.run_id in (v.get("run_ids") or [])), None)
    if own is None:
        return [f"this run is not in the sweep's verdicts (it finished after the last report?); run "
                f"`python cli.py report {name}`"]
    top, val = verdicts[0], place.best_val_acc
    margin = top.get("margin")
    how = _how(verdicts)
    if own is top:
        lines = [f"{own['label']} (val {val:.4f}) is the sweep's best" + _relation_of_others(verdicts, how)]
    else:
        relation = f"is tied with it within ±{_pp(margin)}" if own["verdict"] == TIED else \
            RELATIONS[own["verdict"]]
        p = f" ({p_said(own['p_adjusted'])}{how})" if own.get("p_adjusted") is not None else \
            f" ({how.strip(' ()')})" if how else ""
        lines = [f"this run has the highest best_val_acc ({val:.4f}), but the sweep's own ranking (of "
                 f"configurations, over their seeds) puts {top['label']} first (val {top['accuracy']:.4f}); "
                 f"this run's {own['label']} (val {own['accuracy']:.4f}) {relation}{p}"]
    return lines + _alternatives(verdicts, margin)


def _alternatives(verdicts: list[dict], margin: float | None) -> list[str]:
    """Those tied with the best (and the cheapest of them), else those not shown different; and those
    not tested."""
    top, others = verdicts[0], verdicts[1:]
    tied = [v for v in others if v["verdict"] == TIED]
    unshown = [v for v in others if v["verdict"] == NOT_SHOWN]
    lines = []
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
    """How the rest stand against the best, where the run's configuration is the best."""
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
    """The methods of the comparisons with the best, e.g. " (exact McNemar test; p Holm-adjusted)"."""
    methods = sorted({v["method"] for v in verdicts[1:] if v.get("method")})
    if not methods:
        return ""
    adjusted = any(v.get("p_adjusted") is not None for v in verdicts[1:])
    return f" ({', '.join(methods)}{'; p Holm-adjusted' if adjusted else ''})"


def _pp(margin: float | None) -> str:
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
    test = f", test_acc {pick['test_acc']:.4f}" if pick.get("test_acc") is not None else ""
    return f"{lead}{pick['label']} ({' '.join(filter(None, [cost_shown(pick[key]), unit]))}{test})"


def _named(verdict: dict) -> str:
    p = verdict.get("p_adjusted")
    return f"{verdict['label']} ({'p not computed' if p is None else p_said(p)})"
