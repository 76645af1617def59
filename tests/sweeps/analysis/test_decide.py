"""sweeps/analysis/decide.py on constructed cases: the arithmetic by hand, the verdicts, the rounds' replay.

Each case's per-image matrices are made here (seeds x images, bool), so what every number should be is
known by construction; the error rates of the method are measured by simulation in
test_decide_simulation.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sweeps.analysis import decide
from sweeps.analysis.decide import BEST, TIED, UNDECIDED, WORSE, Rule

pytestmark = pytest.mark.unit

MARGIN, ALPHA = Rule().margin, Rule().alpha


def right_on(n: int, right: int) -> np.ndarray:
    """A vector of n images whose first `right` are right."""
    vector = np.zeros(n, dtype=bool)
    vector[:right] = True
    return vector


def seeds_of(base: np.ndarray, wrong: list[int], offset: int = 0) -> np.ndarray:
    """One row per seed: `base` with `wrong[s]` of its right images (from `offset` on) made wrong, so
    seed s's accuracy is base's less wrong[s] / n."""
    rows = np.repeat(base[None, :], len(wrong), axis=0)
    for s, count in enumerate(wrong):
        rows[s, offset:offset + count] = False
    return rows


# --- pooled_seed_variance ---------------------------------------------------------------------------

def test_pooled_seed_variance_by_hand():
    # A: seed accuracies 1/2, 1/4, 3/4 -> var 1/16 (ddof 1). Its images' own seed noise: images 1 and 2
    # have var_s 1/3 (one seed of three differs), images 0 and 3 none: mean 1/6, over n = 4 -> 1/24.
    # A contributes 1/16 - 1/24 = 1/48 with weight k - 1 = 2.
    a = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=bool)
    # B: accuracies 3/4, 1/2 -> var 1/32; image 1 differs (var 1/2), mean 1/8, / 4 -> 1/32: contributes 0.
    b = np.array([[1, 1, 1, 0], [1, 0, 1, 0]], dtype=bool)
    c = np.array([[1, 0, 1, 1]], dtype=bool)  # one seed: no weight
    variance, df, _ = decide.pooled_seed_variance([a, b, c])
    assert df == 3
    assert variance == pytest.approx((2 * (1 / 16 - 1 / 24) + 1 * 0) / 3)  # 1/72


def test_pooled_seed_variance_is_clipped_at_zero_and_unknown_without_two_seeds():
    # two seeds that swap one image: equal accuracies (spread 0), own noise 1/4: the estimate -1/4 -> 0
    swapped = np.array([[1, 0], [0, 1]], dtype=bool)
    assert decide.pooled_seed_variance([swapped])[:2] == (0.0, 1)
    variance, df, _ = decide.pooled_seed_variance([swapped[:1], swapped[1:]])
    assert math.isnan(variance) and df == 0


# --- look: the verdicts -----------------------------------------------------------------------------

def test_identical_configurations_are_tied():
    base = right_on(10_000, 9_000)
    group = seeds_of(base, [0, 10, 20])  # seeds 0.1 pp apart
    result = decide.look([group, group.copy()], MARGIN, ALPHA)
    assert [s.verdict for s in result.standings] == [BEST, TIED]
    lower, upper = result.standings[1].bounds
    assert -MARGIN < lower < 0 < upper < MARGIN


def test_identical_vectors_with_no_spread_at_all_are_tied():
    rows = np.repeat(right_on(1_000, 900)[None, :], 2, axis=0)
    result = decide.look([rows, rows.copy(), rows.copy()], MARGIN, ALPHA)
    assert [s.verdict for s in result.standings] == [BEST, TIED, TIED]


def test_a_big_gap_with_seeds_is_worse_and_the_leader_shown_best():
    n = 10_000
    good = seeds_of(right_on(n, 9_000), [0, 10, 20])
    poor = seeds_of(right_on(n, 8_500), [0, 10, 20])  # 5 pp below, the same images wrong and more
    result = decide.look([poor, good], MARGIN, ALPHA)
    assert result.leader == 1
    poor_standing, best = result.standings
    assert poor_standing.verdict == WORSE and best.verdict == BEST and best.shown_best
    assert poor_standing.difference == pytest.approx(-0.05)
    # MCB bounds: the worse one's upper bound is 0, the leader's upper bound is above 0
    assert poor_standing.bounds[1] == 0.0 and best.bounds[1] > 0


def test_one_seed_everywhere_decides_nothing():
    n = 10_000
    groups = [right_on(n, 9_000)[None, :], right_on(n, 8_000)[None, :]]  # even 10 pp: no seed noise known
    result = decide.look(groups, MARGIN, ALPHA)
    assert [s.verdict for s in result.standings] == [BEST, UNDECIDED]
    assert math.isnan(result.seed_sd) and result.seed_df == 0
    assert all(math.isnan(x) for x in result.standings[1].interval)


def seed_parts(g: np.ndarray) -> tuple[int, float, float]:
    """(k - 1, the seeds' mean square of accuracy, the images' own seed noise mean_i var_s(y_s,i) / n)."""
    return len(g) - 1, g.mean(axis=1).var(ddof=1), g.var(axis=0, ddof=1).mean() / g.shape[1]


def test_pair_interval_is_the_difference_plus_minus_the_hand_computed_width():
    n = 1_000
    a = seeds_of(right_on(n, 900), [0, 8, 3])
    b = seeds_of(right_on(n, 880), [5, 0], offset=100)  # wrong on other images than a's seed noise
    result = decide.look([a, b], MARGIN, ALPHA)
    assert not result.noisier  # their seeds spread alike: one pool
    standing = result.standings[1]
    difference = b.mean() - a.mean()
    # by hand: V = tau + lambda_a / 3 + lambda_b / 2, lambda_c = max(pooled mean square, sigma^2 + nu_c)
    # (the variance of one seed's accuracy: seed noise sigma^2, pooled with weights k - 1 from
    # var_s(acc_s) - nu, and the images' own seed noise nu_c = mean_i var_s(y_s,i) / n), tau = var(d_i)/n
    # less nu_a / 3 + nu_b / 2 (which images were drawn); Welch-Satterthwaite degrees of freedom with the
    # seeds' part on the pool's 3 df (however small sigma^2 is) and tau on n - 1; the t quantile at
    # alpha / (K (K - 1)) = alpha / 2 (K = 2: both ordered pairs)
    (df_a, square_a, nu_a), (df_b, square_b, nu_b) = seed_parts(a), seed_parts(b)
    sigma2 = max(0.0, (df_a * (square_a - nu_a) + df_b * (square_b - nu_b)) / 3)
    pooled_square = (df_a * square_a + df_b * square_b) / 3
    lambda_a, lambda_b = max(pooled_square, sigma2 + nu_a), max(pooled_square, sigma2 + nu_b)
    d = b.mean(axis=0) - a.mean(axis=0)
    tau = max(0.0, d.var(ddof=1) / n - nu_a / 3 - nu_b / 2)
    seeds = lambda_a / 3 + lambda_b / 2
    total = tau + seeds
    df = min(n - 1, max(3, total ** 2 / (tau ** 2 / (n - 1) + seeds ** 2 / 3)))
    width = stats.t.ppf(1 - ALPHA / 2, df) * math.sqrt(total)
    assert standing.difference == pytest.approx(difference)
    assert standing.interval == pytest.approx((difference - width, difference + width))
    assert result.interval(1, 0) == pytest.approx(standing.interval)
    assert standing.interval[0] < standing.difference < standing.interval[1]
    assert result.seed_sd == pytest.approx(math.sqrt(sigma2)) and result.seed_df == 3


# --- seed noise per configuration where it differs -----------------------------------------------------

def steady_and_noisy(n: int = 10_000) -> list[np.ndarray]:
    """Three configurations whose 4 seeds move by a few images and one whose seeds move by ~1 pp."""
    steady = [seeds_of(right_on(n, 9_000 - 5 * c), [0, 3, 1, 4], offset=10 * c) for c in range(3)]
    noisy = seeds_of(right_on(n, 9_000), [0, 150, 40, 110])
    return [*steady, noisy]


def test_a_configuration_whose_seeds_spread_more_keeps_its_own_seed_variance():
    groups = steady_and_noisy()
    noise = decide.seed_noise(groups)
    assert noise.own.tolist() == [False, False, False, True]
    # the noisy one against the pool of the three others, by hand: F = its mean square / (the others'
    # pooled sigma^2 + its own images' noise), on 3 and 9 degrees of freedom
    parts = [seed_parts(g) for g in groups]
    others = max(0.0, sum(df * (square - nu) for df, square, nu in parts[:3]) / 9)
    df, square, nu = parts[3]
    assert stats.f.sf(square / (others + nu), df, 9) < decide.HETEROGENEITY_ALPHA
    assert noise.df.tolist() == [9, 9, 9, 3]  # the pool's, and its own k - 1
    assert noise.variance[3] == pytest.approx(max(0.0, square - nu))
    assert noise.seed_variance[3] == pytest.approx(max(square, nu))
    assert noise.pooled_df == 9 and noise.pooled_sd == pytest.approx(math.sqrt(others))
    # with it pooled (as before), its 1 pp spread would have widened every steady pair's interval and
    # narrowed its own: both now rest on the right variance
    look = decide.look(groups, MARGIN, ALPHA)
    assert list(look.noisier) == [3] and look.noisier[3] == pytest.approx(math.sqrt(max(0.0, square - nu)))
    pooled = decide.seed_noise(groups, heterogeneity_alpha=0.0)  # a test at level 0 pools everything
    assert not pooled.own.any() and pooled.pooled_df == 12
    assert look.widths[0, 1] < decide.pair_widths(groups, pooled, ALPHA / 4)[0, 1]


def test_seeds_that_spread_alike_are_pooled():
    noise = decide.seed_noise(steady_and_noisy()[:3])
    assert not noise.own.any() and noise.pooled_df == 9 and (noise.df == 9).all()


def test_a_noisier_configuration_compared_by_welch_parts_by_hand():
    """The noisy configuration against a steady one: its own lambda on its own 3 df, the steady one's the
    pool's on 9 df, Welch-Satterthwaite over the two sources and tau."""
    groups = steady_and_noisy()
    n = groups[0].shape[1]
    noise = decide.seed_noise(groups)
    width = decide.pair_widths(groups, noise, ALPHA / 4)  # 4 configurations: alpha / 4 each, / 3 pairs
    parts = [seed_parts(g) for g in groups]
    sigma2 = max(0.0, sum(df * (square - nu) for df, square, nu in parts[:3]) / 9)
    pooled_square = sum(df * square for df, square, _ in parts[:3]) / 9
    lambda_steady = max(pooled_square, sigma2 + parts[0][2])
    lambda_noisy = max(parts[3][1], parts[3][2])
    d = groups[3].mean(axis=0) - groups[0].mean(axis=0)
    tau = max(0.0, d.var(ddof=1) / n - parts[3][2] / 4 - parts[0][2] / 4)
    total = tau + lambda_noisy / 4 + lambda_steady / 4
    df = total ** 2 / (tau ** 2 / (n - 1) + (lambda_noisy / 4) ** 2 / 3 + (lambda_steady / 4) ** 2 / 9)
    df = min(n - 1, max(3, df))
    assert width[3, 0] == pytest.approx(stats.t.ppf(1 - ALPHA / 4 / 3, df) * math.sqrt(total))
    assert width[3, 0] == pytest.approx(width[0, 3])


