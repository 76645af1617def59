"""fmnist_tracking/names.py: each artifact and tag name that packages share is typed there and only there."""

from __future__ import annotations

import ast

import pytest
from support import ROOT

from fmnist_tracking import names

SHARED = [names.CHECKPOINT_ARTIFACT, names.VAL_CORRECT_ARTIFACT, names.VERDICTS_ARTIFACT,
          names.SWEEP_ROLE_TAG, names.DATASET_DIGEST_TAG, names.STOP_REASON_TAG, names.FAILURE_TAG,
          names.NOTE_TAG, names.PARENT_RUN_TAG]


def code_strings(path):
    """(line, text) of every string literal of a module but its docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.unit
def test_no_module_but_names_types_a_shared_name():
    files = [path for package in ("fmnist_core", "fmnist_tracking", "sweeps", "bench")
             for path in sorted((ROOT / package).rglob("*.py"))] + [ROOT / "cli.py"]
    typed = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in files if path.name != "names.py"
             for line, text in code_strings(path) for name in SHARED if name in text]
    assert typed == []
    assert any(name in text for _, text in code_strings(ROOT / "fmnist_tracking" / "names.py")
               for name in SHARED)  # the scan reads what it should


@pytest.mark.integration
def test_the_search_filters_find_what_they_name(mlflow_store):
    from fmnist_core.config import RunConfig
    from fmnist_tracking import run_log, store

    client, experiment_id = store.setup(mlflow_store)
    parent = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name="parent",
                                     tags={names.SWEEP_TAG: "s", names.SWEEP_ROLE_TAG: names.PARENT})
    child = run_log.RunLogger.start(client, experiment_id, RunConfig(), parent_run_id=parent.run_id,
                                    tags={names.SWEEP_TAG: "s", names.SWEEP_ROLE_TAG: names.TRIAL})
    run_log.RunLogger.start(client, experiment_id, RunConfig(), tags={names.SWEEP_TAG: "other"})

    def found(query: str) -> set[str]:
        return {run.info.run_id for run in client.search_runs([experiment_id], query)}

    assert found(names.SWEEP_PARENTS) == {parent.run_id} and found(names.SWEEP_TRIALS) == {child.run_id}
    assert found(names.sweep_filter("s")) == {parent.run_id, child.run_id}
    assert client.get_run(child.run_id).data.tags[names.PARENT_RUN_TAG] == parent.run_id
    assert names.is_sweep_parent(client.get_run(parent.run_id).data.tags)
    assert names.checkpoint_uri("abc") == f"runs:/abc/{names.CHECKPOINT_ARTIFACT}"
