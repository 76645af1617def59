"""End to end through cli.py: best, evaluate, predict, runs, ui errors, and runs killed mid-training."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from PIL import Image
from support import ROOT, free_port, runs_with_prefixes, stop_group

from cli import cli
from fmnist_core import serving
from fmnist_core.checkpoint import save_checkpoint
from fmnist_core.config import RunConfig
from fmnist_core.data import CLASSES
from fmnist_tracking import names, run_log, store


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.stderr


def test_the_cli_default_experiment_is_the_tracking_default():
    assert invoke("runs", "--help").output.count(f"[default: {store.DEFAULT_EXPERIMENT}]") == 1


def test_the_command_list_shows_the_whole_first_sentence_of_every_command():
    listing = invoke("--help").stdout.partition("\nCommands:\n")[2]
    assert listing and "..." not in listing, listing
    flowing = " " + " ".join(listing.split())  # a long sentence wraps onto a second line: still whole
    for name, command in cli.commands.items():
        first_sentence = " ".join(command.help.partition("\n\n")[0].split()).split(". ")[0].rstrip(".")
        assert f" {name} {first_sentence}." in flowing, (name, first_sentence, listing)


def test_best_fetches_the_best_finished_checkpoint_which_reproduces_the_logged_test_accuracy(
        mlflow_store, small_real_splits, tmp_path):
    runs = {}
    for impl, lr in (("manual", 0.002), ("torch", 0.05)):  # different lr: different validation accuracy
        cfg = RunConfig(impl=impl, hidden_size=16, epochs=1, lr=lr, device="cpu")
        result, run_id = run_log.train_tracked(cfg, splits=small_real_splits, tracking_uri=mlflow_store,
                                                checkpoint=tmp_path / f"{impl}.pt")
        runs[run_id] = result
    best_id = max(runs, key=lambda run_id: runs[run_id].best_val_acc)
    client, experiment_id = store.setup(mlflow_store)
    failed = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name="failed-but-higher")
    client.log_metric(failed.run_id, "best_val_acc", 0.99)
    failed.end("FAILED", "crashed")

    out = tmp_path / "fetched" / "best.pt"
    result = invoke("best", "--out", out, "--register", "--tracking-uri", mlflow_store)
    assert result.exit_code == 0, result.output
    assert f"Best run {best_id}" in result.stdout and "registered: fmnist-mlp version 1" in result.stdout
    logged_artifact = client.download_artifacts(best_id, names.CHECKPOINT_ARTIFACT, str(tmp_path))
    assert out.read_bytes() == Path(logged_artifact).read_bytes()
    figures = invoke("figures", best_id, "--tracking-uri", mlflow_store)  # made again, on the real test set
    assert figures.exit_code == 0, figures.output
    assert figures.stdout.strip() == (f"run {best_id}: logged plots/learning_curves.png, "
                                      "plots/confusion_matrix_test.png, plots/misclassified_test.png")

    # Anyone can use it with plain torch: no code of ours below.
    raw = torch.load(out, weights_only=True)
    model = torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    renamed = {k.replace("fc1", "0").replace("fc2", "2"): v for k, v in raw["state_dict"].items()}
    model.load_state_dict(renamed)
    with torch.no_grad():
        predictions = model(small_real_splits.test_x).argmax(1)
    accuracy = (predictions == small_real_splits.test_y).double().mean().item()
    assert len(small_real_splits.test_y) == 10_000
    assert accuracy == pytest.approx(client.get_run(best_id).data.metrics["test_acc"], abs=1.01e-4)

    version = client.get_model_version_by_alias("fmnist-mlp", "champion")
    assert version.run_id == best_id

    evaluated = invoke("evaluate", out)
    assert evaluated.exit_code == 0, evaluated.output
    assert f"test_acc {accuracy:.4f}" in evaluated.stdout
    assert all(name in evaluated.stdout for name in CLASSES)

    table = invoke("runs", "--tracking-uri", mlflow_store)
    assert table.exit_code == 0 and "failed-but-higher" in table.stdout and "FAILED" in table.stdout
    assert sum(run_id[:8] in table.stdout for run_id in runs) == 2

    # A logged validation accuracy that the checkpoint does not reproduce: refused, nothing written.
    client.log_metric(best_id, "best_val_acc", 0.999, step=99)  # the latest value: highest step
    tampered = tmp_path / "tampered.pt"
    assert_one_line_error(invoke("best", "--out", tampered, "--tracking-uri", mlflow_store),
                          "but the run logged")
    assert not tampered.exists()


class _Payload:
    """Unpickling this runs `exec`: a file written by it proves that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused_everywhere(mlflow_store, tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": "fmnist-mlp-checkpoint/1", "state_dict": _Payload(marker)}, evil)
    png = tmp_path / "shirt.png"
    Image.new("L", (28, 28)).save(png)

    assert_one_line_error(invoke("evaluate", evil), "refused")
    assert_one_line_error(invoke("predict", evil, png), "refused")

    client, experiment_id = store.setup(mlflow_store)
    planted = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name="planted")
    client.log_metric(planted.run_id, "best_val_acc", 0.95)
    client.log_artifact(planted.run_id, str(evil))
    planted.end()
    out = tmp_path / "best.pt"
    assert_one_line_error(invoke("best", "--out", out, "--tracking-uri", mlflow_store), "refused")
    assert not out.exists() and not marker.exists()


