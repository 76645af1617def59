"""Error rates of sweeps/analysis/decide.py, measured on simulated sweeps (simulation.py beside this file).

Marked `simulation`, not `unit` (`pytest -m unit` leaves them out; plain `pytest` and `make test` run
them): a few minutes of CPU. Every case runs SWEEPS simulated sweeps, seeded, so a run is repeatable;
every design of a case sees the same sweeps (common random numbers). Cases of two configurations use
the 10,000 validation images; cases of five use 2,500 with the model rescaled (Model.rescaled: the
seed sds, the gaps and the margin doubled with the standard errors), four times faster.

What is promised, and asserted, for each rate: a rate promised to be at most alpha is asserted below
alpha plus the Monte-Carlo slack of a share measured over SWEEPS sweeps, the one-sided 99% normal bound
    alpha + 2.33 sqrt(alpha (1 - alpha) / SWEEPS)  = 0.071 at alpha 0.05, 600 sweeps,
so a method whose true rate is alpha fails it 1% of the time at the worst, and one at 2 alpha (10%)
passes it about 1% of the time. A power promised to be at least 80% is asserted above
0.80 - 2.33 sqrt(0.8 x 0.2 / SWEEPS) = 0.762 (70%: 0.656). Every rate named below is asserted:
- false "worse" <= alpha: the rounds with two and with five identical configurations (both noise
  models), the fixed design at 2, 3 and 5 seeds with two, and where configurations differ in seed noise
  (one of five at 10 times the others' seed sd, two of five at 3 times), the rounds and the fixed
  design at 5 seeds;
- false "within +-margin" <= alpha where the gap is 2 margins and exactly the margin (the equivalence
  claim's worst case), the rounds, both noise models;
- power: "worse" at a gap of 2 margins (1 pp) at least 80% of the time for the rounds and the fixed
  design at 3 and 5 seeds, at least 70% for the fixed design at 2 (one degree of freedom of seed noise
  per configuration: 74% with SEED_NOISE), both noise models;
- trials: the rounds spend at most 70% of the fixed design's max_seeds trials at a gap of 2 margins,
  and at most 88% on the main job's real gaps, where at most 1.25 configurations stay undecided and
  128 (0.83 pp below) is worse in at least 95% of sweeps;
- within the margin is usable: a configuration 0.25 pp below the best (inside the margin) ends within
  +-margin in at least 30% of sweeps;
- the one-seed McNemar answer's false "lower" with five identical configurations is what its caveat
  prints (evidence.ONE_SEED_FALSE_LOWER, to within the two-sided 99% Monte-Carlo band), and with seed
  noise far above alpha: why it says "lower on these images", never "worse".

Two noise models: CALIBRATED, whose seed-to-seed shift of population accuracy is the real sweep's point
estimate (none: the seeds' spread of accuracy is what the images' own seed noise makes), and SEED_NOISE,
the upper 95% confidence bound of it (sigma 0.135 pp), where a seed moves a model's population accuracy
by as much as the real data allow. Both matter: decide.py is promised for any sigma. Unequal seed noise
(issue 24): five identical configurations of which one has 10 times the others' seed sd (1.0 against
0.1 pp) or two have 3 times (0.405 against 0.135 pp).

What these tests caught, and decide.py now does: "worse" read from Hsu's MCB bounds at alpha / (K - 1)
gave up to 2 alpha false "worse" under exact ties of the best (7-10% at 2-5 seeds, two identical
configurations), and Welch-Satterthwaite degrees of freedom that gave the seed part sigma^2's own
spread (n - 1 degrees of freedom once sigma^2 is clipped at 0) made the rates 11-19% with seed noise:
every bound now uses alpha / (K (K - 1)) and the seeds' whole mean square in the degrees of freedom.
The seed variance pooled over every configuration gave 16% false "worse" with one of five at 10 times
the others' seed noise and 6.5-8% with two at 3 times (issue 24): it is now pooled only over the
configurations whose seeds do not spread more than the others', the degrees of freedom count the seeds'
part even where sigma^2 is estimated 0, and nothing is decided before round 3.
"""

from __future__ import annotations

import functools

import pytest
import simulation as sim

from sweeps.analysis import evidence
from sweeps.analysis.decide import Rule

pytestmark = pytest.mark.simulation

SWEEPS = 600
RULE = Rule()
ALPHA, MARGIN, MAX_SEEDS = RULE.alpha, RULE.margin, RULE.max_seeds
AT_MOST_ALPHA = ALPHA + sim.slack(ALPHA, SWEEPS)
AT_LEAST = {power: power - sim.slack(power, SWEEPS) for power in (0.70, 0.80)}
FIXED = (2, 3, 5)

