"""A generative model of a sweep's per-image correctness, calibrated to a real sweep, and the three ways
a sweep decides run on it: what tests/sweeps/analysis/test_decide_simulation.py and bench/decide_rates.py
simulate to measure the error rates of sweeps/analysis/decide.py and of the one-seed McNemar verdicts.

The model, on a probit scale (a trial is configuration c trained with seed s; image i of n):
    y[c, s, i] = 1[theta_c + u[c, s] + b[i] + v[c, i] + e[c, s, i] > 0],   e ~ N(0, 1)
  b[i] ~ N(DIFFICULTY_MEAN, DIFFICULTY_SD)  how easy image i is, shared by every trial. Its sd is 5.6 times
      the noise's, so on the accuracy scale it is heavy-tailed: an image's chance Phi(theta + b) of being
      right piles up at 1 (most images are easy), with a long tail of hard images down to 0 (some are
      nearly impossible: mislabelled or ambiguous shirts). A Student t in place of the normal fitted no
      better (its degrees of freedom went to ~1,000).
  v[c, i] ~ N(0, taste_sd)  configuration c's own liking of image i, drawn once per configuration: what
      makes two widths disagree on more images than two seeds of one width.
  u[c, s] ~ N(0, seed_shift_sd)  a seed's shift of every image: what moves a trained model's population
      accuracy from seed to seed (decide.py's sigma; `Model.seed_sd` converts).
  e  the rest: which borderline images one training run happens to get right.
  theta_c  set so that configuration c's population accuracy, E y = Phi((theta_c + DIFFICULTY_MEAN) /
      sqrt(1 + seed_shift_sd^2 + taste_sd^2 + DIFFICULTY_SD^2)) (every term is normal), is
      `accuracy - gaps[c]`.
A sweep draws a fresh validation set (b and v), so the images are a sample, as decide.py assumes.
"Identical configurations" (gaps 0) have the same population accuracy and each its own v: the null that
covers which images were drawn as well as the seeds.

Calibration: `hidden_size --seeds 4` (10 epochs, the 10,000 validation images), read from its Optuna study
with `study_groups` and measured with `summary` (both below; `python bench/decide_rates.py --calibrate`
prints them). The sweep was stopped (rc 124) before width 2048 finished: widths 128-1024 x seeds 0-3, 16
trials. Measured, and the model at the chosen parameters (`calibration_check`: 200 simulated sweeps of the
same design, the mean of their `summary`):
                                                            measured                  model
  mean accuracy, widths 128/256/512/1024                    .8916 .8955 .8974 .8996   .8917 .8956 .8976 .8996
  seed-to-seed sd of accuracy (pooled over widths, 12 df)   0.125 pp                  0.133 pp
    per width 0.093 / 0.079 / 0.150 / 0.159 pp; the images' own seed noise, sqrt(mean_i var_s y / n),
    is 0.133 pp, so sigma (decide.pooled_seed_variance) is 0: the seeds move which images are right,
    not the population accuracy; its upper 95% bound (chi-square, 12 df) is 0.136 pp
  images two seeds of one width disagree on                 3.51%                     3.55%
    (4.1% at width 128 down to 3.0% at 1024)
  images two different widths disagree on                   3.68% (adjacent: 3.53%)   3.67%
  images all 16 trials get right / wrong                    83.3% / 5.5%              83.0% / 5.5%
Chosen: DIFFICULTY_MEAN 6.63 and DIFFICULTY_SD 5.62, the maximum-likelihood fit of the histogram of "trials
of 16 that got the image right" (a Poisson-binomial given b, each width at its own theta; b on a
4,000-point quantile grid); taste_sd 0.25, which makes up the extra disagreement between widths; seed shift
0 (CALIBRATED, the point estimate) and 0.044 (SEED_NOISE: sigma 0.135 pp, the upper 95% bound).
What the model leaves out: wider networks' seeds disagree less (one noise scale for all here), and the
seeds' spread of accuracy at widths 128 and 256 is below what independent per-image noise gives.

Numpy, vectorised over images; every seed row comes from its own generator keyed by (sweep seed,
configuration, seed), so a design that trains fewer seeds sees the same first rows as one that trains
more (common random numbers: designs are compared on the same simulated sweeps).
"""

