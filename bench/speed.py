"""Speed benchmark: ratios measured side by side in one process run.

    python bench/speed.py            # all sections (about 3 minutes on 2 CPU cores)
    python bench/speed.py --quick    # shorter timings, same sections
    python bench/speed.py --against ceaf58a   # the manual learner vs its code at a git revision
    python bench/speed.py --against ceaf58a --impl torch   # the torch learner vs its code there

Sections:
1. pipeline  the common torchvision pipeline (DataLoader, per-sample PIL flip + rotation,
             batch 64, 784-256-10, torch.optim SGD) vs our trainer, same settings:
             seconds per epoch and the ratio, for both of our implementations.
2. flops     achieved training GFLOP/s at hidden 1024, batch 256 vs the same machine's
             torch.mm throughput on the forward product's shape.
3. population  an 8-point learning-rate grid (hidden 256, batch 64) trained as one
             population vs one after another by our own trainer: throughput ratio.
4. wall      wall time of a default 10-epoch run (hidden 256), both implementations.
5. step      one training step at the seed's settings (hidden 256, batch 64, one member): the
             five matrix products alone vs each learner's train_step, in ms and as ratios; then
             the manual step of a population of 8 with its SGD update eager vs fused (torch.compile).
6. sweep     a real `sweep learning_rate` end to end (2 epochs), population 8 vs 1: wall time, the
             share spent training, and the seconds per trial outside training (bench/sweep_speed.py).
7. pack      the main job's five widths (128 to 2048) packed into one model: one step of the pack vs
             its members one after another (both implementations), the products' share of the
             machine's torch.mm rate, a 64-member population (8 lr x 8 seeds at hidden 256) vs one
             model's throughput, and `sweep hidden_size` end to end (2 epochs; 1 with --quick)
             packed (population 8, the default) vs --population 1 (bench/sweep_speed.py).
8. busy      the main job's pack of five widths on a busy CPU: its epoch time with 1 thread, 2 threads
             and the count threads.py chooses (auto), quiet and beside a busy process the section starts
             itself (`python -c 'while True: pass'`; --busy-pin pins it to one CPU), interleaved; the
             ratios busy/quiet and after (auto) vs before (torch's default count). Not in the default run
             (`--only busy`): on a shared machine "quiet" is only the others' load at the time.
9. against   with --against REV (alone, unless --only names others): the learner of --impl (manual, the
             default, or torch) of this tree vs fmnist_core/mlp_<impl>.py at git revision REV, in one
             process: seconds of one epoch of the default single run and of the main job's pack,
             interleaved rounds, medians and new/old ratios (on a busy machine: FMNIST_THREADS=1).
--device cuda (or mps) runs all of it on a GPU; the baseline's DataLoader stays on the CPU.
Timings go to stdout; nothing here is asserted, so CI never fails on a busy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmnist_core import data as fdata  # noqa: E402
from fmnist_core.config import ConfigError, RunConfig  # noqa: E402
from fmnist_core.trainer import resolve_device, train, train_population  # noqa: E402

ROTATE_DEGREES = 10.0
PIPELINE_ROUNDS = 3  # interleaved rounds (baseline/ours, one after another/population) in sections 1 and 3


def write_raw_idx(source: Path, target: Path) -> None:
    """Decompressed copies of the four IDX files, where torchvision's FashionMNIST looks for them."""
    for name in fdata.FILES:
        found = next(p for p in (source / f"{name}.gz", source / name, source / "FashionMNIST" / "raw" / name)
                     if p.exists())
        opener = gzip.open if found.suffix == ".gz" else open
        with opener(found, "rb") as src:
            (target / name).write_bytes(src.read())


