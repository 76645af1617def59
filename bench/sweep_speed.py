"""Section `sweep` of bench/speed.py: a real sweep end to end, population 8 against 1.

    python bench/speed.py --only sweep            # learning_rate grid, 2 epochs: 18 trials twice a round
    python bench/sweep_speed.py --sweep hidden_size --epochs 10 --populations 8   # the main job alone

Each run is `runner.run_sweep` on fresh SQLite stores in a temporary folder (the embedded default's
kind), with the data loaded once beforehand. Training is counted two ways: the wall time spent inside
`train_population` (the learner's set-up, training, validation and test passes), and the epochs alone
(each population's `epoch_seconds`, what the trainer logs). The rest of the parent run's duration (from
MLflow's start and end times) is the sweep's own work: Optuna, MLflow, figures, checkpoints, the report.
Rounds alternate the two populations; medians and spreads are printed, nothing is asserted.

Voluntary context switches (the whole process's, per second of epochs) are printed beside: a training
step whose OpenMP workers sleep between operations blocks about 28 times (sweeps/background.py, "Cores"),
about 11,000 a second in the 1-epoch grid on 2 cores; with spinning workers it was 900 a second there,
the tracking thread's own waits (its writes, Python's lock).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmnist_core import data as fdata  # noqa: E402
from fmnist_core.trainer import resolve_device  # noqa: E402


def timed_sweep(name: str, epochs: int, population: int, splits, device: str) -> dict[str, float]:
    """One sweep from scratch: parent run duration, time inside train_population, trials."""
    import optuna
    from mlflow import MlflowClient

    from fmnist_tracking.names import SWEEP_PARENTS
    from sweeps.execution import runner, trials
    from sweeps.trial_record import TrialRecord

    trained = []
    train_population = trials.train_population

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return train_population(*args, **kwargs)
        finally:
            trained.append(time.perf_counter() - started)

    trials.train_population = timed
    forget_compiled_code()
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
            uri = f"sqlite:///{folder}/mlflow.db"
            [summary] = runner.run_sweep(name, overrides={"epochs": epochs, "device": device}, splits=splits,
                                         population=population, tracking_uri=uri, progress=False,
                                         storage=f"sqlite:///{folder}/optuna.db", experiment="bench")
            client = MlflowClient(uri)
            [parent] = client.search_runs([client.get_experiment_by_name("bench").experiment_id],
                                          SWEEP_PARENTS)
            wall = (parent.info.end_time - parent.info.start_time) / 1000
            trial_count = sum(summary.counts.values())
            study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{folder}/optuna.db")
            # Each member of a population records the population's epoch time: count it once per population.
            records = [TrialRecord.of(t) for t in study.trials]
            epochs = sum(r.epoch_seconds * r.epochs / r.population for r in records if r.epochs is not None)
    finally:
        trials.train_population = train_population
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches
    return {"wall": wall, "train": sum(trained), "epochs": epochs, "trials": trial_count,
            "switches": switches}


def forget_compiled_code() -> None:
    """Each sweep pays for compiling the manual update (where it compiles it) as a fresh `cli.py sweep`
    process would, from inductor's disk cache, not reusing what an earlier sweep of this process compiled."""
    from fmnist_core import mlp_manual

    mlp_manual.fused_sgd_update.cache_clear()
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


def outside(measured: dict[str, float], part: str) -> float:
    """Seconds per trial of the parent run's duration outside `part` (train_population, or the epochs)."""
    return (measured["wall"] - measured[part]) / measured["trials"]


def sweep_section(*, name: str = "learning_rate", epochs: int = 2, populations=(1, 8), rounds: int = 2,
                  device: str = "cpu", splits=None) -> None:
    if splits is None:
        splits = fdata.load_splits(None, val_size=10_000, device=resolve_device(device))
    print(f"\n== sweep: `sweep {name} --epochs {epochs}` end to end, population "
          f"{' vs '.join(map(str, populations))}, {rounds} interleaved round(s), device {device}")
    found: dict[int, list[dict]] = {p: [] for p in populations}
    for round_number in range(rounds):
        for population in populations if round_number % 2 == 0 else reversed(populations):
            measured = timed_sweep(name, epochs, population, splits, device)
            found[population].append(measured)
            wall, train, in_epochs = measured["wall"], measured["train"], measured["epochs"]
            print(f"  round {round_number + 1}, population {population}: {wall:.1f} s wall; {train:.1f} s in "
                  f"train_population ({train / wall:.0%}), {in_epochs:.1f} s of it epochs "
                  f"({in_epochs / wall:.0%}); "
                  f"outside them per trial {outside(measured, 'train'):.2f} s / "
                  f"{outside(measured, 'epochs'):.2f} s, {measured['trials']} trials; "
                  f"{measured['switches'] / in_epochs:.0f} voluntary context switches per second of epochs")
    for population, runs in found.items():
        walls = [r["wall"] for r in runs]
        print(f"  population {population}: median wall {statistics.median(walls):.1f} s "
              f"(range {min(walls):.1f}-{max(walls):.1f})")
        for part, name in (("train", "train_population"), ("epochs", "the epochs")):
            shares = [r[part] / r["wall"] for r in runs]
            offs = [outside(r, part) for r in runs]
            print(f"    {name}: {statistics.median(shares):.0%} of the wall time (range {min(shares):.0%}-"
                  f"{max(shares):.0%}); outside it {statistics.median(offs):.2f} s per trial "
                  f"(range {min(offs):.2f}-{max(offs):.2f})")
    if len(populations) == 2:
        low, high = populations
        ratios = [a["wall"] / b["wall"] for a, b in zip(found[low], found[high], strict=True)]
        print(f"  population {high} vs {low}: {statistics.median(ratios):.2f}x faster end to end "
              f"(per round: {', '.join(f'{r:.2f}x' for r in ratios)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="learning_rate")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    args = parser.parse_args()
    sweep_section(name=args.sweep, epochs=args.epochs, populations=tuple(args.populations),
                  rounds=args.rounds, device=args.device)


if __name__ == "__main__":
    main()
