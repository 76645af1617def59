"""Deciding a sweep: each configuration against the best ends *worse*, *tied within ±margin* or *undecided*,
with error rate alpha over the whole procedure, and rounds add seeds only where the answer is undecided.

Two things make a configuration's mean validation accuracy wobble, and both count here:
- which validation images were drawn. All trials see the same images in the same order, so two
  configurations are compared image by image (paired): given the trained models, the difference of two
  means is a mean over images of d_i = ybar_a,i - ybar_b,i (ybar: a configuration's correctness on image
  i, averaged over its seeds), whose variance is var(d_i) / n.
- which seed trained it (initialisation, data order): the population accuracy of a trained model varies
  from seed to seed with variance sigma^2, so a mean over k seeds carries sigma^2 / k.
  Var(difference) = var(d_i)/n + sigma^2 (1/k_a + 1/k_b)   (law of total variance: given the seeds, then
  over them). sigma^2 is estimated from every configuration with >= 2 seeds and *pooled* over them,
  which assumes every configuration's accuracy moves by the same amount from seed to seed (a width does
  not change how much a seed matters, within the grid); a configuration with one seed borrows the pooled
  value, so it can be compared as soon as any configuration has two. The seeds' spread of accuracy on
  these fixed images over-states sigma^2 by the images' own seed noise, mean_i var_s(y_s,i) / n, which
  var(d_i)/n counts already; that part is subtracted (the off-diagonal covariances remain: an ANOVA-style
  split of the two sources). With no configuration at two seeds, sigma^2 is unknown and nothing is
  decided: a Student t reference on sum(k_c - 1) degrees of freedom would have none. The two parts are
  combined with Welch-Satterthwaite degrees of freedom.

The leader is chosen from the same data, so the comparisons are Hsu's multiple comparisons with the best
(constrained MCB, Hsu 1996, ch. 4): intervals for mu_i - max_{j != i} mu_j, simultaneous at 1 - alpha
*including* the choice of the leader. Its own critical value (Dunnett's one-sided quantile for K - 1
comparisons) is not enough for "worse" as people read it, "strictly below the best": with the best
tied, either of two equal configurations can be the one the data put second, and the simulation tests
measured about 2 alpha false "worse" with it. So every bound uses Bonferroni's t quantile over all
K (K - 1) ordered pairs, alpha / (K (K - 1)) each: the pairwise differences are then simultaneous at
1 - alpha whichever the data rank first, and the MCB bounds built from them keep their guarantee (a
wider critical value only widens them). From the interval [lower, upper] of each configuration:
  worse     upper = 0 (it is below the best of the others);
  tied      -margin < lower and upper < margin (an equivalence verdict, as two one-sided tests: a
            configuration whose true gap to the best exceeds the margin is called tied at rate <= alpha);
  undecided otherwise.
Looks: a decided sweep looks after every round, so alpha is split over the looks (Bonferroni:
alpha / looks each, looks = max_seeds - 1, the rounds after the first; the look after round 1 is free
because with one seed everywhere nothing can be decided). Bonferroni rather than an alpha-spending
function (O'Brien-Fleming, Pocock) because the information added per round is not a fixed fraction
(rounds add seeds to different configurations, the leader may change), which spending functions assume
to compute their boundaries; it is conservative, and the simulation tests measure by how much. A
verdict, once reached, is kept: the configuration stops getting seeds. A fixed design (`--seeds N`) is
one look at the full alpha.

No maintained library implements MCB with two pooled variance sources (statsmodels has TOST for one
pair, scipy Dunnett for raw samples of one source): the arithmetic below is written by hand; each step
is a textbook formula named in its comment, and tests/sweeps/analysis check it on constructed cases and
its error rates by simulation. Plain numpy and scipy: no torch, MLflow or Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from sweeps.definitions.rule import Rule

__all__ = ["BEST", "TIED", "UNDECIDED", "WORSE", "Decision", "Look", "Rule", "Standing", "look",
           "pair_widths", "pooled_seed_variance", "replay"]

WORSE, TIED, UNDECIDED, BEST = "worse", "tied", "undecided", "best"


@dataclass(frozen=True)
class Standing:
    """One configuration after a look, against the leader (the best mean)."""

    seeds: int
    mean: float  # mean validation accuracy over seeds
    difference: float  # mean minus the leader's
    interval: tuple[float, float]  # of `difference`, paired with the leader (NaNs for the leader itself)
    bounds: tuple[float, float]  # Hsu's MCB interval of mu_i - max_{j != i} mu_j (the verdict's basis)
    verdict: str  # BEST (the leader) | WORSE | TIED | UNDECIDED
    shown_best: bool = False  # the leader, with every other configuration worse


@dataclass(frozen=True)
class Look:
    standings: list[Standing]  # in the input order
    leader: int  # index of the best mean (the first of exact ties)
    seed_sd: float  # pooled seed-to-seed sd of accuracy; NaN while no configuration has two seeds
    seed_df: int  # its degrees of freedom, sum(k_c - 1)
    alpha: float  # of this look


def look(groups: Sequence[np.ndarray], margin: float, alpha: float) -> Look:
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
    variance, df, mean_square = pooled_seed_variance(groups)
    count = len(groups)
    if count == 1 or df == 0 or alpha == 0:  # alpha 0: a look that decides nothing (numbers only)
        nan = (math.nan, math.nan)
        standings = [Standing(int(seeds[c]), float(means[c]), float(means[c] - means[leader]), nan, nan,
                              BEST if c == leader else UNDECIDED) for c in range(count)]
        return Look(standings, leader, math.sqrt(variance) if df else math.nan, df, alpha)
    # every ordered pair at alpha / (K (K - 1)): a "worse" is a claim mu_i < mu_j about a pair the data
    # chose, and with the best tied either of two equal configurations could be the one called worse
    # (MCB's own alpha / (K - 1) allowed ~2 alpha then, measured by the simulation tests)
    width = pair_widths(groups, variance, df, alpha / count, mean_square)
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
        if i == leader:
            verdict = BEST
        elif upper_raw[i] < 0:
            verdict = WORSE
        elif lower > -margin and upper[i] < margin:
            verdict = TIED
        else:
            verdict = UNDECIDED
        interval = (math.nan, math.nan) if i == leader else \
            (float(gaps[i, leader] - width[i, leader]), float(gaps[i, leader] + width[i, leader]))
        standings.append(Standing(int(seeds[i]), float(means[i]), float(gaps[i, leader]), interval,
                                  (lower, float(upper[i])), verdict,
                                  shown_best=i == leader and not others.any()))
    return Look(standings, leader, math.sqrt(variance), df, alpha)


def pooled_seed_variance(groups: Sequence[np.ndarray]) -> tuple[float, int, float]:
    """(sigma^2, degrees of freedom, mean square): the seed-to-seed variance of population accuracy,
    pooled over the configurations with >= 2 seeds (weights k_c - 1), and the pooled variance of their
    seed accuracies it is taken from; (NaN, 0, NaN) when none has two.

    Per configuration: var_s(acc_s) - mean_i var_s(y_s,i) / n, i.e. the seeds' spread of accuracy less the
    images' own seed noise (the off-diagonal part of the covariance of y over images). Each term is
    unbiased; the pooled value is clipped at 0 (a variance), never each configuration's."""
    total, squares, df = 0.0, 0.0, 0
    for group in groups:
        k = len(group)
        if k < 2:
            continue
        accuracies = group.mean(axis=1)
        own_noise = group.var(axis=0, ddof=1).mean() / group.shape[1]
        total += (k - 1) * (accuracies.var(ddof=1) - own_noise)
        squares += (k - 1) * accuracies.var(ddof=1)
        df += k - 1
    return (max(0.0, total / df), df, squares / df) if df else (math.nan, 0, math.nan)


