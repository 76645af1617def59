"""What a sweep's trial saves to MLflow, and what it costs: `save_result` then `log_result` as a trial calls
them (checkpoint written and checked once, metrics, per-class table from the trainer's own test
predictions, val_correct, the checkpoint uploaded; no figures, no MLflow model), against three earlier
ways, interleaved:

    test pass   the same, but the per-class table from a second pass of the checkpoint over the test
                images, as every trial did before the trainer kept its test predictions
    read back   the same, but the log reads checkpoint.pt back and checks it again before going on, as
                every trial did before issue 26 (load_checkpoint in log_result)
    with model  the same as now, plus the MLflow model exported (torch.export, pt2), as every trial did
                before 7 December 2026

On one trained result of the main job's shape (hidden 1024, 1 epoch on the real data), one SQLite store;
prints each way's median [min, max] and the ratios now/earlier.

    .venv/bin/python bench/trial_save.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import dataclasses

    from fmnist_core.checkpoint import load_checkpoint
    from fmnist_core.config import RunConfig
    from fmnist_core.trainer import save_result, splits_for, train_population
    from fmnist_tracking import run_log, store
    from fmnist_tracking.names import CHECKPOINT_ARTIFACT

    config = RunConfig(hidden_size=1024, epochs=1)
    splits = splits_for(config, None)
    [result] = train_population([config], splits)
    ways = ("now", "test pass", "read back", "with model")
    second_pass = dataclasses.replace(result, test_predictions=None)  # log_result makes its own pass
    times: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="bench-trial-save-") as folder:
        client, experiment_id = store.setup(f"sqlite:///{folder}/mlflow.db", "bench")
        for _ in range(args.rounds):
            for way in ways:  # interleaved: drift hits all alike
                logger = run_log.RunLogger.start(client, experiment_id, config)
                started = time.perf_counter()
                checkpoint = save_result(result, splits, Path(folder, CHECKPOINT_ARTIFACT))
                if way == "read back":
                    checkpoint = load_checkpoint(checkpoint.path)
                logger.log_result(second_pass if way == "test pass" else result, splits, checkpoint,
                                  figures=False, model=way == "with model")
                times[way].append(time.perf_counter() - started)
                logger.end("FINISHED")
    medians = {way: statistics.median(seconds) for way, seconds in times.items()}
    for way, seconds in times.items():
        print(f"trial save, {way:10s}: median {medians[way]:.3f} s [{min(seconds):.3f}, {max(seconds):.3f}]")
    print(f"ratio now/test pass: {medians['now'] / medians['test pass']:.2f}, now/read back: "
          f"{medians['now'] / medians['read back']:.2f}, now/with model: "
          f"{medians['now'] / medians['with model']:.2f} ({args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
