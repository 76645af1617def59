"""The MLflow UI, opened the way the README says (`cli.py ui --sweep NAME`, then the address it prints),
over a store holding a sweep's runs as the runner names them, seen in headless Chromium.

Assertions are on our content (run names, values, the conclusion text), not on MLflow's markup,
except the one check that a chart draws a line.
"""

from __future__ import annotations

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

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
# name -> (hidden_size, best_val_acc, test_acc): the hidden_size sweep of the README, three of its widths.
CHILDREN = {"hidden_size=128": (128, 0.8921, 0.8877), "hidden_size=2048": (2048, 0.9013, 0.8971),
            "hidden_size=1024": (1024, 0.9018, 0.8952)}
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
    conclusion, and child runs named by what varies, with three epochs each. Returns {name: run id}."""
    client, experiment_id = store.setup(uri)
    parent = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name="hidden_size-manual",
                                     tags={"sweep": "hidden_size", "sweep_role": "parent",
                                           "mlflow.note.content": CONCLUSION})
    made = {"parent": parent.run_id}
    for trial, (name, (hidden, val_acc, test_acc)) in enumerate(CHILDREN.items()):
        cfg = RunConfig(hidden_size=hidden, epochs=3, device="cpu")
        with run_log.RunLogger.start(client, experiment_id, cfg, run_name=name, parent_run_id=parent.run_id,
                                     tags={"sweep": "hidden_size", "sweep_role": "trial",
                                           "trial": str(trial)}) as child:
            for epoch in (1, 2, 3):
                child.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch,
                                 "val_acc": val_acc - 0.01 * (3 - epoch)})
            for key, value in (("best_val_acc", val_acc), ("test_acc", test_acc), ("best_epoch", 3)):
                client.log_metric(child.run_id, key, value, step=3)
        made[name] = child.run_id
    parent.end()
    return made


def test_cli_ui_opens_on_the_sweeps_ranked_runs_and_its_conclusion(mlflow_store, tmp_path):
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
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)

            page.goto(runs_url)
            rows = {name: page.get_by_text(name, exact=True).first for name in CHILDREN}
            for name, (hidden, val_acc, test_acc) in CHILDREN.items():
                rows[name].wait_for(state="visible")
                for value in (f"{val_acc:.4f}", f"{test_acc:.4f}", str(hidden)):  # columns, no clicking
                    page.get_by_text(value, exact=True).first.wait_for(state="visible")
            heights = {name: row.bounding_box()["y"] for name, row in rows.items()}
            assert sorted(heights, key=heights.get) == ["hidden_size=1024", "hidden_size=2048",
                                                        "hidden_size=128"]  # best validation accuracy first
            page.screenshot(path=str(tmp_path / "sweep_runs.png"))

            page.goto(parent_url)  # the parent's Overview: its description is the sweep's conclusion
            page.get_by_text(CONCLUSION[:80]).first.wait_for(state="visible")
            for name in CHILDREN:
                page.get_by_text(name).first.wait_for(state="visible")  # listed as its child runs
            page.screenshot(path=str(tmp_path / "sweep_parent.png"))

            child = runs["hidden_size=1024"]
            page.goto(parent_url.replace(runs["parent"], child).replace("?", "/model-metrics?"))
            # The run page draws its charts lazily, as they scroll into view: search for the one we want.
            page.get_by_placeholder("Search metric charts").fill("val_acc")
            page.get_by_text("hidden_size=1024 (val_acc)").first.wait_for(state="visible")  # the legend
            # Three epochs: a plot holds a drawn line, not an empty frame or the one point of best_val_acc
            # (MLflow's markup, the one place); a timeout fails the test.
            page.wait_for_function("() => [...document.querySelectorAll("
                                   "'.js-plotly-plot .scatterlayer .trace path.js-line')]"
                                   ".some(line => (line.getAttribute('d') || '').includes('L'))")  # a segment
            browser.close()
    finally:
        _stop(server)
    assert (tmp_path / "sweep_runs.png").stat().st_size > 10_000