from __future__ import annotations

import functools
import gc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import optimize, special, stats

from sweeps.analysis import decide
from sweeps.analysis.evidence import holm, mcnemar_exact

N_IMAGES = 10_000  # the validation split
RULE = decide.Rule()  # the default rule (sweeps/definitions/rule.py)
DIFFICULTY_MEAN = 6.63  # probit scale; fitted, see the docstring
DIFFICULTY_SD = 5.62


@dataclass(frozen=True)
class Model:
    """The sweep's noise, on the probit scale (see the module docstring)."""

    accuracy: float = 0.90  # population accuracy of configuration 0
    seed_shift_sd: float = 0.0  # u
    taste_sd: float = 0.25  # v
    difficulty_mean: float = DIFFICULTY_MEAN  # b
    difficulty_sd: float = DIFFICULTY_SD
    images: int = N_IMAGES

    def theta(self, accuracy: float) -> float:
        """theta_c that makes a configuration's population accuracy `accuracy`."""
        scale = math.sqrt(1 + self.seed_shift_sd ** 2 + self.taste_sd ** 2 + self.difficulty_sd ** 2)
        return scale * float(special.ndtri(accuracy)) - self.difficulty_mean

    @property
    def seed_sd(self) -> float:
        """The sd over seeds of a trained model's population accuracy (decide.py's sigma), configuration 0:
        given u, accuracy is Phi((theta + DIFFICULTY_MEAN + u) / sqrt(1 + taste^2 + difficulty^2)); the sd
        of that over u ~ N(0, seed_shift_sd), by Gauss-Hermite quadrature."""
        nodes, weights = np.polynomial.hermite_e.hermegauss(40)
        weights = weights / weights.sum()
        spread = math.sqrt(1 + self.taste_sd ** 2 + self.difficulty_sd ** 2)
        accuracies = special.ndtr((self.theta(self.accuracy) + self.difficulty_mean
                                   + self.seed_shift_sd * nodes) / spread)
        return float(math.sqrt(weights @ (accuracies - weights @ accuracies) ** 2))

    def with_seed_sd(self, sigma: float) -> Model:
        """This model with the seed shift that makes `seed_sd` sigma (accuracy)."""
        shift = optimize.brentq(lambda tau: replace(self, seed_shift_sd=tau).seed_sd - sigma, 0.0, 2.0)
        return replace(self, seed_shift_sd=shift)

    def rescaled(self, images: int) -> tuple[Model, float]:
        """The same sweep on fewer images, for speed: the standard errors of differences grow by
        f = sqrt(self.images / images), so the seed sd is multiplied by f, and the caller multiplies its
        gaps and the margin by the f returned; what each verdict sees (gap, margin and sigma in standard
        errors) stays as it was, up to the probit's curvature."""
        factor = math.sqrt(self.images / images)
        smaller = replace(self, images=images)
        return (smaller.with_seed_sd(self.seed_sd * factor) if self.seed_shift_sd else smaller), factor


CALIBRATED = Model()
SEED_NOISE = CALIBRATED.with_seed_sd(0.00135)


@functools.lru_cache(maxsize=256)
def _with_seed_sd(model: Model, sigma: float) -> Model:
    return model.with_seed_sd(sigma) if sigma > 0 else replace(model, seed_shift_sd=0.0)


