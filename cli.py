"""Command line: a thin click group over fmnist_core and sweeps.

Each command parses and checks its options, builds its config (a RunConfig, or for `sweep` a
SweepRequest) and calls the library: `sweep` one of run, create-then-supervise (--workers) or
repair. Mistakes a user can make (bad option values, missing data, foreign checkpoints) end with
one line on stderr and exit code 2, never a traceback.
Heavy imports (torch, mlflow, optuna) happen inside commands, so `--help` is instant.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from fmnist_core.config import CHOICES, ConfigError, RunConfig
from fmnist_tracking.defaults import DEFAULT_EXPERIMENT
from sweeps.defaults import DEFAULT_HEARTBEAT, DEFAULT_OUTAGE_TIMEOUT, DEFAULT_POPULATION, GRACE_BEATS

ROOT = Path(__file__).resolve().parent


class Command(click.Command):
    """A command whose line in `cli.py --help` is the whole first sentence of its docstring: click cuts it
    to fit the terminal with "..." otherwise. Keep that sentence short: it wraps past 65 characters."""

    def get_short_help_str(self, limit: int = 45) -> str:
        return super().get_short_help_str(limit=sys.maxsize)


class Group(click.Group):
    """Turns the errors a user can cause into `Error: ...` and exit code 2."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as error:
            if not isinstance(error, user_errors()):
                raise
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can cause: ConfigError, and DataError and CheckpointError where their modules are
    loaded (one that is not cannot have raised its error). Importing them here would load torch before
    every command, `--help` included."""
    errors: list[type[Exception]] = [ConfigError]
    for module, name in (("fmnist_core.data", "DataError"), ("fmnist_core.checkpoint", "CheckpointError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def config_options(command):
    """One option per RunConfig field, with the field's default and help text."""
    for spec in reversed(dataclasses.fields(RunConfig)):
        flag = spec.name.replace("_", "-")
        help_text = spec.metadata["help"]
        if spec.type == "bool":
            decl = [f"--{flag}/--no-{flag}"]
            kind = bool
        else:
            decl = [f"--{flag}"]
            kind = click.Choice(CHOICES[spec.name]) if spec.name in CHOICES else {"int": int, "float": float,
                                                                                   "str": str}[spec.type]
        command = click.option(*decl, spec.name, type=kind, default=spec.default, show_default=True,
                               help=help_text)(command)
    return command


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="FMNIST_DATA", default=None,
    help="Fashion-MNIST folder (gzipped or raw IDX). Default: $FMNIST_DATA, ./data, "
         "/usr/share/datasets/fashion-mnist, else download into ./data.")


@click.group(cls=Group)
def cli() -> None:
    """Sweeps of fully-connected networks on Fashion-MNIST, tracked in MLflow."""


tracking_uri_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
    help="MLflow store or server. Default: $MLFLOW_TRACKING_URI, else the embedded sqlite store in mlruns/.")
experiment_option = click.option(
    "--experiment", default=DEFAULT_EXPERIMENT, show_default=True,
    help="MLflow experiment name.")


def store_options(command):
    """--tracking-uri and --experiment: where a command finds its runs."""
    return tracking_uri_option(experiment_option(command))


@cli.command()
@config_options
@data_dir_option
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the best-validation checkpoint. Default: checkpoints/<name>.pt (printed).")
@store_options
@click.option("--track/--no-track", default=True, show_default=True,
              help="Log the run (params, per-epoch metrics, figures, checkpoint, model) to MLflow.")
