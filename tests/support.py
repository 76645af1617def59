"""What tests share besides fixtures: the project's root, the local PostgreSQL, docker-compose.yml's
command lines, the process helpers of the server tests, and the constructed Optuna studies of the
analysis tests. Imported as `support` (tests/ is on the path through its conftest); fixtures are
conftest.py's. Heavy imports stay inside the functions: conftest imports this module for every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 - after the path is set

from fmnist_core import data as fdata  # noqa: E402

POSTGRES = "127.0.0.1:5432"  # the local server, trust authentication (started before sessions and CI)
COMPOSE_FILE = ROOT / "docker-compose.yml"


def postgres_admin(statement: str) -> None:
    import psycopg2

    try:
        connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable on {POSTGRES} ({error}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
    connection.autocommit = True  # CREATE / DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def interpolate(text: str, variables: dict[str, str]) -> str:
    """docker compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    import re

    def value(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1) or match.group(4), match.group(2), match.group(3)
        found = variables.get(name)
        if operator in (":-", "-") and (found is None or (operator == ":-" and not found)):
            return argument
        if operator in (":?", "?") and (found is None or (operator == ":?" and not found)):
            raise KeyError(f"compose needs ${name}: {argument}")
        return found or ""

    return re.sub(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))", value, text)


def env_example() -> dict[str, str]:
    """The variables of .env.example, as `cp .env.example .env` gives them to docker compose."""
    pairs = (line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def compose_command(service: str, variables: dict[str, str],
                    local: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a docker-compose.yml service, interpolated with `variables`; each
    (container value -> local value) of `local` is replaced in both, e.g. the host names."""
    import yaml

    spec = yaml.safe_load(COMPOSE_FILE.read_text())["services"][service]
    environment = spec.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)

    def here(text: str) -> str:
        text = interpolate(str(text), variables)
        for container, host in (local or {}).items():
            text = text.replace(container, host)
        return text

    return [here(arg) for arg in spec["command"]], {key: here(value) for key, value in environment.items()}


def stop_group(process, timeout: float = 20) -> None:
    """End a server started with start_new_session: SIGTERM to its whole process group (it and its
    workers), SIGKILL if it has not ended within `timeout` seconds."""
    import os
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Constructed Optuna studies for the analysis tests (test_report, test_summary, test_report_text, ----
# test_sweep_figures, test_why_figures): real in-memory studies holding create_trial trials with the
# user attrs the runner stores. Per-image correctness vectors are built so that each configuration's
# true difference from the best is known by construction.

N_VAL = 2000  # validation images of the constructed trials
VERDICT_KEYS = {"label", "params", "trials", "run_ids", "seeds", "accuracy", "interval", "interval_kind",
                "diff_images", "p_value", "p_adjusted", "verdict", "method", "cost_seconds_per_epoch",
                "cost", "cost_name", "test_acc",
                "margin", "difference", "difference_interval", "decided_at", "within_margin"}
# (above: sweep/verdicts.json's keys, which `cli.py best` reads)
WIDTHS = {"description": "Which hidden size works best?", "base": {"epochs": 3},
          "space": {"hidden_size": [256, 512, 1024, 2048]}, "plot": {"x": "hidden_size", "log_x": True}}


def plan_of(raw: dict, name: str = "question"):
    """The one StudyPlan of the definition `raw` (the YAML's data), as if read from `name`.yaml."""
    from sweeps.definitions.loader import parse_definition
    from sweeps.definitions.plan import plan_studies

    [plan] = plan_studies(parse_definition(raw, name=name, path=Path(f"{name}.yaml")))
    return plan


def right_on(accuracy: float, seed: int = 0):
    """A correctness vector over N_VAL images with `accuracy` of them right."""
    import numpy as np

    vector = np.zeros(N_VAL, dtype=bool)
    vector[np.random.default_rng(seed).choice(N_VAL, size=round(N_VAL * accuracy), replace=False)] = True
    return vector


def losing(vector, images: int, seed: int = 1):
    """`vector` with `images` of its right answers made wrong: the best minus a known number of images."""
    import numpy as np

    out = vector.copy()
    out[np.random.default_rng(seed).choice(np.flatnonzero(vector), size=images, replace=False)] = False
    return out


def history(epochs: int = 3, *, val: float = 0.88, gap: float = 0.02, clip: float = 0.0,
            dead: float = 0.1) -> list[dict]:
    """A trial's per-epoch `history` user attr, as the runner records it."""
    return [{"epoch": e, "train_loss": 0.6 / e, "train_acc": val + gap, "val_loss": 0.4, "val_acc": val,
             "lr": 0.03, "epoch_seconds": 1.0, "samples_per_second": 5e4, "grad_norm": 2.0 / e,
             "clip_fraction": clip, "dead_relu_fraction": dead} for e in range(1, epochs + 1)]


def add(study, plan, params: dict, *, correct=None, seed: int = 0, state=None,
        attrs: dict | None = None, accuracy: float | None = None, seed_param: bool = False) -> None:
    """A finished trial (COMPLETE unless `state`) with the runner's user attrs; `correct` None: an old trial
    without vectors (its value is `accuracy`). The seed is in the record, as the runner keeps it;
    `seed_param`: also an Optuna param, as grid studies before 7 December 2026 kept it."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from sweeps import trial_record as record

    state = TrialState.COMPLETE if state is None else state
    grid = plan.grid()
    params = dict(params, **({"seed": seed} if seed_param and "seed" in grid else {}))
    distributions = {name: CategoricalDistribution(grid[name]) for name in params}
    user_attrs = {"seed": seed, "epoch_seconds": 1.0, "population": 1, "epochs": 3,
                  "mlflow_run_id": f"run-{len(study.trials)}"}
    value = None
    if state == TrialState.COMPLETE:
        value = float(correct.mean()) if correct is not None else accuracy
        user_attrs.update(test_acc=value - 0.005, test_loss=0.3, best_epoch=3, best_val_acc=value,
                          checkpoint="runs:/x/checkpoint.pt")
        if correct is not None:
            user_attrs.update(val_correct=record.pack_correct(correct), n_val=N_VAL,
                              history=history(val=value))
    user_attrs.update(attrs or {})
    curve = {1: 0.8, 2: 0.85, 3: value or 0.1}
    study.add_trial(create_trial(params=params, distributions=distributions, value=value, state=state,
                                 user_attrs=user_attrs, intermediate_values=curve))


def width_study():
    """(study, plan): one seed per width: 2048 best, 1024 four images behind (a tie), 512 and 256 far
    behind."""
    import optuna

    plan = plan_of(WIDTHS, "hidden_size")
    study = optuna.create_study(study_name=plan.study_name, direction="maximize")
    best = right_on(0.90)
    for width, lost in ((256, 120), (512, 80), (1024, 4), (2048, 0)):
        add(study, plan, {"hidden_size": width}, correct=losing(best, lost))
    return study, plan


def clipping_study():
    """(study, plan): the clipping sweep's seven bundles, two seeds each."""
    import optuna

    bundles = {"none": {"clip_mode": "none"}} | {
        f"{mode}-{value:g}": {"clip_mode": mode, "clip_value": value}
        for mode, values in (("value", (0.01, 0.1, 1.0)), ("norm", (0.5, 2.0, 10.0))) for value in values}
    plan = plan_of({"description": "clipping", "base": {"lr": 0.3}, "seeds": 2,
                    "space": {"clipping": {"bundles": bundles}}}, "clipping")
    study = optuna.create_study(direction="maximize")
    for seed in (0, 1):
        for index, label in enumerate(bundles):
            add(study, plan, {"clipping": label}, seed=seed, correct=losing(right_on(0.9, seed), index * 3),
                attrs={"history": history(clip=index / 10)})
    return study, plan


def synthetic_splits(
    n_train: int = 512,
    n_val: int = 128,
    n_test: int = 128,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> fdata.Splits:
    """Tiny made-up Splits for fast tests: each class is a fixed random sparse image plus noise.

    Shapes, dtypes and normalisation match `load_splits`, and an MLP learns it in a few steps.
    """
    generator = torch.Generator().manual_seed(seed)
    lit = torch.rand(len(fdata.CLASSES), fdata.IMAGE_PIXELS, generator=generator) < 0.4  # ~40% of pixels on
    prototypes = lit * (128 + 127 * torch.rand(len(fdata.CLASSES), fdata.IMAGE_PIXELS, generator=generator))

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randperm(count, generator=generator) % len(fdata.CLASSES)  # balanced classes
        noise = 40 * torch.randn(count, fdata.IMAGE_PIXELS, generator=generator)  # pixel units
        pixels = (prototypes[labels] + noise).clamp(0, 255).round().to(torch.uint8)
        images = fdata.normalise(pixels.reshape(count, fdata.IMAGE_SIDE, fdata.IMAGE_SIDE))
        return images.to(device), labels.to(device)

    train_x, train_y = make(n_train)
    val_x, val_y = make(n_val)
    test_x, test_y = make(n_test)
    return fdata.Splits(train_x, train_y, val_x, val_y, test_x, test_y, fdata.MEAN, fdata.STD, "synthetic")


def teacher_dataset(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` random inputs [N, 784] labelled by a random linear teacher: data a small MLP learns
    within a few hundred steps (the learner tests')."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    return x, y


def teacher_batches(data: tuple[torch.Tensor, torch.Tensor], seeds: list[int], steps: int, batch: int):
    """(x [P, B, 784], y [P, B]) per step for members with these seeds: each seed reshuffles `data` every
    epoch in its own order, and members of one seed get the same rows, as the trainer hands them."""
    x, y = data
    orders = {s: torch.Generator().manual_seed(s) for s in dict.fromkeys(seeds)}
    per_epoch = x.shape[0] // batch
    for step in range(steps):
        if step % per_epoch == 0:
            perms = {s: torch.randperm(x.shape[0], generator=g) for s, g in orders.items()}
        start = (step % per_epoch) * batch
        idx = torch.stack([perms[s][start:start + batch] for s in seeds])
        yield x[idx], y[idx]


HEX = "0123456789abcdef"


def runs_with_prefixes(client, experiment_id: str) -> tuple[list[str], str, str]:
    """17 new runs' ids, a hex digit two of them start with, and a 2-digit start none of them has:
    what the run-id prefix tests need (17 ids over 16 digits: some digit is always shared)."""
    ids = [client.create_run(experiment_id, run_name=f"run-{i}").info.run_id for i in range(17)]
    shared = next(digit for digit in HEX if sum(i.startswith(digit) for i in ids) > 1)
    unused = next(a + b for a in HEX for b in HEX if not any(i.startswith(a + b) for i in ids))
    return ids, shared, unused
