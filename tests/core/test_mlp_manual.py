"""The hand-written MLP against autograd and torch's own clipping and SGD, micrograd style.

Each test builds the same computation with torch ops (requires_grad, .backward, torch.optim,
torch.nn.utils) and compares in float64.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest
import torch
import torch.nn.functional as F

from fmnist_core import inits, mlp_manual
from fmnist_core.activations import ACTIVATIONS
from fmnist_core.config import RunConfig
from fmnist_core.mlp_manual import (
    CLIP_CODES,
    GradientClipper,
    ManualMLP,
    ManualSGD,
    make_manual_learner,
    parameter_shapes,
    row_views,
    row_width,
)

CPU = torch.device("cpu")
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: see tests/core/conftest.py


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """max |actual - expected| <= rel * max |expected| (elementwise rtol fails on near-zero grads)."""
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= rel * scale, (actual - expected).abs().max().item()


def make_states(seeds, hidden=24, activation="relu", init="kaiming_uniform"):
    # A non-zero bias, so db1/db2 flow into the forward too.
    states = []
    for seed in seeds:
        state = inits.initial_state(hidden, activation=activation, init=init, scale=0.05, seed=seed)
        state["fc1.bias"] = torch.randn(hidden, generator=torch.Generator().manual_seed(seed)) * 0.1
        states.append(state)
    return states


def autograd_grads(state, x, y, activation, mask):
    """Gradients of the mean CE of one member, by autograd (of the table's f, not its f'), in the
    nn.Linear layout."""
    params = {k: v.to(F64).clone().requires_grad_(True) for k, v in state.items()}
    h1 = ACTIVATIONS[activation].function(x @ params["fc1.weight"].T + params["fc1.bias"])
    if mask is not None:
        h1 = h1 * mask
    logits = h1 @ params["fc2.weight"].T + params["fc2.bias"]
    F.cross_entropy(logits, y).backward()
    return {k: p.grad for k, p in params.items()}, logits.detach()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_gradients_match_autograd_for_a_population_with_dropout(activation):
    seeds, dropout = [0, 1, 2], [0.5, 0.0, 0.2]
    states = make_states(seeds, activation=activation)
    x = torch.randn(3, 32, 784, dtype=F64, generator=torch.Generator().manual_seed(9))
    y = torch.randint(0, 10, (3, 32), generator=torch.Generator().manual_seed(9))
    model = ManualMLP(states, activation=activation, dropout=dropout, dtype=F64)
    logits = model.forward(x, train=True, generators=inits.dropout_generators(seeds, CPU))
    grads = model.backward(y)
    # The same generator states give the same masks for the reference.
    masks = inits.dropout_masks(dropout, 32, 24, inits.dropout_generators(seeds, CPU), device=CPU, dtype=F64)
    assert (masks[0] == 0).any() and (masks[1] == 1).all()
    for i in range(3):
        expected, expected_logits = autograd_grads(states[i], x[i], y[i], activation, masks[i])
        assert_rel_close(logits[i], expected_logits, 1e-12)
        assert_rel_close(grads["dW1"][i], expected["fc1.weight"].T, 1e-10)
        assert_rel_close(grads["db1"][i, 0], expected["fc1.bias"], 1e-10)
        assert_rel_close(grads["dW2"][i], expected["fc2.weight"].T, 1e-10)
        assert_rel_close(grads["db2"][i, 0], expected["fc2.bias"], 1e-10)


def random_grads(population=3, hidden=6, scale=1.0, seed=0):
    """Gradient rows [P, N] in the manual MLP's layout, and their dW1, db1, dW2, db2 views."""
    shapes = parameter_shapes(hidden)
    rows = torch.zeros(population, row_width(shapes), dtype=F64)  # the padding stays 0, as in ManualMLP
    views = {"d" + name: view for name, view in row_views(rows, shapes).items()}
    generator = torch.Generator().manual_seed(seed)
    for view in views.values():
        view.copy_(torch.randn(view.shape, dtype=F64, generator=generator) * scale)
    return rows, views