def pair_widths(groups: Sequence[np.ndarray], variance: float, df: int, alpha: float,
                mean_square: float | None = None) -> np.ndarray:
    """w[i, j]: half-width of the one-sided bound of m_i - m_j at alpha / (K - 1) (Bonferroni).

    Standard error: sqrt(var(d_i)/n + sigma^2 (1/k_i + 1/k_j)), the first from the covariance matrix of the
    configurations' per-image mean correctness (var(a - b) = var a + var b - 2 cov). Degrees of freedom by
    Welch-Satterthwaite, (V1 + V2)^2 / (V1^2/df + V2^2/(n-1)), where V1 is the part known only from the
    seeds: the seeds' whole mean square times (1/k_i + 1/k_j), not sigma^2 alone, since sigma^2 is that
    mean square less the images' noise and varies as much (with sigma^2 clipped to 0 it would otherwise
    get the images' n - 1 degrees of freedom and too narrow an interval), and V2 the rest."""
    count, n = len(groups), groups[0].shape[1]
    per_image = np.stack([g.mean(axis=0) for g in groups])  # configurations x images
    covariance = np.atleast_2d(np.cov(per_image, ddof=1))
    diagonal = np.diag(covariance)
    image_part = np.maximum(0.0, diagonal[:, None] + diagonal[None, :] - 2 * covariance) / n
    inverse_seeds = 1.0 / np.array([len(g) for g in groups], dtype=float)
    coefficient = inverse_seeds[:, None] + inverse_seeds[None, :]
    total = image_part + variance * coefficient
    seed_known = (variance if mean_square is None else mean_square) * coefficient
    rest = np.maximum(0.0, total - seed_known)
    with np.errstate(divide="ignore", invalid="ignore"):
        satterthwaite = total ** 2 / (rest ** 2 / (n - 1) + seed_known ** 2 / df)
    # between the seeds' df and the images' (the formula leaves that range only where the seed part is
    # clipped, e.g. identical vectors: a zero variance, whose width is 0 whatever the quantile)
    satterthwaite = np.clip(np.where(np.isfinite(satterthwaite), satterthwaite, n - 1), df, n - 1)
    quantile = stats.t.ppf(1 - alpha / max(1, count - 1), satterthwaite)
    return quantile * np.sqrt(total)


