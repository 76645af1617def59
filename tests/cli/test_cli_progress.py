"""A sweep watched from a log (no terminal): a line when each pack starts and one per epoch, before its trials
end, with the round's rest and the most trials the decided sweep's later rounds can add.

Real Fashion-MNIST files with tiny settings (1000 validation images: 59,000 training images, 118 steps of
500; widths 8 and 16), as test_cli_sweep.py: the CLI always loads the real data.
"""

from __future__ import annotations

import re
import textwrap

import pytest
from click.testing import CliRunner

from cli import cli

pytestmark = pytest.mark.e2e


def test_a_decided_sweep_in_a_log_shows_each_pack_and_epoch_before_its_trials_end(tmp_path, mlflow_store):
    definition = tmp_path / "tiny_watch.yaml"
    definition.write_text(textwrap.dedent("""
        description: a decided sweep watched from a log
        base: {epochs: 2, batch_size: 500, val_size: 1000}
        space:
          hidden_size: [8, 16]
        decide: {max_seeds: 2, margin: 0.2}
    """))
    result = CliRunner().invoke(cli, ["sweep", str(definition), "--impl", "torch", "--storage",
                                      f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", mlflow_store,
                                      "--experiment", "watch"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    packs = [i for i, line in enumerate(lines) if " starts: " in line]
    # round 1: seed 0 of both widths; each may get one more seed (max_seeds 2): at most 2 trials later
    assert lines[packs[0]] == ("tiny_watch-torch: pack of 2 (trials 0-1) starts: 2 epochs of 118 steps; "
                               "0 more trials queued in this round; later rounds: at most 2 trials")
    epochs = [i for i, line in enumerate(lines) if re.search(r"\(trials 0-1\), epoch \d/2: val_acc ", line)]
    first_done = next(i for i, line in enumerate(lines) if re.match(r"trial [01] COMPLETE", line))
    assert len(epochs) == 2 and packs[0] < epochs[0] < epochs[1] < first_done
    assert re.search(r"epoch 1/2: val_acc 0\.\d{4}-0\.\d{4}, [\d.]+ s; pack ~\d+ s left; 0 more trials "
                     r"queued in this round, round ~\d+ s left; later rounds: at most 2 trials \(~",
                     lines[epochs[0]])
    # round 2 (one seed each decides nothing): the second seed of both, and nothing can follow it
    assert len(packs) == 2 and "pack of 2 (trials 2-3) starts" in lines[packs[1]]
    assert "later rounds" not in lines[packs[1]]