MODELS = {"calibrated": sim.CALIBRATED, "seed noise": sim.SEED_NOISE}
REAL_GAPS = (0.0, 0.0012, 0.0034, 0.0050, 0.0083)  # the main job: 2048 best, 1024, 512, 256, 128
# case -> (gaps, per-configuration seed sds or None, images); five configurations on 2,500 images
CASES = {"identical x2": ((0.0, 0.0), None, 10_000),
         "identical x5": ((0.0,) * 5, None, 2_500),
         "gap 2 margins": ((0.0, 2 * MARGIN), None, 10_000),
         "gap 1 margin": ((0.0, MARGIN), None, 10_000),
         "gap 0.25 pp": ((0.0, 0.0025), None, 10_000),
         "one at 10x": ((0.0,) * 5, (0.001,) * 4 + (0.01,), 2_500),
         "two at 3x": ((0.0,) * 5, (0.00135,) * 3 + (0.00405,) * 2, 2_500),
         "real gaps": (REAL_GAPS, None, 2_500)}
UNEQUAL = ("one at 10x", "two at 3x")  # their seed sds are the model's, so one model (CALIBRATED's base)


def design_set(case: str, rule: Rule) -> dict[str, sim.Design]:
    designs: dict[str, sim.Design] = {"rounds": functools.partial(sim.rounds, rule=rule)}
    if case in ("identical x2", "gap 2 margins"):
        designs |= {f"fixed {k}": functools.partial(sim.fixed, seeds=k, rule=rule) for k in FIXED}
    if case in UNEQUAL:
        designs["fixed 5"] = functools.partial(sim.fixed, seeds=5, rule=rule)
    if case in ("identical x2", "identical x5"):
        designs["one seed"] = functools.partial(sim.one_seed, rule=rule)
    return designs


@functools.cache
def rates(case: str, model: str = "calibrated") -> dict[str, sim.Rates]:
    gaps, seed_sds, images = CASES[case]
    smaller, factor = MODELS[model].rescaled(images)
    rule = Rule(margin=MARGIN * factor)
    return sim.measure(design_set(case, rule), [g * factor for g in gaps], SWEEPS, rule.margin, seed=1,
                       model=smaller, seed_sds=None if seed_sds is None else [s * factor for s in seed_sds])


def test_the_model_reproduces_the_real_sweep():
    """The calibration targets of simulation.py's docstring, on 100 simulated sweeps of the real design."""
    measured, model = sim.CALIBRATION, sim.calibration_check(sweeps=100)
    assert model["accuracies"] == pytest.approx(measured["accuracies"], abs=0.002)
    assert model["disagree_seeds"] == pytest.approx(measured["disagree_seeds"], rel=0.1)
    assert model["disagree_configs"] == pytest.approx(measured["disagree_configs"], rel=0.1)
    assert model["all_right"] == pytest.approx(measured["all_right"], abs=0.01)
    assert model["all_wrong"] == pytest.approx(measured["all_wrong"], abs=0.01)
    assert model["seed_sd"] == pytest.approx(measured["seed_sd"], rel=0.25)


def test_sweeps_are_seeded_and_a_seed_is_the_same_whoever_asks():
    one, again, other = (sim.Sweep((0.0, 0.01), seed) for seed in ((3, 0), (3, 0), (3, 1)))
    first_three = one.seeds(1, 3)
    assert (again.seeds(1, 1) == first_three[:1]).all()  # drawn in another order: the same rows
    assert (again.seeds(1, 3) == first_three).all()
    assert (other.seeds(1, 3) != first_three).any()
    assert first_three.shape == (3, sim.N_IMAGES) and first_three.dtype == bool


def test_a_configuration_seed_noise_is_its_own():
    """Sweep(seed_sds=...): each configuration's seeds spread by its own sd, its population accuracy kept."""
    sweep = sim.Sweep((0.0, 0.0), (5, 0), sim.CALIBRATED, seed_sds=(0.0, 0.01))
    steady, noisy = (sweep.seeds(c, 40).mean(axis=1) for c in (0, 1))
    assert noisy.std(ddof=1) == pytest.approx(0.01, rel=0.3) and steady.std(ddof=1) < 0.003
    assert abs(noisy.mean() - steady.mean()) < 0.005


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", ["identical x2", "identical x5"])
def test_rounds_identical_configurations_rarely_any_worse(case, model, record_property):
    measured = rates(case, model)["rounds"]
    record_property("false_worse", measured.false_worse)
    assert measured.false_worse <= AT_MOST_ALPHA


@pytest.mark.parametrize("design", ["rounds", "fixed 5"])
@pytest.mark.parametrize("case", UNEQUAL)
def test_configurations_that_differ_in_seed_noise_are_rarely_called_worse(case, design, record_property):
    """Issue 24: with the seed variance pooled over every configuration, one noisier configuration made
    16% of sweeps call an identical configuration worse (one at 10x) and 6.5-8% (two at 3x)."""
    measured = rates(case)[design]
    record_property("false_worse", measured.false_worse)
    assert measured.false_worse <= AT_MOST_ALPHA