@pytest.mark.parametrize("clip_value", [0.5, 1e4])  # acts / does not act
def test_clipping_matches_torch_nn_utils(clip_value):
    rows, clipped_grads = random_grads(scale=0.05)  # views of rows: they show the clipped values
    grads = {k: g.clone() for k, g in clipped_grads.items()}  # the reference's copy, before clipping
    modes = torch.tensor([CLIP_CODES["value"], CLIP_CODES["norm"], CLIP_CODES["none"]])
    values = torch.full((3,), clip_value, dtype=F64) * torch.tensor([0.02, 1.0, 1.0], dtype=F64)
    norm, clipped = GradientClipper(modes, values)(rows)
    for i in range(3):
        reference = [torch.nn.Parameter(g[i].clone()) for g in grads.values()]
        for p, g in zip(reference, grads.values(), strict=True):
            p.grad = g[i].clone()
        expected_norm = torch.nn.utils.get_total_norm([p.grad for p in reference])
        if i == 0:
            torch.nn.utils.clip_grad_value_(reference, values[0].item())
        elif i == 1:
            assert torch.nn.utils.clip_grad_norm_(reference, values[1].item()).item() == pytest.approx(
                expected_norm.item(), rel=1e-14)
        assert norm[i].item() == pytest.approx(expected_norm.item(), rel=1e-12)
        for p, name in zip(reference, grads, strict=True):
            assert_rel_close(clipped_grads[name][i], p.grad, 1e-14)
    acts = clip_value < 1
    assert clipped.tolist() == [acts, acts, False]


def test_manual_sgd_matches_torch_optim_sgd():
    settings = [(0.9, True, 5e-4), (0.5, False, 0.0), (0.0, False, 1e-2)]  # momentum, nesterov, wd
    weights, params = random_grads(seed=1)
    optimizer = ManualSGD(weights, momentum=torch.tensor([s[0] for s in settings], dtype=F64),
                          weight_decay=torch.tensor([s[2] for s in settings], dtype=F64),
                          nesterov=torch.tensor([s[1] for s in settings]))
    leaves = [[torch.nn.Parameter(w[i].clone()) for w in params.values()] for i in range(3)]
    reference = torch.optim.SGD([{"params": leaves[i], "momentum": m, "nesterov": n, "weight_decay": wd}
                                 for i, (m, n, wd) in enumerate(settings)], lr=0.1)
    for step in range(6):
        rows, grads = random_grads(seed=100 + step)
        lr = torch.tensor([0.1, 0.05, 0.2], dtype=F64) / (step + 1)
        optimizer.step(rows.clone(), lr)
        for i, group in enumerate(reference.param_groups):
            group["lr"] = lr[i].item()
            for p, g in zip(leaves[i], grads.values(), strict=True):
                p.grad = g[i].clone()
        reference.step()
        for i in range(3):
            for w, p in zip(params.values(), leaves[i], strict=True):
                assert_rel_close(w[i], p.detach(), 1e-13)


def config(**overrides) -> RunConfig:
    return dataclasses.replace(RunConfig(hidden_size=16, lr=0.1), **overrides)


def batches(population, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(population, 32, 784, generator=g),
             torch.randint(0, 10, (population, 32), generator=g)) for _ in range(steps)]


@pytest.mark.parametrize("clip_mode", ["none", "norm", "value"])
def test_nan_in_one_member_never_reaches_another(clip_mode):
    configs = [config(seed=0, clip_mode=clip_mode, dropout=0.1), config(seed=1, clip_mode=clip_mode)]
    clean, poisoned = make_manual_learner(configs, CPU), make_manual_learner(configs, CPU)
    state = poisoned.member_state(0)
    state["fc1.weight"][3, 100] = float("nan")
    poisoned.load_member_state(0, state)
    lr = torch.tensor([0.1, 0.1])
    for x, y in batches(2, 4):
        out_clean, out_poisoned = clean.train_step(x, y, lr), poisoned.train_step(x, y, lr)
        assert out_poisoned["loss_sum"][0].isnan()
        for key in out_clean:
            assert torch.equal(out_clean[key][1], out_poisoned[key][1]), key
    assert all(torch.equal(clean.member_state(1)[k], v) for k, v in poisoned.member_state(1).items())
    assert poisoned.member_state(0)["fc2.weight"].isnan().all()


