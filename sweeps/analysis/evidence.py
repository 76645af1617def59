"""What won a sweep, by how much, and whether it is noise: intervals, paired tests and a plain-words verdict.

A sweep trial (one configuration x one seed) keeps a boolean vector `correct`: which validation images
its selected epoch classified correctly. All trials of a study see the same images in the same order,
so two configurations can be compared image by image (a paired test), which is far more sensitive than
comparing two accuracies as if they came from different images. Nothing here imports torch, MLflow or
Optuna: the report feeds plain arrays in and gets dataclasses back (wording.py says them; the verdict
words are words.py's).

Which test compares a configuration with the best one:
- every configuration has per-image vectors and some have >= 2 seeds (a fixed design, `--seeds N`),
  or the sweep decided in rounds: decide.py's verdicts, *worse*, *tied within +-margin* or *undecided*,
  with error rate alpha each, counting both noise sources (which images, which seed: each
  configuration's own where its seeds spread more than the rest's) and the choice of the leader from
  the same data (Hsu's multiple comparisons with the best); "within +-margin" (`within_margin`) is a
  claim of its own, which a "worse" can carry too. It replaced a paired
  bootstrap over seeds and images, which was anti-conservative at 2-5 seeds (22% false "worse" at 2
  seeds against a nominal 5%: redrawing k seeds under-states their variance by (k-1)/k, and a normal
  reference ignores that the seed variance rests on k-1 degrees of freedom).
- one seed each, with vectors (today's quick answer, `--seeds 1`, and old studies): the exact McNemar
  test on the images where the two disagree, Holm-adjusted over the comparisons with the best. It
  covers which images were drawn, not seed-to-seed training noise, and the best was chosen on the same
  images: a significant result reads "lower on these images (seed noise not measured)" (LOWER), a
  claim about these trained models on these images and never the decided word "worse" (with seed
  noise it is false far more often than alpha: ONE_SEED_FALSE_LOWER), and a non-significant result is
  "not shown different", never a tie.
- no vectors (older runs), >= 2 seed accuracies each: Welch's t-test over seeds (training noise only),
  Holm-adjusted; where neither side's seeds vary, nothing measured the noise: "not tested" (not p = 0).
- a configuration without an accuracy (NaN: a run that never recorded one): "not tested", ranked last,
  and kept out of the Holm adjustment (a NaN there would make every later adjusted p 1).
- otherwise: "not tested", with the reason.
McNemar (statsmodels' exact test), Wilson intervals (statsmodels' proportion_confint) and Holm
(statsmodels' multipletests) are the libraries'; what they do not offer is in decide.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from sweeps.analysis import decide
from sweeps.analysis.words import ALPHA, BEST, LOWER, NOT_SHOWN, NOT_TESTED, TIED, UNDECIDED, WORSE
from sweeps.definitions.rule import Rule

CONFIDENCE = 0.95

DECIDED = "comparisons with the best, paired over images, seed noise per configuration where it differs"
MCNEMAR = "exact McNemar test"
WELCH = "Welch t-test over seed accuracies"


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion correct/n (stays inside [0, 1], sane at 0 and n)."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    low, high = proportion_confint(correct, n, alpha=1 - confidence, method="wilson")
    # at 0/n the lower limit is exactly 0 and at n/n the upper exactly 1; the formula leaves rounding dust
    return (0.0 if correct == 0 else float(low)), (1.0 if correct == n else float(high))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """Student's t interval of the mean of `values` (NaNs with fewer than 2 values), cut to `bounds`
    (an accuracy's (0, 1): two seeds at 0.99 and 1.00 would otherwise read 0.931-1.059)."""
    if len(values) < 2:
        return math.nan, math.nan
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


@dataclass(frozen=True)
class McNemar:
    b_only: int  # images b classified correctly and a did not
    a_only: int  # images a classified correctly and b did not
    p_value: float  # two-sided exact binomial test of a_only vs b_only at 1/2; 1 without discordance


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> McNemar:
    """Exact McNemar test of two per-image correctness vectors over the same images in the same order."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-d vectors over the same images, got shapes {a.shape} and {b.shape}")
    a_only, b_only = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a))
    if a_only + b_only == 0:
        return McNemar(b_only, a_only, 1.0)
    both, neither = int(np.count_nonzero(a & b)), int(np.count_nonzero(~a & ~b))
    test = mcnemar([[both, a_only], [b_only, neither]], exact=True)  # binomial on the discordant pairs
    return McNemar(b_only, a_only, min(1.0, float(test.pvalue)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: the k-th smallest is multiplied by
    (m - k + 1), then made monotone in that order and capped at 1. A NaN is refused: it has no rank,
    and min(1, NaN) is 1, which would carry into every later adjusted value."""
    if any(math.isnan(p) for p in p_values):
        raise ValueError(f"Holm needs p-values, got NaN among {list(p_values)}")
    if not p_values:
        return []
    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class ConfigResult:
    """One configuration's seeds: per-image `correct` vectors, or for older runs only per-seed accuracies."""

    label: str
    correct: Sequence[np.ndarray] = ()  # one bool vector per seed, the study's images in its order
    cost: float = math.nan  # lower is cheaper: seconds per epoch, parameter count, ...
    test_acc: float | None = None  # reported beside, never used to choose
    accuracies: Sequence[float] = ()  # per-seed validation accuracy, only where `correct` was not kept

    def __post_init__(self):
        if bool(len(self.correct)) == bool(len(self.accuracies)):
            raise ValueError(f"{self.label}: give per-seed `correct` vectors or per-seed `accuracies`, not "
                             "both or neither")
        object.__setattr__(self, "correct", tuple(np.asarray(v, dtype=bool) for v in self.correct))

    @property
    def seed_accuracies(self) -> list[float]:
        return [float(v.mean()) for v in self.correct] or [float(a) for a in self.accuracies]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.seed_accuracies))


