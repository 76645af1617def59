"""The servers the command line starts, as (argv, environment) plus the address to print: the MLflow UI
(with a saved view of a sweep's runs), `mlflow models serve` for a run's model, and optuna-dashboard.

Each server replaces the CLI process (os.execve), so Ctrl-C and SIGTERM reach it directly. All bind
to loopback unless told otherwise: none of them has a login.

The sweep view is an MLflow "saved view" (MLflow >= 3.15: the Runs page's Views menu): an experiment
tag `mlflow.sharedViewState.<id>` holding `{name, createdAt, updatedAt, state}`, where `state` is the
JSON of the runs page's search facets and UI state. The UI opens it from
`#/experiments/<id>/runs?viewStateShareKey=<id>`; it accepts the state as plain JSON (the UI itself
deflates it, and reads both), the format MLflow's own demo data writes from Python. What it reads back
(MLflow 3.17.2's bundle, checked in its JS under mlflow/server/js/build): the search facets
(`searchFilter orderByKey orderByAsc startTime lifecycleFilter modelVersionFilter datasetsFilter`) and
the UI state of `EXPERIMENT_PAGE_UI_STATE_FIELDS` (models/ExperimentPageUIState.tsx) less the per-run
and personal fields (`runsExpanded runsPinned runsHidden runsVisibilityMap autoRefreshEnabled`): the
table's columns and group-by, the Chart tab's cards and sections. Which tab opens (Table or Chart) is
not view state: it is the URL's `compareRunsMode` (TABLE unless it says CHART).

What the Chart tab's cards accept (the card classes in the bundle's main JS, and their configure panes):
a SCATTER card only `xaxis`, `yaxis` (key and type) and `runsCountToCompare`, drawn on linear plotly
axes with no scale option; a LINE card `scaleType` and `xAxisScaleType` ("linear" | "log"), `range`
({xMin, xMax, yMin, yMax}: a fixed axis where set), `displayPoints`; a section `columns` (cards per
row, default 3) and `cardHeight` (pixels, default 360). The table keeps `columnWidths` (pixels by
column key). The MLflow Assistant is no view state: MLflow offers it whenever the page's host is
localhost, 127.0.0.1 or ::1, opens its panel by itself on a browser's first visit, and remembers in that
browser (its localStorage) whether it was closed; no server setting turns it off.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist_core.config import first_line
from fmnist_tracking.names import MODEL_NAME, SWEEP_TRIALS, is_sweep_parent, sweep_filter
from fmnist_tracking.store import (
    DEFAULT_EXPERIMENT,
    TrackingError,
    local_artifact_root,
    resolve_tracking_uri,
    search_runs,
    setup,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fmnist_tracking.registry import Ranking
    from fmnist_tracking.verdicts import RunInSweep

SAVED_VIEW_TAG = "mlflow.sharedViewState."
# Always shown for a sweep: validation accuracy at the last epoch (MLflow's latest val_acc: what the
# verdicts judge, so a group's average is the sweep's table's mean), at the best epoch (the checkpoint's),
# and test accuracy (only reported).
SWEEP_METRICS = ("val_acc", "best_val_acc", "test_acc")
SEED_PARAM = "seed"  # RunConfig.seed, logged as a param: the seeds of one configuration share the rest
# What the sweep's report says of each trial run and its parent (tags it sets): the run's verdict against
# the best (best / tied / worse / undecided / ...) and whether it is the configuration recommended.
VERDICT_TAGS = ("verdict", "recommended")
# The table's columns, in pixels, by kind: wide enough for a group's row in the metric columns, which
# MLflow writes unrounded ("0.9025000000000001 (average)"; its default of 100 px cuts it to
# "0.9025000..."), and for the longest verdict, "not shown different".
COLUMN_WIDTHS = {"params": 110, "metrics": 220, "tags": 160}
# MLflow sizes only the columns it also orders (columnOrder): the ones it always shows, then the view's.
LEADING_COLUMNS = ("attributes.`Run Name`", "runDateAndNestInfo", "duration")
# The per-epoch chart's accuracy axis: the runs' values after their first epoch, padded by this share of
# their span on each side, and by at least PAD_MIN (metric units: 0.002 = 0.2 pp of accuracy).
PAD_SHARE, PAD_MIN = 0.1, 0.002


def _address(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def ui_command(tracking_uri: str | None, host: str, port: int,
               experiment: str = DEFAULT_EXPERIMENT) -> tuple[list[str], dict[str, str], str, str]:
    """(argv and environment of `mlflow server` over the store, the store's URI, the experiment id).

    The store and the experiment exist afterwards, so the UI opens on them.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise TrackingError(f"{uri} is a tracking server already: open it in a browser")
    _, experiment_id = setup(uri, experiment)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
            "--port", str(port), "--workers", "1"]
    artifacts = local_artifact_root(uri)
    if artifacts is not None:  # experiments made in the UI keep their files next to the database too
        argv += ["--no-serve-artifacts", "--default-artifact-root", artifacts.as_uri()]
    # The job runner serves GenAI evaluation jobs: a dozen idle processes a training UI does not need.
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return argv, environment, uri, experiment_id