class Sweep:
    """One simulated sweep: a fresh validation set and configurations `gaps[c]` (accuracy) below the
    first; `seeds(c, k)` gives configuration c's first k seeds (k x images, bool), drawn when first asked.

    `seed_sds`: configuration c's own seed-to-seed sd of population accuracy (decide.py's sigma_c), where
    configurations differ in stability; None: the model's for every configuration."""

    def __init__(self, gaps: Sequence[float], seed: Sequence[int] | int, model: Model = CALIBRATED,
                 seed_sds: Sequence[float] | None = None):
        self.model, self.gaps = model, tuple(float(g) for g in gaps)
        self._key = [seed] if isinstance(seed, int) else list(seed)
        models = [model] * len(gaps) if seed_sds is None else \
            [_with_seed_sd(model, float(sd)) for sd in seed_sds]
        self._shifts = [m.seed_shift_sd for m in models]
        rng = np.random.default_rng([*self._key, 0])
        difficulty = rng.normal(model.difficulty_mean, model.difficulty_sd, model.images)
        tastes = rng.normal(0.0, model.taste_sd, (len(gaps), model.images))
        thetas = np.array([m.theta(model.accuracy - gap) for m, gap in zip(models, self.gaps, strict=True)])
        self._latent = (thetas[:, None] + difficulty[None, :] + tastes).astype(np.float32)  # configs x images
        self._drawn = [np.empty((0, model.images), dtype=bool) for _ in self.gaps]

    def seeds(self, c: int, count: int) -> np.ndarray:
        drawn = self._drawn[c]
        if len(drawn) < count:
            rows = []
            for s in range(len(drawn), count):
                rng = np.random.default_rng([*self._key, c + 1, s])
                shift = np.float32(rng.normal(0.0, self._shifts[c]))
                noise = rng.standard_normal(self.model.images, dtype=np.float32)  # float32: 20% faster
                rows.append(noise > -(self._latent[c] + shift))  # y = 1[theta + u + b + v + e > 0]
            drawn = self._drawn[c] = np.concatenate([drawn, np.stack(rows)])
        return drawn[:count]


@dataclass(frozen=True)
class Outcome:
    verdicts: list[str]  # per configuration: decide's BEST, WORSE, TIED or UNDECIDED
    trials: int  # seeds trained, over all configurations
    within: list[bool]  # per configuration: shown within +-margin of the best (decide.Decision's); the best


def rounds(sweep: Sweep, rule: decide.Rule = RULE) -> Outcome:
    """The decided sweep: round 1 trains seed 0 of each configuration; after each round decide.replay
    says which configurations get one more seed ([]: stop)."""
    seeds = [1] * len(sweep.gaps)
    seed_rounds = [[1] for _ in sweep.gaps]
    while True:
        groups = [sweep.seeds(c, k) for c, k in enumerate(seeds)]
        decision = decide.replay(seed_rounds, groups, rule)
        if not decision.additions:
            return Outcome(decision.verdicts, sum(seeds), decision.within_margin)
        next_round = max(map(max, seed_rounds)) + 1
        for c in decision.additions:
            seeds[c] += 1
            seed_rounds[c].append(next_round)


def fixed(sweep: Sweep, seeds: int, rule: decide.Rule = RULE) -> Outcome:
    """`--seeds N` with N >= 2: every configuration trains N seeds, one look at the full alpha."""
    groups = [sweep.seeds(c, seeds) for c in range(len(sweep.gaps))]
    decision = decide.replay([[1] * seeds for _ in groups], groups, rule, sequential=False)
    return Outcome(decision.verdicts, seeds * len(groups), decision.within_margin)


def one_seed(sweep: Sweep, rule: decide.Rule = RULE) -> Outcome:
    """The one-seed quick answer: the exact McNemar test of each configuration against the observed best,
    Holm over those comparisons; below alpha "lower on these images" (counted as WORSE here: the same
    claim, that it is below the best), otherwise not shown different (UNDECIDED here: one seed never shows
    a tie). It covers which images were drawn, not the seed's own noise."""
    vectors = [sweep.seeds(c, 1)[0] for c in range(len(sweep.gaps))]
    leader = int(np.argmax([v.mean() for v in vectors]))
    others = [c for c in range(len(vectors)) if c != leader]
    adjusted = holm([mcnemar_exact(vectors[c], vectors[leader]).p_value for c in others])
    verdicts = [decide.BEST] * len(vectors)
    for c, p in zip(others, adjusted, strict=True):
        verdicts[c] = decide.WORSE if p < rule.alpha else decide.UNDECIDED
    return Outcome(verdicts, len(vectors), [c == leader for c in range(len(vectors))])