@pytest.fixture
def random_checkpoint(tmp_path) -> Path:
    generator = torch.Generator().manual_seed(0)
    state = {"fc1.weight": torch.randn(12, 784, generator=generator) * 0.05, "fc1.bias": torch.zeros(12),
             "fc2.weight": torch.randn(10, 12, generator=generator), "fc2.bias": torch.zeros(10)}
    return save_checkpoint(tmp_path / "random.pt", state_dict=state,
                           config=RunConfig(hidden_size=12).as_dict(),
                           normalization={"mean": 0.2860, "std": 0.3530}, classes=CLASSES, metrics={}).path


def test_predict_names_the_class_the_model_picks_for_each_png(random_checkpoint, tmp_path):
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 28, 28), generator=generator, dtype=torch.uint8)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(tmp_path / f"image{i}.png")
        Image.fromarray(image.numpy(), mode="L").save(paths[-1])
    result = invoke("predict", random_checkpoint, *paths)
    assert result.exit_code == 0, result.output
    model, _ = serving.load_model(random_checkpoint)
    normalised = (pixels.reshape(3, 784).float() / 255 - 0.2860) / 0.3530
    expected = torch.softmax(serving.logits_of(model, normalised), -1)
    lines = result.stdout.strip().splitlines()
    for path, line, probabilities in zip(paths, lines, expected, strict=True):
        assert line == f"{path}: {CLASSES[int(probabilities.argmax())]} ({probabilities.max():.4f})"


def test_predict_answers_every_readable_image_and_names_each_bad_one(random_checkpoint, tmp_path):
    """One bad PNG among several does not cost the others their answer: each readable image gets its line,
    each bad one an error line saying why, and the exit code is 2."""
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("L", (28, 28)).save(good)
    Image.new("L", (32, 32)).save(bad)
    result = invoke("predict", random_checkpoint, good, bad, good)
    assert result.exit_code == 2
    answered = result.stdout.strip().splitlines()
    assert len(answered) == 2 and all(line.startswith(f"{good}: ") for line in answered)
    [error] = result.stderr.strip().splitlines()
    assert error == f"error: {bad}: is 32x32 pixels, expected 28x28"