def torchvision_epoch_seconds(train_index: torch.Tensor, max_steps: int | None,
                              workers: int, device: str = "cpu") -> tuple[float, int]:
    """One epoch of the usual tutorial pipeline; returns (seconds, samples seen)."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        raw_dir = Path(root) / "FashionMNIST" / "raw"
        raw_dir.mkdir(parents=True)
        write_raw_idx(fdata.locate_data_dir(allow_download=False), raw_dir)  # torchvision reads raw IDX here
        transform = transforms.Compose([
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(ROTATE_DEGREES),
            transforms.ToTensor(),
            transforms.Normalize((fdata.MEAN,), (fdata.STD,)),
        ])
        dataset = Subset(datasets.FashionMNIST(root, train=True, download=False, transform=transform),
                         train_index.tolist())
        loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 10)).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                    weight_decay=5e-4)
        seen, started = 0, time.perf_counter()
        for step, (images, labels) in enumerate(loader):
            images, labels = images.to(device), labels.to(device)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += labels.shape[0]
            if max_steps and step + 1 >= max_steps:
                break
        return time.perf_counter() - started, seen


def ours_epoch_seconds(cfg: RunConfig, splits: fdata.Splits) -> float:
    result = train(cfg, splits)
    return result.history[-1]["epoch_seconds"]


def section_pipeline(splits: fdata.Splits, quick: bool, device: str) -> None:
    print("\n== 1. our trainer vs the common torchvision pipeline (hidden 256, batch 64, flip + rotate) ==")
    raw = fdata.load_raw()
    train_index, _ = fdata.stratified_split(raw.train_labels, splits.val_x.shape[0], fdata.SPLIT_SEED)
    n_train = len(train_index)
    max_steps = 150 if quick else None
    # Two epochs, the second timed: the first also pays one-time warm-up (allocator, kernels).
    cfg = RunConfig(hidden_size=256, batch_size=64, epochs=2, augment_flip=True,
                    augment_rotate=ROTATE_DEGREES, device=device, val_size=splits.val_x.shape[0])
    # Rounds interleave the two sides, so a slow spell of a shared machine hits both; each
    # round gives ratios, and the summary is their median.
    ratios: dict[str, list[float]] = {"manual": [], "torch": []}
    rounds = 1 if quick else PIPELINE_ROUNDS
    for round_number in range(1, rounds + 1):
        baselines = {}
        for workers in (0, 2):
            seconds, seen = torchvision_epoch_seconds(train_index, max_steps, workers, device)
            baselines[workers] = seconds * n_train / seen  # per full epoch
        best_baseline = min(baselines.values())
        print(f"round {round_number}: torchvision DataLoader {baselines[0]:6.2f} s/epoch (num_workers=0), "
              f"{baselines[2]:6.2f} s (num_workers=2)"
              f"{f', extrapolated from {seen} samples' if seen < n_train else ''}")
        for impl in ratios:
            seconds = ours_epoch_seconds(dataclasses.replace(cfg, impl=impl), splits)
            ratios[impl].append(best_baseline / seconds)
            print(f"    ours ({impl:6s}) {seconds:6.2f} s/epoch: {ratios[impl][-1]:5.1f}x the faster one")
    for impl, values in ratios.items():
        print(f"ours ({impl:6s}) vs the common pipeline, median of {rounds} round(s): "
              f"{statistics.median(values):5.1f}x")


def section_flops(splits: fdata.Splits, quick: bool, device: str) -> None:
    print("\n== 2. achieved training GFLOP/s vs torch.mm (hidden 1024, batch 256) ==")
    hidden, batch = 1024, 256
    # Per sample: forward 2(784H + 10H); backward dW2, dh1, dW1 = 2(10H + 10H + 784H).
    flops_per_sample = 2 * (784 * hidden + 10 * hidden) + 2 * (10 * hidden + 10 * hidden + 784 * hidden)
    subset = splits if not quick else dataclasses.replace(splits, train_x=splits.train_x[:20_000],
                                                          train_y=splits.train_y[:20_000])
    for impl in ("manual", "torch"):
        mm_gflops = torch_mm_gflops(batch, hidden, device)  # next to each run: the machine's pace drifts
        cfg = RunConfig(impl=impl, hidden_size=hidden, batch_size=batch, epochs=2, augment_flip=False,
                        device=device, val_size=splits.val_x.shape[0])
        seconds = ours_epoch_seconds(cfg, subset)
        gflops = flops_per_sample * subset.train_x.shape[0] / seconds / 1e9
        print(f"torch.mm [{batch}x784]@[784x{hidden}] {mm_gflops:6.1f} GFLOP/s (best of 5); "
              f"ours ({impl:6s}) {gflops:6.1f} GFLOP/s = {100 * gflops / mm_gflops:5.1f}% of it")


def torch_mm_gflops(batch: int, hidden: int, device: str, repeats: int = 100) -> float:
    """The forward product's peak throughput: the best of five timings of `repeats` products."""
    a, b = torch.randn(batch, 784, device=device), torch.randn(784, hidden, device=device)
    for _ in range(5):
        a @ b
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * batch * 784 * hidden * repeats / best / 1e9


