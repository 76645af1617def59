"""Deciding a sweep: each configuration against the best ends *worse*, *within ±margin* (tied, or worse
and within the margin) or *undecided*, with error rate alpha over the whole procedure, and rounds add
seeds only where the answer is undecided.

Two things make a configuration's mean validation accuracy wobble, and both count here:
- which validation images were drawn. All trials see the same images in the same order, so two
  configurations are compared image by image (paired): given the trained models, the difference of two
  means is a mean over images of d_i = ybar_a,i - ybar_b,i (ybar: a configuration's correctness on image
  i, averaged over its seeds), whose variance is var(d_i) / n.
- which seed trained it (initialisation, data order): configuration c's mean over its k_c seeds on these
  images varies from seed draw to seed draw with variance lambda_c / k_c, lambda_c = sigma_c^2 + nu_c:
  sigma_c^2 how far a seed moves the population accuracy, nu_c = mean_i var_s(y_s,i) / n which borderline
  images a seed happens to get right (the part of var(d_i)/n the seeds make).
  Var(difference) = tau_ab + lambda_a / k_a + lambda_b / k_b   (law of total variance), tau_ab = var(d_i)/n
  less nu_a / k_a + nu_b / k_b: which images were drawn, on n - 1 degrees of freedom.
Seed noise per configuration where it differs (seed_noise): lambda_c is estimated by the seeds' mean
square of accuracy, pooled (weights k_c - 1) over the configurations whose seeds do not spread more than
the others' -- a one-sided F test of each against the pool of the rest, at HETEROGENEITY_ALPHA, one at a
time -- and a configuration that fails it keeps its own, on its own k_c - 1 degrees of freedom (Welch's
test for its pairs). A variance pooled over every configuration, as before, assumed every
configuration's accuracy moves by the same amount from seed to seed; one unstable setting (a diverging
learning rate) then widened every interval and narrowed its own (16% false "worse" in simulation with
one of five configurations at 10 times the others' seed noise). The assumption left: a configuration
noisier than the rest whose own seeds do not show it is pooled with them; with two seeds (one degree of
freedom) that is a third of the time for one 10 times noisier, so no verdict is reached before every
configuration has three seeds (Rule.first_look: round 3), and the simulation tests measure what is left.
A configuration with one seed borrows the pool's lambda; with no configuration at two seeds nothing is
decided. The parts are combined with Welch-Satterthwaite degrees of freedom, the seeds' part on its
source's (pair_widths).

The leader is chosen from the same data, so the comparisons are Hsu's multiple comparisons with the best
(constrained MCB, Hsu 1996, ch. 4): intervals for mu_i - max_{j != i} mu_j, simultaneous at 1 - alpha
*including* the choice of the leader. Its own critical value (Dunnett's one-sided quantile for K - 1
comparisons) is not enough for "worse" as people read it, "strictly below the best": with the best
tied, either of two equal configurations can be the one the data put second, and the simulation tests
measured about 2 alpha false "worse" with it. So every bound uses Bonferroni's t quantile over all
K (K - 1) ordered pairs, alpha / (K (K - 1)) each: the pairwise differences are then simultaneous at
1 - alpha whichever the data rank first, and the MCB bounds built from them keep their guarantee (a
wider critical value only widens them). From the interval [lower, upper] of each configuration:
  worse          upper = 0 (it is below the best of the others; shown_below names the configuration);
  within margin  -margin < lower and upper < margin (an equivalence claim, as two one-sided tests: a
                 configuration whose true gap to the best exceeds the margin is called within at rate
                 <= alpha), whether or not it is also worse: TIED is within and not worse;
  undecided      neither.
Looks: a decided sweep looks after every round from Rule.first_look (3) on, so alpha is split over those
looks (Bonferroni: alpha / looks each, looks = max_seeds - 2; the looks after rounds 1 and 2 decide
nothing and spend no alpha). Bonferroni rather than an alpha-spending function (O'Brien-Fleming, Pocock)
because the information added per round is not a fixed fraction (rounds add seeds to different
configurations, the leader may change), which spending functions assume to compute their boundaries; it
is conservative, and the simulation tests measure by how much. A verdict, once reached, is kept: the
configuration stops getting seeds (a worse one too: "worse and within the margin" needs an interval
narrower than +-margin/2, which more seeds rarely give), and the verdict, a claim about mu_c - max_{j != c}
mu_j, stays true whoever ends best; Decision keeps what it was reached against, and its numbers against
the final best. A fixed design (`--seeds N`) is one look at the full alpha.

No maintained library implements MCB with two variance sources per pair (statsmodels has TOST for one
pair, scipy Dunnett for raw samples of one source): the arithmetic below is written by hand; each step
is a textbook formula named in its comment, and tests/sweeps/analysis check it on constructed cases and
its error rates by simulation. Plain numpy and scipy: no torch, MLflow or Optuna.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

from sweeps.analysis.words import BEST, TIED, UNDECIDED, WORSE
from sweeps.definitions.rule import Rule

__all__ = ["BEST", "HETEROGENEITY_ALPHA", "TIED", "UNDECIDED", "WORSE", "Decision", "Look", "Rule",
           "SeedNoise", "Standing", "look", "pair_widths", "pooled_seed_variance", "replay", "seed_noise"]

# The level of the test that takes a configuration out of the pool of seed variances (seed_noise): a
# configuration whose seeds spread more than the pool of the others' (one-sided F test) at this level
# keeps its own variance. Higher sees more of the noisier configurations and costs power where they
# are equal. Measured (600 simulated sweeps each): two of five identical configurations at 3 times the
# others' seed sd gave 8.0% / 5.7% / 4.2% / 3.3% false "worse" at 0.1 / 0.2 / 0.25 / 0.3, and the main
# job's real gaps 20.5 / 20.9 / 21.2 / 21.5 trials and 0.86 / 0.98 / 1.09 / 1.17 undecided.
HETEROGENEITY_ALPHA = 0.25


@dataclass(frozen=True)
class Standing:
    """One configuration after a look, against the leader (the best mean)."""

    seeds: int
    mean: float  # mean validation accuracy over seeds
    difference: float  # mean minus the leader's
    interval: tuple[float, float]  # of `difference`, paired with the leader (NaNs for the leader itself)
    bounds: tuple[float, float]  # Hsu's MCB interval of mu_i - max_{j != i} mu_j (the verdicts' basis)
    verdict: str  # BEST (the leader) | WORSE | TIED | UNDECIDED
    shown_best: bool = False  # the leader, with every other configuration worse
    # bounds inside (-margin, +margin): within the margin of the best of the others, whether or not it is
    # also WORSE (TIED is within the margin and not shown below)
    within_margin: bool = False
    shown_below: int | None = None  # WORSE: the configuration it is shown below (the tightest of its pairs)


@dataclass(frozen=True)
class SeedNoise:
    """The seed noise each configuration's comparisons use (seed_noise), per configuration."""

    variance: np.ndarray  # sigma_c^2: the seed-to-seed variance of population accuracy (NaN: unknown)
    seed_variance: np.ndarray  # lambda_c = sigma_c^2 + nu_c: the variance of one seed's accuracy on these
    #                            images, the seeds' mean square where that is larger (never below nu_c)
    images_noise: np.ndarray  # nu_c = mean_i var_s(y_s,i) / n, the images' own seed noise (one seed: the
    #                           pool's)
    df: np.ndarray  # degrees of freedom of lambda_c (0: unknown)
    own: np.ndarray  # bool: from its own seeds (shown noisier than the pool), else from the pool
    pooled_sd: float  # sigma of the pool (the configurations not shown noisier); NaN without df
    pooled_df: int


