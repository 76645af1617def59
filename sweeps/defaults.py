"""Defaults of the sweep options, in a module that imports nothing: the CLI reads them for its --help
without loading Optuna, and the code they configure reads them from here."""

DEFAULT_POPULATION = 8  # trials of one shape trained together as one batched computation
DEFAULT_HEARTBEAT = 10  # seconds between a worker's heartbeats for its running trials
GRACE_BEATS = 3  # a trial whose last heartbeat is this many intervals old is stale
DEFAULT_OUTAGE_TIMEOUT = 60  # seconds a worker retries a database that went away (Optuna, MLflow)