def ui_runs_url(host: str, port: int, experiment_id: str, view: str | None = None) -> str:
    """The page with an experiment's training runs (MLflow 3 otherwise opens on its GenAI pages),
    through the saved view `view` when given."""
    query = f"viewStateShareKey={view}&" if view else ""
    return f"{_address(host, port)}/#/experiments/{experiment_id}/runs?{query}workflowType=machine_learning"


def ui_run_url(host: str, port: int, experiment_id: str, run_id: str) -> str:
    """A run's Overview page: its description (a sweep parent's conclusion), params, metrics."""
    return f"{_address(host, port)}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def save_sweep_view(client: MlflowClient, experiment_id: str, sweep: str, ranking: Ranking | None = None,
                    log_axes: Collection[str] = ()) -> tuple[str, list[str]]:
    """Save (or refresh) the view of sweep `sweep`'s trial runs, ranked by its objective `ranking`
    (default: validation accuracy at the last epoch, what the verdicts judge), the seeds of each
    configuration grouped.

    Table: the runs grouped by the params the sweep varies but the seed (a group per configuration:
    its row the average over its seeds, the groups ranked by it, its seeds' runs open beneath it), with
    those params, the objective, the best epoch's validation accuracy (the checkpoint's), test accuracy
    and the report's `verdict` and `recommended` tags as columns wide enough for a group's average (the
    run names say the seed). Chart tab, one section, at most two cards a row: per swept param a scatter
    of the objective (val_acc at the last epoch) against it, except for the params in `log_axes` (the
    sweep definition's `plot.log_x`): MLflow's scatter has a linear axis only, which bunches 128/256/512
    against 2048, so that chart would mislead; with several swept params, also parallel coordinates of
    them and the objective; the objective per epoch (val_acc against Step), for each configuration the
    seeds' average as a line and their min-max as a band, its axes fitted to the runs' epochs after
    their first (the first is far lower and would flatten the rest). Every other metric (best_epoch,
    best_value, test_acc, train_loss, ...) gets a deleted card: MLflow adds a card for each metric that
    no card names, and draws a one-value metric logged at step best_epoch as a line against Step.

    What MLflow's charts cannot do: a log axis on a scatter or on parallel coordinates; a group is one
    point of a scatter or one line of parallel coordinates, its aggregate (the average; min or max are
    the other choices), with no error bar, so the seeds' spread is in the per-epoch band and the
    table's rows. Charts are one trace per group or one per run (`useGroupedValuesInCharts`), for all
    charts at once. A metric first logged after the view was saved gets MLflow's default card, and the
    fitted axis covers the runs as they were, until it is saved again (each `cli.py ui --sweep`).

    Returns (view id, the sweep's parent run ids); TrackingError if the experiment holds no such sweep.
    """
    from fmnist_tracking.registry import Ranking

    ranking = ranking or Ranking()
    runs = search_runs(client, [experiment_id], sweep=sweep)
    trials = [run for run in runs if not is_sweep_parent(run.data.tags)]
    parents = [run.info.run_id for run in runs if is_sweep_parent(run.data.tags)]
    if not runs:
        raise TrackingError(f"no runs of sweep {sweep!r} in this experiment; run `python cli.py sweep "
                            f"{sweep}` or check --experiment / --tracking-uri")
    names = {key for run in trials for key in run.data.params}
    varying = sorted(key for key in names if len({run.data.params.get(key) for run in trials}) > 1)
    swept = [key for key in varying if key != SEED_PARAM]
    # validation accuracy at the last epoch, as the verdicts rank (MLflow shows a metric's latest value);
    # another objective (val_loss) at each run's selected epoch
    objective = "val_acc" if ranking.metric == "val_acc" else ranking.logged
    columns = [objective, *(key for key in SWEEP_METRICS if key != objective)]
    # MLflow's own order: metrics, params, tags (each under its header).
    selected = ([f"metrics.`{key}`" for key in columns] + [f"params.`{key}`" for key in swept]
                + [f"tags.`{key}`" for key in VERDICT_TAGS])
    state = {
        "searchFilter": f"{sweep_filter(sweep)} and {SWEEP_TRIALS}",
        "orderByKey": f"metrics.`{objective}`", "orderByAsc": ranking.direction == "minimize",
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": selected,
        "columnOrder": [*LEADING_COLUMNS, *selected],
        "columnWidths": {column: COLUMN_WIDTHS[column.partition(".")[0]] for column in selected},
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [
            {"mode": "param", "groupByData": key} for key in swept]} if swept else None,
        "groupsExpanded": {},  # a group not named here opens expanded
        "useGroupedValuesInCharts": True,  # a configuration is one trace in the charts, not each seed
        "runsHiddenMode": "SHOW_ALL",  # MLflow charts only the first 10 rows (groups) otherwise
        **_sweep_charts(sweep, swept, objective, ranking.metric,
                        {key for run in trials for key in run.data.metrics},
                        set(log_axes), _fitted_range(client, trials, ranking.metric)),
    }
    view = "sweep-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", sweep).strip("-") or "sweep")
    now = int(time.time() * 1000)
    envelope = {"name": f"sweep {sweep}: seeds grouped, by {objective}", "createdAt": now, "updatedAt": now,
                "state": json.dumps(state, separators=(",", ":"))}
    client.set_experiment_tag(experiment_id, SAVED_VIEW_TAG + view,
                              json.dumps(envelope, separators=(",", ":")))
    return view, parents


