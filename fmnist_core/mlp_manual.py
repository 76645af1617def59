"""The hand-written MLP: forward, backward, clipping and SGD written out from the equations.

No autograd anywhere: every gradient is computed by the formula in the comment beside it.
The code trains a POPULATION of P independent models as one batched computation (P = 1 is
an ordinary run): member i owns slice i of every tensor, and nothing mixes slices, so a NaN
in one member never reaches another.

Shapes (B = batch, H = hidden units):
    x [P, B, 784]   W1 [P, 784, H]   b1 [P, 1, H]   W2 [P, H, 10]   b2 [P, 1, 10]   y [P, B]
Weights are stored input-major (the transpose of nn.Linear) so the forward is one baddbmm;
`member_state` / `load_member_state` convert to and from the nn.Linear layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fmnist_core import inits
from fmnist_core.config import RunConfig
from fmnist_core.metrics import cross_entropy_parts

# Each activation's forward h = f(z) next to its derivative f'(z), given z and h = f(z).
ACTIVATIONS = {
    # h = max(z, 0);                    dh/dz = 1[z > 0]
    "relu": (lambda z: z.clamp_min(0), lambda z, h: (z > 0).to(z.dtype)),
    # h = z if z > 0 else 0.01 z;       dh/dz = 1 if z > 0 else 0.01
    "leaky_relu": (lambda z: torch.where(z > 0, z, 0.01 * z),
                   lambda z, h: torch.where(z > 0, torch.ones_like(z), 0.01)),
    # h = tanh(z);                      dh/dz = 1 - h^2
    "tanh": (torch.tanh, lambda z, h: 1 - h * h),
    # h = s(z) = 1 / (1 + e^-z);        dh/dz = s (1 - s)
    "sigmoid": (torch.sigmoid, lambda z, h: h * (1 - h)),
    # h = z if z > 0 else e^z - 1;      dh/dz = 1 if z > 0 else e^z = h + 1
    "elu": (lambda z: torch.where(z > 0, z, torch.expm1(z)), lambda z, h: torch.where(z > 0, 1.0, h + 1)),
    # h = z s(z);                       dh/dz = s + z s (1 - s) = s (1 + z (1 - s))
    "silu": (lambda z: z * torch.sigmoid(z),
             lambda z, h: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))),
}

CLIP_CODES = {"none": 0, "value": 1, "norm": 2}  # per-member clip_mode as an integer tensor
PARAM_NAMES = ("W1", "b1", "W2", "b2")


def _member(values: torch.Tensor) -> torch.Tensor:
    """[P] -> [P, 1, 1], to broadcast a per-member number over that member's tensors."""
    return values.view(-1, 1, 1)


