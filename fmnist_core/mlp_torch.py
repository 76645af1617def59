"""The nn.Module twin of the hand-written MLP, trained with autograd and torch.optim.

`TorchMLP` is the checkpoint format: its state_dict keys (fc1.weight, fc1.bias, fc2.weight,
fc2.bias) are what both implementations save and load. `TorchLearner` trains a population of
P members: P separate TorchMLPs whose weights are stacked into one batched forward (autograd
flows back through torch.stack into each member's own leaf parameters), one param group per
member (its own lr, momentum, weight decay), and clipping with torch.nn.utils per member.
Initial weights and dropout masks come from `inits`, exactly as for the manual learner.

Speed (a small step is mostly per-operation overhead): torch.optim runs its fused kernel
(one pass over each tensor) where it has one, else its foreach kernels; the loss that is
differentiated is also the step's statistic (one log-softmax); the forward is computed in
the layout that gives autograd's weight gradients nn.Linear's layout (`_stacked_forward`).
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


class TorchLearner:
    """The Learner interface (see mlp_manual.ManualLearner) over P TorchMLPs and torch.optim."""

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype) -> None:
        first = configs[0]
        for cfg in configs:
            if (cfg.hidden_size, cfg.activation) != (first.hidden_size, first.activation):
                raise ValueError("all members of a population must share hidden_size and activation")
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

        # One optimizer per optimizer kind in the population, one param group per member.
        self.optimizers: list[torch.optim.Optimizer] = []
        self.param_groups: list[dict] = [{}] * self.population
        for kind in dict.fromkeys(c.optimizer for c in configs):
            members = [i for i, c in enumerate(configs) if c.optimizer == kind]
            groups = [self._param_group(configs[i], self.members[i]) for i in members]
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

    def _stacked_forward(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Logits [P, B, 10] of all members in one batched computation."""
        return self._stacked_output(self._stacked_hidden(x), masks)

    def _stacked_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """z1^T [P, H, B], computed transposed, one column per sample (z1^T = W1 x^T + b1): autograd's
        gradient of W1 is then dz1^T . x, which comes out in nn.Linear's [out, in] layout. The
        untransposed form gives x^T . dz1, which AccumulateGrad copies into that layout, every step
        (800 KB at H=256)."""
        W1 = _stack([m.fc1.weight for m in self.members])  # [P, H, 784]
        b1 = _stack([m.fc1.bias for m in self.members]).unsqueeze(2)  # [P, H, 1]
        return torch.baddbmm(b1, W1, x.transpose(1, 2))  # [P, H, B]

    def _stacked_output(self, z1_t: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Logits [P, B, 10] from z1^T [P, H, B]."""
        h1_t = self.act(z1_t)
        if masks is not None:
            h1_t = h1_t * masks.transpose(1, 2)
        W2 = _stack([m.fc2.weight for m in self.members])  # [P, 10, H]
        b2 = _stack([m.fc2.bias for m in self.members]).unsqueeze(2)  # [P, 10, 1]
        return torch.baddbmm(b2, W2, h1_t).transpose(1, 2)  # [P, B, 10]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step for every member. Pass `lr` on the CPU: torch.optim takes Python floats,
        so an lr on the accelerator costs one device sync here."""
        x = x.to(self.dtype)
        for group, value in zip(self.param_groups, lr.tolist(), strict=True):
            group["lr"] = value
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        masks = inits.dropout_masks(self.dropout, x.shape[1], self.configs[0].hidden_size, self.generators,
                                    device=self.device, dtype=self.dtype)
        logits = self._stacked_forward(x, masks)
        loss_sum, correct, _ = cross_entropy_parts(logits, y)  # the loss to train on is also the statistic
        if not all(self.frozen):
            # d/d(loss_sum) of the sum over members of each member's mean loss: 1/B for every member,
            # and member i's params see only its own mean.
            loss_sum.backward(torch.full_like(loss_sum, 1 / y.shape[1]))
        grad_norm, clipped = self._clip()
        for optimizer in self.optimizers:
            optimizer.step()  # frozen members have no .grad, so torch.optim skips them
        return {"loss_sum": loss_sum.detach(), "correct": correct, "grad_norm": grad_norm, "clipped": clipped}

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
        return self._stacked_forward(x.to(self.dtype), None)

    @torch.no_grad()
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        return self._stacked_hidden(x.to(self.dtype)).transpose(1, 2)

    @torch.no_grad()
    def logits_and_preactivations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1_t = self._stacked_hidden(x.to(self.dtype))
        return self._stacked_output(z1_t, None), z1_t.transpose(1, 2)

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


def _fastest_optimizer(kind: str, groups: list[dict]) -> torch.optim.Optimizer:
    """torch.optim's fused kernel (one pass over each tensor) where it has one for these tensors'
    device and dtype, else its foreach kernels (one call for all tensors, not a Python loop)."""
    try:
        return OPTIMIZERS[kind](groups, lr=groups[0]["lr"], fused=True)
    except RuntimeError:  # "`fused=True` requires all the params to be ... of supported devices"
        return OPTIMIZERS[kind](groups, lr=groups[0]["lr"], foreach=True)


def make_torch_learner(configs: Sequence[RunConfig], device: torch.device, *,
                       dtype: torch.dtype = torch.float32) -> TorchLearner:
    return TorchLearner(configs, device, dtype)
