"""How much choosing the epoch on the validation images lifts what they then say, on a real sweep.

    python bench/epoch_selection.py hidden_size                  # the default store (mlruns/)
    python bench/epoch_selection.py learning_rate --tracking-uri sqlite:////tmp/x/mlflow.db

A trial's checkpoint is its best epoch by validation accuracy, chosen on the very 10,000 images that
then score it (`val_correct`): the maximum over epochs of a noisy accuracy lies above what that
epoch would score on fresh images, and more so for a noisy curve than a smooth one, so the bias need
not cancel between configurations. Since 7 December 2026 every trial also keeps its last epoch's vector
(`last_correct`): a fixed epoch, chosen on no image, and the verdicts judge on that.

Printed per configuration (over its seeds, in pp): the best epoch's validation accuracy minus its last
epoch's (`selected - last`: what choosing the epoch adds, mean [min, max]); then the verdicts replayed
on the same trials twice, on the last epochs' vectors (what the sweep reports) and on the best epochs'
own (what it reported before), each with its difference to the best, interval, mean and seeds, and every
configuration whose verdict differs. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeps import trial_record as record  # noqa: E402
from sweeps.analysis import decide, rounds  # noqa: E402
from sweeps.analysis.summary import label_of  # noqa: E402
from sweeps.execution.runner import as_trained, load_definition, plan_studies  # noqa: E402
from sweeps.execution.study import default_storage, load_study  # noqa: E402
from sweeps.trial_record import TrialRecord, config_key  # noqa: E402


def lifts(trials) -> dict[tuple, list[float]]:
    """configuration key -> per trial, its best epoch's validation accuracy minus its last epoch's."""
    out: dict[tuple, list[float]] = {}
    for trial in trials:
        read = TrialRecord.of(trial)
        if read.val_correct is not None and read.last_correct is not None:
            out.setdefault(config_key(trial), []).append(read.val_correct.mean() - read.last_correct.mean())
    return out


def _spread(values: np.ndarray) -> str:
    """mean [min, max], right-aligned in a column of 25."""
    return f"{values.mean():+.3f} [{values.min():+.2f}, {values.max():+.2f}]".rjust(25)


def verdicts(study, plan, judged) -> dict[tuple, tuple[str, str]]:
    """configuration key -> (its verdict, what it rests on), the rounds replayed on `judged`'s vectors: the
    difference to the final best and its interval in pp, the mean accuracy and the seeds."""
    state = rounds.state(study, plan, judged=judged)
    if state is None:
        return {}
    decision, margin = state.decision, plan.rule.margin
    within = decision.within_margin or [False] * len(state.keys)
    said = {}
    for i, key in enumerate(state.keys):
        difference, (low, high) = decision.now(i)
        gap = "" if i == decision.best else f"{100 * difference:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] "
        said[key] = (decide.words(decision.verdicts[i], within[i], margin),
                     f"{gap}({decision.final.means[i]:.4f}, {len(state.trials[i])})")
    return said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep")
    parser.add_argument("--storage", help="the sweep's Optuna storage (default: the tracking store's)")
    parser.add_argument("--tracking-uri", help="the sweep's MLflow store, as `sweep --tracking-uri`")
    parser.add_argument("--impl", help="the implementation's study (default: every one the sweep has)")
    args = parser.parse_args()
    storage = args.storage or default_storage(args.tracking_uri)
    for plan in plan_studies(load_definition(args.sweep), impl=args.impl):
        study = load_study(plan, storage)
        plan = as_trained(study, plan)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        by_config = lifts(complete)
        print(f"{plan.study_name}: {len(complete)} complete trials, {sum(map(len, by_config.values()))} with "
              "both vectors")
        print(f"{'configuration':<34}{'seeds':>6}{'selected - last (pp)':>25}")
        for key, values in by_config.items():
            print(f"{label_of(dict(key)):<34}{len(values):>6}{_spread(100 * np.array(values))}")
        every = [value for values in by_config.values() for value in values]
        if every:
            print(f"{'all trials':<34}{len(every):>6}{_spread(100 * np.array(every))}")
        last = verdicts(study, plan, record.judged_vectors)
        selected = verdicts(study, plan, record.selected_vectors)
        moved = [key for key in last if key not in selected or selected[key][0] != last[key][0]]
        print(f"verdicts at the last epochs (reported) vs at the best epochs, each with its difference to "
              f"the best [interval] in pp (mean, seeds): {len(moved)} of {len(last)} differ")
        for key in last:
            mark = "  <- differs" if key in moved else ""
            shown = [" ".join(said) for said in (last[key], selected.get(key, ("-", "")))]
            print(f"  {label_of(dict(key)):<26}{shown[0]:>48}{shown[1]:>48}{mark}")


if __name__ == "__main__":
    main()
