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


def test_pair_interval_is_the_difference_plus_minus_the_hand_computed_width():
    n = 1_000
    a = seeds_of(right_on(n, 900), [0, 8, 3])
    b = seeds_of(right_on(n, 880), [5, 0], offset=100)  # wrong on other images than a's seed noise
    result = decide.look([a, b], MARGIN, ALPHA)
    standing = result.standings[1]
    difference = b.mean() - a.mean()
    # by hand: d_i = ybar_b,i - ybar_a,i; V = var(d_i) / n + sigma^2 (1/3 + 1/2), sigma^2 pooled
    # (weights k - 1) from var_s(acc_s) - mean_i var_s(y_s,i) / n; Welch-Satterthwaite degrees of freedom
    # with the seeds' whole mean square (1/3 + 1/2) on 3 df and the rest on n - 1; the t quantile at
    # alpha / (K (K - 1)) = alpha / 2 (K = 2: both ordered pairs)
    d = b.mean(axis=0) - a.mean(axis=0)
    image_part = d.var(ddof=1) / n
    pieces = [(len(g) - 1, g.mean(axis=1).var(ddof=1) - g.var(axis=0, ddof=1).mean() / n) for g in (a, b)]
    sigma2 = sum(w * v for w, v in pieces) / sum(w for w, _ in pieces)
    squares = sum((len(g) - 1) * g.mean(axis=1).var(ddof=1) for g in (a, b)) / 3
    total = image_part + sigma2 * (1 / 3 + 1 / 2)
    seed_known = squares * (1 / 3 + 1 / 2)
    rest = max(0.0, total - seed_known)
    df = total ** 2 / (rest ** 2 / (n - 1) + seed_known ** 2 / 3)
    width = stats.t.ppf(1 - ALPHA / 2, df) * math.sqrt(total)
    assert standing.difference == pytest.approx(difference)
    assert standing.interval == pytest.approx((difference - width, difference + width))
    assert standing.interval[0] < standing.difference < standing.interval[1]
    assert result.seed_sd == pytest.approx(math.sqrt(sigma2))


# --- replay: the rounds -----------------------------------------------------------------------------

def rounds_of(*seed_counts: int) -> list[list[int]]:
    """Seed s of every configuration trained in round s + 1."""
    return [list(range(1, k + 1)) for k in seed_counts]


def test_replay_keeps_a_verdict_once_reached():
    n = 10_000
    good = seeds_of(right_on(n, 9_000), [0, 2, 4])
    # rounds 1-2: 5 pp below with seeds that agree; round 3: a seed 4 pp above the leader, whose spread
    # makes the look over all three rounds undecided
    poor = np.concatenate([seeds_of(right_on(n, 8_500), [0, 2]), right_on(n, 9_400)[None, :]])
    rule = Rule(max_seeds=3)
    decision = decide.replay(rounds_of(3, 3), [good, poor], rule)
    assert decide.look([good, poor], rule.margin, rule.alpha_per_look).standings[1].verdict != WORSE
    assert decision.verdicts == [BEST, WORSE]
    assert decision.decided_at == [None, 2]
    assert decision.kept[1].seeds == 2  # the standing of the look that decided it, not the last one
    assert decision.rounds[1]["decided"] == {1: WORSE} and decision.rounds[2]["decided"] == {}


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
    leader = seeds_of(right_on(n, 9_000), [0, 150])
    close = seeds_of(right_on(n, 8_920), [150, 0])  # undecided
    poor = seeds_of(right_on(n, 7_000), [0, 150])  # 20 pp below: worse at round 2
    decision = decide.replay(rounds_of(2, 2, 2), [close, poor, leader], Rule())
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
    (the same data, the second round's look) do not."""
    n, rule = 10_000, Rule()
    good = seeds_of(right_on(n, 9_000), [0, 30])

    def verdicts(lose: int) -> tuple[str, str]:
        poor = seeds_of(right_on(n, 9_000 - lose), [30, 0])
        groups, rounds = [good, poor], rounds_of(2, 2)
        return (decide.replay(rounds, groups, rule, sequential=False).verdicts[1],
                decide.replay(rounds, groups, rule).verdicts[1])

    between = [lose for lose in range(0, 200, 5) if verdicts(lose)[0] == WORSE != verdicts(lose)[1]]
    assert between, "no gap is worse at alpha without being worse at alpha / looks"
    assert decide.look([good, seeds_of(right_on(n, 9_000 - between[0]), [30, 0])], rule.margin,
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
