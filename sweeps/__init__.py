"""Sweeps: definitions as data (`sweeps/*.yaml`), Optuna studies, nested MLflow runs, reports.

definitions.py  load and check the YAML files (definition_schema.py: their schema, pydantic models)
study.py        definition -> study plan -> Optuna study (create, resume, --fresh)
runner.py       the trial loop: ask, train (populations where shapes agree), tell, log
report.py       the parent run's figures, ranked tables and seed statistics
"""
