"""A sweep's conclusion in words: the best, each verdict with what it rests on, the trials spent and the
error rates. evidence.py decides, recommend.py picks (its sentence follows this paragraph, the one place
that names the pick); this only says the evidence, in words.py's words.

The wording follows the verdict's kind. Decided verdicts (decide.py) read "within ±margin" (tied, or
worse and within the margin), "worse" or "undecided", with the interval of the difference to the final
best in percentage points, the round that decided each and against whom, and the error rates with their
assumption; the one-seed McNemar verdicts read "lower on these images (seed noise not measured)" or
"not shown different", never "worse" and never a tie, and name nothing as "the one to use" (their
weakest evidence would win). Exact ties of the best mean are said, not broken silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sweeps.analysis import decide
from sweeps.analysis.evidence import DECIDED, MCNEMAR, ONE_SEED_FALSE_LOWER, WELCH, Verdict
from sweeps.analysis.recommend import cheapest
from sweeps.analysis.words import LOWER, NOT_SHOWN, NOT_TESTED, TIED, UNDECIDED, WORSE, cost_shown, p_said

# The decided rounds' false "worse" where configurations differ in seed noise: the share of sweeps of five
# identical configurations with one, one of them at 10 times the others' seed sd (1.0 against 0.1 pp) and
# two at 3 times (0.405 against 0.135 pp), measured by `python bench/decide_rates.py --sweeps 2000`
# (7 December 2026; test_decide_simulation.py asserts them below alpha). The error-rate sentence states
# them beside its assumption.
UNEQUAL_NOISE_FALSE_WORSE = {"one at 10x": 0.028, "two at 3x": 0.041}


def conclusion(verdicts: Sequence[Verdict], question: str, metric_name: str = "validation accuracy",
               cost_name: str = "s/epoch", spent: tuple[int, int] | None = None,
               decision: decide.Decision | None = None) -> str:
    """A short paragraph: the best with its interval, then each verdict with what it rests on, the best's
    test accuracy, the trials spent against the fixed design (`spent`: (trials, fixed-design trials)) and
    the error rates. Which configuration to use is the recommendation's sentence (recommend.py), said
    after this one (report.summarise), not here too."""
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
        parts.extend(_decided_sentences(best, others, spent, decision))
    else:
        parts.extend(_tested_sentences(best, others, cost_name))
    parts.extend(_caveats(verdicts, decision))
    return " ".join(parts)


def _decided_sentences(best: Verdict, others: list[Verdict], spent, decision) -> list[str]:
    margin = _pp(best.margin)
    parts = []
    if best.decided_at is not None:  # a kept verdict of the configuration that ends best: said, not dropped
        parts.append(f"{best.label} was decided within ±{margin} of the best of the others after round "
                     f"{best.decided_at}{_then(best)}; its mean is the best now.")
    groups = {f"Within ±{margin} of it": [v for v in others if v.within_margin],
              "Worse": [v for v in others if v.verdict == WORSE and not v.within_margin],
              "Undecided": [v for v in others if v.verdict == UNDECIDED],
              "Not tested": [v for v in others if v.verdict == NOT_TESTED]}
    rounds = decision is None or decision.stop_reason != "fixed design"
    for heading, group in groups.items():
        if group:
            parts.append(f"{heading}: " + "; ".join(_described(v, rounds, best.label) for v in group) + ".")
    if all(v.verdict == WORSE for v in others):
        parts.append(f"{best.label} is shown best: every other configuration is worse.")
    elif not any(v.within_margin for v in others):
        parts.append(f"Nothing is shown within ±{margin} of it.")
    parts.extend(_test_of(best))  # the pick's: the recommendation's sentence
    if spent is not None:
        trials, fixed = spent
        if any(v.verdict == UNDECIDED for v in others):
            reason = f" ({decision.stop_reason})" if decision is not None and decision.stop_reason else ""
            parts.append(f"Stopped undecided after {trials} trials of the fixed design's {fixed}{reason}.")
        else:
            parts.append(f"Decided with {trials} trials instead of {fixed} (the fixed design: max_seeds "
                         "seeds of every configuration).")
    return parts


def _then(verdict: Verdict) -> str:
    """What a kept verdict was decided against, with its numbers then: for worse, the configuration it was
    shown below and their interval; for within the margin, the leader then and the interval of its
    difference to the best of the others."""
    low, high = verdict.decided_interval
    span = "" if math.isnan(low) else f"[{100 * low:+.2f}, {100 * high:+.2f}]"
    if verdict.verdict == WORSE:
        numbers = f"{100 * verdict.decided_difference:+.2f} pp {span}".rstrip()
        return f", below {verdict.decided_against} then: {numbers}"
    return f", when {verdict.decided_against} led" + (f" ({span} pp from the best of the others)"
                                                      if span else "")


def _tested_sentences(best: Verdict, others: list[Verdict], cost_name: str) -> list[str]:
    headings = {NOT_SHOWN: "Not shown different from it", LOWER: LOWER[0].upper() + LOWER[1:], WORSE: "Worse",
                NOT_TESTED: "Not tested"}
    parts = []
    for word, heading in headings.items():
        group = [v for v in others if v.verdict == word]
        if group:
            parts.append(f"{heading}: " + "; ".join(_described(v) for v in group) + ".")
    if others and all(v.verdict in (LOWER, WORSE) for v in others):
        parts.append("Every other configuration is shown lower.")
    unshown = [best] + [v for v in others if v.verdict == NOT_SHOWN]
    pick = cheapest(unshown)
    if pick is not None and len(unshown) > 1:
        parts.append(f"Cheapest of those not shown different: {pick.label} at {cost_shown(pick.cost)} "
                     f"{cost_name}; not a tie (one seed cannot show one): a decided sweep (--max-seeds) "
                     "says whether it is within a margin of the best.")
    parts.extend(_test_of(best))
    return parts


def _test_of(best: Verdict) -> list[str]:
    if best.test_acc is None:
        return []
    return [f"Test accuracy (mean over its seeds) of the best: {best.test_acc:.4f} (reported, not used to "
            "choose)."]


def _pp(accuracy: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * accuracy:.2g} pp"


def _described(verdict: Verdict, rounds: bool = True, best_label: str | None = None) -> str:
    """A verdict's numbers; decided ones against the final best, with the round that decided them and
    (where different) what they were decided against then (`rounds`: False for the fixed design)."""
    if verdict.verdict == NOT_TESTED:
        return f"{verdict.label} ({verdict.note})"
    if verdict.method == DECIDED:
        low, high = verdict.difference_interval
        span = "" if math.isnan(low) else f" [{100 * low:+.2f}, {100 * high:+.2f}]"
        seeds = f"{verdict.seeds} seed{'s' if verdict.seeds != 1 else ''}"
        # within the margin: which kind (the heading says "within"); worse: the heading says it
        kind = ({TIED: "tied", WORSE: "worse, and within the margin"}.get(verdict.verdict, "")
                if verdict.within_margin else "")
        when = ""
        if verdict.decided_at and rounds:
            # said where it adds something: another configuration then, or (worse) other numbers
            same = verdict.decided_against == best_label and (verdict.verdict != WORSE or (
                verdict.decided_difference == verdict.difference
                and np.allclose(verdict.decided_interval, verdict.difference_interval, equal_nan=True)))
            when = f"after round {verdict.decided_at}" + ("" if same else _then(verdict))
        # undecided for its own unstable seeds, not for want of images: say so where it is read
        spread = f"its seeds spread {100 * verdict.own_seed_sd:.2f} pp, more than the others'" \
            if verdict.verdict == UNDECIDED and verdict.own_seed_sd is not None else ""
        detail = "; ".join(filter(None, [" ".join(filter(None, [kind, when])), spread]))
        return f"{verdict.label} ({100 * verdict.difference:+.2f} pp{span}, {seeds}" + (
            f"; {detail})" if detail else ")")
    details = [f"{100 * verdict.difference:+.2f} pp"]
    if verdict.discordant is not None:
        mine, best_only = verdict.discordant
        details.append(f"{mine} images only it got right vs {best_only} only the best")
    elif verdict.difference_images is not None:
        details.append(f"{verdict.difference_images:+.1f} images on average over seeds")
    details.append(f"{p_said(verdict.p_adjusted)} Holm-adjusted")
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
        noisier = [f"{v.label} ({100 * v.own_seed_sd:.2f} pp)" for v in verdicts if v.own_seed_sd is not None]
        own = f"; its own for {', '.join(noisier)}, whose seeds spread more" if noisier else ""
        noise = "" if final is None or math.isnan(final.seed_sd) else \
            f" (seed-to-seed sd of accuracy {100 * final.seed_sd:.2f} pp pooled over the configurations " \
            f"whose seeds spread alike, {final.seed_df} df{own})"
        fixed = decision is None or decision.stop_reason == "fixed design"
        looks = "one look" if fixed else \
            f"the whole procedure, alpha split over its looks from round {decision.first_look} on"
        unequal = UNEQUAL_NOISE_FALSE_WORSE
        caveats.append(f"Intervals of the difference to the best are in percentage points: simultaneous "
                       f"comparisons with the best (Hsu's MCB, which accounts for choosing the best from "
                       f"the same data), paired over the validation images, with seed noise{noise}. Error "
                       f"rates ({looks}): a configuration is called worse when it is not, or within "
                       f"±{_pp(margin)} when it is more than that from the best, each at most "
                       f"{verdicts[0].alpha:g} of the time where the pooled configurations share one seed "
                       f"noise; a configuration noisier than the rest whose own seeds do not show it is "
                       f"pooled with them (simulated: a false worse in {unequal['one at 10x']:.1%} of sweeps "
                       f"with one of five identical configurations at 10 times the others' seed noise, "
                       f"{unequal['two at 3x']:.1%} with two at 3 times).")
    if MCNEMAR in methods:
        rates = " and ".join(f"{rate:.0%} of sweeps {case}" for case, rate in ONE_SEED_FALSE_LOWER.items())
        caveats.append("One seed per configuration: the exact McNemar test covers which validation images "
                       "were drawn, not seed-to-seed training noise, and the best was chosen on the same "
                       "images, so its p-values do not hold 5%: with five identical configurations it calls "
                       f"one of them lower in {rates} (simulated). A decided sweep (a `decide:` "
                       "block, or --max-seeds) measures both and can say worse, or within a margin.")
    if WELCH in methods:
        caveats.append("Where no per-image vectors were kept, Welch's t-test over seed accuracies covers "
                       "training noise but not which validation images were drawn.")
    return caveats


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".?!" else text + "."