@dataclass(frozen=True)
class Verdict:
    label: str
    seeds: int
    accuracy: float  # mean validation accuracy over seeds
    interval: tuple[float, float]  # 95%, of the kind in interval_kind (NaNs for "none")
    interval_kind: str  # "t over seeds" (seed spread on these very images) | "Wilson" (one seed: which
    #                     images were drawn) | "none" (one seed and no per-image vector)
    difference: float  # accuracy minus the best's: 0 for the best, <= 0 for the rest
    difference_images: float | None  # the same in images (mean over seeds); None without vectors
    p_value: float | None  # raw, from `method`; None for the best and for "not tested"
    p_adjusted: float | None  # Holm over all tested comparisons with the best
    verdict: str  # words.py's BEST | TIED | WORSE | UNDECIDED (decided) | LOWER | NOT_SHOWN (one seed)
    #               | WORSE (Welch) | NOT_TESTED
    method: str  # DECIDED | MCNEMAR | WELCH, or "" for the best and "not tested"
    note: str  # why not tested, or what the test leaves out
    cost: float
    test_acc: float | None
    discordant: tuple[int, int] | None = None  # McNemar: (images only this one got right, only the best)
    # the interval of `difference` (this configuration minus the leader) that the verdict rests on; NaNs
    # for the leader and where nothing was tested
    difference_interval: tuple[float, float] = (math.nan, math.nan)
    margin: float | None = None  # the tie margin delta (accuracy), where a tie can be declared at all
    alpha: float | None = None  # with `margin`: the error rate of each kind of verdict, whole procedure
    decided_at: int | None = None  # decided sweeps: the round after which this verdict was reached
    # Decided sweeps. `difference` and `difference_interval` are against the final best, at the last look;
    # a verdict kept from an earlier round was reached against decided_against: for "worse" the configuration
    # it was shown below, with their difference and its interval then; for "tied" (and a best decided tied
    # before it led) the leader then, with the difference to it and the interval of mu - max of the others
    decided_against: str | None = None
    decided_difference: float | None = None
    decided_interval: tuple[float, float] = (math.nan, math.nan)
    # Shown within +-margin of the best (decide.py: the interval of mu - max of the others inside
    # (-margin, +margin)), whether or not also shown below it ("worse, within the margin"): with the
    # best, what the recommendation ("the cheapest of the best and those within +-margin") reads. True
    # for the best itself (0 from itself) and for every verdict TIED; False outside decided sweeps.
    within_margin: bool = False
    own_seed_sd: float | None = None  # decided: its own seed sd, where its seeds spread more than the pool's