@dataclass(frozen=True)
class Decision:
    """A decided sweep replayed round by round: what every look concluded and what is kept."""

    verdicts: list[str]  # per configuration, in the input order: the kept verdict (BEST for the leader)
    decided_at: list[int | None]  # the round after which each verdict was reached
    final: Look  # the last look (its numbers are what the report shows)
    kept: list[Standing]  # per configuration: the standing of the look that decided it, else the last
    rounds: list[dict]  # per round: {"round", "trials", "leader", "decided": {index: verdict}, "undecided"}
    additions: list[int]  # configurations to give one more seed in the next round; [] when it stops
    stop_reason: str  # why no further round ("" while it goes on)
    alpha: float = 0.05  # the whole procedure's (each look had alpha / looks)


def replay(seed_rounds: Sequence[Sequence[int]], groups: Sequence[np.ndarray], rule: Rule,
           sequential: bool = True, budget_spent: bool = False, last_round: int | None = None) -> Decision:
    """Replay the rounds: `groups[c]` holds configuration c's seeds (rows) and `seed_rounds[c]` the round
    each row was trained in (1, 2, ...). After each round r the data of rounds <= r is looked at (alpha /
    looks each, none after round 1); a verdict reached is kept, and the configurations still undecided,
    with the leader, get one more seed in round r + 1, up to max_seeds, for at most max_seeds rounds.

    `sequential=False` is the fixed design: one look at the full alpha over all the data. `last_round`:
    the rounds run so far, where the latest trained nothing that finished (all diverged)."""
    groups = [np.asarray(g, dtype=bool) for g in groups]
    if not sequential:
        final = look(groups, rule.margin, rule.alpha)
        verdicts = [s.verdict for s in final.standings]
        return Decision(verdicts, [1] * len(groups), final, list(final.standings),
                        [{"round": 1, "trials": int(sum(map(len, groups))), "leader": final.leader,
                          "decided": {},
                          "undecided": [c for c, v in enumerate(verdicts) if v == UNDECIDED]}], [],
                        "fixed design", rule.alpha)
    rounds_of = [np.asarray(r, dtype=int) for r in seed_rounds]
    last_round = max([int(r.max()) for r in rounds_of] + [last_round or 0])
    kept: list[Standing | None] = [None] * len(groups)
    decided_at: list[int | None] = [None] * len(groups)
    log, final = [], None
    for r in range(1, last_round + 1):
        data = [g[rows <= r] for g, rows in zip(groups, rounds_of, strict=True)]
        present = [c for c, g in enumerate(data) if len(g)]  # a configuration trained from its first round
        # with one seed each nothing can be decided after round 1: that look spends no alpha
        alpha = rule.alpha_per_look if r > 1 else 0.0
        final = _look_over(data, present, rule.margin, alpha)
        newly = {}
        for c, standing in enumerate(final.standings):
            if standing is None or kept[c] is not None or standing.verdict in (BEST, UNDECIDED):
                continue
            kept[c], decided_at[c] = standing, r
            newly[c] = standing.verdict
        trained = int(sum(int((rows == r).sum()) for rows in rounds_of))
        undecided = [c for c in present if kept[c] is None and c != final.leader]
        log.append({"round": r, "trials": trained, "leader": final.leader, "decided": newly,
                    "undecided": undecided})
    leader = final.leader
    verdicts = [BEST if c == leader else (kept[c].verdict if kept[c] else UNDECIDED)
                for c in range(len(groups))]
    shown = [kept[c] if kept[c] is not None else final.standings[c] for c in range(len(groups))]
    seeds = [len(g) for g in groups]
    undecided = [c for c, v in enumerate(verdicts) if v == UNDECIDED]
    additions, reason = [], ""
    if not undecided:
        reason = "every configuration is decided"
    elif last_round >= rule.max_seeds:
        reason = f"the last of {rule.max_seeds} rounds (max_seeds) is done"
    elif budget_spent:
        reason = "the time budget is spent"
    else:
        additions = [c for c in undecided if seeds[c] < rule.max_seeds]
        if seeds[leader] < rule.max_seeds:
            additions = sorted({*additions, leader})
        if not additions:
            reason = "every undecided configuration has max_seeds seeds"
    return Decision(verdicts, decided_at, final, shown, log, additions, reason, rule.alpha)


def _look_over(data: list[np.ndarray], present: list[int], margin: float, alpha: float) -> Look:
    """`look` over the configurations present, its standings put back at their indices (None elsewhere)."""
    inner = look([data[c] for c in present], margin, alpha)
    standings: list = [None] * len(data)
    for position, c in enumerate(present):
        standings[c] = inner.standings[position]
    return Look(standings, present[inner.leader], inner.seed_sd, inner.seed_df, alpha)