# --- replay: the rounds -----------------------------------------------------------------------------

def rounds_of(*seed_counts: int) -> list[list[int]]:
    """Seed s of every configuration trained in round s + 1."""
    return [list(range(1, k + 1)) for k in seed_counts]


def test_nothing_is_decided_before_every_configuration_has_three_seeds():
    """Round 2's look decided with one degree of freedom of each configuration's own seed noise, so a
    configuration 10 times noisier than the rest whose two seeds happened to agree was compared as if it
    were steady (issue 24: ~16% false "worse" in simulation). A 5 pp gap with seeds that agree was worse
    after round 2; now it is after round 3."""
    n = 10_000
    good, poor = seeds_of(right_on(n, 9_000), [0, 2, 4]), seeds_of(right_on(n, 8_500), [0, 2, 4])
    rule = Rule()
    assert rule.first_look == 3 and rule.looks == 3 and rule.alpha_per_look == pytest.approx(ALPHA / 3)
    after_two = decide.replay(rounds_of(2, 2), [good[:2], poor[:2]], rule)
    assert after_two.verdicts == [BEST, UNDECIDED] and after_two.additions == [0, 1]
    assert after_two.rounds[1]["decided"] == {}
    after_three = decide.replay(rounds_of(3, 3), [good, poor], rule)
    assert after_three.verdicts == [BEST, WORSE] and after_three.decided_at == [None, 3]
    assert Rule(max_seeds=2).first_look == 2 and Rule(max_seeds=2).looks == 1


