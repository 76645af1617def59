"""The words a sweep's verdicts are said in, defined once: each verdict's word, the words of older reports
read as today's, and how a p-value and a cost are printed.

decide.py and evidence.py reach the verdicts in these words, `sweep/verdicts.json` stores them
(text.py's verdict_records), and wording.py, text.py, figures.py and standing.py say them. Plain
strings and formatting only, no numpy or scipy: `cli.py best` reads a verdicts file with them.
"""

from __future__ import annotations

# The verdict words, against the best (the configuration with the best mean validation accuracy; in a
# decided sweep, among those not decided worse).
BEST = "best"  # the best
WORSE = "worse"  # lower than the best, at error rate alpha (may also be within the margin)
TIED = "tied"  # within +-margin of the best and not shown below it, at error rate alpha (equivalence)
UNDECIDED = "undecided"  # neither, within the seeds and time the sweep allowed
# one seed, McNemar (Holm) significant: lower on these validation images, with these seeds; seed-to-seed
# noise is not in the test, so this is not the decided "worse"
LOWER = "lower on these images (seed noise not measured)"
NOT_SHOWN = "not shown different"  # one seed, McNemar not significant: absence of evidence, not a tie
NOT_TESTED = "not tested"

# Reports written before decided sweeps said "within noise" for a one-seed McNemar p >= ALPHA: read as
# NOT_SHOWN wherever an older verdicts file or study is read.
LEGACY = {"within noise": NOT_SHOWN}

ALPHA = 0.05  # the one-seed and Welch tests' level, on Holm-adjusted p-values: below it, LOWER or WORSE


def current(word: str) -> str:
    """A verdict word as today's words say it (an older report's "within noise": NOT_SHOWN)."""
    return LEGACY.get(word, word)


def p_shown(value: float, decimals: int) -> str:
    """p as the text prints it, with `decimals` decimals and "<0.001" below that; rounding never lifts
    a p under ALPHA to ALPHA (0.04996: "<0.05"), so "worse" never stands beside "0.05"."""
    if value < 0.001:
        return "<0.001"
    shown = f"{value:.{decimals}f}"
    return f"<{ALPHA:g}" if value < ALPHA <= float(shown) else shown


def p_said(value: float) -> str:
    """p in a sentence: "p=0.81", "p=0.004", "p<0.05", "p<0.001" (3 decimals below 0.01, else 2)."""
    shown = p_shown(value, 3 if value < 0.01 else 2)
    return f"p{shown}" if shown.startswith("<") else f"p={shown}"


def cost_shown(cost: float) -> str:
    """A cost as the conclusion prices it: a parameter count with thousands separators, seconds to 3
    significant digits."""
    return f"{cost:,.0f}" if abs(cost) >= 1000 else f"{cost:.3g}"
