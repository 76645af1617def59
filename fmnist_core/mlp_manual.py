"""The hand-written MLP: forward, backward, clipping and SGD written out from the equations.

No autograd anywhere: every gradient is computed by the formula in the comment beside it.
The code trains a POPULATION of P independent models as one batched computation (P = 1 is
an ordinary run): member i owns row i of every tensor, and nothing mixes rows, so a NaN
in one member never reaches another.

Shapes (B = batch, H = hidden units):
    x [P, B, 784]   W1 [P, 784, H]   b1 [P, 1, H]   W2 [P, H, 10]   b2 [P, 1, 10]   y [P, B]
Weights are stored input-major (the transpose of nn.Linear) so the forward is one baddbmm;
`state` / `load_state` convert to and from the nn.Linear layout.

Speed: a small step on a CPU costs more in per-operation overhead than in arithmetic, so a
member's four parameters are views into one row of a [P, N] tensor (N = 784 H + H + 10 H + 10,
padded to whole cache lines), and so are its four gradients and its momentum buffers. The
backward writes each gradient into its view (out=), and the gradient norm, clipping and the
SGD update are each a few operations on the [P, N] rows, whatever the number of tensors. For a
population on the CPU with enough parameter-steps to repay the compile (`fuse_pays`), the update's
four element-wise passes are fused into one by torch.compile (`fused_sgd_update`): the same formula,
written once more as one expression.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable, Sequence

import torch

from fmnist_core import inits
from fmnist_core.activations import activation as find_activation
from fmnist_core.config import RunConfig, first_line
from fmnist_core.learner import stacked_activity, stacked_dead_fraction
from fmnist_core.metrics import cross_entropy_parts

CLIP_CODES = {"none": 0, "value": 1, "norm": 2}  # per-member clip_mode as an integer tensor
# Row length is a multiple of this many elements (64 bytes in float32, a cache line), so every
# member's W1 starts on a cache line: unaligned, its dW1 product ran ~10% slower at P = 8.
# The padding is zero and stays zero (no backward writes it; SGD maps 0 to 0).
ROW_ALIGNMENT = 16
# Parameter-steps (P N steps) from which a population's SGD update is one compiled pass (fuse_pays): the
# fused pass saves about 0.5 ns a parameter-step (2 CPU cores, P = 8, H = 256), so 1e10 of them repay a
# process's ~4 s of compiling about 1.2 times: 8 members at H = 256 (1.6 M parameters) for 8 epochs of
# batch 64. Shorter sweeps and a test's tiny models stay eager.
FUSE_MIN_PARAMETER_STEPS = 10_000_000_000
# nn.Linear state_dict key of each parameter, and whether it is stored transposed here.
STATE_KEYS = {"W1": ("fc1.weight", True), "b1": ("fc1.bias", False), "W2": ("fc2.weight", True),
              "b2": ("fc2.bias", False)}


def parameter_shapes(hidden_size: int) -> dict[str, tuple[int, int]]:
    """Each parameter's shape per member, in the order they sit in a member's row."""
    return {"W1": (inits.INPUT_SIZE, hidden_size), "b1": (1, hidden_size),
            "W2": (hidden_size, inits.NUM_CLASSES), "b2": (1, inits.NUM_CLASSES)}


def row_width(shapes: dict[str, tuple[int, int]]) -> int:
    """Elements in one member's row: all its parameters, padded to a multiple of ROW_ALIGNMENT."""
    used = sum(height * width for height, width in shapes.values())
    return -(-used // ROW_ALIGNMENT) * ROW_ALIGNMENT


def row_views(rows: torch.Tensor, shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Views [P, r, c] of consecutive stretches of `rows` [P, N], one per shape, in order."""
    views, start = {}, 0
    for name, (height, width) in shapes.items():
        views[name] = rows[:, start:start + height * width].view(-1, height, width)
        start += height * width
    return views


def copy_of(views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A member's weights (views in the nn.Linear layout) as a float32 CPU copy."""
    return {key: view.to("cpu", torch.float32).clone() for key, view in views.items()}


@torch.no_grad()
def load_into(views: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (nn.Linear layout) into a member's weight views, refusing a missing key or shape."""
    for key, target in views.items():
        if key not in state or tuple(state[key].shape) != tuple(target.shape):
            got = tuple(state[key].shape) if key in state else "missing"
            raise ValueError(f"{key}: expected shape {tuple(target.shape)}, got {got}")
        target.copy_(state[key])


class ManualMLP:
    """784 -> H -> 10 for P members, with forward and backward side by side."""

    def __init__(self, states: Sequence[dict[str, torch.Tensor]], *, activation: str,
                 dropout: Sequence[float] | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        chosen = find_activation(activation)
        self.activation = activation
        self.act, self.act_grad = chosen.function, chosen.derivative
        self.dropout = list(dropout) if dropout is not None else [0.0] * len(states)
        self.device, self.dtype = torch.device(device), dtype
        shapes = parameter_shapes(states[0]["fc1.weight"].shape[0])
        self.weights = torch.zeros(len(states), row_width(shapes), device=self.device, dtype=dtype)  # [P, N]
        self.W1, self.b1, self.W2, self.b2 = row_views(self.weights, shapes).values()
        for i, state in enumerate(states):
            self.load_state(i, state)
        # Written by each backward, read by clipping and SGD; zeros only so that it never holds garbage.
        self.gradients = torch.zeros_like(self.weights)  # [P, N]
        self.dW1, self.db1, self.dW2, self.db2 = row_views(self.gradients, shapes).values()
        self.cache: dict[str, torch.Tensor | None] = {}
        self._minus_one = torch.full((1, 1, 1), -1.0, device=self.device, dtype=dtype)

    @property
    def population(self) -> int:
        return self.weights.shape[0]

    def params(self) -> dict[str, torch.Tensor]:
        return {"W1": self.W1, "b1": self.b1, "W2": self.W2, "b2": self.b2}

    def _linear_layout(self, i: int) -> dict[str, torch.Tensor]:
        """Views of member i's parameters in the nn.Linear layout, keyed like TorchMLP's state_dict."""
        params = self.params()
        return {key: params[name][i].t() if transposed else params[name][i, 0]
                for name, (key, transposed) in STATE_KEYS.items()}

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights in the nn.Linear layout, as a float32 CPU copy."""
        return copy_of(self._linear_layout(i))

    def load_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights with `state` (nn.Linear layout)."""
        load_into(self._linear_layout(i), state)

    @torch.no_grad()
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.b1, x, self.W1)  # z1 = x W1 + b1   [P, B, H]

    @torch.no_grad()
    def output(self, z1: torch.Tensor) -> torch.Tensor:
        """Evaluation logits [P, B, 10] from z1 (no dropout): the second half of `forward`."""
        return torch.baddbmm(self.b2, self.act(z1), self.W2)  # z2 = act(z1) W2 + b2

    @torch.no_grad()
    def forward(self, x: torch.Tensor, *, train: bool,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Logits [P, B, 10]. train=True caches what `backward` needs and applies dropout with
        masks drawn from `generators` (one per member; none given, no dropout)."""
        z1 = torch.baddbmm(self.b1, x, self.W1)  # z1 = x W1 + b1
        h1 = self.act(z1)  # h1 = act(z1)
        mask = None
        if train and generators is not None:
            mask = inits.dropout_masks(self.dropout, x.shape[1], z1.shape[2], generators,
                                       device=self.device, dtype=self.dtype)
        h1_dropped = h1 * mask if mask is not None else h1  # inverted dropout: mask in {0, 1/(1-p)}
        z2 = torch.baddbmm(self.b2, h1_dropped, self.W2)  # logits z2 = h1 W2 + b2
        if train:
            self.cache = {"x": x, "z1": z1, "h1": h1, "mask": mask, "h1_dropped": h1_dropped, "z2": z2}
        return z2

    @torch.no_grad()
    def backward(self, y: torch.Tensor, probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Gradients of each member's MEAN cross-entropy over the batch of the last train forward.

        They are written into `self.gradients` (one row per member, overwritten by the next
        backward); the returned dW1, db1, dW2, db2 are views of it.
        `probs`: softmax(z2) if the caller already has it (it is overwritten)."""
        x, z1, h1, mask = self.cache["x"], self.cache["z1"], self.cache["h1"], self.cache["mask"]
        h1_dropped, z2 = self.cache["h1_dropped"], self.cache["z2"]
        batch_size = x.shape[1]
        probs = torch.softmax(z2, dim=-1) if probs is None else probs  # p = softmax(z2)
        # dL/dz2 = (p - onehot(y)) / B: subtract 1 at each sample's label, then scale
        dz2 = probs.scatter_add_(-1, y.unsqueeze(-1), self._minus_one.expand(*y.shape, 1)).div_(batch_size)
        dW2 = torch.bmm(h1_dropped.transpose(1, 2), dz2, out=self.dW2)  # dL/dW2 = h1^T . dz2
        db2 = torch.sum(dz2, 1, keepdim=True, out=self.db2)  # dL/db2 = sum_b dz2
        dh1 = torch.bmm(dz2, self.W2.transpose(1, 2))  # dL/dh1 = dz2 . W2^T
        if mask is not None:
            dh1.mul_(mask)  # dropped units pass no gradient; kept ones are scaled by 1/(1-p)
        dz1 = dh1.mul_(self.act_grad(z1, h1))  # dL/dz1 = dh1 * act'(z1)
        dW1 = torch.bmm(x.transpose(1, 2), dz1, out=self.dW1)  # dL/dW1 = x^T . dz1
        db1 = torch.sum(dz1, 1, keepdim=True, out=self.db1)  # dL/db1 = sum_b dz1
        return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}


@torch.no_grad()
def gradient_norm(gradients: torch.Tensor) -> torch.Tensor:
    """Each member's global L2 norm [P] over its gradient row [P, N]: sqrt(sum of every g^2)."""
    return torch.linalg.vector_norm(gradients, dim=1)


class GradientClipper:
    """Clips each member's gradient row by its own rule, as torch.nn.utils does for one model.

    clip_mode [P] holds CLIP_CODES. value: g = clamp(g, -c, c) element-wise. norm: scale the
    member's whole row by min(1, c / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_ does.
    Members under another rule get bound inf / factor 1, which leave every value (NaN too) as is.
    """

    def __init__(self, clip_mode: torch.Tensor, clip_value: torch.Tensor) -> None:
        self.clip_value = clip_value
        self.by_value, self.by_norm = clip_mode == CLIP_CODES["value"], clip_mode == CLIP_CODES["norm"]
        bound = torch.where(self.by_value, clip_value, torch.inf).unsqueeze(1)  # [P, 1]
        self.lower, self.upper = -bound, bound
        modes = set(clip_mode.tolist())  # once, on the host: skip the element-wise work nobody needs
        self.any_by_value, self.any_by_norm = CLIP_CODES["value"] in modes, CLIP_CODES["norm"] in modes

    @torch.no_grad()
    def __call__(self, gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip `gradients` [P, N] in place; returns (pre-clip norm [P], clipped [P] as 0/1)."""
        grad_norm = gradient_norm(gradients)
        clip_coef = (self.clip_value / (grad_norm + 1e-6)).clamp(max=1.0)  # min(1, c / (||g|| + 1e-6))
        clipped = self.by_norm & (clip_coef < 1)
        if self.any_by_value:
            smallest, largest = torch.aminmax(gradients, dim=1)  # max |g| = max(max g, -min g)
            clipped |= self.by_value & (torch.maximum(largest, -smallest) > self.clip_value)
            gradients.clamp_(self.lower, self.upper)
        if self.any_by_norm:
            gradients.mul_(torch.where(self.by_norm, clip_coef, 1.0).unsqueeze(1))
        return grad_norm, clipped.to(gradients.dtype)


class ManualSGD:
    """SGD with momentum, Nesterov and weight decay per member, in torch.optim.SGD's convention.

    g = grad + wd w;  buf = momentum buf + g (buf = g on the first step, as buf starts at 0);
    step = g + momentum buf (Nesterov) or buf;  w = w - lr step.
    Weight decay acts on all four tensors, biases included, as torch.optim.SGD does when it is
    handed all parameters (TorchLearner does), so both implementations follow one rule.
    """

    def __init__(self, weights: torch.Tensor, *, momentum: torch.Tensor, weight_decay: torch.Tensor,
                 nesterov: torch.Tensor, steps: int = 0) -> None:
        """`weights` [P, N]: one row of parameters per member, updated in place; the rest are [P].
        `steps`: how many steps it will make, where known: with `fuse_pays`, the update is compiled."""
        self.weights = weights
        self.momentum, self.weight_decay = momentum.unsqueeze(1), weight_decay.unsqueeze(1)  # [P, 1]
        self.nesterov = nesterov.unsqueeze(1)
        flags = nesterov.tolist()  # once, on the host: most populations are all or none Nesterov
        self.nesterov_kind = "all" if all(flags) else "none" if not any(flags) else "mixed"
        self.buffer = torch.zeros_like(weights)  # momentum buffers, [P, N]
        # The compiled update, or None (eager). Compiled here, not inside the first epoch (whose
        # epoch_seconds it would inflate).
        fuse = fuse_pays(weights, steps) and self.nesterov_kind != "mixed"
        self.fused_update = fused_sgd_update() if fuse else None

    @property
    def fused(self) -> bool:
        return self.fused_update is not None

    @torch.no_grad()
    def step(self, gradients: torch.Tensor, lr: torch.Tensor, frozen: torch.Tensor | None = None) -> None:
        """Update in place from `gradients` [P, N], used as scratch space (in place: big fresh
        tensors are slow on the CPU); members where `frozen` [P] is True keep their weights and buffers."""
        w, lr, momentum = self.weights, lr.unsqueeze(1), self.momentum
        if self.fused_update is not None and frozen is None:
            try:
                self.fused_update(w, gradients, self.buffer, lr, momentum, self.weight_decay,
                                  self.nesterov_kind == "all")
                return
            except Exception as error:  # noqa: BLE001 - a recompile that fails: nothing was written yet
                # inductor can fail recompiling for a later population's rows ("s15 ... is not tracked
                # with proxy", torch 2.14, a sweep's second pack) before running anything: eager from here
                warnings.warn(f"the compiled SGD update failed, using the eager update: {first_line(error)}",
                              RuntimeWarning, stacklevel=2)
                self.fused_update = None
        g = gradients.addcmul_(self.weight_decay, w)  # L2: dL/dw += wd w
        old_buf = self.buffer
        buf = torch.addcmul(g, momentum, old_buf, out=old_buf if frozen is None else None)  # m buf + g
        if self.nesterov_kind == "none":
            step = buf
        elif self.nesterov_kind == "all":
            step = g.addcmul_(momentum, buf)  # g + momentum buf
        else:
            step = torch.where(self.nesterov, g.addcmul(momentum, buf), buf)
        if frozen is None:
            w.addcmul_(lr, step, value=-1)  # w = w - lr step
        else:  # where, not a 0/1 factor: 0 * NaN would still be NaN
            keep = frozen.unsqueeze(1)
            old_buf.copy_(torch.where(keep, old_buf, buf))
            w.copy_(torch.where(keep, w, w - lr * step))


def sgd_update(w: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: torch.Tensor,
               momentum: torch.Tensor, weight_decay: torch.Tensor, nesterov: bool) -> None:
    """ManualSGD.step's update as one expression, for torch.compile to fuse (fused_sgd_update)."""
    g = grad + weight_decay * w  # L2: dL/dw += wd w
    buf_new = momentum * buf + g  # m buf + g
    step = g + momentum * buf_new if nesterov else buf_new
    w.sub_(lr * step)  # w = w - lr step
    buf.copy_(buf_new)


def fuse_pays(weights: torch.Tensor, steps: int) -> bool:
    """Whether compiling the update (fused_sgd_update) saves more than it costs: on the CPU, for a
    population (P > 1: at P = 1 the compiled call's own checks eat the gain) that will make at least
    FUSE_MIN_PARAMETER_STEPS parameter-steps (P N steps)."""
    return (weights.device.type == "cpu" and weights.shape[0] > 1
            and weights.numel() * steps >= FUSE_MIN_PARAMETER_STEPS)


# Held while torch's compiler runs here and while fmnist_tracking.export has a model traced by torch.export
# (a sweep's background thread): both use torch's process-wide tracing state, so never two at once.
TRACING_LOCK = threading.Lock()


@functools.cache
def fused_sgd_update() -> Callable[..., None] | None:
    """`sgd_update` compiled by torch.compile into one pass over the rows, or None where it cannot be.

    Eager, the update is four element-wise passes over [P, N] rows that no longer fit the caches at
    P = 8; fused, it reads w, g and buf once and writes w and buf once (2 CPU cores, P = 8, H = 256:
    0.68 ms against 1.42 ms an update, and the whole step 15% faster). A process pays for it once:
    importing torch's compiler (about 3 s, which the MLflow model export of a sweep's first trial pays
    anyway) and loading the compiled kernel from inductor's disk cache (about 2 s); the first compile
    on a machine takes about 25 s (inductor writes C++ and builds it). Without a working C++ compiler
    the eager passes are used.
    """
    # inductor's import warns that it found no CUDA runtime: true, and nothing a CPU user can act on
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:  # a first call on throw-away rows: compile errors surface here, not mid-epoch
        with TRACING_LOCK:
            compiled = torch.compile(sgd_update, dynamic=True)
            probe = torch.zeros(2, ROW_ALIGNMENT)
            column = torch.zeros(2, 1)
            compiled(probe, probe.clone(), probe.clone(), column, column, column, True)
            compiled(probe, probe.clone(), probe.clone(), column, column, column, False)
    except Exception as error:  # noqa: BLE001 - any failure of the compiler means: stay eager
        warnings.warn(f"torch.compile of the manual SGD update failed, using the eager update: "
                      f"{first_line(error)}", RuntimeWarning, stacklevel=2)
        return None
    return compiled


class ManualLearner:
    """The Learner interface over ManualMLP + GradientClipper + ManualSGD."""

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype,
                 steps: int = 0) -> None:
        first = configs[0]
        for cfg in configs:
            if (cfg.hidden_size, cfg.activation) != (first.hidden_size, first.activation):
                raise ValueError("all members of a population must share hidden_size and activation")
            if cfg.optimizer != "sgd":
                raise ValueError(f"the manual implementation has only SGD, not {cfg.optimizer!r}")
        self.population, self.device, self.dtype = len(configs), torch.device(device), dtype
        states = [inits.initial_state(c.hidden_size, activation=c.activation, init=c.init,
                                      scale=c.init_scale, seed=c.seed) for c in configs]
        self.model = ManualMLP(states, activation=first.activation, dropout=[c.dropout for c in configs],
                               device=self.device, dtype=dtype)

        def per_member(values: list, kind: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=kind, device=self.device)

        self.optimizer = ManualSGD(
            self.model.weights,
            momentum=per_member([c.momentum for c in configs], dtype),
            weight_decay=per_member([c.weight_decay for c in configs], dtype),
            nesterov=per_member([c.nesterov for c in configs], torch.bool),
            steps=steps,
        )
        clip_modes = [CLIP_CODES[c.clip_mode] for c in configs]
        self.clipper = None  # no member clips: the norm alone is reported
        if any(clip_modes):
            self.clipper = GradientClipper(per_member(clip_modes, torch.int64),
                                           per_member([c.clip_value for c in configs], dtype))
        self.never_clipped = torch.zeros(self.population, device=self.device, dtype=dtype)
        self.generators = inits.dropout_generators([c.seed for c in configs], self.device)
        self.frozen = [False] * self.population  # host copy: no device sync to ask "any frozen?"
        self.frozen_mask = torch.zeros(self.population, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model.forward(x.to(self.dtype), train=True, generators=self.generators)
        loss_sum, correct, log_probs = cross_entropy_parts(logits, y)
        self.model.backward(y, probs=log_probs.exp_())  # one log-softmax for loss and gradient
        gradients = self.model.gradients
        if self.clipper is not None:
            grad_norm, clipped = self.clipper(gradients)
        else:
            grad_norm, clipped = gradient_norm(gradients), self.never_clipped
        lr = lr.to(self.device, self.dtype, non_blocking=True)
        self.optimizer.step(gradients, lr, self.frozen_mask if any(self.frozen) else None)
        return {"loss_sum": loss_sum, "correct": correct, "grad_norm": grad_norm, "clipped": clipped}

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward(x.to(self.dtype), train=False)

    @torch.no_grad()
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.hidden_preactivations(x.to(self.dtype))

    @torch.no_grad()
    def logits_and_activity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1 = self.model.hidden_preactivations(x.to(self.dtype))
        return self.model.output(z1), stacked_activity(z1)

    def dead_fraction(self, activity: torch.Tensor) -> list[float]:
        return stacked_dead_fraction(activity)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        return self.model.state(i)

    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights; its momentum buffers and frozen flag are left as they are."""
        self.model.load_state(i, state)

    def freeze_member(self, i: int) -> None:
        self.frozen[i] = True
        self.frozen_mask[i] = True


class PackLayout:
    """Where each member of a pack lives: rows (one per data seed) x blocks (one per width slot).

    Members that see the same batches (one seed) share a ROW: one first-layer product
    x [B, 784] @ W1 [784, U] feeds all of their hidden units. A row's units are cut into BLOCKS, one
    per member; every row has the same blocks (for each width, as many blocks as the row with most
    members of that width), so block k spans the same units in every row and its output product
    is one batched matmul over the rows. A (row, block) CELL without a member is padding: zero
    weights, learning rate 0, never read. Member i owns cell `cells[i]` = row * K + block.
    """

    def __init__(self, configs: Sequence[RunConfig]) -> None:
        seeds = sorted({c.seed for c in configs})
        rows = [[i for i, c in enumerate(configs) if c.seed == s] for s in seeds]
        counts: dict[int, int] = {}
        for row in rows:
            for width in {configs[i].hidden_size for i in row}:
                counts[width] = max(counts.get(width, 0), sum(configs[i].hidden_size == width for i in row))
        self.widths = [w for w in sorted(counts) for _ in range(counts[w])]  # width of each block
        self.starts = [sum(self.widths[:k]) for k in range(len(self.widths))]
        self.slices = [slice(start, start + w) for start, w in zip(self.starts, self.widths, strict=True)]
        self.rows, self.blocks, self.units = len(rows), len(self.widths), sum(self.widths)
        self.cells, self.row_leaders = [0] * len(configs), [row[0] for row in rows]
        for s, row in enumerate(rows):
            free = list(range(self.blocks))
            for i in row:  # in config order, the first free block of the member's width
                k = next(k for k in free if self.widths[k] == configs[i].hidden_size)
                free.remove(k)
                self.cells[i] = s * self.blocks + k
        self.unit_block = torch.tensor([k for k, w in enumerate(self.widths) for _ in range(w)])  # [U]
        self.cell_index = torch.tensor(self.cells)  # [P]

    def to(self, device: torch.device) -> PackLayout:
        """The index tensors on `device` (once: an index made per step would be a copy per step)."""
        self.unit_block, self.cell_index = self.unit_block.to(device), self.cell_index.to(device)
        return self

    def block_of(self, i: int) -> tuple[int, int, slice]:
        """Member i's row, block and its units' slice of the row."""
        s, k = divmod(self.cells[i], self.blocks)
        return s, k, self.slices[k]

    def per_cell(self, values: torch.Tensor, padding: float = 0.0) -> torch.Tensor:
        """Per-member values [P] as [S, K] by cell; padding cells get `padding`."""
        cells = torch.full((self.rows * self.blocks,), padding, dtype=values.dtype, device=values.device)
        return cells.index_copy_(0, self.cell_index.to(values.device), values).view(self.rows, self.blocks)

    def per_unit(self, cell_values: torch.Tensor) -> torch.Tensor:
        """[S, K] cell values spread to [S, U], each unit taking its block's value."""
        return cell_values[:, self.unit_block]

    def cell_sums(self, unit_values: torch.Tensor) -> torch.Tensor:
        """[S, U] summed per block -> [S, K]."""
        sums = unit_values.new_zeros(self.rows, self.blocks)
        return sums.index_add_(1, self.unit_block, unit_values)

    def cell_max(self, unit_values: torch.Tensor) -> torch.Tensor:
        """[S, U] maximised per block -> [S, K] (values >= 0)."""
        index = self.unit_block.expand_as(unit_values)
        return unit_values.new_zeros(self.rows, self.blocks).scatter_reduce_(1, index, unit_values, "amax")

    def members_of(self, cell_values: torch.Tensor) -> torch.Tensor:
        """[S, K, ...] -> [P, ...]: each member's cell, in member order."""
        return cell_values.reshape(-1, *cell_values.shape[2:])[self.cell_index]


class PackedManualLearner:
    """The Learner interface for members of different widths, packed (see PackLayout): the
    hand-written forward, backward, clipping and SGD of ManualMLP / GradientClipper / ManualSGD, each
    per member, on the packed tensors. Every per-member quantity is a cell [S, K] or, spread to its
    units, [S, U]; nothing sums over units of two cells, so a NaN in one member never reaches another.

    Shapes (S rows, K blocks, U units a row, B batch):
        W1 [S, U, 784]   b1 [S, 1, U]   W2 [S, U, 10]   b2 [S, K, 10]
    Both weight matrices are unit-major (row j: unit j's input / output weights, nn.Linear's fc1
    layout for W1), so a member's weights are whole rows and the per-unit sums of the gradient norm
    and clipping run along contiguous memory (over the 784 inputs, W1 input-major, they took 4x the
    time of the rest of the norm). The products read W1 transposed, which BLAS does for free.
    """

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype) -> None:
        if len({c.activation for c in configs}) > 1:
            raise ValueError("all members of a population must share the activation")
        if any(c.optimizer != "sgd" for c in configs):
            raise ValueError("the manual implementation has only SGD")
        self.population, self.device, self.dtype = len(configs), torch.device(device), dtype
        self.layout = layout = PackLayout(configs).to(self.device)
        chosen = find_activation(configs[0].activation)
        self.act, self.act_grad = chosen.function, chosen.derivative
        S, K, U = layout.rows, layout.blocks, layout.units
        new = functools.partial(torch.zeros, device=self.device, dtype=dtype)
        self.params = {"W1": new(S, U, inits.INPUT_SIZE), "b1": new(S, 1, U),
                       "W2": new(S, U, inits.NUM_CLASSES), "b2": new(S, K, inits.NUM_CLASSES)}
        self.grads = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.buffers = {name: torch.zeros_like(p) for name, p in self.params.items()}
        for i, c in enumerate(configs):
            self.load_member_state(i, inits.initial_state(c.hidden_size, activation=c.activation, init=c.init,
                                                          scale=c.init_scale, seed=c.seed))
        self.configs = list(configs)
        self.dropout = [c.dropout for c in configs]
        self.generators = inits.dropout_generators([c.seed for c in configs], self.device)
        self.frozen = [False] * self.population  # host copy: no device sync to ask "any frozen?"
        self.keep_cells = layout.per_cell(torch.zeros(self.population, dtype=torch.bool, device=self.device),
                                          padding=True)  # cells whose weights do not change

        def per_cell(name: str, kind: torch.dtype = dtype) -> torch.Tensor:  # [S, K]; padding cells 0
            values = [getattr(c, name) for c in configs]
            return layout.per_cell(torch.tensor(values, dtype=kind, device=self.device))

        self.hyper = {name: self._spread(per_cell(name)) for name in ("momentum", "weight_decay")}
        self.clip_value = per_cell("clip_value")
        flags = [c.nesterov for c in configs]  # once, on the host, as ManualSGD
        self.nesterov_kind = "all" if all(flags) else "none" if not any(flags) else "mixed"
        self.nesterov = self._spread(per_cell("nesterov", torch.bool))
        modes = torch.tensor([CLIP_CODES[c.clip_mode] for c in configs], device=self.device)
        self.by_value = layout.per_cell(modes == CLIP_CODES["value"])  # [S, K]
        self.by_norm = layout.per_cell(modes == CLIP_CODES["norm"])
        self.clip_kinds = {c.clip_mode for c in configs}  # host copy: skip the work no member needs

    def _spread(self, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cell values [S, K] shaped to broadcast against each parameter."""
        units = self.layout.per_unit(cells)  # [S, U]
        return {"W1": units.unsqueeze(2), "b1": units.unsqueeze(1), "W2": units.unsqueeze(2),
                "b2": cells.unsqueeze(2)}

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's batch [S, B, 784] from the per-member batches [P, B, 784] (one seed, one batch)."""
        leaders = self.layout.row_leaders
        if leaders == list(range(len(leaders))):
            return x[:len(leaders)]  # a view
        return x[leaders]

    def _hidden(self, x_rows: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.params["b1"], x_rows, self.params["W1"].transpose(1, 2))  # z1 = x W1 + b1

    def _output(self, h1: torch.Tensor) -> torch.Tensor:
        """Logits [S, K, B, 10]: block k's units through block k's output weights, one bmm over rows."""
        W2, b2, layout = self.params["W2"], self.params["b2"], self.layout
        return torch.stack([torch.baddbmm(b2[:, k:k + 1], h1[:, :, units], W2[:, units])  # z2 = h1 W2 + b2
                            for k, units in enumerate(layout.slices)], dim=1)

    def _dropout_mask(self, batch_size: int) -> torch.Tensor | None:
        """[S, B, U]: each member's inverted-dropout mask drawn as it would be alone, in its block."""
        if not any(p > 0 for p in self.dropout):
            return None
        mask = torch.ones(self.layout.rows, batch_size, self.layout.units, device=self.device,
                          dtype=self.dtype)
        for i, c in enumerate(self.configs):
            s, _, units = self.layout.block_of(i)
            drawn = inits.dropout_masks([c.dropout], batch_size, c.hidden_size, [self.generators[i]],
                                        device=self.device, dtype=self.dtype)
            if drawn is not None:
                mask[s, :, units] = drawn[0]
        return mask

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        x_rows, y_rows = self._rows(x.to(self.dtype)), self._rows(y)  # [S, B, 784], [S, B]
        z1 = self._hidden(x_rows)
        h1 = self.act(z1)  # h1 = act(z1)
        mask = self._dropout_mask(x.shape[1])
        h1_dropped = h1 * mask if mask is not None else h1  # inverted dropout: mask in {0, 1/(1-p)}
        z2 = self._output(h1_dropped)  # [S, K, B, 10]
        y_cells = y_rows.unsqueeze(1).expand(-1, self.layout.blocks, -1)  # every block sees its row's labels
        loss_sum, correct, log_probs = cross_entropy_parts(z2, y_cells)  # [S, K]
        self._backward(x_rows, z1, h1, mask, h1_dropped, log_probs.exp_(), y_cells)
        grad_norm, clipped = self._clip()
        self._sgd(lr.to(self.device, self.dtype, non_blocking=True))
        stats = {"loss_sum": loss_sum, "correct": correct, "grad_norm": grad_norm, "clipped": clipped}
        return {key: self.layout.members_of(value) for key, value in stats.items()}

    def _backward(self, x: torch.Tensor, z1: torch.Tensor, h1: torch.Tensor, mask: torch.Tensor | None,
                  h1_dropped: torch.Tensor, probs: torch.Tensor, y: torch.Tensor) -> None:
        """Gradients of each cell's MEAN cross-entropy into self.grads: ManualMLP.backward per block."""
        g, W2 = self.grads, self.params["W2"]
        # dL/dz2 = (p - onehot(y)) / B   [S, K, B, 10]
        dz2 = probs.scatter_add_(-1, y.unsqueeze(-1), probs.new_full((1, 1, 1, 1), -1.0).expand(*y.shape, 1))
        dz2.div_(x.shape[1])
        dh1 = torch.empty_like(h1)  # [S, B, U]
        for k, units in enumerate(self.layout.slices):
            g["W2"][:, units] = torch.bmm(h1_dropped[:, :, units].transpose(1, 2), dz2[:, k])  # h1^T . dz2
            g["b2"][:, k] = dz2[:, k].sum(1)  # dL/db2 = sum_b dz2
            dh1[:, :, units] = torch.bmm(dz2[:, k], W2[:, units].transpose(1, 2))  # dL/dh1 = dz2 . W2^T
        if mask is not None:
            dh1.mul_(mask)  # dropped units pass no gradient; kept ones are scaled by 1/(1-p)
        dz1 = dh1.mul_(self.act_grad(z1, h1))  # dL/dz1 = dh1 * act'(z1)
        torch.bmm(dz1.transpose(1, 2), x, out=g["W1"])  # dL/dW1 = x^T . dz1, unit-major: dz1^T . x
        torch.sum(dz1, 1, keepdim=True, out=g["b1"])  # dL/db1 = sum_b dz1

    def _clip(self) -> tuple[torch.Tensor, torch.Tensor]:
        """GradientClipper's rules per cell; pre-clip norms [S, K] and 0/1 flags [S, K]."""
        g, layout = self.grads, self.layout
        norm = torch.linalg.vector_norm  # per unit, without a squared copy of the gradient   [S, U]
        unit_squares = norm(g["W1"], dim=2).square() + g["b1"][:, 0].square() + norm(g["W2"], dim=2).square()
        grad_norm = (layout.cell_sums(unit_squares) + g["b2"].square().sum(2)).sqrt()  # ||g|| of each cell
        clip_value = self.clip_value
        clip_coef = (clip_value / (grad_norm + 1e-6)).clamp(max=1.0)  # min(1, c / (||g|| + 1e-6))
        clipped = self.by_norm & (clip_coef < 1)
        if "value" in self.clip_kinds:  # g = clamp(g, -c, c) for cells clipping by value
            unit_max = torch.maximum(torch.maximum(g["W1"].abs().amax(2), g["b1"][:, 0].abs()),
                                     g["W2"].abs().amax(2))  # max |g| of each unit's weights   [S, U]
            cell_max = torch.maximum(layout.cell_max(unit_max), g["b2"].abs().amax(2))
            clipped |= self.by_value & (cell_max > clip_value)
            bound = self._spread(torch.where(self.by_value, clip_value, torch.inf))
            for name, grad in g.items():
                grad.clamp_(-bound[name], bound[name])
        if "norm" in self.clip_kinds:  # g = g * min(1, c / ||g||) for cells clipping by norm
            factor = self._spread(torch.where(self.by_norm, clip_coef, 1.0))
            for name, grad in g.items():
                grad.mul_(factor[name])
        return grad_norm, clipped.to(self.dtype)

    def _sgd(self, lr: torch.Tensor) -> None:
        """ManualSGD.step on each packed tensor, the hyperparameters spread to each cell's weights:
        g = grad + wd w;  buf = momentum buf + g;  step = g + momentum buf (Nesterov) or buf;  w -= lr step.
        Padding cells have lr, momentum and decay 0, so they stay zero. Always the eager passes: the
        compiled update (fused_sgd_update) rounds otherwise in float32, and a packed member is to
        train as it would alone; it saved 2% of the main job's wall time."""
        lr_of = self._spread(self.layout.per_cell(lr))
        keep = self._spread(self.keep_cells) if any(self.frozen) else None
        momentum, decay = self.hyper["momentum"], self.hyper["weight_decay"]
        for name, w in self.params.items():
            g, old_buf = self.grads[name].addcmul_(decay[name], w), self.buffers[name]  # L2: dL/dw += wd w
            buf = torch.addcmul(g, momentum[name], old_buf,  # m buf + g
                                out=old_buf if keep is None else None)
            if self.nesterov_kind == "all":
                step = g.addcmul_(momentum[name], buf)
            elif self.nesterov_kind == "none":
                step = buf
            else:
                step = torch.where(self.nesterov[name], g.addcmul(momentum[name], buf), buf)
            if keep is None:
                w.addcmul_(lr_of[name], step, value=-1)  # w = w - lr step
            else:  # where, not a 0/1 factor: 0 * NaN would still be NaN
                old_buf.copy_(torch.where(keep[name], old_buf, buf))
                w.copy_(torch.where(keep[name], w, w - lr_of[name] * step))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_activity(x)[0]

    @torch.no_grad()
    def logits_and_activity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [P, B, 10]; activity bool [S, U]: units positive for some sample."""
        z1 = self._hidden(self._rows(x.to(self.dtype)))
        return self.layout.members_of(self._output(self.act(z1))), (z1 > 0).any(dim=1)

    def dead_fraction(self, activity: torch.Tensor) -> list[float]:
        widths = torch.tensor(self.layout.widths, dtype=torch.float64, device=activity.device)
        return (1.0 - self.layout.members_of(self.layout.cell_sums(activity.double()) / widths)).tolist()

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        return copy_of(self._linear_layout(i))

    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights (nn.Linear layout); buffers and frozen flag are left as they are."""
        load_into(self._linear_layout(i), state)

    def _linear_layout(self, i: int) -> dict[str, torch.Tensor]:
        """Views of member i's weights in the nn.Linear layout."""
        s, k, units = self.layout.block_of(i)
        p = self.params
        return {"fc1.weight": p["W1"][s, units], "fc1.bias": p["b1"][s, 0, units],
                "fc2.weight": p["W2"][s, units].t(), "fc2.bias": p["b2"][s, k]}

    def freeze_member(self, i: int) -> None:
        s, k, _ = self.layout.block_of(i)
        self.frozen[i] = True
        self.keep_cells[s, k] = True


def make_manual_learner(configs: Sequence[RunConfig], device: torch.device, *,
                        dtype: torch.dtype = torch.float32, steps: int = 0
                        ) -> ManualLearner | PackedManualLearner:
    """Members of one width stacked (ManualLearner), of several widths packed (PackedManualLearner).
    `steps`: the steps it will be trained for, where known (whether compiling its update pays)."""
    if len({c.hidden_size for c in configs}) > 1:
        return PackedManualLearner(configs, device, dtype)
    return ManualLearner(configs, device, dtype, steps)