def test_replay_keeps_a_verdict_once_reached():
    n = 10_000
    good = seeds_of(right_on(n, 9_000), [0, 2, 4, 6])
    # rounds 1-3: 5 pp below with seeds that agree; round 4: a seed 4 pp above the leader, whose spread
    # makes the look over all four rounds undecided
    poor = np.concatenate([seeds_of(right_on(n, 8_500), [0, 2, 4]), right_on(n, 9_400)[None, :]])
    rule = Rule(max_seeds=4)
    decision = decide.replay(rounds_of(4, 4), [good, poor], rule)
    assert decide.look([good, poor], rule.margin, rule.alpha_per_look).standings[1].verdict != WORSE
    assert decision.verdicts == [BEST, WORSE]
    assert decision.decided_at == [None, 3] and decision.against == [None, 0]
    assert decision.kept[1].seeds == 3  # the standing of the look that decided it, not the last one
    assert decision.rounds[2]["decided"] == {1: WORSE} and decision.rounds[3]["decided"] == {}


def kept_then_overtaken(n: int = 10_000) -> tuple[list[np.ndarray], list[list[int]]]:
    """a leads after round 3 and loses 0.4 pp in rounds 4 and 5; b, 0.1 pp below a, is tied at round 3,
    and c (5 pp below) worse; d, 0.3 pp below a with seeds that scatter by ~0.3 pp, stays undecided until
    round 5, so the rounds go on and b ends best."""
    a = np.concatenate([seeds_of(right_on(n, 9_000), [0, 2, 4]), seeds_of(right_on(n, 8_960), [0, 2])])
    b = seeds_of(right_on(n, 8_990), [0, 2, 4])
    c = seeds_of(right_on(n, 8_500), [0, 2, 4])
    d = seeds_of(right_on(n, 8_970), [0, 30, 10, 25, 5])
    return [a, b, c, d], [rounds_of(5)[0], *rounds_of(3, 3), rounds_of(5)[0]]