@pytest.mark.parametrize("model", MODELS)
def test_a_gap_of_two_margins_is_worse_and_never_within_the_margin(model, record_property):
    measured = rates("gap 2 margins", model)
    record_property("false_within", measured["rounds"].false_within)
    assert measured["rounds"].false_within <= AT_MOST_ALPHA
    for design, shares in measured.items():
        record_property(f"power_{design}", shares.worse)
        assert shares.worse >= AT_LEAST[0.70 if design == "fixed 2" else 0.80], design


@pytest.mark.parametrize("model", MODELS)
def test_a_gap_of_one_margin_is_rarely_within_it(model, record_property):
    """At the margin itself "within" is false: the equivalence claim's worst case."""
    measured = rates("gap 1 margin", model)["rounds"]
    record_property("false_within", measured.false_within)
    assert measured.false_within <= AT_MOST_ALPHA


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seeds", FIXED)
def test_fixed_design_identical_configurations_rarely_worse(seeds, model, record_property):
    measured = rates("identical x2", model)[f"fixed {seeds}"]
    record_property("false_worse", measured.false_worse)
    assert measured.false_worse <= AT_MOST_ALPHA


def test_within_the_margin_is_usable_below_the_best(record_property):
    """Issue 24: 0.25 pp below the best is inside the 0.5 pp margin, but "worse" excluded "within": now a
    verdict can be both, and the recommendation reads `within_margin`. Needing an interval inside
    (-margin, +margin), it is shown in about 38% of sweeps (none of them false: the gap is inside)."""
    measured = rates("gap 0.25 pp")["rounds"]
    record_property("within", measured.within)
    assert measured.within >= 0.30 and measured.false_within == 0.0


@pytest.mark.parametrize("case, fraction", [("gap 2 margins", 0.70), ("real gaps", 0.88)])
def test_rounds_spend_at_most_a_stated_share_of_the_fixed_designs_trials(case, fraction, record_property):
    """`spent < fixed` could only fail if every sweep used max_seeds of everything; a stated share can."""
    spent, fixed = rates(case)["rounds"].trials, len(CASES[case][0]) * MAX_SEEDS
    record_property("rounds_trials", spent)
    record_property("fixed_trials", fixed)
    assert spent <= fraction * fixed


def test_the_main_jobs_real_gaps_leave_few_undecided(record_property):
    measured = rates("real gaps")["rounds"]
    undecided = measured.undecided * (len(REAL_GAPS) - 1)  # per sweep
    record_property("undecided_per_sweep", undecided)
    record_property("trials", measured.trials)
    assert undecided <= 1.25
    assert measured.per_config["worse"][-1] >= 0.95  # 128, 0.83 pp below: worse


def test_one_seed_mcnemar_false_lower_is_what_its_caveat_says(record_property):
    """The one-seed quick answer (exact McNemar against the observed best, Holm) sees which images were
    drawn and not the seed: with five identical configurations it calls one "lower" in about 9% of
    sweeps without seed noise and 38% with SEED_NOISE, the rates its caveat prints; which is why it reads
    "lower on these images (seed noise not measured)", never "worse"."""
    stated = list(evidence.ONE_SEED_FALSE_LOWER.values())
    measured = [rates("identical x5", model)["one seed"].false_worse for model in MODELS]
    record_property("false_lower", measured)
    for rate, expected in zip(measured, stated, strict=True):
        band = 2.58 * (expected * (1 - expected) / SWEEPS) ** 0.5  # two-sided 99%
        assert abs(rate - expected) <= band
    assert measured[1] > AT_MOST_ALPHA  # with seed noise: shown above alpha, not only measured above it


def test_the_margins_justification_states_what_the_code_computes():
    """rule.py justified the margin with "alpha / 4 looks / 3 comparisons, +-0.23 pp" after the code had
    moved to K (K - 1) ordered pairs (issue 24). Its numbers are now computed here: the median half-width
    of the interval of 512 - 1024 at the default rule's look, five widths at the real gaps."""
    import re

    import numpy as np

    from sweeps.analysis import decide

    text = " ".join(Rule.__doc__.split())
    assert "K (K - 1) = 20 ordered pairs" in text and f"alpha / {RULE.looks} looks" in text
    stated = {int(k): float(w) for w, k in re.findall(r"\+-(\d\.\d\d) pp at (\d) seeds", text)}
    assert set(stated) == {4, 5}
    for seeds, width in stated.items():
        sweeps = [sim.Sweep(REAL_GAPS, (7, k)) for k in range(40)]
        widths = [decide.look([sweep.seeds(c, seeds) for c in range(5)], MARGIN, RULE.alpha_per_look)
                  .widths[2, 1] for sweep in sweeps]
        assert 100 * float(np.median(widths)) == pytest.approx(width, abs=0.02)
