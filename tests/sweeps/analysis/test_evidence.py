"""sweeps/evidence.py: known values of intervals and tests, verdicts on constructed sweeps, conclusion text.

The per-image vectors are made here: a base vector of right/wrong answers, and variants of it that lose
or gain a chosen number of images, so each case's true difference is known by construction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweeps.analysis import evidence
from sweeps.analysis.evidence import (
    DECIDED,
    MCNEMAR,
    WELCH,
    ConfigResult,
    compare_to_best,
    holm,
    mcnemar_exact,
    wilson_interval,
)
from sweeps.analysis.wording import conclusion
from sweeps.analysis.words import p_said as printed_p

pytestmark = pytest.mark.unit


def base_vector(n: int, accuracy: float, seed: int = 0) -> np.ndarray:
    vector = np.zeros(n, dtype=bool)
    vector[np.random.default_rng(seed).choice(n, size=round(n * accuracy), replace=False)] = True
    return vector


def flipped(vector: np.ndarray, lose: int, gain: int, seed: int) -> np.ndarray:
    """`vector` with `lose` of its right images made wrong and `gain` of its wrong images made right."""
    rng = np.random.default_rng(seed)
    out = vector.copy()
    out[rng.choice(np.flatnonzero(vector), size=lose, replace=False)] = False
    out[rng.choice(np.flatnonzero(~vector), size=gain, replace=False)] = True
    return out


# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17:857-872, worked examples for the Wilson score method without
# continuity correction: 81/263 -> 0.2553-0.3662, 15/148 -> 0.0624-0.1605, 0/20 -> 0-0.1611,
# 1/29 -> 0.0061-0.1718. For 0/n the upper limit is z^2/(n+z^2): 3.8415/13.8415 = 0.2775 at n = 10.
@pytest.mark.parametrize("correct, n, expected", [
    (81, 263, (0.2553, 0.3662)), (15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)),
])
def test_wilson_interval_matches_published_values(correct, n, expected):
    low, high = wilson_interval(correct, n)
    assert (round(low, 4), round(high, 4)) == expected
    assert 0.0 <= low <= correct / n <= high <= 1.0


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match="correct"):
        wilson_interval(11, 10)


def test_mcnemar_identical_predictions_give_p_one():
    vector = base_vector(10_000, 0.9)
    test = mcnemar_exact(vector, vector.copy())
    assert (test.a_only, test.b_only, test.p_value) == (0, 0, 1.0)


def test_mcnemar_300_more_right_of_10000_is_clearly_significant():
    b = base_vector(10_000, 0.88)
    a = flipped(b, lose=150, gain=450, seed=1)  # a is right on 300 more images, 600 discordant in all
    test = mcnemar_exact(a, b)
    assert (test.a_only, test.b_only) == (450, 150)
    assert test.p_value < 1e-6
    assert mcnemar_exact(b, a).p_value == pytest.approx(test.p_value)  # two-sided: order does not matter


def test_mcnemar_small_imbalance_is_not_significant():
    b = base_vector(10_000, 0.9)
    test = mcnemar_exact(flipped(b, lose=20, gain=18, seed=2), b)
    assert (test.a_only, test.b_only) == (18, 20)
    assert test.p_value > 0.5


def test_holm_known_example_is_monotone_and_capped():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


def one_seed_sweep() -> list[ConfigResult]:
    best = base_vector(10_000, 0.90)
    # 256 loses 300 images net; 512 and 2048 differ from the best by 2 and 5 images among ~40 and ~270
    return [
        ConfigResult("hidden_size=256", [flipped(best, lose=400, gain=100, seed=3)], cost=1.1, test_acc=0.87),
        ConfigResult("hidden_size=1024", [best], cost=1.9, test_acc=0.8952),
        ConfigResult("hidden_size=512", [flipped(best, lose=20, gain=18, seed=4)], cost=1.4, test_acc=0.894),
        ConfigResult("hidden_size=2048", [flipped(best, lose=139, gain=134, seed=5)], cost=3.2,
                     test_acc=0.896),
    ]


def test_one_seed_sweep_uses_mcnemar_and_holm():
    verdicts = compare_to_best(one_seed_sweep())
    by_label = {v.label: v for v in verdicts}
    assert verdicts[0].label == "hidden_size=1024" and verdicts[0].verdict == "best"
    assert verdicts[0].interval_kind == "Wilson" and verdicts[0].interval == pytest.approx(
        wilson_interval(9000, 10_000))
    assert by_label["hidden_size=2048"].discordant == (134, 139)
    assert by_label["hidden_size=2048"].difference_images == pytest.approx(-5)
    assert {label: v.verdict for label, v in by_label.items()} == {
        "hidden_size=1024": "best", "hidden_size=512": "not shown different",
        "hidden_size=2048": "not shown different", "hidden_size=256": evidence.LOWER}
    assert evidence.LOWER == "lower on these images (seed noise not measured)"
    tested = [v for v in verdicts[1:]]
    assert all(v.method == MCNEMAR and "training noise" in v.note for v in tested)
    assert [v.p_adjusted for v in tested] == pytest.approx(holm([v.p_value for v in tested]))


def test_one_seed_conclusion_names_best_ties_cheapest_and_caveat():
    text = conclusion(compare_to_best(one_seed_sweep()), "Which hidden size?")
    assert text.startswith("Which hidden size? hidden_size=1024 has the best validation accuracy, 0.9000 "
                           "(95% Wilson 0.894-0.906).")
    unshown = text[text.index("Not shown different from it:"):text.index("Lower on these images")]
    assert "hidden_size=512" in unshown and "hidden_size=2048" in unshown and "hidden_size=256" not in unshown
    assert "134 images only it got right vs 139 only the best" in unshown
    assert ("Lower on these images (seed noise not measured): hidden_size=256 (-3.00 pp, 100 images only it "
            "got right vs 400 only the best, p<0.001" in text)
    # one seed never reads as the decided verdict, and its caveat gives the measured false "lower" rates
    assert "Worse" not in text and "worse" not in text.split("One seed per configuration")[0]
    assert "p-values do not hold 5%" in text
    assert "9% of sweeps without seed noise and 38% of sweeps with a seed noise of 0.135 pp" in text
    # "within noise" is absence of evidence, not a tie: nothing is recommended for it
    assert "within noise" not in text and "usually the one to use" not in text
    assert ("Cheapest of those not shown different: hidden_size=512 at 1.4 s/epoch; not a tie (one seed "
            "cannot show one)") in text
    assert "Test accuracy (mean over its seeds) of the best: 0.8952 (reported, not used to choose)." in text
    assert "One seed per configuration" in text and "--max-seeds" in text


def seeded(label: str, base: np.ndarray, shifts: list[int], cost: float, seed: int) -> ConfigResult:
    """One seed per shift around `base`: it loses (shift < 0) or gains images, plus 30 swapped both ways."""
    vectors = [flipped(base, lose=30 + max(0, -shift), gain=30 + max(0, shift), seed=seed + i)
               for i, shift in enumerate(shifts)]
    return ConfigResult(label, vectors, cost=cost)


def test_seeds_clear_difference_is_worse_and_identical_is_tied():
    base = base_vector(5000, 0.9)
    best = seeded("best", base, [0, 2, -2], cost=2.0, seed=10)
    configs = [best, seeded("clearly worse", base, [-100, -104, -96], cost=1.0, seed=20),
               ConfigResult("same vectors", best.correct, cost=1.5)]
    verdicts = {v.label: v for v in compare_to_best(configs)}
    assert verdicts["best"].verdict == "best" and verdicts["best"].interval_kind == "t over seeds"
    assert verdicts["clearly worse"].verdict == "worse" and verdicts["clearly worse"].method == DECIDED
    assert verdicts["clearly worse"].difference_images == pytest.approx(-100, abs=1e-6)
    low, high = verdicts["clearly worse"].difference_interval
    assert low < -0.02 < high < 0  # -100 of 5000 images: -2 pp, its interval below 0
    same = verdicts["same vectors"]
    assert same.verdict == "tied" and same.p_value is None and same.margin == evidence.Rule().margin


def test_seed_scatter_widens_the_interval_so_the_same_gap_is_undecided():
    """The same 60-image gap is 'worse' when the seeds agree and 'undecided' when seeds scatter by
    +-150 images: the seed variance is part of the interval, not only which images were drawn."""
    base = base_vector(5000, 0.9)
    steady = compare_to_best([seeded("a", base, [0, 1, -1], 1.0, 30),
                              seeded("b", base, [-60, -59, -61], 1.0, 40)])
    scattered = compare_to_best([seeded("a", base, [0, 150, -150], 1.0, 30),
                                 seeded("b", base, [-60, 90, -210], 1.0, 40)])
    assert steady[1].difference == pytest.approx(scattered[1].difference)
    assert steady[1].verdict == "worse"
    assert scattered[1].verdict == "undecided"
    assert np.ptp(scattered[1].difference_interval) > 3 * np.ptp(steady[1].difference_interval)


def test_seeded_conclusion_states_margin_and_error_rate_and_leaves_the_pick_to_the_recommendation():
    base = base_vector(5000, 0.9)
    verdicts = compare_to_best([seeded("a", base, [0, 2, -2], 2.0, 10),
                                seeded("b", base, [-1, 1, -3], 1.0, 20)])
    text = conclusion(verdicts, "Which is best")
    assert text.startswith("Which is best. a has the best validation accuracy")
    assert "95% t-interval over 3 seeds" in text and "Hsu" in text
    assert "Within ±0.5 pp of it: b (-0.02 pp [" in text and "3 seeds; tied)" in text  # one look: no round
    # which to use is the recommendation's sentence (recommend.py), after this paragraph: said once
    assert "Use b" not in text and "the pick" not in text
    assert "each at most 0.05 of the time where the pooled configurations share one seed noise" in text
    assert "10 times the others' seed noise" in text and "One seed per configuration" not in text


def test_exact_ties_of_the_best_mean_are_said_not_broken_silently():
    base = base_vector(5000, 0.9)
    first, second = seeded("a", base, [0, 2, -2], 1.0, 10), seeded("b", base, [2, 0, -2], 1.0, 20)
    assert first.accuracy == second.accuracy
    text = conclusion(compare_to_best([first, second]), "Which?")
    assert "a and b share the best validation accuracy" in text and "grid order only" in text


def test_runs_without_vectors_fall_back_to_welch_or_say_why_not_tested():
    configs = [ConfigResult("old best", cost=1.0, accuracies=[0.901, 0.899, 0.900]),
               ConfigResult("old worse", cost=1.0, accuracies=[0.850, 0.852, 0.851]),
               ConfigResult("old tie", cost=0.5, accuracies=[0.900, 0.898, 0.902]),
               ConfigResult("old single", cost=0.2, accuracies=[0.89])]
    verdicts = {v.label: v for v in compare_to_best(configs)}
    assert verdicts["old worse"].method == WELCH and verdicts["old worse"].verdict == "worse"
    assert verdicts["old tie"].verdict == "not shown different"
    single = verdicts["old single"]
    assert single.verdict == "not tested" and single.p_value is None and "one seed" in single.note
    assert single.interval_kind == "none" and math.isnan(single.interval[0])
    tested = [verdicts["old worse"], verdicts["old tie"]]  # Holm over the tested comparisons only
    assert [v.p_adjusted for v in tested] == pytest.approx(holm([v.p_value for v in tested]))
    assert "Not tested: old single (one seed" in conclusion(list(verdicts.values()), "Old runs?")


def test_inputs_a_user_can_get_wrong_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="not both or neither"):
        ConfigResult("nothing", cost=1.0)
    with pytest.raises(ValueError, match="same validation images"):
        compare_to_best([ConfigResult("a", [base_vector(100, 0.9)]),
                         ConfigResult("b", [base_vector(99, 0.9)])])


def test_t_interval_known_value():
    low, high = evidence.t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / np.sqrt(3)  # t(0.975, 2) = 4.3027, sd = 1
    assert (low, high) == pytest.approx((2 - half, 2 + half), rel=1e-5)


# The smaller defects the audit of issue 19 found; each test failed before its fix.

def test_a_configuration_without_an_accuracy_is_not_tested_and_leaves_the_others_verdicts_alone():
    """A NaN p-value inside Holm made every later adjusted p 1.0, so a clearly worse configuration read
    "within noise"; now the one without an accuracy is ranked last, not tested, and out of Holm."""
    configs = [ConfigResult("best", cost=1.0, accuracies=[0.901, 0.899, 0.900]),
               ConfigResult("missing", cost=1.0, accuracies=[math.nan, math.nan]),
               ConfigResult("worse", cost=1.0, accuracies=[0.850, 0.852, 0.851])]
    verdicts = compare_to_best(configs)
    assert [v.label for v in verdicts] == ["best", "worse", "missing"]
    by_label = {v.label: v for v in verdicts}
    assert by_label["worse"].verdict == "worse" and by_label["worse"].p_adjusted < 0.05
    missing = by_label["missing"]
    assert missing.verdict == "not tested" and "no validation accuracy" in missing.note
    with pytest.raises(ValueError, match="NaN"):
        holm([0.01, math.nan, 0.02])


def test_seeds_that_do_not_vary_measure_no_noise_so_nothing_is_declared():
    """Welch's fallback returned p = 0 when neither side's seeds varied: a "worse" from two coincidences."""
    configs = [ConfigResult("a", cost=1.0, accuracies=[0.90, 0.90]),
               ConfigResult("b", cost=1.0, accuracies=[0.89, 0.89])]
    [_, other] = compare_to_best(configs)
    assert other.verdict == "not tested" and other.p_value is None and "no seed-to-seed spread" in other.note


def test_an_interval_over_seeds_stays_inside_0_and_1():
    """Two seeds at 0.99 and 1.00 gave 0.931-1.059."""
    nearly, perfect = np.ones(100, dtype=bool), np.ones(100, dtype=bool)
    nearly[0] = False
    [best] = compare_to_best([ConfigResult("a", [nearly, perfect])])
    low, high = best.interval
    assert 0.0 <= low < 0.995 and high == 1.0
    assert evidence.t_interval([0.99, 1.0]) == pytest.approx((0.931, 1.059), abs=1e-3)  # unbounded by default


@pytest.mark.parametrize("p, shown", [(0.04996, "p<0.05"), (0.0501, "p=0.05"), (0.81, "p=0.81"),
                                      (0.0042, "p=0.004"), (0.0004, "p<0.001")])
def test_printed_p_values_never_round_up_to_the_threshold(p, shown):
    """An adjusted p of 0.04996 printed as "p=0.05" beside "worse"."""
    assert printed_p(p) == shown


def test_the_ranked_table_never_rounds_a_p_up_to_the_threshold_either():
    from sweeps.analysis import text

    printed = [text._p(p) for p in (0.04996, 0.0501, 0.809, 0.0004, None)]
    assert printed == ["<0.05", "0.050", "0.809", "<0.001", ""]


# Issue 24: kept verdicts against the final best, and a kept tie of the configuration that ends best.

def test_kept_verdicts_say_against_whom_and_when_and_stand_against_the_final_best():
    from test_decide import kept_then_overtaken

    groups, seed_rounds = kept_then_overtaken()
    decision = evidence.decide.replay(seed_rounds, groups, evidence.Rule())
    configs = [ConfigResult(label, list(g), cost=cost)
               for label, g, cost in zip("abcd", groups, (4, 3, 1, 2), strict=True)]
    verdicts = {v.label: v for v in compare_to_best(configs, decision=decision)}
    best, c = verdicts["b"], verdicts["c"]
    assert best.verdict == "best" and best.decided_at == 3 and best.decided_against == "a"
    assert best.within_margin and best.decided_difference == pytest.approx(-0.001)
    assert best.decided_interval[0] > -0.005 and best.decided_interval[1] < 0.005  # its MCB bounds then
    # c's numbers are against the final best (b), with what it was decided against (a) beside them
    assert c.verdict == "worse" and c.decided_against == "a" and c.decided_at == 3
    assert c.difference == pytest.approx(groups[2].mean() - groups[1].mean())
    assert c.decided_difference == pytest.approx(groups[2].mean() - groups[0][:3].mean())
    assert c.difference_interval[0] < c.difference < c.difference_interval[1]
    text = conclusion(list(verdicts.values()), "Q?", decision=decision, spent=(16, 20))
    assert ("b was decided within ±0.5 pp of the best of the others after round 3, when a led ([-0.49, "
            "+0.00] pp from the best of the others); its mean is the best now.") in text
    assert "c (-4.90 pp [" in text
    assert "3 seeds; after round 3, below a then: -5.00 pp [-5.65, -4.35])" in text
    assert "its own for a (" in text and "whose seeds spread more" in text


@pytest.mark.unit
def test_an_undecided_configuration_whose_own_seeds_spread_says_so_where_it_is_named():
    rng = np.random.default_rng(3)
    seeds = {"a": [0.900, 0.901, 0.899, 0.900, 0.902], "b": [0.880, 0.881, 0.879, 0.880, 0.881],
             "u": [0.85, 0.70, 0.88, 0.75, 0.82]}  # an unstable setting: its seeds land anywhere
    configs = [ConfigResult(label, [rng.random(4000) < accuracy for accuracy in accuracies], cost=1.0)
               for label, accuracies in seeds.items()]
    verdicts = {v.label: v for v in compare_to_best(configs)}
    assert verdicts["u"].verdict == "undecided" and verdicts["u"].own_seed_sd is not None
    assert verdicts["b"].own_seed_sd is None
    text = conclusion(list(verdicts.values()), "Q?")
    undecided = text.split("Undecided: ")[1].split(").")[0]
    assert undecided.startswith("u (") and f"its seeds spread {100 * verdicts['u'].own_seed_sd:.2f} pp, " \
        "more than the others'" in undecided