def synchronize(device: str) -> None:
    """Wait for queued accelerator work, so that wall-clock timings cover it."""
    if device != "cpu":
        torch.accelerator.synchronize()


def section_population(splits: fdata.Splits, quick: bool, device: str) -> None:
    print("\n== 3. 8-point learning-rate grid: one population vs one after another (hidden 256, batch 64) ==")
    subset = dataclasses.replace(splits, train_x=splits.train_x[:10_000 if quick else 25_000],
                                 train_y=splits.train_y[:10_000 if quick else 25_000])
    lrs = [0.005 * 2 ** (k / 2) for k in range(8)]
    rounds = 1 if quick else PIPELINE_ROUNDS
    for impl in ("manual", "torch"):
        configs = [RunConfig(impl=impl, hidden_size=256, batch_size=64, epochs=1, lr=lr, device=device,
                             val_size=splits.val_x.shape[0]) for lr in lrs]
        ratios = []
        for round_number in range(1, rounds + 1):  # interleaved, like section 1
            started = time.perf_counter()
            for cfg in configs:
                train(cfg, subset)
            sequential = time.perf_counter() - started
            started = time.perf_counter()
            train_population(configs, subset)
            together = time.perf_counter() - started
            ratios.append(sequential / together)
            print(f"round {round_number}, {impl:6s}: one after another {sequential:6.2f} s, population of 8 "
                  f"{together:6.2f} s, throughput ratio {ratios[-1]:4.2f}x")
        print(f"{impl:6s}: population of 8 vs one after another, median of {rounds} round(s): "
              f"{statistics.median(ratios):4.2f}x")


def section_wall(splits: fdata.Splits, quick: bool, device: str) -> None:
    epochs = 2 if quick else 10
    print(f"\n== 4. wall time of a default run (hidden 256, batch 64, {epochs} epochs, with evaluation) ==")
    for impl in ("manual", "torch"):
        started = time.perf_counter()
        cfg = RunConfig(impl=impl, epochs=epochs, device=device, val_size=splits.val_x.shape[0])
        result = train(cfg, splits)
        print(f"ours ({impl:6s}): {epochs} epochs in {time.perf_counter() - started:6.1f} s, "
              f"test accuracy {result.test_acc:.4f}")


STEP_ROUNDS = 9  # interleaved rounds of section 5; each times STEP_REPEATS steps of each candidate
STEP_REPEATS = 200