def train(data_dir: Path | None, checkpoint: Path | None, tracking_uri: str | None, experiment: str,
          track: bool, **settings) -> None:
    """Train one model with a live progress bar, write its checkpoint and log the run to MLflow."""
    cfg = RunConfig(**settings)  # a bad value is refused before torch is loaded
    from fmnist_core.trainer import Diverged

    if not track:
        from fmnist_core.trainer import save_result, splits_for
        from fmnist_tracking.console import train_with_progress

        splits = splits_for(cfg, data_dir)
        try:
            result = train_with_progress(cfg, splits)
        except Diverged as error:
            click.echo(f"Error: {error}; no checkpoint written. Try a lower --lr or --clip-mode norm.",
                       err=True)
            sys.exit(1)
        click.echo(f"Checkpoint: {save_result(result, splits, checkpoint).path}")
        return
    from fmnist_tracking.run_log import train_tracked
    from fmnist_tracking.signals import Terminated

    try:
        train_tracked(cfg, data_dir=data_dir, tracking_uri=tracking_uri, experiment=experiment,
                      checkpoint=checkpoint)
    except Diverged as error:
        click.echo(f"Error: {error}; the MLflow run is marked FAILED. Try a lower --lr or --clip-mode norm.",
                   err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted: the MLflow run is marked KILLED.", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("Terminated: the MLflow run is marked KILLED.", err=True)
        sys.exit(143)


def address_options(what: str, port: int):
    """--host and --port of a server the CLI starts (`what` names it in the help)."""
    host = click.option("--host", default="127.0.0.1", show_default=True,
                        help=f"Interface to bind. {what} has no login: keep it on loopback unless the "
                             "network is trusted.")
    port = click.option("--port", type=click.IntRange(1, 65535), default=port, show_default=True,
                        help="TCP port.")
    return lambda command: host(port(command))


MODEL_SOURCES = (
    ("--run-id", "Serve this run's model: its id, or the start of it as `runs` shows it."),
    ("--sweep", "Serve this sweep's recommended model (as `best --sweep`: the configuration it decided on, "
                "its best seed)."),
    ("--model-uri", "Serve this MLflow model instead, e.g. models:/fmnist-mlp@champion or runs:/RUN_ID/model "
                    "(RUN_ID as for --run-id)."),
)


def model_source_options(command):
    """--run-id, --sweep, --model-uri: where the served model comes from (one of them; none: the best run)."""
    for flag, help_text in reversed(MODEL_SOURCES):
        command = click.option(flag, default=None, help=help_text)(command)
    return command


def exec_server(argv: list[str], environment: dict[str, str] | None = None) -> None:
    """Replace this process with the server: Ctrl-C and SIGTERM reach it directly."""
    sys.stdout.flush()
    os.execve(argv[0], argv, os.environ if environment is None else environment)


@cli.command()
@click.option("--sweep", default=None,
              help="Open on this sweep's runs: best validation accuracy first, with the params it varies and "
                   "validation/test accuracy as columns (an MLflow saved view, `sweep-NAME`).")
@address_options("The UI", 5000)
@store_options
def ui(sweep: str | None, host: str, port: int, tracking_uri: str | None, experiment: str) -> None:
    """Start the MLflow UI on the tracking store and print its address.

    The store is --tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded one in mlruns/.
    """
    from fmnist_tracking.servers import save_sweep_view, ui_command, ui_run_url, ui_runs_url
    from fmnist_tracking.store import setup

    argv, environment, uri, experiment_id = ui_command(tracking_uri, host, port, experiment)
    view, parents = None, []
    if sweep is not None:
        client = setup(uri, experiment)[0]
        refuse_unknown_sweep_runs(client, experiment_id, sweep)
        view, parents = save_sweep_view(client, experiment_id, sweep, sweep_ranking(sweep),
                                        sweep_log_axes(sweep))
    click.echo(f"MLflow UI over {uri}: {ui_runs_url(host, port, experiment_id, view)} (Ctrl-C stops it)")
    for parent in parents:
        click.echo(f"  the sweep's conclusion, figures and ranked table: "
                   f"{ui_run_url(host, port, experiment_id, parent)}")
    exec_server(argv, environment)


@cli.command()
@click.option("--sweep", default=None,
              help="Only the trial runs of this sweep (runs tagged sweep=NAME), ranked by its objective.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Runs shown: the newest, or with --sweep the best ranked.")
@store_options
def runs(sweep: str | None, limit: int, tracking_uri: str | None, experiment: str) -> None:
    """A table of runs, newest first: status, key params and metrics.

    With --sweep: the sweep's runs ranked by its objective (from its definition in sweeps/; the
    best validation accuracy when NAME is not a definition here), with the params it varies.
    Column best/epochs: the epoch whose weights were kept / the epochs asked for.
    """
    from fmnist_tracking.registry import runs_table
    from fmnist_tracking.store import setup

    client, experiment_id = setup(tracking_uri, experiment, create=False, first=first_step(sweep))
    if sweep is not None:
        refuse_unknown_sweep_runs(client, experiment_id, sweep)
    ranking = sweep_ranking(sweep) if sweep is not None else None
    click.echo(runs_table(client, [experiment_id], sweep=sweep, limit=limit, ranking=ranking))


def sweep_ranking(name: str):
    """The objective of sweep NAME's definition; best validation accuracy if NAME is no definition here."""
    from fmnist_tracking.registry import Ranking
    from sweeps.definitions.loader import DefinitionError, list_definitions, load_definition

    if name not in list_definitions():
        return Ranking()
    try:
        definition = load_definition(name)
    except DefinitionError as error:
        click.echo(f"note: ranking by best_val_acc: {error}", err=True)
        return Ranking()
    return Ranking(definition.metric, definition.direction)


def sweep_log_axes(name: str) -> set[str]:
    """The param sweep NAME's definition plots on a log axis (`plot: {x, log_x: true}`); none if NAME is
    no definition here or its definition does not load (sweep_ranking says so)."""
    from sweeps.definitions.loader import DefinitionError, list_definitions, load_definition

    if name not in list_definitions():
        return set()
    try:
        definition = load_definition(name)
    except DefinitionError:
        return set()
    return {definition.plot_x} if definition.plot_log_x and definition.plot_x else set()


def first_step(sweep: str | None) -> str:
    """What to do first when the store has no experiment yet: run the sweep asked about, or train."""
    return f"run the sweep first (python cli.py sweep {sweep})" if sweep else \
        "train a model first (python cli.py train)"


def refuse_unknown_sweep_runs(client, experiment_id: str, name: str) -> None:
    """refuse_unknown_sweep for the commands that look for a sweep's runs in an experiment."""
    from fmnist_tracking.store import search_runs

    refuse_unknown_sweep(name, lambda: search_runs(client, [experiment_id], sweep=name, limit=1))


def refuse_unknown_sweep(name: str, left_behind: Callable[[], object]) -> None:
    """Refuse sweep NAME as `cli.py sweep NAME` does (not a known sweep; the known ones) when no definition
    in sweeps/ has that name and `left_behind()` finds nothing of it (runs, studies): a typo, which advice
    to run the sweep would not mend. A sweep run from a YAML file elsewhere is known by what it left."""
    from sweeps.definitions.loader import list_definitions, load_definition

    if name not in list_definitions() and not left_behind():
        load_definition(name)  # raises the loader's DefinitionError: "no sweep named ...; known sweeps: ..."


@cli.command()
@click.option("--sweep", default=None, help="Only consider the runs of this sweep.")
@click.option("--metric", default="val_acc", show_default=True,
              help="Validation metric to select by: val_acc (a run's best validation accuracy, logged as "
                   "best_val_acc). Test metrics are refused: the test set is only reported.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the checkpoint (the sweep's recommendation with --sweep).")
@click.option("--register", is_flag=True,
              help="Also register its MLflow model as fmnist-mlp and point the alias champion at it.")
@click.option("--ensemble", is_flag=True,
              help="With --sweep: fold the recommended configuration's seeds into one network whose logits "
                   "are their mean (k seeds of H units: k*H units), logged as a run of its own.")
@data_dir_option
@store_options
def best(sweep: str | None, metric: str, out: Path, register: bool, ensemble: bool, data_dir: Path | None,
         tracking_uri: str | None, experiment: str) -> None:
    """Fetch the model to use and verify its checkpoint.

    With --sweep: the sweep's recommendation (the configuration it decided on, e.g. the cheapest tied with
    the best), its seed with the best validation accuracy. Otherwise the best FINISHED run by validation
    accuracy. The checkpoint's validation accuracy is recomputed and must match what the run logged
    before the file is written to --out.
    """
    from fmnist_tracking.registry import fetch_best, fetch_ensemble
    from fmnist_tracking.store import selection_metric, setup
    from sweeps.analysis.standing import standing

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    selection_metric(metric)  # a test metric is refused before anything is looked up
    client, experiment_id = setup(tracking_uri, experiment, create=False, first=first_step(sweep))
    if sweep is not None:
        refuse_unknown_sweep_runs(client, experiment_id, sweep)
    if ensemble:
        if sweep is None:
            raise click.BadParameter("folds a sweep's recommended configuration: give --sweep NAME",
                                     param_hint="--ensemble")
        found = fetch_ensemble(client, [experiment_id], out, sweep=sweep, data_dir=data_dir,
                               register=register)
    else:
        found = fetch_best(client, [experiment_id], out, sweep=sweep, metric=metric, data_dir=data_dir,
                           register=register)
    click.echo(found.describe(standing(found.in_sweep)))


@cli.command()
@model_source_options
@address_options("The model server", 5001)
@store_options
def serve(run_id: str | None, sweep: str | None, model_uri: str | None, host: str, port: int,
          tracking_uri: str | None, experiment: str) -> None:
    """Serve a model over HTTP with `mlflow models serve`.

    By default what `best` gives: with --sweep the sweep's recommendation, else the best FINISHED run by
    validation accuracy. Prints the request and
    response format and the class of each probability.

    Runs in this Python environment (--env-manager local), with $MLFLOW_TRACKING_URI and $PATH set for
    `mlflow models serve`; a run without an MLflow model gets one from its checkpoint first.
    """
    from fmnist_tracking.servers import serve_command, served_model, serving_help
    from fmnist_tracking.store import resolve_tracking_uri, setup
    from sweeps.analysis.standing import standing

    if sum(option is not None for option in (run_id, sweep, model_uri)) > 1:
        flags = ", ".join(flag for flag, _ in MODEL_SOURCES)
        raise ConfigError(f"{flags}: give one of them, or none for the best run")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(tracking_uri)
    client, experiment_id = setup(uri, experiment, create=False, first=first_step(sweep))
    if sweep is not None:
        refuse_unknown_sweep_runs(client, experiment_id, sweep)
    served, what, classes = served_model(client, experiment_id, run_id=run_id, sweep=sweep,
                                         model_uri=model_uri, standing=standing)
    click.echo(f"Serving {served}: {what} (Ctrl-C stops it)\n{serving_help(host, port, classes)}")
    exec_server(*serve_command(served, uri, host, port))


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@data_dir_option
def evaluate(checkpoint: Path, data_dir: Path | None) -> None:
    """Test accuracy and per-class accuracy of a checkpoint."""
    from fmnist_core.serving import evaluate_file, per_class_table

    evaluation, loaded = evaluate_file(checkpoint, data_dir)
    click.echo(f"{checkpoint}: test_acc {evaluation.accuracy:.4f}, test_loss {evaluation.loss:.4f} "
               f"on {len(evaluation.predictions)} test images")
    for row in per_class_table(evaluation, loaded.classes):
        click.echo(f"  {row['class']:<12} {row['accuracy']:.4f}  ({row['correct']}/{row['samples']})")


@cli.command()
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@data_dir_option
@store_options
def figures(run_ids: tuple[str, ...], data_dir: Path | None, tracking_uri: str | None,
            experiment: str) -> None:
    """Make the figures of finished runs and log them to each run.

    Learning curves, test confusion matrix and misclassified test images, under plots/. Each RUN_ID is
    a run's id, or the start of it as `runs` shows it.

    A `train` run has them already. A sweep makes them for its recommended run only: they cost more CPU
    than the rest of a trial's MLflow work, and few of a sweep's runs are ever looked at one by one.
    """
    from fmnist_core import data as fdata
    from fmnist_tracking.run_log import log_figures
    from fmnist_tracking.store import resolve_run, setup

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client, experiment_id = setup(tracking_uri, experiment, create=False)
    run_ids = [resolve_run(client, [experiment_id], run_id).info.run_id for run_id in run_ids]  # data next
    splits = fdata.load_splits(data_dir, val_size=0)  # the test split is what they show
    for run_id in run_ids:
        click.echo(f"run {run_id}: logged {', '.join(log_figures(client, run_id, splits))}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def predict(checkpoint: Path, images: tuple[Path, ...]) -> None:
    """Class and probability of each IMAGE, by a checkpoint's model.

    IMAGE: a 28x28 8-bit grayscale PNG, light garment on black, as in Fashion-MNIST.
    """
    from fmnist_core.serving import ImageError, load_model, predict_images

    _, loaded = load_model(checkpoint)  # before any image: a foreign checkpoint is refused first
    results = predict_images(loaded, list(images))
    failed = [result for result in results if isinstance(result, ImageError)]
    if len(failed) == len(results) == 1:
        raise failed[0]  # the one image: its one line, exit code 2
    for result in results:
        if isinstance(result, ImageError):
            click.echo(f"error: {result}", err=True)
        else:
            path, name, probability = result
            click.echo(f"{path}: {name} ({probability:.4f})")
    if failed:
        raise click.exceptions.Exit(2)  # the readable images were answered; each bad one said why


def parse_set(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """`--set lr=0.1 --set epochs=3` -> {"lr": "0.1", "epochs": "3"}; RunConfig coerces the strings."""
    settings = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. --set lr=0.1)", ctx, param)
        settings[key.strip().replace("-", "_")] = value.strip()
    return settings


impl_variant_option = click.option(
    "--impl", type=click.Choice([*CHOICES["impl"], "both"]), default=None,
    help="Implementation to sweep; `both` runs one study per implementation. Default: the definition's.")
storage_option = click.option(
    "--storage", envvar="OPTUNA_STORAGE", default=None,
    help="Optuna storage URL. Default: $OPTUNA_STORAGE, else sqlite optuna.db next to the MLflow database "
         "(mlruns/optuna.db).")


@cli.command()
@click.argument("name")
@impl_variant_option
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs per trial (same as --set epochs=N).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials the study should hold in all, finished ones included. Default: the definition's "
                   "budget, or every grid point.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Ask for no new trials after this many seconds of this invocation (asked ones finish).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Decided sweeps: start no new round after this many seconds of this invocation; the "
                   "verdicts so far stand (a budget never changes one) and running the sweep again goes "
                   "on. Default: none (the definition's `decide: budget` if it has one).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="A fixed design: train every configuration with seeds 0..K-1 (--seeds 1: the quick "
                   "one-seed answer). Default: the definition's `decide:` rounds, else its `seeds`.")
@click.option("--max-seeds", type=click.IntRange(min=2), default=None,
              help="Decide in rounds (grid sweeps): one seed each, then one more seed only where the "
                   "verdict is undecided, up to this many per configuration. Default: the definition's "
                   "`decide: max_seeds`.")
@click.option("--confirm", type=click.IntRange(min=2), default=None, metavar="K",
              help="tpe/random sweeps: once the budget is sampled, run the K best configurations through "
                   "the same rounds of seeds (--max-seeds, --margin) until each is worse or tied.")
@click.option("--margin", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=None,
              help="Tie margin in accuracy (0.005 = 0.5 percentage point): closer to the best than this, "
                   "with the error rate alpha, reads `tied`. Default: the definition's, else 0.005.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", callback=parse_set,
              help="Override a RunConfig field for every trial (repeatable), e.g. --set batch_size=128.")
@click.option("--population", type=click.IntRange(min=1), default=DEFAULT_POPULATION, show_default=True,
              envvar="FMNIST_POPULATION",
              help="Most trials trained together as one batched computation (those sharing batches and "
                   "schedule; different widths packed into one model); 1 turns it off. "
                   "Default: $FMNIST_POPULATION, else 8.")
@click.option("--fresh", is_flag=True,
              help="Delete this sweep's stored Optuna study and start it again (its MLflow runs are kept).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes sharing the study; more than 1 needs --storage postgresql://... "
                   "and an MLflow server (--tracking-uri http://...). Workers on other machines just run "
                   "the same command.")
@click.option("--create", is_flag=True,
              help="Only create the study (its parent run and queued grid points) and exit; then start "
                   "workers anywhere with the same NAME, --storage and --tracking-uri.")
@click.option("--repair", is_flag=True,
              help="Only recover what stopped workers left: fail and re-queue their stale trials, close "
                   "their MLflow runs KILLED, close an idle parent run; trains nothing.")
@click.option("--heartbeat", type=click.IntRange(min=1), metavar="SECONDS", show_default=True,
              default=DEFAULT_HEARTBEAT,
              help="Seconds between a worker's heartbeats for its trials (shared storages); a trial "
                   f"without one for {GRACE_BEATS}x this long is failed and re-queued by another worker.")
@click.option("--outage-timeout", type=click.FloatRange(min=0), metavar="SECONDS", show_default=True,
              default=DEFAULT_OUTAGE_TIMEOUT, envvar="FMNIST_OUTAGE_TIMEOUT",
              help="Seconds a worker keeps retrying its Optuna storage or MLflow database when the "
                   "connection is lost (a restart, the network); past it the worker stops, and re-running "
                   "resumes.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar, or one line per trial. Default: a bar when stderr is a terminal.")
@click.option("--request", "request_json", default=None, hidden=True,
              help="A worker of --workers N: its parent's SweepRequest as JSON (every other option ignored).")
@storage_option
@store_options
@data_dir_option
def sweep(name: str, impl: str | None, epochs: int | None, n_trials: int | None, timeout: float | None,
          time_budget: float | None, seeds: int | None, max_seeds: int | None, confirm: int | None,
          margin: float | None, overrides: dict[str, str],
          population: int, fresh: bool, workers: int,
          create: bool, repair: bool, heartbeat: int, outage_timeout: float, progress: bool | None,
          request_json: str | None, storage: str | None, tracking_uri: str | None, experiment: str,
          data_dir: Path | None) -> None:
    """Run the sweep NAME (a file in sweeps/, or a path to a YAML definition); re-running resumes it.

    Every trial is an Optuna trial and a nested MLflow run under one parent run per study, which
    holds the sweep's figures and a ranked table. `python cli.py sweeps` lists the definitions.
    Any number of workers (--workers, or this command on other machines) can share a study on
    PostgreSQL; see README, Scaling out.
    """
    from fmnist_tracking.signals import Terminated
    from fmnist_tracking.store import resolve_tracking_uri
    from sweeps.definitions.request import SweepRequest
    from sweeps.execution.repair import repair_sweep
    from sweeps.execution.runner import run_sweep
    from sweeps.execution.storage import require_shared_stores
    from sweeps.execution.study import default_storage
    from sweeps.execution.supervisor import run_local_workers

    # the report reads the recommended run's checkpoint for its figures: no download bar in the output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if create + repair + (workers > 1) > 1:
        raise click.BadParameter("use one of --create, --repair and --workers N at a time",
                                 param_hint="--create")
    if repair:
        repair_sweep(name, impl=impl, storage=storage, tracking_uri=tracking_uri, experiment=experiment,
                     heartbeat=heartbeat)
        return
    if epochs is not None:
        overrides = dict(overrides, epochs=epochs)
    if request_json is not None:  # one of --workers N's processes: its parent's request, whole
        ask = SweepRequest.from_json(request_json)
    else:
        ask = SweepRequest(name, impl=impl, overrides=overrides, seeds=seeds, max_seeds=max_seeds,
                           margin=margin, confirm=confirm, n_trials=n_trials, timeout=timeout,
                           time_budget=time_budget,
                           population=population, heartbeat=heartbeat, outage_timeout=outage_timeout,
                           progress=sys.stderr.isatty() if progress is None else progress, fresh=fresh,
                           create=create, storage=storage, tracking_uri=tracking_uri, experiment=experiment,
                           data_dir=data_dir)
    try:
        if workers == 1:
            run_sweep(ask)
            return
        require_shared_stores(storage or default_storage(tracking_uri), resolve_tracking_uri(tracking_uri),
                              workers)
        run_sweep(ask.replace(create=True))
        code = run_local_workers(ask.worker_argv(ROOT / "cli.py"), workers)
    except (KeyboardInterrupt, Terminated) as error:
        code = 130 if isinstance(error, KeyboardInterrupt) else 143
    if code in (130, 143):
        click.echo(f"{'Interrupted' if code == 130 else 'Terminated'}: the running trials are re-queued and "
                   "their MLflow runs KILLED; the answer so far (after the last round) is on the parent "
                   "run; re-run the same command to resume.", err=True)
    elif code:
        click.echo(f"Error: a worker ended with exit code {code}; re-run the same command to resume.",
                   err=True)
    sys.exit(code)


@cli.command()
def sweeps() -> None:
    """List the sweep definitions in sweeps/, one line each."""
    from sweeps.definitions.loader import DefinitionError, list_definitions, load_definition
    from sweeps.definitions.plan import plan_studies

    for name, path in list_definitions().items():
        try:
            definition = load_definition(path)
            plan = plan_studies(definition)[0]
        except (DefinitionError, ConfigError) as error:
            click.echo(f"{name:<14} MALFORMED: {error}")
            continue
        bounds = plan.trial_bounds()
        budget = f"{definition.timeout:g} s" if bounds is None else f"{bounds[0]} trials" \
            if bounds[0] == bounds[1] else f"{bounds[0]}-{bounds[1]} trials"
        click.echo(f"{name:<14} {definition.sampler:<6} {budget:<13} {definition.description}")


@cli.command()
@click.argument("name")
@impl_variant_option
@storage_option
@store_options
def report(name: str, impl: str | None, storage: str | None, tracking_uri: str | None,
           experiment: str) -> None:
    """Rebuild the figures and ranked tables of sweep NAME's parent run(s) from its Optuna study."""
    from sweeps.execution.runner import rebuild_reports

    rebuild_reports(name, impl=impl, storage=storage, tracking_uri=tracking_uri, experiment=experiment)


@cli.command()
@click.argument("name")
@storage_option
@address_options("optuna-dashboard", 8080)
@tracking_uri_option
def dashboard(name: str, storage: str | None, host: str, port: int, tracking_uri: str | None) -> None:
    """Open optuna-dashboard on the studies of sweep NAME.

    It serves the sweep's Optuna storage and prints the address of each of the sweep's studies.
    """
    from fmnist_tracking.servers import dashboard_command, dashboard_study_urls
    from sweeps.execution.study import default_storage, without_password

    storage = storage or default_storage(tracking_uri)
    urls = dashboard_study_urls(storage, name, host, port)
    refuse_unknown_sweep(name, lambda: urls)
    if not urls:
        raise ConfigError(f"no study of sweep {name!r} in {without_password(storage)}; run `python cli.py "
                          f"sweep {name}` first or pass the sweep's --storage")
    for study, url in urls.items():
        click.echo(f"optuna-dashboard, study {study}: {url}")
    click.echo("(Ctrl-C stops it)")
    exec_server(dashboard_command(storage, host, port))


if __name__ == "__main__":
    cli()
