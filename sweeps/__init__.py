"""Sweeps: definitions as data (`sweeps/*.yaml`), Optuna studies, nested MLflow runs, reports.

definitions.py  load and check the YAML files (definition_schema.py: their schema, pydantic models)
study.py        definition -> study plan -> Optuna study (create, resume, --fresh)
runner.py       the trial loop: ask, train (populations where shapes agree), tell, log
report.py       the sweep's answer: configurations compared with the best (evidence.py), logged to the parent
report_text.py  that answer as text: ranked table, conclusion, summary.csv, verdicts.json, the run note
sweep_figures.py  accuracy with intervals, curves, time, Optuna's plots
why_figures.py  the diagnostics behind the outcome, chosen by the fields a sweep varies
"""