@pytest.mark.parametrize("make, fragment", [
    (lambda p: Image.new("L", (32, 32)).save(p), "is 32x32 pixels, expected 28x28"),
    (lambda p: Image.new("RGB", (28, 28)).save(p), "mode RGB"),
    (lambda p: Image.new("L", (28, 28)).save(p, format="JPEG"), "expected a PNG"),
    (lambda p: p.write_text("not an image"), "cannot read it as a PNG"),
])
def test_predict_refuses_images_of_the_wrong_size_or_format(random_checkpoint, tmp_path, make, fragment):
    path = tmp_path / "image.png"
    make(path)
    assert_one_line_error(invoke("predict", random_checkpoint, path), fragment)


def test_user_errors_exit_2_with_one_line(mlflow_store, tmp_path):
    assert_one_line_error(invoke("evaluate", tmp_path / "missing.pt"), "no such checkpoint file")
    assert_one_line_error(invoke("best", "--out", tmp_path / "b.pt", "--metric", "test_acc"),
                          "test-set metric")
    assert_one_line_error(invoke("runs", "--experiment", "nope"), "no experiment 'nope'")
    assert_one_line_error(invoke("runs", "--experiment", "nope"), "train a model first")
    assert_one_line_error(invoke("runs", "--sweep", "hidden_size", "--experiment", "nope"),
                          "run the sweep first (python cli.py sweep hidden_size)")
    assert_one_line_error(invoke("report", "hidden_size", "--experiment", "nope"),
                          "run the sweep first (python cli.py sweep hidden_size)")
    store.setup(mlflow_store)
    assert_one_line_error(invoke("best", "--out", tmp_path / "b.pt"), "no FINISHED run")
    assert_one_line_error(invoke("best", "--out", tmp_path / "b.pt", "--sweep", "it's"), "quotes")
    assert_one_line_error(invoke("figures", "0123abc"), "no run id starts with '0123abc'")
    assert_one_line_error(invoke("ui", "--tracking-uri", "http://127.0.0.1:9"), "tracking server already")
    assert not (tmp_path / "b.pt").exists()


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line_by_evaluate_and_predict(tmp_path):
    """As a user runs them: a real process, whose stderr would also show a traceback or a torch warning."""
    notes, pickled, png = tmp_path / "notes.txt", tmp_path / "list.pkl", tmp_path / "shirt.png"
    notes.write_text("here are my notes\n")  # torch.load: KeyError 101, as a user found
    pickled.write_bytes(pickle.dumps([1, 2, 3], protocol=4))  # torch warns of protocol 4 before it fails
    Image.new("L", (28, 28)).save(png)
    for command, path in ((["evaluate", notes], notes), (["predict", pickled, png], pickled)):
        done = subprocess.run([sys.executable, "cli.py", *map(str, command)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: not a checkpoint: "), done.stderr
        assert "expected an fmnist checkpoint" in lines[0]
    assert_one_line_error(invoke("evaluate", png), f"{png}: not a checkpoint")


def _running_run_with_an_epoch(uri: str, process: subprocess.Popen, timeout: float = 240.0) -> str:
    """Poll the store until the process's run is RUNNING and has logged its first epoch."""
    client, deadline = MlflowClient(uri), time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        experiment = client.get_experiment_by_name(store.DEFAULT_EXPERIMENT)
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
            if runs and "val_acc" in runs[0].data.metrics:
                return runs[0].info.run_id
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"no RUNNING run with a finished epoch appeared in {uri} within {timeout:.0f} s")


def test_a_run_killed_mid_training_by_sigterm_or_ctrl_c_ends_killed(make_mlflow_store, tmp_path):
    """Two real `cli.py train` processes side by side; one gets SIGTERM, the other SIGINT (Ctrl-C)."""
    def default_sigint():  # a shell that started pytest in the background may have ignored SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    started = {}
    for name in ("SIGTERM", "SIGINT"):
        uri = make_mlflow_store(name)
        command = [sys.executable, "cli.py", "train", "--hidden-size", "8", "--epochs", "50",
                   "--device", "cpu", "--no-augment-flip", "--batch-size", "256", "--tracking-uri", uri,
                   "--checkpoint", str(tmp_path / f"{name}.pt")]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, preexec_fn=default_sigint,
                                   env={**os.environ, "MLFLOW_TRACKING_URI": uri})
        started[name] = (uri, process)
    for name, (uri, process) in started.items():
        run_id = _running_run_with_an_epoch(uri, process)
        process.send_signal(getattr(signal, name))
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == {"SIGTERM": 143, "SIGINT": 130}[name], stderr
        assert "marked KILLED" in stderr
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert {"SIGTERM": "SIGTERM", "SIGINT": "Ctrl-C"}[name] in run.data.tags[names.FAILURE_TAG]
        statuses = [r.info.status for r in client.search_runs([run.info.experiment_id])]
        assert statuses == ["KILLED"]  # nothing left RUNNING
    mlflow.set_tracking_uri(None)