def _fitted_range(client: MlflowClient, trials: list, metric: str) -> dict[str, float]:
    """The per-epoch chart's range: y around the trials' `metric` after their first epoch (all of it
    for one-epoch runs), padded (PAD_SHARE, PAD_MIN); x from the second epoch on, padded by PAD_SHARE of
    the epochs shown (the first epoch's segment would enter from below the axis), when there is one.
    {} (plotly's own range) without values."""
    values, steps = [], set()
    for run in trials:
        history = client.get_metric_history(run.info.run_id, metric)
        first = min((point.step for point in history), default=None)
        later = [point for point in history if point.step != first]
        values += [point.value for point in later or history]
        steps |= {point.step for point in later}
    if not values:
        return {}
    low, high = min(values), max(values)
    pad = max(PAD_SHARE * (high - low), PAD_MIN)
    fitted = {"yMin": round(low - pad, 6), "yMax": round(high + pad, 6)}
    if steps:  # in epochs; a quarter epoch at least, so that the end points' markers show whole
        pad = max(PAD_SHARE * (max(steps) - min(steps)), 0.25)
        fitted |= {"xMin": min(steps) - pad, "xMax": max(steps) + pad}
    return fitted


def _sweep_charts(sweep: str, swept: list[str], objective: str, per_epoch: str, metrics: set[str],
                  log_axes: set[str], y_range: dict[str, float]) -> dict[str, object]:
    """The Chart tab's part of the sweep view: one section, its cards (RunsChartsCardConfig's fields in
    MLflow's runs-charts.types.ts), and a deleted card for each metric that no card shows."""
    section = "sweep"
    card = {"metricSectionId": section, "deleted": False, "isGenerated": False}
    scattered = [key for key in swept if key not in log_axes]  # a linear axis only: see save_sweep_view
    cards = [{**card, "uuid": f"scatter-{key}", "type": "SCATTER", "runsCountToCompare": 100,
              "xaxis": {"key": key, "type": "PARAM"}, "yaxis": {"key": objective, "type": "METRIC"}}
             for key in scattered]
    if len(swept) > 1:
        cards.append({**card, "uuid": "parallel", "type": "PARALLEL", "selectedParams": swept,
                      "selectedMetrics": [objective]})
    cards.append({**card, "uuid": f"line-{per_epoch}", "type": "LINE", "metricKey": per_epoch,
                  "xAxisKey": "step", "useGlobalXaxisKey": False, "lineSmoothness": 0,
                  "useGlobalLineSmoothing": False, "scaleType": "linear", "xAxisScaleType": "linear",
                  "selectedXAxisMetricKey": "",
                  "displayPoints": True,  # an epoch is a point, so that one-epoch runs show too
                  "range": dict(y_range)})  # a key left out is plotly's own (null would read as set)
    live = len(cards)
    cards += [{**card, "uuid": f"hidden-{key}", "type": "BAR", "metricKey": key, "deleted": True}
              for key in sorted(metrics - {per_epoch})]
    answer = (f"{objective} against {', '.join(scattered)}; " if scattered else "") + f"{per_epoch} per epoch"
    return {"compareRunCharts": cards,
            # At most two cards a row, taller than MLflow's 360 px: a legend of every configuration and
            # an axis a reader can read beside the runs list at 1600 px (three a row cut the legend).
            "compareRunSections": [{"uuid": section, "name": f"sweep {sweep}: {answer}", "display": True,
                                    "isReordered": False, "columns": min(live, 2), "cardHeight": 480}],
            "isAccordionReordered": True}  # keep this one section first; MLflow re-sorts it otherwise


