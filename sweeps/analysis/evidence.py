"""What won a sweep, by how much, and whether it is noise: intervals, paired tests and a plain-words verdict.

A sweep trial (one configuration x one seed) keeps a boolean vector `correct`: which validation images
its selected epoch classified correctly. All trials of a study see the same images in the same order,
so two configurations can be compared image by image (a paired test), which is far more sensitive than
comparing two accuracies as if they came from different images. Nothing here imports torch, MLflow or
Optuna: the report feeds plain arrays in and gets dataclasses and text back.

Which test compares a configuration with the best one:
- both have >= 2 seeds with vectors: a paired bootstrap over seeds and images. Two things make an
  accuracy wobble: which images happen to be in the validation set, and the training noise of a seed
  (initialisation, shuffling). A t-test over seed accuracies sees only the second (all seeds share the
  images); McNemar sees only the first. The bootstrap redraws both at once: each resample draws
  n_val images with replacement, the same draw for every configuration (that is the pairing), and
  redraws each configuration's seeds with replacement, independently (seed 0 of one configuration
  shares nothing useful with seed 0 of another, so pairing seeds by number would be pretend). The
  spread of the resampled difference is its standard error; p is the two-sided normal tail of
  difference / standard error. A normal tail rather than the share of resamples past zero, because
  that share cannot go below 1/resamples, which after a Holm correction over many configurations
  would hide real differences. A seeded generator makes the result the same on every call.
- one seed each, with vectors: the exact McNemar test on the images where the two disagree. It covers
  which images were drawn, not seed-to-seed training noise, and the verdict says so.
- no vectors (older runs), >= 2 seed accuracies each: Welch's t-test over seeds (training noise only);
  where neither side's seeds vary, nothing measured the noise: "not tested" (not p = 0: two seeds
  that happen to agree do not show that there is no noise).
- a configuration without an accuracy (NaN: a run that never recorded one): "not tested", ranked last,
  and kept out of the Holm adjustment (a NaN there would make every later adjusted p 1).
- otherwise: "not tested", with the reason.
p-values are Holm-adjusted over all comparisons with the best; "worse" means adjusted p < 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05  # on Holm-adjusted p-values
BOOTSTRAP_RESAMPLES = 2000  # the standard error it gives is good to about 1/sqrt(2 * 2000) = 1.6%
BOOTSTRAP_SEED = 0
BOOTSTRAP_CHUNK = 250  # resamples drawn at once: 250 x n_val image counts in memory

BOOTSTRAP = "paired bootstrap over seeds and images"
MCNEMAR = "exact McNemar test"
WELCH = "Welch t-test over seed accuracies"


def wilson_interval(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion correct/n (stays inside [0, 1], sane at 0 and n)."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0/n the lower limit is exactly 0 and at n/n the upper exactly 1; the formula leaves rounding dust
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


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
    return McNemar(b_only, a_only, float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: the k-th smallest is multiplied by
    (m - k + 1), then made monotone in that order and capped at 1. A NaN is refused: it has no rank,
    and min(1, NaN) is 1, which would carry into every later adjusted value."""
    if any(math.isnan(p) for p in p_values):
        raise ValueError(f"Holm needs p-values, got NaN among {list(p_values)}")
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def bootstrap_accuracies(groups: Sequence[np.ndarray], *, resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Resampled mean accuracy of each group (seeds x images bool matrix), shape (groups, resamples).

    Every resample uses one draw of images for all groups (paired) and an independent draw of each
    group's seeds. Same inputs and seed -> same output."""
    rng = np.random.default_rng(seed)
    n = groups[0].shape[1]
    stacked = np.concatenate(groups).astype(np.float32).T.copy()  # images x all seeds; counts stay exact
    per_seed = np.empty((resamples, stacked.shape[1]))
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, resamples - start)
        drawn = rng.integers(0, n, size=(size, n), dtype=np.int64) + n * np.arange(size)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float32)
        per_seed[start:start + size] = counts @ stacked / n  # accuracy of each seed on the drawn images
    means, first = np.empty((len(groups), resamples)), 0
    for index, group in enumerate(groups):
        seeds = len(group)
        picks = first + rng.integers(0, seeds, size=(resamples, seeds))
        means[index] = per_seed[np.arange(resamples)[:, None], picks].mean(axis=1)
        first += seeds
    return means


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
    verdict: str  # "best" | "within noise" | "worse" | "not tested"
    method: str  # BOOTSTRAP | MCNEMAR | WELCH, or "" for the best and "not tested"
    note: str  # why not tested, or what the test leaves out
    cost: float
    test_acc: float | None
    discordant: tuple[int, int] | None = None  # McNemar: (images only this one got right, only the best)