@pytest.mark.unit
def test_the_training_progress_bar_ends_full_although_the_trainer_reports_every_50_steps(
        tiny_splits, capsys):
    from fmnist_core.trainer import PROGRESS_EVERY
    from fmnist_tracking.console import train_with_progress

    cfg = RunConfig(hidden_size=8, epochs=3, batch_size=48, device="cpu")  # 256 images: 6 steps an epoch
    assert (3 * 6) % PROGRESS_EVERY != 0
    train_with_progress(cfg, tiny_splits)
    last_frame = capsys.readouterr().err.split("\r")[-1]
    assert "100%" in last_frame and "18/18" in last_frame, last_frame


def _fake_sweep(client, experiment_id: str, name: str, rows: list[tuple[int, float | None, str]]) -> dict:
    """A sweep's runs as the runner leaves them: a parent (sweep_role=parent) and one child run per
    (hidden_size, best_val_acc or None, status), named by what varies. Returns {name or "parent": run id}."""
    parent = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name=f"{name}-manual",
                                     tags={"sweep": name, "sweep_role": "parent"})
    made = {"parent": parent.run_id}
    for trial, (hidden, val_acc, status) in enumerate(rows):
        child = run_log.RunLogger.start(client, experiment_id, RunConfig(hidden_size=hidden, epochs=10),
                                        run_name=f"hidden_size={hidden}", parent_run_id=parent.run_id,
                                        tags={"sweep": name, "sweep_role": "trial", "trial": str(trial)})
        if val_acc is not None:
            for key, value in (("best_val_acc", val_acc), ("best_value", val_acc), ("best_epoch", 9),
                               ("test_acc", val_acc - 0.005)):
                client.log_metric(child.run_id, key, value)
        child.end(status)
        made[f"hidden_size={hidden}"] = child.run_id
    parent.end()
    return made


