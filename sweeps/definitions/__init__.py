"""What a sweep is, before anything runs: plain data, checked once.

schema.py   the YAML file's schema as pydantic models (unknown keys and wrong types refused)
loader.py   find, load and check a definition: every field and grid point tried as a RunConfig
plan.py     a definition + base config + variant = one study's plan (StudyPlan), and its labels
rule.py     how a sweep decides: margin, alpha, max seeds
request.py  what `cli.py sweep` was asked (SweepRequest), handed whole to the runner and the workers
"""
