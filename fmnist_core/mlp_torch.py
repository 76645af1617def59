"""The nn.Module twin of the hand-written MLP, trained with autograd and torch.optim.

`TorchMLP` is the checkpoint format: its state_dict keys (fc1.weight, fc1.bias, fc2.weight,
fc2.bias) are what both implementations save and load. `TorchLearner` trains a population of
P members: P separate TorchMLPs whose weights are gathered into one batched forward (autograd
flows back through torch.cat / torch.stack into each member's own leaf parameters), one param
group per member (its own lr, momentum, weight decay), and clipping with torch.nn.utils per member.
Initial weights and dropout masks come from `inits`, exactly as for the manual learner.

One forward serves every population, on one layout of rows (`_Packing`, as the manual learner's
`PackLayout`): members of several widths that see the same batches (one seed) share a ROW, whose hidden
layer is their units side by side, so the first layer is one product per row; the second layer reads
each member's own units only, so a member learns exactly as it would alone and nothing of it (a NaN
included) reaches another, forward or backward. Members of one width get a row each: a single model is
one row of one member, and a population of one width is P models stacked (member i owns slice i of every
batched tensor), with none of the gathers, pads or copies that a pack needs.

Speed (a small step is mostly per-operation overhead): torch.optim runs its fused kernel
(one pass over each tensor) where it has one, else its foreach kernels; on an accelerator the
fused kernels read each member's lr from the device, so a step never waits for the device; the
loss that is differentiated is also the step's statistic (one log-softmax); the forward is computed
in the layout that gives autograd's weight gradients nn.Linear's layout (`TorchLearner._hidden`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fmnist_core import inits
from fmnist_core.activations import activation as find_activation
from fmnist_core.config import RunConfig
from fmnist_core.metrics import cross_entropy_parts

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class TorchMLP(nn.Module):
    """784 -> hidden_size -> 10 with dropout on the hidden layer."""

    def __init__(self, hidden_size: int, activation: str = "relu", dropout: float = 0.0, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.act = find_activation(activation).function
        self.fc1 = nn.Linear(inits.INPUT_SIZE, hidden_size, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden_size, inits.NUM_CLASSES, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)  # standalone use; TorchLearner draws seeded masks itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], activation: str = "relu", dropout: float = 0.0, *,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> TorchMLP:
        """A model holding a copy of `state`; the hidden size is read from fc1.weight's shape."""
        # Built on the meta device: nn.Linear's own init would draw from (and move) the global RNG.
        model = cls(state["fc1.weight"].shape[0], activation, dropout, device="meta")
        model.to_empty(device=device).to(dtype)
        model.load_state_dict(state)
        return model