def test_runs_of_a_sweep_are_ranked_by_its_objective_with_labelled_columns(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    _fake_sweep(client, experiment_id, "hidden_size", [(128, 0.8921, "FINISHED"), (2048, None, "FAILED"),
                                                       (1024, 0.9018, "FINISHED"), (512, 0.8956, "FINISHED")])
    result = invoke("runs", "--sweep", "hidden_size")
    assert result.exit_code == 0, result.output
    header, _, *rows = result.stdout.splitlines()
    assert header.split() == ["rank", "run", "name", "status", "hidden_size", "best/epochs", "best_val_acc",
                              "test_acc", "started"]  # only the param the sweep varies
    names = [row.split()[2] for row in rows[:4]]
    assert names == ["hidden_size=1024", "hidden_size=512", "hidden_size=128", "hidden_size=2048"]
    assert rows[0].split()[0] == "1" and rows[3].split()[:1] == ["-"]  # FAILED: no metric, no rank
    assert "9/10" in rows[0] and "ranked by the sweep's objective: val_acc" in result.stdout
    assert "parent run" in result.stdout and "hidden_size-manual" in result.stdout
    assert invoke("runs", "--sweep", "hidden_size", "--limit", "2").stdout.count("hidden_size=") == 2


def test_commands_taking_a_run_id_take_the_start_of_it_that_runs_shows(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    ids, shared, unused = runs_with_prefixes(client, experiment_id)
    table = invoke("runs", "--limit", "17").stdout
    shown = ids[5][:8]
    assert shown in table and ids[5] not in table
    # resolved before anything else: the error names the whole id of the run the 8 characters meant
    assert_one_line_error(invoke("figures", shown), f"run {ids[5]} has no readable checkpoint.pt")
    assert_one_line_error(invoke("serve", "--run-id", shown), f"run {ids[5]} has no readable checkpoint.pt")
    assert_one_line_error(invoke("serve", "--model-uri", f"runs:/{shown}/model"), f"runs:/{ids[5]}/model")
    for command in (["figures", ids[0], shared], ["serve", "--run-id", shared],
                    ["serve", "--model-uri", f"runs:/{shared}/model"]):
        assert_one_line_error(invoke(*command), f"run id {shared!r} is the start of several runs: ")
    for command in (["figures", unused], ["serve", "--run-id", unused]):
        assert_one_line_error(invoke(*command), f"no run id starts with {unused!r}")
        assert "`python cli.py runs` lists the runs" in invoke(*command).stderr


def test_a_sweep_minimising_val_loss_ranks_lowest_first(mlflow_store):
    from fmnist_tracking.registry import Ranking, runs_table

    client, experiment_id = store.setup(mlflow_store)
    _fake_sweep(client, experiment_id, "losses", [(16, 0.30, "FINISHED"), (32, 0.20, "FINISHED"),
                                                  (64, 0.25, "FINISHED")])  # best_value here: a loss
    table = runs_table(client, [experiment_id], sweep="losses", ranking=Ranking("val_loss", "minimize"))
    rows = table.splitlines()[2:5]
    assert [row.split()[2] for row in rows] == ["hidden_size=32", "hidden_size=64", "hidden_size=16"]
    assert "val_loss (best epoch)" in table.splitlines()[0]


def _verdict(label: str, run_id: str, accuracy: float, verdict: str, p_adjusted: float | None,
             seconds: float) -> dict:
    """One entry of a sweep's sweep/verdicts.json, as sweeps/report.py writes it."""
    return {"label": label, "params": {}, "trials": [0], "run_ids": [run_id], "seeds": [0],
            "accuracy": accuracy, "interval": [accuracy - 0.006, accuracy + 0.006], "interval_kind": "Wilson",
            "diff_images": None,
            "p_value": p_adjusted, "p_adjusted": p_adjusted, "verdict": verdict,
            "method": "" if verdict == "best" else "exact McNemar test", "cost_seconds_per_epoch": seconds,
            "test_acc": accuracy - 0.005}


def test_best_says_how_its_pick_stands_in_its_sweep_and_which_to_use(mlflow_store, small_real_splits,
                                                                       tmp_path):
    client, experiment_id = store.setup(mlflow_store)
    parent = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name="hidden_size-manual",
                                     tags={"sweep": "hidden_size", "sweep_role": "parent"})
    runs = {}
    for hidden, lr in ((16, 0.05), (24, 0.002)):  # different lr: different validation accuracy
        cfg = RunConfig(hidden_size=hidden, epochs=1, lr=lr, device="cpu")
        result, run_id = run_log.train_tracked(
            cfg, splits=small_real_splits, tracking_uri=mlflow_store, checkpoint=tmp_path / f"{hidden}.pt",
            run_name=f"hidden_size={hidden}",
            tags={"mlflow.parentRunId": parent.run_id, "sweep": "hidden_size", "sweep_role": "trial"})
        runs[f"hidden_size={hidden}"] = (run_id, result.best_val_acc)
    parent.end()
    (best_label, (best_id, best_val)), (other_label, (other_id, other_val)) = sorted(
        runs.items(), key=lambda item: -item[1][1])

    result = invoke("best", "--sweep", "hidden_size", "--out", tmp_path / "best.pt")
    assert result.exit_code == 0, result.output
    assert f"Best run {best_id}" in result.stdout
    assert "no paired evidence for this sweep; run `python cli.py report hidden_size`" in result.stdout

    verdicts = [_verdict(best_label, best_id, best_val, "best", None, 3.0),
                _verdict(other_label, other_id, other_val, "within noise", 0.8, 1.5)]
    client.log_text(parent.run_id, json.dumps(verdicts), "sweep/verdicts.json")
    result = invoke("best", "--sweep", "hidden_size", "--out", tmp_path / "best.pt")
    assert result.exit_code == 0, result.output
    # an old report's "within noise" is read as what it is: not shown different, not a tie
    assert f"{best_label} (val {best_val:.4f}) is the sweep's best by mean, but not shown better" \
        in result.stdout, result.stdout
    assert f"not shown different from {best_label} (one seed each, so not a tie): {other_label} (p=0.80)" \
        in result.stdout
    assert f"the cheapest of them is {other_label} (1.5 s/epoch" in result.stdout
    assert "statistical tie" not in result.stdout

    verdicts[1].update(verdict="tied", margin=0.01, method="comparisons with the best", p_adjusted=None)
    verdicts[0].update(margin=0.01)
    client.log_text(parent.run_id, json.dumps(verdicts), "sweep/verdicts.json")
    result = invoke("best", "--sweep", "hidden_size", "--out", tmp_path / "best.pt")
    assert (f"tied with {best_label} within ±1 pp: {other_label}; use the cheapest of those tied with the "
            f"best: {other_label} (1.5 s/epoch") in result.stdout, result.stdout


def test_best_reports_the_sweeps_own_ranking_where_it_differs_from_the_pick(mlflow_store):
    from fmnist_tracking.verdicts import run_in_sweep
    from sweeps.analysis.standing import standing

    def said(run):  # what `best` says of a run it picked by its best_val_acc (cli.py best)
        return standing(run_in_sweep(client, run))

    client, experiment_id = store.setup(mlflow_store)
    made = _fake_sweep(client, experiment_id, "hidden_size",
                       [(512, 0.9031, "FINISHED"), (1024, 0.9018, "FINISHED"), (128, 0.8921, "FINISHED")])
    picked = client.get_run(made["hidden_size=512"])
    # With seeds, the sweep ranks configurations by their mean: 1024 first, 512 (one lucky seed) tied.
    verdicts = [_verdict("hidden_size=1024", made["hidden_size=1024"], 0.9015, "best", None, 1.9),
                _verdict("hidden_size=512", made["hidden_size=512"], 0.9001, "tied", None, 1.0),
                _verdict("hidden_size=128", made["hidden_size=128"], 0.8921, "worse", 0.0001, 0.4)]
    client.log_text(made["parent"], json.dumps(verdicts), "sweep/verdicts.json")
    text = "\n".join(said(picked))
    assert "puts hidden_size=1024 first (val 0.9015)" in text
    assert "this run's hidden_size=512 (val 0.9001) is tied with it within ±" in text
    assert "use the cheapest of those tied with the best: hidden_size=512 (1 s/epoch" in text
    for verdict, parameters in zip(verdicts, (814_090, 407_050, 101_770), strict=True):
        verdict.update(cost=parameters, cost_name="parameters")  # the cost the sweep's conclusion used
    client.log_text(made["parent"], json.dumps(verdicts), "sweep/verdicts.json")
    text = "\n".join(said(picked))
    assert "the cheapest of those tied with the best: hidden_size=512 (407,050 parameters" in text

    client.log_text(made["parent"], json.dumps(verdicts[:1] + verdicts[2:]), "sweep/verdicts.json")
    alone = said(client.get_run(made["hidden_size=1024"]))
    assert alone == ["hidden_size=1024 (val 0.9018) is the sweep's best and every other configuration is "
                     "worse; the closest, hidden_size=128 (p<0.001), is worse (exact McNemar test; "
                     "p Holm-adjusted)"]
    lone_run = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name="outside")
    lone_run.end()
    assert said(client.get_run(lone_run.run_id)) == []