Design = Callable[[Sweep], Outcome]
WITHIN = "within"  # Rates.per_config's key for "shown within +-margin"


@dataclass(frozen=True)
class Rates:
    """Error rates and verdict shares of one design over `sweeps` simulated sweeps of one case.

    A verdict is judged against the truth of what it claims, configuration c against the best of the
    others, delta_c = mu_c - max_{j != c} mu_j: "worse" is false when delta_c >= 0, "within +-margin"
    (TIED, or WORSE within the margin) when |delta_c| >= margin (the margin itself is not within)."""

    sweeps: int
    false_worse: float  # share of sweeps with at least one false "worse"
    false_within: float  # share of sweeps with at least one false "within +-margin" (tied or worse)
    worse: float  # shares of the non-best verdicts (K - 1 per sweep)
    tied: float
    undecided: float
    trials: float  # mean trials per sweep
    within: float = 0.0  # share of the non-best configurations shown within +-margin (tied or worse)
    per_config: dict[str, np.ndarray] = field(default_factory=dict, compare=False)  # verdict -> share per c;
    #                                                                                 "within" too


def measure(designs: Mapping[str, Design], gaps: Sequence[float], sweeps: int,
            margin: float = RULE.margin, seed: int = 0, model: Model = CALIBRATED,
            seed_sds: Sequence[float] | None = None) -> dict[str, Rates]:
    """Run every design on the same `sweeps` sweeps of the case `gaps` (sweep k seeded (seed, k)): each
    design sees the same seeds, so their rates differ by the design alone."""
    truth = model.accuracy - np.array(gaps, dtype=float)
    others_best = np.array([np.delete(truth, c).max() for c in range(len(truth))])
    delta = truth - others_best
    # 1e-12: a gap given as exactly the margin is "not tied" despite the float subtraction
    false_worse_at, false_within_at = delta >= -1e-12, np.abs(delta) >= margin - 1e-12
    words = (decide.WORSE, decide.TIED, decide.UNDECIDED)
    counts = {name: {word: np.zeros(len(gaps)) for word in (*words, decide.BEST, WITHIN)} for name in designs}
    errors = {name: np.zeros(3) for name in designs}  # false worse, false within, trials
    # evidence.holm calls statsmodels' multipletests, which runs gc.collect() on every call: ~60 ms in a
    # process as full as pytest's. Frozen objects are skipped by the collector, which makes it ~20 us.
    gc.freeze()
    try:
        for k in range(sweeps):
            sweep = Sweep(gaps, (seed, k), model, seed_sds)
            for name, design in designs.items():
                outcome = design(sweep)
                verdicts = np.array(outcome.verdicts)
                within = np.array(outcome.within) & (verdicts != decide.BEST)
                errors[name] += (((verdicts == decide.WORSE) & false_worse_at).any(),
                                 (within & false_within_at).any(), outcome.trials)
                for word, count in counts[name].items():
                    count += within if word == WITHIN else verdicts == word
    finally:
        gc.unfreeze()
    judged = sweeps * (len(gaps) - 1)
    rates = {}
    for name in designs:
        shares = {word: float(counts[name][word].sum() / judged) for word in (*words, WITHIN)}
        false_worse, false_within, trials = errors[name] / sweeps
        rates[name] = Rates(sweeps, float(false_worse), float(false_within), shares[decide.WORSE],
                            shares[decide.TIED], shares[decide.UNDECIDED], float(trials), shares[WITHIN],
                            {word: count / sweeps for word, count in counts[name].items()})
    return rates


