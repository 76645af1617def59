"""The hand-written MLP: forward, backward, clipping and SGD, each written once from its equations.

No autograd anywhere: every gradient is computed by the formula in the comment beside it.
One learner trains a POPULATION of P independent models of any widths as one batched computation,
laid out as a PACK (`PackLayout`) of rows x blocks: members of several widths that see the same
batches (one seed) share a ROW, whose hidden layer is their units side by side, so its first layer is
one product; each member owns a BLOCK of the row's units, and its output reads those units only.
Members of one width each get a row of their own, one block a row: a single model is a pack of one
row of one block. A member is a CELL (row, block); nothing sums over the units of two cells, so a NaN
in one member never reaches another.

Shapes (S rows, K blocks, U units a row, H_k units in block k, B batch; one width: S = P, K = 1, U = H):
    x [S, B, 784]   W1 [S, 784, U]   b1 [S, 1, U]   z1, h1 [S, B, U]
    block k:  h1 [S, B, H_k]   W2 [S, H_k, 10] (of W2 [S, U, 10])   b2 [S, 1, 10] (of b2 [S, K, 10])
    logits z2 [P, B, 10], one member each (block k's [S, B, 10] are its members')
Per-member values are [P] outside and [S, K] cells inside (`PackLayout.per_cell`, `members_of`).
`state` / `load_state` convert a member's weights to and from the nn.Linear layout.

Speed: a small step on a CPU costs more in per-operation overhead than in arithmetic, so a row's four
parameters are views into one row of a [S, N] tensor (N = 784 U + U + 10 U + 10 K, padded to whole cache
lines), and so are its four gradients and its momentum buffers. The backward writes each gradient into
its view (out=). Clipping and the update act on PIECES of the rows with per-cell values spread to their
elements: with one block a row, a cell is a whole row and the only piece, so the gradient norm, clipping
and the update are each a few operations on the [S, N] rows; with several blocks the pieces are the four
parameters with values spread to units, and W1 is stored unit-major (row j: unit j's 784 input weights)
so that the per-unit sums of the norm run along contiguous memory (input-major, they took 4x the time of
the rest of the norm); the products read it transposed, which BLAS does for free. For a population of
one width on the CPU with enough parameter-steps to repay the compile (`fuse_pays`), the update
(`sgd_update`) runs compiled by torch.compile into one pass over the rows (`fused_sgd_update`).
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from fmnist_core import inits
from fmnist_core.activations import activation as find_activation
from fmnist_core.config import RunConfig, first_line
from fmnist_core.metrics import cross_entropy_parts

CLIP_CODES = {"none": 0, "value": 1, "norm": 2}  # per-member clip_mode as an integer tensor
# Row length is a multiple of this many elements (64 bytes in float32, a cache line), so every
# row's W1 starts on a cache line: unaligned, its dW1 product ran ~10% slower at P = 8.
# The padding is zero and stays zero (no backward writes it; SGD maps 0 to 0).
ROW_ALIGNMENT = 16
# Parameter-steps (P N steps) from which a population's SGD update is one compiled pass (fuse_pays): the
# fused pass saves about 0.5 ns a parameter-step (2 CPU cores, P = 8, H = 256), so 1e10 of them repay a
# process's ~4 s of compiling about 1.2 times: 8 members at H = 256 (1.6 M parameters) for 8 epochs of
# batch 64. Shorter sweeps and a test's tiny models stay eager.
FUSE_MIN_PARAMETER_STEPS = 10_000_000_000


def no_grad(function: Callable) -> Callable:
    """torch.no_grad() as a decorator, without its cost (about 3 us a call) where gradients are already
    off: the learner's step calls four decorated methods, each of which a caller may also call alone."""
    @functools.wraps(function)
    def without_gradients(*args, **kwargs):
        if not torch.is_grad_enabled():
            return function(*args, **kwargs)
        with torch.no_grad():
            return function(*args, **kwargs)
    return without_gradients


def parameter_shapes(hidden_size: int, blocks: int = 1, *, unit_major: bool = False
                     ) -> dict[str, tuple[int, int]]:
    """Each parameter's shape in a row of `hidden_size` units in `blocks` blocks, in the order they sit
    in the row; W1 as stored ([U, 784] unit-major, else [784, U])."""
    W1 = (hidden_size, inits.INPUT_SIZE) if unit_major else (inits.INPUT_SIZE, hidden_size)
    return {"W1": W1, "b1": (1, hidden_size), "W2": (hidden_size, inits.NUM_CLASSES),
            "b2": (blocks, inits.NUM_CLASSES)}