def _run_with_only_a_checkpoint(client, experiment_id: str, checkpoint_path: Path) -> str:
    """A FINISHED run holding checkpoint.pt but no MLflow model (a model exported lazily, not yet)."""
    run = run_log.RunLogger.start(client, experiment_id, RunConfig(hidden_size=12), run_name="no-model-yet")
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(checkpoint_path, Path(scratch, names.CHECKPOINT_ARTIFACT))
        client.log_artifact(run.run_id, str(Path(scratch, names.CHECKPOINT_ARTIFACT)))
    client.log_metric(run.run_id, "best_val_acc", 0.5)
    run.end()
    return run.run_id


def test_ensure_model_logs_a_missing_mlflow_model_from_the_checkpoint_once(mlflow_store, random_checkpoint):
    from fmnist_tracking.export import ensure_model

    client, experiment_id = store.setup(mlflow_store)
    run_id = _run_with_only_a_checkpoint(client, experiment_id, random_checkpoint)
    assert not client.get_run(run_id).outputs.model_outputs
    model_id = ensure_model(client, client.get_run(run_id))
    assert ensure_model(client, client.get_run(run_id)) == model_id  # the second call finds it
    assert [output.model_id for output in client.get_run(run_id).outputs.model_outputs] == [model_id]

    pixels = torch.randint(0, 256, (4, 784), generator=torch.Generator().manual_seed(2)).float()
    served = mlflow.pyfunc.load_model(f"models:/{model_id}").predict(pixels.numpy())
    model, checkpoint = serving.load_model(random_checkpoint)
    normalised = (pixels / 255 - checkpoint.normalization["mean"]) / checkpoint.normalization["std"]
    expected = torch.softmax(serving.logits_of(model, normalised), -1).numpy()
    assert served == pytest.approx(expected, abs=1e-5)