class ManualMLP:
    """784 -> H -> 10 for P members, with forward and backward side by side."""

    def __init__(self, states: Sequence[dict[str, torch.Tensor]], *, activation: str,
                 dropout: Sequence[float] | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.act, self.act_grad = ACTIVATIONS[activation]
        self.dropout = list(dropout) if dropout is not None else [0.0] * len(states)
        self.device, self.dtype = torch.device(device), dtype

        def stack(key: str, transpose: bool) -> torch.Tensor:
            tensors = [s[key].t() if transpose else s[key].unsqueeze(0) for s in states]
            return torch.stack(tensors).to(self.device, dtype).contiguous()

        self.W1 = stack("fc1.weight", True)  # [P, 784, H]
        self.b1 = stack("fc1.bias", False)  # [P, 1, H]
        self.W2 = stack("fc2.weight", True)  # [P, H, 10]
        self.b2 = stack("fc2.bias", False)  # [P, 1, 10]
        self.cache: dict[str, torch.Tensor | None] = {}
        self._minus_one = torch.full((1, 1, 1), -1.0, device=self.device, dtype=dtype)

    @property
    def population(self) -> int:
        return self.W1.shape[0]

    def params(self) -> dict[str, torch.Tensor]:
        return {"W1": self.W1, "b1": self.b1, "W2": self.W2, "b2": self.b2}

    @torch.no_grad()
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.b1, x, self.W1)  # z1 = x W1 + b1   [P, B, H]

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
        `probs`: softmax(z2) if the caller already has it (it is overwritten)."""
        x, z1, h1, mask = self.cache["x"], self.cache["z1"], self.cache["h1"], self.cache["mask"]
        h1_dropped, z2 = self.cache["h1_dropped"], self.cache["z2"]
        batch_size = x.shape[1]
        probs = torch.softmax(z2, dim=-1) if probs is None else probs  # p = softmax(z2)
        # dL/dz2 = (p - onehot(y)) / B: subtract 1 at each sample's label, then scale
        dz2 = probs.scatter_add(-1, y.unsqueeze(-1), self._minus_one.expand(*y.shape, 1)).div_(batch_size)
        dW2 = torch.bmm(h1_dropped.transpose(1, 2), dz2)  # dL/dW2 = h1^T . dz2
        db2 = dz2.sum(1, keepdim=True)  # dL/db2 = sum_b dz2
        dh1 = torch.bmm(dz2, self.W2.transpose(1, 2))  # dL/dh1 = dz2 . W2^T
        if mask is not None:
            dh1 = dh1 * mask  # dropped units pass no gradient; kept ones are scaled by 1/(1-p)
        dz1 = dh1 * self.act_grad(z1, h1)  # dL/dz1 = dh1 * act'(z1)
        dW1 = torch.bmm(x.transpose(1, 2), dz1)  # dL/dW1 = x^T . dz1
        db1 = dz1.sum(1, keepdim=True)  # dL/db1 = sum_b dz1
        return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}


@torch.no_grad()
def gradient_norm(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each member's global L2 norm [P] over all four gradients: sqrt(sum of every g^2)."""
    norms = torch.stack([torch.linalg.vector_norm(g, dim=(1, 2)) for g in grads.values()])
    return torch.linalg.vector_norm(norms, dim=0)  # the norm of the per-tensor norms, as torch does


