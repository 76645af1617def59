"""Error rates and costs of the ways a sweep decides, on simulated sweeps: one table, nothing asserted.

    python bench/decide_rates.py                         # 2,000 sweeps a case, the calibrated model
    python bench/decide_rates.py --model seed-noise      # a seed moves population accuracy by 0.12 pp
    python bench/decide_rates.py --calibrate sqlite:////tmp/calib/optuna.db hidden_size-manual

Designs: the rounds procedure (decide.replay with the default Rule, a seed more only where undecided);
the fixed design at 1 seed (exact McNemar against the observed best + Holm: the one-seed quick answer)
and at 2, 3 and 5 seeds (one decide.look at the full alpha). Every design of a case runs on the same
simulated sweeps (tests/sweeps/analysis/simulation.py, which documents the model and its calibration).
Columns: false worse / false tied, the share of sweeps with at least one such verdict (a verdict is false
when the truth of what it claims, mu_c - max_{j != c} mu_j, says otherwise); worse / tied / undecided,
the shares of the verdicts of the configurations other than the leader; trials, the mean per sweep. The
one-seed design never says tied: its "not shown different" counts as undecided. `--calibrate` prints a
real sweep's calibration statistics beside the model's.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "sweeps" / "analysis")]

import simulation as sim  # noqa: E402

from sweeps.analysis.decide import Rule  # noqa: E402

MODELS = {"calibrated": sim.CALIBRATED, "seed-noise": sim.SEED_NOISE}


def cases(margin: float) -> dict[str, tuple[float, ...]]:
    return {"identical x2": (0.0, 0.0), "identical x5": (0.0,) * 5, "gap 2 x margin": (0.0, 2 * margin),
            "gap = margin": (0.0, margin), "gap margin/2 (tie)": (0.0, margin / 2)}


def designs(rule: Rule) -> dict[str, sim.Design]:
    return {"rounds": functools.partial(sim.rounds, rule=rule),
            "fixed 1 (McNemar+Holm)": functools.partial(sim.one_seed, rule=rule),
            **{f"fixed {k}": functools.partial(sim.fixed, seeds=k, rule=rule) for k in (2, 3, 5)}}


def calibrate(storage: str, study_name: str) -> None:
    real = sim.summary(list(sim.study_groups(storage, study_name).values()))
    model = sim.calibration_check(sweeps=200)
    print(f"{'statistic':<18}{'real':>32}{'model (200 sweeps)':>32}")
    for key in real:
        shown = [f"{v:.5f}" if isinstance(v, float) else " ".join(f"{x:.4f}" for x in v)
                 for v in (real[key], model[key])]
        print(f"{key:<18}{shown[0]:>32}{shown[1]:>32}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweeps", type=int, default=2000, help="simulated sweeps per case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--model", choices=MODELS, default="calibrated")
    parser.add_argument("--calibrate", nargs=2, metavar=("STORAGE", "STUDY"),
                        help="print a real sweep's calibration statistics beside the model's and stop")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(*args.calibrate)
        return
    rule, model = Rule(), MODELS[args.model]
    print(f"{args.sweeps} sweeps a case, simulation seed {args.seed}, model {args.model} ({model}), "
          f"{rule}; Monte-Carlo slack of a 5% rate: +-{sim.slack(0.05, args.sweeps):.3f} (99%, one-sided)")
    header = f"{'case':<20}{'design':<24}{'false worse':>12}{'false tied':>11}{'worse':>8}{'tied':>8}" \
             f"{'undecided':>10}{'trials':>8}"
    print(header)
    print("-" * len(header))
    for case, gaps in cases(rule.margin).items():
        started = time.perf_counter()
        measured = sim.measure(designs(rule), gaps, args.sweeps, rule.margin, args.seed, model)
        for name, r in measured.items():
            print(f"{case:<20}{name:<24}{r.false_worse:>12.3f}{r.false_tied:>11.3f}{r.worse:>8.3f}"
                  f"{r.tied:>8.3f}{r.undecided:>10.3f}{r.trials:>8.2f}")
        print(f"{'':<20}({time.perf_counter() - started:.0f} s; fixed at {rule.max_seeds} seeds everywhere: "
              f"{len(gaps) * rule.max_seeds} trials)")


if __name__ == "__main__":
    main()