def test_worse_names_the_configuration_it_is_shown_below_not_only_the_leader():
    """The leader's own seeds scatter by ~1 pp, so nothing is shown below it; c is shown below a, whose
    seeds agree. "Against whom" is a (its interval with c below 0), where the leader's interval is not."""
    n = 10_000
    a, b = (seeds_of(right_on(n, 8_990 - 5 * i), [0, 3, 1, 4], offset=10 + 10 * i) for i in range(2))
    c = seeds_of(right_on(n, 8_900), [0, 3, 1, 4], offset=40)
    leader = seeds_of(right_on(n, 9_100), [0, 150, 40, 110])
    look = decide.look([leader, a, b, c], MARGIN, ALPHA)
    assert look.leader == 0 and list(look.noisier) == [0]
    standing = look.standings[3]
    assert standing.verdict == WORSE and standing.shown_below == 1
    assert look.interval(3, 1)[1] < 0 < standing.interval[1]  # below a; not below the leader
    decision = decide.replay(rounds_of(4, 4, 4, 4), [leader, a, b, c], Rule(max_seeds=4))
    assert decision.against[3] == 1 and decision.then[3][1][1] < 0


def test_a_kept_verdict_is_restated_against_the_final_best_with_what_it_was_decided_against():
    """Issue 24: a kept verdict printed its difference against the leader of the round that decided it
    (a here), not the final best (b)."""
    groups, seed_rounds = kept_then_overtaken()
    decision = decide.replay(seed_rounds, groups, Rule())
    assert [entry["leader"] for entry in decision.rounds[2:]] == [0, 0, 1]
    assert decision.best == 1 and decision.verdicts[2] == WORSE and decision.against[2] == 0
    difference, interval = decision.now(2)
    assert difference == pytest.approx(groups[2].mean() - groups[1].mean())  # against b, the final best
    assert decision.kept[2].difference == pytest.approx(groups[2].mean() - groups[0][:3].mean())  # against a
    assert interval[0] < difference < interval[1] < 0


