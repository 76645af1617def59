"""The one place that turns logits into loss and accuracy counts.

Sums, not means: the trainer divides by the number of samples at the end of an epoch,
so a short last batch weighs exactly as many samples as it holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_and_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct predictions over the last two dims.

    `logits` is [..., B, C] and `labels` [..., B]; the results have shape [...], so a
    population of P models ([P, B, C]) gets one loss and one count per member.
    """
    batch_shape = labels.shape
    flat_loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none"
    )
    loss_sum = flat_loss.reshape(batch_shape).sum(-1)
    correct = (logits.argmax(-1) == labels).sum(-1)
    return loss_sum, correct