def section_step(splits: fdata.Splits | None, quick: bool, device: str) -> None:
    """Per-operation overhead of a step: its time over the time of its matrix products alone.

    The products are the forward x W1 [64x784]@[784x256] and h1 W2 [64x256]@[256x10], and the
    backward dW2 = h1^T dz2, dh1 = dz2 W2^T, dW1 = x^T dz1 with the same shapes: all the
    arithmetic a step cannot avoid. Everything else a step spends is overhead.
    """
    del splits  # random batches: the data's values do not change the work of a step
    from fmnist_core.trainer import make_learner

    hidden, batch = 256, 64
    print(f"\n== 5. one training step (hidden {hidden}, batch {batch}, one member) vs its matrix products ==")
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(8, 1, batch, 784, generator=generator).to(device)  # a few batches, cycled
    ys = torch.randint(0, 10, (8, 1, batch), generator=generator).to(device)
    lr = torch.tensor([0.05], device=device)  # on the device, as the trainer passes it
    x, w1 = xs[0, 0], torch.randn(784, hidden, device=device) * 0.03
    h1, w2, dz2 = torch.randn(batch, hidden, device=device), torch.randn(hidden, 10, device=device), \
        torch.randn(batch, 10, device=device)
    dz1 = torch.randn(batch, hidden, device=device)

    def products(step: int) -> None:
        x @ w1, h1 @ w2  # forward
        h1.t() @ dz2, dz2 @ w2.t(), x.t() @ dz1  # backward: dW2, dh1, dW1

    candidates = {"matrix products": products}
    for impl in ("manual", "torch"):
        learner = make_learner([RunConfig(impl=impl, hidden_size=hidden, batch_size=batch, device=device)],
                               torch.device(device))
        candidates[f"{impl} train_step"] = partial(_learner_step, learner, xs, ys, lr)

    repeats, rounds = (STEP_REPEATS // 4, 3) if quick else (STEP_REPEATS, STEP_ROUNDS)
    print_step_times(interleaved_ms(candidates, repeats, rounds, device), "matrix products", repeats, rounds)
    population_update(hidden, batch, device, repeats // 4, rounds)


def interleaved_ms(candidates: dict, repeats: int, rounds: int, device: str) -> dict[str, list[float]]:
    """ms per call of each candidate(step), one value per round; rounds interleave the candidates, so a
    slow spell of a shared machine hits every candidate."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for run_step in candidates.values():  # warm-up: allocator, kernels, lazy initialisation, compiling
        for step in range(repeats):
            run_step(step)
    for _ in range(rounds):
        for name, run_step in candidates.items():
            synchronize(device)
            started = time.perf_counter()
            for step in range(repeats):
                run_step(step)
            synchronize(device)
            times[name].append((time.perf_counter() - started) / repeats * 1e3)
    return times


def print_step_times(times: dict[str, list[float]], reference: str, repeats: int, rounds: int) -> None:
    print(f"median of {rounds} rounds of {repeats} steps, {torch.get_num_threads()} threads; "
          f"[min, max] over rounds; ratios are to the same round's {reference}")
    for name, values in times.items():
        ratios = [v / base for v, base in zip(values, times[reference], strict=True)]
        print(f"{name:20s} {statistics.median(values):6.3f} ms  [{min(values):6.3f}, {max(values):6.3f}]"
              f"   {statistics.median(ratios):4.2f}x the {reference}  "
              f"[{min(ratios):4.2f}, {max(ratios):4.2f}]")


POPULATION_STEP = 8  # members in section 5's second table


def population_update(hidden: int, batch: int, device: str, repeats: int, rounds: int) -> None:
    """Section 5, second table: the manual step of a population of 8 with its SGD update as four eager
    passes over the [8, N] rows, and fused into one pass by torch.compile (mlp_manual.fused_sgd_update)."""
    from fmnist_core.trainer import make_learner

    print(f"\n   the manual step of a population of {POPULATION_STEP} (hidden {hidden}, batch {batch}): "
          "SGD update eager vs fused by torch.compile")
    generator = torch.Generator().manual_seed(1)
    xs = torch.randn(8, POPULATION_STEP, batch, 784, generator=generator).to(device)
    ys = torch.randint(0, 10, (8, POPULATION_STEP, batch), generator=generator).to(device)
    lr = torch.full((POPULATION_STEP,), 0.05, device=device)
    configs = [RunConfig(impl="manual", hidden_size=hidden, batch_size=batch, device=device, seed=seed)
               for seed in range(POPULATION_STEP)]
    candidates = {}
    for name, steps in (("eager update", 0), ("fused update", 10**15)):  # steps: whether fusing pays
        learner = make_learner(configs, torch.device(device), steps=steps)
        if learner.optimizer.fused != bool(steps):
            print("   (no fused update here: only the CPU has one)")
            return
        candidates[name] = partial(_learner_step, learner, xs, ys, lr)
    print_step_times(interleaved_ms(candidates, repeats, rounds, device), "eager update", repeats, rounds)


def _learner_step(learner, xs: torch.Tensor, ys: torch.Tensor, lr: torch.Tensor, step: int) -> None:
    learner.train_step(xs[step % len(xs)], ys[step % len(ys)], lr)


def section_sweep(splits: fdata.Splits, quick: bool, device: str) -> None:
    """6. a real `sweep learning_rate` end to end, population 8 vs 1 (bench/sweep_speed.py; needs MLflow
    and Optuna, like the sweeps themselves)."""
    from sweep_speed import sweep_section

    sweep_section(name="learning_rate", epochs=1 if quick else 2, rounds=1 if quick else 2, device=device,
                  splits=splits)


MAIN_JOB_WIDTHS = (128, 256, 512, 1024, 2048)  # sweeps/hidden_size.yaml


def section_pack(splits: fdata.Splits | None, quick: bool, device: str) -> None:
    """7. packed widths: a step, the 64-member population, and the main job end to end."""
    from fmnist_core.trainer import make_learner

    batch, units = 64, sum(MAIN_JOB_WIDTHS)
    print(f"\n== 7. the main job's widths {'/'.join(map(str, MAIN_JOB_WIDTHS))} packed into one model "
          f"(batch {batch}) vs one after another ==")
    generator = torch.Generator().manual_seed(2)
    xs = torch.randn(8, 1, batch, 784, generator=generator).to(device)
    ys = torch.randint(0, 10, (8, 1, batch), generator=generator).to(device)
    repeats, rounds = (10, 3) if quick else (40, 7)
    lr = torch.full((len(MAIN_JOB_WIDTHS),), 0.03, device=device)
    for impl in ("manual", "torch"):
        configs = [RunConfig(impl=impl, hidden_size=h, device=device) for h in MAIN_JOB_WIDTHS]
        pack = make_learner(configs, torch.device(device))
        members = [make_learner([c], torch.device(device)) for c in configs]
        packed_xs, packed_ys = xs.expand(-1, len(configs), -1, -1), ys.expand(-1, len(configs), -1)

        def one_by_one(step: int, members=members) -> None:
            for member in members:
                _learner_step(member, xs, ys, lr[:1], step)

        candidates = {f"{impl} pack of 5": partial(_learner_step, pack, packed_xs, packed_ys, lr),
                      f"{impl} one by one": one_by_one}
        times = interleaved_ms(candidates, repeats, rounds, device)
        print_step_times(times, f"{impl} one by one", repeats, rounds)
        # a step's products: forward x W1 and h1 W2, backward dW2, dh1, dW1 (as section 5), for all units
        flops = 2 * batch * units * (784 + 10) + 2 * batch * units * (10 + 10 + 784)
        mm = torch_mm_gflops(batch, units, device)
        achieved = flops / (statistics.median(times[f"{impl} pack of 5"]) / 1e3) / 1e9
        print(f"   {impl} pack: {achieved:.1f} GFLOP/s of products, {achieved / mm:.0%} of torch.mm "
              f"[{batch}x784]@[784x{units}] ({mm:.1f} GFLOP/s)")
    population_64(batch, device, repeats, rounds)
    from sweep_speed import sweep_section

    sweep_section(name="hidden_size", epochs=1 if quick else 2, rounds=1 if quick else 2, device=device,
                  splits=splits)


def population_64(batch: int, device: str, repeats: int, rounds: int) -> None:
    """A population of 64 (8 lr x 8 seeds, hidden 256, manual) vs one model: samples per second."""
    from fmnist_core.trainer import make_learner

    members = 64
    generator = torch.Generator().manual_seed(3)
    xs = torch.randn(4, members, batch, 784, generator=generator).to(device)
    ys = torch.randint(0, 10, (4, members, batch), generator=generator).to(device)
    configs = [RunConfig(hidden_size=256, lr=0.005 * 2 ** (k % 8 / 2), seed=k // 8, device=device)
               for k in range(members)]
    population = make_learner(configs, torch.device(device))
    single = make_learner(configs[:1], torch.device(device))
    lr = torch.tensor([c.lr for c in configs], device=device)
    times = interleaved_ms({"population of 64": partial(_learner_step, population, xs, ys, lr),
                            "one model": partial(_learner_step, single, xs[:, :1], ys[:, :1], lr[:1])},
                           max(1, repeats // 4), rounds, device)
    ratios = [members * one / many for one, many in zip(times["one model"], times["population of 64"],
                                                         strict=True)]
    print(f"   64-member population (8 lr x 8 seeds, hidden 256, manual): "
          f"{statistics.median(times['population of 64']):.2f} ms a step vs one model "
          f"{statistics.median(times['one model']):.3f} ms: {statistics.median(ratios):.1f}x one model's "
          f"throughput [{min(ratios):.1f}, {max(ratios):.1f}]")


AGAINST_ROUNDS = 9  # interleaved rounds of the --against section (3 with --quick)


def section_against(splits: fdata.Splits, quick: bool, device: str, rev: str, impl: str = "manual") -> None:
    """--against REV: the learner of `impl` of this tree against fmnist_core/mlp_<impl>.py as it was at git
    revision REV (imported from `git show` as a module of its own), side by side in this process: the
    seconds of one epoch (the trainer's epoch_seconds) of the default single run (all 50 000 training
    images) and of the main job's pack (its five widths, one seed; 12 800 images, 200 steps), in
    interleaved rounds that alternate which goes first; --quick: a quarter of each, 3 rounds.
    On a machine shared with other work, run it with FMNIST_THREADS=1: two threads that wait for each
    other at every product make an epoch's time swing tenfold from one round to the next."""
    import contextlib
    import importlib
    import subprocess
    import types

    module_name, maker = f"mlp_{impl}", f"make_{impl}_learner"  # what trainer.make_learner imports
    current = importlib.import_module(f"fmnist_core.{module_name}")
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{rev}:fmnist_core/{module_name}.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    earlier = types.ModuleType(f"{module_name}_at_{rev}")
    earlier.__file__ = f"{rev}:fmnist_core/{module_name}.py"
    sys.modules[earlier.__name__] = earlier
    exec(compile(source, earlier.__file__, "exec"), earlier.__dict__)  # noqa: S102 - our own source, at REV

    @contextlib.contextmanager
    def learners_of(module: types.ModuleType):
        """The trainer builds its learners of `impl` with `module`'s make_<impl>_learner meanwhile."""
        kept = getattr(current, maker)
        setattr(current, maker, getattr(module, maker))
        try:
            yield
        finally:
            setattr(current, maker, kept)

    def images(count: int) -> fdata.Splits:  # the first `count` training images; no validation is run
        count //= 4 if quick else 1
        return dataclasses.replace(splits, train_x=splits.train_x[:count], train_y=splits.train_y[:count],
                                   test_x=splits.test_x[:1000], test_y=splits.test_y[:1000])

    base = RunConfig(impl=impl, epochs=1, val_size=0, device=device)  # no validation: only the epoch is timed
    runs = {"single run": ([base], images(splits.train_x.shape[0])),
            "main job's pack": ([dataclasses.replace(base, hidden_size=h) for h in MAIN_JOB_WIDTHS],
                                images(12_800))}
    sides = {rev: earlier, "this tree": current}
    rounds = 3 if quick else AGAINST_ROUNDS
    print(f"\n== 9. the {impl} learner against {rev}: one epoch, batch 64, {torch.get_num_threads()} "
          f"threads, {rounds} interleaved rounds; " +
          ", ".join(f"{run} {data.train_x.shape[0]} images" for run, (_, data) in runs.items()) + " ==")
    for module in sides.values():  # one-time costs (allocator, MKL's kernels) outside the rounds
        with learners_of(module):
            for configs, data in runs.values():
                train_population(configs, dataclasses.replace(data, train_x=data.train_x[:640],
                                                              train_y=data.train_y[:640]))
    seconds: dict[tuple[str, str], list[float]] = {(run, side): [] for run in runs for side in sides}
    for round_number in range(1, rounds + 1):
        order = list(sides) if round_number % 2 else list(reversed(sides))
        line = []
        for run, (configs, data) in runs.items():
            for side in order:
                with learners_of(sides[side]):
                    results = train_population(configs, data)
                seconds[run, side].append(results[0].history[-1]["epoch_seconds"])
            ratio = seconds[run, "this tree"][-1] / seconds[run, rev][-1]
            line.append(f"{run} {seconds[run, rev][-1]:6.2f} s ({rev}) / "
                        f"{seconds[run, 'this tree'][-1]:6.2f} s (this tree) = {ratio:4.2f}")
        print(f"round {round_number}: " + ";  ".join(line))
    for run in runs:
        ratios = [new / old for new, old in zip(seconds[run, "this tree"], seconds[run, rev], strict=True)]
        medians = {side: statistics.median(seconds[run, side]) for side in sides}
        print(f"{run:16s} epoch: {rev} {medians[rev]:6.2f} s [{min(seconds[run, rev]):.2f}, "
              f"{max(seconds[run, rev]):.2f}], this tree {medians['this tree']:6.2f} s "
              f"[{min(seconds[run, 'this tree']):.2f}, {max(seconds[run, 'this tree']):.2f}]; this tree / "
              f"{rev}: median {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")


BUSY_ROUNDS = 3  # interleaved rounds of section 8
BUSY_STEPS = 150  # pack steps timed per condition and round (of the epoch's 782)


def section_busy(splits: fdata.Splits | None, quick: bool, device: str, pin: bool = False) -> None:
    """8. the main job's pack epoch, quiet vs beside a busy process, with 1, 2 and the chosen threads.

    One round times every condition once, quiet and busy in turn (the order alternates between rounds), so
    a slow spell of a shared machine hits all of them; the busy process is started before a busy condition
    and killed after it. The pack is built as the trainer builds it for the main job (make_learner with its
    steps: the manual update fused where it pays) and fed the training split's batches; `auto` is the
    trainer's ThreadChooser, from a fresh look at the load, checked every THREAD_CHECK_EVERY steps.
    """
    import os
    import subprocess

    from fmnist_core import threads
    from fmnist_core.trainer import THREAD_CHECK_EVERY, make_learner

    if device != "cpu":
        print("\n== 8. busy: a CPU section (threads); skipped on", device)
        return
    batch, widths = 64, MAIN_JOB_WIDTHS
    configs = [RunConfig(hidden_size=h, device="cpu") for h in widths]  # default config: manual, batch 64
    steps_per_epoch = -(-splits.train_x.shape[0] // batch)
    learner = make_learner(configs, torch.device("cpu"), steps=configs[0].epochs * steps_per_epoch)
    order = torch.randperm(splits.train_x.shape[0], generator=torch.Generator().manual_seed(4))
    lr = torch.full((len(configs),), configs[0].lr)
    cpus, default = sorted(threads.allowed_cpus()), torch.get_num_threads()
    steps, rounds = (60, 1) if quick else (BUSY_STEPS, BUSY_ROUNDS)
    print(f"\n== 8. the main job's pack ({'/'.join(map(str, widths))}, manual, batch {batch}) on a busy CPU: "
          f"quiet vs one busy process ==")
    print(f"CPUs this process may use: {len(cpus)} {cpus}; torch's default: {default} threads; the busy "
          f"process: `python -c 'while True: pass'`, {f'pinned to CPU {cpus[-1]}' if pin else 'not pinned'}; "
          f"load average {os.getloadavg()[0]:.2f} at the start")

    def epoch_seconds(count: int | None) -> tuple[float, list[int]]:
        """Seconds of the pack's epoch (extrapolated from `steps` steps) with `count` threads (None: auto)."""
        threads.ThreadChooser._last = None  # a fresh look, as a sweep's first pack
        chooser = threads.ThreadChooser(count)
        try:
            started = time.perf_counter()
            for step in range(steps):
                index = order[(step * batch) % (len(order) - batch):][:batch]
                x = splits.train_x[index].expand(len(configs), -1, -1)
                y = splits.train_y[index].expand(len(configs), -1)
                learner.train_step(x, y, lr)
                if (step + 1) % THREAD_CHECK_EVERY == 0:
                    chooser.check()
            return (time.perf_counter() - started) / steps * steps_per_epoch, chooser.choices
        finally:
            chooser.restore()

    def busy_process() -> subprocess.Popen:
        pinned = (lambda: os.sched_setaffinity(0, {cpus[-1]})) if pin else None
        process = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pinned)
        time.sleep(0.5)  # running, and seen by the scheduler
        return process

    epoch_seconds(default)  # warm-up: the fused update's compile, the allocator
    conditions = {f"{count} thread{'s' if count > 1 else ''}": count for count in sorted({1, 2, default})}
    conditions["auto"] = None
    times: dict[tuple[str, str], list[float]] = {}
    chosen: dict[str, list[int]] = {"quiet": [], "busy": []}
    for round_number in range(1, rounds + 1):
        cells = []
        for load in (("quiet", "busy") if round_number % 2 else ("busy", "quiet")):
            process = busy_process() if load == "busy" else None
            try:
                for name, count in conditions.items():
                    seconds, choices = epoch_seconds(count)
                    times.setdefault((name, load), []).append(seconds)
                    if count is None:
                        chosen[load] += choices
                    label = f"auto ({'->'.join(map(str, choices))})" if count is None else name
                    cells.append(f"{load} {label} {seconds:5.1f}")
            finally:
                if process is not None:
                    process.kill()
                    process.wait()
        print(f"round {round_number}: " + " | ".join(cells) + " s/epoch")
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"median of {rounds} round(s), s/epoch ({steps_per_epoch} steps, extrapolated from {steps}); "
          f"load average {os.getloadavg()[0]:.2f} at the end:")
    print(f"{'':14s} {'quiet':>7s} {'busy':>7s}  busy/quiet")
    before, after = f"{default} thread{'s' if default > 1 else ''}", "auto"
    for name in conditions:
        note = {before: "   before: torch's default count",
                after: f"   after: chosen (quiet {sorted(set(chosen['quiet']))}, "
                       f"busy {sorted(set(chosen['busy']))})"}.get(name, "")
        quiet, busy = median[(name, "quiet")], median[(name, "busy")]
        print(f"{name:14s} {quiet:7.1f} {busy:7.1f}  {busy / quiet:5.2f}x{note}")
    print(f"after vs before: quiet {median[(before, 'quiet')] / median[(after, 'quiet')]:.2f}x, busy "
          f"{median[(before, 'busy')] / median[(after, 'busy')]:.2f}x as fast (above 1: faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timings (partial epochs)")
    parser.add_argument("--only", action="append",
                        choices=("pipeline", "flops", "population", "wall", "step", "sweep", "pack", "busy"))
    parser.add_argument("--busy-pin", action="store_true",
                        help="section busy: pin the busy process to one CPU (default: the scheduler places "
                             "it)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"),
                        help="where ours and the baseline's model run (its DataLoader stays on the CPU)")
    parser.add_argument("--against", metavar="REV",
                        help="section 9 alone (with --only, after those): the learner of --impl vs git "
                             "revision REV")
    parser.add_argument("--impl", default="manual", choices=("manual", "torch"),
                        help="section 9: which implementation's learner --against compares")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:
        device = resolve_device(args.device)
    except ConfigError as error:
        parser.error(str(error))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {where}")
    sections = {"pipeline": section_pipeline, "flops": section_flops, "population": section_population,
                "wall": section_wall, "step": section_step, "sweep": section_sweep, "pack": section_pack,
                "busy": partial(section_busy, pin=args.busy_pin)}
    names = args.only or ([] if args.against else [name for name in sections if name != "busy"])
    splits = None  # section 5 makes its own batches, so it runs where the data set is not installed
    if any(name != "step" for name in names) or args.against:
        splits = fdata.load_splits(val_size=10_000, device=device)
    for name in names:
        sections[name](splits, args.quick, device.type)
    if args.against:
        section_against(splits, args.quick, device.type, args.against, args.impl)


if __name__ == "__main__":
    main()