def test_a_kept_tie_of_the_configuration_that_ends_best_is_not_dropped_silently():
    """Issue 24: b, decided tied with a after round 3, became "best" with no word of it."""
    groups, seed_rounds = kept_then_overtaken()
    decision = decide.replay(seed_rounds, groups, Rule())
    assert decision.verdicts[1] == BEST and decision.decided_at[1] == 3 and decision.against[1] == 0
    assert decision.kept[1].verdict == TIED and decision.within_margin[1]


def test_a_configuration_decided_worse_stays_worse_even_where_its_mean_ends_highest():
    """The best is the best mean among those not decided worse: a's later seeds drop below c, which was
    shown below a after round 3 and stopped."""
    n = 10_000
    a = np.concatenate([seeds_of(right_on(n, 9_000), [0, 2, 4]), seeds_of(right_on(n, 8_000), [0, 2])])
    c = seeds_of(right_on(n, 8_900), [0, 2, 4])
    d = seeds_of(right_on(n, 8_960), [0, 150, 60, 110, 20])
    decision = decide.replay([rounds_of(5)[0], rounds_of(3)[0], rounds_of(5)[0]], [a, c, d], Rule())
    assert decision.final.leader == 1 and decision.verdicts[1] == WORSE  # highest mean now, still worse
    assert decision.best in (0, 2) and decision.verdicts[decision.best] == BEST
    assert 1 not in decision.additions


def test_worse_and_within_the_margin_are_not_exclusive():
    """Issue 24: a configuration truly 0.25 pp below the best could be "worse" or "tied", never both, so
    a worse one was never good enough by the sweep's own margin. Its interval [-0.45, -0.05] pp is both."""
    n = 10_000
    best = np.repeat(right_on(n, 9_000)[None, :], 5, axis=0)
    close = np.repeat(right_on(n, 8_975)[None, :], 5, axis=0)  # 25 images = 0.25 pp below, no seed noise
    standing = decide.look([best, close], MARGIN, ALPHA).standings[1]
    assert standing.verdict == WORSE and standing.within_margin
    assert -MARGIN < standing.bounds[0] < standing.interval[1] < 0
    far = np.repeat(right_on(n, 8_900)[None, :], 5, axis=0)  # 1 pp below: worse, not within
    assert not decide.look([best, far], MARGIN, ALPHA).standings[1].within_margin
    decision = decide.replay(rounds_of(5, 5), [best, close], Rule())
    assert decision.verdicts == [BEST, WORSE] and decision.within_margin == [True, True]
    assert decision.rounds[2]["decided"] == {1: "worse, within ±0.5 pp"}