# How often LOWER is said of one of five identical configurations (the share of sweeps), one seed each:
# without seed noise (the real sweep's estimate) and with a seed noise of 0.135 pp (its upper 95% bound),
# measured by `python bench/decide_rates.py --sweeps 2000` (7 December 2026; simulation.one_seed, 10,000
# images). The caveat prints them; test_decide_simulation.py checks them.
ONE_SEED_FALSE_LOWER = {"without seed noise": 0.086, "with a seed noise of 0.135 pp": 0.382}


def compare_to_best(configs: Sequence[ConfigResult], *, rule: Rule | None = None,
                    decision: decide.Decision | None = None) -> list[Verdict]:
    """Verdicts best first: the best by mean validation accuracy, every other compared with it.

    `decision`: a decided sweep's replayed rounds (analysis/rounds.py), over `configs` in that order.
    Otherwise, where every configuration kept per-image vectors and one has >= 2 seeds, the fixed
    design's one look at `rule`'s alpha; else the one-seed McNemar or old Welch tests."""
    if not configs:
        return []
    rule = rule or Rule()
    lengths = {len(v) for config in configs for v in config.correct}
    if len(lengths) > 1:
        raise ValueError(f"per-image vectors of different lengths {sorted(lengths)}: all trials of a study "
                         "must see the same validation images in the same order")
    if decision is None and all(c.correct for c in configs) and max(len(c.correct) for c in configs) >= 2:
        groups = [np.stack(c.correct) for c in configs]
        decision = decide.replay([[1] * len(g) for g in groups], groups, rule, sequential=False)
    if decision is not None:
        return _decided(configs, decision, rule)
    # stable: ties keep the input order; configurations without an accuracy (NaN) last, never the best
    ranked = sorted(configs, key=lambda c: (math.isnan(c.accuracy), -np.nan_to_num(c.accuracy)))
    best = ranked[0]
    tests = [_compare(best, other) for other in ranked[1:]]
    tested = [i for i, test in enumerate(tests) if test[0] is not None]
    adjusted = dict(zip(tested, holm([tests[i][0] for i in tested]), strict=True))
    comparisons = max(1, len(tested))
    verdicts = [_verdict(best, best, None, None, BEST, "", "", None)]
    for index, (other, (p_value, method, note, discordant)) in enumerate(zip(ranked[1:], tests, strict=True)):
        p_adjusted = adjusted.get(index)
        below = LOWER if method == MCNEMAR else WORSE  # one seed: the images' noise only
        word = NOT_TESTED if p_adjusted is None else below if p_adjusted < ALPHA else NOT_SHOWN
        verdict = _verdict(other, best, p_value, p_adjusted, word, method, note, discordant)
        if discordant is not None:  # the paired Wald interval of the difference in accuracy (images only)
            verdict = dataclasses.replace(verdict,
                                          difference_interval=_paired_interval(other, best, comparisons))
        verdicts.append(verdict)
    return verdicts