def summary(groups: Sequence[np.ndarray]) -> dict[str, float | list[float]]:
    """The calibration statistics of a sweep, `groups[c]` a seeds x images bool matrix per configuration:
    mean accuracies, the seed-to-seed sd of accuracy (pooled, ddof 1) and sigma (decide's, with the images'
    own seed noise taken out), the shares of images two seeds of one configuration / of two configurations
    disagree on (mean over pairs), and the shares every trial gets right / wrong."""
    groups = [np.asarray(g, dtype=bool) for g in groups]
    accuracies = [g.mean(axis=1) for g in groups]
    spread = sum((len(a) - 1) * a.var(ddof=1) for a in accuracies) / sum(len(a) - 1 for a in accuracies)
    variance, *_ = decide.pooled_seed_variance(groups)
    same = [np.mean(g[s] != g[t]) for g in groups for s in range(len(g)) for t in range(s + 1, len(g))]
    between = [np.mean(a != b) for i, g in enumerate(groups) for h in groups[i + 1:] for a in g for b in h]
    every = np.concatenate(groups)
    return {"accuracies": [float(a.mean()) for a in accuracies], "seed_sd": math.sqrt(spread),
            "sigma": math.sqrt(variance), "disagree_seeds": float(np.mean(same)),
            "disagree_configs": float(np.mean(between)), "all_right": float(every.all(axis=0).mean()),
            "all_wrong": float((~every).all(axis=0).mean())}


def slack(rate: float, sweeps: int, confidence: float = 0.99) -> float:
    """The Monte-Carlo slack of a share measured over `sweeps` sweeps whose true value is `rate`: the
    one-sided normal bound z sqrt(rate (1 - rate) / sweeps), z = 2.33 at 99%."""
    return float(stats.norm.ppf(confidence)) * math.sqrt(rate * (1 - rate) / sweeps)


CALIBRATION = {"accuracies": [0.8916, 0.8955, 0.8974, 0.8996], "seed_sd": 0.00125, "sigma": 0.0,
               "disagree_seeds": 0.0351, "disagree_configs": 0.0368, "all_right": 0.8326, "all_wrong": 0.0546}


def calibration_check(sweeps: int, model: Model | None = None, seed: int = 0) -> dict[str, float | list]:
    """`summary` of simulated sweeps of the calibration design (the real widths' accuracies, 4 seeds
    each), averaged over `sweeps` sweeps: what the docstring's "model" column shows."""
    model = model or replace(CALIBRATED, accuracy=CALIBRATION["accuracies"][0])
    gaps = [CALIBRATION["accuracies"][0] - a for a in CALIBRATION["accuracies"]]
    summaries = [summary([sweep.seeds(c, 4) for c in range(len(gaps))])
                 for sweep in (Sweep(gaps, (seed, k), model) for k in range(sweeps))]
    return {key: np.mean([s[key] for s in summaries], axis=0).tolist() for key in summaries[0]}


def study_groups(storage: str, study_name: str) -> dict[int | str, np.ndarray]:
    """A real sweep's per-image matrices, configuration (its hidden_size, or its params as text) ->
    seeds x images, rows in seed order: COMPLETE trials with a recorded vector."""
    import optuna

    from sweeps.trial_record import TrialRecord

    rows: dict[int | str, list] = {}
    for trial in optuna.load_study(study_name=study_name, storage=storage).trials:
        correct = TrialRecord.of(trial).val_correct
        if trial.state != optuna.trial.TrialState.COMPLETE or correct is None:
            continue
        params = {k: v for k, v in trial.params.items() if k != "seed"}
        key = params["hidden_size"] if list(params) == ["hidden_size"] else str(sorted(params.items()))
        rows.setdefault(key, []).append((trial.params.get("seed", TrialRecord.of(trial).seed), correct))
    return {key: np.stack([v for _, v in sorted(found, key=lambda row: row[0])])
            for key, found in sorted(rows.items(), key=lambda item: (isinstance(item[0], str), item[0]))}