def undecided_pair(n: int = 10_000, seeds: int = 3) -> list[np.ndarray]:
    """Two configurations 0.8 pp apart whose seeds spread by ~1 pp: neither worse nor within the margin."""
    spread = [0, 150, 60, 110, 20][:seeds]
    return [seeds_of(right_on(n, 9_000), spread), seeds_of(right_on(n, 8_920), spread[::-1])]


def test_replay_stops_after_max_seeds_rounds():
    rule = Rule(max_seeds=3)
    groups = undecided_pair(seeds=3)
    going = decide.replay(rounds_of(2, 2), [g[:2] for g in groups], rule)
    assert going.verdicts == [BEST, UNDECIDED] and going.additions == [0, 1] and going.stop_reason == ""
    done = decide.replay(rounds_of(3, 3), groups, rule)
    assert done.verdicts == [BEST, UNDECIDED]
    assert done.additions == [] and "max_seeds" in done.stop_reason


def test_additions_are_the_undecided_and_the_leader():
    n = 10_000
    leader = seeds_of(right_on(n, 9_000), [0, 150, 60])
    close = seeds_of(right_on(n, 8_920), [150, 0, 60])  # undecided
    poor = seeds_of(right_on(n, 7_000), [0, 150, 60])  # 20 pp below: worse at round 3
    decision = decide.replay(rounds_of(3, 3, 3), [close, poor, leader], Rule())
    assert decision.verdicts == [UNDECIDED, WORSE, BEST]
    assert decision.additions == [0, 2]


def test_the_leader_at_max_seeds_gets_no_more_but_the_undecided_do():
    n = 10_000
    leader = seeds_of(right_on(n, 9_000), [0, 150, 60])  # 3 seeds in rounds 1, 2 and 2
    close = seeds_of(right_on(n, 8_920), [150, 0])
    decision = decide.replay([[1, 2, 2], [1, 2]], [leader, close], Rule(max_seeds=3))
    assert decision.verdicts == [BEST, UNDECIDED] and decision.additions == [1]


def test_the_fixed_design_looks_at_the_full_alpha():
    """A gap that is worse at alpha and not at alpha / looks: sequential=False decides it, the rounds
    (the same data, round 3's look) do not."""
    n, rule = 10_000, Rule()
    good = seeds_of(right_on(n, 9_000), [0, 30, 15])

    def verdicts(lose: int) -> tuple[str, str]:
        poor = seeds_of(right_on(n, 9_000 - lose), [30, 0, 15])
        groups, rounds = [good, poor], rounds_of(3, 3)
        return (decide.replay(rounds, groups, rule, sequential=False).verdicts[1],
                decide.replay(rounds, groups, rule).verdicts[1])

    between = [lose for lose in range(0, 200, 5) if verdicts(lose)[0] == WORSE != verdicts(lose)[1]]
    assert between, "no gap is worse at alpha without being worse at alpha / looks"
    assert decide.look([good, seeds_of(right_on(n, 9_000 - between[0]), [30, 0, 15])], rule.margin,
                       rule.alpha).standings[1].verdict == WORSE


def test_each_round_of_the_log_names_the_leader_of_its_own_look():
    """The history once named the final leader on every round's line: round 1's leader is a's here, and
    b leads after its second seed."""
    n = 10_000
    a = seeds_of(right_on(n, 9_000), [0, 0])
    b = np.stack([right_on(n, 8_990), right_on(n, 9_100)])
    decision = decide.replay([[1, 2], [1, 2]], [a, b], Rule())
    assert [entry["leader"] for entry in decision.rounds] == [0, 1]
    assert decision.final.leader == 1