@dataclass(frozen=True)
class Look:
    standings: list[Standing]  # in the input order
    leader: int  # index of the best mean (the first of exact ties)
    seed_sd: float  # pooled seed-to-seed sd of accuracy; NaN while no configuration has two seeds
    seed_df: int  # its degrees of freedom, sum(k_c - 1) over the pool
    alpha: float  # of this look
    # configuration -> its own seed sd, where shown noisier than the pool and so not pooled
    noisier: dict[int, float] = field(default_factory=dict)
    means: np.ndarray | None = None  # per configuration (NaN where absent from the look)
    widths: np.ndarray | None = None  # w[i, j]: half-width of the interval of m_i - m_j (inf: none)

    def interval(self, i: int, j: int) -> tuple[float, float]:
        """The simultaneous interval of mu_i - mu_j at this look (NaNs where it has none)."""
        if self.widths is None or i == j or not np.isfinite(self.widths[i, j]):
            return math.nan, math.nan
        gap = float(self.means[i] - self.means[j])
        return gap - float(self.widths[i, j]), gap + float(self.widths[i, j])


def look(groups: Sequence[np.ndarray], margin: float, alpha: float,
         heterogeneity_alpha: float = HETEROGENEITY_ALPHA) -> Look:
    """Verdicts of every configuration against the best; `groups[c]` is a seeds x images bool matrix."""
    groups = [np.asarray(g, dtype=bool) for g in groups]
    if not groups or any(g.ndim != 2 or not len(g) for g in groups):
        raise ValueError("need one seeds x images matrix with at least one seed per configuration")
    n = groups[0].shape[1]
    if any(g.shape[1] != n for g in groups):
        raise ValueError("every configuration must be evaluated on the same validation images")
    seeds = np.array([len(g) for g in groups])
    means = np.array([g.mean() for g in groups])
    leader = int(np.argmax(means))  # argmax keeps the first of exact ties
    noise = seed_noise(groups, heterogeneity_alpha)
    noisier = {int(c): math.sqrt(float(noise.variance[c])) for c in np.flatnonzero(noise.own)}
    count = len(groups)
    if count == 1 or not noise.df.any() or alpha == 0:  # alpha 0: a look that decides nothing (numbers only)
        nan = (math.nan, math.nan)
        standings = [Standing(int(seeds[c]), float(means[c]), float(means[c] - means[leader]), nan, nan,
                              BEST if c == leader else UNDECIDED) for c in range(count)]
        return Look(standings, leader, noise.pooled_sd, noise.pooled_df, alpha, noisier, means,
                    np.full((count, count), np.inf))
    # every ordered pair at alpha / (K (K - 1)): a "worse" is a claim mu_i < mu_j about a pair the data
    # chose, and with the best tied either of two equal configurations could be the one called worse
    # (MCB's own alpha / (K - 1) allowed ~2 alpha then, measured by the simulation tests)
    width = pair_widths(groups, noise, alpha / count)
    gaps = means[:, None] - means[None, :]  # gaps[i, j] = m_i - m_j
    off = ~np.eye(count, dtype=bool)
    # Hsu's constrained MCB: D+_i = (min_{j!=i} m_i - m_j + w_ij)^+; G = {i: D+_i > 0};
    # D-_i = 0 if G = {i}, else min(0, min_{j in G, j != i} m_i - m_j - w_ij).
    upper_raw = np.where(off, gaps + width, np.inf).min(axis=1)
    upper = np.maximum(0.0, upper_raw)
    contenders = upper > 0
    standings = []
    for i in range(count):
        others = contenders & off[i]
        lower = 0.0 if not others.any() else min(0.0, float((gaps[i] - width[i])[others].min()))
        within = lower > -margin and upper[i] < margin
        if i == leader:
            verdict = BEST
        elif upper_raw[i] < 0:
            verdict = WORSE
        elif within:
            verdict = TIED
        else:
            verdict = UNDECIDED
        interval = (math.nan, math.nan) if i == leader or not np.isfinite(width[i, leader]) else \
            (float(gaps[i, leader] - width[i, leader]), float(gaps[i, leader] + width[i, leader]))
        below = int(np.argmin(np.where(off[i], gaps[i] + width[i], np.inf))) if verdict == WORSE else None
        standings.append(Standing(int(seeds[i]), float(means[i]), float(gaps[i, leader]), interval,
                                  (lower, float(upper[i])), verdict,
                                  shown_best=i == leader and not others.any(), within_margin=bool(within),
                                  shown_below=below))
    return Look(standings, leader, noise.pooled_sd, noise.pooled_df, alpha, noisier, means, width)


