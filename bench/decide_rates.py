"""Error rates and costs of the ways a sweep decides, on simulated sweeps: one table, nothing asserted.

    python bench/decide_rates.py                         # 1,000 sweeps a case, both noise models
    python bench/decide_rates.py --sweeps 200 --cases "one at 10x,real gaps"
    python bench/decide_rates.py --calibrate sqlite:////tmp/calib/optuna.db hidden_size-manual

Designs: the rounds procedure (decide.replay with the default Rule, a seed more only where undecided);
the fixed design at 1 seed (exact McNemar against the observed best + Holm: the one-seed quick answer,
whose "lower on these images" counts as a "worse" claim here) and at 2, 3 and 5 seeds (one decide.look
at the full alpha). Every design of a case runs on the same simulated sweeps of 10,000 images
(tests/sweeps/analysis/simulation.py, which documents the model and its calibration), under both noise
models: `calibrated` (no seed shift of population accuracy, the real sweep's estimate) and `seed-noise`
(sigma 0.135 pp, its upper 95% bound); the unequal cases give each configuration its own seed sd
(`one at 10x`: one of five at 1.0 pp, the others 0.1; `two at 3x`: two at 0.405 pp, three at 0.135)
and run once. Columns: false worse / false within, the share of sweeps with at least one such verdict
(a verdict is false when the truth of what it claims, mu_c - max_{j != c} mu_j, says otherwise; "within"
is within +-margin, tied or worse); worse / within / undecided, per sweep, the number of configurations
other than the best with that verdict; trials, the mean per sweep. The Monte-Carlo slack printed is the
one-sided 99% bound of a 5% rate over --sweeps sweeps. `--calibrate` prints a real sweep's calibration
statistics beside the model's.
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
REAL_GAPS = (0.0, 0.0012, 0.0034, 0.0050, 0.0083)  # the main job: 2048, 1024, 512, 256, 128


def cases(margin: float) -> dict[str, tuple[tuple[float, ...], tuple[float, ...] | None, tuple[str, ...]]]:
    """case -> (gaps, per-configuration seed sds or None, designs)."""
    every = ("rounds", "one seed", "fixed 2", "fixed 3", "fixed 5")
    return {"identical x2": ((0.0, 0.0), None, every),
            "identical x5": ((0.0,) * 5, None, ("rounds", "one seed", "fixed 5")),
            "one at 10x": ((0.0,) * 5, (0.001,) * 4 + (0.01,), ("rounds", "fixed 5")),
            "two at 3x": ((0.0,) * 5, (0.00135,) * 3 + (0.00405,) * 2, ("rounds", "fixed 5")),
            "gap 0.25 pp": ((0.0, 0.0025), None, ("rounds", "fixed 5")),
            "gap 0.5 pp (margin)": ((0.0, margin), None, ("rounds", "fixed 5")),
            "gap 1 pp": ((0.0, 2 * margin), None, ("rounds", "fixed 2", "fixed 5")),
            "real gaps": (REAL_GAPS, None, ("rounds", "one seed", "fixed 5"))}


def designs(rule: Rule, names: tuple[str, ...]) -> dict[str, sim.Design]:
    every = {"rounds": functools.partial(sim.rounds, rule=rule),
             "one seed": functools.partial(sim.one_seed, rule=rule),
             **{f"fixed {k}": functools.partial(sim.fixed, seeds=k, rule=rule) for k in (2, 3, 5)}}
    return {name: every[name] for name in names}


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
    parser.add_argument("--sweeps", type=int, default=1000, help="simulated sweeps per case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--calibrate", nargs=2, metavar=("STORAGE", "STUDY"),
                        help="print a real sweep's calibration statistics beside the model's and stop")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(*args.calibrate)
        return
    rule = Rule()
    chosen = cases(rule.margin)
    if args.cases:
        chosen = {name: chosen[name] for name in args.cases.split(",")}
    print(f"{args.sweeps} sweeps a case, simulation seed {args.seed}, {rule}; Monte-Carlo slack of a 5% "
          f"rate: +{sim.slack(0.05, args.sweeps):.3f} (99%, one-sided)")
    header = f"{'case':<20}{'model':<12}{'design':<10}{'false worse':>12}{'false within':>13}{'worse':>7}" \
             f"{'within':>8}{'undecided':>10}{'trials':>8}"
    print(header)
    print("-" * len(header))
    started_all = time.process_time()
    for case, (gaps, seed_sds, names) in chosen.items():
        for model_name, model in MODELS.items() if seed_sds is None else [("unequal", sim.CALIBRATED)]:
            started = time.process_time()
            measured = sim.measure(designs(rule, names), gaps, args.sweeps, rule.margin, args.seed, model,
                                   seed_sds)
            others = len(gaps) - 1
            for name, r in measured.items():
                print(f"{case:<20}{model_name:<12}{name:<10}{r.false_worse:>12.3f}{r.false_within:>13.3f}"
                      f"{r.worse * others:>7.2f}{r.within * others:>8.2f}{r.undecided * others:>10.2f}"
                      f"{r.trials:>8.2f}")
            print(f"{'':<20}({time.process_time() - started:.0f} s of CPU; fixed at {rule.max_seeds} seeds "
                  f"everywhere: {len(gaps) * rule.max_seeds} trials)", flush=True)
    print(f"total {time.process_time() - started_all:.0f} s of CPU")


if __name__ == "__main__":
    main()