def compare_to_best(configs: Sequence[ConfigResult], *, alpha: float = ALPHA,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[Verdict]:
    """Verdicts best first: the best by mean validation accuracy, every other compared with it."""
    if not configs:
        return []
    lengths = {len(v) for config in configs for v in config.correct}
    if len(lengths) > 1:
        raise ValueError(f"per-image vectors of different lengths {sorted(lengths)}: all trials of a study "
                         "must see the same validation images in the same order")
    # stable: ties keep the input order; configurations without an accuracy (NaN) last, never the best
    ranked = sorted(configs, key=lambda c: (math.isnan(c.accuracy), -np.nan_to_num(c.accuracy)))
    best = ranked[0]
    with_vectors = [c for c in ranked if c.correct]
    resampled = {}
    if best.correct and any(c.correct and max(len(c.correct), len(best.correct)) >= 2 for c in ranked[1:]):
        groups = [np.stack(c.correct) for c in with_vectors]
        means = bootstrap_accuracies(groups, resamples=resamples, seed=seed)
        resampled = {id(c): row for c, row in zip(with_vectors, means, strict=True)}
    tests = [_compare(best, other, resampled) for other in ranked[1:]]
    tested = [i for i, test in enumerate(tests) if test[0] is not None]
    adjusted = dict(zip(tested, holm([tests[i][0] for i in tested]), strict=True))
    verdicts = [_verdict(best, best, None, None, "best", "", "", None)]
    for index, (other, (p_value, method, note, discordant)) in enumerate(zip(ranked[1:], tests, strict=True)):
        p_adjusted = adjusted.get(index)
        word = "not tested" if p_adjusted is None else "worse" if p_adjusted < alpha else "within noise"
        verdicts.append(_verdict(other, best, p_value, p_adjusted, word, method, note, discordant))
    return verdicts


def _compare(best: ConfigResult, other: ConfigResult, resampled: dict) -> tuple:
    """(raw p, method, note, discordant) of `other` against `best`; p None when nothing measures the noise."""
    if math.isnan(other.accuracy) or math.isnan(best.accuracy):
        return None, "", "no validation accuracy recorded", None
    if best.correct and other.correct:
        if len(best.correct) == len(other.correct) == 1:
            test = mcnemar_exact(other.correct[0], best.correct[0])
            note = "one seed each: covers which validation images were drawn, not seed-to-seed training noise"
            return test.p_value, MCNEMAR, note, (test.a_only, test.b_only)
        difference = resampled[id(best)] - resampled[id(other)]
        observed, spread = best.accuracy - other.accuracy, float(difference.std(ddof=1))
        p_value = float(2 * stats.norm.sf(abs(observed) / spread)) if spread > 0 else float(observed == 0)
        lone = [c.label for c in (best, other) if len(c.correct) == 1]
        note = f"seed-to-seed noise of {lone[0]} not measured (one seed)" if lone else ""
        return min(1.0, p_value), BOOTSTRAP, note, None
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


def conclusion(verdicts: Sequence[Verdict], question: str, metric_name: str = "validation accuracy",
               cost_name: str = "s/epoch") -> str:
    """A short paragraph: the best with its interval, what is within noise of it and what is worse, the
    cheapest of those that tie (usually the one to use), its test accuracy, and what the tests leave out."""
    if not verdicts:
        return f"{_sentence(question)} No configuration finished, so there is nothing to conclude."
    best, others = verdicts[0], list(verdicts[1:])
    low, high = best.interval
    interval = "" if best.interval_kind == "none" else (
        f" (95% {'t-interval over ' + str(best.seeds) + ' seeds' if best.seeds >= 2 else 'Wilson'} "
        f"{low:.3f}-{high:.3f})")
    parts = [_sentence(question), f"{best.label} has the best {metric_name}, {best.accuracy:.4f}{interval}."]
    if not others:
        parts.append("It is the only configuration, so nothing is compared.")
    headings = {"within noise": "Within noise of it", "worse": "Worse", "not tested": "Not tested"}
    groups = {word: [v for v in others if v.verdict == word] for word in headings}
    for word, heading in headings.items():
        if groups[word]:
            parts.append(f"{heading}: " + "; ".join(_described(v) for v in groups[word]) + ".")
    if others and not groups["within noise"]:
        parts.append("Nothing else is within noise of it.")
    tied = [best] + groups["within noise"]
    priced = [v for v in tied if not math.isnan(v.cost)]
    pick = min(priced, key=lambda v: v.cost) if priced else best
    if priced and len(tied) > 1:
        cost = f"{pick.cost:,.0f}" if abs(pick.cost) >= 1000 else f"{pick.cost:.3g}"  # parameter counts
        parts.append(f"Cheapest within noise: {pick.label} at {cost} {cost_name}, usually the one to use.")
    if pick.test_acc is not None:
        shown = best.test_acc is not None and pick is not best
        beside = f"; of the best: {best.test_acc:.4f}" if shown else ""
        parts.append(f"Test accuracy of the pick: {pick.test_acc:.4f}{beside} (reported, not used to "
                     "choose).")
    parts.extend(_caveats(verdicts))
    return " ".join(parts)


def _described(verdict: Verdict) -> str:
    if verdict.verdict == "not tested":
        return f"{verdict.label} ({verdict.note})"
    details = [f"{verdict.difference:+.4f}"]
    if verdict.discordant is not None:
        mine, best_only = verdict.discordant
        details.append(f"{mine} images only it got right vs {best_only} only the best")
    elif verdict.difference_images is not None:
        details.append(f"{verdict.difference_images:+.1f} images on average over seeds")
    details.append(f"{_p(verdict.p_adjusted)} Holm-adjusted")
    return f"{verdict.label} ({', '.join(details)})"


def _caveats(verdicts: Sequence[Verdict]) -> list[str]:
    methods = {v.method for v in verdicts}
    tested = sum(v.p_value is not None for v in verdicts)
    caveats = []
    if tested > 1:
        caveats.append(f"p-values are Holm-adjusted over the {tested} comparisons with the best.")
    if MCNEMAR in methods:
        caveats.append("One seed per configuration: the exact McNemar test covers which validation images "
                       "were drawn, not seed-to-seed training noise, which is not measured; run with "
                       "--seeds 3 to measure it.")
    if BOOTSTRAP in methods:
        caveats.append("With seeds, p comes from a paired bootstrap that redraws seeds and validation images "
                       "together, so it covers both training noise and which images were drawn; with few "
                       "seeds the training noise is itself only roughly known.")
    if WELCH in methods:
        caveats.append("Where no per-image vectors were kept, Welch's t-test over seed accuracies covers "
                       "training noise but not which validation images were drawn.")
    return caveats


def p_shown(value: float, decimals: int) -> str:
    """p as the text prints it, with `decimals` decimals and "<0.001" below that; rounding never lifts
    a p under ALPHA to ALPHA (0.04996: "<0.05"), so "worse" never stands beside "0.05"."""
    if value < 0.001:
        return "<0.001"
    shown = f"{value:.{decimals}f}"
    return f"<{ALPHA:g}" if value < ALPHA <= float(shown) else shown


def _p(value: float) -> str:
    shown = p_shown(value, 3 if value < 0.01 else 2)
    return f"p{shown}" if shown.startswith("<") else f"p={shown}"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".?!" else text + "."