def _seed_statistics(groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per configuration: (k - 1, the seeds' mean square of accuracy, the images' own seed noise
    mean_i var_s(y_s,i) / n); NaN where it has one seed."""
    df = np.array([len(g) - 1 for g in groups])
    squares, own = np.full(len(groups), math.nan), np.full(len(groups), math.nan)
    for c, group in enumerate(groups):
        k = len(group)
        if k >= 2:
            squares[c] = group.mean(axis=1).var(ddof=1)
            right = group.mean(axis=0)  # of 0/1 values: var_s = p (1 - p) k / (k - 1)
            own[c] = float(right @ (1 - right)) * k / (k - 1) / group.shape[1] ** 2
    return df, squares, own


def pooled_seed_variance(groups: Sequence[np.ndarray]) -> tuple[float, int, float]:
    """(sigma^2, degrees of freedom, mean square): the seed-to-seed variance of population accuracy,
    pooled over the configurations with >= 2 seeds (weights k_c - 1), and the pooled variance of their
    seed accuracies it is taken from; (NaN, 0, NaN) when none has two.

    Per configuration: var_s(acc_s) - mean_i var_s(y_s,i) / n, i.e. the seeds' spread of accuracy less the
    images' own seed noise (the off-diagonal part of the covariance of y over images). Each term is
    unbiased; the pooled value is clipped at 0 (a variance), never each configuration's."""
    df, squares, own = _seed_statistics(groups)
    return _pool(df, squares, own, df > 0)


def _pool(df, squares, own, members) -> tuple[float, int, float]:
    total = int(df[members].sum())
    if not total:
        return math.nan, 0, math.nan
    weights = df[members]
    return (max(0.0, float(weights @ (squares[members] - own[members])) / total), total,
            float(weights @ squares[members]) / total)


def seed_noise(groups: Sequence[np.ndarray], heterogeneity_alpha: float = HETEROGENEITY_ALPHA) -> SeedNoise:
    """The seed noise of each configuration: pooled over the configurations whose seeds do not spread
    more than the others', its own where they do (equal variances tested before they are pooled, as
    Bartlett's test does, here one configuration at a time and one-sided: a configuration *less* noisy
    than the pool only makes its intervals wider).

    Step by step: each configuration of the pool with >= 2 seeds is tested against the pool of the others,
    F = its seeds' mean square of accuracy / (sigma_others^2 + its own images' noise), on k_c - 1 and
    sum_others (k_j - 1) degrees of freedom; the one with the smallest p leaves the pool when that p is
    below `heterogeneity_alpha`, and the rest are tested again, until none leaves or one is left. One that
    left keeps its own seeds' variance, on k_c - 1 degrees of freedom; the others, and any configuration
    with one seed, the pool's, on sum_pool (k_c - 1). The test sees a noisier configuration only as far as
    its own seeds show it: with two seeds (one degree of freedom) one 10 times noisier than the rest looks
    like them in about a third of sweeps, which is why replay decides nothing before round 3 (Rule.
    first_look); the simulation tests measure what is left."""
    df, squares, own = _seed_statistics(groups)
    measured = df > 0
    pool = measured.copy()
    weights = np.where(measured, df, 0)
    excess = np.where(measured, squares - own, 0.0)  # each one's sigma_c^2 estimate
    while pool.sum() >= 2:
        members = np.flatnonzero(pool)
        others_df = weights[pool].sum() - weights[members]  # leave-one-out pools
        pooled_excess = weights[pool] @ excess[pool]
        others = np.maximum(0.0, (pooled_excess - weights[members] * excess[members]) / others_df)
        expected = others + own[members]
        with np.errstate(divide="ignore", invalid="ignore"):
            spread = squares[members]
            ratio = np.where(expected > 0, spread / expected, np.where(spread > 0, np.inf, 0.0))
        p_values = special.fdtrc(df[members], others_df, ratio)  # F's survival function
        noisiest = int(np.argmin(p_values))
        if p_values[noisiest] >= heterogeneity_alpha:
            break
        pool[members[noisiest]] = False
    pooled, pooled_df, pooled_square = _pool(df, squares, own, pool)
    pooled_noise = float(df[pool] @ own[pool]) / pooled_df if pooled_df else math.nan
    mine = measured & ~pool
    images_noise = np.where(measured, own, pooled_noise)
    variance = np.where(mine, np.maximum(0.0, squares - own), pooled)
    seed_variance = np.maximum(np.where(mine, squares, pooled_square), variance + images_noise)
    return SeedNoise(variance, seed_variance, images_noise, np.where(mine, df, pooled_df), mine,
                     math.sqrt(pooled) if pooled_df else math.nan, pooled_df)


def pair_widths(groups: Sequence[np.ndarray], noise: SeedNoise, alpha: float) -> np.ndarray:
    """w[i, j]: half-width of the one-sided bound of m_i - m_j at alpha / (K - 1) (Bonferroni); inf where
    a side's seed noise is unknown.

    Variance of the difference, V = tau_ij + lambda_i / k_i + lambda_j / k_j (law of total variance):
    lambda_c / k_c is the variance of configuration c's mean over its k_c seeds on these images (its seeds'
    spread of accuracy: the seed noise sigma_c^2 and the images' own seed noise nu_c), and tau_ij =
    var(d_i)/n - nu_i/k_i - nu_j/k_j the rest of the paired images' variance (which images were drawn),
    d_i the per-image difference of mean correctness (from the covariance matrix of the configurations'
    per-image means: var(a - b) = var a + var b - 2 cov). Degrees of freedom by Welch-Satterthwaite,
    V^2 / (sum_s V_s^2 / df_s + tau^2 / (n - 1)), V_s the part of the lambdas from one source s: the pool
    (two pooled configurations share it: their parts add before squaring) or a configuration's own seeds
    (Welch's test). Each lambda counts with its source's degrees of freedom even where sigma^2 is
    estimated as 0: the estimate of lambda is a mean square of seeds whatever sigma is, and treating it as
    known (the images' n - 1 df, as before) made intervals too narrow where a noisier configuration hid
    in the pool (7-8% false "worse" in the simulation tests' unequal cases)."""
    count, n = len(groups), groups[0].shape[1]
    per_image = np.stack([g.mean(axis=0) for g in groups])  # configurations x images
    covariance = np.atleast_2d(np.cov(per_image, ddof=1))
    diagonal = np.diag(covariance)
    image_part = np.maximum(0.0, diagonal[:, None] + diagonal[None, :] - 2 * covariance) / n
    inverse_seeds = 1.0 / np.array([len(g) for g in groups], dtype=float)
    known = noise.df > 0
    seeds_part = np.where(known, noise.seed_variance, 0.0) * inverse_seeds  # lambda_c / k_c
    images_noise = np.where(known, noise.images_noise, 0.0) * inverse_seeds  # nu_c / k_c
    degrees = np.where(known, noise.df, 1).astype(float)
    rest = np.maximum(0.0, image_part - images_noise[:, None] - images_noise[None, :])  # tau
    seeds = seeds_part[:, None] + seeds_part[None, :]
    total = rest + seeds
    shared = ~noise.own[:, None] & ~noise.own[None, :]  # both from the pool: one source
    seed_spread = np.where(shared, seeds ** 2 / degrees[:, None],
                           seeds_part[:, None] ** 2 / degrees[:, None]
                           + seeds_part[None, :] ** 2 / degrees[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        satterthwaite = total ** 2 / (rest ** 2 / (n - 1) + seed_spread)
    # between the fewest seed df of the two and the images' (0 / 0 only for identical vectors without
    # seed spread: a zero variance, whose width is 0 whatever the quantile)
    fewest = np.minimum(degrees[:, None], degrees[None, :])
    satterthwaite = np.clip(np.where(np.isfinite(satterthwaite), satterthwaite, n - 1), fewest, n - 1)
    quantile = stats.t.ppf(1 - alpha / max(1, count - 1), satterthwaite)
    return np.where(known[:, None] & known[None, :], quantile * np.sqrt(total), np.inf)


@dataclass(frozen=True)
class Decision:
    """A decided sweep replayed round by round: what every look concluded, what is kept, and against whom.

    A verdict is a claim about mu_c - max_{j != c} mu_j, the configuration against the best of the others,
    whoever led the look that reached it: it stays true whichever configuration ends with the best mean,
    and is kept. What it is printed against changes: `now(c)` is its difference and interval against the
    final best, `then[c]` what the look that decided it showed against `against[c]` (for WORSE the
    configuration it was shown below, for TIED that look's leader)."""

    verdicts: list[str]  # per configuration, in the input order: BEST for `best`, else the kept WORSE or
    #                      TIED, else UNDECIDED (a kept TIED of the configuration that ends best: BEST,
    #                      with decided_at and against saying what was decided)
    decided_at: list[int | None]  # the round after which each verdict (WORSE or TIED) was reached
    final: Look  # the last look (its numbers are what the report shows)
    kept: list[Standing]  # per configuration: the standing of the look that decided it, else the last
    rounds: list[dict]  # per round: {"round", "trials", "leader", "decided": {index: words}, "undecided"}
    additions: list[int]  # configurations to give one more seed in the next round; [] when it stops
    stop_reason: str  # why no further round ("" while it goes on)
    alpha: float = 0.05  # the whole procedure's (each look had alpha / looks)
    best: int = 0  # the final best: the best mean of the last look among those not decided worse
    against: list[int | None] = field(default_factory=list)  # per configuration decided: WORSE, the one
    #                                                          it was shown below; TIED, the leader then
    within_margin: list[bool] = field(default_factory=list)  # shown within +-margin of the best of the
    #                                                          others at some look (worse or not); the
    #                                                          best: True
    within_at: list[int | None] = field(default_factory=list)  # the round it was shown within the margin
    # per configuration decided: what the look that decided it showed, (difference, interval) in accuracy:
    # WORSE, its difference to `against` (the configuration it was shown below) and that pair's interval;
    # TIED, its difference to `against` (that look's leader) and the interval of mu_c - max_{j != c} mu_j
    then: list[tuple[float, tuple[float, float]] | None] = field(default_factory=list)
    first_look: int = 3  # the first round whose look could decide (Rule.first_look)

    def now(self, c: int) -> tuple[float, tuple[float, float]]:
        """Configuration c against the final best, at the last look: (difference of means, its interval)."""
        means = self.final.means
        return float(means[c] - means[self.best]), self.final.interval(c, self.best)


def words(verdict: str, within_margin: bool, margin: float) -> str:
    """A verdict as the round lines print it: WORSE within the margin says so."""
    return f"{WORSE}, within ±{100 * margin:.2g} pp" if verdict == WORSE and within_margin else verdict


def replay(seed_rounds: Sequence[Sequence[int]], groups: Sequence[np.ndarray], rule: Rule,
           sequential: bool = True, budget_spent: bool = False, last_round: int | None = None) -> Decision:
    """Replay the rounds: `groups[c]` holds configuration c's seeds (rows) and `seed_rounds[c]` the round
    each row was trained in (1, 2, ...). After each round r >= rule.first_look the data of rounds <= r is
    looked at (alpha / looks each; the looks before decide nothing); a verdict reached is kept, and the
    configurations still undecided, with the leader, get one more seed in round r + 1, up to max_seeds,
    for at most max_seeds rounds.

    `sequential=False` is the fixed design: one look at the full alpha over all the data. `last_round`:
    the rounds run so far, where the latest trained nothing that finished (all diverged)."""
    groups = [np.asarray(g, dtype=bool) for g in groups]
    count = len(groups)
    if not sequential:
        final = look(groups, rule.margin, rule.alpha)
        verdicts = [s.verdict for s in final.standings]
        decided = [v in (WORSE, TIED) for v in verdicts]
        within = [s.within_margin or c == final.leader for c, s in enumerate(final.standings)]
        against = [_against(s, final) if d else None for s, d in zip(final.standings, decided, strict=True)]
        return Decision(verdicts, [1 if d else None for d in decided], final, list(final.standings),
                        [{"round": 1, "trials": int(sum(map(len, groups))), "leader": final.leader,
                          "decided": {},
                          "undecided": [c for c, v in enumerate(verdicts) if v == UNDECIDED]}], [],
                        "fixed design", rule.alpha, final.leader, [a and a[0] for a in against], within,
                        [1 if w and c != final.leader else None for c, w in enumerate(within)],
                        [a and a[1] for a in against], 1)
    rounds_of = [np.asarray(r, dtype=int) for r in seed_rounds]
    last_round = max([int(r.max()) for r in rounds_of] + [last_round or 0])
    kept: list[Standing | None] = [None] * count
    decided_at: list[int | None] = [None] * count
    against: list[int | None] = [None] * count
    within_at: list[int | None] = [None] * count
    then: list[tuple | None] = [None] * count
    log, final = [], None
    for r in range(1, last_round + 1):
        data = [g[rows <= r] for g, rows in zip(groups, rounds_of, strict=True)]
        present = [c for c, g in enumerate(data) if len(g)]  # a configuration trained from its first round
        # before rule.first_look nothing is decided (with one or two seeds a configuration's own seed
        # variance is unknown): those looks spend no alpha
        alpha = rule.alpha_per_look if r >= rule.first_look else 0.0
        final = _look_over(data, present, rule.margin, alpha)
        newly = {}
        for c, standing in enumerate(final.standings):
            if standing is None or c == final.leader:
                continue
            fresh = kept[c] is None and standing.verdict in (WORSE, TIED)
            if fresh:
                kept[c], decided_at[c] = standing, r
                against[c], then[c] = _against(standing, final)
            if standing.within_margin and within_at[c] is None:
                within_at[c] = r
                fresh = True
            if fresh:
                newly[c] = words(kept[c].verdict, within_at[c] is not None, rule.margin)
        trained = int(sum(int((rows == r).sum()) for rows in rounds_of))
        undecided = [c for c in present if c != final.leader and _open(kept[c])]
        log.append({"round": r, "trials": trained, "leader": final.leader, "decided": newly,
                    "undecided": undecided})
    # the best: the best mean among those not decided worse (a configuration decided worse whose mean
    # ends highest, after the others' later seeds, stays worse: that claim was made at error rate alpha)
    candidates = [c for c in range(count) if final.standings[c] is not None
                  and not (kept[c] is not None and kept[c].verdict == WORSE)]
    best = max(candidates, key=lambda c: (final.means[c], -c)) if candidates else final.leader
    verdicts = [BEST if c == best else (kept[c].verdict if kept[c] else UNDECIDED) for c in range(count)]
    shown = [kept[c] if kept[c] is not None else final.standings[c] for c in range(count)]
    within = [c == best or within_at[c] is not None for c in range(count)]
    seeds = [len(g) for g in groups]
    undecided = [c for c in range(count) if c != best and _open(kept[c])]
    additions, reason = [], ""
    if not undecided:
        reason = "every configuration is decided"
    elif last_round >= rule.max_seeds:
        reason = f"the last of {rule.max_seeds} rounds (max_seeds) is done"
    elif budget_spent:
        reason = "the time budget is spent"
    else:
        additions = [c for c in undecided if seeds[c] < rule.max_seeds]
        if seeds[best] < rule.max_seeds:
            additions = sorted({*additions, best})
        if not additions:
            reason = "every undecided configuration has max_seeds seeds"
    return Decision(verdicts, decided_at, final, shown, log, additions, reason, rule.alpha, best, against,
                    within, within_at, then, rule.first_look)


def _against(standing: Standing, look: Look) -> tuple[int, tuple[float, tuple[float, float]]]:
    """What a verdict was reached against at `look`: (configuration, (difference, interval)) -- for WORSE
    the configuration it was shown below and that pair's interval, for TIED the leader and the interval
    of mu - max of the others (its MCB bounds)."""
    c = next(i for i, s in enumerate(look.standings) if s is standing)
    if standing.verdict == WORSE:
        below = standing.shown_below
        return below, (float(look.means[c] - look.means[below]), look.interval(c, below))
    return look.leader, (standing.difference, standing.bounds)


def _open(kept: Standing | None) -> bool:
    """Whether a configuration still gets seeds: while it has no verdict. A verdict of WORSE is kept even
    where the margin question is open: "worse, and within the margin" needs an interval narrower than
    +-margin/2, which max_seeds rarely gives (more seeds for it cost trials and added 0.3% of such
    verdicts in the simulation, gap 0.25 pp)."""
    return kept is None


def _look_over(data: list[np.ndarray], present: list[int], margin: float, alpha: float) -> Look:
    """`look` over the configurations present, its standings put back at their indices (None elsewhere)."""
    inner = look([data[c] for c in present], margin, alpha)
    standings: list = [None] * len(data)
    means = np.full(len(data), math.nan)
    widths = np.full((len(data), len(data)), np.inf)
    for position, c in enumerate(present):
        standing = inner.standings[position]
        below = standing.shown_below
        standings[c] = standing if below is None else \
            dataclasses.replace(standing, shown_below=present[below])
        means[c] = inner.means[position]
    widths[np.ix_(present, present)] = inner.widths
    return Look(standings, present[inner.leader], inner.seed_sd, inner.seed_df, alpha,
                {present[p]: sd for p, sd in inner.noisier.items()}, means, widths)
