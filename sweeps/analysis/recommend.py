"""The sweep's one answer: which configuration to use, why, how settled that is, and what to run next.

Computed once per report from the verdicts (evidence.py, decide.py) and written everywhere a user looks:
the conclusion and summary.md, `verdicts.json`'s `recommended` entry, the parent run's tags and metrics,
a `verdict`/`recommended` tag on every child run, the study's user attr and optuna-dashboard note. `best`,
`serve`, `--register` and `runs` read it back instead of picking the single run with the highest
accuracy (the luckiest seed, not the answer).

The rule, per kind of evidence:
- decided verdicts (rounds, or a fixed design of >= 2 seeds): the cheapest of the best and those shown
  within ±margin of it (tied, or worse by less than the margin); "shown best" when every other
  configuration is worse by more;
- the one-seed answer (McNemar) and studies without per-image vectors: the configuration with the highest
  validation accuracy, said to be undecided: one seed measures no seed noise.
Its checkpoint is the recommended configuration's seed with the best validation accuracy (the objective).

`decision` says how settled the answer is: "decided" (every configuration worse or tied), "undecided"
(the procedure ended with some undecided, or one seed), "stopped" (a --time-budget, Ctrl-C or a lost
worker stopped the rounds: re-running goes on) or "running" (a report after a round, the sweep goes on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sweeps import trial_record as record
from sweeps.analysis.evidence import DECIDED, Verdict
from sweeps.analysis.summary import (
    DECIDED_NOW,
    NO,
    RUNNING,
    STOPPED,
    UNDECIDED_NOW,
    YES,
    ConfigRow,
    Recommendation,
)
from sweeps.analysis.words import UNDECIDED, WORSE, cost_shown
from sweeps.trial_record import TrialRecord


def recommend(rows: Sequence[ConfigRow], *, sweep: str, direction: str, state: str,
              max_seeds: int | None = None, cost_name: str = "s/epoch") -> Recommendation | None:
    """The recommendation over `rows` (ranked, best first, each with its verdict). `state`: "final" (the
    sweep closed), "stopped" (re-running goes on) or "running" (after a round). `max_seeds` of a decided
    sweep names the next command where it ended undecided; `cost_name` is what the verdicts' costs count
    (the cheapest pick says its cost). None when nothing finished."""
    if not rows:
        return None
    verdicts = [row.verdict for row in rows]
    best, others = verdicts[0], verdicts[1:]
    decided = any(v.method == DECIDED for v in others)
    undecided = [v.label for v in others if v.verdict == UNDECIDED]
    if decided:
        within = [best] + [v for v in others if v.within_margin]  # tied, or worse by less than the margin
        pick = cheapest(within) or best
        if others and all(v.verdict == WORSE and not v.within_margin for v in others):
            why = "shown best: every other configuration is worse"
        elif len(within) > 1 and math.isnan(pick.cost):  # all cost the same: nothing to save
            why = f"the best; within ±{100 * best.margin:.2g} pp of it, at the same cost: " + \
                ", ".join(v.label for v in within[1:])
        elif len(within) > 1:
            why = f"the cheapest of the best and those within ±{100 * best.margin:.2g} pp of it, at " \
                f"{cost_shown(pick.cost)} {cost_name}"
        else:
            why = "the leader: nothing is shown within the margin of it"
        if undecided:
            why += f"; undecided against it: {', '.join(undecided)}"
        settled = DECIDED_NOW if not undecided else UNDECIDED_NOW
    else:
        pick = best
        why = ("the highest validation accuracy; one seed measures no seed noise, so nothing is decided"
               if others else "the only configuration")
        settled = UNDECIDED_NOW if others else DECIDED_NOW
    decision = {"final": settled, "stopped": STOPPED, "running": RUNNING}[state]
    if decision == STOPPED and settled == DECIDED_NOW:
        decision = DECIDED_NOW  # every verdict already reached: nothing left for a re-run to add
    row = next(r for r in rows if r.verdict is pick)
    sign = 1 if direction == "maximize" else -1
    chosen = max(row.trials, key=lambda t: (sign * t.value, -t.number))
    return Recommendation(
        label=row.label, params=dict(row.params), decision=decision, why=why,
        next_command=_next(sweep, decision, decided, max_seeds), seeds=len(row.trials),
        val_acc=pick.accuracy, test_acc=pick.test_acc, trial=chosen.number,
        run_id=TrialRecord.of(chosen).run_id, checkpoint=TrialRecord.of(chosen).checkpoint,
        seed=record.seed_of(chosen))


def cheapest(group: Sequence[Verdict]) -> Verdict | None:
    """The cheapest of `group` by the cost the conclusion prices (None where none is priced); the first
    of equal costs (the better ranked)."""
    priced = [v for v in group if not math.isnan(v.cost)]
    return min(priced, key=lambda v: v.cost) if priced else None


def _next(sweep: str, decision: str, decided: bool, max_seeds: int | None) -> str | None:
    """The command that settles or continues the answer; None when it is settled."""
    if decision in (STOPPED, RUNNING):
        return f"python cli.py sweep {sweep}"  # the rounds go on from the study's record
    if decision == DECIDED_NOW:
        return None
    if not decided:  # one seed, or old studies without per-image vectors: decide in rounds
        return f"python cli.py sweep {sweep} --fresh --max-seeds 5"
    more = (max_seeds or 5) + 3  # the looks' alpha depends on max_seeds: a new study, not a resumed one
    return f"python cli.py sweep {sweep} --fresh --max-seeds {more}"


def child_tags(rows: Sequence[ConfigRow], recommendation: Recommendation | None) -> dict[str, dict[str, str]]:
    """run id -> the `verdict` and `recommended` tags of every COMPLETE child run (updated each report)."""
    tags = {}
    for row in rows:
        chosen = recommendation is not None and row.label == recommendation.label
        for trial in row.trials:
            run_id = TrialRecord.of(trial).run_id
            if run_id:
                tags[run_id] = {"verdict": row.vs_best, "recommended": YES if chosen else NO}
    return tags
