"""What a sweep found, computed from its Optuna study alone (so `cli.py report` rebuilds it any time).

evidence.py      intervals and paired tests; each configuration against the best, and the conclusion
summary.py       the data types: ConfigRow (a configuration over its seeds) and Summary (the answer)
report.py        study -> Summary, and everything logged to the parent run
text.py          the answer as text: ranked table, conclusion, summary.csv, verdicts.json, run note
figures.py       accuracy with intervals, curves, time, Optuna's plots
why_figures.py   the diagnostics behind the outcome, chosen by the fields a sweep varies
"""
