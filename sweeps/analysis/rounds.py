"""Where a decided sweep stands: its study's trials, round by round, replayed through decide.replay.

A decided sweep (a `decide:` block, or --max-seeds) trains seed 0 of every grid point in round 1; the
worker that finds a round finished records the next round in the study's user attr `rounds` (one write,
so the decision is made once) and then queues its trials (execution/rounds.py). The record is what
makes the rounds replayable: round 1 is every configuration's seed 0, round r >= 2 the (configuration,
seed) pairs recorded for it. `state` reads the COMPLETE trials of those rounds into per-configuration
seeds x images matrices (each trial's last epoch: a fixed epoch, so no image judges an epoch it helped
pick) and replays the decisions; the report (its
verdicts, the line per round, the trials spent) and the queueing both read it, so a resumed or
interrupted sweep decides what an uninterrupted one would. Trials that failed (diverged) are left
out, as everywhere in the report.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps import trial_record as record
from sweeps.analysis import decide
from sweeps.analysis.summary import label_of
from sweeps.definitions.plan import StudyPlan
from sweeps.trial_record import config_key, seed_of


@dataclass(frozen=True)
class RoundsState:
    keys: list[tuple]  # configurations (params without the seed), in grid order
    trials: list[list[FrozenTrial]]  # per configuration, its COMPLETE trials, by seed
    decision: decide.Decision
    rounds_done: int  # rounds recorded (1 + the record's length)
    record: list[dict]  # the study's `rounds` attr
    max_seeds: int  # of the plan: the fixed design it is measured against
    first_look: int = 2  # the first round whose look can decide (Rule.first_look)

    @property
    def spent(self) -> tuple[int, int]:
        """(trials that finished, trials of the fixed design with max_seeds of every configuration)."""
        return sum(map(len, self.trials)), len(self.keys) * self.max_seeds

    @property
    def labels(self) -> list[str]:
        return [label_of(dict(key)) for key in self.keys]


def entry_key(entry) -> tuple[tuple, int]:
    """A record's [[name, value], ...], seed as (configuration key, seed)."""
    pairs, seed = entry
    return record.key_of(pairs), int(seed)


def confirmed(study: optuna.Study) -> list[tuple[tuple, int]]:
    """--confirm K: the configurations chosen for confirmation, best first, with their first trial."""
    return [(record.key_of(pairs), number) for pairs, number in record.confirmed(study)]


def state(study: optuna.Study, plan: StudyPlan, trials: list[FrozenTrial] | None = None, *,
          judged: Callable[[list[FrozenTrial]], dict[int, np.ndarray | None]] = record.judged_vectors
          ) -> RoundsState | None:
    """The replayed decisions over the study's COMPLETE trials with per-image vectors (of the confirmed
    configurations, with --confirm); None when none. `judged` picks the vectors the verdicts rest on
    (the last epochs'; bench/epoch_selection.py replays on the best epochs' own for comparison)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    recorded = record.rounds(study)
    chosen = [key for key, _ in confirmed(study)] if plan.confirm else None
    if plan.confirm and not chosen:
        return None
    round_of = rounds_of_trials(recorded)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    vector_of = judged(finished)
    complete: dict[tuple, list[FrozenTrial]] = {}
    for trial in finished:
        if vector_of[trial.number] is not None and (chosen is None or config_key(trial) in chosen):
            complete.setdefault(config_key(trial), []).append(trial)
    if not complete:
        return None
    keys = sorted(complete, key=chosen.index if chosen else _grid_order(plan))
    members = [sorted(complete[key], key=seed_of) for key in keys]
    groups = [np.stack([vector_of[t.number] for t in group]) for group in members]
    seed_rounds = [[round_of(t) for t in group] for group in members]
    rounds_done = 1 + len(recorded)
    # No clock here: the verdicts depend on the trials alone, so any machine, quiet or busy, decides alike
    decision = decide.replay(seed_rounds, groups, plan.rule, sequential=plan.decides, budget_spent=False,
                             last_round=rounds_done)
    return RoundsState(keys, members, decision, rounds_done, recorded, plan.max_seeds, plan.rule.first_look)


def rounds_of_trials(recorded: list[dict]):
    """trial -> the round that trained it: 1 for seed 0 (every configuration's first), else the record's."""
    recorded_in = {entry_key(entry): item["round"] for item in recorded for entry in item["trials"]}

    def round_of(trial: FrozenTrial) -> int:
        seed = seed_of(trial)
        return 1 if seed == 0 else recorded_in.get((config_key(trial), seed), 1)

    return round_of


def history(rounds: RoundsState) -> list[str]:
    """A line per round, as the terminal printed them while the sweep ran (summary.md, the run note)."""
    lines = []
    for number in range(1, len(rounds.decision.rounds) + 1):
        queued = len(rounds.record[number - 1]["trials"]) if number <= len(rounds.record) else 0
        lines.append(round_line(rounds, number, queued, rounds.record[number - 1] if queued else None))
    return lines


def round_line(rounds: RoundsState, number: int, queued: int, next_round: dict | None = None) -> str:
    """What the terminal prints after round `number`: decided, undecided, and the seeds added where."""
    log = rounds.decision.rounds[number - 1]
    labels = rounds.labels
    leader = log["leader"]
    decided = ", ".join(f"{labels[c]} {verdict}" for c, verdict in sorted(log["decided"].items())) or "none"
    undecided = ", ".join(labels[c] for c in log["undecided"]) or "none"
    head = f"Round {number} ({log['trials']} trial{'s' if log['trials'] != 1 else ''}): leader " \
           f"{labels[leader]}; decided now: {decided}; undecided: {undecided}"
    if number < rounds.first_look:
        head += (f" (no verdict before every configuration has {rounds.first_look} seeds, the first that "
                 "measure its own seed noise: each gets one more)")
    if next_round is not None:  # from the record: what this round's look queued
        added = [label_of(dict(entry_key(entry)[0])) for entry in next_round["trials"]]
    else:
        added = [labels[c] for c in rounds.decision.additions]
    if queued and added:
        return f"{head}. Round {number + 1}: one more seed of " + ", ".join(added) + \
            f" ({queued} trial{'s' if queued != 1 else ''})."
    return f"{head}. Stopped: {rounds.decision.stop_reason}."


def _grid_order(plan: StudyPlan):
    """Sort key of a configuration: its grid point's position (ties for the best keep that order)."""
    grid = plan.definition.grid()
    names = list(grid)
    points = itertools.product(*grid.values())
    order = {tuple(zip(names, values, strict=True)): i for i, values in enumerate(points)}

    def position(key: tuple):
        return order.get(tuple((name, dict(key).get(name)) for name in names), len(order)), repr(key)

    return position
