"""What a sweep found, computed from its Optuna study alone (so `cli.py report` rebuilds it any time).

decide.py        the sound verdicts: worse / tied within ±margin / undecided, with error rates (MCB over
                 paired images and pooled seed noise, Bonferroni over the looks of a decided sweep)
rounds.py        a decided sweep's rounds replayed from its study: what each round decided and queued
evidence.py      intervals and tests: each configuration against the best (decide.py's, or the one-seed
                 McNemar and old Welch tests), as Verdicts
words.py         the verdict words, older reports' words read as today's, how a p-value and a cost are printed
wording.py       the conclusion in words: each verdict with what it rests on, and the error rates
standing.py      how a run stands in its sweep, in words, from the verdicts file (`cli.py best`, `serve`)
summary.py       the data types: ConfigRow (a configuration over its seeds), Recommendation, Summary
recommend.py     the one answer: which configuration to use, why, how settled, what to run next
report.py        study -> Summary, and everything logged to the parent run
text.py          the answer as text: ranked table, rounds, conclusion, summary.csv, verdicts.json, run note
figures.py       paired differences with the tie margin, accuracy, curves, cost, Optuna's plots
why_figures.py   the diagnostics behind the outcome, chosen by the fields a sweep varies
"""