def test_frozen_member_stops_changing_and_others_go_on():
    learner = make_manual_learner([config(seed=0), config(seed=1, nesterov=False)], CPU)
    data = batches(2, 3)
    learner.train_step(*data[0], torch.tensor([0.1, 0.1]))
    state = learner.member_state(0)
    state["fc1.bias"][0] = float("inf")
    learner.load_member_state(0, state)
    learner.freeze_member(0)
    before_other = learner.member_state(1)
    for x, y in data[1:]:
        learner.train_step(x, y, torch.tensor([0.1, 0.1]))
    after = learner.member_state(0)
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert not torch.equal(learner.member_state(1)["fc1.weight"], before_other["fc1.weight"])
    assert all(v.isfinite().all() for v in learner.member_state(1).values())


def test_train_step_builds_no_autograd_graph():
    learner = make_manual_learner([config(seed=0, clip_mode="norm", dropout=0.3), config(seed=1)], CPU)
    x, y = batches(2, 1)[0]
    x.requires_grad_(True)  # even an input that asks for gradients must not start a graph
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = learner.train_step(x, y, torch.tensor([0.1, 0.2]))
        logits = learner.logits(x)
    assert saved == []
    model, buffer = learner.model, learner.optimizer.buffer
    tensors = [*out.values(), logits, model.weights, model.gradients, buffer]
    assert all(not t.requires_grad and t.grad_fn is None for t in tensors)