def _stop_group(process: subprocess.Popen) -> str:
    """End a server started with start_new_session (it and its workers), return what it printed."""
    stop_group(process)
    return process.stdout.read()



def _get(url: str, process: subprocess.Popen, timeout: float = 120.0) -> bytes:
    """The body at `url` once the server answers; fails if the server exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, _stop_group(process)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no answer at {url} within {timeout:.0f} s: {_stop_group(process)}")


def test_serve_answers_a_real_test_image_with_ten_probabilities_without_the_venv_on_path(
        mlflow_store, random_checkpoint, small_real_splits):
    client, experiment_id = store.setup(mlflow_store)
    run_id = _run_with_only_a_checkpoint(client, experiment_id, random_checkpoint)  # serve exports it first
    port = free_port()
    environment = {**os.environ, "PATH": "/usr/bin:/bin"}  # as in a fresh shell: no venv activated
    server = subprocess.Popen([sys.executable, "cli.py", "serve", "--run-id", run_id, "--port", str(port),
                               "--tracking-uri", mlflow_store], cwd=ROOT, env=environment, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        banner = server.stdout.readline() + server.stdout.readline()
        assert banner.startswith("Serving models:/") and f"run {run_id}" in banner, banner
        _get(f"http://127.0.0.1:{port}/ping", server)
        splits = small_real_splits
        pixels = serving.pixels_of(splits.test_x[:1], splits.mean, splits.std)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"inputs": pixels.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        printed = _stop_group(server)
    assert len(predictions) == 1 and len(predictions[0]) == 10
    model, checkpoint = serving.load_model(random_checkpoint)
    expected = torch.softmax(serving.logits_of(model, small_real_splits.test_x[:1]), -1)[0]
    assert predictions[0] == pytest.approx(expected.tolist(), abs=1e-4)
    assert "probability i is class i: 0 T-shirt/top, 1 Trouser" in banner + printed


def test_dashboard_serves_the_sweeps_study_on_loopback(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="hidden_size-manual", direction="maximize")
    for value in (0.89, 0.90):
        study.add_trial(optuna.trial.create_trial(params={"hidden_size": int(value * 1000)}, value=value,
                                                  distributions={"hidden_size": optuna.distributions
                                                                 .IntDistribution(1, 2048)}))
    optuna.create_study(storage=storage, study_name="other-sweep")
    port = free_port()
    server = subprocess.Popen([sys.executable, "cli.py", "dashboard", "hidden_size", "--storage", storage,
                               "--port", str(port)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        line = server.stdout.readline().strip()
        assert line.startswith("optuna-dashboard, study hidden_size-manual: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1]
        studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies", server))["study_summaries"]
        page = _get(url, server).decode()
    finally:
        _stop_group(server)
    shown = {s["study_name"]: s for s in studies}
    assert url.endswith(f"/dashboard/studies/{shown['hidden_size-manual']['study_id']}")
    assert "<html" in page.lower()


def test_server_commands_refuse_bad_input_in_one_line(mlflow_store, tmp_path):
    store.setup(mlflow_store)
    assert_one_line_error(invoke("serve", "--run-id", "abc", "--sweep", "x"), "give one of them")
    assert_one_line_error(invoke("serve", "--run-id", "0" * 32), "no run")
    assert_one_line_error(invoke("serve"), "no FINISHED run")
    assert_one_line_error(invoke("dashboard", "hidden_size", "--storage", f"sqlite:///{tmp_path / 'o.db'}"),
                          "no study of sweep 'hidden_size'")
    assert_one_line_error(invoke("ui", "--sweep", "hidden_size"),  # a sweep not run yet: advice to run it
                          "no runs of sweep 'hidden_size' in this experiment; run `python cli.py sweep "
                          "hidden_size`")


def test_a_sweep_name_with_no_definition_is_refused_as_the_sweep_command_refuses_it(mlflow_store, tmp_path):
    from sweeps.definitions.loader import list_definitions

    client, experiment_id = store.setup(mlflow_store)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    refused = invoke("sweep", "nosuch")
    assert_one_line_error(refused, f"no sweep named 'nosuch'; known sweeps: {', '.join(list_definitions())}")
    for command in (["ui", "--sweep", "nosuch"], ["dashboard", "nosuch", "--storage", storage],
                    ["best", "--sweep", "nosuch", "--out", tmp_path / "best.pt"],
                    ["serve", "--sweep", "nosuch"], ["runs", "--sweep", "nosuch"]):
        result = invoke(*command)
        assert_one_line_error(result, "no sweep named 'nosuch'")
        assert result.stderr == refused.stderr, command
    # A sweep run from a YAML file outside sweeps/ has no definition here, but its runs name it.
    _fake_sweep(client, experiment_id, "from_elsewhere", [(16, 0.5, "FAILED")])
    assert_one_line_error(invoke("best", "--sweep", "from_elsewhere", "--out", tmp_path / "best.pt"),
                          "no FINISHED run of sweep 'from_elsewhere'")
    # A defined sweep that has not run: the advice is to run it (or, for best, to train).
    assert_one_line_error(invoke("best", "--sweep", "hidden_size", "--out", tmp_path / "best.pt"),
                          "no FINISHED run of sweep 'hidden_size'")


def test_mlflow_draws_no_download_bar_unless_asked(mlflow_store, monkeypatch):
    # a verdicts file of a few kB drew "Downloading artifacts: 100%" above `runs --sweep`'s table
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    store.setup(mlflow_store)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # a user who wants it keeps it
    store.setup(mlflow_store)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is True