def serve_command(model_uri: str, tracking_uri: str | None, host: str,
                  port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `mlflow models serve` for `model_uri` in this Python environment.

    `mlflow models serve` resolves runs:/ and models:/ URIs through $MLFLOW_TRACKING_URI, and starts
    its server as the command `uvicorn`, looked up on $PATH: both are set here, so a fresh clone
    serves without an activated venv.
    """
    environment = {**os.environ, "MLFLOW_TRACKING_URI": resolve_tracking_uri(tracking_uri),
                   "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", model_uri,
            "--env-manager", "local", "--host", host, "--port", str(port)]
    return argv, environment


def serving_help(host: str, port: int, classes: list[str]) -> str:
    """How to call the served model: the request, the response, and which class each probability is."""
    mapping = ", ".join(f"{index} {name}" for index, name in enumerate(classes))
    return (f"  POST {_address(host, port)}/invocations  Content-Type: application/json\n"
            '  request:  {"inputs": [[784 pixel values 0..255 of a 28x28 image, row by row], ...]}\n'
            '  response: {"predictions": [[10 class probabilities], ...]}\n'
            f"  probability i is class i: {mapping}")


def dashboard_command(storage: str, host: str, port: int) -> list[str]:
    """argv of optuna-dashboard over `storage`, from this Python environment."""
    executable = Path(sys.executable).parent / "optuna-dashboard"
    return [str(executable), storage, "--host", host, "--port", str(port)]


def dashboard_study_urls(storage: str, sweep: str, host: str, port: int) -> dict[str, str]:
    """Study name -> its page in optuna-dashboard, for the studies of sweep `sweep` (NAME or NAME-impl)."""
    import optuna

    try:
        names = optuna.get_all_study_names(storage)
    except Exception as error:  # optuna raises what SQLAlchemy or the driver raise: a bad URL, no server
        raise TrackingError(f"cannot open the Optuna storage: {first_line(error)}") from None
    names = sorted(name for name in names if name == sweep or name.startswith(f"{sweep}-"))
    ids = optuna.storages.get_storage(storage)
    return {name: f"{_address(host, port)}/dashboard/studies/{ids.get_study_id_from_name(name)}"
            for name in names}


def served_model(client: MlflowClient, experiment_id: str, *, run_id: str | None = None,
                 sweep: str | None = None, model_uri: str | None = None,
                 standing: Callable[[RunInSweep | None], list[str]] | None = None,
                 ) -> tuple[str, str, list[str]]:
    """(model URI, a line saying what it is, its class names) of what `cli.py serve` serves: `model_uri`
    as given, else the MLflow model of run `run_id` (or the unique run whose id starts with it), else of
    what `best` gives (registry.chosen_run: a sweep's recommended configuration's best seed, else the best
    FINISHED run by validation accuracy); a run's model is logged from its checkpoint first if it has none.
    In a runs:/RUN_ID/... URI, RUN_ID may be a prefix too. `standing` says how a run picked by its metric
    stands in its sweep (cli.py passes sweeps/analysis/standing.py's, which this package cannot import)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fmnist_tracking.export import ensure_model
    from fmnist_tracking.registry import chosen_run
    from fmnist_tracking.store import resolve_run

    if model_uri is not None and model_uri.startswith("runs:/"):
        run_part, slash, path = model_uri.removeprefix("runs:/").partition("/")
        model_uri = f"runs:/{resolve_run(client, [experiment_id], run_part).info.run_id}{slash}{path}"
    if model_uri is None:
        if run_id is not None:
            run = resolve_run(client, [experiment_id], run_id)
            why = []
        else:
            chosen = chosen_run(client, [experiment_id], sweep=sweep)
            run, why = chosen.run, [*chosen.lines, *(standing(chosen.in_sweep) if standing else [])]
        model_uri = f"models:/{ensure_model(client, run, name=MODEL_NAME)}"
        val_acc = run.data.metrics.get("best_val_acc")
        what = (f"run {run.info.run_id} ({run.info.run_name}"
                + (f", best_val_acc {val_acc:.4f}" if val_acc is not None else "") + ")"
                + "".join(f"\n  {line}" for line in why[:1]))
    else:
        what = model_uri
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    except (MlflowException, OSError) as error:
        raise TrackingError(f"cannot read the MLflow model {model_uri}: {first_line(error)}") from None
    if metadata.get("classes"):
        return model_uri, what, list(metadata["classes"])
    from fmnist_core.data import CLASSES  # torch: only for a model logged without its classes

    return model_uri, what, list(CLASSES)