def test_source_has_no_autograd():
    source = inspect.getsource(mlp_manual)
    assert "torch.autograd" not in source and "requires_grad" not in source and "torch.func" not in source
    # The only .backward( call allowed is ManualMLP.backward, the hand-written one.
    calls = [node.func for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    assert [ast.unparse(f.value) for f in calls if f.attr == "backward"] == ["self.model"]
    assert not [f.attr for f in calls if f.attr in ("grad", "vjp", "enable_grad", "set_grad_enabled")]


def test_member_state_round_trip_and_shapes():
    learner = make_manual_learner([config(seed=0), config(seed=5)], CPU, dtype=F64)
    expected = inits.initial_state(16, activation="relu", init="kaiming_uniform", scale=0.01, seed=5)
    state = learner.member_state(1)
    assert all(torch.equal(state[k], expected[k]) and state[k].dtype == torch.float32 for k in expected)
    state = {k: v + 1 for k, v in state.items()}
    learner.load_member_state(0, state)
    assert all(torch.equal(learner.member_state(0)[k], state[k]) for k in state)
    with pytest.raises(ValueError, match=r"fc1\.weight"):
        learner.load_member_state(0, {**state, "fc1.weight": torch.zeros(3, 784)})


def test_row_padding_stays_zero_so_norms_and_updates_see_only_parameters():
    learner = make_manual_learner([config(seed=0, hidden_size=5, clip_mode="norm", weight_decay=0.1),
                                   config(seed=1, hidden_size=5, clip_mode="value", clip_value=1e-3)], CPU)
    used = sum(h * w for h, w in parameter_shapes(5).values())  # 3985 elements
    assert learner.model.weights.shape == (2, 4000)  # padded to whole cache lines
    for x, y in batches(2, 3):
        learner.train_step(x, y, torch.tensor([0.1, 0.1]))
    for rows in (learner.model.weights, learner.model.gradients, learner.optimizer.buffer):
        assert rows[:, used:].eq(0).all() and rows[:, :used].ne(0).any()


def sgd_run(optimizer: ManualSGD, steps: int = 4) -> torch.Tensor:
    for step in range(steps):
        rows, _ = random_grads(seed=200 + step)
        optimizer.step(rows, torch.tensor([0.1, 0.05, 0.2], dtype=F64) / (step + 1))
    return optimizer.weights


def three_members(nesterov: bool, steps: int = 0) -> ManualSGD:
    weights, _ = random_grads(seed=1)
    return ManualSGD(weights.clone(), momentum=torch.tensor([0.9, 0.5, 0.0], dtype=F64),
                     weight_decay=torch.tensor([5e-4, 0.0, 1e-2], dtype=F64),
                     nesterov=torch.tensor([nesterov] * 3), steps=steps)


def test_only_long_population_runs_on_the_cpu_compile_their_update():
    rows = torch.zeros(8, 200_000)
    enough = mlp_manual.FUSE_MIN_PARAMETER_STEPS // rows.numel() + 1
    assert mlp_manual.fuse_pays(rows, enough) and not mlp_manual.fuse_pays(rows, enough // 2)
    assert not mlp_manual.fuse_pays(torch.zeros(1, 1_600_000), enough)  # one member: no faster
    assert not mlp_manual.fuse_pays(rows.to("meta"), enough)  # only measured on the CPU


@pytest.mark.integration  # compiles (inductor's disk cache makes later runs take seconds)
@pytest.mark.parametrize("nesterov", [True, False])
def test_the_compiled_population_update_is_the_eager_one(monkeypatch, nesterov):
    """A population's update fused by torch.compile (for long runs of real populations) gives the weights
    of the four eager passes, to float64 rounding."""
    eager = sgd_run(three_members(nesterov))
    monkeypatch.setattr(mlp_manual, "FUSE_MIN_PARAMETER_STEPS", 1)
    optimizer = three_members(nesterov, steps=4)
    assert optimizer.fused
    fused = sgd_run(optimizer)
    assert optimizer.fused, "the compiled update fell back to eager"
    assert_rel_close(fused, eager, 1e-14)


def test_a_failing_compiler_leaves_the_eager_update(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    eager = sgd_run(three_members(True))
    monkeypatch.setattr(mlp_manual, "FUSE_MIN_PARAMETER_STEPS", 1)
    monkeypatch.setattr(torch, "compile", broken)
    mlp_manual.fused_sgd_update.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"no C\+\+ compiler"):
            optimizer = three_members(True, steps=4)  # the compile is tried when the optimizer is made
        fallen_back = sgd_run(optimizer)
    finally:
        mlp_manual.fused_sgd_update.cache_clear()
    assert not optimizer.fused
    assert torch.equal(fallen_back, eager)


def test_a_compiled_update_that_fails_mid_run_is_replaced_by_the_eager_one():
    """inductor can fail recompiling the update for a later population's rows (torch 2.14: "s15 is not
    tracked with proxy", a sweep's second pack): that step and the rest run eager, with the same weights."""
    def failing_recompile(*args, **kwargs):
        raise RuntimeError("s15 (<class 'torch.SymInt'>) is not tracked with proxy")

    eager = sgd_run(three_members(True))
    optimizer = three_members(True)
    optimizer.fused_update = failing_recompile  # as if compiled, failing on its next call
    with pytest.warns(RuntimeWarning, match="not tracked with proxy"):
        fallen_back = sgd_run(optimizer)
    assert not optimizer.fused
    assert torch.equal(fallen_back, eager)


def test_a_single_model_and_a_population_of_one_width_are_packs_of_one_block():
    """One learner for every population: a single run is a pack of one row of one block, members of one
    width a row each (whatever their seeds), with W1 input-major and each row one piece for clipping and
    the update; several widths of one seed share a row, W1 unit-major."""
    single = make_manual_learner([config()], CPU)
    assert (single.layout.rows, single.layout.blocks, single.layout.in_order) == (1, 1, True)
    population = make_manual_learner([config(seed=0), config(seed=0, lr=0.2), config(seed=3)], CPU)
    assert (population.layout.rows, population.layout.blocks) == (3, 1)
    assert population.params["W1"].shape == (3, 784, 16) and not population.layout.unit_major
    pack = make_manual_learner([config(hidden_size=8), config(hidden_size=16)], CPU)
    assert (pack.layout.rows, pack.layout.blocks, pack.layout.widths) == (1, 2, [8, 16])
    assert pack.params["W1"].shape == (1, 24, 784) and pack.layout.unit_major
    assert pack.model.W1.shape == (1, 784, 24)  # the equations' shape, whatever the storage


def test_the_network_alone_builds_no_autograd_graph():
    """ManualMLP's forward and backward called outside a learner, on inputs that ask for gradients."""
    model = ManualMLP(make_states([0, 1]), activation="tanh", dtype=F64)
    x = torch.randn(2, 8, 784, dtype=F64, requires_grad=True)
    logits = model.forward(x, train=True)
    grads = model.backward(torch.randint(0, 10, (2, 8)))
    assert logits.grad_fn is None and all(g.grad_fn is None and not g.requires_grad for g in grads.values())
