"""The MLflow UI, started by `cli.py ui` over a store with a few runs, seen in headless Chromium."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fmnist_core.config import RunConfig
from fmnist_tracking import run_log, store

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
RUN_NAMES = ("browser-h16-lr0.1", "browser-h32-lr0.05", "browser-h64-lr0.01")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_the_mlflow_ui_shows_the_runs_and_a_metric_chart(mlflow_store, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run `make browser` to install it")
    from playwright.sync_api import sync_playwright

    client, experiment_id = store.setup(mlflow_store)
    run_ids = []
    for name, hidden, lr in zip(RUN_NAMES, (16, 32, 64), (0.1, 0.05, 0.01), strict=True):
        cfg = RunConfig(hidden_size=hidden, lr=lr, epochs=3, device="cpu")
        with run_log.RunLogger.start(client, experiment_id, cfg, run_name=name) as run:
            for epoch in (1, 2, 3):
                run.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.7 + 0.05 * epoch + lr})
        run_ids.append(run.run_id)

    port = _free_port()
    command = [sys.executable, "cli.py", "ui", "--port", str(port), "--tracking-uri", mlflow_store]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}/health", server)
        base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)

            page.goto(f"{base}/runs?workflowType=machine_learning")
            for name in RUN_NAMES:
                page.get_by_text(name, exact=True).first.wait_for(state="visible")
            page.screenshot(path=str(tmp_path / "runs.png"))

            page.goto(f"{base}/runs/{run_ids[0]}/model-metrics?workflowType=machine_learning")
            # The run page draws its charts lazily, as they scroll into view: search for the one we want.
            page.get_by_placeholder("Search metric charts").fill("val_acc")
            page.get_by_text("val_acc", exact=True).first.wait_for(state="visible")  # the chart's title
            page.get_by_text(f"{RUN_NAMES[0]} (val_acc)").first.wait_for(state="visible")  # its legend
            # Three epochs: the plot holds a drawn line, not an empty frame.
            line = page.locator(".js-plotly-plot .scatterlayer .trace path.js-line").first
            line.wait_for(state="attached")
            assert len(line.get_attribute("d") or "") > 10
            page.screenshot(path=str(tmp_path / "metrics.png"))
            browser.close()
    finally:
        _stop(server)
    assert (tmp_path / "runs.png").stat().st_size > 10_000
    assert (tmp_path / "metrics.png").stat().st_size > 10_000