def _decided(configs: Sequence[ConfigResult], decision: decide.Decision, rule: Rule) -> list[Verdict]:
    """decide.py's verdicts as Verdicts, the best first, then by mean accuracy (input order on ties).

    Every difference and interval is against the final best, at the last look; a verdict kept from an
    earlier look also carries what it was decided against then (decided_against, decided_difference,
    decided_interval), so a kept verdict is never re-labelled silently."""
    best = decision.best
    order = sorted(range(len(configs)), key=lambda c: (c != best, -configs[c].accuracy))
    labels = [config.label for config in configs]
    verdicts = []
    for c in order:
        config, word = configs[c], decision.verdicts[c]
        note = "undecided within max_seeds and the budget" if word == UNDECIDED else ""
        verdict = _verdict(config, configs[best], None, None, word, DECIDED if c != best else "", note, None)
        difference, interval = decision.now(c) if c != best else (0.0, (math.nan, math.nan))
        # the fixed design has one look: nothing was decided earlier, or against another configuration
        fixed = decision.stop_reason == "fixed design"
        decided_at = None if fixed else decision.decided_at[c]
        against = decision.against[c] if decision.against and not fixed else None
        verdicts.append(dataclasses.replace(
            verdict, difference=difference, difference_interval=interval, margin=rule.margin,
            alpha=rule.alpha, decided_at=decided_at,
            decided_against=labels[against] if against is not None else None,
            decided_difference=decision.then[c][0] if decided_at is not None else None,
            decided_interval=decision.then[c][1] if decided_at is not None else (math.nan, math.nan),
            within_margin=bool(decision.within_margin[c]) if decision.within_margin else word == TIED,
            own_seed_sd=decision.final.noisier.get(c)))
    return verdicts


def untested(config: ConfigResult, best: ConfigResult, note: str) -> Verdict:
    """A configuration left out of the comparisons (e.g. not among those a sweep confirmed)."""
    return _verdict(config, best, None, None, NOT_TESTED, "", note, None)


def _paired_interval(other: ConfigResult, best: ConfigResult, comparisons: int) -> tuple[float, float]:
    """Wald interval of the paired difference of two one-seed accuracies (McNemar's counts), Bonferroni-
    widened over the `comparisons` with the best, as the Holm-adjusted verdict beside it: at one
    comparison 95%; an interval clear of 0 goes with "worse" (up to the Wald vs exact test's rounding)."""
    a, b = other.correct[0], best.correct[0]
    n, d = len(a), float(a.mean() - b.mean())
    discordant = np.count_nonzero(a != b) / n
    z = float(stats.norm.ppf(1 - ALPHA / (2 * comparisons)))
    half = z * math.sqrt(max(0.0, discordant - d * d) / n)
    return d - half, d + half


def _compare(best: ConfigResult, other: ConfigResult) -> tuple:
    """(raw p, method, note, discordant) of `other` against `best`; p None when nothing measures the noise."""
    if math.isnan(other.accuracy) or math.isnan(best.accuracy):
        return None, "", "no validation accuracy recorded", None
    if best.correct and other.correct and len(best.correct) == len(other.correct) == 1:
        test = mcnemar_exact(other.correct[0], best.correct[0])
        note = "one seed each: covers which validation images were drawn, not seed-to-seed training noise"
        return test.p_value, MCNEMAR, note, (test.a_only, test.b_only)
    if len(best.seed_accuracies) >= 2 and len(other.seed_accuracies) >= 2:
        mine, theirs = best.seed_accuracies, other.seed_accuracies
        if np.ptp(mine) == 0 and np.ptp(theirs) == 0:  # seeds that agree measure no noise: no test
            return None, "", "no per-image vectors and no seed-to-seed spread: nothing measures the noise", \
                None
        p_value = float(stats.ttest_ind(mine, theirs, equal_var=False).pvalue)
        note = "no per-image vectors: covers training noise, not which images were drawn"
        return p_value, WELCH, note, None
    return None, "", "one seed and no per-image vectors on one side: nothing measures the noise", None


def _verdict(config: ConfigResult, best: ConfigResult, p_value, p_adjusted, word: str, method: str,
             note: str, discordant) -> Verdict:
    accuracies = config.seed_accuracies
    if len(accuracies) >= 2:
        interval, kind = t_interval(accuracies, bounds=(0.0, 1.0)), "t over seeds"
    elif config.correct:
        interval, kind = wilson_interval(int(config.correct[0].sum()), len(config.correct[0])), "Wilson"
    else:
        interval, kind = (math.nan, math.nan), "none"
    difference = config.accuracy - best.accuracy
    images = difference * len(config.correct[0]) if config.correct and best.correct else None
    return Verdict(config.label, len(accuracies), config.accuracy, interval, kind, difference, images,
                   p_value, p_adjusted, word, method, note, config.cost, config.test_acc, discordant)
