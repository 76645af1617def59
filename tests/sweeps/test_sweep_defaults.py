"""sweeps/defaults.py: the sweep options' defaults, importable without Optuna or torch (the CLI's --help)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT

pytestmark = pytest.mark.unit


def test_the_defaults_load_nothing_heavy():
    probe = ("import sys; import sweeps.defaults as d; "
             "print(d.DEFAULT_POPULATION, d.DEFAULT_HEARTBEAT, d.GRACE_BEATS, "
             "sorted(m for m in ('optuna', 'torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    population, heartbeat, grace, heavy = out.stdout.split(maxsplit=3)
    assert int(population) >= 1 and int(heartbeat) > 0 and int(grace) >= 2
    assert heavy.strip() == "[]"
