"""The MLflow UI, opened the way the README says (`cli.py ui --sweep NAME`, then the address it prints),
over a store holding a sweep's runs as the runner names and tags them, seen in headless Chromium.

Assertions are on our content (run names, values, the conclusion text, the chart section's name), not
on MLflow's markup, except where the markup is what is tested: a group's header ("Group: 1024"), the
Table/Chart switch, a chart card's title, that a chart draws a line and a band, the y range plotly drew
(its graph div's `_fullLayout`), and that no table cell's text is cut off. The window is 1600x1000, a
laptop's browser; the Assistant panel MLflow opens by itself on a first visit is closed, as the README
tells a user to.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import ROOT, free_port, stop_group

from fmnist_core.config import RunConfig
from fmnist_tracking import run_log, store
from fmnist_tracking.servers import SAVED_VIEW_TAG

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
# (hidden_size, seed) -> (best_val_acc, test_acc): the hidden_size sweep of the README, three of its widths,
# two seeds each. By their seeds' average 1024 (0.9025) > 2048 (0.9014) > 128 (0.8927), although a run of
# 2048 beats one of 1024: ungrouped, their runs would interleave. (No trailing zeros: MLflow drops them.)
RESULTS = {(128, 0): (0.8921, 0.8877), (128, 1): (0.8933, 0.8881), (2048, 0): (0.9027, 0.8971),
           (2048, 1): (0.9001, 0.8966), (1024, 0): (0.9018, 0.8952), (1024, 1): (0.9032, 0.8962)}
# run name, as the runner names a trial -> (hidden_size, seed, best_val_acc, test_acc)
CHILDREN = {f"hidden_size={hidden}, seed={seed}": (hidden, seed, *accuracies)
            for (hidden, seed), accuracies in RESULTS.items()}
# Top to bottom in the saved view's table: each configuration's group, its seeds beneath it.
TABLE_ORDER = ["Group: 1024", "hidden_size=1024, seed=1", "hidden_size=1024, seed=0",
               "Group: 2048", "hidden_size=2048, seed=0", "hidden_size=2048, seed=1",
               "Group: 128", "hidden_size=128, seed=1", "hidden_size=128, seed=0"]
# hidden_size's definition plots it on a log axis, which MLflow's scatter cannot: the per-epoch chart only.
CHART_SECTION = "sweep hidden_size: val_acc per epoch"
CHART_TITLES = ["val_acc"]  # MLflow's title of the card saved
# The report's tags on each child run: its verdict against the best and whether it is the recommendation.
VERDICTS = {1024: ("best", "yes"), 2048: ("not shown different", "no"), 128: ("worse", "no")}
WINDOW = {"width": 1600, "height": 1000}
ASSISTANT_CLOSE = "[data-component-id='mlflow.assistant.chat_panel.close']"  # MLflow's markup
CONCLUSION = ("Which hidden size works best? hidden_size=1024 has the best validation accuracy, 0.9018 "
              "(95% Wilson 0.896-0.908). Within noise of it: hidden_size=2048 (-0.0005, 134 images only it "
              "got right vs 139 only the best, p=0.80 Holm-adjusted). Worse: hidden_size=128 (-0.0097, "
              "p<0.001 Holm-adjusted).")



def _wait_until_serving(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`cli.py ui` exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the MLflow UI did not answer at {url} within {timeout:.0f} s")


def _stop(server: subprocess.Popen) -> None:
    """The server and its uvicorn child share a process group of their own: end exactly that group."""
    stop_group(server, timeout=15)


def _sweep_runs(uri: str) -> dict[str, str]:
    """A finished hidden_size sweep as the runner and report leave it: a parent whose description is the
    conclusion, and child runs named by what varies and their seed, tagged as the runner tags them, with
    three epochs each and the one-value metrics at the best epoch. Returns {name: run id}."""
    client, experiment_id = store.setup(uri)
    parent = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name="hidden_size-manual",
                                     tags={"sweep": "hidden_size", "sweep_role": "parent",
                                           "mlflow.note.content": CONCLUSION})
    made = {"parent": parent.run_id}
    for trial, (name, (hidden, seed, val_acc, test_acc)) in enumerate(CHILDREN.items()):
        cfg = RunConfig(hidden_size=hidden, epochs=3, device="cpu", seed=seed)
        with run_log.RunLogger.start(client, experiment_id, cfg, run_name=name, parent_run_id=parent.run_id,
                                     tags={"sweep": "hidden_size", "sweep_role": "trial", "trial": str(trial),
                                           "seed": str(seed), "sampled.hidden_size": str(hidden),
                                           "sampled.seed": str(seed), "verdict": VERDICTS[hidden][0],
                                           "recommended": VERDICTS[hidden][1]}) as child:
            for epoch in (1, 2, 3):
                child.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch,
                                 "val_acc": val_acc - 0.01 * (3 - epoch)})
            for key, value in (("best_val_acc", val_acc), ("best_value", val_acc), ("test_acc", test_acc),
                               ("best_epoch", 3)):
                client.log_metric(child.run_id, key, value, step=3)
        made[name] = child.run_id
    parent.end()
    return made


def _saved_line_range(uri: str) -> dict[str, float]:
    """The y range of the per-epoch card in the sweep view `cli.py ui --sweep hidden_size` saved."""
    client, experiment_id = store.setup(uri)
    envelope = json.loads(client.get_experiment(experiment_id).tags[SAVED_VIEW_TAG + "sweep-hidden_size"])
    [line] = [card for card in json.loads(envelope["state"])["compareRunCharts"]
              if card["type"] == "LINE" and not card["deleted"]]
    return line["range"]


def test_cli_ui_opens_on_the_sweeps_runs_grouped_by_configuration_its_charts_and_conclusion(mlflow_store,
                                                                                            tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run `make browser` to install it")
    from playwright.sync_api import sync_playwright

    runs = _sweep_runs(mlflow_store)
    command = [sys.executable, "cli.py", "ui", "--sweep", "hidden_size", "--port", str(free_port()),
               "--tracking-uri", mlflow_store]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        printed = server.stdout.readline() + server.stdout.readline()
        runs_url, parent_url = re.findall(r"http://\S+", printed)
        # The README shows the address `cli.py ui --sweep hidden_size` prints on a fresh clone (port 5000).
        readme_address = re.sub(r":\d+/", ":5000/", runs_url, count=1)
        assert readme_address in (ROOT / "README.md").read_text(), readme_address
        assert runs["parent"] in parent_url
        _wait_until_serving(runs_url.split("/#/")[0] + "/health", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=WINDOW)
            page.set_default_timeout(60_000)

            page.goto(runs_url)
            page.get_by_text(TABLE_ORDER[0], exact=True).first.wait_for(state="visible")
            if page.locator(ASSISTANT_CLOSE).count():  # the Assistant MLflow opens on a first visit
                page.locator(ASSISTANT_CLOSE).first.click()
            rows = {name: page.get_by_text(name, exact=True).first for name in TABLE_ORDER}
            for row in rows.values():
                row.wait_for(state="visible")
            for hidden, _, val_acc, test_acc in CHILDREN.values():
                for value in (f"{val_acc:.4f}", f"{test_acc:.4f}", str(hidden)):  # columns, no clicking
                    page.get_by_text(value, exact=True).first.wait_for(state="visible")
            page.get_by_text("0.9014 (average)").first.wait_for(state="visible")  # group 2048: seeds' mean
            for verdict, recommended in VERDICTS.values():  # the report's tags as columns
                for value in (verdict, recommended):
                    page.get_by_text(value, exact=True).first.wait_for(state="visible")
            # No cell cut off ("0.90065 (a..."): a group's average, e.g. "0.8968499999999999 (average)", and
            # "not shown different" fit their columns.
            # (A cell's text is cut in an element within it: any element wider inside than shown is cut.)
            cells = page.eval_on_selector_all(
                ".ag-cell[col-id^='metrics.'], .ag-cell[col-id^='params.'], .ag-cell[col-id^='tags.']",
                "cells => cells.map(cell => [cell.innerText, [cell, ...cell.querySelectorAll('*')]"
                ".some(part => part.scrollWidth > part.clientWidth + 1)])")
            averages = [text for text, _ in cells if "(average)" in text]
            # val_acc (the last epoch's), best_val_acc and test_acc of each group
            assert len(averages) == 3 * len(VERDICTS), cells
            cut = [text for text, is_cut in cells if is_cut]
            assert not cut, cut
            heights = {name: row.bounding_box()["y"] for name, row in rows.items()}
            # grouped by configuration, the groups best average validation accuracy first, each with its seeds
            assert sorted(heights, key=heights.get) == TABLE_ORDER
            page.screenshot(path=str(tmp_path / "sweep_runs.png"))

            clicked = time.monotonic()
            page.locator("label:has(input[value='CHART'])").click()  # the Chart tab of the same view
            page.get_by_text(CHART_SECTION).first.wait_for(state="visible")
            for group in ("1024", "2048", "128"):  # the per-epoch chart draws configurations, not runs
                page.get_by_text(f"{group} (val_acc)", exact=True).first.wait_for(state="visible")
            # Its data are in (three epochs: a line; seeds min-max: a band per configuration): the cards
            # are all there, none added for best_epoch and the other one-value metrics.
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .scatterlayer "
                                   ".trace path.js-fill').length >= 3")
            print(f"Chart tab drawn {time.monotonic() - clicked:.1f} s after the click")  # no threshold
            titles = page.locator("[data-testid='experiment-view-compare-runs-card'] h4").all_inner_texts()
            assert titles == CHART_TITLES
            # The axes are the ranges the view saved, fitted to the runs after epoch 1: accuracy not 0-1.
            layout = "() => document.querySelector('.js-plotly-plot')._fullLayout"
            drawn, steps = page.evaluate(f"{layout}.yaxis.range"), page.evaluate(f"{layout}.xaxis.range")
            fitted = _saved_line_range(mlflow_store)
            assert drawn == pytest.approx([fitted["yMin"], fitted["yMax"]])
            assert steps == pytest.approx([fitted["xMin"], fitted["xMax"]])
            assert 1 < steps[0] < 2 and 3 < steps[1]  # epochs 2 and 3 shown, epoch 1 left of the axis
            later = [val_acc - 0.01 * (3 - epoch)  # as _sweep_runs logs it
                     for _, _, val_acc, _ in CHILDREN.values() for epoch in (2, 3)]
            span = max(later) - min(later)
            assert drawn[0] < min(later) and max(later) < drawn[1] and drawn[1] - drawn[0] < 2 * span
            page.screenshot(path=str(tmp_path / "sweep_charts.png"))

            page.goto(parent_url)  # the parent's Overview: its description is the sweep's conclusion
            page.get_by_text(CONCLUSION[:80]).first.wait_for(state="visible")
            for name in CHILDREN:
                page.get_by_text(name).first.wait_for(state="visible")  # listed as its child runs
            page.screenshot(path=str(tmp_path / "sweep_parent.png"))

            child = runs["hidden_size=1024, seed=0"]
            page.goto(parent_url.replace(runs["parent"], child).replace("?", "/model-metrics?"))
            # The run page draws its charts lazily, as they scroll into view: search for the one we want.
            page.get_by_placeholder("Search metric charts").fill("val_acc")
            page.get_by_text("hidden_size=1024, seed=0 (val_acc)").first.wait_for(state="visible")  # legend
            # Three epochs: a plot holds a drawn line, not an empty frame or the one point of best_val_acc
            # (MLflow's markup); a timeout fails the test.
            page.wait_for_function("() => [...document.querySelectorAll("
                                   "'.js-plotly-plot .scatterlayer .trace path.js-line')]"
                                   ".some(line => (line.getAttribute('d') || '').includes('L'))")  # a segment
            browser.close()
    finally:
        _stop(server)
    assert (tmp_path / "sweep_runs.png").stat().st_size > 10_000
    assert (tmp_path / "sweep_charts.png").stat().st_size > 10_000