def row_width(shapes: dict[str, tuple[int, int]]) -> int:
    """Elements in one row: all its parameters, padded to a multiple of ROW_ALIGNMENT."""
    used = sum(height * width for height, width in shapes.values())
    return -(-used // ROW_ALIGNMENT) * ROW_ALIGNMENT


def row_views(rows: torch.Tensor, shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Views [S, r, c] of consecutive stretches of `rows` [S, N], one per shape, in order."""
    views, start = {}, 0
    for name, (height, width) in shapes.items():
        views[name] = rows[:, start:start + height * width].view(-1, height, width)
        start += height * width
    return views


def copy_of(views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A member's weights (views in the nn.Linear layout) as a float32 CPU copy."""
    return {key: view.to("cpu", torch.float32).clone() for key, view in views.items()}


@no_grad
def load_into(views: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (nn.Linear layout) into a member's weight views, refusing a missing key or shape."""
    for key, target in views.items():
        if key not in state or tuple(state[key].shape) != tuple(target.shape):
            got = tuple(state[key].shape) if key in state else "missing"
            raise ValueError(f"{key}: expected shape {tuple(target.shape)}, got {got}")
        target.copy_(state[key])


class PackLayout:
    """Where each member lives: rows x blocks, and where each parameter sits in a row.

    Members of several widths that see the same batches (one seed) share a ROW: one first-layer
    product x [B, 784] @ W1 [784, U] feeds all of their hidden units. A row's units are cut into
    BLOCKS, one per member; every row has the same blocks (for each width, as many blocks as the
    row with most members of that width), so block k spans the same units in every row and its
    output product is one batched matmul over the rows. A (row, block) CELL without a member is
    padding: zero weights, learning rate 0, never read. Member i owns cell `cells[i]` = row * K + block.
    Members of one width each get a row of their own (one block a row), whatever their seeds.

    With one block a row (`blocks` == 1) a cell is a whole row: it is the only PIECE of the rows that
    per-cell values are spread over, and W1 is stored input-major. With several, the pieces are the four
    parameters, values are spread to units, and W1 is stored unit-major (see the module's docstring).
    """

    def __init__(self, widths: Sequence[int], seeds: Sequence[int] | None = None) -> None:
        """`widths`, `seeds`: each member's (seeds: which members see the same batches)."""
        members = range(len(widths))
        seeds = list(members) if seeds is None else list(seeds)
        if len(set(widths)) == 1:
            rows = [[i] for i in members]
        else:
            rows = [[i for i in members if seeds[i] == s] for s in sorted(set(seeds))]
        counts: dict[int, int] = {}
        for row in rows:
            for width in {widths[i] for i in row}:
                counts[width] = max(counts.get(width, 0), sum(widths[i] == width for i in row))
        self.widths = [w for w in sorted(counts) for _ in range(counts[w])]  # width of each block
        self.starts = [sum(self.widths[:k]) for k in range(len(self.widths))]
        self.slices = [slice(start, start + w) for start, w in zip(self.starts, self.widths, strict=True)]
        self.rows, self.blocks, self.units = len(rows), len(self.widths), sum(self.widths)
        self.cells, self.row_leaders = [0] * len(widths), [row[0] for row in rows]
        for s, row in enumerate(rows):
            free = list(range(self.blocks))
            for i in row:  # in config order, the first free block of the member's width
                k = next(k for k in free if self.widths[k] == widths[i])
                free.remove(k)
                self.cells[i] = s * self.blocks + k
        # Cell i is member i and no cell is padding: [P] and [S, K] are views of each other.
        self.in_order = self.cells == list(range(self.rows * self.blocks))
        self.leaders_in_order = self.row_leaders == list(range(self.rows))
        self.unit_major = self.blocks > 1
        self.shapes = parameter_shapes(self.units, self.blocks, unit_major=self.unit_major)
        self.row_width = row_width(self.shapes)
        self.unit_block = torch.tensor([k for k, w in enumerate(self.widths) for _ in range(w)])  # [U]
        self.cell_index = torch.tensor(self.cells)  # [P]

    @classmethod
    def rows_of_one_block(cls, population: int) -> PackLayout:
        """`population` members a row each, one block a row, of a width that clipping and the update of
        whole rows never need to know."""
        return cls([0] * population)

    def to(self, device: torch.device) -> PackLayout:
        """The index tensors on `device` (once: an index made per step would be a copy per step)."""
        self.unit_block, self.cell_index = self.unit_block.to(device), self.cell_index.to(device)
        return self

    def block_of(self, i: int) -> tuple[int, int, slice]:
        """Member i's row, block and its units' slice of the row."""
        s, k = divmod(self.cells[i], self.blocks)
        return s, k, self.slices[k]

    # Per member and per cell.

    def per_cell(self, values: torch.Tensor, padding: float = 0.0) -> torch.Tensor:
        """Per-member values [P] as [S, K] by cell; padding cells get `padding`."""
        if self.in_order:
            return values.reshape(self.rows, self.blocks)
        cells = torch.full((self.rows * self.blocks,), padding, dtype=values.dtype, device=values.device)
        return cells.index_copy_(0, self.cell_index.to(values.device), values).view(self.rows, self.blocks)

    def members_of(self, cell_values: torch.Tensor) -> torch.Tensor:
        """[S, K, ...] -> [P, ...]: each member's cell, in member order."""
        flat = cell_values.flatten(0, 1)
        return flat if self.in_order else flat[self.cell_index]

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

    # Rows, blocks and members of the activations. With one block a row and the members in order, each
    # of these is the tensor itself: a single run and a population of one width pay no extra operation.

    def rows_of(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's batch [S, B, ...] from the per-member batches [P, B, ...] (one seed, one batch)."""
        if self.leaders_in_order:
            return x if x.shape[0] == self.rows else x[:self.rows]  # a view
        return x[self.row_leaders]

    def split_units(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """t [S, B, U] cut into each block's units [S, B, H_k], in block order."""
        return (t,) if self.blocks == 1 else t.split(self.widths, dim=-1)

    def join_units(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each block's [S, B, H_k], in block order, side by side: [S, B, U]."""
        return blocks[0] if self.blocks == 1 else torch.cat(blocks, dim=-1)

    def members_of_blocks(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each block's values [S, ...], in block order, as each member's [P, ...]."""
        if self.blocks == 1 and self.in_order:
            return blocks[0]
        return self.members_of(torch.stack(blocks, dim=1))

    def blocks_of_members(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each member's values [P, ...] as each block's [S, ...], in block order; padding cells 0."""
        if self.blocks == 1 and self.in_order:
            return (values,)
        cells = values
        if not self.in_order:
            cells = values.new_zeros(self.rows * self.blocks, *values.shape[1:])
            cells.index_copy_(0, self.cell_index, values)
        return cells.view(self.rows, self.blocks, *values.shape[1:]).unbind(1)

    def dropout_mask(self, probabilities: Sequence[float], generators: Sequence[torch.Generator], batch: int,
                     *, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """[S, B, U]: each member's inverted-dropout mask drawn as it would be alone, at its units; None
        without dropout."""
        if self.blocks == 1 and self.in_order:  # the members are the rows
            return inits.dropout_masks(probabilities, batch, self.units, generators, device=device,
                                       dtype=dtype)
        if not any(p > 0 for p in probabilities):
            return None
        mask = torch.ones(self.rows, batch, self.units, device=device, dtype=dtype)
        for i, (p, generator) in enumerate(zip(probabilities, generators, strict=True)):
            s, k, units = self.block_of(i)
            drawn = inits.dropout_masks([p], batch, self.widths[k], [generator], device=device, dtype=dtype)
            if drawn is not None:
                mask[s, :, units] = drawn[0]
        return mask

    def dead_fraction(self, activity: torch.Tensor) -> list[float]:
        """[P] from activity bool [S, U]: the fraction of each member's units that never fired."""
        widths = torch.tensor(self.widths, dtype=torch.float64, device=activity.device)
        return (1.0 - self.members_of(self.cell_sums(activity.double()) / widths)).tolist()

    # A row's parameters, and the pieces that per-cell values are spread over.

    def views(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """W1, b1, W2, b2 of `rows` [S, N] as stored (W1 [S, U, 784] where unit-major)."""
        return row_views(rows, self.shapes)

    def math_views(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """W1 [S, 784, U], b1 [S, 1, U], W2 [S, U, 10], b2 [S, K, 10] of `rows`: the equations' shapes."""
        views = self.views(rows)
        if self.unit_major:
            views["W1"] = views["W1"].transpose(1, 2)
        return views

    def pieces(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """The stretches of `rows` [S, N] that `spread` matches: the rows themselves where a cell is a
        whole row, else each parameter as stored."""
        return [rows] if self.blocks == 1 else list(self.views(rows).values())

    def spread(self, cell_values: torch.Tensor) -> list[torch.Tensor]:
        """[S, K] cell values shaped to broadcast against each of `pieces`, each element taking its cell's."""
        if self.blocks == 1:
            return [cell_values]  # [S, 1] against [S, N]
        units = self.per_unit(cell_values)  # [S, U]
        return [units.unsqueeze(2), units.unsqueeze(1), units.unsqueeze(2), cell_values.unsqueeze(2)]

    def cell_norms(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """||g|| of each cell [S, K]: the square root of the sum of g^2 over its elements of `pieces`."""
        norm = torch.linalg.vector_norm
        if self.blocks == 1:
            return norm(pieces[0], dim=1, keepdim=True)
        W1, b1, W2, b2 = pieces  # per unit first, without a squared copy of the gradient
        unit_squares = norm(W1, dim=2).square() + b1[:, 0].square() + norm(W2, dim=2).square()  # [S, U]
        return (self.cell_sums(unit_squares) + b2.square().sum(2)).sqrt()

    def cell_max_abs(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """max |g| of each cell [S, K] over its elements of `pieces`."""
        if self.blocks == 1:
            smallest, largest = torch.aminmax(pieces[0], dim=1, keepdim=True)
            return torch.maximum(largest, -smallest)  # max |g| = max(max g, -min g), without an |g| copy
        W1, b1, W2, b2 = pieces
        unit_max = torch.maximum(torch.maximum(W1.abs().amax(2), b1[:, 0].abs()), W2.abs().amax(2))  # [S, U]
        return torch.maximum(self.cell_max(unit_max), b2.abs().amax(2))


class OutputBlock(NamedTuple):
    """Views of one block's output layer, made once: W2 [S, H_k, 10] and W2^T, b2 [S, 1, 10], and the
    gradients dW2 [S, H_k, 10] and db2 [S, 10] that the backward writes."""

    W2: torch.Tensor
    W2_t: torch.Tensor
    b2: torch.Tensor
    dW2: torch.Tensor
    db2: torch.Tensor


class ManualMLP:
    """784 -> H -> 10 for every member of a pack, with forward and backward side by side."""

    def __init__(self, states: Sequence[dict[str, torch.Tensor]], *, activation: str,
                 dropout: Sequence[float] | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, layout: PackLayout | None = None) -> None:
        """`states`: each member's initial weights (nn.Linear layout); `layout`: where they go (none
        given: a row each, for members of one width)."""
        chosen = find_activation(activation)
        self.activation = activation
        self.act, self.act_grad = chosen.function, chosen.derivative
        self.dropout = list(dropout) if dropout is not None else [0.0] * len(states)
        self.device, self.dtype = torch.device(device), dtype
        if layout is None:
            layout = PackLayout([state["fc1.weight"].shape[0] for state in states])
        self.layout = layout.to(self.device)
        self.weights = torch.zeros(layout.rows, layout.row_width, device=self.device, dtype=dtype)  # [S, N]
        self.W1, self.b1, self.W2, self.b2 = layout.math_views(self.weights).values()
        for i, state in enumerate(states):
            self.load_state(i, state)
        # Written by each backward, read by clipping and SGD; zeros only so that it never holds garbage.
        self.gradients = torch.zeros_like(self.weights)  # [S, N]
        self.dW1, self.db1, self.dW2, self.db2 = layout.math_views(self.gradients).values()
        self.blocks = [OutputBlock(self.W2[:, units], self.W2[:, units].transpose(1, 2),
                                   self.b2[:, k:k + 1], self.dW2[:, units], self.db2[:, k])
                       for k, units in enumerate(layout.slices)]
        self.cache: dict[str, torch.Tensor | None] = {}
        self._minus_one = torch.full((1, 1, 1), -1.0, device=self.device, dtype=dtype)

    @property
    def population(self) -> int:
        return len(self.layout.cells)

    def _linear_layout(self, i: int) -> dict[str, torch.Tensor]:
        """Views of member i's parameters in the nn.Linear layout, keyed like TorchMLP's state_dict."""
        s, k, units = self.layout.block_of(i)
        return {"fc1.weight": self.W1[s, :, units].t(), "fc1.bias": self.b1[s, 0, units],
                "fc2.weight": self.W2[s, units].t(), "fc2.bias": self.b2[s, k]}

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights in the nn.Linear layout, as a float32 CPU copy."""
        return copy_of(self._linear_layout(i))

    def load_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights with `state` (nn.Linear layout)."""
        load_into(self._linear_layout(i), state)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """z1 [S, B, U] of each row's batch x [S, B, 784]."""
        return torch.baddbmm(self.b1, x, self.W1)  # z1 = x W1 + b1

    def _output(self, h1_blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each member's logits [P, B, 10] from each block's units h1 [S, B, H_k]: block k's units
        through block k's output weights, one bmm over the rows."""
        z2 = [torch.baddbmm(block.b2, h1, block.W2)  # z2 = h1 W2 + b2
              for h1, block in zip(h1_blocks, self.blocks, strict=True)]
        return self.layout.members_of_blocks(z2)

    @no_grad
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """z1 [S, B, U] of the per-member batches x [P, B, 784] (one width: [P, B, H])."""
        return self._hidden(self.layout.rows_of(x))

    @no_grad
    def output(self, z1: torch.Tensor) -> torch.Tensor:
        """Evaluation logits [P, B, 10] from z1 (no dropout): the second half of `forward`."""
        return self._output(self.layout.split_units(self.act(z1)))

    @no_grad
    def forward(self, x: torch.Tensor, *, train: bool,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Logits [P, B, 10] of the per-member batches x [P, B, 784]. train=True caches what `backward`
        needs and applies dropout with masks drawn from `generators` (one per member; none given, no
        dropout)."""
        x = self.layout.rows_of(x)  # each row's batch [S, B, 784]
        z1 = self._hidden(x)  # z1 = x W1 + b1
        h1 = self.act(z1)  # h1 = act(z1)
        mask = None
        if train and generators is not None:
            mask = self.layout.dropout_mask(self.dropout, generators, x.shape[1], device=self.device,
                                            dtype=self.dtype)
        h1_dropped = h1 * mask if mask is not None else h1  # inverted dropout: mask in {0, 1/(1-p)}
        h1_blocks = self.layout.split_units(h1_dropped)  # each block's units
        z2 = self._output(h1_blocks)  # logits z2 = h1 W2 + b2
        if train:
            self.cache = {"x": x, "z1": z1, "h1": h1, "mask": mask, "h1_blocks": h1_blocks, "z2": z2}
        return z2

    @no_grad
    def backward(self, y: torch.Tensor, probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Gradients of each member's MEAN cross-entropy over the batch of the last train forward.

        `y`: the labels [P, B]. The gradients are written into `self.gradients` (one row per pack row,
        overwritten by the next backward); the returned dW1 [S, 784, U], db1, dW2, db2 are views of it.
        `probs`: softmax(z2) [P, B, 10] if the caller already has it (it is overwritten)."""
        x, z1, h1, mask = self.cache["x"], self.cache["z1"], self.cache["h1"], self.cache["mask"]
        h1_blocks, z2 = self.cache["h1_blocks"], self.cache["z2"]
        probs = torch.softmax(z2, dim=-1) if probs is None else probs  # p = softmax(z2)
        # dL/dz2 = (p - onehot(y)) / B: subtract 1 at each sample's label, then scale
        dz2 = probs.scatter_add_(-1, y.unsqueeze(-1), self._minus_one.expand(*y.shape, 1)).div_(x.shape[1])
        dh1_blocks, dz2_blocks = [], self.layout.blocks_of_members(dz2)
        for h1_k, dz2_k, block in zip(h1_blocks, dz2_blocks, self.blocks, strict=True):
            torch.bmm(h1_k.transpose(1, 2), dz2_k, out=block.dW2)  # dL/dW2 = h1^T . dz2
            torch.sum(dz2_k, 1, out=block.db2)  # dL/db2 = sum_b dz2
            dh1_blocks.append(torch.bmm(dz2_k, block.W2_t))  # dL/dh1 = dz2 . W2^T
        dh1 = self.layout.join_units(dh1_blocks)  # [S, B, U]
        if mask is not None:
            dh1.mul_(mask)  # dropped units pass no gradient; kept ones are scaled by 1/(1-p)
        dz1 = dh1.mul_(self.act_grad(z1, h1))  # dL/dz1 = dh1 * act'(z1)
        torch.bmm(x.transpose(1, 2), dz1, out=self.dW1)  # dL/dW1 = x^T . dz1
        torch.sum(dz1, 1, keepdim=True, out=self.db1)  # dL/db1 = sum_b dz1
        return {"dW1": self.dW1, "db1": self.db1, "dW2": self.dW2, "db2": self.db2}


class GradientClipper:
    """Clips each member's gradients by its own rule, as torch.nn.utils does for one model.

    clip_mode [P] holds CLIP_CODES. value: g = clamp(g, -c, c) element-wise. norm: scale the
    member's gradients by min(1, c / (||g|| + 1e-6)), as torch.nn.utils.clip_grad_norm_ does.
    Members under another rule get bound inf / factor 1, which leave every value (NaN too) as is.
    """

    def __init__(self, clip_mode: torch.Tensor, clip_value: torch.Tensor, layout: PackLayout | None = None
                 ) -> None:
        """`layout`: where each member's gradients are in the rows (none given: a row each)."""
        self.layout = layout if layout is not None else PackLayout.rows_of_one_block(len(clip_mode))
        per_cell = self.layout.per_cell  # [S, K]; padding cells: value 0, by neither rule
        self.clip_value = per_cell(clip_value)
        self.by_value = per_cell(clip_mode == CLIP_CODES["value"])
        self.by_norm = per_cell(clip_mode == CLIP_CODES["norm"])
        bounds = self.layout.spread(torch.where(self.by_value, self.clip_value, torch.inf))
        self.bounds = [(-bound, bound) for bound in bounds]
        modes = set(clip_mode.tolist())  # once, on the host: skip the element-wise work nobody needs
        self.any_by_value, self.any_by_norm = CLIP_CODES["value"] in modes, CLIP_CODES["norm"] in modes
        self.never_clipped = torch.zeros(len(clip_mode), device=clip_value.device, dtype=clip_value.dtype)

    @no_grad
    def __call__(self, gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip `gradients` [S, N] in place; returns each member's norm before clipping [P] and whether
        it was clipped [P], as 0/1."""
        layout, pieces = self.layout, self.layout.pieces(gradients)
        grad_norm = layout.cell_norms(pieces)  # ||g|| = sqrt(sum of the member's g^2)   [S, K]
        if not (self.any_by_value or self.any_by_norm):
            return layout.members_of(grad_norm), self.never_clipped
        clip_coef = (self.clip_value / (grad_norm + 1e-6)).clamp(max=1.0)  # min(1, c / (||g|| + 1e-6))
        clipped = self.by_norm & (clip_coef < 1)
        if self.any_by_value:
            clipped |= self.by_value & (layout.cell_max_abs(pieces) > self.clip_value)
            for g, (lower, upper) in zip(pieces, self.bounds, strict=True):
                g.clamp_(lower, upper)  # g = clamp(g, -c, c)
        if self.any_by_norm:
            factors = layout.spread(torch.where(self.by_norm, clip_coef, 1.0))
            for g, factor in zip(pieces, factors, strict=True):
                g.mul_(factor)  # g = g min(1, c / (||g|| + 1e-6))
        return layout.members_of(grad_norm), layout.members_of(clipped.to(gradients.dtype))


def sgd_update(w: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: torch.Tensor,
               momentum: torch.Tensor, weight_decay: torch.Tensor, nesterov: bool | torch.Tensor,
               keep: torch.Tensor | None = None, reuse_grad: bool = True) -> None:
    """The SGD rule, in torch.optim.SGD's convention, on weights w and their momentum buffer buf, in place:

        g = grad + wd w;  buf = momentum buf + g (buf = g on the first step, as buf starts at 0);
        step = g + momentum buf (Nesterov) or buf;  w = w - lr step.

    lr, momentum, weight_decay and `nesterov` (True, False, or per element) broadcast against w; where
    `keep` is True (a frozen member), w and buf stay as they are. `grad` is overwritten, as scratch
    space (big fresh tensors are slow on the CPU), unless `reuse_grad` is False: the compiled pass
    (fused_sgd_update) keeps its values in registers, and writing them back would cost it a pass.
    """
    g = torch.addcmul(grad, weight_decay, w, out=grad if reuse_grad else None)  # L2: dL/dw += wd w
    new_buf = torch.addcmul(g, momentum, buf, out=buf if keep is None else None)  # m buf + g
    if isinstance(nesterov, bool):
        step = g.addcmul_(momentum, new_buf) if nesterov else new_buf  # g + momentum buf, or buf
    else:
        step = torch.where(nesterov, g.addcmul(momentum, new_buf), new_buf)
    if keep is None:
        w.addcmul_(lr, step, value=-1)  # w = w - lr step
    else:  # where, not a 0/1 factor: 0 * NaN would still be NaN
        buf.copy_(torch.where(keep, buf, new_buf))
        w.copy_(torch.where(keep, w, w - lr * step))


class ManualSGD:
    """SGD with momentum, Nesterov and weight decay per member (`sgd_update`), on the rows of a pack.

    Weight decay acts on all four tensors, biases included, as torch.optim.SGD does when it is
    handed all parameters (TorchLearner does), so both implementations follow one rule.
    """

    def __init__(self, weights: torch.Tensor, *, momentum: torch.Tensor, weight_decay: torch.Tensor,
                 nesterov: torch.Tensor, steps: int = 0, layout: PackLayout | None = None) -> None:
        """`weights` [S, N]: the rows of parameters, updated in place; the rest are per member [P].
        `steps`: how many steps it will make, where known: with `fuse_pays`, the update is compiled.
        `layout`: where each member's weights are in the rows (none given: a row each)."""
        self.layout = layout if layout is not None else PackLayout.rows_of_one_block(weights.shape[0])
        self.weights = weights
        self.buffer = torch.zeros_like(weights)  # momentum buffers, [S, N]
        self.momentum, self.weight_decay = self._spread(momentum), self._spread(weight_decay)
        flags = nesterov.tolist()  # once, on the host: most populations are all or none Nesterov
        mixed = any(flags) and not all(flags)
        self.nesterov = self._spread(nesterov) if mixed else [all(flags)] * len(self.momentum)
        # Each piece's weights, buffer and hyperparameters, and nothing frozen: made once, not per step.
        self.pieces = list(zip(self.layout.pieces(weights), self.layout.pieces(self.buffer), self.momentum,
                               self.weight_decay, self.nesterov, strict=True))
        self.none_frozen = [None] * len(self.pieces)
        # The compiled update, or None (eager). Compiled here, not inside the first epoch (whose
        # epoch_seconds it would inflate). Packs of several widths stay eager: the compiled pass rounds
        # otherwise in float32, and a packed member is to train as it would alone.
        fuse = self.layout.blocks == 1 and not mixed and fuse_pays(weights, steps)
        self.fused_update = fused_sgd_update() if fuse else None

    def _spread(self, values: torch.Tensor, padding: float = 0.0) -> list[torch.Tensor]:
        """Per-member values [P] shaped to broadcast against each piece of the rows (padding: `padding`)."""
        return self.layout.spread(self.layout.per_cell(values, padding))

    @property
    def fused(self) -> bool:
        return self.fused_update is not None

    @no_grad
    def step(self, gradients: torch.Tensor, lr: torch.Tensor, frozen: torch.Tensor | None = None) -> None:
        """Update in place from `gradients` [S, N], used as scratch space, with each member's lr [P];
        members where `frozen` [P] is True keep their weights and buffers."""
        lr = self._spread(lr)
        if self.fused_update is not None and frozen is None:
            try:  # one piece: the rows
                self.fused_update(self.weights, gradients, self.buffer, lr[0], self.momentum[0],
                                  self.weight_decay[0], self.nesterov[0], None, False)
                return
            except Exception as error:  # noqa: BLE001 - a recompile that fails: nothing was written yet
                # inductor can fail recompiling for a later population's rows ("s15 ... is not tracked
                # with proxy", torch 2.14, a sweep's second pack) before running anything: eager from here
                warnings.warn(f"the compiled SGD update failed, using the eager update: {first_line(error)}",
                              RuntimeWarning, stacklevel=2)
                self.fused_update = None
        keeps = self._spread(frozen, padding=True) if frozen is not None else self.none_frozen
        for (w, buf, momentum, decay, nesterov), grad, lr_k, keep in zip(
                self.pieces, self.layout.pieces(gradients), lr, keeps, strict=True):
            sgd_update(w, grad, buf, lr_k, momentum, decay, nesterov, keep)


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
    the eager passes are used. Called as (w, grad, buf, lr, momentum, weight_decay, nesterov, None, False):
    nothing frozen, and `grad` left as it is.
    """
    # inductor's import warns that it found no CUDA runtime: true, and nothing a CPU user can act on
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:  # a first call on throw-away rows: compile errors surface here, not mid-epoch
        with TRACING_LOCK:
            compiled = torch.compile(sgd_update, dynamic=True)
            probe = torch.zeros(2, ROW_ALIGNMENT)
            column = torch.zeros(2, 1)
            for nesterov in (True, False):
                compiled(probe, probe.clone(), probe.clone(), column, column, column, nesterov, None, False)
    except Exception as error:  # noqa: BLE001 - any failure of the compiler means: stay eager
        warnings.warn(f"torch.compile of the manual SGD update failed, using the eager update: "
                      f"{first_line(error)}", RuntimeWarning, stacklevel=2)
        return None
    return compiled


class ManualLearner:
    """The Learner interface over ManualMLP + GradientClipper + ManualSGD, for members of any widths
    (one activation) laid out by one PackLayout."""

    def __init__(self, configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype,
                 steps: int = 0) -> None:
        if len({c.activation for c in configs}) > 1:
            raise ValueError("all members of a population must share the activation")
        for cfg in configs:
            if cfg.optimizer != "sgd":
                raise ValueError(f"the manual implementation has only SGD, not {cfg.optimizer!r}")
        self.population, self.device, self.dtype = len(configs), torch.device(device), dtype
        self.layout = PackLayout([c.hidden_size for c in configs], [c.seed for c in configs]).to(self.device)
        states = [inits.initial_state(c.hidden_size, activation=c.activation, init=c.init,
                                      scale=c.init_scale, seed=c.seed) for c in configs]
        self.model = ManualMLP(states, activation=configs[0].activation, dropout=[c.dropout for c in configs],
                               device=self.device, dtype=dtype, layout=self.layout)

        def per_member(values: list, kind: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=kind, device=self.device)

        self.optimizer = ManualSGD(
            self.model.weights,
            momentum=per_member([c.momentum for c in configs], dtype),
            weight_decay=per_member([c.weight_decay for c in configs], dtype),
            nesterov=per_member([c.nesterov for c in configs], torch.bool),
            steps=steps, layout=self.layout,
        )
        self.clipper = GradientClipper(per_member([CLIP_CODES[c.clip_mode] for c in configs], torch.int64),
                                       per_member([c.clip_value for c in configs], dtype), self.layout)
        self.generators = inits.dropout_generators([c.seed for c in configs], self.device)
        self.frozen = [False] * self.population  # host copy: no device sync to ask "any frozen?"
        self.frozen_mask = torch.zeros(self.population, dtype=torch.bool, device=self.device)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """W1, b1, W2, b2 of every row, as stored (see PackLayout)."""
        return self.layout.views(self.model.weights)

    @no_grad
    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model.forward(x.to(self.dtype), train=True, generators=self.generators)
        loss_sum, correct, log_probs = cross_entropy_parts(logits, y)
        self.model.backward(y, probs=log_probs.exp_())  # one log-softmax for loss and gradient
        gradients = self.model.gradients
        grad_norm, clipped = self.clipper(gradients)
        lr = lr.to(self.device, self.dtype, non_blocking=True)
        self.optimizer.step(gradients, lr, self.frozen_mask if any(self.frozen) else None)
        return {"loss_sum": loss_sum, "correct": correct, "grad_norm": grad_norm, "clipped": clipped}

    @no_grad
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward(x.to(self.dtype), train=False)

    @no_grad
    def hidden_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """z1 [S, B, U] (one width: each member's, [P, B, H])."""
        return self.model.hidden_preactivations(x.to(self.dtype))

    @no_grad
    def logits_and_activity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [P, B, 10]; activity bool [S, U]: units positive for some sample."""
        z1 = self.model.hidden_preactivations(x.to(self.dtype))
        return self.model.output(z1), (z1 > 0).any(dim=1)

    def dead_fraction(self, activity: torch.Tensor) -> list[float]:
        return self.layout.dead_fraction(activity)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        return self.model.state(i)

    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member i's weights; its momentum buffers and frozen flag are left as they are."""
        self.model.load_state(i, state)

    def freeze_member(self, i: int) -> None:
        self.frozen[i] = True
        self.frozen_mask[i] = True


# The name of a learner whose members have several widths, where the code used to hold a second learner
# for them: one learner does both.
PackedManualLearner = ManualLearner


def make_manual_learner(configs: Sequence[RunConfig], device: torch.device, *,
                        dtype: torch.dtype = torch.float32, steps: int = 0) -> ManualLearner:
    """The learner of `configs` (any widths, one activation). `steps`: the steps it will be trained for,
    where known (whether compiling its update pays)."""
    return ManualLearner(configs, device, dtype, steps)
