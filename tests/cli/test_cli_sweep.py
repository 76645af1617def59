"""The sweep commands through click: `sweeps`, `sweep`, `report`, and `best --sweep` on a sweep's runs.

The end-to-end test uses the real Fashion-MNIST files with tiny settings (1000 validation
images, hidden sizes 8 and 16, one epoch at batch 500), because the CLI always loads real data.
"""

import textwrap

import pytest
from click.testing import CliRunner

from cli import cli
from fmnist_tracking import store
from sweeps.definitions.loader import list_definitions


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_sweeps_lists_every_definition_on_one_line():
    result = invoke("sweeps")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(list_definitions())
    hidden = next(line for line in lines if line.startswith("hidden_size"))
    assert "grid" in hidden and "15-25 trials" in hidden  # 3 to 5 seeds of 5 widths


@pytest.mark.parametrize("args, message", [
    (["sweep", "no_such_sweep"], "no sweep named 'no_such_sweep'"),
    (["sweep", "hidden_size", "--set", "lr"], "is not KEY=VALUE"),
    (["sweep", "hidden_size", "--set", "hidden_size=64"], "varied by the sweep hidden_size"),
    (["sweep", "hidden_size", "--set", "hiden=64"], "unknown config field(s) hiden"),
    (["sweep", "impl_parity", "--impl", "torch"], "compares implementations itself"),
    (["sweep", "hidden_size", "--epochs", "0"], "--epochs"),
])
def test_bad_sweep_options_end_in_one_line_and_exit_code_2(args, message, tmp_path):
    result = CliRunner().invoke(cli, args + ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}"])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_sweep_report_and_best_on_real_data(tmp_path, mlflow_store):
    definition = tmp_path / "tiny_cli.yaml"
    definition.write_text(textwrap.dedent("""
        description: CLI smoke sweep on the real data
        base: {epochs: 1, batch_size: 500, val_size: 1000}
        space:
          hidden_size: [8, 16]
    """))
    stores = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", mlflow_store,
              "--experiment", "cli-sweep"]
    result = invoke("sweep", str(definition), "--impl", "torch", *stores)
    assert result.exit_code == 0, result.output
    assert "tiny_cli-torch: ranked by mean val_acc" in result.output and "| 1 |" in result.output

    client, experiment_id = store.setup(mlflow_store, "cli-sweep")
    runs = store.search_runs(client, [experiment_id], sweep="tiny_cli")
    [parent] = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep_role") != "parent"]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    assert {r.data.params["impl"] for r in children} == {"torch"}

    result = invoke("report", str(definition), "--impl", "torch", *stores)
    assert result.exit_code == 0 and parent.info.run_id in result.output

    out = tmp_path / "best.pt"
    result = invoke("best", "--sweep", "tiny_cli", "--out", str(out), "--tracking-uri", mlflow_store,
                    "--experiment", "cli-sweep")
    assert result.exit_code == 0, result.output
    assert parent.data.tags["recommended_run_id"] in result.output and out.is_file()
