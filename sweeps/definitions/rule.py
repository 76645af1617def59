"""How a sweep decides: the tie margin, the error rate, the most seeds per configuration.

No clock: a time budget (--time-budget, `decide: budget`) only stops a sweep between rounds; it never
changes a verdict, so the same trials give the same answer on any machine, quiet or busy.

Plain data, read from a definition's `decide:` block (or --margin / --max-seeds) into the plan; the
statistics that apply it are sweeps/analysis/decide.py's, which explains each number.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MARGIN = 0.005  # accuracy; see Rule.margin
DEFAULT_ALPHA = 0.05
DEFAULT_MAX_SEEDS = 5


@dataclass(frozen=True)
class Rule:
    """How a sweep decides (the definition's `decide:` block, or --margin/--max-seeds).

    The margin delta, in accuracy: two configurations closer than this are "the same" for choosing. 0.5
    percentage point: below what a different split or epoch budget moves on this task, and within reach
    of the noise here. On the hidden_size grid two seeds of one width disagree on 3-4% of the 10,000
    validation images; in the simulation calibrated to it (tests/sweeps/analysis/simulation.py), the
    interval of 512 - 1024, one of K (K - 1) = 20 ordered pairs (K = 5 widths) at alpha / 3 looks each
    (decide.py's Bonferroni split), is about +-0.38 pp at 4 seeds and +-0.33 pp at 5 seeds (median), so
    a tie within 0.5 pp can be shown within 5 seeds where the means are less than ~0.15 pp apart, and a
    gap of 2 delta = 1 pp is far outside the noise."""

    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA  # error rate of each kind (false worse, false tie), whole procedure
    max_seeds: int = DEFAULT_MAX_SEEDS  # per configuration

    def __post_init__(self):
        if not 0 < self.margin < 1:
            raise ValueError(f"margin must be between 0 and 1 (accuracy), got {self.margin}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be between 0 and 0.5, got {self.alpha}")
        if self.max_seeds < 2:
            raise ValueError(f"max_seeds must be at least 2 (one seed measures no seed noise), got "
                             f"{self.max_seeds}")

    @property
    def first_look(self) -> int:
        """The first round after which verdicts are reached: 3, when every configuration has three seeds
        (two degrees of freedom of its own seed variance; with two, one configuration noisier than the
        rest is seen too rarely, sweeps/analysis/decide.py), or max_seeds where that is 2."""
        return min(3, self.max_seeds)

    @property
    def looks(self) -> int:
        """Looks that can decide: after rounds first_look..max_seeds."""
        return self.max_seeds - self.first_look + 1

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / self.looks

    def as_dict(self) -> dict:
        return {"margin": self.margin, "alpha": self.alpha, "max_seeds": self.max_seeds}
