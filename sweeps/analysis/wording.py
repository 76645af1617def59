"""A sweep's conclusion in words: the best, each verdict with what it rests on, what to use, the trials
spent and the error rates (and how a p-value is printed). evidence.py decides; this only says it.

The wording follows the verdict's kind. Decided verdicts (decide.py) read "worse", "tied within
±margin" or "undecided", with the interval of the difference in percentage points and the error rate;
the one-seed McNemar verdicts read "worse" or "not shown different", never a tie, and name nothing as
"the one to use" (their weakest evidence would win). Exact ties of the best mean are said, not broken
silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sweeps.analysis import decide
from sweeps.analysis.evidence import (
    ALPHA,
    DECIDED,
    MCNEMAR,
    NOT_SHOWN,
    NOT_TESTED,
    TIED,
    UNDECIDED,
    WELCH,
    WORSE,
    Verdict,
)


def conclusion(verdicts: Sequence[Verdict], question: str, metric_name: str = "validation accuracy",
               cost_name: str = "s/epoch", spent: tuple[int, int] | None = None,
               decision: decide.Decision | None = None) -> str:
    """A short paragraph: the best with its interval, then each verdict with what it rests on, the
    configuration to use (decided: the cheapest of those tied with the best), its test accuracy, the
    trials spent against the fixed design (`spent`: (trials, fixed-design trials)) and the error rates."""
    if not verdicts:
        return f"{_sentence(question)} No configuration finished, so there is nothing to conclude."
    best, others = verdicts[0], list(verdicts[1:])
    low, high = best.interval
    interval = "" if best.interval_kind == "none" else (
        f" (95% {'t-interval over ' + str(best.seeds) + ' seeds' if best.seeds >= 2 else 'Wilson'} "
        f"{low:.3f}-{high:.3f})")
    parts = [_sentence(question)]
    same = [v.label for v in others if v.accuracy == best.accuracy]
    if same:  # an exact tie of means: the order is the grid's, not evidence
        parts.append(f"{best.label} and {', '.join(same)} share the best {metric_name}, "
                     f"{best.accuracy:.4f}{interval}; {best.label} is listed first by grid order only.")
    else:
        parts.append(f"{best.label} has the best {metric_name}, {best.accuracy:.4f}{interval}.")
    if not others:
        parts.append("It is the only configuration, so nothing is compared.")
    if any(v.method == DECIDED for v in others):
        parts.extend(_decided_sentences(best, others, cost_name, spent, decision))
    else:
        parts.extend(_tested_sentences(best, others, cost_name))
    parts.extend(_caveats(verdicts, decision))
    return " ".join(parts)


def _decided_sentences(best: Verdict, others: list[Verdict], cost_name: str, spent, decision) -> list[str]:
    margin = best.margin
    headings = {TIED: f"Tied with it within ±{_pp(margin)}", WORSE: "Worse",
                UNDECIDED: "Undecided", NOT_TESTED: "Not tested"}
    parts = []
    for word, heading in headings.items():
        group = [v for v in others if v.verdict == word]
        if group:
            parts.append(f"{heading}: " + "; ".join(_described(v) for v in group) + ".")
    if all(v.verdict == WORSE for v in others):
        parts.append(f"{best.label} is shown best: every other configuration is worse.")
    elif not any(v.verdict == TIED for v in others):
        parts.append("Nothing is shown tied with it.")
    tied = [best] + [v for v in others if v.verdict == TIED]
    pick = _cheapest(tied)
    if pick is not None and len(tied) > 1:
        parts.append(f"Use {pick.label}: the cheapest of those tied with the best ({_cost(pick.cost)} "
                     f"{cost_name}).")
    parts.extend(_test_of(pick or best, best))
    if spent is not None:
        trials, fixed = spent
        if any(v.verdict == UNDECIDED for v in others):
            reason = f" ({decision.stop_reason})" if decision is not None and decision.stop_reason else ""
            parts.append(f"Stopped undecided after {trials} trials of the fixed design's {fixed}{reason}.")
        else:
            parts.append(f"Decided with {trials} trials instead of {fixed} (the fixed design: max_seeds "
                         "seeds of every configuration).")
    return parts


def _tested_sentences(best: Verdict, others: list[Verdict], cost_name: str) -> list[str]:
    headings = {NOT_SHOWN: "Not shown different from it", WORSE: "Worse", NOT_TESTED: "Not tested"}
    parts = []
    for word, heading in headings.items():
        group = [v for v in others if v.verdict == word]
        if group:
            parts.append(f"{heading}: " + "; ".join(_described(v) for v in group) + ".")
    if others and not any(v.verdict == NOT_SHOWN for v in others):
        parts.append("Nothing else is left not shown different from it.")
    unshown = [best] + [v for v in others if v.verdict == NOT_SHOWN]
    pick = _cheapest(unshown)
    if pick is not None and len(unshown) > 1:
        parts.append(f"Cheapest of those not shown different: {pick.label} at {_cost(pick.cost)} "
                     f"{cost_name}; not a tie (one seed cannot show one): a decided sweep (--max-seeds) "
                     "says whether it is within a margin of the best.")
    parts.extend(_test_of(best, best))
    return parts


def _cheapest(group: list[Verdict]) -> Verdict | None:
    priced = [v for v in group if not math.isnan(v.cost)]
    return min(priced, key=lambda v: v.cost) if priced else None


def _test_of(pick: Verdict, best: Verdict) -> list[str]:
    if pick.test_acc is None:
        return []
    shown = best.test_acc is not None and pick is not best
    beside = f"; of the best: {best.test_acc:.4f}" if shown else ""
    return [f"Test accuracy of {'the pick' if pick is not best else 'the best'}: {pick.test_acc:.4f}{beside} "
            "(reported, not used to choose)."]


def _cost(cost: float) -> str:
    return f"{cost:,.0f}" if abs(cost) >= 1000 else f"{cost:.3g}"  # parameter counts


def _pp(accuracy: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * accuracy:.2g} pp"


def _described(verdict: Verdict) -> str:
    if verdict.verdict == NOT_TESTED:
        return f"{verdict.label} ({verdict.note})"
    if verdict.method == DECIDED:
        low, high = verdict.difference_interval
        span = "" if math.isnan(low) else f" [{100 * low:+.2f}, {100 * high:+.2f}]"
        when = f", after round {verdict.decided_at}" if verdict.decided_at else ""
        seeds = f"{verdict.seeds} seed{'s' if verdict.seeds != 1 else ''}"
        return f"{verdict.label} ({100 * verdict.difference:+.2f} pp{span}, {seeds}{when})"
    details = [f"{verdict.difference:+.4f}"]
    if verdict.discordant is not None:
        mine, best_only = verdict.discordant
        details.append(f"{mine} images only it got right vs {best_only} only the best")
    elif verdict.difference_images is not None:
        details.append(f"{verdict.difference_images:+.1f} images on average over seeds")
    details.append(f"{_p(verdict.p_adjusted)} Holm-adjusted")
    return f"{verdict.label} ({', '.join(details)})"


def _caveats(verdicts: Sequence[Verdict], decision: decide.Decision | None = None) -> list[str]:
    methods = {v.method for v in verdicts}
    tested = sum(v.p_value is not None for v in verdicts)
    caveats = []
    if tested > 1:
        caveats.append(f"p-values are Holm-adjusted over the {tested} comparisons with the best.")
    if DECIDED in methods:
        margin = verdicts[0].margin
        final = decision.final if decision is not None else None
        noise = "" if final is None or math.isnan(final.seed_sd) else \
            f" (seed-to-seed sd of accuracy {100 * final.seed_sd:.2f} pp, pooled over configurations, " \
            f"{final.seed_df} df)"
        fixed = decision is None or decision.stop_reason == "fixed design"
        looks = "one look" if fixed else "the whole procedure, alpha split over its looks"
        caveats.append(f"Intervals of the difference to the best are in percentage points: simultaneous "
                       f"comparisons with the best (Hsu's MCB, which accounts for choosing the best from "
                       f"the same data), paired over the validation images, with seed noise{noise}. Error "
                       f"rates ({looks}): a configuration is called worse when it is not, or tied when it is "
                       f"more than {_pp(margin)} below the best, each at most "
                       f"{verdicts[0].alpha:g} of the time.")
    if MCNEMAR in methods:
        caveats.append("One seed per configuration: the exact McNemar test covers which validation images "
                       "were drawn, not seed-to-seed training noise, and the best was chosen on the same "
                       "images; a decided sweep (a `decide:` block, or --max-seeds) measures both and can "
                       "call a tie.")
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
