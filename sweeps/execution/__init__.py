"""Running a sweep: one or many workers take trials from an Optuna study, train them, track them.

runner.py      `cli.py sweep` and `cli.py report`: join or create the study and its parent run, work, close
study.py       plan -> Optuna study: sampler, create or resume, the grid's queue, counts
trials.py      the trial loop: claim a population, train it, queue its MLflow work in the background
lease.py       a trial's whole life: its states and every move between them, the background close too
workers.py     this process as a worker: the leases it holds, heartbeats, recovery of dead workers
background.py  the one thread that does a sweep's MLflow work while training goes on
storage.py     Optuna's storage: opening it, the SQLite guard, riding through a database outage
repair.py      `--repair`: stale trials re-queued, runs closed, the report rebuilt
supervisor.py  `--workers N`: local worker processes, signals passed on
rounds.py      a decided sweep's next round: recorded once in the study, then queued, under the claim lock
outage.py      riding through an outage of Optuna's storage or MLflow's database: retries, one line
"""