class _Packing:
    """Where each member's hidden units sit in the batched forward: rows of members side by side.

    Rows: members of one width get a row each, in config order (S = P, U = H: the members STACKED).
    Members of several widths share a row per distinct seed, in sorted order, holding the members
    that see that seed's batches (identical rows of x), in config order. A row's hidden layer is its
    members' units side by side, then zero units up to U, the largest row's total, so the S rows stack
    into one [S, U, .] batch. The pads are constants, not parameters: their z1 is 0 and no member reads
    them, so they neither contribute nor learn.

    The second layer is one product for all P members: member i reads its slot, [Hmax] units (Hmax:
    the widest member) gathered from the packed layer: its own H_i units, then its first unit again
    where its padded W2 has zero columns. It reads no other member's units, so no 0 * NaN of a
    block-diagonal product carries one member's NaN to another, neither forward nor (through dlogits)
    backward. Layouts: unit u of row r is flat unit r*U + u; `start[i]` is member i's first.

    Where each member is a row of its own width (`stacked`), a member's slot is its row: the gather,
    the pads and the masks' placement fall away, and each method below hands back the tensors of P
    stacked models as they are (a single model's parameters as views, no copy).
    """

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype) -> None:
        self.widths = [c.hidden_size for c in configs]
        members = range(len(configs))
        self.stacked = len(set(self.widths)) == 1
        if self.stacked:
            self.rows = [[i] for i in members]
        else:
            seeds = sorted({c.seed for c in configs})
            self.rows = [[i for i in members if configs[i].seed == seed] for seed in seeds]
        totals = [sum(self.widths[i] for i in row) for row in self.rows]
        self.units, self.widest = max(totals), max(self.widths)  # U, Hmax
        leaders = [row[0] for row in self.rows]
        # Row r's batch is x[r] (rows of one width; one seed's pack: x[:1]): a view, no gather.
        self.leaders = None if leaders == list(range(len(leaders))) else torch.tensor(leaders, device=device)
        self.start = [0] * len(configs)
        for r, row in enumerate(self.rows):
            for k, i in enumerate(row):
                self.start[i] = r * self.units + sum(self.widths[j] for j in row[:k])
        slot = torch.arange(self.widest)
        own = slot < torch.tensor(self.widths).unsqueeze(1)  # [P, Hmax]: slot j holds one of member i's units
        slot_units = torch.tensor(self.start).unsqueeze(1) + torch.where(own, slot, 0)  # [P, Hmax]
        self.slot_units = slot_units.flatten().to(device)  # flat unit of each member's slot
        self.own, self.width = own.to(device), torch.tensor(self.widths, dtype=torch.float64, device=device)

        def zeros(*shape: int) -> torch.Tensor | None:
            return torch.zeros(shape, device=device, dtype=dtype) if 0 not in shape else None
        self.weight_pads = [zeros(self.units - total, inits.INPUT_SIZE) for total in totals]
        self.bias_pads = [zeros(self.units - total) for total in totals]
        self.output_pads = [zeros(inits.NUM_CLASSES, self.widest - width) for width in self.widths]

    def rows_of(self, x: torch.Tensor) -> torch.Tensor:
        """[S, B, 784]: each row's batch, read from x [P, B, 784] at the row's first member."""
        if self.leaders is None:
            return x if x.shape[0] == len(self.rows) else x[:len(self.rows)]  # a view
        return x.index_select(0, self.leaders)

    def first_layer(self, members: Sequence[TorchMLP]) -> tuple[torch.Tensor, torch.Tensor]:
        """W1 [S, U, 784] and b1 [S, U, 1]: each row's members' fc1 side by side, then its pad."""
        W1 = _joined(self._in_unit_order([m.fc1.weight for m in members], self.weight_pads))
        b1 = _joined(self._in_unit_order([m.fc1.bias for m in members], self.bias_pads))
        return W1.view(len(self.rows), self.units, -1), b1.view(len(self.rows), self.units, 1)

    def second_layer(self, members: Sequence[TorchMLP]) -> tuple[torch.Tensor, torch.Tensor]:
        """W2 [P, 10, Hmax] (member i's fc2.weight, then zero columns) and b2 [P, 10, 1]."""
        b2 = _stack([m.fc2.bias for m in members]).unsqueeze(2)
        if self.stacked:  # no member narrower than another: no zero columns
            return _stack([m.fc2.weight for m in members]), b2
        pieces = [t for m, pad in zip(members, self.output_pads, strict=True) for t in (m.fc2.weight, pad)
                  if t is not None]
        W2 = torch.cat(pieces, dim=1).view(inits.NUM_CLASSES, len(members), self.widest).transpose(0, 1)
        return W2, b2

    def member_slots(self, packed_t: torch.Tensor) -> torch.Tensor:
        """[P, Hmax, B]: each member's slot of a packed layer [S, U, B]: its units, then its first again."""
        if self.stacked:  # each member's slot is its row
            return packed_t
        flat = packed_t.reshape(-1, packed_t.shape[2])  # [S*U, B]
        return flat.index_select(0, self.slot_units).view(len(self.widths), self.widest, -1)

    def masks(self, probabilities: Sequence[float], generators: Sequence[torch.Generator], batch: int, *,
              device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """Dropout masks [S, U, B] (transposed, like z1^T): member i's [B, H_i] mask drawn exactly as it
        would be drawn alone, from its own generator, placed at its units; 1 elsewhere. None if no dropout."""
        if self.stacked:  # member i's mask is row i: drawn at once, [P, B, H] read transposed
            drawn = inits.dropout_masks(probabilities, batch, self.units, generators, device=device,
                                        dtype=dtype)
            return None if drawn is None else drawn.transpose(1, 2)
        if not any(p > 0 for p in probabilities):
            return None
        masks = torch.ones(len(self.rows) * self.units, batch, device=device, dtype=dtype)
        for i, (p, generator) in enumerate(zip(probabilities, generators, strict=True)):
            if p > 0:
                width = self.widths[i]
                [mask] = inits.dropout_masks([p], batch, width, [generator], device=device, dtype=dtype)
                masks[self.start[i]:self.start[i] + width] = mask.T  # [B, H_i] -> [H_i, B]
        return masks.view(len(self.rows), self.units, batch)

    def hidden_of_members(self, packed_t: torch.Tensor) -> torch.Tensor:
        """[P, B, Hmax] from a packed layer [S, U, B]: each member's units, then zeros."""
        slots = self.member_slots(packed_t)  # [P, Hmax, B]
        return (slots if self.stacked else torch.where(self.own.unsqueeze(2), slots, 0)).transpose(1, 2)

    def dead_fraction(self, activity: torch.Tensor) -> list[float]:
        """[P] from activity [S, U]: the fraction of member i's own units (pads excluded) never fired."""
        alive = self.member_slots(activity.unsqueeze(2)).squeeze(2) & self.own  # [P, Hmax]
        return (1.0 - alive.sum(1).double() / self.width).tolist()  # sum of 0/1 / H: their mean, exactly

    def _in_unit_order(self, tensors: list[torch.Tensor], pads: list[torch.Tensor | None]
                       ) -> list[torch.Tensor]:
        """Per-member tensors (indexed by member) in the packed units' order: row by row, each row's
        members in config order, then the row's pad."""
        ordered = []
        for row, pad in zip(self.rows, pads, strict=True):
            ordered += [tensors[i] for i in row] + ([pad] if pad is not None else [])
        return ordered


class TorchLearner:
    """The Learner interface (see learner.Learner) over P TorchMLPs and torch.optim, laid out by one
    `_Packing`: stacked when the members share hidden_size, packed when they do not."""

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype) -> None:
        first = configs[0]
        if any(cfg.activation != first.activation for cfg in configs):
            raise ValueError("all members of a population must share activation; train the others apart")
        self.population, self.device, self.dtype = len(configs), torch.device(device), dtype
        self.act = find_activation(first.activation).function
        self.members = [
            TorchMLP.from_state_dict(
                inits.initial_state(c.hidden_size, activation=c.activation, init=c.init,
                                    scale=c.init_scale, seed=c.seed),
                c.activation, c.dropout, device=self.device, dtype=dtype)
            for c in configs
        ]
        self.dropout = [c.dropout for c in configs]
        self.generators = inits.dropout_generators([c.seed for c in configs], self.device)
        self.configs = list(configs)
        self.frozen = [False] * self.population
        self._zero = torch.zeros((), device=self.device, dtype=dtype)  # the statistics of a frozen member
        self.layout = _Packing(configs, self.device, dtype)
        self._build_optimizers()
        # Fused kernels take a device tensor as lr and read it there (their Tensor-lr overloads);
        # foreach kernels turn it into a Python number (.item(): a device sync), and on the CPU
        # a float is what they all take.
        self.lr_on_device = self.device.type != "cpu" and all(g.get("fused") for g in self.param_groups)

    def _build_optimizers(self) -> None:
        """One optimizer per optimizer kind in the population, one param group per member."""
        self.optimizers: list[torch.optim.Optimizer] = []
        self.param_groups: list[dict] = [{}] * self.population
        for kind in dict.fromkeys(c.optimizer for c in self.configs):
            members = [i for i, c in enumerate(self.configs) if c.optimizer == kind]
            groups = [self._param_group(self.configs[i], self.members[i]) for i in members]
            optimizer = _fastest_optimizer(kind, groups)
            self.optimizers.append(optimizer)
            for i, group in zip(members, optimizer.param_groups, strict=True):
                self.param_groups[i] = group

    @staticmethod
    def _param_group(cfg: RunConfig, model: TorchMLP) -> dict:
        # Weight decay covers all four tensors, biases included, like ManualSGD.
        group = {"params": list(model.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}
        if cfg.optimizer == "sgd":
            group.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
        else:  # adam / adamw: momentum is beta1; nesterov has no meaning here
            group.update(betas=(cfg.momentum, 0.999))
        return group

    @property
    def packing(self) -> _Packing | None:
        """The layout where members of several widths share rows; None where they are stacked (a row each)."""
        return None if self.layout.stacked else self.layout

    def _forward(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Logits [P, B, 10] of all members in one batched computation."""
        return self._output(self._hidden(x), masks)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """z1^T [S, U, B] of every row's units (z1^T = W1 x_row^T + b1; stacked: [P, H, B]).

        Computed transposed, one column per sample: autograd's gradient of W1 is then dz1^T . x, which
        comes out in nn.Linear's [out, in] layout. The untransposed form gives x^T . dz1, which
        AccumulateGrad copies into that layout, every step (800 KB at H=256). Unit u's row of z1^T depends
        only on row u of W1, so a NaN in one member's W1 stays in its units."""
        W1, b1 = self.layout.first_layer(self.members)
        return torch.baddbmm(b1, W1, self.layout.rows_of(x).transpose(1, 2))

    def _output(self, z1_t: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Logits [P, B, 10] from z1^T [S, U, B] and dropout masks in its layout.
        Member i: logits_i^T = W2_i [10, Hmax] . slot_i [Hmax, B] + b2_i, one bmm for all members."""
        h1_t = self.act(z1_t)
        if masks is not None:
            h1_t = h1_t * masks
        W2, b2 = self.layout.second_layer(self.members)  # [P, 10, Hmax], [P, 10, 1]
        return torch.baddbmm(b2, W2, self.layout.member_slots(h1_t)).transpose(1, 2)  # [P, B, 10]

    def _dropout_masks(self, batch: int) -> torch.Tensor | None:
        """This step's dropout masks in `_output`'s layout, [S, U, B]."""
        return self.layout.masks(self.dropout, self.generators, batch, device=self.device, dtype=self.dtype)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step for every member. On the CPU, pass `lr` on the CPU (torch.optim reads it as Python
        floats); on an accelerator, pass it on the device: with fused kernels nothing in the step
        waits for the device."""
        x = x.to(self.dtype)
        self._set_lr(lr)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        logits = self._forward(x, self._dropout_masks(x.shape[1]))
        loss_sum, correct, _ = cross_entropy_parts(logits, y)  # the loss to train on is also the statistic
        if not all(self.frozen):
            # d/d(loss_sum) of the sum over members of each member's mean loss: 1/B for every member,
            # and member i's params see only its own mean.
            loss_sum.backward(torch.full_like(loss_sum, 1 / y.shape[1]))
        grad_norm, clipped = self._clip()
        for optimizer in self.optimizers:
            optimizer.step()  # frozen members have no .grad, so torch.optim skips them
        return {"loss_sum": loss_sum.detach(), "correct": correct, "grad_norm": grad_norm, "clipped": clipped}

    def _set_lr(self, lr: torch.Tensor) -> None:
        """Member i's param group gets lr[i]: a 0-dim view of lr on the device where the fused kernels
        read it there (float32: what they read), else a Python float."""
        if self.lr_on_device:
            values = lr.to(self.device, torch.float32, non_blocking=True).unbind()
        else:
            values = lr.tolist()
        for group, value in zip(self.param_groups, values, strict=True):
            group["lr"] = value

    def _clip(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip each member's gradients by its own rule; pre-clip global norms [P] and 0/1 flags [P]."""
        norms, flags = [], []
        for cfg, member, frozen in zip(self.configs, self.members, self.frozen, strict=True):
            if frozen:
                norms.append(self._zero)
                flags.append(self._zero)
                continue
            params = list(member.parameters())
            grads = [p.grad for p in params]
            norm = torch.nn.utils.get_total_norm(grads)  # what clip_grad_norm_ computes and returns
            norms.append(norm)
            if cfg.clip_mode == "norm":
                torch.nn.utils.clip_grads_with_norm_(params, cfg.clip_value, norm)  # = clip_grad_norm_
                flags.append(cfg.clip_value / (norm + 1e-6) < 1)  # the factor it applied was below 1
            elif cfg.clip_mode == "value":
                flags.append(torch.stack([(g.abs() > cfg.clip_value).any() for g in grads]).any())
                torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
            else:
                flags.append(self._zero)
        return torch.stack(norms).to(self.dtype), torch.stack(flags).to(self.dtype)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x.to(self.dtype), None)

    @torch.no_grad()
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """z1 [P, B, Hmax], zeros after member i's H_i units (one width: [P, B, H])."""
        return self.layout.hidden_of_members(self._hidden(x.to(self.dtype)))

    @torch.no_grad()
    def logits_and_activity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Activity: bool [S, U] (one width: [P, H]; the pads never fire: their z1 is 0)."""
        z1_t = self._hidden(x.to(self.dtype))
        return self._output(z1_t, None), (z1_t > 0).any(dim=2)

    def dead_fraction(self, activity: torch.Tensor) -> list[float]:
        return self.layout.dead_fraction(activity)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        state = self.members[i].state_dict()
        return {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}

    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights; optimizer state and frozen flag are left as they are."""
        self.members[i].load_state_dict(state)

    def freeze_member(self, i: int) -> None:
        self.frozen[i] = True
        for p in self.members[i].parameters():
            p.requires_grad_(False)  # no grad -> torch.optim skips it and no NaN flows anywhere
            p.grad = None


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, but a view for a single tensor: a run of one copies no weights (nor their gradients)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along the first dimension, but the tensor itself (no copy) where there is one."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _fastest_optimizer(kind: str, groups: list[dict]) -> torch.optim.Optimizer:
    """torch.optim's fused kernel (one pass over each tensor) where it has one for these tensors'
    device and dtype, else its foreach kernels (one call for all tensors, not a Python loop)."""
    try:
        return OPTIMIZERS[kind](groups, lr=groups[0]["lr"], fused=True)
    except RuntimeError:  # "`fused=True` requires all the params to be ... of supported devices"
        return OPTIMIZERS[kind](groups, lr=groups[0]["lr"], foreach=True)


def make_torch_learner(configs: Sequence[RunConfig], device: torch.device, *,
                       dtype: torch.dtype = torch.float32) -> TorchLearner:
    """The learner of `configs`: members of any widths (stacked or packed), one activation."""
    return TorchLearner(configs, device, dtype)
