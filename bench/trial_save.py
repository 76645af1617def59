"""What a sweep's trial saves to MLflow, and what it costs: `log_result` as a trial calls it (metrics,
checkpoint, tables; no MLflow model) against the same with the MLflow model exported (torch.export, pt2),
as every trial did before 7 December 2026. Interleaved rounds on one trained result of the main job's
shape (hidden 1024, 1 epoch on the real data), a fresh SQLite store each; prints medians and the ratio.

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

    from fmnist_core.config import RunConfig
    from fmnist_core.trainer import save_result, splits_for, train_population
    from fmnist_tracking import run_log, store
    from fmnist_tracking.names import CHECKPOINT_ARTIFACT

    config = RunConfig(hidden_size=1024, epochs=1)
    splits = splits_for(config, None)
    [result] = train_population([config], splits)
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="bench-trial-save-") as folder:
        client, experiment_id = store.setup(f"sqlite:///{folder}/mlflow.db", "bench")
        path = save_result(result, splits, Path(folder, CHECKPOINT_ARTIFACT))
        for _ in range(args.rounds):
            for model in (False, True):  # interleaved: drift hits both alike
                logger = run_log.RunLogger.start(client, experiment_id, config)
                started = time.perf_counter()
                logger.log_result(result, splits, path, figures=False, model=model)
                times[model].append(time.perf_counter() - started)
                logger.end("FINISHED")
    saved, exported = statistics.median(times[False]), statistics.median(times[True])
    print(f"trial save without the MLflow model: median {saved:.2f} s (min {min(times[False]):.2f}, "
          f"max {max(times[False]):.2f})")
    print(f"with it (before):                   median {exported:.2f} s (min {min(times[True]):.2f}, "
          f"max {max(times[True]):.2f})")
    print(f"ratio now/before: {saved / exported:.2f} ({args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