@torch.no_grad()
def clip_gradients(
    grads: dict[str, torch.Tensor], clip_mode: torch.Tensor, clip_value: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Clip each member's gradients in place by its own rule; returns (grads, pre-clip norm [P], clipped [P]).

    clip_mode [P] holds CLIP_CODES. value: g = clamp(g, -c, c) element-wise. norm: scale all four
    gradients of a member by min(1, c / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_ does.
    Members under another rule get bound inf / factor 1, which leave every value (NaN too) as is.
    """
    grad_norm = gradient_norm(grads)
    by_value, by_norm = clip_mode == CLIP_CODES["value"], clip_mode == CLIP_CODES["norm"]
    bound = torch.where(by_value, clip_value, torch.inf)  # [P]
    # max |g| per member as max(max g, -min g): the inf-norm kernel is ~25x slower on the CPU
    largest = torch.stack([torch.maximum(g.amax((1, 2)), -g.amin((1, 2))) for g in grads.values()])
    clip_coef = (clip_value / (grad_norm + 1e-6)).clamp(max=1.0)  # min(1, c / (||g|| + 1e-6))
    clipped = (by_value & (largest.amax(0) > clip_value)) | (by_norm & (clip_coef < 1))
    bound, factor = _member(bound), _member(torch.where(by_norm, clip_coef, 1.0))
    for g in grads.values():
        g.clamp_(-bound, bound).mul_(factor)
    return grads, grad_norm, clipped


class ManualSGD:
    """SGD with momentum, Nesterov and weight decay per member, in torch.optim.SGD's convention.

    g = grad + wd w;  buf = momentum buf + g (buf = g on the first step, as buf starts at 0);
    step = g + momentum buf (Nesterov) or buf;  w = w - lr step.
    Weight decay acts on all four tensors, biases included, as torch.optim.SGD does when it is
    handed all parameters (TorchLearner does), so both implementations follow one rule.
    """

    def __init__(self, params: dict[str, torch.Tensor], *, momentum: torch.Tensor,
                 weight_decay: torch.Tensor, nesterov: torch.Tensor) -> None:
        self.params = params
        self.momentum, self.weight_decay = _member(momentum), _member(weight_decay)
        self.nesterov = _member(nesterov)
        flags = nesterov.tolist()  # once, on the host: most populations are all or none Nesterov
        self.nesterov_kind = "all" if all(flags) else "none" if not any(flags) else "mixed"
        self.buffers = {name: torch.zeros_like(w) for name, w in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], lr: torch.Tensor,
             frozen: torch.Tensor | None = None) -> None:
        """Update in place, using `grads` as scratch space (in place: big fresh tensors are slow on
        the CPU); members where `frozen` [P] is True keep their weights and buffers."""
        lr, momentum = _member(lr), self.momentum
        for name, w in self.params.items():
            g = grads["d" + name].addcmul_(self.weight_decay, w)  # L2: dL/dw += wd w
            old_buf = self.buffers[name]
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
                keep = _member(frozen)
                self.buffers[name] = torch.where(keep, old_buf, buf)
                w.copy_(torch.where(keep, w, w - lr * step))


class ManualLearner:
    """The Learner interface over ManualMLP + clip_gradients + ManualSGD."""

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype) -> None:
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
            self.model.params(),
            momentum=per_member([c.momentum for c in configs], dtype),
            weight_decay=per_member([c.weight_decay for c in configs], dtype),
            nesterov=per_member([c.nesterov for c in configs], torch.bool),
        )
        self.clip_mode = per_member([CLIP_CODES[c.clip_mode] for c in configs], torch.int64)
        self.clip_value = per_member([c.clip_value for c in configs], dtype)
        self.any_clipping = any(c.clip_mode != "none" for c in configs)
        self.generators = inits.dropout_generators([c.seed for c in configs], self.device)
        self.frozen = [False] * self.population  # host copy: no device sync to ask "any frozen?"
        self.frozen_mask = torch.zeros(self.population, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model.forward(x.to(self.dtype), train=True, generators=self.generators)
        loss_sum, correct, log_probs = cross_entropy_parts(logits, y)
        grads = self.model.backward(y, probs=log_probs.exp_())  # one log-softmax for loss and gradient
        if self.any_clipping:
            grads, grad_norm, clipped = clip_gradients(grads, self.clip_mode, self.clip_value)
        else:
            grad_norm, clipped = gradient_norm(grads), torch.zeros_like(self.frozen_mask)
        lr = lr.to(self.device, self.dtype, non_blocking=True)
        self.optimizer.step(grads, lr, self.frozen_mask if any(self.frozen) else None)
        return {"loss_sum": loss_sum, "correct": correct, "grad_norm": grad_norm, "clipped": clipped.float()}

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward(x.to(self.dtype), train=False)

    @torch.no_grad()
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.hidden_preactivations(x.to(self.dtype))

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        m = self.model
        cpu = {"device": "cpu", "dtype": torch.float32}
        return {
            "fc1.weight": m.W1[i].t().to(**cpu).clone(),
            "fc1.bias": m.b1[i, 0].to(**cpu).clone(),
            "fc2.weight": m.W2[i].t().to(**cpu).clone(),
            "fc2.bias": m.b2[i, 0].to(**cpu).clone(),
        }

    @torch.no_grad()
    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights; its momentum buffers and frozen flag are left as they are."""
        m = self.model
        targets = {"fc1.weight": m.W1[i].t(), "fc1.bias": m.b1[i, 0], "fc2.weight": m.W2[i].t(),
                   "fc2.bias": m.b2[i, 0]}
        for key, target in targets.items():
            if key not in state or tuple(state[key].shape) != tuple(target.shape):
                got = tuple(state[key].shape) if key in state else "missing"
                raise ValueError(f"{key}: expected shape {tuple(target.shape)}, got {got}")
            target.copy_(state[key])

    def freeze_member(self, i: int) -> None:
        self.frozen[i] = True
        self.frozen_mask[i] = True


def make_manual_learner(configs: Sequence[RunConfig], device: torch.device, *,
                        dtype: torch.dtype = torch.float32) -> ManualLearner:
    return ManualLearner(configs, device, dtype)
